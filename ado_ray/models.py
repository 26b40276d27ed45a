"""Domain types shared by every part: repositories, task states, events and outcomes.

Everything here is plain data (frozen dataclasses and enums) so that it pickles cheaply
between Ray processes and stays free of Ray, SQL and git.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RepoSpec:
    """One line of the repository list, resolved.

    `url` is what git clones and pushes to: an absolute local path, or a URL exactly as
    written (`https://`, `ssh://`, `file://`, scp-like `git@host:owner/name`).
    `key` identifies the repository within a run (duplicates are an error).
    `name` is a short, file-system-safe name for `{repo_name}`, directories and reports.
    """

    url: str
    key: str
    name: str
    ref: str | None = None
    vars: dict[str, str] = field(default_factory=dict)
    line: int = 0


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    COLLECTING = "collecting"
    PUBLISHING = "publishing"
    CHANGED = "changed"
    NO_CHANGE = "no_change"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        TaskState.CHANGED,
        TaskState.NO_CHANGE,
        TaskState.FAILED,
        TaskState.SKIPPED,
        TaskState.CANCELLED,
    }
)
SUCCESS_STATES = frozenset({TaskState.CHANGED, TaskState.NO_CHANGE})


class FailureClass(enum.StrEnum):
    INPUT = "input"
    INFRA = "infra"
    AGENT = "agent"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    FORGE = "forge"
    AGENT_OUTPUT = "agent_output"  # the agent ran (and was paid for); its output is unreadable

    @property
    def retryable(self) -> bool:
        return self in {FailureClass.INFRA, FailureClass.RATE_LIMITED}


class Step(enum.StrEnum):
    """Checkpoints, in the order a task reaches them."""

    PREPARED = "prepared"  # {base_sha}
    AGENT_DONE = "agent_done"  # {session_id, exit_code, usage}
    COMMITTED = "committed"  # {branch, commit_sha, diffstat, bundle_bytes}  (sha None: no change)
    PUSHED = "pushed"  # {url, result}: the branch is on the remote
    PUBLISHED = "published"  # {url, remote[, number]}: url is the PR's when one was opened


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    FINISHED = "finished"


# --- events: what runners tell the sink; every one is idempotent when replayed -------------


@dataclass(frozen=True)
class TaskUpdate:
    """Set a task's state and any of its columns (None leaves a column as it is)."""

    task_id: str
    state: TaskState
    attempt: int | None = None
    base_sha: str | None = None
    branch: str | None = None
    commit_sha: str | None = None
    failure_class: FailureClass | None = None
    error: str | None = None
    workspace: str | None = None
    lease_owner: str | None = None  # the runner working on it; cleared in a terminal state
    clear_failure: bool = False  # reset failure_class and error (a retry starts clean)


@dataclass(frozen=True)
class CheckpointEvent:
    """Upsert on (task_id, step)."""

    task_id: str
    step: Step
    data: dict[str, Any]


@dataclass(frozen=True)
class SessionEvent:
    """One agent attempt. Upsert on (task_id, attempt)."""

    task_id: str
    attempt: int
    agent: str
    session_id: str | None
    exit_code: int | None
    duration_s: float
    log_path: str
    usage: dict[str, Any]
    outcome: str


@dataclass(frozen=True)
class UsageEvent:
    """Tokens and cost of one agent attempt. Upsert on (task_id, attempt, key)."""

    task_id: str
    attempt: int
    key: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class BundleEvent:
    """The task's commit as a git bundle (base..commit). Upsert on task_id."""

    task_id: str
    commit_sha: str
    data: bytes


@dataclass(frozen=True)
class SessionStateEvent:
    """The files of an agent attempt's session (a gzip'd tar, engine/session_state.py), so
    that a resume on another node finds them. Upsert on (task_id, attempt)."""

    task_id: str
    attempt: int
    session_id: str
    data: bytes


Event = TaskUpdate | CheckpointEvent | SessionEvent | UsageEvent | BundleEvent | SessionStateEvent


@dataclass(frozen=True)
class TaskOutcome:
    """What a runner returns to the driver when a task stops (terminal or interrupted)."""

    task_id: str
    repo_key: str
    state: TaskState
    branch: str | None = None
    commit_sha: str | None = None
    failure_class: FailureClass | None = None
    error: str | None = None
    pushed_to: str | None = None
    cost_usd: float = 0.0  # what this task's agent runs cost in this session


@dataclass(frozen=True)
class ProcessExit:
    """How a supervised agent process ended (engine/process.py fills it in)."""

    returncode: int | None  # None when it was killed by us
    timed_out: bool
    stalled: bool
    duration_s: float
    stdout_path: str
    stderr_path: str
