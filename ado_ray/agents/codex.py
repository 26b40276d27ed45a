"""The `codex` agent: OpenAI's Codex CLI, run as `codex exec --json` (measured on 0.171.0).

Each task gets its own `CODEX_HOME` (`<home>/.codex`) with a `config.toml` written before
every run, so nothing of the user's own Codex configuration (or of the repository's
`.codex/`, which Codex reads only in trusted projects) changes how the agent behaves:

- one model provider, `ado-ray`, at the mode's `base_url` (default: OpenAI's API), speaking
  the Responses API. Its key is read by Codex from `OPENAI_API_KEY` (`env_key`: only the
  variable's name is written; the engine puts the mode's environment in the process). In
  the `subscription` mode it uses the ChatGPT login instead (`requires_openai_auth`), at
  ChatGPT's Codex endpoint: `~/.codex/auth.json` is copied into the task's home for that.
  A custom provider is the only way to bound retries: the built-in `openai` one cannot be
  overridden;
- no retries in the CLI (`request_max_retries = stream_max_retries = 0`): Codex's retry
  also re-sends on a 429 after sleeping for the server's `retry-after`, and waiting for
  a limit is the limiter's job. A failed request ends the run; `parse` says why;
- `approval_policy = "never"` and `sandbox_mode = "workspace-write"`: commands run under
  Codex's Linux sandbox (bubblewrap + seccomp, no network), which may write only the
  checkout and temporary directories; `.git` stays read-only, as the runner owns git;
- the API key is hidden from the agent's shell commands; update checks, analytics,
  feedback, OpenTelemetry export and the prompt history are off.

Output (`--json`, one event a line): `thread.started{thread_id}`, `turn.started`,
`item.started|completed{item}` (`agent_message`, `command_execution`, `file_change`,
`error` — a warning, not a failure), `turn.completed{usage}`, `error{message}`,
`turn.failed{error}`. `usage` is a running total for the thread across resumes, and has
no cost.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

from ado_ray.agents.base import AgentContext, AgentResult, Invocation
from ado_ray.agents.common import json_events, last_line, prompt_argument, session_paths
from ado_ray.agents.limit_text import parse_reset
from ado_ray.config import AgentSettings
from ado_ray.errors import UsageError
from ado_ray.models import FailureClass, ProcessExit

PROVIDER_ID = "ado-ray"
API_KEY_ENV = "OPENAI_API_KEY"
API_BASE_URL = "https://api.openai.com/v1"
CHATGPT_BASE_URL = "https://chatgpt.com/backend-api/codex"  # the built-in provider's, for logins
SUBSCRIPTION_MODE = "subscription"
REQUEST_MAX_RETRIES = 0
STREAM_MAX_RETRIES = 0
# A 429 whose reset Codex does not say (it never passes on `retry-after`): the provider is
# held back this long. Long enough to let a per-minute window roll over, short enough to
# cost little when the limit was momentary.
DEFAULT_LIMIT_COOLDOWN_S = 60.0

_RATE_LIMITED = re.compile(r"\b429\b|too many requests|rate limit|usage limit", re.I)
_NEEDS_PEOPLE = re.compile(r"quota exceeded|out of credits|spend cap", re.I)
_INFRA = re.compile(
    r"\bstatus:? 5\d\d\b|high demand|at capacity|overloaded|server error|service unavailable"
    r"|bad gateway|gateway timeout|stream disconnected|error sending request|connection"
    r"|timed out|timeout",
    re.I,
)
# Codex's own wording for a ChatGPT plan's limit, in the local time zone:
# "... try again at Mar 17th, 2030 5:46 PM." or "... try again at 3:45 PM."
_TRY_AGAIN_AT = re.compile(
    r"try again at (?:(?P<month>[A-Z][a-z]{2}) (?P<day>\d{1,2})(?:st|nd|rd|th), (?P<year>\d{4}) )?"
    r"(?P<hour>\d{1,2}):(?P<minute>\d{2}) (?P<ampm>[AP]M)"
)


class CodexAgent:
    name = "codex"

    def __init__(self, settings: AgentSettings, user_home: Path | None = None) -> None:
        self.settings = settings
        self.executable = settings.cmd or "codex"  # the path of the CLI, or its name on PATH
        self.user_codex_home = (user_home or Path.home()) / ".codex"  # auth.json's source

    @property
    def limit_key(self) -> str:
        return self.name

    def invocation(self, ctx: AgentContext) -> Invocation:
        prompt = prompt_argument(ctx, "codex")
        codex_home = ctx.home / ".codex"
        codex_home.mkdir(parents=True, exist_ok=True)
        self._seed_auth(codex_home, required=ctx.mode == SUBSCRIPTION_MODE)
        (codex_home / "config.toml").write_text(config_toml(ctx), encoding="utf-8")
        argv = [self.executable, "exec"]
        # Without its rollout Codex exits 1 ("no rollout found"): a session whose files are
        # not here (not stored, over agent.session_state_max_mb) starts afresh instead.
        if ctx.resume_session and self.session_files(ctx, ctx.resume_session):
            argv += ["resume", ctx.resume_session]
        # The engine always runs in a git checkout; the flag spares Codex's own check.
        argv += ["--json", "--skip-git-repo-check", "--", prompt]
        return Invocation(argv=argv, env={"CODEX_HOME": str(codex_home)})

    def _seed_auth(self, codex_home: Path, required: bool) -> None:
        """Copy the user's Codex login (never read here, never logged) into the task's home."""
        source, dest = self.user_codex_home / "auth.json", codex_home / "auth.json"
        if source.is_file():
            dest.unlink(missing_ok=True)
            dest.touch(mode=0o600)
            shutil.copyfile(source, dest)
        elif required and not dest.is_file():
            raise UsageError(
                f"codex in the '{SUBSCRIPTION_MODE}' mode uses a ChatGPT login, and {source} "
                "does not exist; expected `codex login` to have been run as this user"
            )

    def session_files(self, ctx: AgentContext, session_id: str) -> list[Path]:
        """The thread's rollout, `$CODEX_HOME/sessions/YYYY/MM/DD/rollout-<time>-<id>.jsonl`
        (Codex's documented layout). It alone lets `codex exec resume ID` continue the
        thread in a fresh CODEX_HOME (measured with 0.171.0; without it Codex exits 1, "no
        rollout found for thread id"); its `*.sqlite` state is rebuilt, `auth.json` stays."""
        return session_paths(ctx, session_id, ["~/.codex/sessions/**/rollout-*-{id}.jsonl"])

    def parse(self, ctx: AgentContext, exit: ProcessExit) -> AgentResult:
        run = read_events(Path(exit.stdout_path))
        common: dict[str, Any] = {
            "exit_code": exit.returncode,
            "session_id": run.thread_id,
            "tokens_are_session_totals": True,
            "result_text": run.result_text,
            "usage": run.usage,
            **tokens(run.usage),
        }
        if exit.timed_out or exit.stalled:
            how = "ran too long" if exit.timed_out else "printed nothing for too long"
            return AgentResult(
                ok=False, failure_class=FailureClass.TIMEOUT, message=f"codex {how}", **common
            )
        failure = run.failure or (run.errors[-1] if run.errors else None)
        if exit.returncode == 0 and run.completed and run.failure is None:
            return AgentResult(ok=True, **common)
        if failure is None:
            if run.thread_id is None:  # no events: Codex stopped before it started
                tail = last_line(Path(exit.stderr_path))
                message = f"codex exited with code {exit.returncode} before it started"
                message += f": {tail}" if tail else " and printed nothing on stderr"
            else:
                message = f"codex exited with code {exit.returncode} without finishing its turn"
            return AgentResult(
                ok=False, failure_class=FailureClass.AGENT, message=message, **common
            )
        failure_class, limited_until = classify(failure, run.errors, time.time())
        return AgentResult(
            ok=False,
            failure_class=failure_class,
            message=f"codex: {failure}",
            limited_until=limited_until,
            **common,
        )


def config_toml(ctx: AgentContext) -> str:
    """The task's `$CODEX_HOME/config.toml`. It names the API key's variable, never a key."""
    subscription = ctx.mode == SUBSCRIPTION_MODE
    default_url = CHATGPT_BASE_URL if subscription else API_BASE_URL
    top: dict[str, Any] = {
        "model": ctx.model,
        "model_provider": PROVIDER_ID,
        "approval_policy": "never",
        "sandbox_mode": "workspace-write",
        "check_for_update_on_startup": False,
    }
    auth: dict[str, Any] = (
        {"requires_openai_auth": True} if subscription else {"env_key": API_KEY_ENV}
    )
    tables: dict[str, dict[str, Any]] = {
        f"model_providers.{PROVIDER_ID}": {
            "name": PROVIDER_ID,
            "base_url": ctx.base_url or default_url,
            **auth,
            "wire_api": "responses",
            "request_max_retries": REQUEST_MAX_RETRIES,
            "stream_max_retries": STREAM_MAX_RETRIES,
        },
        "shell_environment_policy": {"exclude": [API_KEY_ENV]},
        "analytics": {"enabled": False},
        "feedback": {"enabled": False},
        "otel": {"exporter": "none"},
        "history": {"persistence": "none"},
    }
    lines = ["# Written by ado-ray for one task, before each run; edits do not last."]
    lines += [f"{key} = {_toml(value)}" for key, value in top.items() if value is not None]
    for name, values in tables.items():
        lines += ["", f"[{name}]", *(f"{key} = {_toml(value)}" for key, value in values.items())]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m[0]):04x}", escaped) + '"'


@dataclass
class CodexRun:
    """What `codex exec --json` said about itself."""

    thread_id: str | None = None
    completed: bool = False  # a turn completed (and none failed after it)
    failure: str | None = None  # the last `turn.failed` message
    errors: list[str] = field(default_factory=list)  # `error` events, retries included
    usage: dict[str, Any] = field(default_factory=dict)  # the last turn's running totals
    result_text: str | None = None  # the last agent message


def read_events(path: Path) -> CodexRun:
    run = CodexRun()
    for event in json_events(path):
        kind = event.get("type")
        if kind == "thread.started":
            run.thread_id = event.get("thread_id") or run.thread_id
        elif kind == "turn.completed":
            run.completed, run.failure = True, None
            if isinstance(event.get("usage"), dict):
                run.usage = event["usage"]
        elif kind == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            run.completed, run.failure = False, str(message or "the turn failed")
        elif kind == "error":
            run.errors.append(str(event.get("message") or ""))
        elif kind == "item.completed":
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") == "agent_message":
                run.result_text = item.get("text")
    return run


def tokens(usage: dict[str, Any]) -> dict[str, int]:
    """AgentResult's token fields from Codex's usage, where `input_tokens` includes the
    cached ones (OpenAI's convention) and `cache_tokens` counts cache reads and writes."""

    def count(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and value > 0 else 0

    cache = count("cached_input_tokens") + count("cache_write_input_tokens")
    return {
        "input_tokens": max(0, count("input_tokens") - cache),
        "output_tokens": count("output_tokens"),
        "cache_tokens": cache,
    }


def classify(message: str, errors: list[str], now: float) -> tuple[FailureClass, float | None]:
    """The failure class of a failed turn, and when a rate limit resets (epoch seconds)."""
    if _NEEDS_PEOPLE.search(message):  # a bill to pay, not a window to wait out
        return FailureClass.AGENT, None
    if _RATE_LIMITED.search(message):
        for text in [message, *reversed(errors)]:
            reset = reset_time(text, now)
            if reset is not None:
                return FailureClass.RATE_LIMITED, reset
        return FailureClass.RATE_LIMITED, now + DEFAULT_LIMIT_COOLDOWN_S
    if _INFRA.search(message):
        return FailureClass.INFRA, None
    return FailureClass.AGENT, None


def reset_time(text: str, now: float) -> float | None:
    """A reset hint in a Codex error message as epoch seconds, or None."""
    match = _TRY_AGAIN_AT.search(text)
    if match:  # a wall time in this machine's zone (the agent has our TZ)
        clock = dtime(int(match["hour"]) % 12 + (12 if match["ampm"] == "PM" else 0))
        try:
            clock = clock.replace(minute=int(match["minute"]))
            day = (
                datetime.strptime(f"{match['year']} {match['month']} {match['day']}", "%Y %b %d")
                if match["year"]
                else datetime.fromtimestamp(now)
            ).date()
        except ValueError:
            pass
        else:
            when = datetime.combine(day, clock).timestamp()
            if not match["year"] and when < now - 60:
                when = datetime.combine(day + timedelta(days=1), clock).timestamp()
            return when + 60  # Codex shows the minute; the reset is within it
    return parse_reset(text, datetime.fromtimestamp(now, UTC))
