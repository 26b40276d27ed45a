"""The run's shared rate limiter: a service, the Ray actor that hosts it, and its client.

- `RateLimiterService` wraps one backend (`memory` or `redis`), opened lazily in the
  process that hosts it. A plain async class: `ray.remote` makes it an actor, and the
  serial debug path (`--no-ray`) uses it in-process.
- `limiter_actor(settings, namespace)` is the named, detached actor `ado-rate-limiter`:
  one per Ray namespace, shared by every run in it, so every agent of every run draws on
  the same budgets. It lives on the head node and outlives drivers.
- `LimiterClient` is what a runner holds. It talks to the actor or to an in-process
  service alike, and `hold()` takes a budget for the length of a block (see `Hold`).

Fail closed: while the backend (or the actor) cannot be reached, `acquire` waits with
backoff and admits nothing; `status()` shows since when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from types import TracebackType
from typing import Any

from ado_ray import metrics
from ado_ray.errors import ConfigError
from ado_ray.limits.base import (
    Denied,
    Grant,
    Limiter,
    LimiterUnavailable,
    LimitSpec,
    LimitTimeout,
    check_key,
)
from ado_ray.limits.config import LimiterSettings

log = logging.getLogger(__name__)

ACTOR_NAME = "ado-rate-limiter"
MAX_CONCURRENCY = 10_000  # every runner slot may be waiting in `acquire` at once
HEAD_NODE = "node:__internal_head__"  # Ray's resource of the head node
START_TIMEOUT_S = 60.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 2.0


class RateLimiterService:
    """One backend, shared by every caller of this object (or of the actor hosting it)."""

    def __init__(self, settings: LimiterSettings | None = None) -> None:
        self._settings = settings or LimiterSettings()
        self._limiter: Limiter | None = None  # opened on first use, in the hosting process
        self._waiting: Counter[str] = Counter()  # key -> callers inside `acquire`
        self._specs: dict[str, LimitSpec] = {}  # key -> the spec it was last acquired with

    def _backend(self) -> Limiter:
        if self._limiter is None:
            from ado_ray.limits import open_limiter  # the registry imports this module

            self._limiter = open_limiter(self._settings.backend, self._settings.url)
        return self._limiter

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A backend call other than `acquire`, keeping `unavailable_since` current."""
        limiter = self._backend()
        try:
            result = await getattr(limiter, method)(*args, **kwargs)
        except LimiterUnavailable:
            if limiter.unavailable_since is None:
                limiter.unavailable_since = time.time()
            raise
        limiter.unavailable_since = None
        return result

    async def settings(self) -> LimiterSettings:
        return self._settings

    async def acquire(
        self,
        key: str,
        spec: LimitSpec,
        tokens: int = 0,
        lease_ttl_s: float = 60.0,
        timeout_s: float | None = None,
    ) -> Grant:
        """Wait for the budget (see `LimiterBase.acquire`); counted in `status()["waiting"]`."""
        limiter = self._backend()
        self._specs[check_key(key)] = spec
        self._waiting[key] += 1
        try:
            return metrics.admitted(
                await limiter.acquire(
                    key, spec, tokens=tokens, lease_ttl_s=lease_ttl_s, timeout_s=timeout_s
                )
            )
        finally:
            self._waiting[key] -= 1
            if self._waiting[key] <= 0:
                del self._waiting[key]

    async def try_acquire(
        self, key: str, spec: LimitSpec, tokens: int = 0, lease_ttl_s: float = 60.0
    ) -> Grant | Denied:
        self._specs[check_key(key)] = spec
        result: Grant | Denied = await self._call(
            "try_acquire", key, spec, tokens=tokens, lease_ttl_s=lease_ttl_s
        )
        return metrics.admitted(result)

    async def renew(self, grant: Grant, lease_ttl_s: float) -> bool:
        return bool(await self._call("renew", grant, lease_ttl_s))

    async def release(self, grant: Grant) -> None:
        await self._call("release", grant)

    async def reconcile(self, grant: Grant, actual_tokens: int) -> None:
        await self._call("reconcile", grant, actual_tokens)

    async def report_limited(self, key: str, reset_at: float) -> None:
        await self._call("report_limited", key, reset_at)
        metrics.cooldown(key)

    async def snapshot(self, limits: dict[str, LimitSpec] | None = None) -> list[dict[str, Any]]:
        """Every key of `limits`, and every other key acquired here, as the backend sees it:
        `LimiterBase.snapshot`'s fields plus `spec`, `configured` and `waiting`."""
        limits = limits or {}
        table = {**self._specs, **limits}
        rows = []
        for key in sorted(table):
            row: dict[str, Any] = await self._call("snapshot", key, table[key])
            row["spec"] = table[key].model_dump(exclude_none=True)
            row["configured"] = key in limits
            row["waiting"] = self._waiting.get(key, 0)
            rows.append(row)
        return rows

    async def status(self) -> dict[str, Any]:
        limiter = self._limiter
        return {
            "backend": self._settings.backend,
            "where": self._settings.describe(),
            "unavailable_since": None if limiter is None else limiter.unavailable_since,
            "waiting": dict(sorted(self._waiting.items())),
        }

    async def close(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            await limiter.close()


def limiter_actor(settings: LimiterSettings, namespace: str) -> Any:
    """The handle of the detached actor `ado-rate-limiter` in `namespace`, created with
    `settings` unless it runs already; one that runs with other settings is a `ConfigError`.

    Needs a connected Ray (`ray.init`). The actor is pinned to the head node, takes no
    CPU, and is restarted by Ray if its process dies (a memory backend then starts empty).
    """
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    actor_class: Any = ray.remote(RateLimiterService)  # Ray's stubs do not know its methods
    options = actor_class.options(
        name=ACTOR_NAME,
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        resources={HEAD_NODE: 0.001},
        max_concurrency=MAX_CONCURRENCY,
        max_restarts=-1,
        max_task_retries=-1,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        handle = options.remote(settings)
        try:
            found: LimiterSettings = ray.get(
                handle.settings.remote(), timeout=max(deadline - time.monotonic(), 0.1)
            )
            break
        except RayActorError:
            # A limiter that was just stopped keeps its name for a moment.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        except GetTimeoutError as exc:
            raise LimiterUnavailable(
                f"the rate limiter {ACTOR_NAME!r} in Ray namespace {namespace!r} did not "
                f"start within {START_TIMEOUT_S:g}s; check the head node with `ray status`"
            ) from exc
    if found != settings:
        raise ConfigError(
            f"the rate limiter {ACTOR_NAME!r} in Ray namespace {namespace!r} already runs "
            f"with {found.describe()}, but this run asks for {settings.describe()}; runs in "
            "one namespace share one limiter. Use the same limiter settings, another "
            "namespace (ray.namespace), or stop that limiter once no run uses it: python -c "
            f"\"import ray; ray.init(address='auto', namespace='{namespace}'); "
            f"ray.kill(ray.get_actor('{ACTOR_NAME}'))\""
        )
    return handle


def stop_limiter_actor(namespace: str, *, wait_s: float = 10.0) -> bool:
    """Kill the limiter actor of `namespace`, if there is one, and wait up to `wait_s` for
    its name to be free again; say whether there was one."""
    import ray

    try:
        handle = ray.get_actor(ACTOR_NAME, namespace=namespace)
    except ValueError:
        return False
    ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(ACTOR_NAME, namespace=namespace)
        except ValueError:
            break
        time.sleep(0.05)
    return True


async def _result(ref: Any) -> Any:
    """Await an actor call; raise its own exception, or `LimiterUnavailable` if the actor
    is gone."""
    from ray.exceptions import RayActorError, RayTaskError

    try:
        return await ref
    except RayTaskError as exc:
        if isinstance(exc.cause, Exception):
            raise exc.cause from exc
        raise
    except RayActorError as exc:
        raise LimiterUnavailable(f"the rate limiter {ACTOR_NAME!r} did not answer: {exc}") from exc


class LimiterClient:
    """A runner's way to the limits: the actor (`LimiterClient(limiter_actor(...),
    namespace=...)`) or an in-process service (`LimiterClient(RateLimiterService(...))`).

    Picklable when it wraps an actor, so it can be passed to runner actors. With a
    `namespace`, a client whose actor is gone for good looks it up again by name while it
    waits in `acquire` (a replacement may have been started).
    """

    def __init__(self, target: Any, *, namespace: str | None = None) -> None:
        self._target = target
        self._namespace = namespace
        self._remote = hasattr(target.acquire, "remote")
        self._background: set[asyncio.Task[None]] = set()
        self.unavailable_since: float | None = None  # the actor, not the backend

    def __getstate__(self) -> dict[str, Any]:
        if not self._remote:
            raise TypeError("an in-process LimiterClient cannot leave its process")
        return {"target": self._target, "namespace": self._namespace}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._target = state["target"]
        self._namespace = state["namespace"]
        self._remote = True
        self._background = set()
        self.unavailable_since = None

    async def _call(self, method: str, *args: Any) -> Any:
        if self._remote:
            return await _result(getattr(self._target, method).remote(*args))
        return await getattr(self._target, method)(*args)

    async def acquire(
        self,
        key: str,
        spec: LimitSpec,
        *,
        tokens: int = 0,
        lease_ttl_s: float = 60.0,
        timeout_s: float | None = None,
    ) -> Grant:
        """Wait until `key` has room (`LimitTimeout` after `timeout_s`). If the wait is
        cancelled, a grant the actor made meanwhile is released, not leaked."""
        if not self._remote:
            grant: Grant = await self._target.acquire(key, spec, tokens, lease_ttl_s, timeout_s)
            return grant
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        backoff = BACKOFF_MIN_S
        wait_s = timeout_s
        while True:
            ref = self._target.acquire.remote(key, spec, tokens, lease_ttl_s, wait_s)
            try:
                grant = await _result(ref)
            except LimiterUnavailable as exc:
                if self.unavailable_since is None:
                    self.unavailable_since = time.time()
                    log.warning("waiting for the rate limiter to come back: %s", exc)
                if deadline is not None and loop.time() >= deadline:
                    raise LimitTimeout(
                        f"{key}: nothing admitted within {timeout_s}s ({exc})"
                    ) from exc
                await asyncio.sleep(backoff * random.uniform(0.75, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                await self._look_up_again()
                if deadline is not None:
                    wait_s = max(deadline - loop.time(), 0.0)
                continue
            except asyncio.CancelledError:
                self._abandon(ref)
                raise
            self.unavailable_since = None
            return grant

    async def _look_up_again(self) -> None:
        if self._namespace is None:
            return
        import ray

        with contextlib.suppress(ValueError):  # not started again yet
            self._target = await asyncio.to_thread(
                ray.get_actor, ACTOR_NAME, namespace=self._namespace
            )

    def _abandon(self, ref: Any) -> None:
        """Stop an acquire nobody waits for; release what it may still have granted."""
        import ray

        ray.cancel(ref)
        task = asyncio.get_running_loop().create_task(self._release_late(ref))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release_late(self, ref: Any) -> None:
        from ray.exceptions import RayError

        try:
            grant = await ref
        except RayError:
            return  # cancelled (or failed) in the actor: nothing was admitted
        await _release_quietly(self, grant)

    async def try_acquire(
        self, key: str, spec: LimitSpec, *, tokens: int = 0, lease_ttl_s: float = 60.0
    ) -> Grant | Denied:
        result: Grant | Denied = await self._call("try_acquire", key, spec, tokens, lease_ttl_s)
        return result

    async def renew(self, grant: Grant, lease_ttl_s: float) -> bool:
        return bool(await self._call("renew", grant, lease_ttl_s))

    async def release(self, grant: Grant) -> None:
        await self._call("release", grant)

    async def reconcile(self, grant: Grant, actual_tokens: int) -> None:
        await self._call("reconcile", grant, actual_tokens)

    async def report_limited(self, key: str, reset_at: float) -> None:
        await self._call("report_limited", key, reset_at)

    async def snapshot(self, limits: dict[str, LimitSpec] | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._call("snapshot", limits)
        return rows

    async def status(self) -> dict[str, Any]:
        status: dict[str, Any] = await self._call("status")
        return status

    async def settings(self) -> LimiterSettings:
        settings: LimiterSettings = await self._call("settings")
        return settings

    def hold(
        self,
        key: str,
        spec: LimitSpec,
        *,
        tokens: int = 0,
        lease_ttl_s: float = 60.0,
        timeout_s: float | None = None,
    ) -> Hold:
        """`async with client.hold(key, spec) as held:` — see `Hold`."""
        return Hold(self, key, spec, tokens=tokens, lease_ttl_s=lease_ttl_s, timeout_s=timeout_s)


async def _release_quietly(client: LimiterClient, grant: Grant) -> None:
    try:
        await client.release(grant)
    except LimiterUnavailable as exc:
        log.warning("%s: could not release a lease, it frees itself at its ttl: %s", grant.key, exc)


class Hold:
    """The budget of `key` for the length of an `async with` block.

    Entering waits for a grant (`grant`; the wait is `grant_wait_s`). While the block
    runs, the concurrency lease is renewed every `lease_ttl_s / 3`, so it outlives its ttl
    only as long as this process does. Leaving releases the lease, whether the block ends,
    raises or is cancelled. `lease_lost` turns true if a renewal found the lease expired
    (the backend was unreachable for longer than the ttl): the slot may be someone else's.
    """

    def __init__(
        self,
        client: LimiterClient,
        key: str,
        spec: LimitSpec,
        *,
        tokens: int = 0,
        lease_ttl_s: float = 60.0,
        timeout_s: float | None = None,
    ) -> None:
        if lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be positive, not {lease_ttl_s}")
        self.client = client
        self.key = key
        self.spec = spec
        self.tokens = tokens
        self.lease_ttl_s = lease_ttl_s
        self.timeout_s = timeout_s
        self.grant: Grant | None = None
        self.grant_wait_s = 0.0
        self.lease_lost = False
        self._heartbeat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Hold:
        if self.grant is not None:
            raise RuntimeError("a Hold can be entered once; call client.hold() again")
        started = time.monotonic()
        try:
            self.grant = await self.client.acquire(
                self.key,
                self.spec,
                tokens=self.tokens,
                lease_ttl_s=self.lease_ttl_s,
                timeout_s=self.timeout_s,
            )
        finally:
            self.grant_wait_s = time.monotonic() - started
        metrics.limit_wait(self.key, self.grant_wait_s)
        if self.grant.lease_id is not None:
            self._heartbeat = asyncio.create_task(
                self._renew_forever(self.grant), name=f"ado-lease-{self.key}"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        grant = self.grant
        if grant is None or grant.lease_id is None:
            return
        heartbeat = self._heartbeat
        if heartbeat is not None:
            heartbeat.cancel()
            if heartbeat.done() and not heartbeat.cancelled() and heartbeat.exception():
                log.warning("%s: the lease heartbeat failed: %r", self.key, heartbeat.exception())
        # Shielded: a second cancellation leaves the release running rather than undone.
        release = asyncio.ensure_future(_release_quietly(self.client, grant))
        await asyncio.shield(release)

    async def _renew_forever(self, grant: Grant) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl_s / 3)
            try:
                alive = await self.client.renew(grant, self.lease_ttl_s)
            except LimiterUnavailable as exc:
                log.warning("%s: could not renew a lease (will retry): %s", self.key, exc)
                continue
            if not alive:
                self.lease_lost = True
                log.warning("%s: a lease expired while its holder ran", self.key)
                return

    async def reconcile(self, actual_tokens: int) -> None:
        """Replace the token estimate with what the call actually used."""
        if self.grant is None:
            raise RuntimeError("reconcile inside the `async with` block")
        await self.client.reconcile(self.grant, actual_tokens)
