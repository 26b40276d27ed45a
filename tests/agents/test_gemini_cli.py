"""The gemini adapter end to end: the real Gemini CLI (.agents/, pinned) against the model
stub (tests/stubs/gemini.py), driven as the engine drives it: the adapter's invocation over
the allow-listed environment with the task's own HOME, `run_supervised`, then `parse`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from ado_ray.agents.base import AgentContext, AgentResult
from ado_ray.agents.gemini import MAX_ATTEMPTS, GeminiAgent
from ado_ray.config import AgentSettings
from ado_ray.engine.process import build_env, run_supervised
from ado_ray.models import FailureClass, ProcessExit, RepoSpec
from tests.agents.conftest import cli_path
from tests.conftest import create_repo
from tests.stubs.gemini import Behaviour, GeminiStub

pytestmark = pytest.mark.integration

API_KEY = "test-key-4a1f"
MODEL = "gemini-2.5-flash"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def task(
    tmp_path: Path, name: str = "task", files: dict[str, str] | None = None, **kw: object
) -> AgentContext:
    """A task directory as the engine lays it out: a real checkout, a HOME, a prompt."""
    task_dir = tmp_path / name
    if not (task_dir / "repo").exists():
        create_repo(task_dir / "repo", files)
    (task_dir / "home").mkdir(exist_ok=True)
    (task_dir / "prompt.md").write_text(str(kw.pop("prompt", "create hello.txt")))
    return AgentContext(
        run_id="run1",
        task_id=name,
        repo=RepoSpec(url="/src/repo", key="/src/repo", name="repo"),
        repo_path=task_dir / "repo",
        task_dir=task_dir,
        home=task_dir / "home",
        prompt_file=task_dir / "prompt.md",
        model=MODEL,
        **kw,  # type: ignore[arg-type]
    )


async def drive(
    ctx: AgentContext, attempt: int = 1, timeout_s: float = 60.0
) -> tuple[AgentResult, ProcessExit, int]:
    """One agent run, as engine/task.py runs it; also the agent's pid (= its group)."""
    settings = AgentSettings(name="gemini", cmd=str(cli_path("gemini")), kill_grace_s=1.0)
    agent = GeminiAgent(settings, user_home=ctx.task_dir / "no-user-home")
    invocation = agent.invocation(ctx)
    env = build_env(
        settings.env_allow,
        {"HOME": str(ctx.home), "GEMINI_API_KEY": API_KEY, **invocation.env},
    )
    pids: list[int] = []
    exit = await run_supervised(
        invocation.argv,
        cwd=ctx.repo_path,
        env=env,
        stdout_path=ctx.task_dir / "logs" / f"attempt-{attempt}.stdout.log",
        stderr_path=ctx.task_dir / "logs" / f"attempt-{attempt}.stderr.log",
        timeout_s=timeout_s,
        stall_timeout_s=None,
        kill_grace_s=settings.kill_grace_s,
        on_start=pids.append,
    )
    return agent.parse(ctx, exit), exit, pids[0]


def run(ctx: AgentContext) -> AgentResult:
    result, _, _ = asyncio.run(drive(ctx))
    return result


def files_holding(root: Path, secret: str) -> list[Path]:
    return [
        path for path in root.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()
    ]


def test_creates_the_file_and_reports_its_session_and_tokens(tmp_path: Path) -> None:
    # A checkout's .env is not the CLI's: this one would replace its system prompt.
    (tmp_path / "system.md").write_text("SYSTEM PROMPT FROM THE CHECKOUT")
    files = {"README.md": "# repo\n", ".env": f"GEMINI_SYSTEM_MD={tmp_path / 'system.md'}\n"}
    with GeminiStub() as stub:
        ctx = task(tmp_path, files=files, base_url=stub.url)
        result = run(ctx)
    assert result.ok, result.message
    assert (ctx.repo_path / "hello.txt").read_text() == "hi"
    assert result.session_id and UUID.match(result.session_id)
    # Two replies of 100 prompt tokens (40 cached), 5 of text and 3 of thinking each.
    assert (result.input_tokens, result.output_tokens, result.cache_tokens) == (120, 16, 80)
    assert result.model == MODEL and result.result_text == "done"
    assert result.usage["tool_calls"] == 1
    # All the CLI asks the API for: the two turns, with the key from the environment.
    assert stub.paths() == [f"POST /v1beta/models/{MODEL}:streamGenerateContent"] * 2
    assert {r.headers.get("x-goog-api-key") for r in stub.requests} == {API_KEY}
    assert files_holding(ctx.task_dir, API_KEY) == []
    assert "FROM THE CHECKOUT" not in json.dumps([r.body for r in stub.requests])


def test_resumes_its_session(tmp_path: Path) -> None:
    with GeminiStub() as stub:
        first = run(task(tmp_path, base_url=stub.url))
        assert first.ok and first.session_id
        ctx = task(
            tmp_path,
            prompt="second turn: just reply",
            base_url=stub.url,
            resume_session=first.session_id,
        )
        second, _, _ = asyncio.run(drive(ctx, attempt=2))
        history = stub.requests[-1].body["contents"]
    assert second.ok, second.message
    assert second.session_id == first.session_id
    assert (second.input_tokens, second.output_tokens, second.cache_tokens) == (60, 8, 40)
    assert second.result_text == "done"
    # The resumed request carries the first run's turns, the write_file call among them.
    assert any("functionCall" in part for content in history for part in content["parts"])
    assert history[-1]["parts"][-1]["text"] == "second turn: just reply"


@dataclass(frozen=True)
class Outcome:
    ctx: AgentContext
    result: AgentResult
    exit: ProcessExit
    pid: int
    model_requests: int


@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """A rate limit, an overloaded model and a hanging one, run at once: each waits for
    seconds (on the CLI's backoff, or our timeout), so together they wait once."""
    root = tmp_path_factory.mktemp("failures")
    timeouts: dict[Behaviour, float] = {"429": 60.0, "503": 60.0, "hang": 8.0}
    with contextlib.ExitStack() as stack:
        stubs = {b: stack.enter_context(GeminiStub(b, retry_delay="2s")) for b in timeouts}
        contexts = {b: task(root, b, base_url=stub.url) for b, stub in stubs.items()}

        async def all_at_once() -> list[tuple[AgentResult, ProcessExit, int]]:
            return await asyncio.gather(
                *(drive(contexts[b], timeout_s=t) for b, t in timeouts.items())
            )

        runs = dict(zip(timeouts, asyncio.run(all_at_once()), strict=True))
        return {
            b: Outcome(contexts[b], *runs[b], model_requests=stubs[b].model_requests)
            for b in timeouts
        }


def test_a_rate_limit_ends_the_run_quickly_with_the_reset(failures: dict[str, Outcome]) -> None:
    run = failures["429"]
    assert run.exit.returncode == 173  # 429 mod 256
    assert run.result.failure_class is FailureClass.RATE_LIMITED, run.result.message
    assert "Resource has been exhausted" in (run.result.message or "")
    assert run.model_requests == MAX_ATTEMPTS and run.exit.duration_s < 20
    finished = Path(run.exit.stdout_path).stat().st_mtime
    assert run.result.limited_until == pytest.approx(finished + 2, abs=0.5)  # the RetryInfo
    # The CLI's error report (it holds the conversation) stays in the task's own tmp.
    assert list((run.ctx.task_dir / "tmp").glob("gemini-client-error-*.json"))
    assert files_holding(run.ctx.task_dir, API_KEY) == []


def test_an_overloaded_model_is_an_infra_failure(failures: dict[str, Outcome]) -> None:
    run = failures["503"]
    assert run.exit.returncode == 247  # 503 mod 256
    assert run.result.failure_class is FailureClass.INFRA, run.result.message
    assert "overloaded" in (run.result.message or "") and run.result.limited_until is None
    assert run.model_requests == MAX_ATTEMPTS


def test_a_hanging_model_is_killed_by_our_timeout(failures: dict[str, Outcome]) -> None:
    run = failures["hang"]
    assert run.model_requests == 1  # it got as far as asking the model
    assert run.exit.timed_out and run.exit.returncode is None
    assert run.result.failure_class is FailureClass.TIMEOUT
    assert run.result.session_id and UUID.match(run.result.session_id)
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)  # nothing of its process group is left


def test_two_tasks_at_once_keep_apart(tmp_path: Path) -> None:
    async def both(a: AgentContext, b: AgentContext) -> list[AgentResult]:
        runs = await asyncio.gather(drive(a), drive(b))
        return [result for result, _, _ in runs]

    with GeminiStub() as one, GeminiStub() as two:
        a, b = task(tmp_path, "a", base_url=one.url), task(tmp_path, "b", base_url=two.url)
        results = asyncio.run(both(a, b))
        counts = (one.model_requests, two.model_requests)
    assert all(result.ok for result in results), [result.message for result in results]
    assert results[0].session_id != results[1].session_id
    assert counts == (2, 2)
    assert (a.repo_path / "hello.txt").exists() and (b.repo_path / "hello.txt").exists()


def test_the_stub_switches_behaviour_at_run_time() -> None:
    def ask(url: str) -> tuple[int, str]:
        body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
        request = urllib.request.Request(
            f"{url}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    with GeminiStub() as stub:
        status, text = ask(stub.url)
        assert status == 200 and text.startswith("data: ") and '"text": "done"' in text
        stub.behaviour = "429"
        status, text = ask(stub.url)
        assert status == 429 and "RESOURCE_EXHAUSTED" in text and '"retryDelay": "1s"' in text
        stub.behaviour = "503"
        assert ask(stub.url)[0] == 503
        assert stub.model_requests == 3
