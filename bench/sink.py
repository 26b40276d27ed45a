"""Task events per second written into PostgreSQL through the Sink, against a naive
baseline on the same server in the same run: one upsert per event, each its own
transaction (autocommit), one connection, in submission order.

Both write the same kind of events (a task's life: TaskUpdates, checkpoints, an agent
session per attempt, a rate-limited first attempt for some tasks) for their own run of
`--tasks` tasks. The sink's events come from `--submitters` concurrent coroutines, each
driving a share of the tasks as a runner would (checkpoints submitted durably, so the
submitter waits for their commit). The sink runs in-process here; in a run it is a Ray
actor, which adds the remote calls but not the writes.

By default the benchmark starts its own PostgreSQL (tests/servers.py) with fsync and
synchronous commit ON, as a real server runs, so that a commit costs what it costs;
`--no-fsync` runs it as the tests do. `--url` uses an existing server's database instead.

    .venv/bin/python bench/sink.py [--tasks 500] [--events 10000] [--submitters 100]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.servers

from ado_ray.models import (
    CheckpointEvent,
    Event,
    FailureClass,
    RepoSpec,
    RunStatus,
    SessionEvent,
    Step,
    TaskState,
    TaskUpdate,
)
from ado_ray.store import RunRecord, TaskRecord
from ado_ray.store.postgres import PostgresStore, event_statement
from ado_ray.store.sink import Sink
from ado_ray.store.sqlfiles import load_queries
from tests.servers import PostgresServer


def create_run(store: PostgresStore, run_id: str, n_tasks: int) -> list[str]:
    now = datetime.now(UTC)
    run = RunRecord(run_id, run_id, now, RunStatus.RUNNING, f"ado/{run_id}", {}, "repos.txt")
    tasks = [
        TaskRecord(
            task_id=f"{run_id}/t{i}",
            run_id=run_id,
            seq=i,
            repo=RepoSpec(f"https://github.com/acme/r{i}.git", f"github.com/acme/r{i}", f"r{i}"),
            state=TaskState.QUEUED,
        )
        for i in range(n_tasks)
    ]
    store.create_run(run, tasks)
    return [task.task_id for task in tasks]


def task_life(task_id: str, n_events: int, rate_limited: bool) -> Iterator[Event]:
    """`n_events` events of one task, as a runner sends them (heartbeats fill the middle)."""
    events: list[Event] = []
    attempts = [1, 2] if rate_limited else [1]
    for attempt in attempts:
        runner = f"runner-{attempt}"
        events += [
            TaskUpdate(
                task_id,
                TaskState.PREPARING,
                attempt=attempt,
                workspace=f"/w/{task_id}",
                lease_owner=runner,
                clear_failure=True,
            ),
            CheckpointEvent(task_id, Step.PREPARED, {"base_sha": "a" * 40}),
            TaskUpdate(task_id, TaskState.RUNNING, base_sha="a" * 40),
        ]
        usage = {"input_tokens": 12_000, "output_tokens": 3_400, "cost_usd": 0.07}
        session = SessionEvent(
            task_id, attempt, "claude", f"sess-{attempt}", 0, 93.5, f"/logs/{attempt}.log", usage,
            "rate_limited" if attempt < attempts[-1] else "ok",
        )  # fmt: skip
        if attempt < attempts[-1]:
            failed = TaskUpdate(
                task_id,
                TaskState.FAILED,
                failure_class=FailureClass.RATE_LIMITED,
                error="429: rate limited, resets in 60 s",
            )
            events += [session, failed]
        else:
            agent_done = {"session_id": f"sess-{attempt}", "exit_code": 0, "usage": usage}
            committed = {"branch": "ado/x", "commit_sha": "b" * 40}
            events += [
                session,
                CheckpointEvent(task_id, Step.AGENT_DONE, agent_done),
                TaskUpdate(task_id, TaskState.COLLECTING),
                CheckpointEvent(task_id, Step.COMMITTED, committed),
                TaskUpdate(task_id, TaskState.CHANGED, branch="ado/x", commit_sha="b" * 40),
            ]
    heartbeats = [TaskUpdate(task_id, TaskState.RUNNING, lease_owner=f"runner-{attempts[-1]}")]
    middle = len(events) - 5  # just before the final session and steps
    while len(events) < n_events:
        events.insert(middle, heartbeats[0])
    return iter(events[:n_events])


def workload(task_ids: list[str], n_events: int) -> list[list[Event]]:
    per_task = max(1, n_events // len(task_ids))
    return [list(task_life(t, per_task, i % 5 == 0)) for i, t in enumerate(task_ids)]


async def through_sink(url: str, lives: list[list[Event]], n_submitters: int) -> tuple[float, Sink]:
    sink = Sink(url)  # the engine's defaults: batch_size=500, max_delay_s=0.05

    async def submitter(share: list[list[Event]]) -> None:
        for life in share:
            for event in life:
                await sink.submit([event], durable=isinstance(event, CheckpointEvent))
                await asyncio.sleep(0)

    started = time.perf_counter()
    await asyncio.gather(*(submitter(lives[i::n_submitters]) for i in range(n_submitters)))
    await sink.close()  # flushes
    return time.perf_counter() - started, sink


def naive(url: str, lives: list[list[Event]], max_s: float) -> tuple[int, float]:
    """One statement per event, autocommit; events interleaved across tasks, as submitted."""
    queries = load_queries("postgresql")
    order = [event for round_ in zip(*lives, strict=True) for event in round_]
    done = 0
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        for event in order:
            name, params = event_statement(event)
            conn.execute(queries[name], params)
            done += 1
            if time.perf_counter() - started > max_s:
                break
        return done, time.perf_counter() - started


def final_state(store: PostgresStore, run_id: str) -> list[tuple[str, int, str | None]]:
    return [(t.state, t.attempt, t.commit_sha) for t in store.list_tasks(run_id)]


def bench(url: str, args: argparse.Namespace) -> None:
    tag = uuid.uuid4().hex[:8]
    with PostgresStore(url) as store:
        store.migrate()
        sink_run, naive_run = f"bench-sink-{tag}", f"bench-naive-{tag}"
        sink_lives = workload(create_run(store, sink_run, args.tasks), args.events)
        naive_lives = workload(create_run(store, naive_run, args.tasks), args.events)
        n = sum(map(len, sink_lives))

        seconds, sink = asyncio.run(through_sink(url, sink_lives, args.submitters))
        status = sink.status()
        assert status["written"] == n, status
        sink_rate = n / seconds

        done, naive_s = naive(url, naive_lives, args.naive_max_s)
        naive_rate = done / naive_s

        same = done < n or final_state(store, sink_run) == final_state(store, naive_run)
        assert same, "the sink and the naive writer left different task rows"

    print(f"workload      {n} events for {args.tasks} tasks, {args.submitters} submitters")
    print(
        f"sink          {sink_rate:9,.0f} events/s  ({n} events in {seconds:.2f} s, "
        f"{status['batches']} batches, {n / status['batches']:.0f} events/batch)"
    )
    print(
        f"naive         {naive_rate:9,.0f} events/s  ({done} events in {naive_s:.2f} s, "
        "one transaction each)"
    )
    print(f"ratio         {sink_rate / naive_rate:9.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an existing PostgreSQL database (default: start one)")
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--events", type=int, default=10_000, help="in all, for each writer")
    parser.add_argument("--submitters", type=int, default=100)
    parser.add_argument("--naive-max-s", type=float, default=30.0, help="stop the baseline")
    parser.add_argument("--no-fsync", action="store_true", help="own server: fsync off")
    args = parser.parse_args()
    if args.url:
        bench(args.url, args)
        return
    durable = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
    settings = {"fsync": "off", "synchronous_commit": "off"} if args.no_fsync else durable
    with tempfile.TemporaryDirectory(prefix="ado-bench-") as workdir:
        server = PostgresServer(Path(workdir), settings=settings)
        with server:  # started; stopped and deleted on exit
            with psycopg.connect(server.url(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            print(f"server        private PostgreSQL, fsync={settings['fsync']}")
            bench(server.url("bench"), args)


if __name__ == "__main__":
    main()
