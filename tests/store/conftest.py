"""Store fixtures: `store` for every backend, `raw` to look under it, and record builders.

To add a backend: append its name to BACKENDS, return its URL from `store_url`, and give
`raw` a `Raw` for it (read a table, delete a run with plain SQL).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest

from ado_ray.models import RepoSpec, RunStatus, TaskState
from ado_ray.store import RunRecord, Store, TaskRecord, backend_name, open_store
from ado_ray.store.sqlite import SQLiteStore

BACKENDS = ["sqlite"]
RUN = "run-0001"  # the default run id of build_run
TABLES = ["runs", "tasks", "sessions", "usage_records", "checkpoints", "run_locks"]
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


class Raw(Protocol):
    """Plain-SQL access beside the store, to check what it wrote."""

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of `table`, sorted, as dicts."""

    def delete_run(self, run_id: str) -> None:
        """DELETE the run's row (foreign keys do the rest)."""

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

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, tmp_path: Path) -> str:
    """The URL of an empty store of `backend` (no schema yet)."""
    if backend == "sqlite":
        return f"sqlite://{tmp_path / 'state' / 'state.db'}"
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
