"""The `Store` protocol: everything ado-ray persists about runs, tasks and agent sessions.

Writes during a run arrive as batches of events (`apply`) from one writer, the sink; each
event is an upsert, so replaying a batch changes nothing. Reads serve the driver (resume,
progress) and the CLI (`runs`, `status`, `report`).

One driver per run: the driver holds the run's lease (`acquire_run_lock`), whose
generation goes up at every change of holder. A driver's writes carry that generation as a
`Fence`, and the store applies them only if the lease still has it, checked in the write's
own transaction; otherwise it refuses the whole write with `LeaseLostError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ado_ray.models import Event, FailureClass, RepoSpec, RunStatus, Step, TaskState


@dataclass(frozen=True)
class Fence:
    """A fencing token: the lease generation under which a driver writes to its run."""

    run_id: str
    generation: int


@dataclass(frozen=True)
class Lease:
    """A run's lease row, as the store holds it."""

    run_id: str
    owner: str  # "host:pid:nonce" of the driver; "" once released
    generation: int  # +1 at every change of holder (a release included); renewals keep it
    renewed_at: datetime | None  # when the holder last took or renewed it
    expires_at: datetime
    expired: bool  # by the store's clock, when it was read

    @property
    def fence(self) -> Fence:
        return Fence(self.run_id, self.generation)


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
    lease: Lease | None = None  # filled by list_runs/get_run; None if never driven


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


@dataclass(frozen=True)
class Transition:
    """One change of a task's state (schema version 4 on; see 0004_task_transitions.sql)."""

    task_id: str
    state: TaskState  # the new state
    attempt: int  # the task's attempt after the change
    runner: str | None  # the runner that held the task (its lease owner)
    at: datetime  # when the store wrote the change


class Store(Protocol):
    """A backend: SQLite (embedded default) or PostgreSQL. All times are UTC."""

    def migrate(self) -> None:
        """Create or upgrade the schema; safe to call from several processes at once."""

    def exists(self) -> bool:
        """Whether the store is there to read (SQLite: its file exists), without creating it."""

    def close(self) -> None: ...

    # runs and tasks
    def create_run(self, run: RunRecord, tasks: Sequence[TaskRecord]) -> None:
        """Insert a run and all its tasks in one transaction (all or nothing)."""

    def get_run(self, run_id: str) -> RunRecord:
        """Raise `UnknownRunError` (listing nothing else) when there is no such run."""

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """Newest first, each with `counts` per task state."""

    def set_run_status(self, run_id: str, status: RunStatus, fence: Fence | None = None) -> None:
        """With `fence`, refused (`LeaseLostError`) unless the run's lease still has it."""

    def list_tasks(self, run_id: str) -> list[TaskRecord]:
        """In repository-list order (`seq`)."""

    def requeue_tasks(
        self, run_id: str, states: Sequence[TaskState], fence: Fence | None = None
    ) -> int:
        """Put every task of the run in one of `states` back to `queued`; return how many.
        With `fence`, as `set_run_status`."""

    # events (the sink's only call)
    def apply(self, events: Sequence[Event], fence: Fence | None = None) -> None:
        """Apply a batch in one transaction, in order. Idempotent. With `fence`, the whole
        batch is refused (`LeaseLostError`) unless, in that transaction, the run's lease
        still has the fence's generation; an event of another run's task is refused too."""

    def checkpoints(self, task_id: str) -> dict[Step, dict[str, Any]]:
        """The task's checkpoints, by step."""

    def sessions(self, task_id: str) -> list[SessionRecord]: ...

    def transitions(self, run_id: str) -> list[Transition]:
        """Every change of state of the run's tasks, in the order they were written."""

    def bundle(self, task_id: str) -> tuple[str, bytes] | None:
        """The task's stored commit (sha, bundle bytes), or None."""

    def session_state(self, task_id: str) -> tuple[str, bytes] | None:
        """The files of the task's latest stored agent session (session id, tar.gz bytes;
        schema version 5 on), or None."""

    # one driver per run
    def acquire_run_lock(self, run_id: str, owner: str, ttl_s: float) -> Lease:
        """Take or renew the run's lease for `owner`, until `ttl_s` from now by the store's
        clock; return the lease as it then is: `owner`'s on success, else the holder's.
        An expired or released lease may be taken over, which raises its generation; a
        renewal keeps it. `UnknownRunError` if there is no such run."""

    def release_run_lock(self, run_id: str, owner: str) -> None:
        """End `owner`'s lease (someone else's is left alone). The row stays, with a higher
        generation, so that writes fenced with the old one are refused from now on."""

    def break_run_lock(self, run_id: str) -> None:
        """End the lease whoever holds it, as `release_run_lock` does."""

    # bulk reads: a page of a run's tasks at a time, and what belongs to many tasks at once
    def task_page(
        self, run_id: str, after_seq: int = -1, limit: int = 1000, unfinished: bool = False
    ) -> list[TaskRecord]:
        """Up to `limit` of the run's tasks with `seq > after_seq`, in list order; with
        `unfinished`, only tasks in no terminal state. The next page starts after the
        last one's `seq` (the first: after -1; seqs are 0 or more)."""

    def tasks_in_states(
        self, run_id: str, states: Sequence[TaskState], limit: int = 1000
    ) -> list[TaskRecord]:
        """Up to `limit` of the run's tasks in one of `states`, in list order."""

    def recent_tasks(self, run_id: str, limit: int) -> list[TaskRecord]:
        """Up to `limit` of the run's finished tasks, the latest to finish first."""

    def get_task(self, task_id: str) -> TaskRecord | None: ...

    def checkpoints_of(self, task_ids: Sequence[str]) -> dict[str, dict[Step, dict[str, Any]]]:
        """`checkpoints` of each task (a task with none is left out), in one read."""

    def sessions_of(self, task_ids: Sequence[str]) -> dict[str, list[SessionRecord]]:
        """`sessions` of each task (a task with none is left out), in one read."""

    def transitions_of(self, task_ids: Sequence[str]) -> dict[str, list[Transition]]:
        """Each task's changes of state, in the order they were written; in one read."""

    def run_cost(self, run_id: str) -> float:
        """What the run's agent sessions cost (their `usage.cost_usd`), in USD."""
