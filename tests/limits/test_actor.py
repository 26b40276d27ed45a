"""The shared limiter: its settings, the detached `ado-rate-limiter` actor, and the client.

The client suite runs twice, against an in-process `RateLimiterService` and through the
actor on the session's Ray instance (memory backend); the actor tests at the end also run
one Redis-backed actor through an outage. Every test that starts an actor kills it again
(the `namespace` fixture): a detached actor outlives the driver that made it.
"""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import ray
from pydantic import BaseModel, ValidationError

from ado_ray.errors import ConfigError
from ado_ray.limits import (
    ACTOR_NAME,
    Denied,
    Grant,
    Hold,
    LimiterClient,
    LimiterSettings,
    LimiterUnavailable,
    LimitSpec,
    LimitTable,
    LimitTimeout,
    RateLimiterService,
    default_key,
    limiter_actor,
    route,
    stop_limiter_actor,
)
from ado_ray.limits.config import NO_LIMITS
from tests.servers import RedisServer

KEY = "test:provider"
MakeClient = Callable[[], LimiterClient]


async def eventually(check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    """Wait until the coroutine function `check` returns true."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# -- settings and the limits table ------------------------------------------------------------


def test_settings_default_to_memory() -> None:
    settings = LimiterSettings()
    assert (settings.backend, settings.url, settings.describe()) == ("memory", None, "memory")


def test_unknown_backend_lists_the_choices() -> None:
    with pytest.raises(ValidationError, match=r"unknown limiter backend 'etcd'.*memory, redis"):
        LimiterSettings(backend="etcd")


def test_redis_needs_a_url() -> None:
    with pytest.raises(ValidationError, match=r"the redis limiter needs a url; expected e\.g\."):
        LimiterSettings(backend="redis")
    assert LimiterSettings(backend="redis", url="redis://h:6379/0").url == "redis://h:6379/0"


def test_settings_reject_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="extra"):
        LimiterSettings.model_validate({"backend": "memory", "uri": "redis://h"})


def test_settings_never_show_the_password() -> None:
    settings = LimiterSettings(backend="redis", url="redis://:s3cret@cache:6379/0")
    assert "s3cret" not in repr(settings)
    assert settings.describe() == "redis at redis://:***@cache:6379/0"


class _Config(BaseModel):
    limits: LimitTable = {}


def test_limit_table_parses_specs_in_key_order() -> None:
    config = _Config.model_validate(
        {
            "limits": {
                "git:github.com": {"requests": "5/1s"},
                "claude:subscription": {"requests": ["200/5h"], "concurrency": 4},
            }
        }
    )
    assert list(config.limits) == ["claude:subscription", "git:github.com"]
    assert config.limits["claude:subscription"] == LimitSpec(requests=["200/5h"], concurrency=4)
    assert config.limits["git:github.com"].requests == ["5/1s"]


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"claude:sub": {"requests": ["5/2y"]}}, r"claude:sub: '5/2y' is not a rate-limit window"),
        ({"bad key": {}}, r"bad key: 'bad key' is not a limit key"),
        ({"command": {"concurrency": 0}}, r"command: concurrency 0 admits nothing"),
        ({"command": {"burst": 3}}, r"command: burst: Extra inputs are not permitted"),
        ({3: {}}, r"3: a limit key is a string"),
    ],
)
def test_limit_table_errors_name_the_key(limits: dict[Any, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _Config.model_validate({"limits": limits})


@pytest.mark.parametrize(
    ("agent", "mode", "key"),
    [
        ("claude", None, "claude"),
        ("claude", "subscription", "claude:subscription"),
        ("aider", "", "aider"),
    ],
)
def test_default_key(agent: str, mode: str | None, key: str) -> None:
    assert default_key(agent, mode) == key


def test_route_falls_back_to_the_parent_then_to_no_limit() -> None:
    claude, sub = LimitSpec(concurrency=2), LimitSpec(concurrency=1)
    table = {"claude": claude, "claude:subscription": sub}
    assert route(table, "claude:subscription") == ("claude:subscription", sub)
    assert route(table, "claude:api") == ("claude", claude)
    assert route(table, "claude") == ("claude", claude)
    assert route(table, "codex:api") == ("codex:api", NO_LIMITS)
    with pytest.raises(ConfigError):
        route(table, "a b")


# -- fixtures: the same suite in-process and through the actor ---------------------------------


@pytest.fixture
def namespace(ray_address: str) -> Iterator[str]:
    """A Ray namespace of this test's own; its limiter actor is killed at the end."""
    name = f"ado-test-{uuid.uuid4().hex[:8]}"
    yield name
    stop_limiter_actor(name)


@pytest.fixture(params=["in-process", pytest.param("actor", marks=pytest.mark.integration)])
def make_client(
    request: pytest.FixtureRequest, event_loop: asyncio.AbstractEventLoop
) -> Iterator[MakeClient]:
    """New clients of one limiter: a service in this process, or the actor."""
    if request.param == "actor":
        name = request.getfixturevalue("namespace")
        limiter_actor(LimiterSettings(), name)
        yield lambda: LimiterClient(ray.get_actor(ACTOR_NAME, namespace=name), namespace=name)
        return
    service = RateLimiterService(LimiterSettings())
    yield lambda: LimiterClient(service)
    event_loop.run_until_complete(service.close())


@pytest.fixture
def client(make_client: MakeClient) -> LimiterClient:
    return make_client()


# -- the client suite ---------------------------------------------------------------------


async def test_concurrent_holds_never_exceed_the_concurrency_limit(
    client: LimiterClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    spec = LimitSpec(concurrency=3)
    spans: list[tuple[float, float]] = []

    async def work(i: int) -> None:
        async with client.hold(KEY, spec, lease_ttl_s=10):
            entered = time.monotonic()
            await asyncio.sleep(0.03 + 0.01 * (i % 4))
            spans.append((entered, time.monotonic()))

    await asyncio.gather(*(work(i) for i in range(15)))
    assert len(spans) == 15
    edges = sorted([(t, 1) for t, _ in spans] + [(t, -1) for _, t in spans])
    inside, most = 0, 0
    for _t, step in edges:
        inside += step
        most = max(most, inside)
    assert most == 3  # never more, and the limit was reached (or the test proves nothing)
    assert (await client.snapshot({KEY: spec}))[0]["concurrency"]["active"] == 0


async def test_a_window_admits_exactly_n_per_window(
    make_client: MakeClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    spec, count, window_us = LimitSpec(requests=["5/0.5s"]), 5, 500_000
    clients = [make_client() for _ in range(4)]
    burst = await asyncio.gather(*(clients[i % 4].try_acquire(KEY, spec) for i in range(20)))
    assert sum(isinstance(r, Grant) for r in burst) == count
    assert all(r.kind == "requests" for r in burst if isinstance(r, Denied))

    deadline = time.monotonic() + 1.8
    granted: list[int] = [round(r.granted_at * 1e6) for r in burst if isinstance(r, Grant)]

    async def caller(c: LimiterClient) -> None:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                grant = await c.acquire(KEY, spec, timeout_s=remaining)
            except LimitTimeout:
                return
            granted.append(round(grant.granted_at * 1e6))

    await asyncio.gather(*(caller(clients[i % 4]) for i in range(8)))
    granted.sort()
    over = [i for i in range(count, len(granted)) if granted[i] - granted[i - count] < window_us]
    assert over == []  # no window of 0.5 s anywhere holds more than 5 (server time)
    assert len(granted) >= 4 * count  # and the limit was used: 4 windows began in 1.8 s


async def test_report_limited_cools_the_key_down_for_every_client(
    make_client: MakeClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    reporter, other = make_client(), make_client()
    spec = LimitSpec(requests=["100/1s"])
    reset_at = time.time() + 30
    await reporter.report_limited(KEY, reset_at)
    result = await other.try_acquire(KEY, spec)
    assert isinstance(result, Denied)
    assert result.kind == "cooldown"
    assert 25 < result.retry_after_s <= 30
    (row,) = await other.snapshot({KEY: spec})
    assert row["cooldown_until"] == pytest.approx(reset_at, abs=0.01)
    assert isinstance(await other.try_acquire("test:other", spec), Grant)  # other keys unaffected


async def test_hold_releases_when_the_block_raises(
    client: LimiterClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    spec = LimitSpec(concurrency=1)
    with pytest.raises(RuntimeError, match="agent crashed"):
        async with client.hold(KEY, spec, lease_ttl_s=60) as held:
            assert held.grant is not None and held.grant.lease_id is not None
            assert isinstance(await client.try_acquire(KEY, spec), Denied)
            raise RuntimeError("agent crashed")
    assert isinstance(await client.try_acquire(KEY, spec), Grant)  # long before the ttl


async def test_hold_releases_when_the_block_is_cancelled(
    client: LimiterClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    spec = LimitSpec(concurrency=1)
    inside = asyncio.Event()

    async def holder() -> None:
        async with client.hold(KEY, spec, lease_ttl_s=60):
            inside.set()
            await asyncio.sleep(3600)

    task = asyncio.ensure_future(holder())
    await inside.wait()
    assert isinstance(await client.try_acquire(KEY, spec), Denied)
    task.cancel()
    await asyncio.wait({task})
    assert task.cancelled()
    await eventually(lambda: _free(client, spec), timeout_s=2)


async def _free(client: LimiterClient, spec: LimitSpec) -> bool:
    (row,) = await client.snapshot({KEY: spec})
    return bool(row["concurrency"]["active"] == 0)


async def test_a_cancelled_wait_leaves_no_lease_and_no_waiter(
    client: LimiterClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    spec = LimitSpec(concurrency=1)
    first = client.hold(KEY, spec, lease_ttl_s=60)
    await first.__aenter__()
    waiter = asyncio.ensure_future(client.hold(KEY, spec, lease_ttl_s=60).__aenter__())

    async def waiting(n: int) -> bool:
        return bool((await client.status())["waiting"] == ({KEY: n} if n else {}))

    await eventually(lambda: waiting(1))
    waiter.cancel()
    await asyncio.wait({waiter})
    await eventually(lambda: waiting(0))  # the actor stopped waiting too
    await first.__aexit__(None, None, None)
    await asyncio.sleep(0.5)  # a leaked grant would have been made by now
    assert await _free(client, spec)


async def test_heartbeat_keeps_the_lease_past_its_ttl(
    client: LimiterClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    spec = LimitSpec(concurrency=1)
    competitor: list[Grant | Denied] = []
    async with client.hold(KEY, spec, lease_ttl_s=0.5) as held:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            competitor.append(await client.try_acquire(KEY, spec, lease_ttl_s=0.5))
            await asyncio.sleep(0.05)
        assert not held.lease_lost
    assert len(competitor) > 10
    assert all(isinstance(r, Denied) and r.kind == "concurrency" for r in competitor)
    assert isinstance(await client.try_acquire(KEY, spec), Grant)


async def test_a_lease_without_heartbeat_expires_at_its_ttl(
    client: LimiterClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    spec = LimitSpec(concurrency=1)  # the control for the test above: a crashed holder
    assert isinstance(await client.try_acquire(KEY, spec, lease_ttl_s=0.3), Grant)
    assert isinstance(await client.try_acquire(KEY, spec), Denied)
    await asyncio.sleep(0.4)
    assert isinstance(await client.try_acquire(KEY, spec), Grant)


async def test_hold_records_the_time_spent_waiting(
    client: LimiterClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    spec = LimitSpec(concurrency=1)
    first, second = client.hold(KEY, spec), client.hold(KEY, spec)

    async def run(held: Hold, start_after_s: float, body_s: float) -> None:
        await asyncio.sleep(start_after_s)
        async with held:
            await asyncio.sleep(body_s)

    await asyncio.gather(run(first, 0, 0.8), run(second, 0.1, 0))
    assert first.grant_wait_s < 0.3
    assert 0.5 <= second.grant_wait_s < 2.0  # the first held the slot for 0.8 s


async def test_acquire_times_out_with_limit_timeout(
    client: LimiterClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    spec = LimitSpec(concurrency=1)
    await client.acquire(KEY, spec)
    started = time.monotonic()
    with pytest.raises(LimitTimeout, match=r"test:provider: nothing admitted within 0.3s") as info:
        async with client.hold(KEY, spec, timeout_s=0.3):
            pytest.fail("admitted past the concurrency limit")
    assert type(info.value) is LimitTimeout  # not Ray's wrapper
    assert 0.25 < time.monotonic() - started < 3


async def test_bad_arguments_raise_their_own_errors(
    client: LimiterClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    with pytest.raises(ConfigError, match="'a b' is not a limit key"):
        await client.acquire("a b", LimitSpec())
    with pytest.raises(ConfigError, match="can never fit the limit 100/1m"):
        await client.try_acquire(KEY, LimitSpec(tokens="100/1m"), tokens=500)


async def test_reconcile_replaces_the_token_estimate(
    client: LimiterClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    spec = LimitSpec(tokens="1000/1m", concurrency=2)
    async with client.hold(KEY, spec, tokens=600) as held:
        assert (await client.snapshot({KEY: spec}))[0]["tokens"]["used"] == 600
        await held.reconcile(120)
    (row,) = await client.snapshot({KEY: spec})
    assert row["tokens"]["used"] == 120


async def test_snapshot_lists_configured_and_used_keys(
    client: LimiterClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    spec = LimitSpec(requests=["5/1s", "100/1h"], tokens="1000/1m", concurrency=2)
    other = LimitSpec(concurrency=3)
    grant = await client.acquire("claude:subscription", spec, tokens=40, lease_ttl_s=30)
    await client.acquire("command", other)
    rows = await client.snapshot({"claude:subscription": spec, "git:github.com": LimitSpec()})
    assert [row["key"] for row in rows] == ["claude:subscription", "command", "git:github.com"]
    claude, command, git = rows
    assert claude["spec"] == {"requests": ["5/1s", "100/1h"], "tokens": "1000/1m", "concurrency": 2}
    assert claude["requests"] == [
        {"window": "5/1s", "seconds": 1, "limit": 5, "used": 1},
        {"window": "100/1h", "seconds": 3600, "limit": 100, "used": 1},
    ]
    assert claude["tokens"] == {"window": "1000/1m", "limit": 1000, "used": 40}
    assert claude["concurrency"]["active"] == 1
    (lease,) = claude["concurrency"]["leases"]
    assert lease["id"] == grant.lease_id and 25 < lease["expires_in_s"] <= 30
    assert claude["cooldown_until"] is None
    assert (claude["configured"], claude["waiting"]) == (True, 0)
    assert (command["configured"], command["concurrency"]["active"]) == (False, 1)
    assert git["requests"] == [] and git["concurrency"] is None and git["tokens"] is None


async def test_status_counts_the_waiters_per_key(
    client: LimiterClient, event_loop: asyncio.AbstractEventLoop
) -> None:
    spec = LimitSpec(concurrency=1)
    status = await client.status()
    assert status == {
        "backend": "memory",
        "where": "memory",
        "unavailable_since": None,
        "waiting": {},
    }
    grant = await client.acquire(KEY, spec)
    waiters = [asyncio.ensure_future(client.acquire(KEY, spec)) for _ in range(2)]

    async def two_waiting() -> bool:
        return bool((await client.status())["waiting"] == {KEY: 2})

    await eventually(two_waiting)
    (row,) = await client.snapshot({KEY: spec})
    assert row["waiting"] == 2
    await client.release(grant)
    done, _ = await asyncio.wait(waiters, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1  # one slot, one waiter admitted
    await client.release(done.pop().result())
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert (await client.status())["waiting"] == {}


# -- the actor ------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_actor_is_named_detached_and_found_again(ray_address: str, namespace: str) -> None:
    # Started by another driver that has exited since: the actor must still be there.
    script = (
        "import ray\n"
        "from ado_ray.limits import LimiterSettings, limiter_actor\n"
        f"ray.init(address={ray_address!r}, log_to_driver=False)\n"
        f"limiter_actor(LimiterSettings(), {namespace!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    found = ray.get_actor(ACTOR_NAME, namespace=namespace)
    again = limiter_actor(LimiterSettings(), namespace)
    assert again._actor_id == found._actor_id
    assert ray.get(found.settings.remote()) == LimiterSettings()

    spec = LimitSpec(concurrency=2)
    grant = ray.get(again.acquire.remote(KEY, spec))
    rows = ray.get(found.snapshot.remote({KEY: spec}))
    assert rows[0]["concurrency"]["leases"][0]["id"] == grant.lease_id
    with pytest.raises(ValueError, match="Failed to look up actor"):
        ray.get_actor(ACTOR_NAME, namespace=f"{namespace}-other")


@pytest.mark.integration
def test_an_actor_with_other_settings_is_a_config_error(namespace: str) -> None:
    limiter_actor(LimiterSettings(), namespace)
    wanted = LimiterSettings(backend="redis", url="redis://:s3cret@cache:6379/0")
    with pytest.raises(ConfigError) as info:
        limiter_actor(wanted, namespace)
    message = str(info.value)
    assert f"namespace {namespace!r} already runs with memory" in message
    assert "asks for redis at redis://:***@cache:6379/0" in message
    assert "ray.kill(ray.get_actor('ado-rate-limiter'))" in message
    assert "s3cret" not in message
    assert stop_limiter_actor(namespace)
    assert not stop_limiter_actor(namespace)
    assert limiter_actor(wanted, namespace) is not None  # now it can start with the new ones


@pytest.mark.integration
def test_a_client_travels_to_a_worker(namespace: str) -> None:
    client = LimiterClient(limiter_actor(LimiterSettings(), namespace), namespace=namespace)
    spec = LimitSpec(requests=["10/1m"], concurrency=1)

    @ray.remote(num_cpus=0)
    def use(remote_client: LimiterClient) -> float:
        async def hold() -> float:
            async with remote_client.hold(KEY, spec, lease_ttl_s=5) as held:
                return held.grant_wait_s

        return asyncio.run(hold())

    assert ray.get(use.remote(client), timeout=120) < 5
    (row,) = asyncio.run(client.snapshot({KEY: spec}))
    assert (row["requests"][0]["used"], row["concurrency"]["active"]) == (1, 0)


def test_an_in_process_client_stays_in_its_process() -> None:
    with pytest.raises(TypeError, match="cannot leave its process"):
        pickle.dumps(LimiterClient(RateLimiterService()))


@pytest.mark.integration
async def test_a_redis_actor_fails_closed_while_redis_is_down(
    namespace: str,
    redis_url: str,
    redis_server: RedisServer,
    event_loop: asyncio.AbstractEventLoop,
) -> None:
    settings = LimiterSettings(backend="redis", url=redis_url)
    client = LimiterClient(limiter_actor(settings, namespace), namespace=namespace)
    spec = LimitSpec(requests=["100/1s"], concurrency=2)
    async with client.hold(KEY, spec) as held:
        assert held.grant is not None
    assert (await client.status())["backend"] == "redis"

    redis_server.stop()
    try:
        waiting = asyncio.ensure_future(client.acquire(KEY, spec))

        async def unavailable() -> bool:
            return (await client.status())["unavailable_since"] is not None

        await eventually(unavailable)
        await asyncio.sleep(0.3)
        assert not waiting.done()  # nothing is admitted without the server's word
    finally:
        redis_server.start()
    grant = await asyncio.wait_for(waiting, 10)
    assert grant.lease_id is not None
    assert (await client.status())["unavailable_since"] is None


@pytest.mark.integration
async def test_a_client_waits_for_a_replaced_actor(
    namespace: str, event_loop: asyncio.AbstractEventLoop
) -> None:
    client = LimiterClient(limiter_actor(LimiterSettings(), namespace), namespace=namespace)
    spec = LimitSpec(concurrency=1)
    assert isinstance(await client.try_acquire(KEY, spec), Grant)
    assert stop_limiter_actor(namespace)
    waiting = asyncio.ensure_future(client.acquire(KEY, spec))
    await asyncio.sleep(1.0)
    assert not waiting.done()  # fail closed: no actor, no admission
    assert client.unavailable_since is not None
    with pytest.raises(LimiterUnavailable, match="ado-rate-limiter' did not answer"):
        await client.try_acquire(KEY, spec)
    await asyncio.to_thread(limiter_actor, LimiterSettings(), namespace)  # a new one
    grant = await asyncio.wait_for(waiting, 10)  # found by name: a fresh memory backend
    assert grant.lease_id is not None
    assert client.unavailable_since is None
