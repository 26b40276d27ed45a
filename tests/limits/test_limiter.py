"""One suite for every `Limiter` backend (in memory and a real Redis server).

Backends run on real time here (Redis takes its own `TIME`), so windows are fractions of a
second; the memory-only tests at the end use a fake clock for windows of hours and weeks.
"""

from __future__ import annotations

import asyncio
import random
import re
import time

import pytest
import redis

from ado_ray.errors import AdoError, ConfigError
from ado_ray.limits import BACKENDS, LimitSpec, Window, open_limiter, parse_window
from ado_ray.limits.base import (
    AcquirePolicy,
    Denied,
    Grant,
    LimiterBase,
    LimiterUnavailable,
    LimitTimeout,
)
from ado_ray.limits.memory import MemoryLimiter
from ado_ray.limits.redis import RedisConfig, RedisLimiter
from tests.servers import RedisServer

KEY = "test:provider"
FORM = "N/<number?><s|m|h|d|w>"


async def grant(
    limiter: LimiterBase, spec: LimitSpec, key: str = KEY, tokens: int = 0, lease_ttl_s: float = 60
) -> Grant:
    result = await limiter.try_acquire(key, spec, tokens=tokens, lease_ttl_s=lease_ttl_s)
    assert isinstance(result, Grant), result
    return result


async def denied(
    limiter: LimiterBase, spec: LimitSpec, key: str = KEY, tokens: int = 0, lease_ttl_s: float = 60
) -> Denied:
    result = await limiter.try_acquire(key, spec, tokens=tokens, lease_ttl_s=lease_ttl_s)
    assert isinstance(result, Denied), result
    return result


# -- specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "seconds"),
    [
        ("5/2s", 5, 2),
        ("200/5h", 200, 5 * 3600),
        ("1000/1d", 1000, 86_400),
        ("10/1w", 10, 604_800),
        ("400000/1m", 400_000, 60),
        ("3/s", 3, 1),
        ("5/0.5s", 5, 0.5),
        (" 7 / 10 m ", 7, 600),
    ],
)
def test_parse_window(text: str, count: int, seconds: float) -> None:
    window = parse_window(text)
    assert (window.count, window.seconds) == (count, seconds)
    assert window.micros == round(seconds * 1_000_000)


@pytest.mark.parametrize(
    "text", ["5", "5/2", "5/2y", "five/2s", "0/1s", "5/0s", "-1/1s", "5/2sec", "", "5/-2s", "1.5/s"]
)
def test_bad_window_is_a_config_error_naming_it(text: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(FORM)) as info:
        parse_window(text)
    assert repr(text) in str(info.value)


def test_limit_spec_parses_and_rejects() -> None:
    spec = LimitSpec(requests="5/2s", tokens="400000/1m", concurrency=2)
    assert spec.windows == [Window(5, 2.0, "5/2s")]
    assert spec.token_window == Window(400_000, 60.0, "400000/1m")
    with pytest.raises(ConfigError, match="'5 per second'"):
        LimitSpec(requests=["5/1s", "5 per second"])
    with pytest.raises(ConfigError, match="'lots'.*" + re.escape(FORM)):
        LimitSpec(tokens="lots")
    with pytest.raises(ConfigError, match="same length"):
        LimitSpec(requests=["5/60s", "10/1m"])
    with pytest.raises(ConfigError, match="concurrency 0"):
        LimitSpec(concurrency=0)


def test_open_limiter_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"'etcd'.*memory, redis"):
        open_limiter("etcd", None)
    with pytest.raises(ConfigError, match="redis://"):
        open_limiter("redis", None)
    assert set(BACKENDS) == {"memory", "redis"}
    assert isinstance(open_limiter("memory", None), MemoryLimiter)


async def test_bad_keys_and_estimates_are_config_errors(limiter: LimiterBase) -> None:
    with pytest.raises(ConfigError, match=re.escape("'a{b}'")):
        await limiter.try_acquire("a{b}", LimitSpec(concurrency=1))
    with pytest.raises(ConfigError, match="2000 can never fit the limit 1000/1m"):
        await limiter.acquire(KEY, LimitSpec(tokens="1000/1m"), tokens=2000)


# -- request windows -----------------------------------------------------------------------


async def test_window_admits_exactly_n_then_denies(limiter: LimiterBase) -> None:
    spec = LimitSpec(requests=["3/0.5s"])
    started = time.monotonic()
    grants = [await grant(limiter, spec) for _ in range(3)]
    no = await denied(limiter, spec)
    elapsed = time.monotonic() - started
    assert no.kind == "requests" and "3/0.5s" in no.reason
    assert 0.5 - elapsed - 0.01 <= no.retry_after_s <= 0.5
    assert [g.granted_at for g in grants] == sorted(g.granted_at for g in grants)
    assert abs(grants[0].granted_at - time.time()) < 1
    assert grants[0].lease_id is None and grants[0].reservation_id is None

    await asyncio.sleep(max(no.retry_after_s - 0.1, 0))
    await denied(limiter, spec)  # not before retry_after
    await asyncio.sleep(0.15)
    later = await grant(limiter, spec)
    assert later.granted_at - grants[0].granted_at >= 0.5


async def test_acquire_waits_for_the_window(limiter: LimiterBase) -> None:
    spec = LimitSpec(requests=["2/0.4s"])
    first = [await grant(limiter, spec) for _ in range(2)]
    started = time.monotonic()
    third = await limiter.acquire(KEY, spec, timeout_s=3)
    assert 0.3 <= time.monotonic() - started < 0.9
    assert third.granted_at - first[0].granted_at >= 0.4


async def test_acquire_times_out(limiter: LimiterBase) -> None:
    spec = LimitSpec(requests=["1/10s"])
    await grant(limiter, spec)
    started = time.monotonic()
    with pytest.raises(LimitTimeout, match=r"requests 1/10s") as info:
        await limiter.acquire(KEY, spec, timeout_s=0.2)
    assert isinstance(info.value, AdoError)
    assert 0.2 <= time.monotonic() - started < 1


async def test_the_tighter_window_rules(limiter: LimiterBase) -> None:
    spec = LimitSpec(requests=["2/0.3s", "3/1s"])
    await grant(limiter, spec)
    await grant(limiter, spec)
    short = await denied(limiter, spec)
    assert "2/0.3s" in short.reason and "3/1s" not in short.reason
    assert short.retry_after_s <= 0.3
    await asyncio.sleep(short.retry_after_s + 0.02)
    await grant(limiter, spec)
    long = await denied(limiter, spec)
    assert "3/1s" in long.reason and "2/0.3s" not in long.reason
    assert 0.5 < long.retry_after_s <= 0.7
    snap = await limiter.snapshot(KEY, spec)
    assert [w["used"] for w in snap["requests"]] == [1, 3]


# -- tokens --------------------------------------------------------------------------------


async def test_tokens_reserve_then_reconcile(limiter: LimiterBase) -> None:
    spec = LimitSpec(tokens="1000/10s")

    async def used() -> int:
        return int((await limiter.snapshot(KEY, spec))["tokens"]["used"])

    first = await grant(limiter, spec, tokens=600)
    assert first.tokens == 600 and first.reservation_id
    no = await denied(limiter, spec, tokens=500)
    assert no.kind == "tokens" and 9 < no.retry_after_s <= 10
    assert await used() == 600

    await limiter.reconcile(first, 300)  # it used less than estimated: room for 700
    assert await used() == 300
    second = await grant(limiter, spec, tokens=500)
    assert await used() == 800

    await limiter.reconcile(second, 900)  # it used more: over the limit, nothing fits
    assert await used() == 1200
    assert (await denied(limiter, spec, tokens=0)).kind == "tokens"
    await denied(limiter, spec, tokens=1)

    await limiter.reconcile(first, 0)
    assert await used() == 900
    await grant(limiter, spec, tokens=100)
    await denied(limiter, spec, tokens=1)


async def test_tokens_retry_after_waits_for_enough_to_leave(limiter: LimiterBase) -> None:
    spec = LimitSpec(tokens="100/0.5s")
    older = await grant(limiter, spec, tokens=60)
    await asyncio.sleep(0.1)
    newer = await grant(limiter, spec, tokens=40)
    one_leaves = await denied(limiter, spec, tokens=50)  # 40 + 50 fits once `older` leaves
    both_leave = await denied(limiter, spec, tokens=70)  # 70 needs both gone
    gap = newer.granted_at - older.granted_at
    assert one_leaves.retry_after_s <= 0.5 - gap + 0.01
    assert both_leave.retry_after_s - one_leaves.retry_after_s == pytest.approx(gap, abs=0.02)
    await asyncio.sleep(one_leaves.retry_after_s + 0.01)
    await grant(limiter, spec, tokens=50)


# -- concurrency ---------------------------------------------------------------------------


async def test_concurrency_limit_and_release(limiter: LimiterBase) -> None:
    spec = LimitSpec(concurrency=2)
    first, second = await grant(limiter, spec), await grant(limiter, spec)
    assert first.lease_id and second.lease_id and first.lease_id != second.lease_id
    no = await denied(limiter, spec, lease_ttl_s=60)
    assert no.kind == "concurrency" and 59 < no.retry_after_s <= 60
    await limiter.release(first)
    await limiter.release(first)  # twice is harmless
    third = await grant(limiter, spec)
    await denied(limiter, spec)
    await limiter.release(second)
    await limiter.release(third)
    assert (await limiter.snapshot(KEY, spec))["concurrency"]["active"] == 0


async def test_an_expired_lease_frees_its_slot(limiter: LimiterBase) -> None:
    spec = LimitSpec(concurrency=1)
    held = await grant(limiter, spec, lease_ttl_s=0.3)
    no = await denied(limiter, spec)
    assert 0.2 < no.retry_after_s <= 0.3
    await asyncio.sleep(0.15)
    await denied(limiter, spec)  # not before the ttl
    await asyncio.sleep(0.2)
    await grant(limiter, spec)
    assert await limiter.renew(held, 10) is False  # expired for good


async def test_renew_extends_a_lease(limiter: LimiterBase) -> None:
    spec = LimitSpec(concurrency=1)
    held = await grant(limiter, spec, lease_ttl_s=0.3)
    await asyncio.sleep(0.2)
    assert await limiter.renew(held, 0.5) is True
    await asyncio.sleep(0.2)  # past the first ttl
    no = await denied(limiter, spec)
    assert 0.2 < no.retry_after_s <= 0.3
    await limiter.release(held)
    assert await limiter.renew(held, 0.5) is False
    await grant(limiter, spec)


async def test_acquire_takes_a_released_slot_soon(limiter: LimiterBase) -> None:
    spec = LimitSpec(concurrency=1)
    held = await grant(limiter, spec, lease_ttl_s=60)
    waiter = asyncio.create_task(limiter.acquire(KEY, spec, timeout_s=5))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await limiter.release(held)
    released = time.monotonic()
    got = await waiter
    assert got.lease_id != held.lease_id
    assert time.monotonic() - released < limiter.policy.lease_poll_s + 0.2


# -- cooldown ------------------------------------------------------------------------------


async def test_report_limited_blocks_every_client(limiter: LimiterBase, peer: LimiterBase) -> None:
    spec = LimitSpec(requests=["100/1s"])
    reset_at = time.time() + 0.5
    await limiter.report_limited(KEY, reset_at)
    await limiter.report_limited(KEY, time.time() + 0.1)  # an earlier reset does not shorten
    await limiter.report_limited(KEY, time.time() - 5)  # a past reset changes nothing
    no = await denied(peer, spec)
    assert no.kind == "cooldown" and 0.3 < no.retry_after_s <= 0.5
    snap = await peer.snapshot(KEY, spec)
    assert snap["cooldown_until"] == pytest.approx(reset_at, abs=0.01)
    await grant(peer, spec, key="test:other")  # other keys are not affected
    got = await peer.acquire(KEY, spec, timeout_s=3)
    assert got.granted_at >= reset_at - 0.001
    assert (await limiter.snapshot(KEY, spec))["cooldown_until"] is None


# -- atomicity and snapshot ----------------------------------------------------------------


async def test_a_denied_request_records_nothing(limiter: LimiterBase) -> None:
    spec = LimitSpec(requests=["5/10s"], tokens="1000/10s", concurrency=1)

    async def use() -> tuple[int, int, int]:
        snap = await limiter.snapshot(KEY, spec)
        return (
            snap["requests"][0]["used"],
            snap["tokens"]["used"],
            snap["concurrency"]["active"],
        )

    held = await grant(limiter, spec, tokens=100)
    for _ in range(3):  # denied by concurrency: no window slot, no tokens
        assert (await denied(limiter, spec, tokens=100)).kind == "concurrency"
    assert await use() == (1, 100, 1)
    await limiter.release(held)
    assert (await denied(limiter, spec, tokens=950)).kind == "tokens"  # no slot, no lease
    assert await use() == (1, 100, 0)

    tight = LimitSpec(requests=["1/10s"], tokens="1000/10s", concurrency=1)
    first = await grant(limiter, tight, key="test:tight", tokens=10)
    await limiter.release(first)
    assert (await denied(limiter, tight, key="test:tight", tokens=10)).kind == "requests"
    snap = await limiter.snapshot("test:tight", tight)
    assert (snap["tokens"]["used"], snap["concurrency"]["active"]) == (10, 0)


async def test_snapshot_contents(limiter: LimiterBase) -> None:
    spec = LimitSpec(requests=["5/2s", "10/1m"], tokens="1000/1m", concurrency=3)
    empty = await limiter.snapshot(KEY, spec)
    assert empty["requests"] == [
        {"window": "5/2s", "seconds": 2.0, "limit": 5, "used": 0},
        {"window": "10/1m", "seconds": 60.0, "limit": 10, "used": 0},
    ]
    assert empty["tokens"] == {"window": "1000/1m", "limit": 1000, "used": 0}
    assert empty["concurrency"] == {"limit": 3, "active": 0, "leases": []}
    assert empty["cooldown_until"] is None

    grants = [await grant(limiter, spec, tokens=n, lease_ttl_s=30) for n in (100, 250)]
    await limiter.report_limited(KEY, time.time() + 30)
    snap = await limiter.snapshot(KEY, spec)
    assert snap["key"] == KEY and abs(snap["at"] - time.time()) < 1
    assert [w["used"] for w in snap["requests"]] == [2, 2]
    assert snap["tokens"]["used"] == 350
    leases = snap["concurrency"]["leases"]
    assert snap["concurrency"]["active"] == 2
    assert {lease["id"] for lease in leases} == {g.lease_id for g in grants}
    assert all(29 < lease["expires_in_s"] <= 30 for lease in leases)
    assert snap["cooldown_until"] == pytest.approx(time.time() + 30, abs=1)
    bare = await limiter.snapshot(KEY, LimitSpec())
    assert (bare["requests"], bare["tokens"], bare["concurrency"]) == ([], None, None)


# -- Redis only ----------------------------------------------------------------------------


@pytest.mark.integration
async def test_redis_keys_share_a_hash_tag_and_expire(redis_url: str) -> None:
    limiter = RedisLimiter(RedisConfig(url=redis_url))
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        spec = LimitSpec(requests=["2/0.2s", "5/0.3s"], tokens="10/0.2s", concurrency=2)
        held = await grant(limiter, spec, tokens=5, lease_ttl_s=0.2)
        await limiter.report_limited("test:cool", time.time() + 0.2)
        keys = sorted(raw.keys("*"))
        assert keys == [
            "ado:limit:{test:cool}:cooldown",
            "ado:limit:{test:provider}:leases",
            "ado:limit:{test:provider}:requests:200000",
            "ado:limit:{test:provider}:requests:300000",
            "ado:limit:{test:provider}:tokens",
            "ado:limit:{test:provider}:tokens:amount",
        ]
        assert all(0 < raw.pttl(key) <= 301 for key in keys)
        assert await limiter.renew(held, 0.25)
        assert 200 < raw.pttl("ado:limit:{test:provider}:leases") <= 251
        await asyncio.sleep(0.4)
        assert raw.keys("*") == []  # idle keys vanish
    finally:
        raw.close()
        await limiter.close()


@pytest.mark.integration
async def test_redis_down_mid_acquire_fails_closed(
    redis_server: RedisServer, redis_url: str
) -> None:
    policy = AcquirePolicy(backoff_max_s=0.2)
    limiter = RedisLimiter(RedisConfig(url=redis_url, socket_timeout_s=1), policy=policy)
    try:
        spec = LimitSpec(requests=["1/1s"])
        await grant(limiter, spec)
        waiter = asyncio.create_task(limiter.acquire(KEY, spec, timeout_s=15))
        await asyncio.sleep(0.1)
        redis_server.stop()
        await asyncio.sleep(1.5)  # the window has passed, but nobody can say so
        assert not waiter.done()
        assert limiter.unavailable_since is not None
        with pytest.raises(LimiterUnavailable, match=re.escape(redis_url)):
            await limiter.try_acquire(KEY, spec)
        redis_server.start()
        restarted = time.time()
        got = await asyncio.wait_for(waiter, 5)
        assert got.granted_at >= restarted - 0.01
        assert limiter.unavailable_since is None
    finally:
        redis_server.start()
        await limiter.close()


# -- memory only, fake clock ---------------------------------------------------------------


async def test_memory_long_windows_on_a_fake_clock() -> None:
    now = [1_700_000_000.0]
    limiter = MemoryLimiter(clock=lambda: now[0])
    spec = LimitSpec(requests=["2/1w", "200/5h"])
    first = await grant(limiter, spec)
    now[0] += 3600
    await grant(limiter, spec)
    no = await denied(limiter, spec)
    assert no.retry_after_s == pytest.approx(604_800 - 3600)
    now[0] = first.granted_at + 604_800 - 0.001
    await denied(limiter, spec)
    now[0] = first.granted_at + 604_800  # the first admission has just left the week
    await grant(limiter, spec)


async def test_memory_never_over_admits_in_any_window() -> None:
    rng = random.Random(7)
    now = [0.0]
    limiter = MemoryLimiter(clock=lambda: now[0])
    spec = LimitSpec(requests=["4/1s", "10/5s"])
    times = []
    for _ in range(3000):
        now[0] += rng.choice([0, 1 / 1024, 1 / 128, 1 / 8, 1 / 4, 1 / 2])  # exact in binary
        if isinstance(await limiter.try_acquire(KEY, spec), Grant):
            times.append(now[0])
    assert len(times) > 100
    for count, length in ((4, 1.0), (10, 5.0)):
        assert max(_most_in_any_window(times, length)) <= count


def _most_in_any_window(times: list[float], length: float) -> list[int]:
    """For each admission, how many admissions fall in [its time, its time + length)."""
    counts, end = [], 0
    for start, t in enumerate(times):
        while end < len(times) and times[end] < t + length:
            end += 1
        counts.append(end - start)
    return counts


# -- Redis: the request-only path (acquire_requests.lua) and batching ----------------------


def _script_calls(raw: redis.Redis) -> int:
    return int(raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.mark.integration
@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one-by-one"])
async def test_redis_concurrent_callers_get_exactly_n_in_order(redis_url: str, batch: bool) -> None:
    limiter = RedisLimiter(RedisConfig(url=redis_url, batch=batch))
    raw = redis.Redis.from_url(redis_url)
    spec = LimitSpec(requests=["10/5s", "12/10s"])
    try:
        await grant(limiter, spec, key="test:warm")  # connect and load the scripts
        raw.config_resetstat()
        results = await asyncio.gather(*(limiter.try_acquire(KEY, spec) for _ in range(40)))
        calls = _script_calls(raw)
        granted = [r for r in results if isinstance(r, Grant)]
        refused = [r for r in results if isinstance(r, Denied)]
        assert (len(granted), len(refused)) == (10, 30)
        if batch:  # one queue, one script call: admitted in the order they asked
            assert all(isinstance(r, Grant) for r in results[:10])
            assert calls <= 2  # the first caller may go alone, the rest together
        else:  # one call each, over several connections: any order
            assert calls == 40
        assert all(r.kind == "requests" and 4.5 < r.retry_after_s <= 5 for r in refused)
        assert "requests 10/5s: 10 in the window" in refused[0].reason
        snap = await limiter.snapshot(KEY, spec)
        assert [w["used"] for w in snap["requests"]] == [10, 10]
    finally:
        raw.close()
        await limiter.close()


@pytest.mark.integration
async def test_redis_request_only_and_full_scripts_share_a_key(redis_url: str) -> None:
    fast = RedisLimiter(RedisConfig(url=redis_url))
    full = RedisLimiter(RedisConfig(url=redis_url))
    only_requests = LimitSpec(requests=["3/5s"])
    with_leases = LimitSpec(requests=["3/5s"], concurrency=5)
    try:
        await grant(fast, only_requests)
        await grant(full, with_leases)
        await grant(fast, only_requests)
        assert (await denied(full, with_leases)).kind == "requests"  # sees fast's grants
        assert (await denied(fast, only_requests)).kind == "requests"  # and full's
        snap = await fast.snapshot(KEY, with_leases)
        assert (snap["requests"][0]["used"], snap["concurrency"]["active"]) == (3, 1)

        other = LimitSpec(requests=["100/1s"])
        await grant(fast, other, key="test:cool")
        await full.report_limited("test:cool", time.time() + 0.3)  # a cooldown appears
        results = await asyncio.gather(*(fast.try_acquire("test:cool", other) for _ in range(5)))
        assert all(isinstance(r, Denied) and r.kind == "cooldown" for r in results)
        assert (await fast.snapshot("test:cool", other))["requests"][0]["used"] == 1
        got = await fast.acquire("test:cool", other, timeout_s=3)
        assert isinstance(got, Grant)
    finally:
        await fast.close()
        await full.close()


@pytest.mark.integration
async def test_redis_a_caller_cancelled_before_its_batch_is_sent_records_nothing(
    redis_url: str,
) -> None:
    limiter = RedisLimiter(RedisConfig(url=redis_url))
    spec = LimitSpec(requests=["10/5s"])
    try:
        tasks = [asyncio.create_task(limiter.try_acquire(KEY, spec)) for _ in range(5)]
        await asyncio.sleep(0)  # every caller is queued, the batch not yet sent
        tasks[2].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[2], asyncio.CancelledError)
        assert sum(isinstance(r, Grant) for r in results) == 4
        assert (await limiter.snapshot(KEY, spec))["requests"][0]["used"] == 4
    finally:
        await limiter.close()


@pytest.mark.integration
async def test_redis_down_fails_every_caller_of_a_batch(
    redis_server: RedisServer, redis_url: str
) -> None:
    limiter = RedisLimiter(RedisConfig(url=redis_url, socket_timeout_s=1))
    spec = LimitSpec(requests=["10/1s"])
    try:
        await grant(limiter, spec)
        redis_server.stop()
        results = await asyncio.gather(
            *(limiter.try_acquire(KEY, spec) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, LimiterUnavailable) for r in results), results
        redis_server.start()
        back = await asyncio.gather(*(limiter.try_acquire(KEY, spec) for _ in range(3)))
        assert all(isinstance(r, Grant) for r in back)
    finally:
        redis_server.start()
        await limiter.close()
