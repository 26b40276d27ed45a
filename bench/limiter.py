"""Benchmark: our Redis limiter against the `limits` library's moving window, same Redis.

    .venv/bin/python bench/limiter.py [--url redis://...] [--clients 32] [--processes 1]

Two scenarios, each run for ours and then for theirs on the same server in the same run.
`redis µs` is the time Redis spent inside the scripts per attempt (INFO commandstats:
the scripts' total µs over every attempt, warm-up included), the server's share of the
cost; the rest is the Python client. Ours may answer many attempts with one script call.

- open: a limit so high that every call is admitted, so the figures are the raw cost of
  one admission (ours: `RedisLimiter.acquire`, theirs: `MovingWindowRateLimiter.hit`).
- saturated: a low limit hammered by every client (ours: `try_acquire`, theirs: `hit`);
  most calls are denied. Every grant of ours carries the Redis time it was admitted at,
  so each window of the limit's length is checked: more than N grants in any of them is
  over-admission, and the script exits 1 if there is any.

`limits` is a bench-only dependency (`pip install limits`). Without --url a private
redis-server is started on a free port (tests/servers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
Call = Callable[[str], Awaitable[int | None]]  # one attempt on a key: grant µs, -1 or None


@dataclass
class Result:
    ops: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    granted: list[int] = field(default_factory=list)  # ours: server µs; theirs: -1 each
    server_us: float = 0.0  # Redis time inside the scripts, per attempt (INFO commandstats)
    calls: int = 0  # attempts, warm-up included: what the server's total time is spread over

    def merge(self, other: Result, *, after: bool = False) -> None:
        """Add `other`, run at the same time (another process) or `after` this one."""
        if after:  # per call, over both
            total = self.ops + other.ops
            self.server_us = (self.server_us * self.ops + other.server_us * other.ops) / total
        self.ops += other.ops
        self.calls += other.calls
        self.seconds = self.seconds + other.seconds if after else max(self.seconds, other.seconds)
        self.latencies += other.latencies
        self.granted += other.granted


def make_call(
    lib: str, url: str, scenario: str, limit: str
) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """The admission call of one library for one scenario, and how to close it."""
    from ado_ray.limits.base import parse_window

    window = parse_window(limit)
    if lib == "ours":
        from ado_ray.limits.base import Grant, LimitSpec
        from ado_ray.limits.redis import RedisConfig, RedisLimiter

        ours = RedisLimiter(RedisConfig(url=url, prefix="bench:ours"))
        spec = LimitSpec(requests=[limit])

        async def ours_call(key: str) -> int | None:
            if scenario == "open":
                grant = await ours.acquire(key, spec)
            else:
                result = await ours.try_acquire(key, spec)
                if not isinstance(result, Grant):
                    return None
                grant = result
            return round(grant.granted_at * 1_000_000)

        return ours_call, ours.close

    from limits import RateLimitItemPerSecond
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    storage = RedisStorage("async+" + url, implementation="redispy", key_prefix="bench:theirs")
    limiter = MovingWindowRateLimiter(storage)
    if window.seconds != int(window.seconds):
        raise SystemExit(f"{limit}: limits' moving window needs whole seconds")
    item = RateLimitItemPerSecond(window.count, int(window.seconds))

    async def theirs_call(key: str) -> int | None:
        return -1 if await limiter.hit(item, key) else None

    async def theirs_close() -> None:
        pass  # limits' async storage has no close; the process ends soon

    return theirs_call, theirs_close


async def hammer(
    lib: str, url: str, scenario: str, limit: str, clients: int, seconds: float, start_at: float
) -> Result:
    call, close = make_call(lib, url, scenario, limit)
    result = Result()
    warm_until = time.monotonic() + 0.3
    while time.monotonic() < warm_until:  # connect and load the scripts, on another key
        await call(f"bench:{scenario}:warmup")
        result.calls += 1
    await asyncio.sleep(max(start_at - time.time(), 0))
    begin = time.perf_counter()
    end = begin + seconds

    async def client() -> None:
        while (started := time.perf_counter()) < end:
            granted = await call(f"bench:{scenario}")
            result.latencies.append(time.perf_counter() - started)
            result.ops += 1
            if granted is not None:
                result.granted.append(granted)

    await asyncio.gather(*(client() for _ in range(clients)))
    result.seconds = time.perf_counter() - begin
    result.calls += result.ops
    await close()
    return result


def _process(args: tuple[str, str, str, str, int, float, float]) -> Result:
    sys.path.insert(0, str(ROOT))
    return asyncio.run(hammer(*args))


def run(lib: str, scenario: str, limit: str, opts: argparse.Namespace, url: str) -> Result:
    import redis

    start_at = time.time() + (2.0 if opts.processes > 1 else 0.4)
    job = (lib, url, scenario, limit, opts.clients, opts.seconds, start_at)
    with redis.Redis.from_url(url) as admin:
        admin.config_resetstat()
        if opts.processes == 1:
            total = asyncio.run(hammer(*job))
        else:
            total = Result()
            with multiprocessing.get_context("spawn").Pool(opts.processes) as pool:
                for part in pool.map(_process, [job] * opts.processes):
                    total.merge(part)
        stats = admin.info("commandstats").get("cmdstat_evalsha", {})
    total.server_us = float(stats.get("usec", 0)) / max(total.calls, 1)
    return total


def over_admitted(granted_us: list[int], limit: str) -> int:
    """Grants that were the (N+1)-th inside some window of the limit's length."""
    from ado_ray.limits.base import parse_window

    window = parse_window(limit)
    n, window_us = window.count, window.micros
    times = sorted(granted_us)
    return sum(1 for i in range(n, len(times)) if times[i] - times[i - n] < window_us)


def figures(result: Result) -> tuple[float, float, float, float]:
    cuts = statistics.quantiles(result.latencies, n=100)
    return result.ops / result.seconds, cuts[49] * 1000, cuts[98] * 1000, result.server_us


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an existing Redis (default: start a private one)")
    parser.add_argument("--clients", type=int, default=32, help="asyncio clients per process")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.5, help="per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per library and scenario")
    parser.add_argument("--open-limit", default="1000000/1s", help="never reached")
    parser.add_argument("--tight-limit", default="50/1s", help="saturated")
    opts = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from tests.servers import RedisServer

    with contextlib.ExitStack() as stack:
        url = opts.url
        if url is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="ado-bench-redis-"))
            url = stack.enter_context(RedisServer(Path(workdir))).url  # type: ignore[attr-defined]
        rows = []
        over = 0
        for scenario, limit in (("open", opts.open_limit), ("saturated", opts.tight_limit)):
            totals = {"ours": Result(), "limits": Result()}
            for round_ in range(opts.rounds):  # alternate who goes first: the host drifts
                for lib in ("ours", "limits") if round_ % 2 == 0 else ("limits", "ours"):
                    totals[lib].merge(run(lib, scenario, limit, opts, url), after=True)
            ours, theirs = totals["ours"], totals["limits"]
            # every round used the same key: the check spans them all
            over += over_admitted(ours.granted, limit) if scenario == "saturated" else 0
            rows.append((scenario, limit, figures(ours), figures(theirs), ours, theirs))

    import limits

    print(
        f"Redis limiter, {opts.processes} process(es) x {opts.clients} clients, "
        f"{opts.rounds} x {opts.seconds:g}s per library and scenario; "
        f"limits {limits.__version__}; redis-py client for both"
    )
    print(
        f"{'scenario':<10} {'limit':<11} {'lib':<7} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'redis µs':>9} {'admitted':>9}"
    )
    for scenario, limit, mine, other, ours, theirs in rows:
        for lib, numbers, result in (("ours", mine, ours), ("limits", other, theirs)):
            ops, p50, p99, server_us = numbers
            print(
                f"{scenario:<10} {limit:<11} {lib:<7} {ops:>8.0f} {p50:>8.2f} {p99:>8.2f} "
                f"{server_us:>9.2f} {len(result.granted):>9}"
            )
        ratios = "".join(
            f" {a / b if b else float('nan'):>{w}.2f}x"
            for a, b, w in zip(mine, other, (7, 7, 7, 8), strict=True)
        )
        print(f"{'':<10} {'':<11} {'ratio':<7}{ratios}  (ours / limits)")
    print(f"over-admission (ours, Redis TIME, every {opts.tight_limit} window): {over}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
