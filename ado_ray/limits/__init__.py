"""Rate limits shared by every agent of a run: the `Limiter` protocol and its backends.

`memory` keeps limits inside one process (the default, nothing to install); `redis` shares
them between processes and machines. Both pass the same test suite. A run reaches them
through the `ado-rate-limiter` actor (`actor.py`), configured by `config.py`.
"""

from __future__ import annotations

import importlib

from ado_ray.errors import ConfigError
from ado_ray.limits.actor import (
    ACTOR_NAME,
    Hold,
    LimiterClient,
    RateLimiterService,
    limiter_actor,
    stop_limiter_actor,
)
from ado_ray.limits.base import (
    AcquirePolicy,
    Denied,
    Grant,
    Limiter,
    LimiterUnavailable,
    LimitSpec,
    LimitTimeout,
    Window,
    parse_window,
)
from ado_ray.limits.config import LimiterSettings, LimitTable, default_key, route

BACKENDS = {
    "memory": "ado_ray.limits.memory:MemoryLimiter",
    "redis": "ado_ray.limits.redis:RedisLimiter",
}

__all__ = [
    "ACTOR_NAME",
    "BACKENDS",
    "AcquirePolicy",
    "Denied",
    "Grant",
    "Hold",
    "LimitSpec",
    "LimitTable",
    "LimitTimeout",
    "Limiter",
    "LimiterClient",
    "LimiterSettings",
    "LimiterUnavailable",
    "RateLimiterService",
    "Window",
    "default_key",
    "limiter_actor",
    "open_limiter",
    "parse_window",
    "route",
    "stop_limiter_actor",
]


def open_limiter(backend: str, url: str | None = None) -> Limiter:
    """The limiter named `backend` (a key of `BACKENDS`), connected to `url` if it needs one."""
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown limiter backend {backend!r}; expected one of: {', '.join(sorted(BACKENDS))}"
        )
    module_name, _, class_name = BACKENDS[backend].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    limiter: Limiter = cls.from_url(url)
    return limiter
