"""The codex adapter without the CLI: recorded outputs in, AgentResult out; argv and config.

Besides the shared samples, the failures below are `turn.failed` lines that codex-cli
0.171.0 printed against tests/stubs/openai.py answering each way (retries off)."""

from __future__ import annotations

import json
import stat
import time
import tomllib
from datetime import datetime
from pathlib import Path

import pytest

from ado_ray.agents import make_agent
from ado_ray.agents.base import AgentContext
from ado_ray.agents.codex import (
    API_BASE_URL,
    CHATGPT_BASE_URL,
    DEFAULT_LIMIT_COOLDOWN_S,
    CodexAgent,
    reset_time,
)
from ado_ray.config import AgentSettings
from ado_ray.errors import UsageError
from ado_ray.models import FailureClass, ProcessExit, RepoSpec
from tests.agents.conftest import sample

THREAD = "01a21d76-716a-74f3-a5bd-00626be14ba3"
STARTED = f'{{"type":"thread.started","thread_id":"{THREAD}"}}\n{{"type":"turn.started"}}\n'


def failed(message: str) -> str:
    event = {"type": "turn.failed", "error": {"message": message}}
    return STARTED + json.dumps({"type": "error", "message": message}) + "\n" + json.dumps(event)


@pytest.fixture
def agent(tmp_path: Path) -> CodexAgent:
    return CodexAgent(AgentSettings(name="codex"), user_home=tmp_path / "user")


def context(
    tmp_path: Path,
    prompt: str | None = "create hello.txt",
    *,
    resume_session: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    mode: str | None = None,
) -> AgentContext:
    prompt_file = None
    if prompt is not None:
        prompt_file = tmp_path / "prompt.md"
        prompt_file.write_text(prompt)
    return AgentContext(
        run_id="run1",
        task_id="task1",
        repo=RepoSpec(url="/src/repo", key="/src/repo", name="repo"),
        repo_path=tmp_path / "repo",
        task_dir=tmp_path,
        home=tmp_path / "home",
        prompt_file=prompt_file,
        resume_session=resume_session,
        model=model,
        base_url=base_url,
        mode=mode,
    )


def finished(
    tmp_path: Path,
    stdout: str,
    returncode: int | None = 0,
    stderr: str = "",
    timed_out: bool = False,
) -> ProcessExit:
    (tmp_path / "out.jsonl").write_text(stdout)
    (tmp_path / "err.txt").write_text(stderr)
    return ProcessExit(
        returncode=returncode,
        timed_out=timed_out,
        stalled=False,
        duration_s=1.0,
        stdout_path=str(tmp_path / "out.jsonl"),
        stderr_path=str(tmp_path / "err.txt"),
    )


# --- parse: the samples ---------------------------------------------------------------------


def test_create_file_sample(agent: CodexAgent, tmp_path: Path) -> None:
    exit = finished(tmp_path, sample("codex-0.171.0-create-file.jsonl"))
    result = agent.parse(context(tmp_path), exit)
    assert result.ok and result.exit_code == 0 and result.failure_class is None
    assert result.session_id == "01a21d76-716a-74f3-a5bd-00626be14ba3"
    assert (result.input_tokens, result.output_tokens, result.cache_tokens) == (200, 10, 0)
    assert result.tokens_are_session_totals
    assert result.cost_usd is None  # Codex reports none: the engine prices the tokens
    assert result.result_text == "done"
    assert result.usage["reasoning_output_tokens"] == 0


def test_resume_sample_reports_the_threads_running_totals(
    agent: CodexAgent, tmp_path: Path
) -> None:
    first = agent.parse(
        context(tmp_path), finished(tmp_path, sample("codex-0.171.0-create-file.jsonl"))
    )
    second = agent.parse(
        context(tmp_path, resume_session=first.session_id),
        finished(tmp_path, sample("codex-0.171.0-resume.jsonl")),
    )
    assert second.ok and second.session_id == first.session_id
    assert (second.input_tokens, second.output_tokens) == (300, 15)
    assert second.input_tokens >= first.input_tokens and second.tokens_are_session_totals
    assert second.result_text == "ok"


def test_429_sample_is_rate_limited_with_the_default_cooldown(
    agent: CodexAgent, tmp_path: Path
) -> None:
    before = time.time()
    result = agent.parse(
        context(tmp_path), finished(tmp_path, sample("codex-0.171.0-429.jsonl"), 1)
    )
    assert not result.ok and result.exit_code == 1
    assert result.failure_class is FailureClass.RATE_LIMITED
    assert result.message is not None and "429 Too Many Requests" in result.message
    assert result.session_id == "01a21d6f-5a8f-7a62-84e8-0cd3845774fd"
    assert result.limited_until is not None
    assert before + DEFAULT_LIMIT_COOLDOWN_S <= result.limited_until
    assert result.limited_until <= time.time() + DEFAULT_LIMIT_COOLDOWN_S


# --- parse: failures codex-cli 0.171.0 printed ----------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # 500, 503 / server_is_overloaded, 502, 504; a stream cut by the server
        (
            "We\u2019re currently experiencing high demand, which may cause temporary errors.",
            "infra",
        ),
        ("Selected model is at capacity. Please try a different model.", "infra"),
        (
            "unexpected status 502 Bad Gateway: something bad, "
            "url: http://127.0.0.1:40453/v1/responses, request id: req_stub",
            "infra",
        ),
        (
            "unexpected status 504 Gateway Timeout: something bad, "
            "url: http://127.0.0.1:35693/v1/responses, request id: req_stub",
            "infra",
        ),
        (
            "stream disconnected before completion: "
            "An error occurred while processing your request.",
            "infra",
        ),
        # insufficient_quota (429, but a bill to pay), a bad key, a too long thread
        ("Quota exceeded. Check your plan and billing details.", "agent"),
        (
            "unexpected status 401 Unauthorized: Incorrect API key provided, "
            "url: https://api.openai.com/v1/responses, request id: req_1",
            "agent",
        ),
        (
            "Codex ran out of room in the model's context window. Start a new thread or clear "
            "earlier history before retrying.",
            "agent",
        ),
    ],
)
def test_failure_classes(agent: CodexAgent, tmp_path: Path, message: str, expected: str) -> None:
    result = agent.parse(context(tmp_path), finished(tmp_path, failed(message), 1))
    assert not result.ok and result.failure_class == FailureClass(expected)
    assert result.message == f"codex: {message}" and result.limited_until is None
    assert result.session_id == THREAD


def test_rate_limit_mid_stream_resets_when_the_api_says(agent: CodexAgent, tmp_path: Path) -> None:
    message = (
        "rate limit exceeded: Rate limit reached for gpt-5 in organization org-x on tokens per "
        "min (TPM): Limit 30000, Used 30000, Requested 900. Please try again in 1.8s. "
        "Visit https://platform.openai.com/account/rate-limits"
    )
    before = time.time()
    result = agent.parse(context(tmp_path), finished(tmp_path, failed(message), 1))
    assert result.failure_class is FailureClass.RATE_LIMITED
    assert result.limited_until is not None
    assert before + 1.8 <= result.limited_until <= time.time() + 1.8


def test_chatgpt_usage_limit_resets_at_the_time_it_shows(agent: CodexAgent, tmp_path: Path) -> None:
    message = (
        "You\u2019ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
        "https://chatgpt.com/settings/usage to purchase more credits or try again at "
        "Mar 17th, 2030 5:46 PM."
    )
    result = agent.parse(context(tmp_path), finished(tmp_path, failed(message), 1))
    assert result.failure_class is FailureClass.RATE_LIMITED
    # Codex prints the local time, to the minute; the reset is within that minute.
    assert result.limited_until == datetime(2030, 3, 17, 17, 47).timestamp()


def test_usage_limit_clock_time_is_the_next_one() -> None:
    text = "You\u2019ve hit your usage limit. ... or try again at 3:45 PM."
    now = datetime(2026, 11, 27, 15, 0).timestamp()
    assert reset_time(text, now) == datetime(2026, 11, 27, 15, 46).timestamp()
    later = datetime(2026, 11, 27, 16, 0).timestamp()
    assert reset_time(text, later) == datetime(2026, 11, 28, 15, 46).timestamp()


def test_usage_limit_without_a_time_gets_the_default(agent: CodexAgent, tmp_path: Path) -> None:
    message = (
        "You\u2019ve hit your usage limit. Visit https://chatgpt.com/settings/usage "
        "to purchase more credits or try again later."
    )
    before = time.time()
    result = agent.parse(context(tmp_path), finished(tmp_path, failed(message), 1))
    assert result.failure_class is FailureClass.RATE_LIMITED
    assert result.limited_until is not None
    assert result.limited_until >= before + DEFAULT_LIMIT_COOLDOWN_S


def test_retry_events_alone_still_say_rate_limited(agent: CodexAgent, tmp_path: Path) -> None:
    """Killed while Codex retried: no turn.failed, only `error` events."""
    retry = "Reconnecting... 1/5 (exceeded retry limit, last status: 429 Too Many Requests)"
    stdout = STARTED + json.dumps({"type": "error", "message": retry}) + "\n"
    result = agent.parse(context(tmp_path), finished(tmp_path, stdout, 1))
    assert result.failure_class is FailureClass.RATE_LIMITED


def test_cached_input_is_counted_once(agent: CodexAgent, tmp_path: Path) -> None:
    usage = {
        "input_tokens": 200,
        "cached_input_tokens": 60,
        "cache_write_input_tokens": 40,
        "output_tokens": 10,
        "reasoning_output_tokens": 3,
    }
    stdout = STARTED + json.dumps({"type": "turn.completed", "usage": usage})
    result = agent.parse(context(tmp_path), finished(tmp_path, stdout))
    assert result.ok
    assert (result.input_tokens, result.cache_tokens, result.output_tokens) == (100, 100, 10)


def test_no_events_fails_with_the_stderr_tail(agent: CodexAgent, tmp_path: Path) -> None:
    stderr = (
        "WARNING: proceeding, even though we could not create PATH aliases\n"
        "Error: thread/resume: thread/resume failed: no rollout found for thread id x\n"
    )
    result = agent.parse(context(tmp_path), finished(tmp_path, "", 1, stderr))
    assert not result.ok and result.failure_class is FailureClass.AGENT
    assert result.session_id is None and result.input_tokens == 0
    assert result.message is not None and result.message.endswith(
        "no rollout found for thread id x"
    )


def test_exit_zero_without_a_completed_turn_is_no_success(
    agent: CodexAgent, tmp_path: Path
) -> None:
    result = agent.parse(context(tmp_path), finished(tmp_path, STARTED + "not json\n"))
    assert not result.ok and result.failure_class is FailureClass.AGENT
    assert result.session_id == THREAD


def test_a_completed_turn_with_a_failing_exit_is_no_success(
    agent: CodexAgent, tmp_path: Path
) -> None:
    stdout = sample("codex-0.171.0-create-file.jsonl")
    result = agent.parse(context(tmp_path), finished(tmp_path, stdout, 1))
    assert not result.ok and result.input_tokens == 200  # the usage still counts


def test_timeout_keeps_what_was_said(agent: CodexAgent, tmp_path: Path) -> None:
    exit = finished(tmp_path, STARTED, None, timed_out=True)
    result = agent.parse(context(tmp_path), exit)
    assert not result.ok and result.failure_class is FailureClass.TIMEOUT
    assert result.session_id == THREAD


# --- invocation -------------------------------------------------------------------------------


def config_of(ctx: AgentContext) -> dict[str, object]:
    return tomllib.loads((ctx.home / ".codex" / "config.toml").read_text())


def test_argv_env_and_config(agent: CodexAgent, tmp_path: Path) -> None:
    ctx = context(tmp_path, model="gpt-5.1-codex", base_url="http://127.0.0.1:9/v1")
    invocation = agent.invocation(ctx)
    assert invocation.argv == [
        "codex",
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--",
        "create hello.txt",
    ]
    assert invocation.env == {"CODEX_HOME": str(tmp_path / "home" / ".codex")}
    config = config_of(ctx)
    assert config["model"] == "gpt-5.1-codex"
    assert config["approval_policy"] == "never" and config["sandbox_mode"] == "workspace-write"
    assert config["check_for_update_on_startup"] is False
    provider = config["model_providers"]["ado-ray"]  # type: ignore[index]
    assert config["model_provider"] == "ado-ray"
    assert provider["base_url"] == "http://127.0.0.1:9/v1"
    assert provider["env_key"] == "OPENAI_API_KEY" and provider["wire_api"] == "responses"
    assert "requires_openai_auth" not in provider
    # Bounded: no retry in the CLI at all; the limiter does the waiting.
    assert provider["request_max_retries"] == 0 and provider["stream_max_retries"] == 0
    assert config["shell_environment_policy"] == {"exclude": ["OPENAI_API_KEY"]}
    assert config["analytics"] == {"enabled": False} and config["feedback"] == {"enabled": False}
    assert config["otel"] == {"exporter": "none"}


def test_resume_argv(agent: CodexAgent, tmp_path: Path) -> None:
    ctx = context(tmp_path, "-go on", resume_session=THREAD)
    assert agent.invocation(ctx).argv[1:3] == ["exec", "--json"]  # no rollout: start afresh
    rollout = (
        tmp_path / f"home/.codex/sessions/2026/12/02/rollout-2026-12-02T10-00-00-{THREAD}.jsonl"
    )
    rollout.parent.mkdir(parents=True)
    rollout.write_text("{}\n")
    invocation = agent.invocation(ctx)
    assert invocation.argv[1:] == [
        "exec",
        "resume",
        THREAD,
        "--json",
        "--skip-git-repo-check",
        "--",
        "-go on",
    ]


def test_defaults_cli_and_endpoint(tmp_path: Path) -> None:
    agent = make_agent(AgentSettings(name="codex", cmd="/opt/codex/bin/codex"))
    assert isinstance(agent, CodexAgent) and agent.limit_key == "codex"
    ctx = context(tmp_path)
    assert agent.invocation(ctx).argv[0] == "/opt/codex/bin/codex"
    config = config_of(ctx)
    assert "model" not in config  # the CLI's default model
    assert config["model_providers"]["ado-ray"]["base_url"] == API_BASE_URL  # type: ignore[index]


def test_user_login_is_copied_never_written_into_the_config(
    agent: CodexAgent, tmp_path: Path
) -> None:
    secret = '{"OPENAI_API_KEY": "sk-user-secret-123"}'
    (tmp_path / "user" / ".codex").mkdir(parents=True)
    (tmp_path / "user" / ".codex" / "auth.json").write_text(secret)
    ctx = context(tmp_path)
    agent.invocation(ctx)
    copied = ctx.home / ".codex" / "auth.json"
    assert copied.read_text() == secret
    assert stat.S_IMODE(copied.stat().st_mode) == 0o600
    text = (ctx.home / ".codex" / "config.toml").read_text()
    assert "sk-user-secret-123" not in text and "key =" not in text.replace("env_key =", "")


def test_subscription_mode_uses_the_login(agent: CodexAgent, tmp_path: Path) -> None:
    (tmp_path / "user" / ".codex").mkdir(parents=True)
    (tmp_path / "user" / ".codex" / "auth.json").write_text("{}")
    ctx = context(tmp_path, mode="subscription")
    agent.invocation(ctx)
    provider = config_of(ctx)["model_providers"]["ado-ray"]  # type: ignore[index]
    assert provider["requires_openai_auth"] is True and "env_key" not in provider
    assert provider["base_url"] == CHATGPT_BASE_URL


def test_subscription_mode_without_a_login_is_a_usage_error(
    agent: CodexAgent, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="codex login"):
        agent.invocation(context(tmp_path, mode="subscription"))


def test_prompt_is_required_and_fits_in_one_argument(agent: CodexAgent, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs --prompt or --prompt-file"):
        agent.invocation(context(tmp_path, None))
    with pytest.raises(UsageError, match="one argument"):
        agent.invocation(context(tmp_path, "x" * 200_000))


def test_config_values_are_escaped(agent: CodexAgent, tmp_path: Path) -> None:
    odd = 'gpt "5"\\\n\x7f\u00e9'
    ctx = context(tmp_path, model=odd)
    agent.invocation(ctx)
    assert config_of(ctx)["model"] == odd
