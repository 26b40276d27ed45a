"""PostgreSQL backend of the `Store`: the same tables and behaviour as SQLite, on a server
that drivers and sinks on several machines share.

Connections come from a small `psycopg_pool.ConnectionPool` (1 to 4), created and opened
on first use, never on import or construction. Every method is one transaction. Before
the pool opens, one plain connection is tried, so that a server that is down or refuses
us is reported at once, with libpq's reason, rather than after the pool's timeout; the
caller (the sink's retry loop, a CLI command) decides how long to wait.

Needs PostgreSQL 11 or later. The SQL is in `sql/postgresql/`: numbered migrations
(`0001_init.sql`, ...) and `queries.sql`, whose `-- name: x` sections are the queries used
here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

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
from ado_ray.store import describe_store
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
from ado_ray.store.sqlite import MIN_PREFIX

Row = dict[str, Any]

_STEP_ORDER = {step.value: i for i, step in enumerate(Step)}

FIRST_WAIT_S = 0.25  # wait this long for a pooled connection before checking the server

# libpq settings used unless the URL gives its own: fail fast on a dead or unreachable
# server (connect_timeout; keepalives notice a peer that vanished mid-connection).
LIBPQ_DEFAULTS = {
    "connect_timeout": "3",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "application_name": "ado-ray",
}


# --- values ------------------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive datetime is taken to be UTC (as the SQLite backend does)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def event_statement(event: Event) -> tuple[str, Row]:
    """The query (by name in queries.sql) that applies `event`, and its parameters."""
    match event:
        case TaskUpdate():
            return "apply_task_update", asdict(event) | {
                "state": event.state.value,
                "failure_class": event.failure_class.value if event.failure_class else None,
                "terminal": event.state.terminal,
            }
        case CheckpointEvent():
            params = {"task_id": event.task_id, "step": event.step.value}
            return "upsert_checkpoint", params | {"data": to_json(event.data)}
        case SessionEvent():
            return "upsert_session", asdict(event) | {"usage": to_json(event.usage)}
        case UsageEvent():
            return "upsert_usage", asdict(event)
        case BundleEvent():
            return "upsert_bundle", asdict(event) | {"size": len(event.data)}
        case _:
            raise TypeError(f"not an event: {event!r}")


def grouped_statements(events: Iterable[Event]) -> list[tuple[str, list[Row]]]:
    """The events as one (query, [parameters, ...]) group per query, each in event order.

    Running the groups one after the other leaves the same rows as running the events one
    by one: each query writes its own table (tasks, checkpoints, sessions, usage_records,
    bundles) and reads no table another one writes, so only the order within a query
    matters, and that order is kept: the last TaskUpdate of a task still wins, as does the
    last checkpoint of a step and the last bundle of a task.
    """
    groups: dict[str, list[Row]] = {}
    for event in events:
        name, params = event_statement(event)
        groups.setdefault(name, []).append(params)
    return list(groups.items())


def _row(row: Any) -> dict[str, Any]:
    return decoded(row, lambda v: v, _utc)


# --- the store ---------------------------------------------------------------------------------


class PostgresStore:
    """The `Store` in a PostgreSQL database, given by a libpq URL (`postgresql://...`).

    `connect_timeout_s` applies unless the URL sets `connect_timeout`; `pool_timeout_s` is
    how long a call waits for a free connection; `lock_timeout_s` how long a statement
    waits for a row or table lock that another session holds.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout_s: float = 3.0,
        pool_timeout_s: float = 5.0,
        lock_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.where = describe_store(url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split()).replace(url, self.where)  # libpq may quote it
            raise ConfigError(
                f"store URL {self.where!r} is not a valid PostgreSQL URL ({reason}); "
                "expected postgresql://user[:password]@host[:port]/dbname[?param=value]"
            ) from None
        self._password = str(params.get("password") or "")
        defaults = LIBPQ_DEFAULTS | {"connect_timeout": str(max(2, round(connect_timeout_s)))}
        self._conninfo = make_conninfo("", **(defaults | params))
        self.min_size = min_size
        self.max_size = max_size
        self.pool_timeout_s = pool_timeout_s
        self.lock_timeout_s = lock_timeout_s
        self._sql = load_queries("postgresql")
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """`postgresql://user:password@host:port/dbname?sslmode=...` (or `postgres://`)."""
        return cls(url)

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # connections and transactions

    def _connections(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                psycopg.connect(self._conninfo).close()  # fails fast, with the reason
                pool = ConnectionPool(
                    self._conninfo,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    open=False,
                    timeout=self.pool_timeout_s,
                    configure=self._configure,
                    check=ConnectionPool.check_connection,
                    name="ado-store",
                )
                try:
                    pool.open(wait=True, timeout=self.pool_timeout_s)
                except PoolTimeout as exc:
                    pool.close()
                    raise psycopg.OperationalError(
                        f"the connection pool opened no connection in {self.pool_timeout_s} s, "
                        "although the server accepted one; the psycopg.pool log says why"
                    ) from exc
                except BaseException:
                    pool.close()
                    raise
                self._pool = pool
            return self._pool

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Session settings of each new pooled connection."""
        lock_timeout = f"{max(1, round(self.lock_timeout_s * 1000))}ms"
        conn.execute(self._sql["configure_session"], {"lock_timeout": lock_timeout})
        conn.commit()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection. If none is free within FIRST_WAIT_S, one direct connection
        is tried: a server that is gone is then reported at once, not after the pool's
        timeout; a server that answers means the pool is busy, so the wait goes on."""
        pool = self._connections()
        started = time.monotonic()
        try:
            conn = pool.getconn(timeout=min(FIRST_WAIT_S, self.pool_timeout_s))
        except PoolTimeout:
            psycopg.connect(self._conninfo).close()
            remaining = self.pool_timeout_s - (time.monotonic() - started)
            conn = pool.getconn(timeout=max(remaining, 0.001))
        try:
            yield conn
        finally:
            pool.putconn(conn)

    @contextmanager
    def _transaction(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """One transaction; rolled back on any error, psycopg errors raised as StoreError."""
        try:
            with self._connection() as conn, conn.transaction():
                yield conn
        except psycopg.Error as exc:
            raise StoreError(f"{what} failed on {self.where}: {self._explain(exc)}") from exc

    def _explain(self, exc: psycopg.Error) -> str:
        """The error, and what may have caused it; without the password."""
        if isinstance(exc, PoolTimeout):
            return (
                f"no free connection in {self.pool_timeout_s} s (all {self.max_size} of this "
                "store's connections stayed busy)"
            )
        text = self._masked(exc)
        if isinstance(exc, pg_errors.UndefinedTable):
            return f"{text}; the schema is missing: run migrate() first"
        if isinstance(exc, pg_errors.LockNotAvailable):
            return f"{text}; another connection held a lock (waited {self.lock_timeout_s} s)"
        return text

    def _masked(self, exc: Exception) -> str:
        """The error's text on one line, the password (if any) replaced by ***."""
        text = " ".join(str(exc).split())
        return text.replace(self._password, "***") if self._password else text

    def _unknown_run(self, run_id: str) -> UnknownRunError:
        return UnknownRunError(f"no run '{run_id}' in {self.where}; `ado runs` lists the runs")

    def _rows(self, conn: psycopg.Connection[Any], query: str, params: Row) -> list[Row]:
        with conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(self._sql[query], params).fetchall()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def migrate(self) -> None:
        """Apply each migration not yet recorded in schema_version, all in one transaction,
        under an advisory lock: processes that start together run it one after the other."""
        known = load_migrations("postgresql")
        with self._transaction("migrate") as conn:
            conn.execute(self._sql["migrate_lock"])
            conn.execute(self._sql["create_schema_version"])
            applied = {row[0] for row in conn.execute(self._sql["applied_versions"])}
            newest = known[-1][0] if known else 0
            if applied and max(applied) > newest:
                raise StoreError(
                    f"{self.where} has schema version {max(applied)}, but this ado-ray knows "
                    f"versions up to {newest}; upgrade ado-ray to use this store"
                )
            for version, _name, script in known:
                if version not in applied:
                    conn.execute(script)  # no parameters: sent as one multi-statement query
                    conn.execute(self._sql["record_version"], {"version": version})

    # runs and tasks

    def create_run(self, run: RunRecord, tasks: Sequence[TaskRecord]) -> None:
        for task in tasks:
            if task.run_id != run.run_id:
                raise ValueError(
                    f"task {task.task_id} belongs to run {task.run_id}, not {run.run_id}"
                )
        now = datetime.now(UTC)
        run_row = asdict(run) | {
            "created_at": _utc(run.created_at),
            "status": run.status.value,
            "config": to_json(run.config),
        }
        task_rows = [task_row(task, now, _utc) for task in tasks]
        with self._transaction(f"create run {run.run_id}") as conn:
            conn.execute(self._sql["insert_run"], run_row)
            if task_rows:
                conn.cursor().executemany(self._sql["insert_task"], task_rows)

    def get_run(self, run_id: str) -> RunRecord:
        """The run with this id, or with this unique prefix of an id (at least 4 characters)."""
        with self._transaction("get run") as conn:
            rows = self._rows(conn, "get_run", {"run_id": run_id})
            if not rows and len(run_id) >= MIN_PREFIX:
                rows = self._rows(conn, "find_runs_by_prefix", {"prefix": run_id})
                if len(rows) > 1:
                    raise UnknownRunError(
                        f"run id prefix '{run_id}' matches several runs in {self.where} "
                        f"({rows[0]['run_id']}, {rows[1]['run_id']}, ...); give more of the id"
                    )
            if not rows:
                raise self._unknown_run(run_id)
            counts = self._counts(conn, [rows[0]["run_id"]])
        return run_record(_row(rows[0]), counts.get(rows[0]["run_id"], {}))

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        with self._transaction("list runs") as conn:
            rows = self._rows(conn, "list_runs", {"limit": limit})
            counts = self._counts(conn, [row["run_id"] for row in rows])
        return [run_record(_row(row), counts.get(row["run_id"], {})) for row in rows]

    def _counts(
        self, conn: psycopg.Connection[Any], run_ids: list[str]
    ) -> dict[str, dict[str, int]]:
        """{run_id: {state: n}} with the states present, in TaskState order."""
        rows = conn.execute(self._sql["count_tasks"], {"run_ids": run_ids}).fetchall()
        return counts_by_run(rows)

    def set_run_status(self, run_id: str, status: RunStatus) -> None:
        with self._transaction(f"set status of run {run_id}") as conn:
            params = {"run_id": run_id, "status": status.value}
            if conn.execute(self._sql["set_run_status"], params).rowcount == 0:
                raise self._unknown_run(run_id)

    def list_tasks(self, run_id: str) -> list[TaskRecord]:
        with self._transaction("list tasks") as conn:
            rows = self._rows(conn, "list_tasks", {"run_id": run_id})
        return [task_record(_row(row)) for row in rows]

    def requeue_tasks(self, run_id: str, states: Sequence[TaskState]) -> int:
        """Also clears lease_owner; failure_class and error stay until the retry clears them."""
        params = {"run_id": run_id, "states": [s.value for s in states]}
        with self._transaction(f"requeue tasks of run {run_id}") as conn:
            return conn.execute(self._sql["requeue_tasks"], params).rowcount

    # events

    def apply(self, events: Sequence[Event]) -> None:
        """One transaction: lock the tasks named (refusing the batch if one is missing),
        then one pipelined `executemany` per kind of event (see `grouped_statements`)."""
        if not events:
            return
        groups = grouped_statements(events)
        task_ids = sorted({event.task_id for event in events})
        with self._transaction(f"apply {len(events)} events") as conn:
            locked = conn.execute(self._sql["lock_tasks"], {"task_ids": task_ids})
            found = {row[0] for row in locked}
            for event in events:
                if event.task_id not in found:
                    raise self._unknown_task(event)
            with conn.cursor() as cur:
                for name, rows in groups:
                    cur.executemany(self._sql[name], rows)

    def _unknown_task(self, event: Event) -> StoreError:
        if isinstance(event, TaskUpdate):
            return StoreError(f"no task '{event.task_id}' in {self.where} to update")
        return StoreError(
            f"{self.where} refused {type(event).__name__} of task '{event.task_id}' (no such "
            "task); is the task in this store?"
        )

    def checkpoints(self, task_id: str) -> dict[Step, dict[str, Any]]:
        with self._transaction("read checkpoints") as conn:
            rows = self._rows(conn, "checkpoints", {"task_id": task_id})
        rows.sort(key=lambda row: _STEP_ORDER.get(row["step"], len(_STEP_ORDER)))
        return {Step(row["step"]): row["data"] for row in rows}

    def sessions(self, task_id: str) -> list[SessionRecord]:
        with self._transaction("read sessions") as conn:
            rows = self._rows(conn, "sessions", {"task_id": task_id})
        return [session_record(_row(row)) for row in rows]

    def bundle(self, task_id: str) -> tuple[str, bytes] | None:
        with self._transaction("read bundle") as conn:
            rows = self._rows(conn, "bundle", {"task_id": task_id})
        return (rows[0]["commit_sha"], bytes(rows[0]["data"])) if rows else None

    # one driver per run

    def acquire_run_lock(self, run_id: str, owner: str, ttl_s: float) -> str | None:
        """One statement, timed by the server's clock, so drivers on machines whose clocks
        disagree still see the same expiry."""
        params = {"run_id": run_id, "owner": owner, "ttl_s": ttl_s}
        with self._transaction(f"lock run {run_id}") as conn:
            try:
                taken = conn.execute(self._sql["acquire_run_lock"], params).fetchone()
            except pg_errors.ForeignKeyViolation as exc:
                raise self._unknown_run(run_id) from exc
            if taken is not None:
                return None
            # The INSERT locked the lease it could not take: it is still there.
            holder = conn.execute(self._sql["run_lock_owner"], params).fetchone()
        if holder is None:
            raise StoreError(f"the lease of run {run_id} in {self.where} vanished while locked")
        return str(holder[0])

    def release_run_lock(self, run_id: str, owner: str) -> None:
        with self._transaction(f"unlock run {run_id}") as conn:
            conn.execute(self._sql["release_run_lock"], {"run_id": run_id, "owner": owner})

    def break_run_lock(self, run_id: str) -> None:
        with self._transaction(f"break lock of run {run_id}") as conn:
            conn.execute(self._sql["break_run_lock"], {"run_id": run_id})
