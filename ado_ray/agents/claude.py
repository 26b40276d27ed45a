"""The `claude` agent: Claude Code in headless mode (`claude -p`), read from its stream-json.

    claude -p PROMPT --output-format stream-json --verbose --permission-mode acceptEdits
           [--model M] [--max-turns N] [--resume SESSION_ID]

`acceptEdits` lets the agent write files without a prompt (without it, writes are denied
and the run still says success); it never bypasses permissions, which Claude Code refuses
as root anyway. Each task gets its own config dir (`CLAUDE_CONFIG_DIR=<home>/.claude`):
concurrent CLIs corrupt a shared one, and the session transcripts `--resume` needs live
there. A subscription login is copied into it (`.credentials.json`, and the account part
of `.claude.json`); an API key or OAuth token comes from the mode's environment instead.
Retries inside the CLI are bounded (`CLAUDE_CODE_MAX_RETRIES`, default 2, overridable in
`agent.env`): on a rate limit the limiter does the waiting, not the CLI inside a slot.

Stdout is one JSON event per line: `system/init` (session id, model), `assistant`/`user`
turns, `system/api_retry`, `rate_limit_event` (subscription limits, with `resetsAt`), and
a final `result` with this run's `usage`, the session's running `total_cost_usd`, and
`is_error`, `subtype`, `api_error_status`, `permission_denials`.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ado_ray.agents.base import AgentContext, AgentResult, Invocation
from ado_ray.agents.common import json_events, prompt_argument, session_paths, tail
from ado_ray.agents.limit_text import parse_reset
from ado_ray.config import AgentSettings
from ado_ray.models import FailureClass, ProcessExit

DEFAULT_MAX_RETRIES = "2"
QUIET_ENV = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
LIMIT_FALLBACK_S = 60.0  # a rate limit that says nothing of its reset: wait this long
ACCOUNT_KEYS = ("oauthAccount", "userID")  # what of ~/.claude.json a subscription login needs
LIMIT_TEXT = re.compile(r"usage limit reached|hit your (?:[\w-]+ )?limit|rate_limit_error", re.I)
USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
INFRA_STATUSES = {408, 409, 500, 502, 503, 504, 529}
INPUT_STATUSES = {401, 403, 404}


class ClaudeAgent:
    name = "claude"

    def __init__(self, settings: AgentSettings, user_home: Path | None = None) -> None:
        self.settings = settings
        self.executable = settings.cmd or "claude"
        self.user_home = user_home  # where a subscription login is copied from; None: ~

    @property
    def limit_key(self) -> str:
        return self.name

    def invocation(self, ctx: AgentContext) -> Invocation:
        prompt = prompt_argument(ctx, "claude")
        # The CLI takes a prompt that starts with '-' for an option, even after '--'.
        argv = [self.executable, "-p", " " + prompt if prompt.startswith("-") else prompt]
        argv += ["--output-format", "stream-json", "--verbose", "--permission-mode", "acceptEdits"]
        if ctx.model:
            argv += ["--model", ctx.model]
        if ctx.max_turns is not None:
            argv += ["--max-turns", str(ctx.max_turns)]
        config_dir = ctx.home / ".claude"
        if ctx.resume_session and _has_session(config_dir, ctx.resume_session):
            argv += ["--resume", ctx.resume_session]
        self.seed_config(config_dir)
        env = {
            **QUIET_ENV,
            "CLAUDE_CONFIG_DIR": str(config_dir),
            "CLAUDE_CODE_MAX_RETRIES": self.settings.env.get(
                "CLAUDE_CODE_MAX_RETRIES", DEFAULT_MAX_RETRIES
            ),
        }
        if ctx.base_url:
            env["ANTHROPIC_BASE_URL"] = ctx.base_url
        return Invocation(argv=argv, env=env)

    def seed_config(self, config_dir: Path) -> None:
        """Copy the user's subscription login, if any, into a task's config dir.

        Copies, never links: the CLI rewrites these files (token refresh, its own state).
        A copy the task's CLI has refreshed since (newer than the user's) is kept.
        """
        home = self.user_home or Path.home()
        config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        source = home / ".claude" / ".credentials.json"
        target = config_dir / ".credentials.json"
        if source.is_file() and (
            not target.exists() or source.stat().st_mtime > target.stat().st_mtime
        ):
            shutil.copyfile(source, target)
            target.chmod(0o600)
        state = config_dir / ".claude.json"
        if state.exists():
            return
        for candidate in (home / ".claude.json", home / ".claude" / ".claude.json"):
            account = _read_json(candidate)
            if account.get("oauthAccount"):
                kept = {key: account[key] for key in ACCOUNT_KEYS if key in account}
                fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(kept, handle)
                return

    def parse(self, ctx: AgentContext, exit: ProcessExit) -> AgentResult:
        return _Stream(Path(exit.stdout_path)).agent_result(exit)

    def session_files(self, ctx: AgentContext, session_id: str) -> list[Path]:
        """The session's transcript, `projects/<cwd slug>/<id>.jsonl` in the config dir,
        and its side files (`<id>/subagents/`, `<id>/tool-results/`), as documented for
        Claude Code's session storage. The transcript is all `--resume` needs, and the CLI
        finds it under any project's slug (measured with 2.1.332: a session resumed from
        another checkout path), so it is restored where it was."""
        patterns = ["~/.claude/projects/*/{id}.jsonl", "~/.claude/projects/*/{id}/**/*"]
        return session_paths(ctx, session_id, patterns)


def _has_session(config_dir: Path, session_id: str) -> bool:
    """Whether the task's config dir holds the session's transcript, which `--resume` needs
    (else the CLI fails with "No conversation found"; without it, the task starts over)."""
    return any((config_dir / "projects").glob(f"*/{glob.escape(session_id)}.jsonl"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class _Stream:
    """What one run's stdout says."""

    def __init__(self, stdout: Path) -> None:
        self.init: dict[str, Any] = {}
        self.result: dict[str, Any] | None = None
        self.session_id: str | None = None
        self.rate_limit: dict[str, Any] = {}  # the last rejected rate_limit_event's info
        self.retry_delays: list[float] = []  # seconds, of the CLI's retries after a 429
        self.usages: dict[str, dict[str, Any]] = {}  # assistant message id -> its usage
        self.api_errors: list[str] = []  # texts of the CLI's synthetic API-error messages
        self.error_kinds: set[str] = set()  # their `error`: rate_limit, authentication_failed
        self.retrying = False  # the last event: the CLI sleeps before retrying after a 429
        for event in json_events(stdout):
            self._read(event)
        try:
            self.finished = stdout.stat().st_mtime  # when the CLI last wrote
        except OSError:
            self.finished = datetime.now(UTC).timestamp()

    def _read(self, event: dict[str, Any]) -> None:
        kind, subtype = event.get("type"), event.get("subtype")
        self.retrying = subtype == "api_retry" and event.get("error_status") == 429
        if isinstance(event.get("session_id"), str):
            self.session_id = event["session_id"]
        if kind == "system" and subtype == "init":
            self.init = event
        elif kind == "result":
            self.result = event
        elif kind == "system" and subtype == "api_retry" and event.get("error_status") == 429:
            self.retry_delays.append(float(event.get("retry_delay_ms") or 0) / 1000)
        elif kind == "rate_limit_event":
            info = event.get("rate_limit_info")
            if isinstance(info, dict) and info.get("status") == "rejected":
                self.rate_limit = info
        elif kind == "assistant" and isinstance(message := event.get("message"), dict):
            if event.get("error") or event.get("is_api_error_message"):
                self.error_kinds.add(str(event.get("error")))
                self.api_errors += [
                    str(block.get("text"))
                    for block in message.get("content") or []
                    if isinstance(block, dict) and block.get("type") == "text"
                ]
            elif isinstance(message.get("id"), str) and isinstance(message.get("usage"), dict):
                self.usages[message["id"]] = message["usage"]

    def agent_result(self, exit: ProcessExit) -> AgentResult:
        res = self.result or {}
        usage = res.get("usage") if self.result else _sum_usage(self.usages.values())
        usage = usage if isinstance(usage, dict) else {}
        cost = res.get("total_cost_usd")
        cost = float(cost) if isinstance(cost, int | float) else None
        failure, message = self._failure(exit)
        limited = failure is FailureClass.RATE_LIMITED or (failure is None and self.rate_limit)
        text = res.get("result")
        return AgentResult(
            ok=failure is None,
            exit_code=exit.returncode,
            failure_class=failure,
            message=message,
            session_id=self.session_id,
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            cache_tokens=int(usage.get("cache_creation_input_tokens") or 0)
            + int(usage.get("cache_read_input_tokens") or 0),
            cost_usd=cost,
            cost_is_session_total=cost is not None,
            model=self._model(),
            num_turns=res.get("num_turns") if isinstance(res.get("num_turns"), int) else None,
            result_text=text if isinstance(text, str) else None,
            limited_until=self._limited_until(exit) if limited else None,
            usage=self._extra(),
        )

    def _failure(self, exit: ProcessExit) -> tuple[FailureClass | None, str | None]:
        res = self.result
        if exit.timed_out or exit.stalled:
            why = "ran too long" if exit.timed_out else "printed nothing for too long"
            if self.retrying:  # killed while it slept on a provider's 429
                return FailureClass.RATE_LIMITED, f"claude {why}, waiting out a rate limit (429)"
            return FailureClass.TIMEOUT, f"claude {why} and was killed"
        errors = self._error_text(exit)
        if self._limited(errors):
            return FailureClass.RATE_LIMITED, f"a provider limit: {_first_line(errors)}"
        if res is None:  # it crashed, or was killed: the stderr's last line says most
            killed = exit.returncode is None or exit.returncode < 0
            said = _first_line("\n".join(self.api_errors))
            said = said or _first_line(tail(Path(exit.stderr_path)), last=True) or "no output"
            return (
                FailureClass.INFRA if killed else FailureClass.AGENT,
                f"claude exited with code {exit.returncode} and no result: {said}",
            )
        status, failed = res.get("api_error_status"), bool(res.get("is_error"))
        if failed and (
            status in INFRA_STATUSES
            or res.get("api_error_type") in {"overloaded_error", "api_error"}
            or res.get("api_error") == "connection_failed"
        ):
            return FailureClass.INFRA, f"the model API failed: {_first_line(errors)}"
        if failed and (status in INPUT_STATUSES or "authentication_failed" in self.error_kinds):
            return FailureClass.INPUT, f"claude cannot use the model API: {_first_line(errors)}"
        problems = []
        if res.get("subtype") == "error_max_turns":
            problems.append(
                f"the agent used up its turns (--max-turns) after {res.get('num_turns')} turns "
                "without finishing"
            )
        elif failed or str(res.get("subtype") or "").startswith("error"):
            problems.append(
                f"claude reported an error: {_first_line(errors) or res.get('subtype')}"
            )
        if denials := res.get("permission_denials"):
            problems.append("the agent's writes were denied: " + ", ".join(map(_denial, denials)))
        if not problems and exit.returncode != 0:
            problems.append(f"claude exited with code {exit.returncode}: {_first_line(errors)}")
        return (FailureClass.AGENT, "; ".join(problems)) if problems else (None, None)

    def _error_text(self, exit: ProcessExit) -> str:
        """What the CLI said went wrong: its error messages, a failed result, stderr."""
        res = self.result or {}
        parts = [*self.api_errors, *(str(e) for e in res.get("errors") or [])]
        if res.get("is_error") and isinstance(res.get("result"), str):
            parts.append(res["result"])
        parts.append(tail(Path(exit.stderr_path)))
        return "\n".join(part for part in parts if part.strip())

    def _limited(self, errors: str) -> bool:
        res = self.result
        if res is not None and not res.get("is_error"):
            return False  # finished (perhaps after a retry): not this run's failure
        return bool(
            self.rate_limit
            or (res or {}).get("api_error_status") == 429
            or (res or {}).get("api_error_type") == "rate_limit_error"
            or (res or {}).get("api_error") == "usage_limit_reached"
            or "rate_limit" in self.error_kinds
            or LIMIT_TEXT.search(errors)
        )

    def _limited_until(self, exit: ProcessExit) -> float:
        """`resetsAt` of a subscription limit, else a reset time in the CLI's words (`resets
        4:50am (Europe/Rome)`, `limit reached|1750708800`), else a minute (or the CLI's
        last backoff, if longer) from when it stopped."""
        resets_at = self.rate_limit.get("resetsAt")
        if isinstance(resets_at, int | float) and resets_at > 0:
            return float(resets_at) / (1000 if resets_at > 1e12 else 1)
        found = parse_reset(self._error_text(exit), datetime.fromtimestamp(self.finished, UTC))
        if found is not None and found > self.finished:
            return found
        return self.finished + max([LIMIT_FALLBACK_S, *self.retry_delays])

    def _model(self) -> str | None:
        by_model = (self.result or {}).get("modelUsage")
        if isinstance(by_model, dict) and by_model:
            return max(by_model, key=lambda m: (by_model[m] or {}).get("outputTokens") or 0)
        model = self.init.get("model")
        return model if isinstance(model, str) else None

    def _extra(self) -> dict[str, Any]:
        res = self.result or {}
        keys = ("subtype", "terminal_reason", "duration_ms", "duration_api_ms", "api_error_status")
        extra = {key: res[key] for key in keys if res.get(key) is not None}
        if self.retry_delays:
            extra["rate_limit_retries"] = len(self.retry_delays)
        if self.rate_limit:
            extra["rate_limit"] = self.rate_limit
        return extra


def _sum_usage(usages: Any) -> dict[str, int]:
    """This run's tokens from its assistant messages, when no result says them."""
    total: dict[str, int] = {}
    for usage in usages:
        for key in USAGE_KEYS:
            total[key] = total.get(key, 0) + int(usage.get(key) or 0)
    return total


def _denial(denial: Any) -> str:
    if not isinstance(denial, dict):
        return str(denial)
    tool_input = denial.get("tool_input") or {}
    target = tool_input.get("file_path") or tool_input.get("command") or tool_input.get("path")
    return f"{denial.get('tool_name', '?')} {target}" if target else str(denial.get("tool_name"))


def _first_line(text: str, limit: int = 300, last: bool = False) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = (lines[-1] if last else lines[0]) if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
