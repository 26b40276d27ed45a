"""The in-memory limiter: one process, one event loop, nothing to install.

Every method does its whole check-and-record without an `await` in between, so on a single
event loop it is as atomic as the Redis scripts. The clock is injectable for tests.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ado_ray.limits.base import (
    AcquirePolicy,
    Denied,
    Grant,
    LimiterBase,
    LimitSpec,
    Window,
    check_key,
    snapshot_dict,
)

_TINY = 1e-6  # a retry is never "now": the blocking entry is still inside its window


@dataclass
class _Reservation:
    at: float
    amount: int


@dataclass
class _KeyState:
    requests: dict[int, deque[float]] = field(default_factory=dict)  # window µs -> times
    tokens: dict[str, _Reservation] = field(default_factory=dict)  # in time order
    leases: dict[str, float] = field(default_factory=dict)  # lease id -> expiry
    cooldown_until: float = 0.0

    def expire(self, now: float, windows: list[Window], tokens: Window | None) -> None:
        for window in windows:
            times = self.requests.setdefault(window.micros, deque())
            while times and times[0] <= now - window.seconds:
                times.popleft()
        if tokens is not None:
            for rid, reservation in list(self.tokens.items()):
                if reservation.at > now - tokens.seconds:
                    break  # insertion order is time order
                del self.tokens[rid]
        for lease_id, expiry in list(self.leases.items()):
            if expiry <= now:
                del self.leases[lease_id]

    def tokens_used(self) -> int:
        return sum(reservation.amount for reservation in self.tokens.values())


class MemoryLimiter(LimiterBase):
    """Limits shared by the callers of this one object (one process)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, policy: AcquirePolicy | None = None
    ) -> None:
        super().__init__(policy)
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._ids = itertools.count()

    @classmethod
    def from_url(cls, url: str | None) -> MemoryLimiter:
        return cls()  # nothing to connect to; a url meant for another backend is ignored

    def _state(self, key: str) -> _KeyState:
        return self._keys.setdefault(check_key(key), _KeyState())

    async def try_acquire(
        self, key: str, spec: LimitSpec, *, tokens: int = 0, lease_ttl_s: float = 60.0
    ) -> Grant | Denied:
        spec.check_tokens(key, tokens)
        state, now = self._state(key), self._clock()
        if state.cooldown_until > now:
            wait = state.cooldown_until - now
            return Denied(key, wait, f"cooldown for {wait:.1f}s", "cooldown")
        windows, token_window = spec.windows, spec.token_window
        state.expire(now, windows, token_window)
        blocks: list[tuple[float, str, str]] = []  # (retry after, kind, reason)
        for window in windows:
            times = state.requests[window.micros]
            if len(times) >= window.count:
                retry = times[len(times) - window.count] + window.seconds - now
                reason = f"requests {window.text}: {len(times)} in the window"
                blocks.append((retry, "requests", reason))
        if token_window is not None:
            used = state.tokens_used()
            if used >= token_window.count or used + tokens > token_window.count:
                retry, left = token_window.seconds, used
                for reservation in state.tokens.values():
                    left -= reservation.amount
                    if left < token_window.count and left + tokens <= token_window.count:
                        retry = reservation.at + token_window.seconds - now
                        break
                reason = f"tokens {token_window.text}: {used} used, {tokens} asked"
                blocks.append((retry, "tokens", reason))
        if spec.concurrency is not None and len(state.leases) >= spec.concurrency:
            expiries = sorted(state.leases.values())
            retry = expiries[len(expiries) - spec.concurrency] - now
            reason = f"concurrency {len(state.leases)} of {spec.concurrency} leases in use"
            blocks.append((retry, "concurrency", reason))
        if blocks:
            retry, kind, _reason = max(blocks)
            reasons = "; ".join(reason for _retry, _kind, reason in blocks)
            return Denied(key, max(retry, _TINY), reasons, kind)

        for window in windows:
            state.requests[window.micros].append(now)
        reservation_id = None
        if token_window is not None:
            reservation_id = f"{now:.6f}-{next(self._ids)}"
            state.tokens[reservation_id] = _Reservation(now, tokens)
        lease_id = None
        if spec.concurrency is not None:
            lease_id = uuid.uuid4().hex
            state.leases[lease_id] = now + lease_ttl_s
        return Grant(key, lease_id, tokens, now, reservation_id)

    async def renew(self, grant: Grant, lease_ttl_s: float) -> bool:
        state, now = self._state(grant.key), self._clock()
        expiry = state.leases.get(grant.lease_id or "")
        if expiry is None or expiry <= now:
            state.leases.pop(grant.lease_id or "", None)
            return False
        state.leases[grant.lease_id or ""] = now + lease_ttl_s
        return True

    async def release(self, grant: Grant) -> None:
        self._state(grant.key).leases.pop(grant.lease_id or "", None)

    async def reconcile(self, grant: Grant, actual_tokens: int) -> None:
        if actual_tokens < 0:
            raise ValueError(f"actual tokens cannot be negative (got {actual_tokens})")
        reservation = self._state(grant.key).tokens.get(grant.reservation_id or "")
        if reservation is not None:  # else it has left its window: nothing to adjust
            reservation.amount = actual_tokens

    async def report_limited(self, key: str, reset_at: float) -> None:
        state = self._state(key)
        state.cooldown_until = max(state.cooldown_until, reset_at)

    async def snapshot(self, key: str, spec: LimitSpec) -> dict[str, Any]:
        state, now = self._state(key), self._clock()
        windows, token_window = spec.windows, spec.token_window
        state.expire(now, windows, token_window)
        return snapshot_dict(
            key,
            spec,
            now=now,
            used=[len(state.requests[window.micros]) for window in windows],
            tokens_used=state.tokens_used(),
            leases=dict(state.leases),
            cooldown_until=state.cooldown_until,
        )

    async def close(self) -> None:
        self._keys.clear()
