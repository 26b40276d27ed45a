"""SQLite backend of the `Store`: the embedded default, one file (`.ado/state.db`).

One connection per instance, shared between threads under a lock (the sink calls it from
its worker thread). Other processes open their own instance on the same file: in WAL mode
readers and the one writer do not block each other, and every write is a `BEGIN IMMEDIATE`
transaction, so two writers queue on `busy_timeout` instead of failing half-way.

The SQL is in `sql/sqlite/`: numbered migrations (`0001_init.sql`, ...) and `queries.sql`,
whose `-- name: x` sections are the queries used here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from ado_ray.errors import ConfigError, StoreError, UnknownRunError
from ado_ray.models import (
    BundleEvent,
    CheckpointEvent,
    Event,
    RunStatus,
    SessionEvent,
    Step,
    TaskState,
    TaskUpdate,
    UsageEvent,
)
from ado_ray.store.base import RunRecord, SessionRecord, TaskRecord
from ado_ray.store.records import (
    counts_by_run,
    decoded,
    run_record,
    session_record,
    task_record,
    task_row,
    to_json,
)
from ado_ray.store.sqlfiles import load_migrations, load_queries

MIN_PREFIX = 4  # shortest run id prefix that get_run resolves

_STEP_ORDER = {step.value: i for i, step in enumerate(Step)}


# --- SQL files -------------------------------------------------------------------------------


def split_script(script: str) -> Iterator[str]:
    """The statements of an SQL script, one at a time (a transaction can't run a script)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement.strip()
            statement = ""
    leftover = [
        ln for ln in statement.splitlines() if ln.strip() and not ln.strip().startswith("--")
    ]
    if leftover:
        raise ValueError(f"SQL script ends inside a statement: {leftover[0]!r}")


# --- values ------------------------------------------------------------------------------------


def _ts(moment: datetime) -> str:
    """ISO-8601 UTC text that sorts as time does. A naive datetime is taken to be UTC."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def _now() -> str:
    return _ts(datetime.now(UTC))


def _row(row: Any) -> dict[str, Any]:
    return decoded(dict(row), json.loads, datetime.fromisoformat)


# --- the store ---------------------------------------------------------------------------------


class SQLiteStore:
    """The `Store` in one SQLite file. `path` may be `:memory:` (one process only)."""

    def __init__(self, path: str | os.PathLike[str], busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._sql = load_queries("sqlite")
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """`sqlite:///abs/path`, `sqlite:rel/path` or a plain path (`~` is expanded)."""
        path = url.removeprefix("sqlite:")
        if path != url and path.startswith("//"):
            path = path[2:]  # sqlite:///abs/path is /abs/path
        if path.startswith("//"):
            path = "/" + path.lstrip("/")  # and so is sqlite:////abs/path
        if not path:
            raise ConfigError(f"store URL {url!r} names no file; expected sqlite:///path/state.db")
        return cls(Path(path).expanduser())

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # connection and transactions

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,  # we issue BEGIN and COMMIT ourselves
                check_same_thread=False,  # shared between threads under self._lock
            )
            try:
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
                self._use_wal(conn)
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL. Two processes opening a new file both try it, and the loser is
        told "locked" at once rather than through busy_timeout: so retry until it passes."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _transaction(self, what: str, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; rolled back on any error, sqlite3 errors raised as StoreError."""
        with self._lock:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"{what} failed on {self.path}: {exc}{self._hint(exc)}") from exc

    def _hint(self, exc: Exception) -> str:
        text = str(exc)
        if "no such table" in text:
            return "; the schema is missing: run migrate() first"
        if "locked" in text or "busy" in text:
            return f"; another connection held a lock on it (waited up to {self.busy_timeout_s} s)"
        return ""

    def _unknown_run(self, run_id: str) -> UnknownRunError:
        return UnknownRunError(f"no run '{run_id}' in {self.path}; `ado runs` lists the runs")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def migrate(self) -> None:
        """Apply each migration not yet recorded in schema_version, all in one transaction."""
        known = load_migrations("sqlite")
        with self._transaction("migrate") as conn:
            conn.execute(self._sql["create_schema_version"])
            applied = {row[0] for row in conn.execute(self._sql["applied_versions"])}
            newest = known[-1][0] if known else 0
            if applied and max(applied) > newest:
                raise StoreError(
                    f"{self.path} has schema version {max(applied)}, but this ado-ray knows "
                    f"versions up to {newest}; upgrade ado-ray to use this store"
                )
            for version, _name, script in known:
                if version not in applied:
                    for statement in split_script(script):
                        conn.execute(statement)
                    conn.execute(self._sql["record_version"], {"version": version, "now": _now()})

    # runs and tasks

    def create_run(self, run: RunRecord, tasks: Sequence[TaskRecord]) -> None:
        for task in tasks:
            if task.run_id != run.run_id:
                raise ValueError(
                    f"task {task.task_id} belongs to run {task.run_id}, not {run.run_id}"
                )
        now = _now()
        run_row = asdict(run) | {
            "created_at": _ts(run.created_at),
            "status": run.status.value,
            "config": to_json(run.config),
        }
        with self._transaction(f"create run {run.run_id}") as conn:
            conn.execute(self._sql["insert_run"], run_row)
            conn.executemany(self._sql["insert_task"], (task_row(t, now, _ts) for t in tasks))

    def get_run(self, run_id: str) -> RunRecord:
        """The run with this id, or with this unique prefix of an id (at least 4 characters)."""
        with self._transaction("get run", write=False) as conn:
            row = conn.execute(self._sql["get_run"], {"run_id": run_id}).fetchone()
            if row is None and len(run_id) >= MIN_PREFIX:
                rows = conn.execute(self._sql["find_runs_by_prefix"], {"prefix": run_id}).fetchall()
                if len(rows) > 1:
                    raise UnknownRunError(
                        f"run id prefix '{run_id}' matches several runs in {self.path} "
                        f"({rows[0]['run_id']}, {rows[1]['run_id']}, ...); give more of the id"
                    )
                row = rows[0] if rows else None
            if row is None:
                raise self._unknown_run(run_id)
            counts = self._counts(conn, [row["run_id"]])
        return run_record(_row(row), counts.get(row["run_id"], {}))

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        with self._transaction("list runs", write=False) as conn:
            rows = conn.execute(self._sql["list_runs"], {"limit": limit}).fetchall()
            counts = self._counts(conn, [row["run_id"] for row in rows])
        return [run_record(_row(row), counts.get(row["run_id"], {})) for row in rows]

    def _counts(
        self, conn: sqlite3.Connection, run_ids: Iterable[str]
    ) -> dict[str, dict[str, int]]:
        """{run_id: {state: n}} with the states present, in TaskState order."""
        rows = conn.execute(self._sql["count_tasks"], {"run_ids": to_json(list(run_ids))})
        return counts_by_run(rows)

    def set_run_status(self, run_id: str, status: RunStatus) -> None:
        with self._transaction(f"set status of run {run_id}") as conn:
            params = {"run_id": run_id, "status": status.value}
            if conn.execute(self._sql["set_run_status"], params).rowcount == 0:
                raise self._unknown_run(run_id)

    def list_tasks(self, run_id: str) -> list[TaskRecord]:
        with self._transaction("list tasks", write=False) as conn:
            rows = conn.execute(self._sql["list_tasks"], {"run_id": run_id}).fetchall()
        return [task_record(_row(row)) for row in rows]

    def requeue_tasks(self, run_id: str, states: Sequence[TaskState]) -> int:
        """Also clears lease_owner; failure_class and error stay until the retry clears them."""
        params = {"run_id": run_id, "states": to_json([s.value for s in states]), "now": _now()}
        with self._transaction(f"requeue tasks of run {run_id}") as conn:
            return conn.execute(self._sql["requeue_tasks"], params).rowcount

    # events

    def apply(self, events: Sequence[Event]) -> None:
        now = _now()
        with self._transaction(f"apply {len(events)} events") as conn:
            for event in events:
                try:
                    self._apply_one(conn, event, now)
                except sqlite3.IntegrityError as exc:
                    raise StoreError(
                        f"{self.path} refused {type(event).__name__} of task '{event.task_id}' "
                        f"({exc}); is the task in this store?"
                    ) from exc

    def _apply_one(self, conn: sqlite3.Connection, event: Event, now: str) -> None:
        match event:
            case TaskUpdate():
                params = asdict(event) | {
                    "state": event.state.value,
                    "failure_class": event.failure_class.value if event.failure_class else None,
                    "terminal": event.state.terminal,
                    "now": now,
                }
                changed = conn.execute(self._sql["apply_task_update"], params).rowcount
                key = {"task_id": event.task_id}
                if not changed and conn.execute(self._sql["task_exists"], key).fetchone() is None:
                    raise StoreError(f"no task '{event.task_id}' in {self.path} to update")
            case CheckpointEvent():
                params = {"task_id": event.task_id, "step": event.step.value, "now": now}
                conn.execute(self._sql["upsert_checkpoint"], params | {"data": to_json(event.data)})
            case SessionEvent():
                params = asdict(event) | {"usage": to_json(event.usage), "now": now}
                conn.execute(self._sql["upsert_session"], params)
            case UsageEvent():
                conn.execute(self._sql["upsert_usage"], asdict(event) | {"now": now})
            case BundleEvent():
                params = asdict(event) | {"size": len(event.data), "now": now}
                conn.execute(self._sql["upsert_bundle"], params)
            case _:
                raise TypeError(f"not an event: {event!r}")

    def checkpoints(self, task_id: str) -> dict[Step, dict[str, Any]]:
        with self._transaction("read checkpoints", write=False) as conn:
            rows = conn.execute(self._sql["checkpoints"], {"task_id": task_id}).fetchall()
        rows.sort(key=lambda row: _STEP_ORDER.get(row["step"], len(_STEP_ORDER)))
        return {Step(row["step"]): json.loads(row["data"]) for row in rows}

    def sessions(self, task_id: str) -> list[SessionRecord]:
        with self._transaction("read sessions", write=False) as conn:
            rows = conn.execute(self._sql["sessions"], {"task_id": task_id}).fetchall()
        return [session_record(_row(row)) for row in rows]

    def bundle(self, task_id: str) -> tuple[str, bytes] | None:
        with self._transaction("read bundle", write=False) as conn:
            row = conn.execute(self._sql["bundle"], {"task_id": task_id}).fetchone()
        return None if row is None else (row["commit_sha"], bytes(row["data"]))

    # one driver per run

    def acquire_run_lock(self, run_id: str, owner: str, ttl_s: float) -> str | None:
        now = datetime.now(UTC)
        params = {
            "run_id": run_id,
            "owner": owner,
            "expires_at": _ts(now + timedelta(seconds=ttl_s)),
            "now": _ts(now),
        }
        with self._transaction(f"lock run {run_id}") as conn:
            if conn.execute(self._sql["get_run"], {"run_id": run_id}).fetchone() is None:
                raise self._unknown_run(run_id)
            conn.execute(self._sql["acquire_run_lock"], params)
            holder: str = conn.execute(self._sql["run_lock_owner"], params).fetchone()["owner"]
        return None if holder == owner else holder

    def release_run_lock(self, run_id: str, owner: str) -> None:
        with self._transaction(f"unlock run {run_id}") as conn:
            conn.execute(self._sql["release_run_lock"], {"run_id": run_id, "owner": owner})

    def break_run_lock(self, run_id: str) -> None:
        with self._transaction(f"break lock of run {run_id}") as conn:
            conn.execute(self._sql["break_run_lock"], {"run_id": run_id})
