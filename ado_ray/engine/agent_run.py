"""One agent run inside a task: choose a route, hold its limits, supervise, account.

- **Route choice** (subscription first): the first route, in priority order, whose limit
  key admits now; a key in cooldown or at its limits is skipped. With one route (or
  `fallback: false`) the task simply waits for it.
- **Accounting**: tokens and cost are stored per attempt. A CLI that reports running
  totals for its session (Claude's cost, Codex's tokens) is diffed against the totals
  this task saw last for that session; a CLI that reports no cost is priced from
  `prices:` by model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from ado_ray.agents.base import AgentResult
from ado_ray.agents.routing import Route
from ado_ray.config import Price
from ado_ray.limits.actor import Hold, LimiterClient
from ado_ray.limits.base import LimitSpec, LimitTimeout
from ado_ray.limits.config import route as limit_route

FAILOVER_POLL_S = 0.5  # how often a task whose routes are all busy looks again


@dataclass
class Session:
    """The agent session a task may resume: the provider it ran on and its running totals."""

    provider: str
    session_id: str
    totals: dict[str, float] = field(default_factory=dict)


@dataclass
class TaskMemory:
    """What a task carries from one try to the next within a run."""

    session: Session | None = None
    cost_usd: float = 0.0  # spent by this task so far (for --max-cost-per-task)


class Unlimited:
    """The hold of a key with no limits whose agent never signals one: no limiter call."""

    def __init__(self, key: str) -> None:
        self.key, self.spec = key, LimitSpec()

    async def __aenter__(self) -> Unlimited:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def reconcile(self, actual_tokens: int) -> None:
        return None


async def acquire_route(
    routes: list[Route],
    limits: dict[str, LimitSpec],
    limiter: LimiterClient,
    timeout_s: float | None,
    signals_limits: bool = True,
) -> tuple[Route, Hold | Unlimited, float]:
    """Hold the first route that admits; return it, its hold (entered) and the wait.

    When the only route's agent never reports a provider limit (`signals_limits` False),
    its key can never cool down; with no configured limits there is nothing to ask.
    """
    started = time.monotonic()
    if len(routes) == 1 and not signals_limits:
        key, spec = limit_route(limits, routes[0].key)
        if spec == LimitSpec():
            return routes[0], Unlimited(key), 0.0
    if len(routes) == 1:
        key, spec = limit_route(limits, routes[0].key)
        hold = limiter.hold(key, spec, timeout_s=timeout_s)
        await hold.__aenter__()
        return routes[0], hold, time.monotonic() - started
    while True:
        for candidate in routes:
            key, spec = limit_route(limits, candidate.key)
            hold = limiter.hold(key, spec, timeout_s=0)
            with contextlib.suppress(LimitTimeout):
                await hold.__aenter__()
                return candidate, hold, time.monotonic() - started
        waited = time.monotonic() - started
        if timeout_s is not None and waited >= timeout_s:
            keys = ", ".join(r.key for r in routes)
            raise LimitTimeout(f"no route admitted within {timeout_s:g}s ({keys})")
        await asyncio.sleep(FAILOVER_POLL_S)


def account(
    result: AgentResult, route: Route, prices: dict[str, Price], previous: Session | None
) -> tuple[dict[str, Any], dict[str, float]]:
    """This attempt's usage (tokens, cost) and the session's new running totals."""
    totals = dict(previous.totals) if previous and previous.session_id == result.session_id else {}
    tokens = {
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "cache_tokens": result.cache_tokens,
    }
    if result.tokens_are_session_totals:
        delta = {k: max(0, v - int(totals.get(k, 0))) for k, v in tokens.items()}
        totals.update(tokens)
        tokens = delta
    model = result.model or route.model
    cost = result.cost_usd
    priced = False
    if cost is None:
        price = prices.get(model or "")
        priced = price is not None
        cost = (
            0.0
            if price is None
            else (
                tokens["input_tokens"] * price.input
                + tokens["output_tokens"] * price.output
                + tokens["cache_tokens"] * price.cache
            )
            / 1e6
        )
    elif result.cost_is_session_total:
        session_cost = cost
        cost = max(0.0, session_cost - totals.get("cost_usd", 0.0))
        totals["cost_usd"] = session_cost
    usage = {
        **tokens,
        "cost_usd": round(cost, 6),
        "cost_source": "cli" if result.cost_usd is not None else "prices" if priced else "unknown",
        "model": model,
        "provider": route.provider,
        "mode": route.mode,
        "num_turns": result.num_turns,
    }
    return usage, totals
