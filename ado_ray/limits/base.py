"""The `Limiter` protocol: shared request, token and concurrency budgets per limit key.

A limit key (`claude:subscription`, `command`, `git:github.com`) has a `LimitSpec`:

- `requests`: sliding windows such as `"5/2s"` or `"200/5h"`. Each admission is recorded
  with its time; a request is admitted only if every window of that length ending now holds
  fewer than N admissions, so no window of that length anywhere ever holds more than N.
- `tokens`: one window such as `"400000/1m"`. `try_acquire` reserves an estimate;
  `reconcile` replaces it with the actual count once the call is done.
- `concurrency`: at most N leases at once. A lease expires `lease_ttl_s` after it was
  taken or last renewed, so a holder that dies frees its slot without help.

`report_limited` puts a key in cooldown until the provider's reset time, for every client.
Admission is all or nothing: a denied request records nothing anywhere.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ado_ray.errors import AdoError, ConfigError

log = logging.getLogger(__name__)

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
WINDOW_FORM = "N/<number?><s|m|h|d|w>"
_WINDOW_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([smhdw])\s*$")
_BAD_KEY_CHARS = re.compile(r"[{}\s]")


class LimitTimeout(AdoError):
    """No rate-limit budget became free before the timeout."""


class LimiterUnavailable(AdoError):
    """The rate-limit backend cannot be reached; nothing is admitted until it answers."""


@dataclass(frozen=True)
class Window:
    """At most `count` per `seconds`, as written in `text`."""

    count: int
    seconds: float
    text: str

    @property
    def micros(self) -> int:
        return round(self.seconds * 1_000_000)


def parse_window(text: str) -> Window:
    """Parse `"5/2s"`, `"200/5h"`, `"10/w"` into a `Window`, or raise `ConfigError`."""
    match = _WINDOW_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(
            f"{text!r} is not a rate-limit window; expected {WINDOW_FORM}, "
            "e.g. '5/2s', '200/5h', '1000/1d' or '10/1w'"
        )
    count, number, unit = int(match[1]), float(match[2] or 1), match[3]
    if count < 1 or number <= 0:
        raise ConfigError(
            f"{text!r} allows nothing; expected {WINDOW_FORM} with N >= 1 and a length > 0"
        )
    return Window(count, number * UNIT_SECONDS[unit], text.strip())


def check_key(key: str) -> str:
    """A limit key is non-empty and has no braces or spaces (braces are Redis hash tags)."""
    if not key or _BAD_KEY_CHARS.search(key):
        raise ConfigError(
            f"{key!r} is not a limit key; expected a non-empty name without braces or "
            "spaces, e.g. 'claude:subscription' or 'git:github.com'"
        )
    return key


class LimitSpec(BaseModel):
    """The limits of one key. Invalid windows raise `ConfigError` naming the string."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: list[str] = Field(default_factory=list)
    tokens: str | None = None
    concurrency: int | None = None

    @field_validator("requests", mode="before")
    @classmethod
    def _check_requests(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            seen: dict[int, str] = {}
            for text in value:
                window = parse_window(text)
                if window.micros in seen:
                    raise ConfigError(
                        f"request windows {seen[window.micros]!r} and {text!r} have the same "
                        "length; keep one window per length"
                    )
                seen[window.micros] = text
            return list(value)
        return value

    @field_validator("tokens")
    @classmethod
    def _check_tokens(cls, value: str | None) -> str | None:
        if value is not None:
            parse_window(value)
        return value

    @field_validator("concurrency", mode="before")
    @classmethod
    def _check_concurrency(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"concurrency {value!r} is not a whole number; expected e.g. 4")
        if value is not None and value < 1:
            raise ConfigError(f"concurrency {value} admits nothing; expected 1 or more")
        return value

    @property
    def windows(self) -> list[Window]:
        return [parse_window(text) for text in self.requests]

    @property
    def token_window(self) -> Window | None:
        return None if self.tokens is None else parse_window(self.tokens)

    def check_tokens(self, key: str, tokens: int) -> None:
        """An estimate must fit the token window, or no wait could ever admit it."""
        if tokens < 0:
            raise ConfigError(f"{key}: a token estimate cannot be negative (got {tokens})")
        window = self.token_window
        if window is not None and tokens > window.count:
            raise ConfigError(
                f"{key}: a token estimate of {tokens} can never fit the limit {window.text}; "
                "lower the estimate or raise the limit"
            )


@dataclass(frozen=True)
class Grant:
    """An admission. `granted_at` is the backend's clock (Redis `TIME`), epoch seconds."""

    key: str
    lease_id: str | None
    tokens: int
    granted_at: float
    reservation_id: str | None = None  # the token reservation that `reconcile` adjusts


@dataclass(frozen=True)
class Denied:
    """Nothing was recorded. `kind` is what blocked longest: requests, tokens, concurrency
    or cooldown; only a concurrency block can clear before `retry_after_s` (by a release)."""

    key: str
    retry_after_s: float
    reason: str
    kind: str = "requests"


class AcquirePolicy(BaseModel):
    """How `acquire` waits: capped sleeps, a little jitter, backoff while the backend is down."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_sleep_s: float = Field(default=30.0, gt=0)  # re-check at least this often
    lease_poll_s: float = Field(default=0.25, gt=0)  # a release may free a slot early
    jitter_s: float = Field(default=0.01, ge=0)
    backoff_min_s: float = Field(default=0.05, gt=0)
    backoff_max_s: float = Field(default=2.0, gt=0)


class Limiter(Protocol):
    """Every method is a coroutine; a backend that cannot be reached raises
    `LimiterUnavailable`, except `acquire`, which waits for it (fail closed)."""

    unavailable_since: float | None

    async def try_acquire(
        self, key: str, spec: LimitSpec, *, tokens: int = 0, lease_ttl_s: float = 60.0
    ) -> Grant | Denied: ...

    async def acquire(
        self,
        key: str,
        spec: LimitSpec,
        *,
        tokens: int = 0,
        lease_ttl_s: float = 60.0,
        timeout_s: float | None = None,
    ) -> Grant: ...

    async def renew(self, grant: Grant, lease_ttl_s: float) -> bool: ...

    async def release(self, grant: Grant) -> None: ...

    async def reconcile(self, grant: Grant, actual_tokens: int) -> None: ...

    async def report_limited(self, key: str, reset_at: float) -> None: ...

    async def snapshot(self, key: str, spec: LimitSpec) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class LimiterBase(abc.ABC):
    """What every backend shares: `acquire`, a loop on the backend's `try_acquire`."""

    def __init__(self, policy: AcquirePolicy | None = None) -> None:
        self.policy = policy or AcquirePolicy()
        self.unavailable_since: float | None = None

    @abc.abstractmethod
    async def try_acquire(
        self, key: str, spec: LimitSpec, *, tokens: int = 0, lease_ttl_s: float = 60.0
    ) -> Grant | Denied: ...

    @abc.abstractmethod
    async def renew(self, grant: Grant, lease_ttl_s: float) -> bool: ...

    @abc.abstractmethod
    async def release(self, grant: Grant) -> None: ...

    @abc.abstractmethod
    async def reconcile(self, grant: Grant, actual_tokens: int) -> None: ...

    @abc.abstractmethod
    async def report_limited(self, key: str, reset_at: float) -> None: ...

    @abc.abstractmethod
    async def snapshot(self, key: str, spec: LimitSpec) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def acquire(
        self,
        key: str,
        spec: LimitSpec,
        *,
        tokens: int = 0,
        lease_ttl_s: float = 60.0,
        timeout_s: float | None = None,
    ) -> Grant:
        """Wait until `try_acquire` admits, or raise `LimitTimeout` after `timeout_s`."""
        policy = self.policy
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        backoff = policy.backoff_min_s
        while True:
            try:
                result = await self.try_acquire(key, spec, tokens=tokens, lease_ttl_s=lease_ttl_s)
            except LimiterUnavailable as exc:
                if self.unavailable_since is None:
                    self.unavailable_since = time.time()
                    log.warning("limiter unavailable, admitting nothing until it is back: %s", exc)
                delay = backoff * random.uniform(0.75, 1.0)  # spread reconnects out
                backoff = min(backoff * 2, policy.backoff_max_s)
                last = str(exc)
            else:
                if self.unavailable_since is not None:
                    log.warning("limiter is back after %.1fs", time.time() - self.unavailable_since)
                    self.unavailable_since = None
                backoff = policy.backoff_min_s
                if isinstance(result, Grant):
                    return result
                cap = policy.lease_poll_s if result.kind == "concurrency" else policy.max_sleep_s
                delay = min(result.retry_after_s, cap)
                delay += random.uniform(0, min(policy.jitter_s, delay / 10))
                last = result.reason
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise LimitTimeout(f"{key}: nothing admitted within {timeout_s}s ({last})")
                delay = min(delay, remaining)
            await asyncio.sleep(delay)


def snapshot_dict(
    key: str,
    spec: LimitSpec,
    *,
    now: float,
    used: list[int],
    tokens_used: int,
    leases: dict[str, float],
    cooldown_until: float,
) -> dict[str, Any]:
    """The one shape of `snapshot` for every backend (what `ado limits` prints)."""
    token_window = spec.token_window
    return {
        "key": key,
        "at": now,
        "requests": [
            {"window": w.text, "seconds": w.seconds, "limit": w.count, "used": n}
            for w, n in zip(spec.windows, used, strict=True)
        ],
        "tokens": None
        if token_window is None
        else {"window": token_window.text, "limit": token_window.count, "used": tokens_used},
        "concurrency": None
        if spec.concurrency is None
        else {
            "limit": spec.concurrency,
            "active": len(leases),
            "leases": [
                {"id": lease_id, "expires_in_s": round(expiry - now, 3)}
                for lease_id, expiry in sorted(leases.items(), key=lambda item: item[1])
            ],
        },
        "cooldown_until": cooldown_until if cooldown_until > now else None,
    }
