"""What only the PostgreSQL store does, on the session's private server: migrations under
an advisory lock, fast and masked errors when the server is gone, and the sink riding out
an outage. The protocol itself is tested by test_store.py, against every backend."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
import time
from typing import Any

import psycopg
import pytest

from ado_ray.errors import ConfigError, StoreError
from ado_ray.models import CheckpointEvent, Event, SessionEvent, Step, TaskState, TaskUpdate
from ado_ray.store import open_store
from ado_ray.store import sink as sink_module
from ado_ray.store.postgres import PostgresStore, batch_statements, event_statement
from ado_ray.store.sink import Sink
from ado_ray.store.sqlfiles import load_migrations, load_queries
from tests.servers import PostgresServer, free_port
from tests.store.conftest import RUN, create_run, mixed_life

pytestmark = pytest.mark.integration


def with_password(url: str, password: str = "s3cret") -> str:
    """`url` with a password: the server trusts everyone, so it is accepted and ignored."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@", 1)


def attempts(store: PostgresStore) -> dict[str, int]:
    return {t.task_id: t.attempt for t in store.list_tasks(RUN)}


# --- migrations --------------------------------------------------------------------------------


def test_migrate_waits_for_the_advisory_lock(pg_empty_url: str) -> None:
    holder = psycopg.connect(pg_empty_url)
    holder.execute(PostgresStore(pg_empty_url)._sql["migrate_lock"])  # another migrator
    done = threading.Event()

    def migrate() -> None:
        with PostgresStore(pg_empty_url) as store:
            store.migrate()
        done.set()

    thread = threading.Thread(target=migrate)
    thread.start()
    try:
        assert not done.wait(0.5)  # waiting on the lock, not failing or going ahead
        holder.rollback()
        assert done.wait(10)
    finally:
        holder.close()
        thread.join()
    with PostgresStore(pg_empty_url) as store:
        create_run(store)
        assert store.get_run(RUN).counts == {"queued": 3}


def _migrate_in_child(url: str, start: Any) -> None:
    store = open_store(url)
    start.wait(60)
    store.migrate()
    store.close()


def test_concurrent_migrate_from_processes_on_an_empty_database(pg_empty_url: str) -> None:
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(3)
    children = [spawn.Process(target=_migrate_in_child, args=(pg_empty_url, start)) for _ in "abc"]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0, 0]
    with psycopg.connect(pg_empty_url) as conn:
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version")
        known = [(version,) for version, _, _ in load_migrations("postgresql")]
        assert versions.fetchall() == known  # each applied once


def test_missing_and_newer_schemas_are_explained(pg_empty_url: str) -> None:
    with PostgresStore(pg_empty_url) as store:
        with pytest.raises(StoreError, match=r'relation "runs" does not exist.*run migrate\(\)'):
            store.list_runs()
        store.migrate()
        with psycopg.connect(pg_empty_url) as conn:
            conn.execute("INSERT INTO schema_version VALUES (999, now())")
        with pytest.raises(StoreError, match=r"schema version 999.*upgrade ado-ray"):
            store.migrate()


# --- connections and errors --------------------------------------------------------------------


def test_opening_connects_to_nothing_and_bad_urls_are_refused() -> None:
    port = free_port()
    store = open_store(f"postgresql://ado:s3cret@127.0.0.1:{port}/ado")  # no server: fine
    assert isinstance(store, PostgresStore)
    assert repr(store) == f"PostgresStore('postgresql://ado:***@127.0.0.1:{port}/ado')"
    store.close()  # never opened: nothing to do
    for url in ["postgresql://ado:s3cret@db/ado?bogus=1", "postgresql://ado:s3cret@[::1/ado"]:
        with pytest.raises(ConfigError, match="not a valid PostgreSQL URL") as info:
            open_store(url)
        assert "s3cret" not in str(info.value)


def test_a_server_that_is_down_fails_fast_with_the_password_masked(
    pg_server: PostgresServer, pg_url: str
) -> None:
    url = with_password(pg_url)
    masked = url.replace(":s3cret@", ":***@")
    with PostgresStore(url) as store, PostgresStore(url) as fresh:
        create_run(store)  # the pool is open and holds a connection
        pg_server.stop()
        for subject in [store, fresh]:  # a pool whose connection died, and no pool yet
            started = time.monotonic()
            with pytest.raises(StoreError) as info:
                subject.list_runs()
            assert time.monotonic() - started < 2
            message = str(info.value)
            assert message.startswith(f"list runs failed on {masked}: ")
            assert "Connection refused" in message and "s3cret" not in message
        pg_server.start()
        assert [run.run_id for run in store.list_runs()] == [RUN]  # the pool recovers
        assert [run.run_id for run in fresh.list_runs()] == [RUN]


def test_a_port_nobody_listens_on_fails_fast() -> None:
    with PostgresStore(f"postgresql://ado:s3cret@127.0.0.1:{free_port()}/ado") as store:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"get run failed on .*:\*\*\*@.*refused"):
            store.get_run(RUN)
        assert time.monotonic() - started < 2


def test_a_busy_pool_reports_a_timeout(pg_url: str) -> None:
    with PostgresStore(pg_url, max_size=1, pool_timeout_s=0.5) as store:
        create_run(store)
        with store._connection():  # the only connection is in use
            started = time.monotonic()
            with pytest.raises(StoreError, match=r"no free connection in 0.5 s.*all 1 of"):
                store.list_runs()
            assert 0.5 <= time.monotonic() - started < 2
        assert len(store.list_runs()) == 1


def test_the_store_is_shared_between_threads(pg_url: str) -> None:
    with PostgresStore(pg_url) as store:
        tasks = create_run(store, n_tasks=8)

        def work(task_id: str) -> None:
            for attempt in range(1, 21):
                store.apply([TaskUpdate(task_id, TaskState.RUNNING, attempt=attempt)])

        threads = [threading.Thread(target=work, args=(t,)) for t in tasks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert set(attempts(store).values()) == {20}


def test_a_batch_is_a_few_set_wise_statements_in_rounds() -> None:
    events: list[Event] = [
        TaskUpdate("a", TaskState.RUNNING, attempt=1),
        CheckpointEvent("a", Step.PREPARED, {"n": 1}),
        TaskUpdate("b", TaskState.RUNNING, attempt=1),
        TaskUpdate("b", TaskState.RUNNING, attempt=1),  # a heartbeat: left out
        CheckpointEvent("a", Step.PREPARED, {"n": 2}),
        TaskUpdate("a", TaskState.FAILED, attempt=2),
        TaskUpdate("a", TaskState.RUNNING, attempt=1),  # not its previous update: kept
    ]
    statements = batch_statements(events)
    assert [(name, len(params)) for name, params in statements] == [
        ("apply_task_updates", 3),
        ("upsert_checkpoints", 1),
    ]
    rounds = [json.loads(p["updates"]) for p in statements[0][1]]
    assert [[(r["task_id"], r["state"], r["attempt"]) for r in round_] for round_ in rounds] == [
        [("a", "running", 1), ("b", "running", 1)],
        [("a", "failed", 2)],
        [("a", "running", 1)],
    ]
    assert json.loads(statements[1][1][0]["checkpoints"]) == [
        {"task_id": "a", "step": "prepared", "data": {"n": 2}}
    ]


# --- the sink on PostgreSQL --------------------------------------------------------------------


def test_durable_submit_is_visible_to_another_store(pg_url: str) -> None:
    with PostgresStore(pg_url) as setup:
        (t0,) = create_run(setup, n_tasks=1)

    async def main(reader: PostgresStore) -> None:
        sink = Sink(pg_url, max_delay_s=60)  # only a waiter makes it write
        await sink.submit([CheckpointEvent(t0, Step.PREPARED, {"base_sha": "abc"})])
        await asyncio.sleep(0.05)
        assert reader.checkpoints(t0) == {}
        await sink.submit([TaskUpdate(t0, TaskState.PREPARING, attempt=1)], durable=True)
        assert reader.checkpoints(t0) == {Step.PREPARED: {"base_sha": "abc"}}
        assert attempts(reader) == {t0: 1}
        await sink.submit([TaskUpdate(t0, TaskState.RUNNING, attempt=2)])
        await sink.close()  # flushes
        assert attempts(reader) == {t0: 2}
        assert sink.status()["batches"] == 2

    with PostgresStore(pg_url) as reader:
        asyncio.run(main(reader))


def test_sink_rides_out_a_server_outage(pg_server: PostgresServer, pg_url: str) -> None:
    with PostgresStore(pg_url) as setup:
        tasks = create_run(setup, n_tasks=10)
    per_task = 60
    seen_failing: list[Any] = []

    async def submitter(sink: Sink, task_id: str) -> None:
        for attempt in range(1, per_task + 1):
            await sink.submit(
                [
                    TaskUpdate(task_id, TaskState.RUNNING, attempt=attempt),
                    SessionEvent(
                        task_id, attempt, "claude", f"s{attempt}", 0, 1.0, "x.log", {}, ""
                    ),
                ]
            )
            await asyncio.sleep(0.05)  # the submitters run for about 3 s

    async def outage(sink: Sink) -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(pg_server.stop)
        stopped = time.monotonic()
        while time.monotonic() - stopped < 2.0:
            seen_failing.append(sink.status()["failing_since"])
            await asyncio.sleep(0.05)
        await asyncio.to_thread(pg_server.start)

    async def main() -> dict[str, Any]:
        sink = Sink(pg_url, batch_size=100, max_delay_s=0.01, retry_max_s=0.2)
        await asyncio.gather(outage(sink), *(submitter(sink, t) for t in tasks))
        await sink.close()
        return sink.status()

    status = asyncio.run(main())
    assert any(since is not None for since in seen_failing)
    assert "refused" in str(status["last_error"]) or "terminat" in str(status["last_error"])
    assert (status["failing_since"], status["pending"]) == (None, 0)
    assert status["written"] == len(tasks) * per_task * 2
    with PostgresStore(pg_url) as store:
        assert attempts(store) == dict.fromkeys(tasks, per_task)  # in order: the last one won
        for task_id in tasks:
            sessions = store.sessions(task_id)
            assert [s.session_id for s in sessions] == [f"s{i}" for i in range(1, per_task + 1)]


def test_a_lock_held_elsewhere_delays_writes_and_loses_nothing(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        sink_module, "open_store", lambda url: PostgresStore(url, lock_timeout_s=0.05)
    )
    with PostgresStore(pg_url) as setup:
        (t0,) = create_run(setup, n_tasks=1)

    async def main(other: psycopg.Connection[Any]) -> None:
        sink = Sink(pg_url, max_delay_s=0.01, retry_max_s=0.05)
        other.execute("LOCK TABLE tasks IN EXCLUSIVE MODE")  # held until rollback
        for attempt in range(1, 21):
            await sink.submit([TaskUpdate(t0, TaskState.RUNNING, attempt=attempt)])
            await asyncio.sleep(0.02)
        assert sink.status()["written"] == 0
        assert "another connection held a lock" in str(sink.status()["last_error"])
        other.rollback()
        await sink.close()
        assert sink.status()["failing_since"] is None

    with psycopg.connect(pg_url) as other:
        asyncio.run(main(other))
    with PostgresStore(pg_url) as store:
        assert attempts(store) == {t0: 20}


def test_a_batch_and_the_one_event_statements_leave_the_same_rows(pg_url: str) -> None:
    """bench/sink.py's baseline runs the one-event queries: they and apply's set-wise ones
    must agree."""
    queries = load_queries("postgresql")
    with PostgresStore(pg_url) as store:
        batched, single = create_run(store, "run-a", 2), create_run(store, "run-b", 2)
        store.apply(mixed_life(*batched))
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for event in mixed_life(*single):
                name, params = event_statement(event)
                conn.execute(queries[name], params)

        def seen(run_id: str) -> list[Any]:
            tasks = store.list_tasks(run_id)
            ids = [t.task_id for t in tasks]
            return [
                [(t.state, t.attempt, t.base_sha, t.branch, t.commit_sha, t.failure_class,
                  t.error, t.workspace, t.lease_owner) for t in tasks],
                [store.checkpoints(task_id) for task_id in ids],
                [[(s.attempt, s.session_id, s.usage, s.outcome) for s in store.sessions(i)]
                 for i in ids],
                [[(c.state, c.attempt, c.runner) for c in store.transitions(run_id)
                  if c.task_id == i] for i in ids],
            ]  # fmt: skip

        assert seen("run-a") == seen("run-b")
