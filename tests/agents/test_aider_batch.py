"""`ado batch` with a provider whose adapter is aider: the real Aider (pinned, in
.agents/aider) behind the OpenAI stub, run by the engine in-process (`no_ray`). The
runner's commit, the stored usage, and a provider limit met, waited out and resumed."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ado_ray import api
from ado_ray.agents.aider import MAX_TRIES
from ado_ray.engine.progress import LineProgress
from ado_ray.store import open_store
from tests.agents.test_aider_cli import aider_path
from tests.conftest import git
from tests.stubs.openai import OpenAIStub

pytestmark = pytest.mark.integration

PROMPT = "create hello.txt containing hi"


def batch(tmp_path: Path, stub: OpenAIStub, repos: list[Path]) -> api.BatchResult:
    repo_list = tmp_path / "repos.txt"
    repo_list.write_text("".join(f"{repo}\n" for repo in repos))
    settings: dict[str, Any] = {
        "providers": {
            "gateway": {
                "agent": "aider",
                "cmd": str(aider_path()),
                "model": "fake-model",
                "modes": [
                    {"name": "api", "base_url": stub.url, "env": {"OPENAI_API_KEY": "sk-stub"}}
                ],
            }
        },
        "agent": {"name": "gateway", "prompt": PROMPT, "timeout_s": 300},
        "prices": {"fake-model": {"input": 1.0, "output": 2.0}},
        "state": str(tmp_path / "state.db"),
        "work_root": str(tmp_path / "work"),
        "no_ray": True,
    }
    out = io.StringIO()
    result = api.start(repo_list, api.ConfigSources(overrides=settings), out, LineProgress(out))
    assert result.counts == {"changed": len(repos)}, out.getvalue()
    return result


def sessions(tmp_path: Path, result: api.BatchResult) -> list[Any]:
    store = open_store(str(tmp_path / "state.db"))
    try:
        (task,) = store.list_tasks(result.run.run_id)
        return list(store.sessions(task.task_id))
    finally:
        store.close()


def test_an_edit_lands_as_the_runners_one_commit_with_its_usage(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    repo = make_repo("one")
    base = git(repo, "rev-parse", "main")
    with OpenAIStub(input_tokens=2345, output_tokens=56) as stub:
        result = batch(tmp_path, stub, [repo])
    branch = result.run.branch
    commits = git(repo, "log", "--format=%an %s", f"{base}..{branch}").splitlines()
    assert len(commits) == 1 and commits[0].startswith("ado-ray ")  # the runner's, alone
    assert git(repo, "diff", "--name-only", base, branch) == "hello.txt"
    assert not [
        p for p in git(repo, "ls-tree", "-r", "--name-only", branch).split() if ".aider" in p
    ]
    assert git(repo, "show", f"{branch}:hello.txt") == "hi"
    (session,) = sessions(tmp_path, result)
    assert session.outcome == "ok" and session.session_id
    usage = session.usage
    assert (usage["input_tokens"], usage["output_tokens"]) == (2300, 56)
    assert (usage["provider"], usage["mode"], usage["cost_source"]) == ("gateway", "api", "prices")
    assert usage["cost_usd"] == pytest.approx((2300 * 1.0 + 56 * 2.0) / 1e6)
    (task,) = result.summary["tasks"]
    assert task["cost_usd"] == pytest.approx(usage["cost_usd"])
    (row,) = result.summary["usage"]
    assert (row["provider"], row["mode"], row["agent_runs"]) == ("gateway", "api", 1)
    assert json.dumps(result.summary).count("sk-stub") == 0


def test_a_limit_stops_aider_cools_the_key_and_the_task_resumes_the_chat(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    """The endpoint answers 429 ("try again in 1s") to MAX_TRIES calls: Aider is stopped,
    the key cools down, and the next try restores the chat and succeeds. The limit is not
    the task's failure."""
    with OpenAIStub() as stub:
        stub.retry_after = 1
        stub.queue = ["429"] * MAX_TRIES
        result = batch(tmp_path, stub, [make_repo("limited")])
        assert stub.request_count == MAX_TRIES + 1
        resumed = json.dumps(stub.requests[-1].body["messages"])
    limited, ok = sessions(tmp_path, result)
    assert (limited.outcome, ok.outcome) == ("failed", "ok")
    assert limited.session_id and ok.session_id == limited.session_id
    assert resumed.count(PROMPT) >= 2  # the first try's message came back with the chat
    (task,) = result.summary["tasks"]
    assert task["failure_class"] is None and task["state"] == "changed"
