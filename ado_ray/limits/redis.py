"""The Redis limiter: limits shared by every process on every machine of a run.

Each operation is one Lua script from `lua/` (KEYS and ARGV are documented at the top of
each file), so it is atomic on the server, and takes its time from Redis `TIME`, so clients
on many machines agree. A key's structures are named `ado:limit:{key}:...`; the braces are
a hash tag that keeps them in one cluster slot, and each one expires when it falls idle.
Connection failures become `LimiterUnavailable`; `acquire` then waits and never admits
without the server's word.

A key with only request windows (no tokens, no concurrency: the common case) takes a
cheaper path: `acquire_requests.lua`, which touches the cooldown and the windows only, and
admits a whole batch in one call. Callers of one client that ask for the same key while a
call for it is in flight wait for the next one, which asks for all of them (`batch`); the
script admits as many as every window has room for, in the order they asked.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ado_ray.errors import ConfigError
from ado_ray.limits.base import (
    AcquirePolicy,
    Denied,
    Grant,
    LimiterBase,
    LimiterUnavailable,
    LimitSpec,
    check_key,
    snapshot_dict,
)
from ado_ray.redact import mask_url

SCRIPTS = (
    "acquire",
    "acquire_requests",
    "renew",
    "release",
    "reconcile",
    "cooldown",
    "snapshot",
)
MAX_BATCH = 500  # callers admitted by one acquire_requests.lua call at most
# Errors that mean "the server did not answer", not "the server said no".
_UNAVAILABLE = (
    redis_errors.ConnectionError,  # includes BusyLoadingError
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,  # a replica during failover
    OSError,
)


@functools.cache
def lua_source(name: str) -> str:
    return (resources.files("ado_ray.limits") / "lua" / f"{name}.lua").read_text("utf-8")


class RedisConfig(BaseModel):
    """Settings of the Redis limiter (`limits.backend: redis`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="redis://[:password@]host:port/db or rediss://...")
    prefix: str = "ado:limit"
    socket_timeout_s: float = Field(default=5.0, gt=0)
    batch: bool = Field(
        default=True,
        description="ask for the callers of one key that wait together in one script call",
    )


@dataclass
class _Plan:
    """What every call for one key and spec sends: the keys and the windows' arguments."""

    keys: list[str]
    windows: list[int]  # count, length µs per request window
    requests_only: bool  # no tokens, no concurrency: acquire_requests.lua


@dataclass
class _Queue:
    """Callers of one plan waiting for the next acquire_requests.lua call, on one loop."""

    loop: asyncio.AbstractEventLoop
    waiting: list[tuple[asyncio.Future[Grant | Denied], int]] = field(default_factory=list)
    running: bool = False
    task: asyncio.Task[None] | None = None  # the running `_drain` (the loop holds it weakly)


class RedisLimiter(LimiterBase):
    def __init__(self, config: RedisConfig, *, policy: AcquirePolicy | None = None) -> None:
        super().__init__(policy)
        self.config = config
        self._redis: Redis = Redis.from_url(
            config.url,
            decode_responses=True,
            socket_timeout=config.socket_timeout_s,
            socket_connect_timeout=config.socket_timeout_s,
            # One immediate retry replaces a pooled connection the server closed; waiting
            # out an outage is `acquire`'s job, where it is visible (`unavailable_since`).
            retry=Retry(NoBackoff(), 1),
        )
        self._scripts = {name: self._redis.register_script(lua_source(name)) for name in SCRIPTS}
        self._client_id = uuid.uuid4().hex[:12]
        self._calls = itertools.count()
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._queues: dict[tuple[Any, ...], _Queue] = {}

    @classmethod
    def from_url(cls, url: str | None) -> RedisLimiter:
        if not url:
            raise ConfigError(
                "the redis limiter needs a url; expected e.g. redis://localhost:6379/0"
            )
        return cls(RedisConfig(url=url))

    def _keys(self, key: str, spec: LimitSpec | None = None) -> list[str]:
        base = f"{self.config.prefix}:{{{check_key(key)}}}"
        keys = [f"{base}:cooldown", f"{base}:leases", f"{base}:tokens", f"{base}:tokens:amount"]
        if spec is not None:
            keys += [f"{base}:requests:{window.micros}" for window in spec.windows]
        return keys

    def _plan(self, key: str, spec: LimitSpec) -> tuple[tuple[Any, ...], _Plan]:
        ident = (key, tuple(spec.requests), spec.tokens, spec.concurrency)
        plan = self._plans.get(ident)
        if plan is None:
            if len(self._plans) >= 4096:  # many one-off keys: start over rather than grow
                self._plans.clear()
            windows = [number for w in spec.windows for number in (w.count, w.micros)]
            requests_only = spec.tokens is None and spec.concurrency is None
            keys = self._keys(key, spec)
            plan = _Plan(keys[:1] + keys[4:] if requests_only else keys, windows, requests_only)
            self._plans[ident] = plan
        return ident, plan

    async def _run(self, script: str, keys: list[str], args: list[str | int]) -> Any:
        try:
            return await self._scripts[script](keys=keys, args=args)
        except _UNAVAILABLE as exc:
            raise LimiterUnavailable(
                f"redis at {mask_url(self.config.url)} did not answer: {exc}"
            ) from exc

    async def try_acquire(
        self, key: str, spec: LimitSpec, *, tokens: int = 0, lease_ttl_s: float = 60.0
    ) -> Grant | Denied:
        spec.check_tokens(key, tokens)
        ident, plan = self._plan(key, spec)
        if plan.requests_only:
            if self.config.batch:
                return await self._batched(key, spec, ident, plan, tokens)
            return (await self._acquire_requests(key, spec, plan, [tokens]))[0]
        token_window = spec.token_window
        args: list[str | int] = [
            f"{self._client_id}:{next(self._calls)}",
            tokens,
            token_window.count if token_window else 0,
            token_window.micros if token_window else 0,
            spec.concurrency or 0,
            uuid.uuid4().hex,
            round(lease_ttl_s * 1_000_000),
        ]
        args += plan.windows
        reply = await self._run("acquire", plan.keys, args)
        if reply[0] == 1:
            _ok, now_us, member, lease_id = reply
            reservation = member if token_window else None
            return Grant(key, lease_id or None, tokens, now_us / 1e6, reservation)
        _denied, retry_us, kind, blockers = reply
        retry = retry_us / 1e6
        return Denied(key, retry, _describe(spec, blockers, tokens, retry), kind)

    async def _acquire_requests(
        self, key: str, spec: LimitSpec, plan: _Plan, tokens: list[int]
    ) -> list[Grant | Denied]:
        """One acquire_requests.lua call for len(tokens) callers, in order."""
        args: list[str | int] = [f"{self._client_id}:{next(self._calls)}", len(tokens)]
        args += plan.windows
        now_us, admitted, retry_us, kind, blockers = await self._run(
            "acquire_requests", plan.keys, args
        )
        now, retry = now_us / 1e6, retry_us / 1e6
        results: list[Grant | Denied] = [Grant(key, None, n, now) for n in tokens[:admitted]]
        if admitted < len(tokens):  # no token window here: one reason fits every caller
            denied = Denied(key, retry, _describe(spec, blockers, 0, retry), kind)
            results += [denied] * (len(tokens) - admitted)
        return results

    async def _batched(
        self, key: str, spec: LimitSpec, ident: tuple[Any, ...], plan: _Plan, tokens: int
    ) -> Grant | Denied:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(ident)
        if queue is None or queue.loop is not loop:
            queue = self._queues[ident] = _Queue(loop)
        future: asyncio.Future[Grant | Denied] = loop.create_future()
        queue.waiting.append((future, tokens))
        if not queue.running:
            queue.running = True
            queue.task = loop.create_task(self._drain(key, spec, ident, plan, queue))
        return await future

    async def _drain(
        self, key: str, spec: LimitSpec, ident: tuple[Any, ...], plan: _Plan, queue: _Queue
    ) -> None:
        """Send the waiting callers, a batch per call, until none is left."""
        batch: list[tuple[asyncio.Future[Grant | Denied], int]] = []
        try:
            while queue.waiting:
                batch = [item for item in queue.waiting[:MAX_BATCH] if not item[0].done()]
                del queue.waiting[:MAX_BATCH]
                if not batch:
                    continue  # every caller in it was cancelled before it was sent
                try:
                    results = await self._acquire_requests(
                        key, spec, plan, [tokens for _, tokens in batch]
                    )
                except Exception as exc:  # each caller of the batch gets it raised
                    for future, _ in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (future, _), result in zip(batch, results, strict=True):
                    if not future.done():  # a caller cancelled in flight loses its grant
                        future.set_result(result)
        except BaseException:  # cancelled (the loop is closing): so is every caller it serves
            for future, _ in batch + queue.waiting:
                future.cancel()
            queue.waiting.clear()
            raise
        finally:
            queue.running = False
            queue.task = None
            if self._queues.get(ident) is queue:
                del self._queues[ident]  # idle: the next caller starts a new one

    async def renew(self, grant: Grant, lease_ttl_s: float) -> bool:
        if grant.lease_id is None:
            return False
        keys = self._keys(grant.key)[1:2]
        return bool(await self._run("renew", keys, [grant.lease_id, round(lease_ttl_s * 1e6)]))

    async def release(self, grant: Grant) -> None:
        if grant.lease_id is not None:
            await self._run("release", self._keys(grant.key)[1:2], [grant.lease_id])

    async def reconcile(self, grant: Grant, actual_tokens: int) -> None:
        if actual_tokens < 0:
            raise ValueError(f"actual tokens cannot be negative (got {actual_tokens})")
        if grant.reservation_id is not None:
            keys = self._keys(grant.key)[2:4]
            await self._run("reconcile", keys, [grant.reservation_id, actual_tokens])

    async def report_limited(self, key: str, reset_at: float) -> None:
        await self._run("cooldown", self._keys(key)[:1], [round(reset_at * 1_000_000)])

    async def snapshot(self, key: str, spec: LimitSpec) -> dict[str, Any]:
        token_window = spec.token_window
        args: list[str | int] = [token_window.micros if token_window else 0]
        args += [window.micros for window in spec.windows]
        now_us, cooldown_us, tokens_used, counts, leases = await self._run(
            "snapshot", self._keys(key, spec), args
        )
        now = now_us / 1e6
        return snapshot_dict(
            key,
            spec,
            now=now,
            used=[int(count) for count in counts],
            tokens_used=int(tokens_used),
            leases={leases[i]: float(leases[i + 1]) / 1e6 for i in range(0, len(leases), 2)},
            cooldown_until=cooldown_us / 1e6,
        )

    async def close(self) -> None:
        await self._redis.aclose()


def _describe(spec: LimitSpec, blockers: str, tokens: int, retry: float) -> str:
    """Turn acquire.lua's `kind:index:used,...` into the same reasons the memory backend gives."""
    reasons = []
    for blocker in blockers.split(","):
        kind, index, used = blocker.split(":")
        if kind == "requests":
            reasons.append(f"requests {spec.windows[int(index) - 1].text}: {used} in the window")
        elif kind == "tokens":
            reasons.append(f"tokens {spec.tokens}: {used} used, {tokens} asked")
        elif kind == "concurrency":
            reasons.append(f"concurrency {used} of {spec.concurrency} leases in use")
        else:
            reasons.append(f"cooldown for {retry:.1f}s")
    return "; ".join(reasons)
