"""The `gemini` agent: Gemini CLI in headless mode, read from its stream-json.

    gemini --prompt=PROMPT -m MODEL --output-format stream-json --approval-mode auto_edit
           --skip-trust [--resume SESSION_ID]

`--prompt=` keeps the prompt one word even when it starts with '-' (`-p -x` is read as
options). `auto_edit` lets the agent write files without asking; in headless mode the shell
tool is then not offered at all. `--skip-trust` trusts the checkout for this run (headless
runs in an untrusted folder exit 55), so the repository's own `.gemini/` settings apply.

MODEL is the route's model, else `DEFAULT_MODEL`: the CLI's own default is `auto`, which
routes each turn through an extra classifier request and may switch models mid-run.

The CLI reads `$HOME/.gemini/settings.json`; the engine's HOME is the task's own, where the
adapter writes `settings_json()`: API-key auth (else exit 41), no usage statistics (they call
play.googleapis.com), no telemetry, no update checks, no project `.env` (a checkout's
`.env` could redirect the CLI), and few attempts per request (`general.maxAttempts`): on a
rate limit the limiter does the waiting, not the CLI inside a slot. The user's Google login
(`~/.gemini/oauth_creds.json`, `google_accounts.json`), if any, is copied in. The API key
comes from the mode's environment (`GEMINI_API_KEY`), never from a file.

Environment: `GOOGLE_GEMINI_BASE_URL` (the mode's `base_url`, when it has one), `TMPDIR`
(`<task_dir>/tmp`: the CLI writes an error report holding the whole conversation to the
temp dir on each failed request), `GEMINI_CLI_NO_RELAUNCH` (else the CLI starts a second
node process to raise its heap limit) and `NO_COLOR`.

Stdout is one JSON event per line: `init` (session id, model), `message` (user, and the
assistant's text in deltas), `tool_use`, `tool_result`, `error` (warnings), and a final
`result` with `status` and `stats` for this run only. A failed request ends the run with
`result.status == "error"` and the HTTP status as exit code (mod 256: 429 exits 173, 503
exits 247); retries show only on stderr.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ado_ray.agents.base import AgentContext, AgentResult, Invocation
from ado_ray.agents.common import json_events, prompt_argument, session_paths
from ado_ray.agents.limit_text import parse_reset
from ado_ray.config import AgentSettings
from ado_ray.models import FailureClass, ProcessExit

DEFAULT_MODEL = "gemini-2.5-pro"  # the CLI's default model when it does not route (`auto`)
MAX_ATTEMPTS = 2  # per model request: one retry absorbs a blip, a real limit ends the run
LIMIT_FALLBACK_S = 60.0  # a rate limit that says nothing of its reset: wait this long
CREDENTIAL_FILES = ("oauth_creds.json", "google_accounts.json")
ENV = {
    "GEMINI_CLI_NO_RELAUNCH": "true",  # run in this process, not a second node child
    "NO_COLOR": "1",  # plain stderr
}

# Exit codes: the CLI's own fatal errors, and HTTP statuses (exit code = status mod 256).
INPUT_EXITS = {
    41: "Gemini CLI could not authenticate",
    42: "Gemini CLI refused its input",
    52: "Gemini CLI found its configuration invalid",
    55: "Gemini CLI does not trust the checkout",
}
AGENT_EXITS = {
    53: "the agent stopped at its turn limit (model.maxSessionTurns)",
    54: "a tool failed fatally",
}
HTTP_BY_EXIT = {status % 256: status for status in (400, 401, 403, 404, 429, 500, 502, 503, 504)}
INPUT_STATUSES = {401, 403, 404}
INFRA_STATUSES = {500, 502, 503, 504}
LIMIT_TEXT = re.compile(
    r"resource has been exhausted|resource_exhausted|exhausted your|quota|rate.?limit"
    r"|too many requests",
    re.IGNORECASE,
)
INFRA_TEXT = re.compile(
    r"overloaded|unavailable|internal error|bad gateway|gateway time-?out|deadline exceeded"
    r"|fetch failed|socket hang up|econnrefused|econnreset|etimedout|enotfound|eai_again",
    re.IGNORECASE,
)
INPUT_TEXT = re.compile(
    r"api key not valid|api_key_invalid|permission_denied|unauthenticated|model not found",
    re.IGNORECASE,
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CHATTER = r"warning: 256-color|ripgrep is not available|\[startup\]"
_NOISE = re.compile(rf"\s|{_CHATTER}|[{{}}()\[\],]+$", re.IGNORECASE)


def settings_json(ctx: AgentContext) -> dict[str, Any]:
    """The `settings.json` written into the task's `~/.gemini`."""
    data: dict[str, Any] = {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "general": {
            "maxAttempts": MAX_ATTEMPTS,
            "enableAutoUpdate": False,
            "enableAutoUpdateNotification": False,
        },
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
        "advanced": {"ignoreLocalEnv": True},
    }
    if ctx.max_turns is not None:
        data["model"] = {"maxSessionTurns": ctx.max_turns}
    return data


class GeminiAgent:
    name = "gemini"

    def __init__(self, settings: AgentSettings, user_home: Path | None = None) -> None:
        self.settings = settings
        self.executable = os.path.expanduser(settings.cmd) if settings.cmd else "gemini"
        self.user_home = user_home  # where the user's login is copied from; None: ~

    @property
    def limit_key(self) -> str:
        return self.name

    def invocation(self, ctx: AgentContext) -> Invocation:
        prompt = prompt_argument(ctx, "gemini")
        gemini_dir = ctx.home / ".gemini"
        gemini_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(
            gemini_dir / "settings.json", json.dumps(settings_json(ctx), indent=2) + "\n"
        )
        self.seed_login(gemini_dir)
        tmp = ctx.task_dir / "tmp"  # the CLI's error reports hold the conversation
        tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = [self.executable, f"--prompt={prompt}", "-m", ctx.model or DEFAULT_MODEL]
        argv += ["--output-format", "stream-json", "--approval-mode", "auto_edit", "--skip-trust"]
        # Without its chat files the CLI exits 42 ("No previous sessions found for this
        # project"): a session whose files are not here starts afresh instead.
        if ctx.resume_session and self.session_files(ctx, ctx.resume_session):
            argv += ["--resume", ctx.resume_session]
        env = {**ENV, "TMPDIR": str(tmp)}
        if ctx.base_url:
            env["GOOGLE_GEMINI_BASE_URL"] = ctx.base_url
        return Invocation(argv=argv, env=env)

    def seed_login(self, gemini_dir: Path) -> None:
        """Copy the user's Google login, if any, into a task's `.gemini` (copies, never
        links: the CLI rewrites them when it refreshes a token). A copy the task's CLI has
        refreshed since (newer than the user's) is kept."""
        try:
            home = self.user_home or Path.home()
        except RuntimeError:  # no HOME and no passwd entry: nothing to copy
            return
        for name in CREDENTIAL_FILES:
            source, target = home / ".gemini" / name, gemini_dir / name
            if source.resolve() == target.resolve() or not source.is_file():
                continue
            if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
                continue
            partial = target.with_name(f".{name}.partial")
            shutil.copyfile(source, partial)
            partial.chmod(0o600)
            partial.replace(target)

    def parse(self, ctx: AgentContext, exit: ProcessExit) -> AgentResult:
        return _Stream(Path(exit.stdout_path)).result(exit)

    def session_files(self, ctx: AgentContext, session_id: str) -> list[Path]:
        """The session's chat files, `~/.gemini/tmp/<project>/chats/session-<time>-<id8>.json[l]`
        (the documented location; the file name carries the id's first 8 characters, a
        resume may start a second file). `<project>` is a slug of the checkout's directory
        name (`repo` in every task), so the files land in the project a resume elsewhere
        uses; its `.project_root` marker and `projects.json` are not kept (they name the
        old path and would make the CLI pick another slug). Measured with 0.61.0: the chat
        files alone let `--resume ID` continue the session in a fresh HOME."""
        chats = "~/.gemini/tmp/*/chats/session-*-{id8}"
        patterns = [f"{chats}.json", f"{chats}.jsonl"]
        return session_paths(ctx, session_id, patterns)


def _write_private(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    partial.replace(path)


def _stderr(path: Path, limit: int = 64_000) -> str:
    """The end of the CLI's stderr, without colour codes."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, 2) - limit))
            return _ANSI.sub("", handle.read().decode("utf-8", "replace"))
    except OSError:
        return ""


def _summary(stderr: str) -> str:
    """The last two lines of stderr that say something: no start-up chatter, and no
    indented lines (stack frames, the fields of a dumped error object)."""
    said = [line for line in stderr.splitlines() if line.strip() and not _NOISE.match(line)]
    return _one_line(" ".join(said[-2:]))


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


class _Stream:
    """What one run's stdout says."""

    def __init__(self, stdout: Path) -> None:
        self.init: dict[str, Any] = {}
        self.result_event: dict[str, Any] | None = None
        self.warnings: list[str] = []  # `error` events
        self.text: list[str] = []  # the assistant's text since its last tool call
        for event in json_events(stdout):
            self._read(event)
        try:
            self.finished = stdout.stat().st_mtime  # when the CLI last said something
        except OSError:
            self.finished = datetime.now(UTC).timestamp()

    def _read(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "init":
            self.init = event
        elif kind == "result":
            self.result_event = event
        elif kind == "tool_use":
            self.text = []
        elif kind == "message" and event.get("role") == "assistant":
            content = event.get("content")
            if isinstance(content, str):
                self.text.append(content if event.get("delta") else content + "\n")
        elif kind == "error" and event.get("message"):
            self.warnings.append(str(event["message"]))

    @property
    def stats(self) -> dict[str, Any]:
        stats = (self.result_event or {}).get("stats")
        return stats if isinstance(stats, dict) else {}

    def result(self, exit: ProcessExit) -> AgentResult:
        stats = self.stats
        prompt, cached = _int(stats.get("input_tokens")), _int(stats.get("cached"))
        fresh = _int(stats["input"]) if "input" in stats else max(0, prompt - cached)
        # Thinking tokens are billed as output: in `total_tokens`, not in `output_tokens`.
        output = max(_int(stats.get("output_tokens")), _int(stats.get("total_tokens")) - prompt)
        ok, failure, message, limited_until = self._outcome(exit)
        text = "".join(self.text).strip()
        session = self.init.get("session_id")
        return AgentResult(
            ok=ok,
            exit_code=exit.returncode,
            failure_class=failure,
            message=message,
            session_id=session if isinstance(session, str) and session else None,
            input_tokens=fresh,
            output_tokens=output,
            cache_tokens=cached,
            cost_usd=None,  # Gemini CLI reports no cost
            model=self._model(),
            result_text=text or None,
            limited_until=limited_until,
            usage=self._extra(),
        )

    def _model(self) -> str | None:
        models = self.stats.get("models")
        if isinstance(models, dict) and models:
            busiest = max(models, key=lambda name: _int((models[name] or {}).get("total_tokens")))
            if _int((models[busiest] or {}).get("total_tokens")):
                return str(busiest)
        model = self.init.get("model")
        return model if isinstance(model, str) else None

    def _extra(self) -> dict[str, Any]:
        stats = self.stats
        keys = ("tool_calls", "duration_ms", "total_tokens", "models")
        extra = {key: stats[key] for key in keys if stats.get(key) is not None}
        if self.warnings:
            extra["warnings"] = self.warnings[-5:]
        return extra

    def _outcome(
        self, exit: ProcessExit
    ) -> tuple[bool, FailureClass | None, str | None, float | None]:
        if exit.timed_out or exit.stalled:
            why = "ran too long" if exit.timed_out else "printed nothing for too long"
            return False, FailureClass.TIMEOUT, f"gemini {why} and was killed", None
        res, code = self.result_event, exit.returncode
        if res is not None and res.get("status") == "success" and code == 0:
            return True, None, None, None
        error = (res or {}).get("error")
        said = str(error.get("message") or "") if isinstance(error, dict) else ""
        stderr = _stderr(Path(exit.stderr_path))
        # What ended the run: the result's error; without one, stderr (earlier retries
        # there say nothing about how the run ended).
        text = said or "\n".join([*self.warnings, stderr])
        status = HTTP_BY_EXIT.get(code) if code is not None else None
        detail = _one_line(said) if said else _summary(stderr) or "no output"
        if status == 429 or (status is None and LIMIT_TEXT.search(said)):
            anchor = datetime.fromtimestamp(self.finished, UTC)
            until = parse_reset("\n".join([said, stderr]), anchor)
            until = until if until is not None else self.finished + LIMIT_FALLBACK_S
            return False, FailureClass.RATE_LIMITED, detail, until
        if code in INPUT_EXITS:
            hint = " (expected GEMINI_API_KEY in the mode's env)" if code == 41 else ""
            message = f"{INPUT_EXITS[code]} (exit {code}): {detail}{hint}"
            return False, FailureClass.INPUT, message, None
        if status in INPUT_STATUSES or INPUT_TEXT.search(text):
            return False, FailureClass.INPUT, f"gemini cannot use the model: {detail}", None
        if status in INFRA_STATUSES or INFRA_TEXT.search(text):
            return False, FailureClass.INFRA, f"the model API failed: {detail}", None
        if code in AGENT_EXITS:
            return False, FailureClass.AGENT, f"{AGENT_EXITS[code]}: {detail}", None
        if res is None:
            cls = FailureClass.INFRA if code is None or code < 0 else FailureClass.AGENT
            return False, cls, f"gemini exited with code {code} without a result: {detail}", None
        return False, FailureClass.AGENT, f"gemini failed (exit {code}): {detail}", None
