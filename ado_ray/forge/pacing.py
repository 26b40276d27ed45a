"""`LimiterPacer`: forge API calls paced by the run's shared rate limiter.

Every call holds `forge:<host>` (always through the limiter, even without a configured
limit, so that a cooldown another client reported is respected), and a PR creation also
`forge:<host>:pr` when `limits:` has that key. A forge's rate-limit signal puts
`forge:<host>` in cooldown for every client of the limiter.

```yaml
limits:
  forge:github.com: {requests: ["80/1m"], concurrency: 8}
  forge:github.com:pr: {requests: ["10/1m"]}     # PR creations, on top of the above
```

A configured parent (`forge`) is the budget the host's calls count against, shared by all
hosts (see `ado_ray.limits.config.route`); the cooldown stays per host.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

from ado_ray.limits.actor import LimiterClient
from ado_ray.limits.base import LimitSpec, check_key
from ado_ray.limits.config import NO_LIMITS, route


class LimiterPacer:
    """A `Pacer` for one forge host, drawing on `limiter`'s budgets from `limits`."""

    def __init__(
        self,
        limiter: LimiterClient,
        limits: dict[str, LimitSpec],
        host: str,
        timeout_s: float | None = None,
    ) -> None:
        self.limiter = limiter
        self.host = host
        self.timeout_s = timeout_s
        self.key = check_key(f"forge:{host}")
        self.pr_key = check_key(f"forge:{host}:pr")
        # (key, spec) held for every call, in order: the budget, then (if it is a parent's)
        # the host's own key, for its cooldown.
        budget_key, spec = route(limits, self.key)
        self._holds: list[tuple[str, LimitSpec]] = [(budget_key, spec)]
        if budget_key != self.key:
            self._holds.append((self.key, NO_LIMITS))
        # Only a `:pr` entry of its own adds a budget: a parent's is already held above.
        self._pr_hold = (self.pr_key, limits[self.pr_key]) if self.pr_key in limits else None

    def __repr__(self) -> str:
        return f"LimiterPacer({self.key})"

    def call(self, *, pr: bool = False) -> AbstractAsyncContextManager[object]:
        return self._call(pr)

    @contextlib.asynccontextmanager
    async def _call(self, pr: bool) -> AsyncIterator[object]:
        holds = list(self._holds)
        if pr and self._pr_hold is not None:
            # Last, so that the PR's admission is the moment it is sent: taken first, it
            # would age while the call waits out a cooldown of the host's, and calls
            # admitted during the wait would reach the forge together when it ends. (A
            # configured concurrency of the host's is held meanwhile.)
            holds.append(self._pr_hold)
        async with contextlib.AsyncExitStack() as stack:
            for key, spec in holds:
                await stack.enter_async_context(
                    self.limiter.hold(key, spec, timeout_s=self.timeout_s)
                )
            yield None

    async def cooldown(self, reset_at: float) -> None:
        await self.limiter.report_limited(self.key, reset_at)
