"""The `Agent` protocol: how an agent CLI is started and how its output is read.

An adapter never runs anything itself and never touches git: it turns an `AgentContext`
into an `Invocation` (argv, extra environment), and a finished process into an
`AgentResult`. The engine supervises the process and owns the repository.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ado_ray.models import FailureClass, ProcessExit, RepoSpec

# Logins the adapters copy into a task's home (Claude Code, Codex, Gemini CLI): never
# stored with a session, whatever an adapter's `session_files` says.
CREDENTIAL_NAMES = frozenset(
    {".credentials.json", ".claude.json", "auth.json", "oauth_creds.json", "google_accounts.json"}
)


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
    model: str | None = None  # from the provider (or its mode); None: the CLI's default
    base_url: str | None = None  # the mode's endpoint (a proxy, a gateway, a local server)
    max_turns: int | None = None
    mode: str | None = None  # the provider's access mode, e.g. "subscription" or "api"


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the allow-listed environment
    # Asked with the stdout and stderr logs' paths at every poll while the agent runs (on
    # the event loop: read only what is new); True stops the agent as a timeout would, and
    # `parse` says why. For a CLI that would sit out a provider's limit in its own backoff.
    stop_when: Callable[[Path, Path], bool] | None = None


@dataclass(frozen=True)
class AgentResult:
    """What one agent run said about itself.

    Tokens and cost are for this run unless the CLI only reports running totals for its
    session (Claude's `total_cost_usd`, Codex's `turn.completed.usage`): then set
    `tokens_are_session_totals` / `cost_is_session_total`, and the engine stores the
    difference from the session's previous attempt, never a total twice. `cost_usd` None
    means the CLI reported no cost; the engine prices the tokens from `prices:` then.
    """

    ok: bool
    exit_code: int | None
    failure_class: FailureClass | None = None
    message: str | None = None
    session_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_tokens: int = 0  # cache reads and writes
    cost_usd: float | None = None
    tokens_are_session_totals: bool = False
    cost_is_session_total: bool = False
    model: str | None = None  # the model the CLI says it used
    num_turns: int | None = None
    result_text: str | None = None
    limited_until: float | None = None  # epoch seconds when a provider limit resets
    usage: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping


class Agent(Protocol):
    """An adapter. It may also set `signals_limits = False` when its output can never
    carry a provider limit (the `command` agent): then a key with no configured limits
    costs no limiter call."""

    name: str

    @property
    def limit_key(self) -> str:
        """The rate-limit key this agent's calls count against."""

    def invocation(self, ctx: AgentContext) -> Invocation: ...

    def parse(self, ctx: AgentContext, exit: ProcessExit) -> AgentResult: ...

    def session_files(self, ctx: AgentContext, session_id: str) -> list[Path]:
        """The files that make up the agent's session `session_id`, relative to
        `ctx.task_dir` (the HOME is `home/` in it): what `--resume` needs on a node that
        never ran the agent. When an attempt is interrupted the engine stores them, and a
        resume elsewhere restores them before `invocation`. Only the session's own files
        (`common.session_paths`), never a login: names in `CREDENTIAL_NAMES` are never
        stored whatever this returns. An agent that resumes nothing returns []."""
