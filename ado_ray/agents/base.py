"""The `Agent` protocol: how an agent CLI is started and how its output is read.

An adapter never runs anything itself and never touches git: it turns an `AgentContext`
into an `Invocation` (argv, extra environment), and a finished process into an
`AgentResult`. The engine supervises the process and owns the repository.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ado_ray.models import FailureClass, ProcessExit, RepoSpec


@dataclass(frozen=True)
class AgentContext:
    run_id: str
    task_id: str
    repo: RepoSpec
    repo_path: Path  # the task's fresh checkout; the agent's working directory
    task_dir: Path  # private to this task: prompt file, logs, agent home
    home: Path  # the agent's own HOME
    prompt_file: Path | None
    resume_session: str | None = None  # the agent's own session id, to continue it


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the allow-listed environment


@dataclass(frozen=True)
class AgentResult:
    ok: bool
    exit_code: int | None
    failure_class: FailureClass | None = None
    message: str | None = None
    session_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    num_turns: int | None = None
    result_text: str | None = None
    limited_until: float | None = None  # epoch seconds when a provider limit resets
    usage: dict[str, Any] = field(default_factory=dict)


class Agent(Protocol):
    name: str

    @property
    def limit_key(self) -> str:
        """The rate-limit key this agent's calls count against."""

    def invocation(self, ctx: AgentContext) -> Invocation: ...

    def parse(self, ctx: AgentContext, exit: ProcessExit) -> AgentResult: ...
