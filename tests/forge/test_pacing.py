"""`LimiterPacer` on the real in-memory limiter service."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ado_ray.forge.pacing import LimiterPacer
from ado_ray.limits.actor import Hold, LimiterClient, RateLimiterService
from ado_ray.limits.base import LimitSpec, LimitTimeout

HOST = "127.0.0.1:8080"


class RecordingClient(LimiterClient):
    """A real client that also records the keys it holds, in order."""

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self.held: list[str] = []

    def hold(self, key: str, spec: LimitSpec, **kwargs: Any) -> Hold:
        self.held.append(key)
        return super().hold(key, spec, **kwargs)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def enter(pacer: LimiterPacer, pr: bool = False) -> float:
    """How long entering `pacer.call()` waited."""
    started = time.monotonic()
    async with pacer.call(pr=pr):
        return time.monotonic() - started


def test_a_cooldown_stops_another_pacer_until_the_reset() -> None:
    async def main() -> None:
        client = LimiterClient(RateLimiterService())
        first = LimiterPacer(client, {}, HOST)
        second = LimiterPacer(client, {}, HOST)  # no limits configured at all
        other_host = LimiterPacer(client, {}, "gitlab.com")
        assert await enter(second) < 0.2
        await first.cooldown(time.time() + 0.6)
        assert await enter(other_host) < 0.2
        waited = await enter(second)
        assert 0.4 <= waited < 3.0
        assert await enter(second) < 0.2  # over once the reset has passed

    run(main())


def test_a_cooldown_blocks_pr_calls_too_and_respects_the_timeout() -> None:
    async def main() -> None:
        client = LimiterClient(RateLimiterService())
        pacer = LimiterPacer(client, {}, HOST, timeout_s=0.2)
        await pacer.cooldown(time.time() + 30)
        with pytest.raises(LimitTimeout):
            await enter(pacer, pr=True)

    run(main())


def test_pr_limits_count_pr_calls_only() -> None:
    async def main() -> None:
        limits = {f"forge:{HOST}:pr": LimitSpec(requests=["2/1m"])}
        pacer = LimiterPacer(LimiterClient(RateLimiterService()), limits, HOST, timeout_s=0.2)
        assert await enter(pacer, pr=True) < 0.2
        assert await enter(pacer, pr=True) < 0.2
        with pytest.raises(LimitTimeout):
            await enter(pacer, pr=True)
        for _ in range(5):
            assert await enter(pacer) < 0.2

    run(main())


def test_host_limits_count_every_call() -> None:
    async def main() -> None:
        limits = {f"forge:{HOST}": LimitSpec(requests=["3/1m"])}
        pacer = LimiterPacer(LimiterClient(RateLimiterService()), limits, HOST, timeout_s=0.2)
        await enter(pacer)
        await enter(pacer, pr=True)
        await enter(pacer)
        with pytest.raises(LimitTimeout):
            await enter(pacer)

    run(main())


def test_pr_calls_that_wait_out_a_host_cooldown_go_out_spaced_as_the_pr_budget_says() -> None:
    """The `:pr` admission is the moment of sending: it is taken after the host's cooldown,
    not before (then calls admitted during the wait would all go out when it ends)."""

    async def main() -> None:
        client = LimiterClient(RateLimiterService())
        pacer = LimiterPacer(client, {f"forge:{HOST}:pr": LimitSpec(requests=["2/1s"])}, HOST)
        reset = time.time() + 0.5
        await pacer.cooldown(reset)
        sent: list[float] = []

        async def create() -> None:
            async with pacer.call(pr=True):
                sent.append(time.time())

        await asyncio.gather(*(create() for _ in range(4)))
        sent.sort()
        assert sent[0] >= reset
        assert all(later - earlier >= 0.95 for earlier, later in zip(sent, sent[2:], strict=False))

    run(main())


def test_a_pr_call_without_its_own_key_holds_the_host_once() -> None:
    async def main() -> None:
        client = RecordingClient(RateLimiterService())
        limits = {f"forge:{HOST}": LimitSpec(concurrency=1)}
        pacer = LimiterPacer(client, limits, HOST, timeout_s=0.5)
        assert await enter(pacer, pr=True) < 0.3  # holding it twice would deadlock
        assert client.held == [f"forge:{HOST}"]

    run(main())


def test_concurrency_is_held_for_the_call() -> None:
    async def main() -> None:
        limits = {f"forge:{HOST}": LimitSpec(concurrency=1)}
        pacer = LimiterPacer(LimiterClient(RateLimiterService()), limits, HOST, timeout_s=0.2)
        async with pacer.call():
            with pytest.raises(LimitTimeout):
                await enter(pacer)
        assert await enter(pacer) < 0.2

    run(main())


def test_a_parent_budget_is_shared_but_cooldowns_stay_per_host() -> None:
    async def main() -> None:
        client = RecordingClient(RateLimiterService())
        limits = {"forge": LimitSpec(concurrency=1)}
        one = LimiterPacer(client, limits, HOST, timeout_s=0.2)
        two = LimiterPacer(client, limits, "gitlab.com", timeout_s=0.2)
        async with one.call():
            with pytest.raises(LimitTimeout):
                await enter(two)
        assert client.held[:2] == ["forge", f"forge:{HOST}"]
        await one.cooldown(time.time() + 30)
        assert await enter(two) < 0.2
        with pytest.raises(LimitTimeout):
            await enter(one)

    run(main())


def test_the_lease_is_released_when_the_call_raises() -> None:
    async def main() -> None:
        limits = {f"forge:{HOST}": LimitSpec(concurrency=1)}
        pacer = LimiterPacer(LimiterClient(RateLimiterService()), limits, HOST, timeout_s=0.2)
        with pytest.raises(RuntimeError):
            async with pacer.call():
                raise RuntimeError("the request failed")
        assert await enter(pacer) < 0.2

    run(main())
