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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

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
from ado_ray.store import describe_store
from ado_ray.store.base import Fence, Lease, RunRecord, SessionRecord, TaskRecord, Transition
from ado_ray.store.records import (
    CORRUPT_HINT,
    BadRow,
    checkpoints_by_task,
    counts_by_run,
    decoded,
    event_params,
    lease_record,
    plan_batch,
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
from ado_ray.store.sqlite import MIN_PREFIX

Row = dict[str, Any]
T = TypeVar("T")


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
    """The one-event query (by name in queries.sql) that applies `event`, and its
    parameters: what `apply` does set-wise (see `batch_statements`), one event at a time."""
    params = event_params(event)
    match event:
        case TaskUpdate():
            return "apply_task_update", params
        case CheckpointEvent():
            return "upsert_checkpoint", params | {"data": to_json(event.data)}
        case SessionEvent():
            return "upsert_session", params | {"usage": to_json(event.usage)}
        case UsageEvent():
            return "upsert_usage", params
        case BundleEvent():
            return "upsert_bundle", params
        case SessionStateEvent():
            return "upsert_session_state", params
    raise TypeError(f"not an event: {event!r}")  # pragma: no cover (event_params raised)


def batch_statements(events: Iterable[Event]) -> list[tuple[str, list[Row]]]:
    """The events as (query, [parameters, ...]) to run in order, each query set-wise:
    one `apply_task_updates` per round of updates, one upsert each of the checkpoints,
    sessions and usage (a JSON array each), one `upsert_bundle` per bundle (and
    `upsert_session_state` per session state). They leave the
    rows that the events run one by one would (see `plan_batch`)."""
    batch = plan_batch(events)
    statements = [("apply_task_updates", [{"updates": to_json(r)} for r in batch.updates])]
    for name, key, rows in (
        ("upsert_checkpoints", "checkpoints", batch.checkpoints),
        ("upsert_sessions", "sessions", batch.sessions),
        ("upsert_usages", "usage", batch.usage),
    ):
        statements.append((name, [{key: to_json(rows)}] if rows else []))
    statements.append(("upsert_bundle", batch.bundles))
    statements.append(("upsert_session_state", batch.session_states))
    return [(name, params) for name, params in statements if params]


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

    def _read(self, table: str, row: Row, build: Callable[[Mapping[str, Any]], T]) -> T:
        """`build` of the decoded row; a value that cannot be read is a CorruptStoreError."""
        try:
            return read_row(table, row, lambda r: build(_row(r)))
        except BadRow as exc:
            raise CorruptStoreError(f"{self.where}: {exc}; {CORRUPT_HINT}") from None

    def _leases(self, conn: psycopg.Connection[Any], run_ids: list[str]) -> dict[str, Lease]:
        rows = self._rows(conn, "run_leases", {"run_ids": run_ids})
        return {row["run_id"]: self._read("run_locks", row, lease_record) for row in rows}

    def _run(
        self, row: Row, counts: dict[str, dict[str, int]], leases: dict[str, Lease]
    ) -> RunRecord:
        run_id = row["run_id"]
        build = partial(run_record, counts=counts.get(run_id, {}), lease=leases.get(run_id))
        return self._read("runs", row, build)

    def _check_fence(self, conn: psycopg.Connection[Any], fence: Fence, what: str) -> None:
        """Raise LeaseLostError unless the run's lease has the fence's generation. The row
        stays locked FOR SHARE until the write commits (see fence_lease in queries.sql);
        called before the write takes any other lock."""
        rows = self._rows(conn, "fence_lease", {"run_id": fence.run_id})
        lease = self._read("run_locks", rows[0], lease_record) if rows else None
        if lease is None or lease.generation != fence.generation:
            raise refused(self.where, what, fence, lease)

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
            leases = self._leases(conn, [rows[0]["run_id"]])
        return self._run(rows[0], counts, leases)

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        with self._transaction("list runs") as conn:
            rows = self._rows(conn, "list_runs", {"limit": limit})
            counts = self._counts(conn, [row["run_id"] for row in rows])
            leases = self._leases(conn, [row["run_id"] for row in rows])
        return [self._run(row, counts, leases) for row in rows]

    def _counts(
        self, conn: psycopg.Connection[Any], run_ids: list[str]
    ) -> dict[str, dict[str, int]]:
        """{run_id: {state: n}} with the states present, in TaskState order."""
        rows = conn.execute(self._sql["count_tasks"], {"run_ids": run_ids}).fetchall()
        return counts_by_run(rows)

    def exists(self) -> bool:
        return True  # the database is the server's; migrate() makes the schema in it

    def set_run_status(self, run_id: str, status: RunStatus, fence: Fence | None = None) -> None:
        with self._transaction(f"set status of run {run_id}") as conn:
            if fence is not None:
                self._check_fence(conn, fence, f"setting its status to {status.value}")
            params = {"run_id": run_id, "status": status.value}
            if conn.execute(self._sql["set_run_status"], params).rowcount == 0:
                raise self._unknown_run(run_id)

    def list_tasks(self, run_id: str) -> list[TaskRecord]:
        with self._transaction("list tasks") as conn:
            rows = self._rows(conn, "list_tasks", {"run_id": run_id})
        return [self._read("tasks", row, task_record) for row in rows]

    def requeue_tasks(
        self, run_id: str, states: Sequence[TaskState], fence: Fence | None = None
    ) -> int:
        """Also clears lease_owner; failure_class and error stay until the retry clears them."""
        params = {"run_id": run_id, "states": [s.value for s in states]}
        with self._transaction(f"requeue tasks of run {run_id}") as conn:
            if fence is not None:
                self._check_fence(conn, fence, "requeueing its tasks")
            return conn.execute(self._sql["requeue_tasks"], params).rowcount

    # events

    def apply(self, events: Sequence[Event], fence: Fence | None = None) -> None:
        """One transaction: check the fence (if any), lock the tasks named (refusing the
        batch if one is missing, or of another run than the fence's), then a few set-wise
        statements (see `batch_statements`), sent in one pipeline: about six round trips
        per batch, whatever its size."""
        if not events:
            return
        statements = batch_statements(events)
        task_ids = sorted({event.task_id for event in events})
        with self._transaction(f"apply {len(events)} events") as conn:
            if fence is not None:
                self._check_fence(conn, fence, f"a batch of {len(events)} events")
            locked = conn.execute(self._sql["lock_tasks"], {"task_ids": task_ids})
            found = dict(locked.fetchall())
            for event in events:
                if event.task_id not in found:
                    raise self._unknown_task(event)
                if fence is not None and found[event.task_id] != fence.run_id:
                    raise StoreError(
                        f"{self.where} refused a batch of {len(events)} events: task "
                        f"'{event.task_id}' belongs to run {found[event.task_id]}, not to run "
                        f"{fence.run_id} whose lease it came with"
                    )
            with conn.pipeline(), conn.cursor() as cur:
                for name, rows in statements:
                    cur.executemany(self._sql[name], rows)

    def _unknown_task(self, event: Event) -> StoreError:
        if isinstance(event, TaskUpdate):
            return StoreError(f"no task '{event.task_id}' in {self.where} to update")
        return StoreError(
            f"{self.where} refused {type(event).__name__} of task '{event.task_id}' (no such "
            "task); is the task in this store?"
        )

    def checkpoints(self, task_id: str) -> dict[Step, dict[str, Any]]:
        return self.checkpoints_of([task_id]).get(task_id, {})

    def sessions(self, task_id: str) -> list[SessionRecord]:
        return self.sessions_of([task_id]).get(task_id, [])

    def transitions(self, run_id: str) -> list[Transition]:
        with self._transaction("read transitions") as conn:
            rows = self._rows(conn, "transitions", {"run_id": run_id})
        return [self._read("task_transitions", row, transition_record) for row in rows]

    def bundle(self, task_id: str) -> tuple[str, bytes] | None:
        with self._transaction("read bundle") as conn:
            rows = self._rows(conn, "bundle", {"task_id": task_id})
        return (rows[0]["commit_sha"], bytes(rows[0]["data"])) if rows else None

    def session_state(self, task_id: str) -> tuple[str, bytes] | None:
        with self._transaction("read session state") as conn:
            rows = self._rows(conn, "session_state", {"task_id": task_id})
        return (rows[0]["session_id"], bytes(rows[0]["data"])) if rows else None

    # one driver per run

    def acquire_run_lock(self, run_id: str, owner: str, ttl_s: float) -> Lease:
        """One statement, timed by the server's clock, so drivers on machines whose clocks
        disagree still see the same expiry."""
        params = {"run_id": run_id, "owner": owner, "ttl_s": ttl_s}
        with self._transaction(f"lock run {run_id}") as conn:
            try:
                taken = self._rows(conn, "acquire_run_lock", params)
            except pg_errors.ForeignKeyViolation as exc:
                raise self._unknown_run(run_id) from exc
            if taken:
                return self._read("run_locks", taken[0], lease_record)
            # The INSERT locked the lease it could not take: it is still there.
            holder = self._leases(conn, [run_id]).get(run_id)
        if holder is None:
            raise StoreError(f"the lease of run {run_id} in {self.where} vanished while locked")
        return holder

    def release_run_lock(self, run_id: str, owner: str) -> None:
        with self._transaction(f"unlock run {run_id}") as conn:
            conn.execute(self._sql["release_run_lock"], {"run_id": run_id, "owner": owner})

    def break_run_lock(self, run_id: str) -> None:
        with self._transaction(f"break lock of run {run_id}") as conn:
            conn.execute(self._sql["break_run_lock"], {"run_id": run_id})

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
        params = {"run_id": run_id, "states": [s.value for s in states], "limit": limit}
        return self._tasks("read tasks by state", "tasks_in_states", params)

    def recent_tasks(self, run_id: str, limit: int) -> list[TaskRecord]:
        return self._tasks("read recent tasks", "recent_tasks", {"run_id": run_id, "limit": limit})

    def get_task(self, task_id: str) -> TaskRecord | None:
        found = self._tasks("read a task", "get_task", {"task_id": task_id})
        return found[0] if found else None

    def _tasks(self, what: str, query: str, params: Row) -> list[TaskRecord]:
        with self._transaction(what) as conn:
            rows = self._rows(conn, query, params)
        return [self._read("tasks", row, task_record) for row in rows]

    def _of(self, what: str, query: str, task_ids: Sequence[str]) -> list[Row]:
        with self._transaction(what) as conn:
            return self._rows(conn, query, {"task_ids": list(task_ids)})

    def checkpoints_of(self, task_ids: Sequence[str]) -> dict[str, dict[Step, dict[str, Any]]]:
        rows = self._of("read checkpoints", "checkpoints_of", task_ids)
        return checkpoints_by_task(rows, self._read)

    def sessions_of(self, task_ids: Sequence[str]) -> dict[str, list[SessionRecord]]:
        return sessions_by_task(self._of("read sessions", "sessions_of", task_ids), self._read)

    def transitions_of(self, task_ids: Sequence[str]) -> dict[str, list[Transition]]:
        rows = self._of("read transitions", "transitions_of", task_ids)
        return transitions_by_task(rows, self._read)

    def run_cost(self, run_id: str) -> float:
        with self._transaction("read the run's cost") as conn:
            rows = self._rows(conn, "run_cost", {"run_id": run_id})
        return float(rows[0]["cost"])
