"""The sink on a real store, in-process (no Ray): batching, durability, order, outages."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ado_ray.errors import LeaseLostError, StoreError
from ado_ray.models import (
    BundleEvent,
    CheckpointEvent,
    Event,
    SessionEvent,
    Step,
    TaskState,
    TaskUpdate,
)
from ado_ray.store import Fence, Store, open_store
from ado_ray.store import sink as sink_module
from ado_ray.store.sink import Sink
from ado_ray.store.sqlite import SQLiteStore
from tests.store.conftest import RUN, Raw, create_run, dump


class Recorder:
    """The sink's store: a real one underneath; records each committed batch, fails on demand.

    The sink closes and reopens its store after a failure; this object stays the same and
    opens the real store again on the next apply.
    """

    def __init__(self, opener: Callable[[], Store]) -> None:
        self.opener = opener
        self.inner: Store | None = None
        self.batches: list[list[Event]] = []
        self.fail_next = 0  # fail this many apply calls
        self.down = False  # fail every apply call while True
        self.delay_s = 0.0  # block the calling thread this long in each apply
        self.attempts = 0

    def apply(self, events: Sequence[Event], fence: Fence | None = None) -> None:
        self.attempts += 1
        time.sleep(self.delay_s)
        if self.fail_next > 0:
            self.fail_next -= 1
            raise StoreError("injected failure")
        if self.down:
            raise StoreError("injected outage")
        if self.inner is None:
            self.inner = self.opener()
        self.inner.apply(events, fence)
        self.batches.append(list(events))

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None

    @property
    def written(self) -> list[Event]:
        return [event for batch in self.batches for event in batch]


@pytest.fixture
def tasks(store: Store) -> list[str]:
    return create_run(store, n_tasks=5)


@pytest.fixture
def recorder(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    recorder = Recorder(lambda: open_store(store_url))
    monkeypatch.setattr(sink_module, "open_store", lambda url: recorder)
    yield recorder
    recorder.close()


def updates(task_id: str, n: int, start: int = 1) -> list[Event]:
    """n TaskUpdates of one task, attempt numbers start, start + 1, ... (the last one wins)."""
    return [TaskUpdate(task_id, TaskState.RUNNING, attempt=i) for i in range(start, start + n)]


def attempt_of(store: Store, task_id: str) -> int:
    return next(t.attempt for t in store.list_tasks(RUN) if t.task_id == task_id)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_concurrent_submitters_share_few_transactions(
    store: Store, tasks: list[str], recorder: Recorder
) -> None:
    submitted: list[Event] = []

    async def submitter(i: int, sink: Sink) -> None:
        for event in updates(tasks[i % 5], 20, start=i * 100):
            submitted.append(event)  # no await between this and submit: same order
            await sink.submit([event])
            await asyncio.sleep(0)

    async def main() -> dict[str, object]:
        sink = Sink("unused", batch_size=500, max_delay_s=0.05)
        await asyncio.gather(*(submitter(i, sink) for i in range(50)))
        await sink.close()
        return sink.status()

    status = asyncio.run(main())
    assert len(submitted) == 1000
    assert recorder.written == submitted
    assert status["written"] == 1000 and status["pending"] == 0
    assert status["batches"] == len(recorder.batches) <= 4
    last = {e.task_id: e.attempt for e in submitted if isinstance(e, TaskUpdate)}
    assert {t: attempt_of(store, t) for t in tasks} == last


def test_a_batch_is_written_when_full_without_waiting_for_the_delay(
    tasks: list[str], recorder: Recorder
) -> None:
    async def main() -> None:
        sink = Sink("unused", batch_size=10, max_delay_s=60)
        await sink.submit(updates(tasks[0], 9))
        await asyncio.sleep(0.1)
        assert recorder.batches == []
        await sink.submit(updates(tasks[0], 1, start=10))
        await wait_for(lambda: len(recorder.batches) == 1)
        assert len(recorder.batches[0]) == 10
        await sink.close()

    asyncio.run(main())


def test_durable_submit_returns_once_another_store_can_read_it(
    store_url: str, tasks: list[str]
) -> None:
    reader = open_store(store_url)

    async def main() -> None:
        sink = Sink(store_url, max_delay_s=60)  # only a waiter makes it write
        await sink.submit([CheckpointEvent(tasks[0], Step.PREPARED, {"base_sha": "abc"})])
        await asyncio.sleep(0.1)
        assert sink.status()["pending"] == 1
        assert reader.checkpoints(tasks[0]) == {}
        started = time.monotonic()
        await sink.submit([TaskUpdate(tasks[0], TaskState.PREPARING, attempt=1)], durable=True)
        assert time.monotonic() - started < 5
        assert reader.checkpoints(tasks[0]) == {Step.PREPARED: {"base_sha": "abc"}}
        assert attempt_of(reader, tasks[0]) == 1
        assert sink.status()["batches"] == 1
        await sink.close()

    try:
        asyncio.run(main())
    finally:
        reader.close()


@pytest.mark.integration
def test_a_bundle_reaches_the_store_unchanged_through_a_ray_actor(
    ray_address: str, store: Store, store_url: str, tasks: list[str]
) -> None:
    import ray

    data = bytes(range(256)) * 4096  # 1 MiB, every byte value: pickled, not decoded
    events: list[Event] = [
        BundleEvent(tasks[0], "a" * 40, data),
        BundleEvent(tasks[1], "b" * 40, b"\0"),
    ]
    sink = ray.remote(Sink).options(num_cpus=0).remote(store_url)  # type: ignore[attr-defined]
    try:
        ray.get(sink.submit.remote(events, durable=True), timeout=60)
        ray.get(sink.close.remote(), timeout=60)
    finally:
        ray.kill(sink)
    assert store.bundle(tasks[0]) == ("a" * 40, data)
    assert store.bundle(tasks[1]) == ("b" * 40, b"\0")
    assert store.bundle(tasks[2]) is None


def test_flush_close_and_after(store_url: str, tasks: list[str]) -> None:
    async def main() -> Sink:
        sink = Sink(store_url, max_delay_s=60)
        await sink.flush()  # nothing to do
        await sink.submit(updates(tasks[1], 3))
        await sink.flush()
        assert sink.status()["pending"] == 0
        await sink.submit(updates(tasks[1], 2, start=4))
        await sink.close()  # flushes
        await sink.close()
        with pytest.raises(RuntimeError, match="closed"):
            await sink.submit(updates(tasks[1], 1))
        return sink

    sink = asyncio.run(main())
    assert sink.status()["written"] == 5
    with contextlib.closing(open_store(store_url)) as reader:
        assert attempt_of(reader, tasks[1]) == 5


def test_a_fenced_sink_writes_nothing_once_its_lease_is_taken_over(
    store: Store, store_url: str, tasks: list[str], raw: Raw
) -> None:
    """The store refuses a batch under a stale fence; the sink does not retry it, drops
    it and everything after it, and raises LeaseLostError to whoever waits."""
    fence = store.acquire_run_lock(RUN, "driver-a", 0).fence  # expired, still driver-a's

    async def main() -> dict[str, Any]:
        sink = Sink(store_url, max_delay_s=60, retry_max_s=0.01, fence=fence)
        await sink.submit(updates(tasks[0], 2), durable=True)
        assert attempt_of(store, tasks[0]) == 2
        assert store.acquire_run_lock(RUN, "driver-b", 60).owner == "driver-b"
        before = dump(raw)
        await sink.submit(updates(tasks[1], 3))
        with pytest.raises(LeaseLostError, match="lease is now generation 2, held by driver-b"):
            await sink.submit(updates(tasks[2], 1), durable=True)
        status = sink.status()
        assert (status["written"], status["refused"], status["pending"]) == (2, 4, 0)
        assert "4 events not written" in status["fenced"]
        await sink.submit(updates(tasks[3], 1))  # dropped at once
        assert sink.status()["refused"] == 5 and sink.status()["batches"] == 1
        with pytest.raises(LeaseLostError):
            await sink.flush()
        with pytest.raises(LeaseLostError):
            await sink.close()
        await sink.close()  # closed all the same
        return before

    before = asyncio.run(main())
    assert dump(raw) == before


def test_a_sink_that_never_writes_opens_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        sink = Sink(f"sqlite://{tmp_path}/never/state.db")
        await sink.flush()
        await sink.close()

    asyncio.run(main())
    assert not (tmp_path / "never").exists()


def test_failed_batches_are_retried_in_order(
    store: Store, tasks: list[str], recorder: Recorder
) -> None:
    recorder.down = True
    submitted = [*updates(tasks[2], 30), *updates(tasks[3], 30)]

    async def main() -> None:
        sink = Sink("unused", batch_size=7, max_delay_s=0.01, retry_max_s=0.02)
        for i in range(0, 60, 5):
            await sink.submit(submitted[i : i + 5])
            await asyncio.sleep(0.003)
            if i == 0:
                await wait_for(lambda: sink.status()["failing_since"] is not None)
                assert sink.status()["last_error"] == "StoreError: injected outage"
                recorder.fail_next, recorder.down = 3, False  # three more failures, then up
        await sink.flush()
        status = sink.status()
        assert (status["failing_since"], status["written"], status["gave_up"]) == (None, 60, False)
        await sink.close()

    asyncio.run(main())
    assert recorder.written == submitted
    assert recorder.attempts > len(recorder.batches) + 3
    assert (attempt_of(store, tasks[2]), attempt_of(store, tasks[3])) == (30, 30)


def test_a_locked_database_delays_writes_and_loses_nothing(
    store: Store, store_url: str, tasks: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = SQLiteStore.from_url(store_url).path
    recorder = Recorder(lambda: SQLiteStore(path, busy_timeout_s=0.05))
    monkeypatch.setattr(sink_module, "open_store", lambda url: recorder)
    submitted: list[Event] = []

    async def main() -> None:
        sink = Sink(store_url, max_delay_s=0.01, retry_max_s=0.02)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        for i in range(20):
            submitted.extend(updates(tasks[4], 5, start=i * 5 + 1))
            submitted.append(SessionEvent(tasks[4], i, "claude", None, 0, 1.0, "x.log", {}, "ok"))
            await sink.submit(submitted[-6:])
            await asyncio.sleep(0.03)
        await wait_for(lambda: sink.status()["failing_since"] is not None)
        assert "database is locked" in str(sink.status()["last_error"])
        assert sink.status()["written"] == 0
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - locked_at)))
        other.execute("ROLLBACK")
        other.close()
        await sink.close()
        assert sink.status()["failing_since"] is None

    asyncio.run(main())
    assert recorder.written == submitted
    assert attempt_of(store, tasks[4]) == 100
    assert [s.attempt for s in store.sessions(tasks[4])] == list(range(20))


def test_durable_waiters_get_the_error_after_give_up_and_events_survive(
    store: Store, tasks: list[str], recorder: Recorder
) -> None:
    recorder.down = True

    async def main() -> None:
        sink = Sink("unused", give_up_after_s=0.3, retry_max_s=0.02)
        started = time.monotonic()
        with pytest.raises(StoreError, match="injected outage; 3 events are waiting"):
            await sink.submit(updates(tasks[0], 3), durable=True)
        assert 0.3 <= time.monotonic() - started < 3
        assert sink.status()["gave_up"] is True
        with pytest.raises(StoreError, match="has not been able to write"):  # at once now
            await sink.submit(updates(tasks[0], 2, start=4), durable=True)
        with pytest.raises(StoreError):
            await sink.flush()
        recorder.down = False
        await wait_for(lambda: sink.status()["failing_since"] is None)
        await sink.submit(updates(tasks[0], 1, start=6), durable=True)
        assert sink.status()["gave_up"] is False
        await sink.close()

    asyncio.run(main())
    assert [e.attempt for e in recorder.written if isinstance(e, TaskUpdate)] == [1, 2, 3, 4, 5, 6]
    assert attempt_of(store, tasks[0]) == 6


def test_a_slow_store_does_not_block_the_event_loop(tasks: list[str], recorder: Recorder) -> None:
    recorder.delay_s = 0.3

    async def main() -> int:
        sink = Sink("unused", max_delay_s=0)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await sink.submit(updates(tasks[0], 1), durable=True)
        ticker.cancel()
        await sink.close()
        return ticks

    assert asyncio.run(main()) >= 5  # about 30; a blocked loop would make 0 or 1
