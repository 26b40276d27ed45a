"""The `Store` protocol suite, run against every backend (conftest.BACKENDS); then what only
SQLite and `open_store` do."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ado_ray.errors import ConfigError, LeaseLostError, StoreError, UnknownRunError
from ado_ray.models import (
    TERMINAL_STATES,
    BundleEvent,
    CheckpointEvent,
    Event,
    FailureClass,
    RunStatus,
    SessionEvent,
    Step,
    TaskState,
    TaskUpdate,
    UsageEvent,
)
from ado_ray.store import BACKENDS, Fence, SessionRecord, Store, describe_store, open_store
from ado_ray.store.sqlfiles import load_migrations
from ado_ray.store.sqlite import SQLiteStore, split_script
from tests.store.conftest import (
    RUN,
    T0,
    TABLES,
    Raw,
    build_run,
    create_run,
    dump,
    mixed_life,
    only_migrations,
    open_raw,
)

# A bundle's bytes: binary, NULs and all (a real one is made in tests/engine/test_workspace.py).
BUNDLE = b"# v2 git bundle\n" + bytes(range(256)) * 4


def task(store: Store, task_id: str) -> Any:
    run_id = task_id.split("/")[0]
    return next(t for t in store.list_tasks(run_id) if t.task_id == task_id)


def full_batch(t0: str) -> list[Event]:
    """One event of each type, as a runner sends them for one attempt."""
    return [
        TaskUpdate(t0, TaskState.PREPARING, attempt=1, workspace="/w/t0", lease_owner="runner-1"),
        CheckpointEvent(t0, Step.PREPARED, {"base_sha": "abc"}),
        TaskUpdate(t0, TaskState.RUNNING, base_sha="abc"),
        SessionEvent(t0, 1, "claude", "sess-1", 0, 12.5, "/logs/t0.log", {"in": 10}, "ok"),
        UsageEvent(t0, 1, "anthropic/claude", input_tokens=10, output_tokens=20, cost_usd=0.01),
        CheckpointEvent(t0, Step.AGENT_DONE, {"session_id": "sess-1", "exit_code": 0}),
        TaskUpdate(t0, TaskState.CHANGED, branch="ado/x", commit_sha="def"),
        BundleEvent(t0, "def", BUNDLE),
        CheckpointEvent(t0, Step.COMMITTED, {"branch": "ado/x", "commit_sha": "def"}),
    ]


# --- runs and tasks ----------------------------------------------------------------------------


def test_create_run_round_trips(store: Store) -> None:
    run, tasks = build_run(n_tasks=3)
    store.create_run(run, list(reversed(tasks)))
    assert store.get_run(RUN) == replace(run, counts={"queued": 3})
    assert store.list_tasks(RUN) == [replace(t, updated_at=t.created_at) for t in tasks]


def test_create_run_is_all_or_nothing(store: Store, raw: Raw) -> None:
    run, tasks = build_run(n_tasks=3)
    duplicate = replace(tasks[2], task_id=f"{RUN}/dup", repo=tasks[0].repo)
    with pytest.raises(StoreError, match=RUN):
        store.create_run(run, [*tasks, duplicate])
    assert dump(raw) == {table: [] for table in TABLES}
    store.create_run(run, tasks)  # the failed attempt left nothing in the way
    assert store.get_run(RUN).counts == {"queued": 3}


def test_create_run_twice_is_refused(store: Store) -> None:
    create_run(store, n_tasks=2)
    run, tasks = build_run(n_tasks=3)
    with pytest.raises(StoreError):
        store.create_run(run, tasks)
    assert len(store.list_tasks(RUN)) == 2


def test_list_runs_newest_first_with_counts(store: Store) -> None:
    create_run(store, "run-a", 2, created_at=T0)
    create_run(store, "run-c", 0, created_at=T0 + timedelta(hours=2))
    create_run(store, "run-b", 3, created_at=T0 + timedelta(hours=1))
    store.apply(
        [
            TaskUpdate("run-b/t0", TaskState.RUNNING),
            TaskUpdate("run-b/t1", TaskState.FAILED, failure_class=FailureClass.AGENT),
        ]
    )
    runs = store.list_runs()
    assert [r.run_id for r in runs] == ["run-c", "run-b", "run-a"]
    assert [r.counts for r in runs] == [{}, {"queued": 1, "running": 1, "failed": 1}, {"queued": 2}]
    assert [r.run_id for r in store.list_runs(limit=2)] == ["run-c", "run-b"]
    assert store.get_run("run-b").counts == runs[1].counts


def test_get_run_by_prefix(store: Store) -> None:
    for run_id in ["20250131-abcdef", "20250131-abc999", "20250201-xyz", "run-1", "run-10"]:
        create_run(store, run_id, 1)
    assert store.get_run("20250201").run_id == "20250201-xyz"
    assert store.get_run("20250131-abcd").run_id == "20250131-abcdef"
    assert store.get_run("20250201").counts == {"queued": 1}
    assert store.get_run("run-1").run_id == "run-1"  # an exact id beats a longer match
    with pytest.raises(UnknownRunError, match=r"'20250131-abc' matches several runs.*more of"):
        store.get_run("20250131-abc")
    for missing in ["202", "2025%", "2025_", "nope-nope"]:  # too short, wildcards, no match
        with pytest.raises(UnknownRunError, match=rf"no run '{missing}' in .*`ado runs` lists"):
            store.get_run(missing)


def test_set_run_status(store: Store) -> None:
    create_run(store)
    store.set_run_status(RUN, RunStatus.INTERRUPTED)
    assert store.get_run(RUN).status is RunStatus.INTERRUPTED
    with pytest.raises(UnknownRunError, match="no run 'nope'"):
        store.set_run_status("nope", RunStatus.FINISHED)


def test_times_come_back_as_utc(store: Store) -> None:
    paris = timezone(timedelta(hours=1))
    create_run(store, created_at=datetime(2025, 1, 31, 13, 0, tzinfo=paris))
    for moment in [store.get_run(RUN).created_at, store.list_tasks(RUN)[0].updated_at]:
        assert moment == T0
        assert moment is not None and moment.utcoffset() == timedelta(0)


def test_requeue_tasks(store: Store) -> None:
    t0, t1, t2, t3 = create_run(store, n_tasks=4)
    (other,) = create_run(store, "run-0002", 1)
    store.apply(
        [
            TaskUpdate(t0, TaskState.FAILED, failure_class=FailureClass.INFRA, error="clone"),
            TaskUpdate(t1, TaskState.CANCELLED),
            TaskUpdate(t2, TaskState.RUNNING, lease_owner="runner-1"),
            TaskUpdate(t3, TaskState.CHANGED),
            TaskUpdate(other, TaskState.FAILED),
        ]
    )
    assert store.requeue_tasks(RUN, [TaskState.FAILED, TaskState.RUNNING]) == 2
    assert [t.state for t in store.list_tasks(RUN)] == ["queued", "cancelled", "queued", "changed"]
    assert task(store, t2).lease_owner is None
    assert task(store, other).state is TaskState.FAILED
    assert store.requeue_tasks(RUN, []) == 0


# --- events ------------------------------------------------------------------------------------


def test_apply_every_event_type(store: Store, raw: Raw) -> None:
    t0, t1, _ = create_run(store)
    store.apply(full_batch(t0))
    got = task(store, t0)
    assert (got.state, got.attempt, got.base_sha, got.branch, got.commit_sha) == (
        TaskState.CHANGED,
        1,
        "abc",
        "ado/x",
        "def",
    )
    assert (got.workspace, got.lease_owner) == ("/w/t0", None)
    assert got.updated_at is not None and got.updated_at > got.created_at
    checkpoints = store.checkpoints(t0)
    assert list(checkpoints) == [Step.PREPARED, Step.AGENT_DONE, Step.COMMITTED]
    assert checkpoints[Step.COMMITTED] == {"branch": "ado/x", "commit_sha": "def"}
    (session,) = store.sessions(t0)
    assert session.created_at is not None
    assert replace(session, created_at=None) == SessionRecord(
        t0, 1, "claude", "sess-1", 0, 12.5, "/logs/t0.log", {"in": 10}, "ok"
    )
    (usage,) = raw.rows("usage_records")
    assert {k: v for k, v in usage.items() if k != "created_at"} == {
        "task_id": t0,
        "attempt": 1,
        "key": "anthropic/claude",
        "input_tokens": 10,
        "output_tokens": 20,
        "cost_usd": 0.01,
    }
    assert store.bundle(t0) == ("def", BUNDLE)
    (bundle,) = raw.rows("bundles")
    assert (bundle["task_id"], bundle["size"], bytes(bundle["data"])) == (t0, len(BUNDLE), BUNDLE)
    assert task(store, t1).state is TaskState.QUEUED
    assert (store.checkpoints(t1), store.sessions(t1), store.bundle(t1)) == ({}, [], None)


def test_replayed_event_changes_nothing(store: Store, raw: Raw) -> None:
    t0, t1, _ = create_run(store)
    batch = [*full_batch(t0), TaskUpdate(t1, TaskState.NO_CHANGE, attempt=1)]
    store.apply(batch)
    before = dump(raw)
    time.sleep(0.01)  # a rewrite would now leave a different timestamp
    store.apply(batch[-1:])
    assert dump(raw) == before  # updated_at included
    store.apply(batch)
    after = dump(raw)
    # t0 walks through its states again, so only its updated_at may move.
    for row in [*before["tasks"], *after["tasks"]]:
        if row["task_id"] == t0:
            row["updated_at"] = None
    assert after == before


def test_checkpoint_replay_overwrites_data_and_keeps_created_at(store: Store, raw: Raw) -> None:
    (t0,) = create_run(store, n_tasks=1)
    store.apply([CheckpointEvent(t0, Step.PREPARED, {"base_sha": "old"})])
    (first,) = raw.rows("checkpoints")
    time.sleep(0.01)
    store.apply([CheckpointEvent(t0, Step.PREPARED, {"base_sha": "new"})])
    (second,) = raw.rows("checkpoints")
    assert second["created_at"] == first["created_at"]
    assert store.checkpoints(t0) == {Step.PREPARED: {"base_sha": "new"}}


def test_later_event_in_a_batch_wins(store: Store, raw: Raw) -> None:
    (t0,) = create_run(store, n_tasks=1)
    store.apply(
        [
            TaskUpdate(t0, TaskState.RUNNING, attempt=1, error="first"),
            TaskUpdate(t0, TaskState.FAILED, attempt=2, error="second"),
            CheckpointEvent(t0, Step.PREPARED, {"n": 1}),
            CheckpointEvent(t0, Step.PREPARED, {"n": 2}),
            SessionEvent(t0, 1, "claude", "s1", 1, 1.0, "a.log", {}, "first"),
            SessionEvent(t0, 1, "claude", "s2", 0, 2.0, "b.log", {}, "second"),
            UsageEvent(t0, 1, "k", input_tokens=1),
            UsageEvent(t0, 1, "k", input_tokens=2),
        ]
    )
    got = task(store, t0)
    assert (got.state, got.attempt, got.error) == (TaskState.FAILED, 2, "second")
    assert store.checkpoints(t0) == {Step.PREPARED: {"n": 2}}
    assert [(s.session_id, s.outcome) for s in store.sessions(t0)] == [("s2", "second")]
    assert [row["input_tokens"] for row in raw.rows("usage_records")] == [2]


def test_a_batch_leaves_the_rows_of_its_events_one_by_one(store: Store) -> None:
    batched, single = create_run(store, "run-a", 2), create_run(store, "run-b", 2)
    store.apply(mixed_life(*batched))
    for event in mixed_life(*single):
        store.apply([event])

    def seen(run_id: str, ids: list[str]) -> list[Any]:
        tasks = store.list_tasks(run_id)
        name = {task_id: f"t{i}" for i, task_id in enumerate(ids)}
        rows = [
            (t.state, t.attempt, t.base_sha, t.branch, t.commit_sha, t.failure_class, t.error,
             t.workspace, t.lease_owner)
            for t in tasks
        ]  # fmt: skip
        steps = [store.checkpoints(task_id) for task_id in ids]
        sessions = [
            [(s.attempt, s.session_id, s.usage, s.outcome) for s in store.sessions(task_id)]
            for task_id in ids
        ]
        changes = [
            (name[c.task_id], c.state, c.attempt, c.runner) for c in store.transitions(run_id)
        ]
        per_task = [[c for c in changes if c[0] == n] for n in sorted(name.values())]
        return [rows, steps, sessions, per_task]

    assert seen("run-a", batched) == seen("run-b", single)
    t0_states = [c[1] for c in seen("run-a", batched)[3][0]]
    assert t0_states == [
        TaskState.PREPARING, TaskState.RUNNING, TaskState.COLLECTING, TaskState.RUNNING,
        TaskState.CHANGED,
    ]  # fmt: skip
    assert task(store, batched[1]).failure_class is None  # cleared, then not failed again
    assert store.checkpoints(batched[0])[Step.PREPARED] == {"base_sha": "b"}


def test_none_keeps_a_column_and_clear_failure_resets_it(store: Store) -> None:
    (t0,) = create_run(store, n_tasks=1)
    store.apply([TaskUpdate(t0, TaskState.FAILED, failure_class=FailureClass.INFRA, error="x")])
    store.apply([TaskUpdate(t0, TaskState.PREPARING, attempt=2)])
    got = task(store, t0)
    assert (got.failure_class, got.error, got.attempt) == (FailureClass.INFRA, "x", 2)
    store.apply([TaskUpdate(t0, TaskState.PREPARING, clear_failure=True)])
    got = task(store, t0)
    assert (got.failure_class, got.error, got.attempt) == (None, None, 2)
    store.apply(
        [TaskUpdate(t0, TaskState.FAILED, failure_class=FailureClass.TIMEOUT, clear_failure=True)]
    )
    got = task(store, t0)
    assert (got.failure_class, got.error) == (FailureClass.TIMEOUT, None)


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_terminal_state_clears_lease_owner(store: Store, state: TaskState) -> None:
    (t0,) = create_run(store, n_tasks=1)
    store.apply([TaskUpdate(t0, TaskState.RUNNING, lease_owner="runner-1")])
    store.apply([TaskUpdate(t0, TaskState.COLLECTING)])
    assert task(store, t0).lease_owner == "runner-1"
    store.apply([TaskUpdate(t0, state, lease_owner="runner-2")])
    assert task(store, t0).lease_owner is None


@pytest.mark.parametrize(
    "bad_event",
    [
        TaskUpdate("no-such-task", TaskState.RUNNING),
        CheckpointEvent("no-such-task", Step.PREPARED, {}),
        SessionEvent("no-such-task", 1, "claude", None, None, 0.0, "x.log", {}, "ok"),
        UsageEvent("no-such-task", 1, "k"),
        BundleEvent("no-such-task", "abc", b"bundle"),
    ],
)
def test_event_for_an_unknown_task_fails_the_whole_batch(store: Store, bad_event: Event) -> None:
    (t0,) = create_run(store, n_tasks=1)
    with pytest.raises(StoreError, match="no-such-task"):
        store.apply([TaskUpdate(t0, TaskState.RUNNING), bad_event])
    assert task(store, t0).state is TaskState.QUEUED
    store.apply([TaskUpdate(t0, TaskState.RUNNING)])  # and the store still works
    assert task(store, t0).state is TaskState.RUNNING


def test_bundle_round_trips_and_is_none_when_absent(store: Store) -> None:
    t0, t1 = create_run(store, n_tasks=2)
    assert store.bundle(t0) is None
    big = bytes(range(256)) * 8192 + b"\0"  # 2 MiB and a byte, ending in NUL
    store.apply([BundleEvent(t0, "a" * 40, big)])
    assert store.bundle(t0) == ("a" * 40, big)
    assert store.bundle(t1) is None
    assert store.bundle("no-such-task") is None


def test_bundle_upsert_replaces_and_replay_changes_nothing(store: Store, raw: Raw) -> None:
    t0, t1 = create_run(store, n_tasks=2)
    store.apply([BundleEvent(t0, "a" * 40, b"first"), BundleEvent(t1, "c" * 40, b"other")])
    (first, _) = raw.rows("bundles")
    time.sleep(0.01)  # a rewrite would now leave a different timestamp
    store.apply([BundleEvent(t0, "a" * 40, b"first")])
    assert raw.rows("bundles")[0] == first
    store.apply([BundleEvent(t0, "b" * 40, b"second!"), BundleEvent(t0, "d" * 40, b"third")])
    assert store.bundle(t0) == ("d" * 40, b"third")  # the later event in a batch wins
    replaced, other = raw.rows("bundles")
    assert (replaced["task_id"], replaced["size"]) == (t0, 5)
    assert replaced["created_at"] > first["created_at"]  # a new bundle is a new record
    assert store.bundle(t1) == ("c" * 40, b"other")
    assert (other["task_id"], other["size"]) == (t1, 5)


# --- run locks ---------------------------------------------------------------------------------


def take(store: Store, owner: str, ttl_s: float = 60, run_id: str = RUN) -> tuple[str, int]:
    """acquire_run_lock, as (holder, generation)."""
    lease = store.acquire_run_lock(run_id, owner, ttl_s)
    return lease.owner, lease.generation


def test_run_lock_has_one_holder_and_each_new_holder_a_new_generation(store: Store) -> None:
    create_run(store)
    create_run(store, "run-0002", 1)
    assert store.get_run(RUN).lease is None  # never driven
    assert take(store, "driver-a") == ("driver-a", 1)
    assert take(store, "driver-a") == ("driver-a", 1)  # renewal: same generation
    assert take(store, "driver-b") == ("driver-a", 1)  # refused: the holder is returned
    assert take(store, "driver-b", run_id="run-0002") == ("driver-b", 1)  # another run
    store.release_run_lock(RUN, "driver-b")  # not the holder: ignored
    assert take(store, "driver-b") == ("driver-a", 1)
    store.release_run_lock(RUN, "driver-a")  # the row stays, as generation 2, held by nobody
    released = store.get_run(RUN).lease
    assert released is not None
    assert (released.owner, released.generation, released.expired) == ("", 2, True)
    assert take(store, "driver-b") == ("driver-b", 3)
    store.break_run_lock(RUN)
    assert take(store, "driver-c") == ("driver-c", 5)
    leases = {run.run_id: run.lease for run in store.list_runs()}
    assert {k: (v.owner, v.generation, v.expired) for k, v in leases.items() if v} == {
        RUN: ("driver-c", 5, False),
        "run-0002": ("driver-b", 1, False),
    }


def test_expired_run_lock_is_taken_over_and_renewal_extends_it(store: Store) -> None:
    create_run(store)
    assert take(store, "driver-a", 0) == ("driver-a", 1)  # expires at once
    lease = store.get_run(RUN).lease
    assert lease is not None and lease.expired
    assert take(store, "driver-b") == ("driver-b", 2)  # so it is taken over
    assert take(store, "driver-a") == ("driver-b", 2)
    store.break_run_lock(RUN)
    assert take(store, "driver-a", 0) == ("driver-a", 4)
    assert take(store, "driver-a") == ("driver-a", 4)  # renewed for a minute, even expired
    lease = store.get_run(RUN).lease
    assert lease is not None and not lease.expired
    assert lease.renewed_at is not None
    assert lease.expires_at - lease.renewed_at == timedelta(seconds=60)
    assert take(store, "driver-b") == ("driver-a", 4)
    store.break_run_lock(RUN)
    assert take(store, "driver-a", 0.2) == ("driver-a", 6)
    time.sleep(0.3)
    assert take(store, "driver-b") == ("driver-b", 7)


def test_run_lock_of_unknown_run(store: Store) -> None:
    with pytest.raises(UnknownRunError, match="no run 'nope'"):
        store.acquire_run_lock("nope", "driver-a", 60)


def test_a_write_under_a_stale_fence_is_refused_and_changes_nothing(store: Store, raw: Raw) -> None:
    t0, t1, _ = create_run(store)
    a = store.acquire_run_lock(RUN, "driver-a", 0)  # expires at once
    store.apply([TaskUpdate(t0, TaskState.RUNNING, attempt=1)], fence=a.fence)
    store.set_run_status(RUN, RunStatus.RUNNING, fence=a.fence)
    b = store.acquire_run_lock(RUN, "driver-b", 60)  # takes it over
    assert (b.owner, b.generation) == ("driver-b", a.generation + 1)
    before = dump(raw)
    late = [
        CheckpointEvent(t1, Step.PREPARED, {"base_sha": "abc"}),
        TaskUpdate(t1, TaskState.RUNNING),
    ]
    with pytest.raises(LeaseLostError) as refused:
        store.apply(late, fence=a.fence)
    assert (
        f"refused a batch of 2 events for run {RUN}: it was sent under lease generation 1, "
        "but the lease is now generation 2, held by driver-b"
    ) in str(refused.value)
    with pytest.raises(LeaseLostError, match="setting its status to finished"):
        store.set_run_status(RUN, RunStatus.FINISHED, fence=a.fence)
    with pytest.raises(LeaseLostError, match="requeueing its tasks"):
        store.requeue_tasks(RUN, [TaskState.RUNNING], fence=a.fence)
    assert dump(raw) == before

    store.apply(late, fence=b.fence)  # the holder's writes go through
    assert task(store, t1).state is TaskState.RUNNING
    assert store.requeue_tasks(RUN, [TaskState.RUNNING], fence=b.fence) == 2
    store.release_run_lock(RUN, "driver-b")
    with pytest.raises(LeaseLostError, match="the lease was released since"):
        store.apply([TaskUpdate(t0, TaskState.RUNNING)], fence=b.fence)
    assert task(store, t0).state is TaskState.QUEUED


def test_the_generation_decides_not_the_clock(store: Store) -> None:
    """An expired lease that nobody took over is still its holder's: its writes go through
    (nobody else can have written), and a renewal keeps the generation."""
    (t0,) = create_run(store, n_tasks=1)
    a = store.acquire_run_lock(RUN, "driver-a", 0)
    store.apply([TaskUpdate(t0, TaskState.RUNNING, attempt=3)], fence=a.fence)
    assert task(store, t0).attempt == 3
    assert store.acquire_run_lock(RUN, "driver-a", 60).fence == a.fence


def test_fenced_writes_need_a_lease_and_the_fences_run(store: Store) -> None:
    (t0,) = create_run(store, n_tasks=1)
    (other,) = create_run(store, "run-0002", 1)
    with pytest.raises(LeaseLostError, match="the run has no lease"):
        store.apply([TaskUpdate(t0, TaskState.RUNNING)], fence=Fence(RUN, 1))
    a = store.acquire_run_lock(RUN, "driver-a", 60)
    with pytest.raises(
        StoreError, match=f"task '{other}' belongs to run run-0002, not to run {RUN}"
    ):
        store.apply(
            [TaskUpdate(t0, TaskState.RUNNING), TaskUpdate(other, TaskState.RUNNING)], fence=a.fence
        )
    assert task(store, t0).state is TaskState.QUEUED  # all or nothing


def test_a_takeover_and_a_fenced_writer_race_linearizably(store_url: str, store: Store) -> None:
    """Driver A writes attempt 1, 2, 3, ... under its fence from its own connection while
    driver B takes the run over from another: A's writes stop at the first refusal, and
    what B reads right after taking over is A's last write, never one after it."""
    (t0,) = create_run(store, n_tasks=1)
    fence = store.acquire_run_lock(RUN, "driver-a", 0).fence  # expired: B may take it
    refused_at: list[int] = []
    writer = open_store(store_url)

    def write() -> None:
        for attempt in range(1, 100_000):
            try:
                writer.apply([TaskUpdate(t0, TaskState.RUNNING, attempt=attempt)], fence=fence)
            except LeaseLostError:
                refused_at.append(attempt)
                return

    thread = threading.Thread(target=write)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while task(store, t0).attempt < 20:  # A is well under way
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.01)
        assert store.acquire_run_lock(RUN, "driver-b", 60).owner == "driver-b"
        seen = task(store, t0).attempt
    finally:
        thread.join(30)
        writer.close()
    assert refused_at == [seen + 1]
    assert task(store, t0).attempt == seen


# --- schema ------------------------------------------------------------------------------------


def test_migrate_twice_is_a_no_op(store: Store, raw: Raw) -> None:
    t0, *_ = create_run(store)
    store.apply(full_batch(t0))
    before = dump(raw), raw.rows("schema_version")
    store.migrate()
    assert (dump(raw), raw.rows("schema_version")) == before


def _migrate_in_child(store_url: str, start: Any) -> None:
    store = open_store(store_url)
    start.wait(60)  # all children are up: migrate at the same moment
    store.migrate()
    store.close()


def test_concurrent_migrate_from_processes(store_url: str) -> None:
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(6)
    children = [spawn.Process(target=_migrate_in_child, args=(store_url, start)) for _ in range(6)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0] * 6
    store = open_store(store_url)
    try:
        create_run(store)
        assert store.get_run(RUN).counts == {"queued": 3}
    finally:
        store.close()
    raw = open_raw(store_url)
    try:
        versions = [row["version"] for row in raw.rows("schema_version")]
    finally:
        raw.close()
    assert versions and versions == sorted(set(versions))


def test_migrate_upgrades_a_version_1_store(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store made by an ado-ray that knew only 0001 gets 0002 (bundles), keeping its data."""
    v1_only = only_migrations(monkeypatch, 1)
    assert [name for _, name, _ in v1_only["sqlite"]] == ["0001_init.sql"]
    old = open_store(store_url)
    try:
        old.migrate()
        (t0,) = create_run(old, n_tasks=1)
        old.apply([CheckpointEvent(t0, Step.PREPARED, {"base_sha": "abc"})])
        with pytest.raises(StoreError, match="bundles"):
            old.bundle(t0)
    finally:
        old.close()
    monkeypatch.undo()
    new = open_store(store_url)
    try:
        new.migrate()
        assert new.checkpoints(t0) == {Step.PREPARED: {"base_sha": "abc"}}
        assert new.bundle(t0) is None
        new.apply([BundleEvent(t0, "a" * 40, b"bundle")])
        assert new.bundle(t0) == ("a" * 40, b"bundle")
    finally:
        new.close()
    raw = open_raw(store_url)
    try:
        versions = [row["version"] for row in raw.rows("schema_version")]
        assert versions == [v for v, _, _ in load_migrations("sqlite")] and versions[:3] == [
            1,
            2,
            3,
        ]
    finally:
        raw.close()


def test_migrate_gives_a_version_2_lease_a_generation(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease taken by an ado-ray before fencing (0003) stays its holder's, as generation
    0; the next holder gets generation 1."""
    only_migrations(monkeypatch, 2)
    old = open_store(store_url)
    try:
        old.migrate()
        create_run(old)
    finally:
        old.close()
    raw = open_raw(store_url)
    try:  # as the old acquire_run_lock wrote it: the lease runs for a minute
        expires = (datetime.now(UTC) + timedelta(seconds=60)).isoformat()
        columns = "run_locks (run_id, owner, expires_at)"
        raw.execute(f"INSERT INTO {columns} VALUES ('{RUN}', 'old', '{expires}')")
    finally:
        raw.close()
    monkeypatch.undo()
    new = open_store(store_url)
    try:
        new.migrate()
        lease = new.get_run(RUN).lease
        assert lease is not None
        assert (lease.owner, lease.generation, lease.renewed_at) == ("old", 0, None)
        assert not lease.expired
        assert take(new, "driver-a") == ("old", 0)  # still one driver per run
        new.break_run_lock(RUN)
        assert take(new, "driver-a") == ("driver-a", 2)
    finally:
        new.close()


def test_deleting_a_run_deletes_all_of_it(store: Store, raw: Raw) -> None:
    t0, *_ = create_run(store, "run-a")
    create_run(store, "run-b", 1)
    store.apply(full_batch(t0))
    store.acquire_run_lock("run-a", "driver-a", 60)
    assert all(dump(raw).values())  # every table has a row to lose
    raw.delete_run("run-a")
    remaining = dump(raw)
    assert [row["run_id"] for row in remaining.pop("runs")] == ["run-b"]
    assert [row["task_id"] for row in remaining.pop("tasks")] == ["run-b/t0"]
    assert remaining == {table: [] for table in remaining}


# --- SQLite and open_store only ----------------------------------------------------------------


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cases = {
        str(tmp_path / "a.db"): tmp_path / "a.db",
        f"sqlite://{tmp_path}/b.db": tmp_path / "b.db",
        f"sqlite:///{tmp_path}/b.db": tmp_path / "b.db",
        "sqlite:rel/c.db": Path("rel/c.db"),
        "d.db": Path("d.db"),
        "~/e.db": tmp_path / "home" / "e.db",
    }
    for url, path in cases.items():
        store = open_store(url)
        assert isinstance(store, SQLiteStore)
        assert store.path == path
    assert not (tmp_path / "rel").exists()  # opening connects to nothing
    with pytest.raises(ConfigError, match="names no file"):
        open_store("sqlite:")


def test_open_store_refuses_what_it_does_not_have(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(BACKENDS, "postgresql", raising=False)
    with pytest.raises(ConfigError, match=r"'postgresql' backend.*available backends: sqlite"):
        open_store("postgres://ado:s3cret@db/ado")
    with pytest.raises(ConfigError, match=r"unknown scheme 'mysql'.*sqlite, postgresql") as info:
        open_store("mysql://ado:s3cret@db/ado")
    assert "s3cret" not in str(info.value)


def test_describe_store_masks_passwords() -> None:
    assert (
        describe_store("postgresql://ado:s3cret@db:5432/ado") == "postgresql://ado:***@db:5432/ado"
    )
    assert (
        describe_store("postgresql://db/ado?sslmode=require&password=s3cret")
        == "postgresql://db/ado?sslmode=require&password=***"
    )
    for url in ["postgresql://ado@db/ado", "/var/ado/state.db", "sqlite:///x.db"]:
        assert describe_store(url) == url


def test_sqlite_creates_nothing_before_first_use(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "deep" / "state.db")
    assert not (tmp_path / "deep").exists()
    with store:
        store.migrate()
    conn = sqlite3.connect(tmp_path / "deep" / "state.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_sqlite_errors_name_the_file(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "state.db") as store:
        with pytest.raises(StoreError, match=r"state\.db: no such table: runs.*migrate\(\)"):
            store.list_runs()
        store.migrate()
        conn = sqlite3.connect(tmp_path / "state.db")
        conn.execute("INSERT INTO schema_version VALUES (999, 'later')")
        conn.commit()
        conn.close()
        with pytest.raises(StoreError, match=r"schema version 999.*upgrade ado-ray"):
            store.migrate()


def test_sqlite_locked_database_raises_then_recovers(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "state.db", busy_timeout_s=0.05) as store:
        store.migrate()
        (t0,) = create_run(store, n_tasks=1)
        other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match=r"state\.db: database is locked"):
            store.apply([TaskUpdate(t0, TaskState.RUNNING)])
        other.execute("ROLLBACK")
        other.close()
        store.apply([TaskUpdate(t0, TaskState.RUNNING)])
        assert task(store, t0).state is TaskState.RUNNING


def test_sqlite_store_is_shared_between_threads(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "state.db") as store:
        store.migrate()
        tasks = create_run(store, n_tasks=8)

        def work(task_id: str) -> None:
            for attempt in range(1, 31):
                store.apply([TaskUpdate(task_id, TaskState.RUNNING, attempt=attempt)])

        threads = [threading.Thread(target=work, args=(t,)) for t in tasks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {t.attempt for t in store.list_tasks(RUN)} == {30}


def test_naive_datetimes_are_taken_as_utc(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "state.db") as store:
        store.migrate()
        create_run(store, created_at=T0.replace(tzinfo=None))
        assert store.get_run(RUN).created_at == T0


def test_split_script() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE a (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER t AFTER INSERT ON a BEGIN DELETE FROM a; END;
    -- trailing comment
    """
    assert [s.splitlines()[-1].strip()[:12] for s in split_script(script)] == [
        "CREATE TABLE",
        "CREATE TRIGG",
    ]
    with pytest.raises(ValueError, match="ends inside a statement"):
        list(split_script("CREATE TABLE b (x)"))
