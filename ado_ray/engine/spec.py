"""What a run hands its runners: the shared context, each task's spec, and where events go."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ado_ray.agents.routing import Route
from ado_ray.config import AgentSettings, GitSettings, Price
from ado_ray.engine.agent_run import Session
from ado_ray.forge.config import ForgeSettings, PublishSettings
from ado_ray.limits.base import LimitSpec
from ado_ray.models import Event, RepoSpec, Step
from ado_ray.store.base import Fence

Emit = Callable[[Sequence[Event], bool], Awaitable[None]]


@dataclass(frozen=True)
class RunContext:
    """What every task of a run shares; sent once to each runner."""

    run_id: str
    run_name: str
    branch: str
    work_root: Path  # absolute
    agent: AgentSettings
    git: GitSettings
    prompt: str | None
    dry_run: bool
    max_attempts: int
    keep_workspaces: bool = False  # else a finished task's checkout is removed (see task.py)
    limits: dict[str, LimitSpec] = field(default_factory=dict)
    limit_wait_timeout_s: float | None = None
    routes: list[Route] = field(default_factory=list)
    prices: dict[str, Price] = field(default_factory=dict)
    max_cost_per_task_usd: float | None = None
    publish: PublishSettings = field(default_factory=PublishSettings)
    forges: dict[str, ForgeSettings] = field(default_factory=dict)  # host[:port] -> settings
    # host[:port] -> token, read from each forge's `token_env` by the driver (never stored)
    tokens: dict[str, SecretStr] = field(default_factory=dict)
    # the run lease's generation the driver holds: every write of the run's sink carries it
    fence: Fence | None = None

    @property
    def cache_root(self) -> Path:
        return self.work_root / "cache"


@dataclass(frozen=True)
class TaskSpec:
    """One task as the driver hands it out, with what the store knows of it."""

    task_id: str
    repo: RepoSpec
    attempt: int  # agent attempts made so far
    checkpoints: dict[Step, dict[str, Any]] = field(default_factory=dict)
    session: Session | None = None  # an interrupted agent session to continue
    recorded_attempts: int = 0  # the highest agent attempt the store has a session row for
    bundle: bytes | None = None  # the stored commit, for a task past `committed` (publish)
    # the stored files of `session` (a tar.gz, engine/session_state.py), for a resume on a
    # node that does not have them; fetched at submission, as `bundle` is
    session_state: bytes | None = None
    failures: int = 0  # attempts of --max-attempts already spent in this run (a lost runner's)
