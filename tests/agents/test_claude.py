"""The claude adapter without the CLI: its argv and environment, and the recorded real
outputs in samples/ read into AgentResults."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ado_ray.agents import make_agent
from ado_ray.agents.base import AgentContext
from ado_ray.agents.claude import LIMIT_FALLBACK_S, ClaudeAgent
from ado_ray.config import AgentSettings
from ado_ray.errors import UsageError
from ado_ray.models import FailureClass, ProcessExit, RepoSpec
from tests.agents.conftest import sample

SECRET = "sk-ant-api03-secret"
FINISHED = datetime(2026, 11, 27, 14, 31, 40, tzinfo=UTC).timestamp()


def context(
    tmp_path: Path, prompt: str | None = "create hello.txt", **fields: object
) -> AgentContext:
    task_dir = tmp_path / "task"
    (task_dir / "home").mkdir(parents=True, exist_ok=True)
    (task_dir / "repo").mkdir(exist_ok=True)
    prompt_file = None
    if prompt is not None:
        prompt_file = task_dir / "prompt.md"
        prompt_file.write_text(prompt)
    values: dict[str, object] = {
        "run_id": "run1",
        "task_id": "t1",
        "repo": RepoSpec(url="/src/repo", key="/src/repo", name="repo"),
        "repo_path": task_dir / "repo",
        "task_dir": task_dir,
        "home": task_dir / "home",
        "prompt_file": prompt_file,
        **fields,
    }
    return AgentContext(**values)  # type: ignore[arg-type]


@pytest.fixture
def agent(tmp_path: Path) -> ClaudeAgent:
    """An adapter whose user home (where a login is copied from) is empty."""
    (tmp_path / "user").mkdir()
    return ClaudeAgent(AgentSettings(name="claude"), user_home=tmp_path / "user")


def run_output(
    tmp_path: Path, stdout: str, returncode: int | None, stderr: str = "", **exit: bool
) -> ProcessExit:
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    out.write_text(stdout)
    err.write_text(stderr)
    os.utime(out, (FINISHED, FINISHED))
    return ProcessExit(
        returncode=returncode,
        timed_out=exit.get("timed_out", False),
        stalled=exit.get("stalled", False),
        duration_s=1.0,
        stdout_path=str(out),
        stderr_path=str(err),
    )


# --- invocation ---------------------------------------------------------------------------


def test_registered_as_claude(tmp_path: Path) -> None:
    agent = make_agent(AgentSettings(name="claude"))
    assert isinstance(agent, ClaudeAgent)
    assert agent.name == "claude" and agent.limit_key == "claude"


def test_argv_is_headless_stream_json_with_accept_edits(tmp_path: Path, agent: ClaudeAgent) -> None:
    argv = agent.invocation(context(tmp_path)).argv
    assert argv == [
        "claude",
        "-p",
        "create hello.txt",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "acceptEdits",
    ]
    assert not any("bypass" in word or "dangerously" in word for word in argv)


def test_cmd_is_the_executable(tmp_path: Path) -> None:
    agent = ClaudeAgent(AgentSettings(name="claude", cmd="/opt/claude/bin/claude"), tmp_path)
    assert agent.invocation(context(tmp_path)).argv[0] == "/opt/claude/bin/claude"


def test_model_max_turns_and_base_url(tmp_path: Path, agent: ClaudeAgent) -> None:
    ctx = context(tmp_path, model="claude-opus-5-5", max_turns=3, base_url="http://gw:8080")
    invocation = agent.invocation(ctx)
    argv = invocation.argv
    assert argv[argv.index("--model") + 1] == "claude-opus-5-5"
    assert argv[argv.index("--max-turns") + 1] == "3"
    assert invocation.env["ANTHROPIC_BASE_URL"] == "http://gw:8080"
    assert "ANTHROPIC_BASE_URL" not in agent.invocation(context(tmp_path)).env


def test_environment_quiet_bounded_and_private(tmp_path: Path, agent: ClaudeAgent) -> None:
    ctx = context(tmp_path)
    env = agent.invocation(ctx).env
    assert env["CLAUDE_CONFIG_DIR"] == str(ctx.home / ".claude")
    assert (ctx.home / ".claude").is_dir()
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "2"
    for name in (
        "DISABLE_TELEMETRY",
        "DISABLE_ERROR_REPORTING",
        "DISABLE_AUTOUPDATER",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
    ):
        assert env[name] == "1"
    # Credentials come from the mode's environment, added by the engine, never by us.
    assert not {"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "IS_SANDBOX"} & env.keys()


def test_retries_can_be_set_in_agent_env(tmp_path: Path) -> None:
    settings = AgentSettings(name="claude", env={"CLAUDE_CODE_MAX_RETRIES": "0"})
    env = ClaudeAgent(settings, tmp_path).invocation(context(tmp_path)).env
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "0"


def test_no_secret_reaches_argv(
    tmp_path: Path, agent: ClaudeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    invocation = agent.invocation(context(tmp_path, model="m", base_url="http://x"))
    assert SECRET not in " ".join(invocation.argv) + json.dumps(invocation.env)


def test_resume_only_a_session_the_config_dir_holds(tmp_path: Path, agent: ClaudeAgent) -> None:
    session = "ee12871f-4903-4d82-9663-c61b4a7b757c"
    ctx = context(tmp_path, resume_session=session)
    assert "--resume" not in agent.invocation(ctx).argv  # no transcript: start over
    transcript = ctx.home / ".claude" / "projects" / "-task-repo" / f"{session}.jsonl"
    transcript.parent.mkdir(parents=True)
    transcript.write_text("{}\n")
    argv = agent.invocation(ctx).argv
    assert argv[argv.index("--resume") + 1] == session


def test_prompt_is_required(tmp_path: Path, agent: ClaudeAgent) -> None:
    with pytest.raises(UsageError, match="needs --prompt or --prompt-file"):
        agent.invocation(context(tmp_path, prompt=None))
    with pytest.raises(UsageError, match="empty"):
        agent.invocation(context(tmp_path, prompt="  \n"))
    with pytest.raises(UsageError, match="at most"):
        agent.invocation(context(tmp_path, prompt="x" * 200_000))


def test_a_prompt_starting_with_a_dash_is_not_an_option(tmp_path: Path, agent: ClaudeAgent) -> None:
    prompt = agent.invocation(context(tmp_path, prompt="--help me")).argv[2]
    assert prompt.strip() == "--help me" and not prompt.startswith("-")


def test_subscription_login_is_copied_not_linked(tmp_path: Path) -> None:
    user = tmp_path / "user"
    (user / ".claude").mkdir(parents=True)
    credentials = {"claudeAiOauth": {"accessToken": "sk-ant-oat01-x", "expiresAt": 1}}
    (user / ".claude" / ".credentials.json").write_text(json.dumps(credentials))
    account = {"oauthAccount": {"emailAddress": "a@b.c"}, "userID": "u1", "projects": {"/": {}}}
    (user / ".claude.json").write_text(json.dumps(account))
    ctx = context(tmp_path)
    ClaudeAgent(AgentSettings(name="claude"), user_home=user).invocation(ctx)
    config = ctx.home / ".claude"
    copied = config / ".credentials.json"
    assert json.loads(copied.read_text()) == credentials
    assert not copied.is_symlink() and copied.stat().st_mode & 0o777 == 0o600
    assert json.loads((config / ".claude.json").read_text()) == {
        "oauthAccount": {"emailAddress": "a@b.c"},
        "userID": "u1",
    }


def test_a_refreshed_copy_is_kept(tmp_path: Path) -> None:
    user = tmp_path / "user"
    (user / ".claude").mkdir(parents=True)
    source = user / ".claude" / ".credentials.json"
    source.write_text('{"claudeAiOauth": {"accessToken": "old"}}')
    os.utime(source, (1_000_000, 1_000_000))
    ctx = context(tmp_path)
    agent = ClaudeAgent(AgentSettings(name="claude"), user_home=user)
    agent.invocation(ctx)
    copied = ctx.home / ".claude" / ".credentials.json"
    copied.write_text('{"claudeAiOauth": {"accessToken": "refreshed by the task"}}')
    agent.invocation(ctx)
    assert "refreshed by the task" in copied.read_text()


def test_no_login_no_files(tmp_path: Path, agent: ClaudeAgent) -> None:
    ctx = context(tmp_path)
    agent.invocation(ctx)
    assert list((ctx.home / ".claude").iterdir()) == []


# --- parse: the recorded samples -----------------------------------------------------------


def test_create_file(tmp_path: Path, agent: ClaudeAgent) -> None:
    out = run_output(tmp_path, sample("claude-2.1.332-create-file.stream.jsonl"), 0)
    result = agent.parse(context(tmp_path), out)
    assert result.ok and result.failure_class is None and result.message is None
    assert result.session_id == "ee12871f-4903-4d82-9663-c61b4a7b757c"
    assert (result.input_tokens, result.output_tokens, result.cache_tokens) == (200, 10, 0)
    assert result.cost_usd == 0.001 and result.cost_is_session_total
    assert not result.tokens_are_session_totals  # `usage` covers this run only
    assert result.model == "claude-opus-5-5"
    assert result.num_turns == 2 and result.result_text == "done"
    assert result.limited_until is None
    assert result.usage["terminal_reason"] == "completed"


def test_resume_reports_the_session_total_cost(tmp_path: Path, agent: ClaudeAgent) -> None:
    out = run_output(tmp_path, sample("claude-2.1.332-resume.stream.jsonl"), 0)
    result = agent.parse(context(tmp_path), out)
    assert result.ok and result.session_id == "ee12871f-4903-4d82-9663-c61b4a7b757c"
    assert (result.input_tokens, result.output_tokens) == (100, 5)  # this run
    assert result.cost_usd == 0.0015 and result.cost_is_session_total  # both runs
    assert result.num_turns == 1 and result.result_text == "ok (turn without tool)"


def test_denied_writes_fail_even_when_the_cli_says_success(
    tmp_path: Path, agent: ClaudeAgent
) -> None:
    out = run_output(tmp_path, sample("claude-2.1.332-output-json.json"), 0)
    result = agent.parse(context(tmp_path), out)
    assert not result.ok and result.failure_class is FailureClass.AGENT
    assert result.message == "the agent's writes were denied: Write /home/user/repo/hello.txt"
    assert result.session_id == "5006c29d-9ec4-4295-a3af-1b71bcf0b5af"
    assert result.cost_usd == 0.001 and result.input_tokens == 200


def test_max_turns(tmp_path: Path, agent: ClaudeAgent) -> None:
    out = run_output(tmp_path, sample("claude-2.1.332-max-turns.stream.jsonl"), 1)
    result = agent.parse(context(tmp_path), out)
    assert not result.ok and result.failure_class is FailureClass.AGENT
    assert result.message is not None and "--max-turns" in result.message
    assert result.num_turns == 2 and result.exit_code == 1
    assert result.cost_usd == 0.0005 and result.output_tokens == 5
    assert result.session_id == "be6f17d1-03f0-4af8-a8ff-201d23217fec"


def test_429_after_retries_is_a_rate_limit(tmp_path: Path, agent: ClaudeAgent) -> None:
    out = run_output(tmp_path, sample("claude-2.1.332-429-after-retries.stream.jsonl"), 1)
    result = agent.parse(context(tmp_path), out)
    assert not result.ok and result.failure_class is FailureClass.RATE_LIMITED
    assert result.message is not None and "429" in result.message
    assert result.session_id == "395c5d10-fad0-4cd2-9a8e-35494a895fa8"
    # No reset time in the output: the CLI's longest backoff (34.8 s), at least a minute.
    assert result.limited_until == pytest.approx(FINISHED + LIMIT_FALLBACK_S)
    assert result.usage["rate_limit_retries"] == 2
    assert result.cost_usd == 0


def test_429_with_exit_code_0_is_still_a_rate_limit(tmp_path: Path, agent: ClaudeAgent) -> None:
    """Older CLIs exit 0 after giving up on a 429; `is_error` is what counts."""
    out = run_output(tmp_path, sample("claude-2.1.332-429-after-retries.stream.jsonl"), 0)
    result = agent.parse(context(tmp_path), out)
    assert not result.ok and result.failure_class is FailureClass.RATE_LIMITED


def test_529_overloaded_is_infra(tmp_path: Path, agent: ClaudeAgent) -> None:
    out = run_output(tmp_path, sample("claude-2.1.332-529-overloaded.stream.jsonl"), 1)
    result = agent.parse(context(tmp_path), out)
    assert not result.ok and result.failure_class is FailureClass.INFRA
    assert result.failure_class.retryable
    assert result.message is not None and "529 Overloaded" in result.message
    assert result.limited_until is None


# --- parse: other shapes -------------------------------------------------------------------


def events(*items: Mapping[str, object]) -> str:
    return "".join(json.dumps(item) + "\n" for item in items)


INIT = {"type": "system", "subtype": "init", "session_id": "s-1", "model": "claude-opus-5-5"}


def error_result(text: str, **fields: object) -> dict[str, object]:
    return {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "session_id": "s-1",
        "result": text,
        "total_cost_usd": 0,
        "usage": {"input_tokens": 0, "output_tokens": 0},
        **fields,
    }


def test_subscription_limit_event_gives_the_reset(tmp_path: Path, agent: ClaudeAgent) -> None:
    resets_at = 1795797825
    stdout = events(
        INIT,
        {
            "type": "rate_limit_event",
            "rate_limit_info": {
                "status": "rejected",
                "resetsAt": resets_at,
                "rateLimitType": "five_hour",
            },
        },
        error_result(
            "You've hit your 5-hour limit · resets 4:43pm (UTC)",
            api_error_status=429,
            api_error="usage_limit_reached",
        ),
    )
    result = agent.parse(context(tmp_path), run_output(tmp_path, stdout, 1))
    assert result.failure_class is FailureClass.RATE_LIMITED
    assert result.limited_until == resets_at
    assert result.usage["rate_limit"]["rateLimitType"] == "five_hour"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Claude AI usage limit reached|1795800000", 1795800000.0),
        (  # 14:31:40 UTC is 15:31:40 in Rome; 4:50am there is 03:50 UTC the next day
            "You've hit your limit · resets 4:50am (Europe/Rome)",
            datetime(2026, 11, 28, 3, 50, tzinfo=UTC).timestamp(),
        ),
    ],
)
def test_limit_texts_give_the_reset(
    tmp_path: Path, agent: ClaudeAgent, text: str, expected: float
) -> None:
    stdout = events(INIT, error_result(text))
    result = agent.parse(context(tmp_path), run_output(tmp_path, stdout, 0))
    assert result.failure_class is FailureClass.RATE_LIMITED
    assert result.limited_until == expected


def test_limit_text_on_stderr_without_a_result(tmp_path: Path, agent: ClaudeAgent) -> None:
    out = run_output(tmp_path, events(INIT), 1, stderr="Claude AI usage limit reached|1795800000\n")
    result = agent.parse(context(tmp_path), out)
    assert result.failure_class is FailureClass.RATE_LIMITED
    assert result.limited_until == 1795800000.0


def test_a_successful_run_is_never_limited_by_its_text(tmp_path: Path, agent: ClaudeAgent) -> None:
    stdout = events(
        INIT, {**error_result("I fixed the rate_limit_error handling"), "is_error": False}
    )
    result = agent.parse(context(tmp_path), run_output(tmp_path, stdout, 0))
    assert result.ok and result.limited_until is None


def test_is_error_with_exit_0_fails(tmp_path: Path, agent: ClaudeAgent) -> None:
    stdout = events(
        INIT,
        {
            "type": "result",
            "subtype": "error_during_execution",
            "is_error": True,
            "session_id": "s-1",
            "errors": ["No conversation found with session ID: s-0"],
        },
    )
    result = agent.parse(context(tmp_path), run_output(tmp_path, stdout, 0))
    assert not result.ok and result.failure_class is FailureClass.AGENT
    assert result.message is not None and "No conversation found" in result.message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"api_error": "connection_failed", "api_error_status": None}, FailureClass.INFRA),
        ({"api_error_status": 503, "api_error_type": "api_error"}, FailureClass.INFRA),
        ({"api_error_status": 401, "api_error_type": "authentication_error"}, FailureClass.INPUT),
        ({"api_error_status": 400, "api_error_type": "invalid_request_error"}, FailureClass.AGENT),
    ],
)
def test_api_errors_by_kind(
    tmp_path: Path, agent: ClaudeAgent, fields: dict[str, object], expected: FailureClass
) -> None:
    stdout = events(INIT, error_result("API Error: something", **fields))
    result = agent.parse(context(tmp_path), run_output(tmp_path, stdout, 1))
    assert result.failure_class is expected and result.limited_until is None
    assert "API Error: something" in (result.message or "")


def test_not_logged_in_is_an_input_problem(tmp_path: Path, agent: ClaudeAgent) -> None:
    stdout = events(
        INIT,
        {
            "type": "assistant",
            "message": {
                "model": "<synthetic>",
                "content": [{"type": "text", "text": "Not logged in · Please run /login"}],
            },
            "session_id": "s-1",
            "error": "authentication_failed",
            "is_api_error_message": True,
        },
        error_result("Not logged in · Please run /login", api_error_status=None),
    )
    result = agent.parse(context(tmp_path), run_output(tmp_path, stdout, 1))
    assert result.failure_class is FailureClass.INPUT
    assert result.message is not None and "Not logged in" in result.message


def test_killed_mid_run_keeps_session_and_tokens(tmp_path: Path, agent: ClaudeAgent) -> None:
    lines = sample("claude-2.1.332-create-file.stream.jsonl").splitlines(keepends=True)
    truncated = "".join(lines[:5]) + lines[5][:50]  # the result line cut short
    result = agent.parse(context(tmp_path), run_output(tmp_path, truncated, None, timed_out=True))
    assert not result.ok and result.failure_class is FailureClass.TIMEOUT
    assert result.session_id == "ee12871f-4903-4d82-9663-c61b4a7b757c"
    # Two messages (one reported twice, one block each): counted once each.
    assert (result.input_tokens, result.output_tokens) == (200, 2)
    assert result.cost_usd is None and not result.cost_is_session_total


def test_killed_while_sleeping_on_a_429_is_a_rate_limit(tmp_path: Path, agent: ClaudeAgent) -> None:
    retry = {"type": "system", "subtype": "api_retry", "retry_delay_ms": 75000}
    stdout = events(INIT, {**retry, "error_status": 429, "error": "rate_limit"})
    result = agent.parse(context(tmp_path), run_output(tmp_path, stdout, None, stalled=True))
    assert result.failure_class is FailureClass.RATE_LIMITED
    assert result.limited_until == pytest.approx(FINISHED + 75)
    # Killed while retrying something else: a timeout as any other.
    stdout = events(INIT, {**retry, "error_status": 529, "error": "overloaded"})
    result = agent.parse(context(tmp_path), run_output(tmp_path, stdout, None, stalled=True))
    assert result.failure_class is FailureClass.TIMEOUT and result.limited_until is None


def test_crash_without_result(tmp_path: Path, agent: ClaudeAgent) -> None:
    out = run_output(
        tmp_path, "not json\n", 1, stderr="Error: boom\n    at x\nFATAL: out of sockets\n"
    )
    result = agent.parse(context(tmp_path), out)
    assert not result.ok and result.failure_class is FailureClass.AGENT
    assert result.message == "claude exited with code 1 and no result: FATAL: out of sockets"
    assert result.session_id is None and result.cost_usd is None


def test_killed_by_a_signal_is_infra(tmp_path: Path, agent: ClaudeAgent) -> None:
    result = agent.parse(context(tmp_path), run_output(tmp_path, events(INIT), -9))
    assert result.failure_class is FailureClass.INFRA and result.session_id == "s-1"


def test_missing_output_files(tmp_path: Path, agent: ClaudeAgent) -> None:
    out = ProcessExit(1, False, False, 0.1, str(tmp_path / "none.out"), str(tmp_path / "none.err"))
    result = agent.parse(context(tmp_path), out)
    assert not result.ok and result.message == "claude exited with code 1 and no result: no output"
