"""The claude adapter end to end: the real Claude Code CLI (pinned, in .agents/) against
the Anthropic stub, driven as the engine drives it (allow-listed env with the task's own
HOME, the mode's env, `run_supervised`, `parse`). Runs as root: never bypassPermissions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ado_ray.agents import AgentResult
from ado_ray.agents.base import AgentContext
from ado_ray.agents.claude import ClaudeAgent
from ado_ray.config import AgentSettings
from ado_ray.engine.process import build_env, run_supervised
from ado_ray.models import FailureClass, ProcessExit, RepoSpec
from tests.agents.conftest import cli_path
from tests.conftest import create_repo, git
from tests.stubs.anthropic import RESUMED_TEXT, AnthropicStub

pytestmark = pytest.mark.integration

API_KEY = {"ANTHROPIC_API_KEY": "sk-ant-api03-stub"}


@dataclass
class Run:
    ctx: AgentContext
    exit: ProcessExit
    result: AgentResult


@pytest.fixture
def stub() -> Iterator[AnthropicStub]:
    with AnthropicStub() as stub:
        yield stub


@pytest.fixture
def user_home(tmp_path: Path) -> Path:
    """The user's home the adapter copies a login from: empty unless a test fills it."""
    (tmp_path / "user").mkdir()
    return tmp_path / "user"


def make_agent(user_home: Path, **env: str) -> ClaudeAgent:
    settings = AgentSettings(name="claude", cmd=str(cli_path("claude")), env=env)
    return ClaudeAgent(settings, user_home=user_home)


def task_context(
    tmp_path: Path, stub: AnthropicStub, task: str = "t1", **fields: object
) -> AgentContext:
    task_dir = tmp_path / "work" / task
    repo = task_dir / "repo"
    if not repo.exists():
        create_repo(repo)
    (task_dir / "home").mkdir(exist_ok=True)
    prompt = task_dir / "prompt.md"
    prompt.write_text("create hello.txt containing hi")
    values: dict[str, object] = {
        "run_id": "run1",
        "task_id": task,
        "repo": RepoSpec(url=str(repo), key=str(repo), name=task),
        "repo_path": repo,
        "task_dir": task_dir,
        "home": task_dir / "home",
        "prompt_file": prompt,
        "base_url": stub.url,
        **fields,
    }
    return AgentContext(**values)  # type: ignore[arg-type]


async def arun(
    agent: ClaudeAgent,
    ctx: AgentContext,
    mode_env: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    drop: tuple[str, ...] = (),
) -> Run:
    invocation = agent.invocation(ctx)
    argv = [word for word in invocation.argv if word not in drop]
    env = build_env(
        agent.settings.env_allow,
        {"HOME": str(ctx.home), **(API_KEY if mode_env is None else mode_env), **invocation.env},
    )
    logs = ctx.task_dir / "logs"
    attempt = len(list(logs.glob("*.stdout.log"))) + 1 if logs.exists() else 1
    exit = await run_supervised(
        argv,
        cwd=ctx.repo_path,
        env=env,
        stdout_path=logs / f"attempt-{attempt}.stdout.log",
        stderr_path=logs / f"attempt-{attempt}.stderr.log",
        timeout_s=timeout_s,
        stall_timeout_s=None,
        kill_grace_s=1.0,
    )
    return Run(ctx, exit, agent.parse(ctx, exit))


def run(agent: ClaudeAgent, ctx: AgentContext, **kwargs: object) -> Run:
    return asyncio.run(arun(agent, ctx, **kwargs))  # type: ignore[arg-type]


def init_event(run: Run) -> dict[str, object]:
    first = Path(run.exit.stdout_path).read_text().splitlines()[0]
    event: dict[str, object] = json.loads(first)
    assert event["subtype"] == "init"
    return event


def test_creates_a_file_in_a_git_repo(tmp_path: Path, stub: AnthropicStub, user_home: Path) -> None:
    ctx = task_context(tmp_path, stub, model="claude-sonnet-5-5")
    done = run(make_agent(user_home), ctx)
    result = done.result
    assert result.ok, result.message
    assert (ctx.repo_path / "hello.txt").read_text() == "hi"
    assert git(ctx.repo_path, "status", "--porcelain") == "?? hello.txt"  # not committed
    assert result.session_id == init_event(done)["session_id"]
    assert result.num_turns == 2 and result.result_text == "done"
    assert (result.input_tokens, result.output_tokens) == (200, 10)  # 2 calls of 100 + 5
    assert result.cost_usd is not None and result.cost_usd > 0 and result.cost_is_session_total
    assert result.model == "claude-sonnet-5-5"
    assert [call.body["model"] for call in stub.model_calls] == ["claude-sonnet-5-5"] * 2
    assert stub.count == 2
    # The task's own config dir holds the session; nothing was written to the user's home.
    assert list((ctx.home / ".claude" / "projects").glob(f"*/{result.session_id}.jsonl"))
    assert list(user_home.iterdir()) == []
    headers = stub.model_calls[0].headers
    assert headers["x-api-key"] == API_KEY["ANTHROPIC_API_KEY"]


def test_resume_continues_the_session(tmp_path: Path, stub: AnthropicStub, user_home: Path) -> None:
    agent = make_agent(user_home)
    first = run(agent, task_context(tmp_path, stub)).result
    assert first.ok and first.session_id
    ctx = task_context(tmp_path, stub, resume_session=first.session_id)
    second = run(agent, ctx).result
    assert second.ok, second.message
    assert second.session_id == first.session_id
    assert second.result_text == RESUMED_TEXT and second.num_turns == 1
    assert (second.input_tokens, second.output_tokens) == (100, 5)  # this run only
    assert first.cost_usd is not None and second.cost_usd is not None
    assert second.cost_usd > first.cost_usd  # the session's running total
    history = stub.model_calls[-1].messages
    tool_calls = [m for m in history if m["role"] == "assistant" and "tool_use" in json.dumps(m)]
    assert tool_calls, "the resumed run did not send the first run's conversation"


def test_429_is_a_rate_limit_quickly(tmp_path: Path, stub: AnthropicStub, user_home: Path) -> None:
    stub.behaviour, stub.retry_after = "429", 1
    started = time.time()
    done = run(make_agent(user_home), task_context(tmp_path, stub))
    result = done.result
    assert result.failure_class is FailureClass.RATE_LIMITED, result.message
    assert stub.count == 3  # the first call and CLAUDE_CODE_MAX_RETRIES=2 retries
    assert done.exit.duration_s < 15
    assert result.limited_until is not None
    assert started + 30 < result.limited_until < time.time() + 120
    assert result.session_id


def test_killed_while_the_cli_sleeps_on_a_429(
    tmp_path: Path, stub: AnthropicStub, user_home: Path
) -> None:
    """The CLI honours a retry-after of up to a minute by sleeping; if our timeout ends
    that sleep, the run was rate-limited, not slow."""
    stub.behaviour, stub.retry_after = "429", 30
    done = run(make_agent(user_home), task_context(tmp_path, stub), timeout_s=3)
    assert done.exit.timed_out and stub.count == 1
    assert done.result.failure_class is FailureClass.RATE_LIMITED, done.result.message
    assert done.result.limited_until is not None
    assert time.time() + 30 < done.result.limited_until < time.time() + 120


def test_subscription_limit_resets_when_the_api_says(
    tmp_path: Path, stub: AnthropicStub, user_home: Path
) -> None:
    reset = int(time.time()) + 3 * 3600
    stub.behaviour, stub.unified_reset = "429", reset
    mode_env = {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-stub"}
    result = run(make_agent(user_home), task_context(tmp_path, stub), mode_env=mode_env).result
    assert result.failure_class is FailureClass.RATE_LIMITED, result.message
    assert result.limited_until == reset
    assert result.usage["rate_limit"]["rateLimitType"] == "five_hour"
    assert stub.model_calls[0].headers["Authorization"] == "Bearer sk-ant-oat01-stub"


def test_a_subscription_login_is_used_from_its_copy(
    tmp_path: Path, stub: AnthropicStub, user_home: Path
) -> None:
    (user_home / ".claude").mkdir()
    expires = int((time.time() + 3600) * 1000)
    oauth = {"accessToken": "sk-ant-oat01-copied", "refreshToken": "r", "expiresAt": expires}
    login = {"claudeAiOauth": {**oauth, "scopes": ["user:inference"], "subscriptionType": "max"}}
    (user_home / ".claude" / ".credentials.json").write_text(json.dumps(login))
    (user_home / ".claude.json").write_text(json.dumps({"oauthAccount": {"accountUuid": "a-1"}}))
    ctx = task_context(tmp_path, stub)
    result = run(make_agent(user_home), ctx, mode_env={}).result
    assert result.ok, result.message
    assert stub.model_calls[0].headers["Authorization"] == "Bearer sk-ant-oat01-copied"
    assert json.loads((user_home / ".claude" / ".credentials.json").read_text()) == login


def test_529_overload_is_infra(tmp_path: Path, stub: AnthropicStub, user_home: Path) -> None:
    stub.behaviour = "529"
    result = run(make_agent(user_home), task_context(tmp_path, stub)).result
    assert result.failure_class is FailureClass.INFRA, result.message
    assert result.failure_class.retryable and result.limited_until is None
    assert stub.count == 3


def test_max_turns(tmp_path: Path, stub: AnthropicStub, user_home: Path) -> None:
    done = run(make_agent(user_home), task_context(tmp_path, stub, max_turns=1))
    assert done.exit.returncode == 1
    assert done.result.failure_class is FailureClass.AGENT
    assert done.result.message is not None and "--max-turns" in done.result.message
    assert stub.count == 1


def test_a_write_outside_the_repo_is_denied_and_fails(
    tmp_path: Path, stub: AnthropicStub, user_home: Path
) -> None:
    outside = tmp_path / "outside" / "hello.txt"
    stub.write_to = str(outside)
    done = run(make_agent(user_home), task_context(tmp_path, stub))
    assert done.exit.returncode == 0  # the CLI calls it a success...
    assert done.result.failure_class is FailureClass.AGENT  # ...we do not
    assert done.result.message == f"the agent's writes were denied: Write {outside}"
    assert not outside.exists()


def test_without_accept_edits_writes_are_denied_and_fail(
    tmp_path: Path, stub: AnthropicStub, user_home: Path
) -> None:
    ctx = task_context(tmp_path, stub)
    done = run(make_agent(user_home), ctx, drop=("--permission-mode", "acceptEdits"))
    assert done.exit.returncode == 0
    assert done.result.failure_class is FailureClass.AGENT
    assert "writes were denied" in (done.result.message or "")
    assert not (ctx.repo_path / "hello.txt").exists()


def test_a_hung_api_is_killed_by_our_timeout(
    tmp_path: Path, stub: AnthropicStub, user_home: Path
) -> None:
    stub.behaviour = "hang"
    done = run(make_agent(user_home), task_context(tmp_path, stub), timeout_s=3)
    assert done.exit.timed_out and done.exit.returncode is None
    assert done.exit.duration_s < 10
    assert done.result.failure_class is FailureClass.TIMEOUT
    assert done.result.session_id  # from the init event, before it hung
    assert stub.count == 1


def test_two_endpoints_one_limited(tmp_path: Path, user_home: Path) -> None:
    """Two stubs at once (a subscription and an API endpoint); one turns to 429 mid-run."""
    agent = make_agent(user_home, CLAUDE_CODE_MAX_RETRIES="0")
    with AnthropicStub() as subscription, AnthropicStub() as api:
        sub_env = {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-stub"}

        async def both() -> tuple[Run, Run, Run]:
            before = await arun(agent, task_context(tmp_path, subscription, "a"), sub_env)
            subscription.behaviour = "429"
            limited, fine = await asyncio.gather(
                arun(agent, task_context(tmp_path, subscription, "b"), sub_env),
                arun(agent, task_context(tmp_path, api, "c")),
            )
            return before, limited, fine

        before, limited, fine = asyncio.run(both())
    assert before.result.ok, before.result.message
    assert limited.result.failure_class is FailureClass.RATE_LIMITED
    assert fine.result.ok, fine.result.message
    assert (subscription.count, api.count) == (3, 2)
    assert all("Authorization" in call.headers for call in subscription.model_calls)
    assert all("x-api-key" in call.headers for call in api.model_calls)
