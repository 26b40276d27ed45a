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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ado_ray.errors import ConfigError, CorruptStoreError, StoreError, UnknownRunError
from ado_ray.models import (
    BundleEvent,
    CheckpointEvent,
    Event,
    RunStatus,
    SessionEvent,
    SessionStateEvent,
    Step,
    TaskState,
    TaskUpdate,
    UsageEvent,
)
from ado_ray.store.base import Fence, Lease, RunRecord, SessionRecord, TaskRecord, Transition
from ado_ray.store.records import (
    CORRUPT_HINT,
    BadRow,
    checkpoints_by_task,
    counts_by_run,
    decoded,
    event_params,
    lease_record,
    read_row,
    refused,
    run_record,
    sessions_by_task,
    task_record,
    task_row,
    to_json,
    transition_record,
    transitions_by_task,
)
from ado_ray.store.sqlfiles import load_migrations, load_queries

MIN_PREFIX = 4  # shortest run id prefix that get_run resolves
EMPTY_FILE_WAIT_S = 2.0  # how long a 0-byte file may take to become a database
# SQLite's primary result codes for "this is not (or no longer) a database"
NOT_A_DATABASE = {11: "SQLITE_CORRUPT", 26: "SQLITE_NOTADB"}

T = TypeVar("T")


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

    def exists(self) -> bool:
        return str(self.path) == ":memory:" or self.path.exists()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if str(self.path) != ":memory:":
                self._refuse_empty_file()
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

    def _refuse_empty_file(self) -> None:
        """A 0-byte file is not a store: SQLite would take it for an empty database and
        this would write a new schema into whatever file it is. Another process that just
        created the file writes its first page within milliseconds, so wait a little."""
        deadline = time.monotonic() + EMPTY_FILE_WAIT_S
        while True:
            try:
                if self.path.stat().st_size > 0:
                    return
            except FileNotFoundError:
                return  # a new store: created here
            if time.monotonic() > deadline:
                raise CorruptStoreError(
                    f"{self.path} is empty (0 bytes), so it is not an ado-ray state store; "
                    "delete it (a new store is made where there is no file) or point --state "
                    "at another file"
                )
            time.sleep(0.05)

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
            except sqlite3.DatabaseError as exc:
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                if code in NOT_A_DATABASE:
                    raise CorruptStoreError(
                        f"{self.path} is not an ado-ray state store, or is damaged: SQLite "
                        f"says '{exc}' ({NOT_A_DATABASE[code]}); move it away (a new store is "
                        "made where there is no file) or point --state at another file"
                    ) from None
                raise StoreError(f"{what} failed on {self.path}: {exc}{self._hint(exc)}") from exc
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

    def _read(self, table: str, row: Any, build: Callable[[Mapping[str, Any]], T]) -> T:
        """`build` of the decoded row; a value that cannot be read is a CorruptStoreError."""
        try:
            return read_row(table, dict(row), lambda r: build(_row(r)))
        except BadRow as exc:
            raise CorruptStoreError(f"{self.path}: {exc}; {CORRUPT_HINT}") from None

    def _leases(self, conn: sqlite3.Connection, run_ids: Iterable[str]) -> dict[str, Lease]:
        params = {"run_ids": to_json(list(run_ids)), "now": _now()}
        rows = conn.execute(self._sql["run_leases"], params).fetchall()
        return {row["run_id"]: self._read("run_locks", row, lease_record) for row in rows}

    def _check_fence(
        self, conn: sqlite3.Connection, fence: Fence, what: str, task_ids: Sequence[str] = ()
    ) -> None:
        """Raise LeaseLostError unless the run's lease has the fence's generation (inside
        the write's BEGIN IMMEDIATE transaction, so no takeover can come in between)."""
        lease = self._leases(conn, [fence.run_id]).get(fence.run_id)
        if lease is None or lease.generation != fence.generation:
            raise refused(str(self.path), what, fence, lease)
        if task_ids:
            params = {"task_ids": to_json(list(task_ids)), "run_id": fence.run_id}
            stray = conn.execute(self._sql["foreign_tasks"], params).fetchone()
            if stray is not None:
                raise StoreError(
                    f"{self.path} refused {what}: task '{stray['task_id']}' belongs to run "
                    f"{stray['run_id']}, not to run {fence.run_id} whose lease it came with"
                )

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
            leases = self._leases(conn, [row["run_id"]])
        return self._run(row, counts, leases)

    def _run(
        self, row: Any, counts: dict[str, dict[str, int]], leases: dict[str, Lease]
    ) -> RunRecord:
        run_id = row["run_id"]
        build = partial(run_record, counts=counts.get(run_id, {}), lease=leases.get(run_id))
        return self._read("runs", row, build)

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        with self._transaction("list runs", write=False) as conn:
            rows = conn.execute(self._sql["list_runs"], {"limit": limit}).fetchall()
            counts = self._counts(conn, [row["run_id"] for row in rows])
            leases = self._leases(conn, [row["run_id"] for row in rows])
        return [self._run(row, counts, leases) for row in rows]

    def _counts(
        self, conn: sqlite3.Connection, run_ids: Iterable[str]
    ) -> dict[str, dict[str, int]]:
        """{run_id: {state: n}} with the states present, in TaskState order."""
        rows = conn.execute(self._sql["count_tasks"], {"run_ids": to_json(list(run_ids))})
        return counts_by_run(rows)

    def set_run_status(self, run_id: str, status: RunStatus, fence: Fence | None = None) -> None:
        with self._transaction(f"set status of run {run_id}") as conn:
            if fence is not None:
                self._check_fence(conn, fence, f"setting its status to {status.value}")
            params = {"run_id": run_id, "status": status.value}
            if conn.execute(self._sql["set_run_status"], params).rowcount == 0:
                raise self._unknown_run(run_id)

    def list_tasks(self, run_id: str) -> list[TaskRecord]:
        with self._transaction("list tasks", write=False) as conn:
            rows = conn.execute(self._sql["list_tasks"], {"run_id": run_id}).fetchall()
        return [self._read("tasks", row, task_record) for row in rows]

    def requeue_tasks(
        self, run_id: str, states: Sequence[TaskState], fence: Fence | None = None
    ) -> int:
        """Also clears lease_owner; failure_class and error stay until the retry clears them."""
        params = {"run_id": run_id, "states": to_json([s.value for s in states]), "now": _now()}
        with self._transaction(f"requeue tasks of run {run_id}") as conn:
            if fence is not None:
                self._check_fence(conn, fence, "requeueing its tasks")
            count: int = conn.execute(self._sql["requeue_tasks"], params).rowcount
            return count

    # events

    def apply(self, events: Sequence[Event], fence: Fence | None = None) -> None:
        now = _now()
        with self._transaction(f"apply {len(events)} events") as conn:
            if fence is not None:
                task_ids = sorted({event.task_id for event in events})
                self._check_fence(conn, fence, f"a batch of {len(events)} events", task_ids)
            for event in events:
                try:
                    self._apply_one(conn, event, now)
                except sqlite3.IntegrityError as exc:
                    raise StoreError(
                        f"{self.path} refused {type(event).__name__} of task '{event.task_id}' "
                        f"({exc}); is the task in this store?"
                    ) from exc

    def _apply_one(self, conn: sqlite3.Connection, event: Event, now: str) -> None:
        params = event_params(event) | {"now": now}
        match event:
            case TaskUpdate():
                changed = conn.execute(self._sql["apply_task_update"], params).rowcount
                key = {"task_id": event.task_id}
                if not changed and conn.execute(self._sql["task_exists"], key).fetchone() is None:
                    raise StoreError(f"no task '{event.task_id}' in {self.path} to update")
            case CheckpointEvent():
                conn.execute(self._sql["upsert_checkpoint"], params | {"data": to_json(event.data)})
            case SessionEvent():
                conn.execute(self._sql["upsert_session"], params | {"usage": to_json(event.usage)})
            case UsageEvent():
                conn.execute(self._sql["upsert_usage"], params)
            case BundleEvent():
                conn.execute(self._sql["upsert_bundle"], params)
            case SessionStateEvent():
                conn.execute(self._sql["upsert_session_state"], params)

    def checkpoints(self, task_id: str) -> dict[Step, dict[str, Any]]:
        return self.checkpoints_of([task_id]).get(task_id, {})

    def sessions(self, task_id: str) -> list[SessionRecord]:
        return self.sessions_of([task_id]).get(task_id, [])

    def transitions(self, run_id: str) -> list[Transition]:
        with self._transaction("read transitions", write=False) as conn:
            rows = conn.execute(self._sql["transitions"], {"run_id": run_id}).fetchall()
        return [self._read("task_transitions", row, transition_record) for row in rows]

    def bundle(self, task_id: str) -> tuple[str, bytes] | None:
        with self._transaction("read bundle", write=False) as conn:
            row = conn.execute(self._sql["bundle"], {"task_id": task_id}).fetchone()
        return None if row is None else (row["commit_sha"], bytes(row["data"]))

    def session_state(self, task_id: str) -> tuple[str, bytes] | None:
        with self._transaction("read session state", write=False) as conn:
            row = conn.execute(self._sql["session_state"], {"task_id": task_id}).fetchone()
        return None if row is None else (row["session_id"], bytes(row["data"]))

    # one driver per run

    def acquire_run_lock(self, run_id: str, owner: str, ttl_s: float) -> Lease:
        with self._transaction(f"lock run {run_id}") as conn:
            now = datetime.now(UTC)  # inside BEGIN IMMEDIATE: no writer comes in between
            params = {
                "run_id": run_id,
                "owner": owner,
                "expires_at": _ts(now + timedelta(seconds=ttl_s)),
                "now": _ts(now),
            }
            if conn.execute(self._sql["get_run"], {"run_id": run_id}).fetchone() is None:
                raise self._unknown_run(run_id)
            conn.execute(self._sql["acquire_run_lock"], params)
            return self._leases(conn, [run_id])[run_id]

    def release_run_lock(self, run_id: str, owner: str) -> None:
        params = {"run_id": run_id, "owner": owner, "now": _now()}
        with self._transaction(f"unlock run {run_id}") as conn:
            conn.execute(self._sql["release_run_lock"], params)

    def break_run_lock(self, run_id: str) -> None:
        with self._transaction(f"break lock of run {run_id}") as conn:
            conn.execute(self._sql["break_run_lock"], {"run_id": run_id, "now": _now()})

    # bulk reads

    def task_page(
        self, run_id: str, after_seq: int = -1, limit: int = 1000, unfinished: bool = False
    ) -> list[TaskRecord]:
        params = {
            "run_id": run_id,
            "after_seq": after_seq,
            "limit": limit,
            "unfinished": unfinished,
        }
        return self._tasks("read a page of tasks", "task_page", params)

    def tasks_in_states(
        self, run_id: str, states: Sequence[TaskState], limit: int = 1000
    ) -> list[TaskRecord]:
        params = {"run_id": run_id, "states": to_json([s.value for s in states]), "limit": limit}
        return self._tasks("read tasks by state", "tasks_in_states", params)

    def recent_tasks(self, run_id: str, limit: int) -> list[TaskRecord]:
        return self._tasks("read recent tasks", "recent_tasks", {"run_id": run_id, "limit": limit})

    def get_task(self, task_id: str) -> TaskRecord | None:
        found = self._tasks("read a task", "get_task", {"task_id": task_id})
        return found[0] if found else None

    def _tasks(self, what: str, query: str, params: dict[str, Any]) -> list[TaskRecord]:
        with self._transaction(what, write=False) as conn:
            rows = conn.execute(self._sql[query], params).fetchall()
        return [self._read("tasks", row, task_record) for row in rows]

    def _of(self, what: str, query: str, task_ids: Sequence[str]) -> list[Any]:
        with self._transaction(what, write=False) as conn:
            return conn.execute(self._sql[query], {"task_ids": to_json(list(task_ids))}).fetchall()

    def checkpoints_of(self, task_ids: Sequence[str]) -> dict[str, dict[Step, dict[str, Any]]]:
        rows = self._of("read checkpoints", "checkpoints_of", task_ids)
        return checkpoints_by_task(rows, self._read)

    def sessions_of(self, task_ids: Sequence[str]) -> dict[str, list[SessionRecord]]:
        return sessions_by_task(self._of("read sessions", "sessions_of", task_ids), self._read)

    def transitions_of(self, task_ids: Sequence[str]) -> dict[str, list[Transition]]:
        rows = self._of("read transitions", "transitions_of", task_ids)
        return transitions_by_task(rows, self._read)

    def run_cost(self, run_id: str) -> float:
        with self._transaction("read the run's cost", write=False) as conn:
            row = conn.execute(self._sql["run_cost"], {"run_id": run_id}).fetchone()
        return float(row["cost"])
