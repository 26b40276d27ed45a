"""The Redis limiter under real contention: several OS processes, many acquirers each.

Every grant carries the server time it was admitted at (Redis `TIME`), so the merged
grants of all processes can be checked against the limit itself: no window of the limit's
length, anywhere, may hold more than the limit, and a saturated limit must be used nearly
in full. It is run with the callers of each process batched into one script call (the
default), one call each, and with half the processes on the full script (a spec that also
has leases) and half on the request-only one. A lease whose holder is killed must free its
slot after its ttl, not before.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
import time
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

import pytest

from ado_ray.limits.base import Denied, Grant, LimitSpec, LimitTimeout
from ado_ray.limits.redis import RedisConfig, RedisLimiter

pytestmark = pytest.mark.integration

PROCESSES = 4
ACQUIRERS = 16  # per process
POLLERS = 2  # of those, per process: eager clients that probe every few ms instead of waiting
LIMIT = LimitSpec(requests=["20/1s"])
WITH_LEASES = LimitSpec(requests=["20/1s"], concurrency=10_000)  # acquire.lua, never full
COUNT, WINDOW_US = 20, 1_000_000
RUN_S = 3.0  # measured period, from the first grant
KEY = "test:shared"


def _acquire_until(
    url: str,
    mode: str,
    index: int,
    ready: Queue[int],
    start: Event,
    start_at: Synchronized[float],
    out: Queue[Any],
) -> None:
    asyncio.run(_acquire_until_async(url, mode, index, ready, start, start_at, out))


async def _acquire_until_async(
    url: str,
    mode: str,
    index: int,
    ready: Queue[int],
    start: Event,
    start_at: Synchronized[float],
    out: Queue[Any],
) -> None:
    limiter = RedisLimiter(RedisConfig(url=url, batch=mode != "one-by-one"))
    spec = WITH_LEASES if mode == "mixed" and index % 2 else LIMIT
    await limiter.snapshot(KEY, spec)  # connect and load the scripts before the start
    ready.put(os.getpid())
    await asyncio.to_thread(start.wait, 60)
    await asyncio.sleep(max(start_at.value - time.time(), 0))
    deadline = time.monotonic() + RUN_S + 0.4
    granted: list[float] = []

    async def acquirer() -> None:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                grant = await limiter.acquire(KEY, spec, timeout_s=remaining)
            except LimitTimeout:
                return
            granted.append(grant.granted_at)

    async def poller() -> None:  # would catch a window that lets entries go early
        while deadline > time.monotonic():
            result = await limiter.try_acquire(KEY, spec)
            if isinstance(result, Grant):
                granted.append(result.granted_at)
            await asyncio.sleep(random.uniform(0, 0.004))

    waiters = [acquirer() for _ in range(ACQUIRERS - POLLERS)]
    await asyncio.gather(*waiters, *(poller() for _ in range(POLLERS)))
    await limiter.close()
    out.put((os.getpid(), granted))


def _hold_a_lease(url: str, ttl_s: float, out: Queue[Any]) -> None:
    async def take() -> None:
        limiter = RedisLimiter.from_url(url)
        grant = await limiter.acquire(KEY, LimitSpec(concurrency=1), lease_ttl_s=ttl_s)
        out.put((grant.granted_at, grant.lease_id))

    asyncio.run(take())
    time.sleep(60)  # holds the lease and never renews or releases it; killed before this ends


def most_in_any_window(times_us: list[int], length_us: int) -> int:
    """The most admissions in any half-open window [t, t + length) starting at an admission
    (a window holding the most admissions can always be slid to start at one)."""
    most, end = 0, 0
    for start, t in enumerate(times_us):
        while end < len(times_us) and times_us[end] < t + length_us:
            end += 1
        most = max(most, end - start)
    return most


@pytest.mark.parametrize("mode", ["batched", "one-by-one", "mixed"])
def test_no_over_admission_across_processes(redis_url: str, mode: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready: Queue[int] = ctx.Queue()
    out: Queue[Any] = ctx.Queue()
    start = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(
            target=_acquire_until, args=(redis_url, mode, index, ready, start, start_at, out)
        )
        for index in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=60)
        start_at.value = time.time() + 0.2
        start.set()
        results = [out.get(timeout=30) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert all(proc.exitcode == 0 for proc in procs)

    times = sorted(round(t * 1_000_000) for _pid, granted in results for t in granted)
    most = most_in_any_window(times, WINDOW_US)
    first = times[0]
    in_period = sum(1 for t in times if t < first + round(RUN_S * 1_000_000))
    allowed = COUNT * RUN_S * 1_000_000 / WINDOW_US
    per_process = sorted(len(granted) for _pid, granted in results)
    # how long after a slot came free it was taken again (the N-th previous grant + 1 s)
    lags = sorted(times[i] - times[i - COUNT] - WINDOW_US for i in range(COUNT, len(times)))
    print(
        f"\n{mode}: {len(times)} grants from {PROCESSES}x{ACQUIRERS} acquirers {per_process}; "
        f"most in any 1s window {most} (limit {COUNT}); "
        f"{in_period} in the first {RUN_S}s = {100 * in_period / allowed:.1f}% of {allowed:.0f}; "
        f"slot reuse lag median {lags[len(lags) // 2] / 1000:.1f} ms, max {lags[-1] / 1000:.1f} ms"
    )
    assert most <= COUNT  # zero over-admission in every sliding window
    assert min(per_process) > 0  # every process was admitted, not just one
    assert in_period >= 0.95 * allowed


def test_a_killed_holder_frees_its_lease_after_the_ttl(redis_url: str) -> None:
    ttl_s = 1.5
    ctx = multiprocessing.get_context("spawn")
    out: Queue[Any] = ctx.Queue()
    proc = ctx.Process(target=_hold_a_lease, args=(redis_url, ttl_s, out))
    proc.start()
    try:
        held_at, lease_id = out.get(timeout=60)
    finally:
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=10)
    assert proc.exitcode == -signal.SIGKILL

    async def take_over() -> tuple[Denied | Any, Any]:
        limiter = RedisLimiter.from_url(redis_url)
        try:
            spec = LimitSpec(concurrency=1)
            refused = await limiter.try_acquire(KEY, spec)
            grant = await limiter.acquire(KEY, spec, timeout_s=ttl_s + 5)
            return refused, grant
        finally:
            await limiter.close()

    refused, grant = asyncio.run(take_over())
    assert isinstance(refused, Denied) and refused.kind == "concurrency"
    assert 0 < refused.retry_after_s <= ttl_s
    assert grant.lease_id != lease_id
    assert grant.granted_at >= held_at + ttl_s  # not before the ttl...
    assert grant.granted_at < held_at + ttl_s + 0.6  # ...and soon after it
