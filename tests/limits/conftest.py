"""Limiter fixtures: a private Redis server per session, and `limiter` for every backend.

`async def` tests here run on the test's own event loop (the `event_loop` fixture), the
same loop that set up their limiter, so connections are opened and closed on one loop.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ado_ray.limits import open_limiter
from ado_ray.limits.base import LimiterBase
from ado_ray.limits.memory import MemoryLimiter
from tests.servers import RedisServer

BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.integration)]


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    params = inspect.signature(pyfuncitem.obj).parameters
    kwargs = {name: pyfuncitem.funcargs[name] for name in params}
    loop = pyfuncitem.funcargs.get("event_loop")
    if isinstance(loop, asyncio.AbstractEventLoop):
        loop.run_until_complete(pyfuncitem.obj(**kwargs))
    else:
        asyncio.run(pyfuncitem.obj(**kwargs))
    return True


@pytest.fixture
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, running (a fault test may have stopped it) and empty."""
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


def _open(backend: str, request: pytest.FixtureRequest) -> LimiterBase:
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    limiter = open_limiter(backend, url)
    assert isinstance(limiter, LimiterBase)
    return limiter


@pytest.fixture(params=BACKENDS)
def limiter(
    request: pytest.FixtureRequest, event_loop: asyncio.AbstractEventLoop
) -> Iterator[LimiterBase]:
    limiter = _open(request.param, request)
    try:
        yield limiter
    finally:
        event_loop.run_until_complete(limiter.close())


@pytest.fixture
def peer(
    limiter: LimiterBase, request: pytest.FixtureRequest, event_loop: asyncio.AbstractEventLoop
) -> Iterator[LimiterBase]:
    """Another client of the same limits: a second connection to Redis; in memory, the
    limiter itself (its clients are the callers that share the object)."""
    if isinstance(limiter, MemoryLimiter):
        yield limiter
        return
    other = _open("redis", request)
    try:
        yield other
    finally:
        event_loop.run_until_complete(other.close())
