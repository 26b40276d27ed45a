"""The `aider` agent: Aider (PyPI `aider-chat`, measured on 0.86.2), one message, headless.

    aider --message-file PROMPT --yes-always --model MODEL --openai-api-base URL
          --chat-history-file TASK/aider/SESSION.chat.md [--restore-chat-history] ...

Aider talks to any model LiteLLM knows; the adapter is made for an OpenAI-compatible
endpoint (vLLM, Ollama, a LiteLLM proxy, a company gateway): a MODEL without a provider
prefix is passed as `openai/MODEL`, the mode's `base_url` (default: OpenAI's API) is the
endpoint, and the key is read by LiteLLM from the environment the mode sets
(`OPENAI_API_KEY`; for a prefixed model, that provider's variable). Nothing secret is in
argv or in a file.

The runner owns git: `--no-auto-commits --no-dirty-commits --no-gitignore`, and Aider's
files stay out of the checkout. Its chat and input histories live in `TASK/aider/`, and its
repo-map cache (`.aider.tags.cache.v4/`, always written at the git root; no option moves
it) is removed from the checkout by `parse`, before the runner commits. Its own state goes
to the task's HOME (`~/.aider/`).

Headless: `--message-file` (one message, then exit), `--yes-always` (edits to files not yet
in the chat, new files), no update check, no release notes, analytics off, no URL
detection or scraping, no shell-command suggestions, no tests run, plain output (`COLUMNS`
wide, so that lines are not wrapped). `BROWSER=true`: Aider offers to open a URL found in
an error message, and `--yes-always` would accept. LiteLLM's price list is its bundled one
(`LITELLM_LOCAL_MODEL_COST_MAP`); Aider's own download of it at each start is answered by a
seeded cache. `--no-stream`: the tokens reported are the endpoint's own `usage`, not
Aider's local estimate of a stream.

Retries: the OpenAI client's silent ones are off (`max_retries: 0` in `aider/extra_params`
of a generated model-settings file, which also pins `api_base`); Aider's own retry loop
prints `litellm.RateLimitError: ...` and `Retrying in N seconds...`, doubling N up to a
minute and ignoring `retry-after`. The adapter's `stop_when` watches the output and stops
Aider when one model call has failed `MAX_TRIES` times in a row: waiting out a limit is the
limiter's job.

Output (plain text on stdout): a banner (`Aider v0.86.2`, `Model: NAME with FORMAT edit
format`), the model's reply, `Applied edit to FILE`, and per message a usage report,
`Tokens: 2.3k sent, 12 cache hit, 56 received. Cost: $0.01 message, $0.03 session.` (no
`Cost:` part when LiteLLM has no price for the model; counts of 1000 and more in `k`, one
decimal below 10k). "session" there is this process: every report is this attempt's.
There is no session id: SESSION is the adapter's own name for a chat history file.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ado_ray.agents.base import AgentContext, AgentResult, Invocation
from ado_ray.agents.common import last_line, session_paths
from ado_ray.agents.limit_text import parse_reset
from ado_ray.config import AgentSettings
from ado_ray.errors import UsageError
from ado_ray.models import FailureClass, ProcessExit

API_BASE_URL = "https://api.openai.com/v1"
MAX_TRIES = 3  # per model call: Aider's first two retries (0.25 s, 0.5 s) absorb a blip
DEFAULT_LIMIT_COOLDOWN_S = 60.0  # a limit whose reset nobody says
TAGS_CACHE = ".aider.tags.cache.v4"  # Aider's repo-map cache, at the git root
STATE_DIR = "aider"  # in the task's directory: chat and input histories, model settings
ENV = {
    "BROWSER": "true",  # "open this URL?" is answered yes: let it open nothing
    "COLUMNS": "1000",  # rich wraps plain output at 80 columns otherwise
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of LiteLLM's price list
    "NO_COLOR": "1",
}
FLAGS = [
    "--yes-always",
    "--no-auto-commits",
    "--no-dirty-commits",
    "--no-gitignore",
    "--no-check-update",
    "--no-show-release-notes",
    "--analytics-disable",
    "--no-analytics",
    "--no-pretty",
    "--no-fancy-input",
    "--no-stream",
    "--no-show-model-warnings",
    "--no-detect-urls",
    "--disable-playwright",
    "--no-suggest-shell-commands",
    "--no-auto-test",
    "--no-watch-files",
    "--no-notifications",
    "--no-gui",
    "--verify-ssl",
]

_ERROR = re.compile(r"^litellm\.(?P<name>\w+): ", re.M)
_TOKENS = re.compile(
    r"^Tokens: (?P<sent>[\d.]+k?) sent,(?:\s+(?P<write>[\d.]+k?) cache write,)?"
    r"(?:\s+(?P<hit>[\d.]+k?) cache hit,)?\s+(?P<received>[\d.]+k?) received\."
    r"(?:\s+Cost: \$(?P<message>[\d.]+) message, \$(?P<session>[\d.]+) session\.)?",
    re.M,
)
_MODEL = re.compile(r"^Model: (?P<model>\S+) with ", re.M)
_EXHAUSTED = re.compile(r"^Model \S+ has hit a token limit!$", re.M)
_LIMITED = {"RateLimitError", "RouterRateLimitError", "ServiceUnavailableError"}
_INPUT = {"AuthenticationError", "NotFoundError", "PermissionDeniedError"}
_INFRA = {
    "APIConnectionError",
    "APIError",
    "BadGatewayError",
    "InternalServerError",
    "Timeout",
    "APIResponseValidationError",
}
# Aider's own words after LiteLLM's error ("The API provider's servers are down or
# overloaded.", for any 5xx): not the endpoint's.
_AIDERS_OWN = re.compile(r"^(?:The|OpenRouter or the upstream) API provider\b.*$", re.M)
_OVERLOADED = re.compile(r"overloaded|at capacity|too many requests|\b429\b", re.I)
_NEEDS_PEOPLE = re.compile(r"insufficient credits|quota exceeded|out of credits|budget", re.I)


class AiderAgent:
    name = "aider"

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.executable = settings.cmd or "aider"  # the path of the CLI, or its name on PATH

    @property
    def limit_key(self) -> str:
        return self.name

    def invocation(self, ctx: AgentContext) -> Invocation:
        if ctx.prompt_file is None:
            raise UsageError("the aider agent needs --prompt or --prompt-file")
        if not ctx.prompt_file.read_text(encoding="utf-8").strip():
            raise UsageError(f"{ctx.prompt_file}: the prompt is empty; expected the task")
        state = ctx.task_dir / STATE_DIR
        state.mkdir(parents=True, exist_ok=True)
        resume = ctx.resume_session
        restore = resume is not None and _history(state, resume).is_file()
        session = resume if restore and resume else uuid.uuid4().hex[:16]
        (state / "session").write_text(session, encoding="utf-8")
        settings = state / "model-settings.yml"
        settings.write_text(model_settings(ctx), encoding="utf-8")
        _seed_price_cache(ctx.home)
        argv = [self.executable, "--message-file", str(ctx.prompt_file)]
        if ctx.model:
            argv += ["--model", model_name(ctx.model)]
        argv += ["--openai-api-base", ctx.base_url or API_BASE_URL]
        argv += ["--model-settings-file", str(settings)]
        argv += ["--chat-history-file", str(_history(state, session))]
        argv += ["--input-history-file", str(state / "input.history")]
        argv += ["--restore-chat-history" if restore else "--no-restore-chat-history"]
        return Invocation(argv=[*argv, *FLAGS], env=dict(ENV), stop_when=LimitWatch())

    def session_files(self, ctx: AgentContext, session_id: str) -> list[Path]:
        """The chat history file the adapter names after the session (`TASK/aider/ID.chat.md`):
        all `--restore-chat-history` reads (the input history is only the prompts)."""
        return session_paths(ctx, session_id, [f"{STATE_DIR}/{{id}}.chat.md"])

    def parse(self, ctx: AgentContext, exit: ProcessExit) -> AgentResult:
        shutil.rmtree(ctx.repo_path / TAGS_CACHE, ignore_errors=True)  # before the commit
        state = ctx.task_dir / STATE_DIR
        try:
            session: str | None = (state / "session").read_text(encoding="utf-8").strip()
        except OSError:
            session = None
        history = _history(state, session) if session else None
        if history is None or not _has_exchange(history):
            session = None  # killed before its first message: nothing to continue
        stdout = Path(exit.stdout_path)
        try:
            text = stdout.read_text(encoding="utf-8", errors="replace")
            said_at = stdout.stat().st_mtime
        except OSError:
            text, said_at = "", time.time()
        run = read_output(text)
        reported = run.model if ctx.model is None else None  # prices: keyed as configured
        common: dict[str, Any] = {
            "exit_code": exit.returncode,
            "session_id": session,
            "input_tokens": run.input_tokens,
            "output_tokens": run.output_tokens,
            "cache_tokens": run.cache_tokens,
            "cost_usd": run.cost_usd,
            "model": reported,
            "num_turns": len(run.reports) or None,
            "result_text": _last_reply(history) if history else None,
            "usage": {"aider_model": run.model, "reports": len(run.reports)},
        }
        failure = run.failure
        cls, until = failure.classify(said_at) if failure else (None, None)
        if exit.timed_out or exit.stalled:
            how = "ran too long" if exit.timed_out else "printed nothing for too long"
            if failure is not None and cls is FailureClass.RATE_LIMITED:  # killed in a backoff
                message = f"aider {how}, retrying a provider limit: {failure.text}"
                return AgentResult(
                    ok=False,
                    failure_class=cls,
                    message=message,
                    limited_until=until,
                    **common,
                )
            return AgentResult(
                ok=False, failure_class=FailureClass.TIMEOUT, message=f"aider {how}", **common
            )
        if failure is not None:
            tries = f" ({failure.tries} tries; stopped)" if exit.returncode is None else ""
            return AgentResult(
                ok=False,
                failure_class=cls,
                message=f"aider: the model call failed{tries}: {failure.text}",
                limited_until=until,
                **common,
            )
        if run.exhausted:
            return AgentResult(
                ok=False,
                failure_class=FailureClass.AGENT,
                message=f"aider: {run.exhausted} (its context window or output limit)",
                **common,
            )
        if exit.returncode != 0:
            said = last_line(Path(exit.stderr_path)) or last_line(stdout) or "no output"
            cls = FailureClass.INPUT if exit.returncode == 2 else FailureClass.AGENT
            return AgentResult(
                ok=False,
                failure_class=cls,
                message=f"aider exited with code {exit.returncode}: {said}",
                **common,
            )
        return AgentResult(ok=True, **common)


def model_name(model: str) -> str:
    """LiteLLM's name of `model`: one without a provider prefix is the endpoint's, `openai/`."""
    return model if "/" in model else f"openai/{model}"


def model_settings(ctx: AgentContext) -> str:
    """Aider's model-settings file (YAML; this is JSON) for every model of the run: no
    silent retries in the OpenAI client, and the endpoint pinned against a checkout's own
    `.aider.model.settings.yml` (which Aider reads too, before this one)."""
    params: dict[str, object] = {"max_retries": 0}
    openai = ctx.model is None or model_name(ctx.model).startswith("openai/")
    if ctx.base_url or openai:
        params["api_base"] = ctx.base_url or API_BASE_URL
    return json.dumps([{"name": "aider/extra_params", "extra_params": params}], indent=2) + "\n"


def _seed_price_cache(home: Path) -> None:
    """Aider downloads LiteLLM's price list (from GitHub) at each start unless its day-old
    cache has content; give it content that defers to LiteLLM's bundled list."""
    cache = home / ".aider" / "caches" / "model_prices_and_context_window.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text('{"ado-ray: see LiteLLM\'s bundled list": {}}\n', encoding="utf-8")


def _history(state: Path, session: str) -> Path:
    return state / f"{session}.chat.md"


def _has_exchange(history: Path) -> bool:
    """Whether Aider's chat history holds a message (`#### ` starts each of the user's)."""
    try:
        return "\n#### " in history.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _last_reply(history: Path) -> str | None:
    """The model's last reply in Aider's chat history: the text after the last user
    message, less Aider's own notes (`> ` lines)."""
    try:
        text = history.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    _, found, after = text.rpartition("\n#### ")
    if not found:
        return None
    lines = after.splitlines()[1:]
    while lines and lines[0].startswith("#### "):  # a message of several lines
        lines.pop(0)
    reply = "\n".join(line for line in lines if not line.startswith(">")).strip()
    return reply or None


def _count(value: str | None) -> int:
    """One of Aider's token counts: `724`, `2.3k`, `23k`."""
    if not value:
        return 0
    return round(float(value[:-1]) * 1000) if value.endswith("k") else int(float(value))


@dataclass
class ModelError:
    """The error the last model call of a run failed with, as Aider printed it."""

    name: str  # LiteLLM's exception class, e.g. RateLimitError
    text: str  # its message, on one line
    tries: int  # how many times in a row the call failed

    def reset(self, said_at: float) -> float:
        found = parse_reset(self.text, datetime.fromtimestamp(said_at, UTC))
        return found if found is not None else max(said_at, time.time()) + DEFAULT_LIMIT_COOLDOWN_S

    def classify(self, said_at: float) -> tuple[FailureClass, float | None]:
        """The failure class, and when a limit resets (epoch seconds)."""
        if _NEEDS_PEOPLE.search(self.text):  # a bill to pay, not a window to wait out
            return FailureClass.AGENT, None
        if self.name in _LIMITED or _OVERLOADED.search(self.text):
            return FailureClass.RATE_LIMITED, self.reset(said_at)
        if self.name in _INPUT:
            return FailureClass.INPUT, None
        if self.name in _INFRA:
            return FailureClass.INFRA, None
        return FailureClass.AGENT, None


@dataclass
class AiderRun:
    """What Aider's plain output said about itself."""

    model: str | None = None
    reports: list[re.Match[str]] = field(default_factory=list)  # usage reports, in order
    failure: ModelError | None = None  # set when the last model call failed
    exhausted: str | None = None  # Aider's words when a reply hit a token limit

    @property
    def input_tokens(self) -> int:  # sent, less the cache's part (OpenAI counts it in)
        return max(0, sum(_count(r["sent"]) for r in self.reports) - self.cache_tokens)

    @property
    def output_tokens(self) -> int:
        return sum(_count(r["received"]) for r in self.reports)

    @property
    def cache_tokens(self) -> int:
        return sum(_count(r["write"]) + _count(r["hit"]) for r in self.reports)

    @property
    def cost_usd(self) -> float | None:
        """The process's total (the last report's `session`), None when Aider priced nothing."""
        costs = [float(r["session"]) for r in self.reports if r["session"]]
        return costs[-1] if costs else None


def read_output(text: str) -> AiderRun:
    run = AiderRun()
    if found := _MODEL.search(text):
        run.model = found["model"]
    run.reports = list(_TOKENS.finditer(text))
    if found := _EXHAUSTED.search(text):
        run.exhausted = found[0]
    after = run.reports[-1].end() if run.reports else 0
    errors = list(_ERROR.finditer(text, after))
    if errors:
        last = errors[-1]
        end = text.find("\nRetrying in ", last.end())
        body = _AIDERS_OWN.sub("", text[last.end() : end if end >= 0 else None])
        message = " ".join(body.split())[:500]
        run.failure = ModelError(last["name"], message, len(errors))
    return run


class LimitWatch:
    """`Invocation.stop_when` for Aider: True once one model call has failed `MAX_TRIES`
    times in a row, so that Aider's growing backoff (to a minute and more) is cut short.
    Reads only what was written since the last call (a capped log may shrink: then it
    starts over)."""

    def __init__(self, max_tries: int = MAX_TRIES) -> None:
        self.max_tries = max_tries
        self.offset = 0
        self.partial = ""
        self.failed_in_a_row = 0

    def __call__(self, stdout: Path, stderr: Path) -> bool:
        try:
            with stdout.open("rb") as handle:
                size = handle.seek(0, 2)
                if size < self.offset:
                    self.offset, self.partial = 0, ""
                handle.seek(self.offset)
                chunk = handle.read(size - self.offset)
        except OSError:
            return False
        self.offset += len(chunk)
        lines = (self.partial + chunk.decode("utf-8", "replace")).split("\n")
        self.partial = lines.pop()
        for line in lines:
            if _TOKENS.match(line):
                self.failed_in_a_row = 0
            elif _ERROR.match(line):
                self.failed_in_a_row += 1
        return self.failed_in_a_row >= self.max_tries
