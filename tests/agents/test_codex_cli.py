"""The codex adapter end to end: the real Codex CLI (pinned, in .agents/) against the
OpenAI Responses stub, driven as the engine drives it (allow-listed env with the task's own
HOME, the mode's env, `run_supervised`, `parse`). Runs as root, under Codex's own sandbox."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ado_ray.agents import AgentResult
from ado_ray.agents.base import AgentContext
from ado_ray.agents.codex import DEFAULT_LIMIT_COOLDOWN_S, CodexAgent
from ado_ray.config import AgentSettings
from ado_ray.engine.process import build_env, run_supervised
from ado_ray.models import FailureClass, ProcessExit, RepoSpec
from tests.agents.conftest import cli_path
from tests.conftest import create_repo, git
from tests.stubs.openai import OpenAIStub

pytestmark = pytest.mark.integration

API_KEY = {"OPENAI_API_KEY": "test-key"}


@dataclass
class Run:
    ctx: AgentContext
    argv: list[str]
    exit: ProcessExit
    result: AgentResult

    def events(self) -> list[dict[str, object]]:
        lines = Path(self.exit.stdout_path).read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as stub:
        yield stub


@pytest.fixture
def user_home(tmp_path: Path) -> Path:
    """The user's home the adapter copies a login from: empty unless a test fills it."""
    (tmp_path / "user").mkdir()
    return tmp_path / "user"


@pytest.fixture
def agent(user_home: Path) -> CodexAgent:
    return CodexAgent(AgentSettings(name="codex", cmd=str(cli_path("codex"))), user_home)


def task_context(
    tmp_path: Path,
    stub: OpenAIStub,
    task: str = "t1",
    *,
    resume_session: str | None = None,
    mode: str | None = None,
) -> AgentContext:
    task_dir = tmp_path / "work" / task
    repo = task_dir / "repo"
    if not repo.exists():
        create_repo(repo)
    (task_dir / "home").mkdir(exist_ok=True)
    prompt = task_dir / "prompt.md"
    prompt.write_text("create hello.txt containing hi")
    return AgentContext(
        run_id="run1",
        task_id=task,
        repo=RepoSpec(url=str(repo), key=str(repo), name=task),
        repo_path=repo,
        task_dir=task_dir,
        home=task_dir / "home",
        prompt_file=prompt,
        resume_session=resume_session,
        model="gpt-fake",
        base_url=stub.url,
        mode=mode,
    )


async def arun(
    agent: CodexAgent,
    ctx: AgentContext,
    mode_env: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    flags: tuple[str, ...] = (),
) -> Run:
    invocation = agent.invocation(ctx)
    argv = [invocation.argv[0], "exec", *flags, *invocation.argv[2:]]
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
    return Run(ctx, argv, exit, agent.parse(ctx, exit))


def run(agent: CodexAgent, ctx: AgentContext, **kwargs: object) -> Run:
    return asyncio.run(arun(agent, ctx, **kwargs))  # type: ignore[arg-type]


def command_output(done: Run) -> str:
    """What the (one) command the agent ran printed."""
    outputs = [
        str(event["item"]["aggregated_output"])  # type: ignore[index]
        for event in done.events()
        if event["type"] == "item.completed" and event["item"]["type"] == "command_execution"  # type: ignore[index]
    ]
    assert len(outputs) == 1, outputs
    return outputs[0]


def test_creates_a_file_in_a_git_repo(
    tmp_path: Path, stub: OpenAIStub, agent: CodexAgent, user_home: Path
) -> None:
    ctx = task_context(tmp_path, stub)
    done = run(agent, ctx)
    result = done.result
    assert result.ok, result.message
    assert (ctx.repo_path / "hello.txt").read_text() == "hi"
    assert git(ctx.repo_path, "status", "--porcelain") == "?? hello.txt"  # not committed
    assert result.session_id == done.events()[0]["thread_id"]
    assert result.result_text == "done"
    assert (result.input_tokens, result.output_tokens) == (200, 10)  # 2 calls of 100 + 5
    assert result.tokens_are_session_totals and result.cost_usd is None
    assert stub.request_count == 2
    call = stub.requests[0]
    assert call.path == "/v1/responses" and call.body["model"] == "gpt-fake"
    assert call.body["stream"] is True
    assert call.headers["authorization"] == "Bearer test-key"
    # The thread lives in the task's own CODEX_HOME; the user's home is untouched.
    assert list((ctx.home / ".codex" / "sessions").rglob(f"*{result.session_id}*.jsonl"))
    assert list(user_home.iterdir()) == []


def test_every_config_key_is_known_to_this_codex(
    tmp_path: Path, stub: OpenAIStub, agent: CodexAgent
) -> None:
    """`--strict-config` turns a key this Codex does not know into an error."""
    done = run(agent, task_context(tmp_path, stub), flags=("--strict-config",))
    assert done.result.ok, done.result.message
    (done.ctx.home / ".codex" / "config.toml").write_text("no_such_key = 1\n")
    invocation = agent.invocation(done.ctx)  # rewrites the config
    assert "no_such_key" not in (done.ctx.home / ".codex" / "config.toml").read_text()
    assert invocation.argv[-1] == "create hello.txt containing hi"


def test_resume_continues_the_thread(tmp_path: Path, stub: OpenAIStub, agent: CodexAgent) -> None:
    first = run(agent, task_context(tmp_path, stub)).result
    assert first.ok and first.session_id
    ctx = task_context(tmp_path, stub, resume_session=first.session_id)
    ctx.prompt_file.write_text("now say ok")  # type: ignore[union-attr]
    done = run(agent, ctx)
    second = done.result
    assert done.argv[2:4] == ["resume", first.session_id]
    assert second.ok, second.message
    assert second.session_id == first.session_id and second.result_text == "ok"
    # Running totals for the thread: 3 calls of 100 + 5, not this run's one call.
    assert (second.input_tokens, second.output_tokens) == (300, 15)
    assert second.input_tokens >= first.input_tokens
    history = stub.requests[-1].body["input"]
    assert any(item.get("type") == "function_call_output" for item in history)
    assert stub.request_count == 3


@pytest.fixture
def outside() -> Iterator[Path]:
    """A path outside the checkout and outside /tmp (which the sandbox lets agents write)."""
    path = Path("/var/tmp") / f"ado-codex-test-{uuid.uuid4().hex}"
    yield path
    path.unlink(missing_ok=True)


def test_commands_run_sandboxed_without_the_api_key(
    tmp_path: Path, stub: OpenAIStub, agent: CodexAgent, outside: Path
) -> None:
    stub.command = (
        f"printf x > {outside}; touch .git/agent-was-here; env | cut -d= -f1 | sort; "
        "printf hi > hello.txt"
    )
    ctx = task_context(tmp_path, stub)
    done = run(agent, ctx)
    assert done.result.ok, done.result.message
    output = command_output(done)
    assert not outside.exists() and not (ctx.repo_path / ".git" / "agent-was-here").exists()
    assert output.count("Read-only file system") == 2
    names = output.split()
    assert "PATH" in names and "CODEX_SANDBOX_NETWORK_DISABLED" in names  # and no network
    assert "OPENAI_API_KEY" not in names
    assert (ctx.repo_path / "hello.txt").read_text() == "hi"


def test_429_is_a_rate_limit_quickly(tmp_path: Path, stub: OpenAIStub, agent: CodexAgent) -> None:
    stub.behaviour, stub.retry_after = "429", 30
    started = time.time()
    done = run(agent, task_context(tmp_path, stub))
    result = done.result
    assert result.failure_class is FailureClass.RATE_LIMITED, result.message
    assert done.exit.returncode == 1
    assert stub.request_count == 1  # no retry in the CLI: it would sleep for retry-after
    assert done.exit.duration_s < 10
    # Codex does not pass retry-after on: the default cooldown applies.
    assert result.limited_until is not None
    assert started + DEFAULT_LIMIT_COOLDOWN_S <= result.limited_until
    assert result.limited_until <= time.time() + DEFAULT_LIMIT_COOLDOWN_S
    assert result.session_id


def test_rate_limit_mid_stream_resets_when_the_api_says(
    tmp_path: Path, stub: OpenAIStub, agent: CodexAgent
) -> None:
    stub.behaviour, stub.retry_after = "429-stream", 20
    started = time.time()
    result = run(agent, task_context(tmp_path, stub)).result
    assert result.failure_class is FailureClass.RATE_LIMITED, result.message
    assert result.limited_until is not None
    assert started + 20 <= result.limited_until <= time.time() + 20
    assert stub.request_count == 1


@pytest.mark.parametrize("behaviour", ["500", "overloaded"])
def test_server_errors_are_infra(
    tmp_path: Path, stub: OpenAIStub, agent: CodexAgent, behaviour: str
) -> None:
    stub.behaviour = behaviour  # type: ignore[assignment]
    result = run(agent, task_context(tmp_path, stub)).result
    assert result.failure_class is FailureClass.INFRA, result.message
    assert result.failure_class.retryable and result.limited_until is None
    assert stub.request_count == 1


def test_a_hung_api_is_killed_by_our_timeout(
    tmp_path: Path, stub: OpenAIStub, agent: CodexAgent
) -> None:
    stub.behaviour = "hang"
    done = run(agent, task_context(tmp_path, stub), timeout_s=3)
    assert done.exit.timed_out and done.exit.returncode is None
    assert done.exit.duration_s < 10
    assert done.result.failure_class is FailureClass.TIMEOUT
    assert done.result.session_id  # from thread.started, before it hung
    assert stub.request_count == 1


def _jwt(claims: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


def test_a_chatgpt_login_is_used_from_its_copy(
    tmp_path: Path, stub: OpenAIStub, agent: CodexAgent, user_home: Path
) -> None:
    auth = {"chatgpt_plan_type": "plus", "chatgpt_account_id": "acct-stub"}
    token = _jwt(
        {
            "email": "u@example.com",
            "exp": int(time.time()) + 3600,
            "https://api.openai.com/auth": auth,
        }
    )
    login = {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": token,
            "access_token": token,
            "refresh_token": "r",
            "account_id": "acct-stub",
        },
        "last_refresh": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (user_home / ".codex").mkdir()
    (user_home / ".codex" / "auth.json").write_text(json.dumps(login))
    ctx = task_context(tmp_path, stub, mode="subscription")
    result = run(agent, ctx, mode_env={}).result
    assert result.ok, result.message
    calls = [r for r in stub.requests if r.path == "/v1/responses"]
    assert calls[0].headers["authorization"] == f"Bearer {token}"
    assert calls[0].headers["chatgpt-account-id"] == "acct-stub"
    assert json.loads((user_home / ".codex" / "auth.json").read_text()) == login


def test_two_endpoints_at_once_one_limited(tmp_path: Path, agent: CodexAgent) -> None:
    with OpenAIStub() as limited_api, OpenAIStub() as fine_api:
        limited_api.behaviour = "429"

        async def both() -> tuple[Run, Run]:
            limited, fine = await asyncio.gather(
                arun(agent, task_context(tmp_path, limited_api, "a")),
                arun(agent, task_context(tmp_path, fine_api, "b")),
            )
            return limited, fine

        limited, fine = asyncio.run(both())
    assert limited.result.failure_class is FailureClass.RATE_LIMITED
    assert fine.result.ok, fine.result.message
    assert (limited_api.request_count, fine_api.request_count) == (1, 2)
    assert limited.result.session_id != fine.result.session_id
