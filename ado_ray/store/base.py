"""The `Store` protocol: everything ado-ray persists about runs, tasks and agent sessions.

Writes during a run arrive as batches of events (`apply`) from one writer, the sink; each
event is an upsert, so replaying a batch changes nothing. Reads serve the driver (resume,
progress) and the CLI (`runs`, `status`, `report`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ado_ray.models import Event, FailureClass, RepoSpec, RunStatus, Step, TaskState


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    name: str
    created_at: datetime
    status: RunStatus
    branch: str
    config: dict[str, Any]  # the resolved config, secrets masked (see config.py)
    repo_list: str  # path of the repository list, for reports
    counts: dict[str, int] = field(default_factory=dict)  # filled by list_runs/get_run


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    run_id: str
    seq: int  # position in the repository list
    repo: RepoSpec
    state: TaskState
    attempt: int = 0
    base_sha: str | None = None
    branch: str | None = None
    commit_sha: str | None = None
    failure_class: FailureClass | None = None
    error: str | None = None
    workspace: str | None = None
    lease_owner: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class SessionRecord:
    task_id: str
    attempt: int
    agent: str
    session_id: str | None
    exit_code: int | None
    duration_s: float
    log_path: str
    usage: dict[str, Any]
    outcome: str
    created_at: datetime | None = None


class Store(Protocol):
    """A backend: SQLite (embedded default) or PostgreSQL. All times are UTC."""

    def migrate(self) -> None:
        """Create or upgrade the schema; safe to call from several processes at once."""

    def close(self) -> None: ...

    # runs and tasks
    def create_run(self, run: RunRecord, tasks: Sequence[TaskRecord]) -> None:
        """Insert a run and all its tasks in one transaction (all or nothing)."""

    def get_run(self, run_id: str) -> RunRecord:
        """Raise `UnknownRunError` (listing nothing else) when there is no such run."""

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """Newest first, each with `counts` per task state."""

    def set_run_status(self, run_id: str, status: RunStatus) -> None: ...

    def list_tasks(self, run_id: str) -> list[TaskRecord]:
        """In repository-list order (`seq`)."""

    def requeue_tasks(self, run_id: str, states: Sequence[TaskState]) -> int:
        """Put every task of the run in one of `states` back to `queued`; return how many."""

    # events (the sink's only call)
    def apply(self, events: Sequence[Event]) -> None:
        """Apply a batch in one transaction, in order. Idempotent."""

    def checkpoints(self, task_id: str) -> dict[Step, dict[str, Any]]:
        """The task's checkpoints, by step."""

    def sessions(self, task_id: str) -> list[SessionRecord]: ...

    def bundle(self, task_id: str) -> tuple[str, bytes] | None:
        """The task's stored commit (sha, bundle bytes), or None."""

    # one driver per run
    def acquire_run_lock(self, run_id: str, owner: str, ttl_s: float) -> str | None:
        """Take or renew the run's lease for `owner`. Return None on success, else the
        current holder. A lease whose expiry has passed may be taken over."""

    def release_run_lock(self, run_id: str, owner: str) -> None: ...

    def break_run_lock(self, run_id: str) -> None:
        """Remove any lease (the holder is known to be dead)."""
