"""The aider adapter end to end: the real Aider (pinned, in .agents/aider) against the
OpenAI stub's Chat Completions, driven as the engine drives it (allow-listed env with the
task's own HOME, the mode's env, `run_supervised` with the adapter's `stop_when`, `parse`).

An unknown model gets Aider's "whole" edit format, which the stub answers in. Aider takes
some seconds to start on a busy machine: the timeouts here are generous."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ado_ray.agents import AgentResult
from ado_ray.agents.aider import MAX_TRIES, AiderAgent
from ado_ray.agents.base import AgentContext
from ado_ray.config import AgentSettings
from ado_ray.engine.process import build_env, run_supervised
from ado_ray.models import FailureClass, ProcessExit, RepoSpec
from tests.agents.conftest import ROOT
from tests.conftest import create_repo, git
from tests.stubs.openai import OpenAIStub

pytestmark = pytest.mark.integration

API_KEY = {"OPENAI_API_KEY": "test-key"}
RUN_TIMEOUT_S = 240.0  # a run that should end by itself


def aider_path() -> Path:
    path = ROOT / ".agents" / "aider" / "bin" / "aider"
    if not path.exists():
        pytest.fail(f"{path} is missing; run `make agents` (installs the pinned Aider)")
    return path


@dataclass
class Run:
    ctx: AgentContext
    argv: list[str]
    exit: ProcessExit
    result: AgentResult

    @property
    def stdout(self) -> str:
        return Path(self.exit.stdout_path).read_text()


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(input_tokens=2345, output_tokens=56) as stub:
        yield stub


@pytest.fixture
def agent() -> AiderAgent:
    return AiderAgent(AgentSettings(name="aider", cmd=str(aider_path())))


def task_context(
    tmp_path: Path, stub: OpenAIStub, task: str = "t1", *, resume_session: str | None = None
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
        model="fake-model",
        base_url=stub.url,
    )


async def arun(agent: AiderAgent, ctx: AgentContext, timeout_s: float = RUN_TIMEOUT_S) -> Run:
    invocation = agent.invocation(ctx)
    env = build_env(agent.settings.env_allow, {"HOME": str(ctx.home), **API_KEY, **invocation.env})
    logs = ctx.task_dir / "logs"
    attempt = len(list(logs.glob("*.stdout.log"))) + 1 if logs.exists() else 1
    exit = await run_supervised(
        invocation.argv,
        cwd=ctx.repo_path,
        env=env,
        stdout_path=logs / f"attempt-{attempt}.stdout.log",
        stderr_path=logs / f"attempt-{attempt}.stderr.log",
        timeout_s=timeout_s,
        stall_timeout_s=None,
        kill_grace_s=2.0,
        stop_when=invocation.stop_when,
    )
    return Run(ctx, invocation.argv, exit, agent.parse(ctx, exit))


def run(agent: AiderAgent, ctx: AgentContext, **kwargs: float) -> Run:
    return asyncio.run(arun(agent, ctx, **kwargs))


def aider_files(repo: Path) -> list[str]:
    return [p.name for p in repo.iterdir() if p.name.startswith(".aider")]


def test_edits_a_file_and_never_commits(
    tmp_path: Path, stub: OpenAIStub, agent: AiderAgent
) -> None:
    ctx = task_context(tmp_path, stub)
    head = git(ctx.repo_path, "rev-parse", "HEAD")
    done = run(agent, ctx)
    result = done.result
    assert result.ok, (result.message, done.stdout)
    assert (ctx.repo_path / "hello.txt").read_text() == "hi\n"
    assert git(ctx.repo_path, "rev-parse", "HEAD") == head  # no commit of Aider's
    status = git(ctx.repo_path, "status", "--porcelain", "--untracked-files=all")
    assert [line[3:] for line in status.splitlines()] == ["hello.txt"]  # (Aider stages it)
    assert aider_files(ctx.repo_path) == []  # histories in the task dir, repo-map cache gone
    assert not (ctx.repo_path / ".gitignore").exists()
    assert list((ctx.task_dir / "aider").glob("*.chat.md"))
    # Usage from Aider's report, the endpoint's own counts: "2.3k sent, 56 received."
    assert (result.input_tokens, result.output_tokens) == (2300, 56)
    assert result.cost_usd is None  # no price for this model: `prices:` will say
    assert result.session_id and result.result_text and "hello.txt" in result.result_text
    assert stub.request_count == 1
    call = stub.requests[-1]
    assert call.path == "/v1/chat/completions" and call.body["model"] == "fake-model"
    assert call.headers["authorization"] == "Bearer test-key"
    assert not call.body.get("stream")
    assert "create hello.txt containing hi" in json.dumps(call.body["messages"])
    # Nothing left the machine: no update check, no price-list download (only the stub).
    assert "raw.githubusercontent.com" not in done.stdout
    assert "pypi.org" not in done.stdout


def test_cost_comes_from_aiders_report(tmp_path: Path, stub: OpenAIStub, agent: AiderAgent) -> None:
    """With a price for the model (Aider's model metadata, here from the HOME Aider reads),
    Aider prints `Cost: $… message, $… session.`"""
    ctx = task_context(tmp_path, stub)
    metadata = {
        "openai/fake-model": {
            "input_cost_per_token": 1e-6,
            "output_cost_per_token": 2e-6,
            "litellm_provider": "openai",
            "mode": "chat",
            "max_input_tokens": 100000,
            "max_output_tokens": 4096,
        }
    }
    (ctx.home / ".aider.model.metadata.json").write_text(json.dumps(metadata))
    done = run(agent, ctx)
    assert done.result.ok, (done.result.message, done.stdout)
    assert "Cost: $" in done.stdout
    assert done.result.cost_usd == pytest.approx(2345e-6 + 56 * 2e-6, abs=5e-5)


def test_resume_restores_the_chat(tmp_path: Path, stub: OpenAIStub, agent: AiderAgent) -> None:
    first = run(agent, task_context(tmp_path, stub)).result
    assert first.ok and first.session_id, first.message
    ctx = task_context(tmp_path, stub, resume_session=first.session_id)
    head = git(ctx.repo_path, "rev-parse", "HEAD")
    ctx.prompt_file.write_text("now say ok")  # type: ignore[union-attr]
    done = run(agent, ctx)
    second = done.result
    assert second.ok, (second.message, done.stdout)
    assert "--restore-chat-history" in done.argv
    assert "Restored previous conversation history." in done.stdout
    assert second.session_id == first.session_id and second.result_text == "ok"
    assert git(ctx.repo_path, "rev-parse", "HEAD") == head  # the dirty tree stays uncommitted
    history = json.dumps(stub.requests[-1].body["messages"])
    assert "create hello.txt containing hi" in history and "now say ok" in history
    assert stub.request_count == 2


def test_a_429_then_success_within_aiders_retries(
    tmp_path: Path, stub: OpenAIStub, agent: AiderAgent
) -> None:
    stub.queue = ["429"]
    done = run(agent, task_context(tmp_path, stub))
    assert done.result.ok, (done.result.message, done.stdout)
    assert "litellm.RateLimitError" in done.stdout
    assert stub.request_count == 2  # one retry of Aider's; none in the OpenAI client
    assert (done.result.input_tokens, done.result.output_tokens) == (2300, 56)


def test_a_lasting_429_is_stopped_as_a_rate_limit(
    tmp_path: Path, stub: OpenAIStub, agent: AiderAgent
) -> None:
    """Aider would back off for a minute and more; the watch stops it after MAX_TRIES."""
    stub.behaviour, stub.retry_after = "429", 20
    done = run(agent, task_context(tmp_path, stub))
    result = done.result
    assert result.failure_class is FailureClass.RATE_LIMITED, (result.message, done.stdout)
    assert done.exit.returncode is None and not done.exit.timed_out
    assert stub.request_count == MAX_TRIES
    assert "Retrying in 2.0 seconds" not in done.stdout  # stopped in its third backoff
    said_at = Path(done.exit.stdout_path).stat().st_mtime
    assert result.limited_until == pytest.approx(said_at + 20, abs=2)  # "try again in 20s"
    assert aider_files(done.ctx.repo_path) == []


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [("overloaded", FailureClass.RATE_LIMITED), ("500", FailureClass.INFRA)],
)
def test_server_errors_are_stopped_too(
    tmp_path: Path, stub: OpenAIStub, agent: AiderAgent, behaviour: str, expected: FailureClass
) -> None:
    stub.behaviour = behaviour  # type: ignore[assignment]
    done = run(agent, task_context(tmp_path, stub))
    assert done.result.failure_class is expected, (done.result.message, done.stdout)
    assert stub.request_count == MAX_TRIES and done.exit.returncode is None


def test_a_hung_api_is_killed_by_our_timeout(
    tmp_path: Path, stub: OpenAIStub, agent: AiderAgent
) -> None:
    stub.behaviour = "hang"
    started = time.monotonic()
    done = run(agent, task_context(tmp_path, stub), timeout_s=45)  # Aider starts in it
    assert done.exit.timed_out and done.exit.returncode is None
    assert time.monotonic() - started < 45 + 30
    assert done.result.failure_class is FailureClass.TIMEOUT, done.result.message
    assert stub.request_count == 1  # it had started, and waited on the model
    assert aider_files(done.ctx.repo_path) == []
