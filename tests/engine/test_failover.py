"""Subscription first, then failover: a real batch of Claude Code runs through two stubs.

The "subscription" endpoint starts answering 429 mid-run; the tasks after that run on
the "api" mode, every repository ends changed, and the store says which mode ran each
task and what it cost. Only the model API is a stand-in (tests/stubs/anthropic.py).
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ado_ray import api
from ado_ray.engine.progress import LineProgress
from ado_ray.store import open_store
from tests.agents.conftest import cli_path
from tests.conftest import git
from tests.stubs.anthropic import AnthropicStub

pytestmark = pytest.mark.integration

ADO = [sys.executable, "-m", "ado_ray"]


def claude_via(stub: AnthropicStub, **env: str) -> dict[str, Any]:
    """The `agent:` config of the real Claude Code CLI talking to `stub`."""
    return {
        "name": "claude",
        "cmd": str(cli_path("claude")),
        "prompt": "create hello.txt",
        "env": {"ANTHROPIC_API_KEY": "sk-stub", "ANTHROPIC_BASE_URL": stub.url, **env},
    }


def driver_at_call(
    tmp_path: Path, stub: AnthropicStub, ray_address: str, calls: int, **config: Any
) -> subprocess.Popen[str]:
    """`ado batch repos.txt` in a subprocess, returned once `stub` has seen `calls` calls."""
    settings = {
        "agent": claude_via(stub),
        "state": str(tmp_path / "state.db"),
        "work_root": str(tmp_path / "work"),
        "ray": {"address": ray_address},
        **config,
    }
    (tmp_path / "ado.yaml").write_text(json.dumps(settings))
    driver = subprocess.Popen(
        [*ADO, "batch", "repos.txt"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while stub.count < calls:
        assert time.monotonic() < deadline and driver.poll() is None, driver.communicate()
        time.sleep(0.05)
    return driver


def resume_and_list_sessions(
    tmp_path: Path,
) -> tuple[list[tuple[str, str | None]], list[tuple[str, str | None]]]:
    """The only task's sessions (outcome, session id) before and after `ado resume`."""
    store = open_store(str(tmp_path / "state.db"))
    try:
        run_id = store.list_runs()[0].run_id
        (task,) = store.list_tasks(run_id)
        before = [(s.outcome, s.session_id) for s in store.sessions(task.task_id)]
        resumed = subprocess.run(
            [*ADO, "resume", run_id], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        return before, [(s.outcome, s.session_id) for s in store.sessions(task.task_id)]
    finally:
        store.close()


def test_subscription_limit_mid_run_fails_over_to_the_api_mode(
    ray_address: str, tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    repos = [make_repo(f"c{i}") for i in range(10)]
    repo_list = tmp_path / "repos.txt"
    repo_list.write_text("".join(f"{repo}\n" for repo in repos))
    with AnthropicStub() as subscription, AnthropicStub() as api_stub:
        subscription.retry_after = 120  # longer than the CLI will wait: it gives up at once
        (tmp_path / "ado.yaml").write_text(
            json.dumps(
                {
                    "providers": {
                        "claude": {
                            "agent": "claude",
                            "cmd": str(cli_path("claude")),
                            "modes": [
                                {
                                    "name": "subscription",
                                    "priority": 1,
                                    "base_url": subscription.url,
                                    "env": {"ANTHROPIC_API_KEY": "sk-sub-stub"},
                                },
                                {
                                    "name": "api",
                                    "priority": 2,
                                    "base_url": api_stub.url,
                                    "env": {"ANTHROPIC_API_KEY": "sk-api-stub"},
                                },
                            ],
                        }
                    },
                    "agent": {
                        "name": "claude",
                        "prompt": "create hello.txt",
                        "env": {"CLAUDE_CODE_MAX_RETRIES": "0"},
                        "timeout_s": 120,
                    },
                    "parallel": 2,
                    "state": str(tmp_path / "state.db"),
                    "work_root": str(tmp_path / "work"),
                    "ray": {"namespace": f"failover-{uuid.uuid4().hex[:6]}"},
                }
            )
        )

        def flip() -> None:  # the subscription's limit is hit after three model calls
            while subscription.count < 3:
                time.sleep(0.05)
            subscription.behaviour = "429"

        flipper = threading.Thread(target=flip, daemon=True)
        flipper.start()
        out = io.StringIO()
        result = api.start(
            repo_list, api.ConfigSources(tmp_path / "ado.yaml"), out, LineProgress(out)
        )
        flipper.join(1)

    assert result.counts == {"changed": 10}, out.getvalue()
    for repo in repos:
        assert git(repo, "show", f"{result.run.branch}:hello.txt") == "hi"
    modes = [task["mode"] for task in result.summary["tasks"]]
    assert "subscription" in modes and modes.count("api") >= 7  # after the flip: api only
    assert sum(task["cost_usd"] for task in result.summary["tasks"]) == pytest.approx(
        result.summary["cost_usd"]
    )
    per_mode = {(u["provider"], u["mode"]): u for u in result.summary["usage"]}
    assert per_mode[("claude", "api")]["agent_runs"] >= 7
    assert per_mode[("claude", "api")]["tokens"]["output"] > 0

    # A task that met the limit: its subscription attempt is recorded, not as its failure.
    store = open_store(str(tmp_path / "state.db"))
    try:
        limited = [
            [(s.usage["mode"], s.outcome) for s in store.sessions(t.task_id)]
            for t in store.list_tasks(result.run.run_id)
        ]
    finally:
        store.close()
    assert any(
        ("subscription", "failed") in sessions and sessions[-1] == ("api", "ok")
        for sessions in limited
    )
    assert all(task["failure_class"] is None for task in result.summary["tasks"])


def test_max_cost_stops_new_agent_starts_and_says_so(
    ray_address: str, tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    """Each stubbed Claude run costs $0.001 (the CLI's own figure); the cap is $0.0025."""
    repos = [make_repo(f"b{i}") for i in range(6)]
    repo_list = tmp_path / "repos.txt"
    repo_list.write_text("".join(f"{repo}\n" for repo in repos))
    with AnthropicStub() as stub:
        settings = {
            "agent": claude_via(stub),
            "parallel": 1,
            "max_cost_usd": 0.0025,
            "state": str(tmp_path / "state.db"),
            "work_root": str(tmp_path / "work"),
            "no_ray": True,
        }
        out = io.StringIO()
        result = api.start(repo_list, api.ConfigSources(overrides=settings), out, LineProgress(out))
        assert stub.count == 3 * 2  # three agent runs of two model calls each, then no more
    assert result.counts == {"changed": 3, "skipped": 3}
    assert result.exit_code == 1  # not every repository was done
    skipped = [t for t in result.summary["tasks"] if t["state"] == "skipped"]
    assert all("at --max-cost $0.0025" in t["error"] for t in skipped)
    assert "starting no more agents" in out.getvalue()


def test_max_cost_per_task_stops_a_task_that_keeps_retrying(
    ray_address: str, tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    """The first model call succeeds (and costs), the second is overloaded (retryable):
    the task's retry would start another agent, but it has reached its cap."""
    repo_list = tmp_path / "repos.txt"
    repo_list.write_text(f"{make_repo('pt')}\n")
    with AnthropicStub() as stub:
        settings = {
            "agent": claude_via(stub, CLAUDE_CODE_MAX_RETRIES="0"),
            "max_attempts": 5,
            "max_cost_per_task_usd": 0.0001,
            "state": str(tmp_path / "state.db"),
            "work_root": str(tmp_path / "work"),
            "no_ray": True,
        }

        def overload_after_first_call() -> None:
            while stub.count < 1:
                time.sleep(0.01)
            stub.behaviour = "529"

        threading.Thread(target=overload_after_first_call, daemon=True).start()
        out = io.StringIO()
        result = api.start(repo_list, api.ConfigSources(overrides=settings), out, LineProgress(out))
        assert stub.count == 2  # one agent run; no retry started
    (task,) = result.summary["tasks"]
    assert task["state"] == "skipped" and task["cost_usd"] > 0.0001
    assert "at --max-cost-per-task $0.0001" in task["error"]


def test_ctrl_c_then_resume_continues_the_agents_own_session(
    ray_address: str, tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    """The model hangs, the user presses Ctrl-C; `ado resume` runs Claude Code with
    `--resume <its session id>` in the same workspace, and the session ends there."""
    (tmp_path / "repos.txt").write_text(f"{make_repo('session')}\n")
    with AnthropicStub() as stub:
        stub.behaviour = "hang"
        # one call: the agent has started its session and waits for the model
        driver = driver_at_call(tmp_path, stub, ray_address, 1, interrupt_grace_s=0.5)
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=60)
        assert driver.returncode == 130, out + err
        stub.behaviour = "ok"
        before, after = resume_and_list_sessions(tmp_path)
        ((outcome, session_id),) = before
        assert outcome == "interrupted" and session_id
        assert after == [("interrupted", session_id), ("ok", session_id)]
        assert len(stub.model_calls[-1].messages) > 1  # the earlier conversation came along


def test_kill_9_then_resume_continues_the_killed_agents_session(
    ray_address: str, tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    """Nothing records a session when the driver is SIGKILLed; the resumed task reads the
    session id from the killed attempt's own output, kills what is left of that agent, and
    continues the session in the same workspace."""
    (tmp_path / "repos.txt").write_text(f"{make_repo('killed')}\n")
    with AnthropicStub() as stub:

        def hang_after_first_exchange() -> None:
            while stub.count < 1:
                time.sleep(0.01)
            stub.behaviour = "hang"  # the agent wrote its file; its next turn never returns

        threading.Thread(target=hang_after_first_exchange, daemon=True).start()
        driver = driver_at_call(tmp_path, stub, ray_address, 2)  # mid-session
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=30)
        (log,) = (tmp_path / "work").rglob("attempt-1.stdout.log")
        killed_session = next(
            json.loads(line)["session_id"]
            for line in log.read_text().splitlines()
            if '"session_id"' in line
        )
        stub.behaviour = "ok"
        before, after = resume_and_list_sessions(tmp_path)
        assert before == []  # nothing was recorded
        assert after == [("ok", killed_session)]
        assert len(stub.model_calls[-1].messages) > 1  # the earlier conversation came along
