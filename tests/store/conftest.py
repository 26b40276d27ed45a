"""Store fixtures: `store` for every backend, `raw` to look under it, and record builders.

To add a backend: append its name to BACKENDS, return its URL from `store_url`, and give
`raw` a `Raw` for it (read a table, delete a run with plain SQL).

PostgreSQL: one private server per test session (`pg_server`, tests/servers.py), one
database per test. A database that the test gets migrated is a copy of a template that
was migrated once per session (`CREATE DATABASE ... TEMPLATE`, ~50 ms); it is dropped
after the test. A fault test may stop the server: the fixtures start it again.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

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
    UsageEvent,
)
from ado_ray.store import RunRecord, Store, TaskRecord, backend_name, open_store
from ado_ray.store import postgres as postgres_module
from ado_ray.store import sqlite as sqlite_module
from ado_ray.store.postgres import PostgresStore
from ado_ray.store.sqlfiles import load_migrations
from ado_ray.store.sqlite import SQLiteStore
from tests.servers import PostgresServer

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
# Tests of the shared suite that open SQLite themselves (sqlite3 locks), so
# they mean nothing on another backend; test_postgres.py checks the same on PostgreSQL.
SQLITE_ONLY = {
    "test_sink.py::test_a_locked_database_delays_writes_and_loses_nothing",
}
RUN = "run-0001"  # the default run id of build_run
TABLES = ["runs", "tasks", "sessions", "usage_records", "checkpoints", "run_locks", "bundles"]
T0 = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


def build_run(
    run_id: str = RUN,
    n_tasks: int = 3,
    *,
    created_at: datetime = T0,
    status: RunStatus = RunStatus.RUNNING,
) -> tuple[RunRecord, list[TaskRecord]]:
    """A run and its tasks: task ids `<run_id>/t<i>`, repo keys `github.com/acme/r<i>`."""
    run = RunRecord(
        run_id=run_id,
        name=f"run {run_id}",
        created_at=created_at,
        status=status,
        branch=f"ado/{run_id}",
        config={"agent": "claude", "parallel": 20, "nested": {"list": [1, 2]}},
        repo_list="repos.txt",
    )
    tasks = [
        TaskRecord(
            task_id=f"{run_id}/t{i}",
            run_id=run_id,
            seq=i,
            repo=RepoSpec(
                url=f"https://github.com/acme/r{i}.git",
                key=f"github.com/acme/r{i}",
                name=f"r{i}",
                ref="main" if i % 2 else None,
                vars={"team": f"team-{i}"} if i % 2 else {},
                line=i + 1,
            ),
            state=TaskState.QUEUED,
            created_at=created_at + timedelta(seconds=i),
        )
        for i in range(n_tasks)
    ]
    return run, tasks


def create_run(store: Store, run_id: str = RUN, n_tasks: int = 3, **kw: Any) -> list[str]:
    """Create a run in `store`; return its task ids."""
    run, tasks = build_run(run_id, n_tasks, **kw)
    store.create_run(run, tasks)
    return [task.task_id for task in tasks]


def mixed_life(t0: str, t1: str) -> list[Event]:
    """Two tasks' interleaved events, with what a set-wise batch could get wrong: several
    updates of one task (A, B, A again), heartbeats, a checkpoint beside its update, a
    failure cleared by a retry, a terminal state, replaced sessions and usage."""
    beat = TaskUpdate(t0, TaskState.RUNNING, lease_owner="r1")
    return [
        TaskUpdate(t0, TaskState.PREPARING, attempt=1, lease_owner="r1", workspace="/w0"),
        TaskUpdate(t1, TaskState.PREPARING, attempt=1, lease_owner="r2"),
        CheckpointEvent(t0, Step.PREPARED, {"base_sha": "a"}),
        TaskUpdate(t0, TaskState.RUNNING, base_sha="a"),
        beat,
        beat,
        SessionEvent(t1, 1, "claude", "s1", 1, 1.5, "a.log", {"in": 1}, "rate_limited"),
        TaskUpdate(t1, TaskState.FAILED, failure_class=FailureClass.RATE_LIMITED, error="429"),
        UsageEvent(t1, 1, "claude", input_tokens=5),
        TaskUpdate(t1, TaskState.PREPARING, attempt=2, lease_owner="r3", clear_failure=True),
        beat,
        TaskUpdate(t0, TaskState.COLLECTING),
        beat,  # back to running: a change again
        SessionEvent(t1, 1, "claude", "s1b", 0, 2.0, "b.log", {"in": 2}, "ok"),
        UsageEvent(t1, 1, "claude", input_tokens=7),
        CheckpointEvent(t0, Step.PREPARED, {"base_sha": "b"}),
        TaskUpdate(t0, TaskState.CHANGED, branch="ado/x", commit_sha="c"),
        CheckpointEvent(t0, Step.COMMITTED, {"commit_sha": "c"}),
        TaskUpdate(t1, TaskState.NO_CHANGE),
    ]


class Raw(Protocol):
    """Plain-SQL access beside the store, to check what it wrote."""

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of `table`, sorted, as dicts."""

    def delete_run(self, run_id: str) -> None:
        """DELETE the run's row (foreign keys do the rest)."""

    def execute(self, statement: str) -> None:
        """Run one statement, without parameters (committed at once)."""

    def close(self) -> None: ...


class SQLiteRaw:
    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA foreign_keys = ON")

    def rows(self, table: str) -> list[dict[str, Any]]:
        rows = [dict(row) for row in self.conn.execute(f"SELECT * FROM {table}")]
        return sorted(rows, key=repr)

    def delete_run(self, run_id: str) -> None:
        self.conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def execute(self, statement: str) -> None:
        self.conn.execute(statement)

    def close(self) -> None:
        self.conn.close()


class PostgresRaw:
    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)

    def rows(self, table: str) -> list[dict[str, Any]]:
        query = sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))
        return sorted(self.conn.execute(query).fetchall(), key=repr)

    def delete_run(self, run_id: str) -> None:
        self.conn.execute("DELETE FROM runs WHERE run_id = %s", (run_id,))

    def execute(self, statement: str) -> None:
        self.conn.execute(statement.encode())  # bytes: a statement not typed as a literal

    def close(self) -> None:
        self.conn.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        if name in SQLITE_ONLY and callspec and callspec.params.get("backend") != "sqlite":
            item.add_marker(pytest.mark.skip(reason="opens SQLite itself; see test_postgres.py"))


class PostgresDatabases:
    """Creates and drops the tests' databases on the session's server."""

    TEMPLATE = "ado_template"

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self._names = itertools.count()
        with psycopg.connect(server.url()) as conn:
            # FILE_COPY (PostgreSQL 15+) copies a small template faster than the default
            fast = conn.info.server_version >= 150000
        self._strategy = " STRATEGY FILE_COPY" if fast else ""
        self._admin(f"CREATE DATABASE {self.TEMPLATE}")
        with PostgresStore(server.url(self.TEMPLATE)) as template:
            template.migrate()

    def _admin(self, statement: str) -> None:
        self.server.start()  # a fault test may have stopped it
        with psycopg.connect(self.server.url(), autocommit=True) as conn:
            conn.execute(statement)

    def create(self, *, migrated: bool) -> str:
        """A new database, empty or migrated; its URL."""
        name = f"t_{next(self._names)}"
        template = self.TEMPLATE if migrated else "template0"
        self._admin(f"CREATE DATABASE {name} TEMPLATE {template}{self._strategy}")
        return self.server.url(name)

    def drop(self, url: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with PostgresServer(Path(tmp_path_factory.mktemp("postgres"))) as server:
        yield server  # then stopped, and its data deleted


@pytest.fixture(scope="session")
def pg_databases(pg_server: PostgresServer) -> PostgresDatabases:
    return PostgresDatabases(pg_server)


@pytest.fixture
def pg_empty_url(pg_databases: PostgresDatabases) -> Iterator[str]:
    """A new, empty database (no schema) on the session's server."""
    url = pg_databases.create(migrated=False)
    yield url
    pg_databases.drop(url)


@pytest.fixture
def pg_url(pg_databases: PostgresDatabases) -> Iterator[str]:
    """A new, migrated database on the session's server."""
    url = pg_databases.create(migrated=True)
    yield url
    pg_databases.drop(url)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The URL of an empty store of `backend` (no schema yet).

    On PostgreSQL, a test that also uses `store` (which migrates it anyway) gets a copy of
    the migrated template instead: the same store, without paying for the migration.
    """
    if backend == "sqlite":
        return f"sqlite://{tmp_path / 'state' / 'state.db'}"
    if backend == "postgresql":
        migrated = "store" in request.fixturenames
        return str(request.getfixturevalue("pg_url" if migrated else "pg_empty_url"))
    raise NotImplementedError(backend)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated, empty store."""
    store = open_store(store_url)
    store.migrate()
    try:
        yield store
    finally:
        store.close()


def open_raw(store_url: str) -> Raw:
    """A `Raw` on the store at `store_url` (which must exist); close it after use."""
    if backend_name(store_url) == "sqlite":
        return SQLiteRaw(SQLiteStore.from_url(store_url).path)
    if backend_name(store_url) == "postgresql":
        return PostgresRaw(store_url)
    raise NotImplementedError(store_url)


@pytest.fixture
def raw(store: Store, store_url: str) -> Iterator[Raw]:
    peek = open_raw(store_url)
    try:
        yield peek
    finally:
        peek.close()


def dump(raw: Raw) -> dict[str, list[dict[str, Any]]]:
    return {table: raw.rows(table) for table in TABLES}


Migrations = dict[str, tuple[tuple[int, str, str], ...]]


def only_migrations(monkeypatch: pytest.MonkeyPatch, count: int) -> Migrations:
    """Both backends see only their first `count` migrations (an older ado-ray) until
    `monkeypatch.undo()`; returns them by dialect."""
    older = {dialect: load_migrations(dialect)[:count] for dialect in ("sqlite", "postgresql")}
    for module in (sqlite_module, postgres_module):
        monkeypatch.setattr(module, "load_migrations", older.__getitem__)
    return older
