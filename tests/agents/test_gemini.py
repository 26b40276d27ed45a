"""The gemini adapter without the CLI: its invocation, and its reading of recorded real
outputs (samples/gemini-0.61.0-*) and of the failures the real CLI prints."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ado_ray.agents import make_agent
from ado_ray.agents.base import AgentContext, AgentResult
from ado_ray.agents.gemini import DEFAULT_MODEL, LIMIT_FALLBACK_S, MAX_ATTEMPTS, GeminiAgent
from ado_ray.config import AgentSettings
from ado_ray.errors import UsageError
from ado_ray.models import FailureClass, ProcessExit, RepoSpec
from tests.agents.conftest import sample

SESSION = "4c7057c9-4fad-4670-abb2-b427d3b24835"
SECRET = "AIza-test-secret-key"


@pytest.fixture
def user_home(tmp_path: Path) -> Path:
    """The user's real home, with a Google login and a settings file of their own."""
    home = tmp_path / "user"
    (home / ".gemini").mkdir(parents=True)
    (home / ".gemini" / "oauth_creds.json").write_text('{"refresh_token": "r-123"}')
    (home / ".gemini" / "settings.json").write_text('{"telemetry": {"enabled": true}}')
    return home


def context(tmp_path: Path, prompt: str | None = "create hello.txt", **kw: object) -> AgentContext:
    task_dir = tmp_path / "task"
    (task_dir / "repo").mkdir(parents=True, exist_ok=True)
    (task_dir / "home").mkdir(exist_ok=True)
    prompt_file = None
    if prompt is not None:
        prompt_file = task_dir / "prompt.md"
        prompt_file.write_text(prompt)
    return AgentContext(
        run_id="run1",
        task_id="t1",
        repo=RepoSpec(url="/src/repo", key="/src/repo", name="repo"),
        repo_path=task_dir / "repo",
        task_dir=task_dir,
        home=task_dir / "home",
        prompt_file=prompt_file,
        **kw,  # type: ignore[arg-type]
    )


def finished(
    tmp_path: Path, stdout: str, returncode: int | None, stderr: str = "", **kw: bool
) -> ProcessExit:
    (tmp_path / "out.jsonl").write_text(stdout)
    (tmp_path / "err.txt").write_text(stderr)
    return ProcessExit(
        returncode=returncode,
        timed_out=kw.get("timed_out", False),
        stalled=kw.get("stalled", False),
        duration_s=1.0,
        stdout_path=str(tmp_path / "out.jsonl"),
        stderr_path=str(tmp_path / "err.txt"),
    )


def parse(
    tmp_path: Path, stdout: str, returncode: int | None, stderr: str = "", **kw: bool
) -> AgentResult:
    agent = GeminiAgent(AgentSettings(name="gemini"))
    return agent.parse(context(tmp_path), finished(tmp_path, stdout, returncode, stderr, **kw))


def result_line(status: str, message: str | None = None) -> str:
    event: dict[str, object] = {"type": "result", "status": status, "stats": {}}
    if message is not None:
        event["error"] = {"type": "unknown", "message": message}
    return json.dumps(event) + "\n"


# --- invocation ---------------------------------------------------------------------------


def test_registered_and_named() -> None:
    agent = make_agent(AgentSettings(name="gemini"))
    assert isinstance(agent, GeminiAgent)
    assert (agent.name, agent.limit_key) == ("gemini", "gemini")


def test_invocation_argv(tmp_path: Path, user_home: Path) -> None:
    agent = GeminiAgent(AgentSettings(name="gemini"), user_home=user_home)
    inv = agent.invocation(context(tmp_path))
    assert inv.argv == [
        "gemini",
        "--prompt=create hello.txt",
        "-m",
        DEFAULT_MODEL,
        "--output-format",
        "stream-json",
        "--approval-mode",
        "auto_edit",
        "--skip-trust",
    ]
    assert "GOOGLE_GEMINI_BASE_URL" not in inv.env
    assert inv.env["TMPDIR"] == str(tmp_path / "task" / "tmp")
    assert (tmp_path / "task" / "tmp").is_dir()


def test_invocation_model_resume_base_url_and_cmd(tmp_path: Path, user_home: Path) -> None:
    agent = GeminiAgent(AgentSettings(name="gemini", cmd="/opt/bin/gemini"), user_home=user_home)
    ctx = context(
        tmp_path,
        prompt="-x looks like an option\nsecond line",
        model="gemini-2.5-flash",
        resume_session=SESSION,
        base_url="http://127.0.0.1:9/gw",
    )
    assert "--resume" not in agent.invocation(ctx).argv  # no chat files: start afresh
    chat = ctx.home / f".gemini/tmp/repo/chats/session-2026-12-02T10-00-{SESSION[:8]}.jsonl"
    chat.parent.mkdir(parents=True)
    chat.write_text("{}\n")
    inv = agent.invocation(ctx)
    assert inv.argv[0] == "/opt/bin/gemini"
    assert inv.argv[1] == "--prompt=-x looks like an option\nsecond line"
    assert inv.argv[2:4] == ["-m", "gemini-2.5-flash"]
    assert inv.argv[-2:] == ["--resume", SESSION]
    assert inv.env["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:9/gw"


def test_settings_json(tmp_path: Path, user_home: Path) -> None:
    agent = GeminiAgent(AgentSettings(name="gemini"), user_home=user_home)
    agent.invocation(context(tmp_path, max_turns=7))
    path = tmp_path / "task" / "home" / ".gemini" / "settings.json"
    settings = json.loads(path.read_text())
    assert settings["security"]["auth"]["selectedType"] == "gemini-api-key"
    assert settings["general"]["maxAttempts"] == MAX_ATTEMPTS <= 3
    assert settings["general"]["enableAutoUpdate"] is False
    assert settings["general"]["enableAutoUpdateNotification"] is False
    assert settings["privacy"]["usageStatisticsEnabled"] is False
    assert settings["telemetry"]["enabled"] is False  # not the user's own settings
    assert settings["advanced"]["ignoreLocalEnv"] is True
    assert settings["model"]["maxSessionTurns"] == 7
    assert path.stat().st_mode & 0o777 == 0o600


def test_login_is_copied_not_linked_and_a_refreshed_copy_kept(
    tmp_path: Path, user_home: Path
) -> None:
    agent = GeminiAgent(AgentSettings(name="gemini"), user_home=user_home)
    ctx = context(tmp_path)
    agent.invocation(ctx)
    copy = ctx.home / ".gemini" / "oauth_creds.json"
    assert copy.read_text() == '{"refresh_token": "r-123"}'
    assert not copy.is_symlink() and copy.stat().st_mode & 0o777 == 0o600
    assert not (ctx.home / ".gemini" / "google_accounts.json").exists()  # not there to copy
    copy.write_text('{"refresh_token": "refreshed"}')  # the task's CLI refreshed its token
    agent.invocation(ctx)
    assert copy.read_text() == '{"refresh_token": "refreshed"}'
    source = user_home / ".gemini" / "oauth_creds.json"
    source.write_text('{"refresh_token": "new login"}')
    os.utime(source, (time.time() + 10, time.time() + 10))  # the user logged in again
    agent.invocation(ctx)
    assert copy.read_text() == '{"refresh_token": "new login"}'


def test_login_comes_from_the_runners_home_at_invocation(
    tmp_path: Path, user_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = GeminiAgent(AgentSettings(name="gemini"))
    monkeypatch.setenv("HOME", str(user_home))
    ctx = context(tmp_path)
    agent.invocation(ctx)
    assert (ctx.home / ".gemini" / "oauth_creds.json").exists()


def test_no_secret_in_argv_or_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    agent = GeminiAgent(AgentSettings(name="gemini", env={"GEMINI_API_KEY": SECRET}))
    ctx = context(tmp_path, base_url="http://127.0.0.1:9")
    inv = agent.invocation(ctx)
    assert not any(SECRET in word for word in inv.argv)
    assert SECRET not in json.dumps(inv.env)
    for path in (tmp_path / "task").rglob("*"):
        assert not path.is_file() or SECRET not in path.read_text(errors="replace"), path


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [(None, "needs --prompt"), ("  \n", "is empty"), ("x" * 130_000, "has 130000 bytes")],
)
def test_prompt_problems_are_usage_errors(
    tmp_path: Path, prompt: str | None, expected: str
) -> None:
    agent = GeminiAgent(AgentSettings(name="gemini"))
    with pytest.raises(UsageError, match=expected):
        agent.invocation(context(tmp_path, prompt=prompt))


# --- parse: recorded real outputs ----------------------------------------------------------


def test_parse_create_file(tmp_path: Path) -> None:
    result = parse(tmp_path, sample("gemini-0.61.0-create-file.stream.jsonl"), 0)
    assert result.ok and result.failure_class is None and result.message is None
    assert result.session_id == SESSION
    assert (result.input_tokens, result.output_tokens, result.cache_tokens) == (200, 10, 0)
    assert result.cost_usd is None and not result.tokens_are_session_totals
    assert result.model == "gemini-2.5-flash"
    assert result.result_text == "done"
    assert result.usage["tool_calls"] == 1
    assert result.limited_until is None


def test_parse_resume_counts_this_run_only(tmp_path: Path) -> None:
    result = parse(tmp_path, sample("gemini-0.61.0-resume.stream.jsonl"), 0)
    assert result.ok and result.session_id == SESSION
    assert (result.input_tokens, result.output_tokens) == (100, 5)
    assert result.result_text == "ok"


def test_parse_429_after_retries(tmp_path: Path) -> None:
    before = time.time()
    result = parse(
        tmp_path,
        sample("gemini-0.61.0-429.stream.jsonl"),
        173,
        sample("gemini-0.61.0-429.stderr.txt"),
    )
    assert not result.ok and result.failure_class is FailureClass.RATE_LIMITED
    assert result.session_id == "8cb3caa0-8b47-4d89-a9e1-b35676aa959b"
    assert "Resource has been exhausted" in (result.message or "")
    # "Suggested retry after 1s", from when the CLI wrote its output (not its own 5630 ms
    # backoff)
    assert result.limited_until is not None
    assert before + 1 - 0.1 <= result.limited_until <= time.time() + 1 + 0.1
    assert (result.input_tokens, result.output_tokens) == (0, 0)


# --- parse: failures the real CLI prints ----------------------------------------------------

INIT = json.dumps({"type": "init", "session_id": "s-1", "model": "gemini-2.5-pro"}) + "\n"


def test_a_limit_without_a_hint_waits_the_fallback(tmp_path: Path) -> None:
    before = time.time()
    result = parse(tmp_path, INIT + result_line("error", "[API Error: quota]"), 173)
    assert result.failure_class is FailureClass.RATE_LIMITED
    assert result.limited_until is not None
    assert before + LIMIT_FALLBACK_S - 1 <= result.limited_until <= time.time() + LIMIT_FALLBACK_S


def test_a_longer_hint_in_the_message(tmp_path: Path) -> None:
    message = "[API Error: Resource has been exhausted\nSuggested retry after 3600s.]"
    before = time.time()
    result = parse(tmp_path, INIT + result_line("error", message), 173)
    assert result.limited_until is not None
    assert before + 3599 <= result.limited_until <= time.time() + 3601


def test_503_is_infra(tmp_path: Path) -> None:
    stderr = "Attempt 1 failed: Resource has been exhausted (e.g. check quota).\n"  # earlier
    message = "[API Error: The model is overloaded. Please try again later.]"
    result = parse(tmp_path, INIT + result_line("error", message), 247, stderr)
    assert result.failure_class is FailureClass.INFRA and result.limited_until is None
    assert "overloaded" in (result.message or "")
    assert result.session_id == "s-1"


def test_exit_41_is_an_input_error(tmp_path: Path) -> None:
    stderr = (
        "Warning: 256-color support not detected. Using a terminal with at least 256-color.\n"
        "When using Gemini API, you must specify the GEMINI_API_KEY environment variable.\n"
        "Update your environment and try again (no reload needed if using .env)!\n"
    )
    result = parse(tmp_path, "", 41, stderr)
    assert not result.ok and result.failure_class is FailureClass.INPUT
    assert "could not authenticate (exit 41)" in (result.message or "")
    assert "must specify the GEMINI_API_KEY" in (result.message or "")
    assert result.session_id is None


def test_a_missing_session_is_an_input_error(tmp_path: Path) -> None:
    stderr = "Error resuming session: No previous sessions found for this project.\n"
    result = parse(tmp_path, "", 42, stderr)
    assert result.failure_class is FailureClass.INPUT
    assert "No previous sessions found" in (result.message or "")


def test_an_unknown_model_is_an_input_error(tmp_path: Path) -> None:
    message = "[API Error: models/gemini-9 is not found for API version v1beta]"
    result = parse(tmp_path, INIT + result_line("error", message), 148)
    assert result.failure_class is FailureClass.INPUT


def test_turn_limit_is_the_agents_failure(tmp_path: Path) -> None:
    message = "Reached max session turns for this session."
    result = parse(tmp_path, INIT + result_line("error", message), 53)
    assert result.failure_class is FailureClass.AGENT
    assert "turn limit" in (result.message or "")


def test_no_result_fails_with_the_stderr_tail(tmp_path: Path) -> None:
    stderr = "Error: something broke\n    at main (file:///x.js:1:1)\n}\n"
    result = parse(tmp_path, INIT, 1, stderr)
    assert result.failure_class is FailureClass.AGENT
    assert result.message == "gemini exited with code 1 without a result: Error: something broke"
    assert result.session_id == "s-1"  # kept: the session can be resumed


def test_killed_by_a_signal_is_infra(tmp_path: Path) -> None:
    result = parse(tmp_path, INIT, -9)
    assert result.failure_class is FailureClass.INFRA


@pytest.mark.parametrize("how", ["timed_out", "stalled"])
def test_killed_by_us_is_a_timeout(tmp_path: Path, how: str) -> None:
    result = parse(tmp_path, INIT, None, timed_out=how == "timed_out", stalled=how == "stalled")
    assert result.failure_class is FailureClass.TIMEOUT and result.session_id == "s-1"


def test_success_needs_both_status_and_exit_code(tmp_path: Path) -> None:
    assert not parse(tmp_path, INIT + result_line("success"), 1).ok
    assert not parse(tmp_path, INIT + result_line("error", "boom"), 0).ok


def test_thinking_counts_as_output_and_cache_apart(tmp_path: Path) -> None:
    stats = {"total_tokens": 216, "input_tokens": 200, "output_tokens": 10}
    stats |= {"cached": 80, "input": 120, "tool_calls": 1}
    event = {"type": "result", "status": "success", "stats": stats}
    result = parse(tmp_path, INIT + json.dumps(event) + "\n", 0)
    assert (result.input_tokens, result.output_tokens, result.cache_tokens) == (120, 16, 80)


def test_result_text_is_the_final_answer(tmp_path: Path) -> None:
    def said(text: str) -> str:
        event = {"type": "message", "role": "assistant", "content": text, "delta": True}
        return json.dumps(event) + "\n"

    tool = json.dumps({"type": "tool_use", "tool_name": "write_file", "tool_id": "w1"}) + "\n"
    stdout = INIT + said("Let me ") + said("write it.") + tool + said("All ") + said("done.")
    result = parse(tmp_path, stdout + result_line("success") + "{not json\n", 0)
    assert result.result_text == "All done."
