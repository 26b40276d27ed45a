"""Rows to records and back, shared by the backends.

A backend hands over a row as a mapping whose JSON columns are decoded and whose times
are aware UTC datetimes (`decoded`), and gets a task's row with times in its own form
(`task_row`); everything else is the same in every backend.

A value that cannot be read (bad JSON, a state no ado-ray knows) raises `BadRow`, which
names the column; `read_row` adds the table and row, and the backend the store (as a
`CorruptStoreError`), so the user learns where to look instead of seeing a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from ado_ray.errors import LeaseLostError, StoreError
from ado_ray.models import (
    BundleEvent,
    CheckpointEvent,
    Event,
    FailureClass,
    RepoSpec,
    RunStatus,
    SessionEvent,
    SessionStateEvent,
    Step,
    TaskState,
    TaskUpdate,
    UsageEvent,
)
from ado_ray.store.base import Fence, Lease, RunRecord, SessionRecord, TaskRecord, Transition

JSON_COLUMNS = frozenset({"config", "repo", "usage", "data"})
TIME_COLUMNS = frozenset({"created_at", "updated_at", "expires_at", "renewed_at", "at"})
STATE_ORDER = {state.value: i for i, state in enumerate(TaskState)}
# the columns that name a row of each table, in messages about it
ROW_KEYS = {
    "runs": ("run_id",),
    "tasks": ("task_id",),
    "sessions": ("task_id", "attempt"),
    "checkpoints": ("task_id", "step"),
    "run_locks": ("run_id",),
    "task_transitions": ("task_id", "at"),
}
CORRUPT_HINT = (
    "it was damaged, or written by something other than ado-ray; repair or delete that row, "
    "or point --state at another store"
)

T = TypeVar("T")
_STEP_ORDER = {step.value: i for i, step in enumerate(Step)}  # pipeline order
E = TypeVar("E", bound=Enum)


class BadRow(ValueError):
    """A value in a row that ado-ray cannot read; the message names its column."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_row(table: str, row: Mapping[str, Any], build: Callable[[Mapping[str, Any]], T]) -> T:
    """`build(row)`, a `BadRow` from it (or from decoding) naming the table and the row."""
    try:
        return build(row)
    except BadRow as exc:
        key = ", ".join(f"{name}={row.get(name)!r}" for name in ROW_KEYS.get(table, ()))
        raise BadRow(f"table {table}, row {key}: {exc}") from None


def enum_value(kind: type[E], row: Mapping[str, Any], column: str) -> E:
    value = row[column]
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(str(member.value) for member in kind)
        raise BadRow(f"column {column} holds {_shown(value)}; expected one of {choices}") from None


def decoded(
    row: Mapping[str, Any], load_json: Callable[[Any], Any], load_time: Callable[[Any], datetime]
) -> dict[str, Any]:
    """The row with its JSON columns and times turned into Python values (`BadRow` if one
    cannot be read)."""
    out = {}
    for key, value in row.items():
        if value is None or key not in JSON_COLUMNS | TIME_COLUMNS:
            out[key] = value
            continue
        what = "JSON" if key in JSON_COLUMNS else "a time"
        try:
            out[key] = load_json(value) if key in JSON_COLUMNS else load_time(value)
        except (ValueError, TypeError) as exc:
            raise BadRow(
                f"column {key} holds {_shown(value)}, which is not {what} ({exc})"
            ) from None
    return out


def counts_by_run(rows: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    """(run_id, state, n) rows → {run_id: {state: n}}, states in TaskState order."""
    by_run: dict[str, dict[str, int]] = {}
    for run_id, state, n in sorted(rows, key=lambda r: STATE_ORDER.get(r[1], len(STATE_ORDER))):
        by_run.setdefault(run_id, {})[state] = n
    return by_run


def transition_record(row: Mapping[str, Any]) -> Transition:
    state = enum_value(TaskState, row, "state")
    return Transition(row["task_id"], state, row["attempt"], row["runner"], row["at"])


def run_record(
    row: Mapping[str, Any], counts: Mapping[str, int], lease: Lease | None = None
) -> RunRecord:
    if not isinstance(row["config"], dict):
        raise BadRow(f"column config holds {_shown(row['config'])}; expected a JSON object")
    return RunRecord(
        run_id=row["run_id"],
        name=row["name"],
        created_at=row["created_at"],
        status=enum_value(RunStatus, row, "status"),
        branch=row["branch"],
        config=row["config"],
        repo_list=row["repo_list"],
        counts=dict(counts),
        lease=lease,
    )


def task_record(row: Mapping[str, Any]) -> TaskRecord:
    failure = row["failure_class"]
    repo = row["repo"]
    try:
        spec = RepoSpec(**repo)
    except TypeError:
        raise BadRow(
            f"column repo holds {_shown(repo)}; expected a repository object "
            "{url, key, name, ref, vars, line}"
        ) from None
    return TaskRecord(
        task_id=row["task_id"],
        run_id=row["run_id"],
        seq=row["seq"],
        repo=spec,
        state=enum_value(TaskState, row, "state"),
        attempt=row["attempt"],
        base_sha=row["base_sha"],
        branch=row["branch"],
        commit_sha=row["commit_sha"],
        failure_class=enum_value(FailureClass, row, "failure_class")
        if failure is not None
        else None,
        error=row["error"],
        workspace=row["workspace"],
        lease_owner=row["lease_owner"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def session_record(row: Mapping[str, Any]) -> SessionRecord:
    if not isinstance(row["usage"], dict):
        raise BadRow(f"column usage holds {_shown(row['usage'])}; expected a JSON object")
    return SessionRecord(
        task_id=row["task_id"],
        attempt=row["attempt"],
        agent=row["agent"],
        session_id=row["session_id"],
        exit_code=row["exit_code"],
        duration_s=row["duration_s"],
        log_path=row["log_path"],
        usage=row["usage"],
        outcome=row["outcome"],
        created_at=row["created_at"],
    )


def checkpoint_item(row: Mapping[str, Any]) -> tuple[Step, dict[str, Any]]:
    if not isinstance(row["data"], dict):
        raise BadRow(f"column data holds {_shown(row['data'])}; expected a JSON object")
    return enum_value(Step, row, "step"), row["data"]


def lease_record(row: Mapping[str, Any]) -> Lease:
    return Lease(
        run_id=row["run_id"],
        owner=row["owner"],
        generation=int(row["generation"]),
        renewed_at=row["renewed_at"],
        expires_at=row["expires_at"],
        expired=bool(row["expired"]),
    )


def refused(where: str, what: str, fence: Fence, lease: Lease | None) -> LeaseLostError:
    """The error of a write whose fence no longer matches the run's lease."""
    if lease is None:
        now = "the run has no lease"
    elif not lease.owner:
        now = f"the lease was released since (generation {lease.generation})"
    else:
        now = f"the lease is now generation {lease.generation}, held by {lease.owner}"
    return LeaseLostError(
        f"{where} refused {what} for run {fence.run_id}: it was sent under lease generation "
        f"{fence.generation}, but {now}; this driver no longer drives the run"
    )


def to_json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store {value!r} as JSON: {exc}") from exc


def task_row(task: TaskRecord, now: Any, to_time: Callable[[datetime], Any]) -> dict[str, Any]:
    """A task as the parameters of `insert_task`; `now` is the backend's own time value."""
    created = to_time(task.created_at) if task.created_at else now
    return asdict(task) | {
        "repo_key": task.repo.key,
        "repo": to_json(asdict(task.repo)),
        "state": task.state.value,
        "failure_class": task.failure_class.value if task.failure_class else None,
        "created_at": created,
        "updated_at": to_time(task.updated_at) if task.updated_at else created,
    }


def event_params(event: Event) -> dict[str, Any]:
    """The event's fields as query parameters: enums as their values, JSON fields as they
    are (the caller encodes them), plus `terminal` and `size` where the queries need them.
    A shallow copy: `dataclasses.asdict` deep-copies every dict, which cost more than the
    writes."""
    params = dict(vars(event))
    match event:
        case TaskUpdate():
            params["state"] = event.state.value
            params["failure_class"] = event.failure_class.value if event.failure_class else None
            params["terminal"] = event.state.terminal
        case CheckpointEvent():
            params["step"] = event.step.value
        case BundleEvent() | SessionStateEvent():
            params["size"] = len(event.data)
        case SessionEvent() | UsageEvent():
            pass
        case _:
            raise TypeError(f"not an event: {event!r}")
    return params


@dataclass
class Batch:
    """A batch of events as a few set-wise writes that leave the same rows as writing the
    events one by one, in order (see `plan_batch`)."""

    updates: list[list[dict[str, Any]]] = field(default_factory=list)  # rounds
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)
    bundles: list[dict[str, Any]] = field(default_factory=list)
    session_states: list[dict[str, Any]] = field(default_factory=list)


def plan_batch(events: Iterable[Event]) -> Batch:
    """The events grouped by the table they write, so that each group can be one statement.

    Each kind writes its own table and reads none another kind writes (the transitions
    trigger reads only the `tasks` row it fires on), so only the order within a kind
    matters, and it is kept:

    - TaskUpdates go in rounds: the n-th update of a task in the batch is in round n, so a
      round names each task at most once and the rounds, run in order, apply each task's
      updates in order (the later wins; each change of state is still a transition). An
      update equal to the task's previous one in the batch is left out: it would change
      nothing (a heartbeat), as the query's `IS DISTINCT FROM` already makes sure.
    - Checkpoints, sessions and usage are upserts that overwrite every column but
      created_at (the transaction's time in every row): only the last event per key counts.
    - Bundles keep every event, in order (a replaced bundle resets created_at); so do
      session states (upserts on (task, attempt)).
    """
    batch = Batch()
    last_update: dict[str, TaskUpdate] = {}
    rounds: dict[str, int] = {}
    checkpoints: dict[tuple[str, str], dict[str, Any]] = {}
    sessions: dict[tuple[str, int], dict[str, Any]] = {}
    usage: dict[tuple[str, int, str], dict[str, Any]] = {}
    for event in events:
        params = event_params(event)
        match event:
            case TaskUpdate():
                if last_update.get(event.task_id) == event:
                    continue
                last_update[event.task_id] = event
                n = rounds.get(event.task_id, 0)
                rounds[event.task_id] = n + 1
                if n == len(batch.updates):
                    batch.updates.append([])
                batch.updates[n].append(params)
            case CheckpointEvent():
                checkpoints.pop((event.task_id, params["step"]), None)
                checkpoints[event.task_id, params["step"]] = params
            case SessionEvent():
                sessions.pop((event.task_id, event.attempt), None)
                sessions[event.task_id, event.attempt] = params
            case UsageEvent():
                usage.pop((event.task_id, event.attempt, event.key), None)
                usage[event.task_id, event.attempt, event.key] = params
            case BundleEvent():
                batch.bundles.append(params)
            case SessionStateEvent():
                batch.session_states.append(params)
    batch.checkpoints = list(checkpoints.values())
    batch.sessions = list(sessions.values())
    batch.usage = list(usage.values())
    return batch


Read = Callable[[str, Any, Callable[[Mapping[str, Any]], T]], T]  # a store's `_read`


def checkpoints_by_task(rows: list[Any], read: Read[Any]) -> dict[str, dict[Step, dict[str, Any]]]:
    """`checkpoints_of`'s rows as task id -> step -> data, steps in pipeline order."""
    rows = sorted(rows, key=lambda row: _STEP_ORDER.get(row["step"], len(_STEP_ORDER)))
    found: dict[str, dict[Step, dict[str, Any]]] = {}
    for row in rows:
        step, data = read("checkpoints", row, checkpoint_item)
        found.setdefault(row["task_id"], {})[step] = data
    return found


def sessions_by_task(rows: Iterable[Any], read: Read[Any]) -> dict[str, list[SessionRecord]]:
    found: dict[str, list[SessionRecord]] = {}
    for row in rows:
        found.setdefault(row["task_id"], []).append(read("sessions", row, session_record))
    return found


def transitions_by_task(rows: Iterable[Any], read: Read[Any]) -> dict[str, list[Transition]]:
    found: dict[str, list[Transition]] = {}
    for row in rows:
        change: Transition = read("task_transitions", row, transition_record)
        found.setdefault(change.task_id, []).append(change)
    return found
