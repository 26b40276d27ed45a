"""Rows to records and back, shared by the backends.

A backend hands over a row as a mapping whose JSON columns are decoded and whose times
are aware UTC datetimes (`decoded`), and gets a task's row with times in its own form
(`task_row`); everything else is the same in every backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from ado_ray.errors import StoreError
from ado_ray.models import FailureClass, RepoSpec, RunStatus, TaskState
from ado_ray.store.base import RunRecord, SessionRecord, TaskRecord

JSON_COLUMNS = frozenset({"config", "repo", "usage", "data"})
TIME_COLUMNS = frozenset({"created_at", "updated_at", "expires_at"})
STATE_ORDER = {state.value: i for i, state in enumerate(TaskState)}


def decoded(
    row: Mapping[str, Any], load_json: Callable[[Any], Any], load_time: Callable[[Any], datetime]
) -> dict[str, Any]:
    """The row with its JSON columns and times turned into Python values."""
    return {
        key: value
        if value is None
        else load_json(value)
        if key in JSON_COLUMNS
        else load_time(value)
        if key in TIME_COLUMNS
        else value
        for key, value in row.items()
    }


def counts_by_run(rows: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    """(run_id, state, n) rows → {run_id: {state: n}}, states in TaskState order."""
    by_run: dict[str, dict[str, int]] = {}
    for run_id, state, n in sorted(rows, key=lambda r: STATE_ORDER.get(r[1], len(STATE_ORDER))):
        by_run.setdefault(run_id, {})[state] = n
    return by_run


def run_record(row: Mapping[str, Any], counts: Mapping[str, int]) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"],
        name=row["name"],
        created_at=row["created_at"],
        status=RunStatus(row["status"]),
        branch=row["branch"],
        config=row["config"],
        repo_list=row["repo_list"],
        counts=dict(counts),
    )


def task_record(row: Mapping[str, Any]) -> TaskRecord:
    failure = row["failure_class"]
    return TaskRecord(
        task_id=row["task_id"],
        run_id=row["run_id"],
        seq=row["seq"],
        repo=RepoSpec(**row["repo"]),
        state=TaskState(row["state"]),
        attempt=row["attempt"],
        base_sha=row["base_sha"],
        branch=row["branch"],
        commit_sha=row["commit_sha"],
        failure_class=FailureClass(failure) if failure is not None else None,
        error=row["error"],
        workspace=row["workspace"],
        lease_owner=row["lease_owner"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def session_record(row: Mapping[str, Any]) -> SessionRecord:
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
