"""An interrupted agent session continues on another node: its files travel in the store.

End to end with the real Claude Code and Codex CLIs (pinned, in .agents/) against the
model stubs, the driver a real `ado batch` process interrupted with SIGINT (Ctrl-C), and
the resume run on another, empty work root after node A's work root is deleted (what a
resume on an autoscaled cluster whose node is gone sees). The user has logins, which the
adapters copy into each task's home: they must never reach the store. Only the model APIs
are stubs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ado_ray.agents.base import CREDENTIAL_NAMES
from ado_ray.store import open_store
from tests.agents.conftest import cli_path
from tests.stubs.anthropic import AnthropicStub
from tests.stubs.openai import OpenAIStub

pytestmark = pytest.mark.integration

ADO = [sys.executable, "-m", "ado_ray"]
CANARY = "login-canary-7f3a"  # in every login file of the user's home


@dataclass
class Scenario:
    """One agent against its stub: its config, and how to tell that it waits on the model."""

    agent: dict[str, Any]
    more: dict[str, Any]
    model_calls: Callable[[], int]
    transcript: str  # a glob that the stored session's files must match
    hang: Callable[[], None]
    answer: Callable[[], None]
    requests: Callable[[], list[Any]]  # its model calls so far


@contextmanager
def claude() -> Iterator[Scenario]:
    with AnthropicStub() as stub:
        agent = {
            "name": "claude",
            "cmd": str(cli_path("claude")),
            "prompt": "create hello.txt",
            "env": {"ANTHROPIC_API_KEY": "sk-stub", "ANTHROPIC_BASE_URL": stub.url},
        }
        yield Scenario(
            agent,
            {},
            lambda: stub.count,
            "home/.claude/projects/*/*.jsonl",
            lambda: setattr(stub, "behaviour", "hang"),
            lambda: setattr(stub, "behaviour", "ok"),
            lambda: stub.model_calls,
        )


@contextmanager
def codex() -> Iterator[Scenario]:
    with OpenAIStub() as stub:
        providers = {
            "codex": {
                "agent": "codex",
                "cmd": str(cli_path("codex")),
                "model": "gpt-fake",
                "modes": [{"name": "api", "base_url": stub.url, "env": {"OPENAI_API_KEY": "k"}}],
            }
        }
        agent = {"name": "codex", "prompt": "create hello.txt", "timeout_s": 120}
        yield Scenario(
            agent,
            {"providers": providers},
            lambda: stub.request_count,
            "home/.codex/sessions/*/*/*/rollout-*.jsonl",
            lambda: setattr(stub, "behaviour", "hang"),
            lambda: setattr(stub, "behaviour", "ok"),
            lambda: [r for r in stub.requests if r.method == "POST"],
        )


SCENARIOS = {"claude": claude, "codex": codex}


def user_env(tmp_path: Path) -> dict[str, str]:
    """The environment of `ado`, whose HOME holds the user's logins (copied into tasks)."""
    home = tmp_path / "user"
    logins = {
        ".claude/.credentials.json": {"claudeAiOauth": {"refreshToken": CANARY}},
        ".claude.json": {"oauthAccount": {"accountUuid": CANARY}},
        ".codex/auth.json": {"OPENAI_API_KEY": None, "tokens": {"refresh_token": CANARY}},
        ".gemini/oauth_creds.json": {"refresh_token": CANARY},
    }
    for name, data in logins.items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(json.dumps(data))
    return {**os.environ, "HOME": str(home)}


def write_config(tmp_path: Path, scenario: Scenario, work: str, **agent: Any) -> None:
    settings = {
        "agent": {**scenario.agent, **agent},
        "state": str(tmp_path / "state.db"),
        "work_root": str(tmp_path / work),
        "no_ray": True,  # the driver runs the task: SIGINT reaches the runner at once
        "interrupt_grace_s": 0.5,
        **scenario.more,
    }
    (tmp_path / "ado.yaml").write_text(json.dumps(settings))


def interrupt_on_node_a(tmp_path: Path, scenario: Scenario, **agent: Any) -> str:
    """`ado batch repos.txt` on node A until the agent waits on the model, then Ctrl-C (it
    must exit 130); then node A is gone with its work root. Returns the driver's stderr."""
    write_config(tmp_path, scenario, "node-a", **agent)
    scenario.hang()
    driver = subprocess.Popen(
        [*ADO, "batch", "repos.txt"],
        cwd=tmp_path,
        env=user_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    while scenario.model_calls() < 1:
        assert time.monotonic() < deadline and driver.poll() is None, driver.communicate()
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=90)
    assert driver.returncode == 130, out + err
    scenario.answer()
    shutil.rmtree(tmp_path / "node-a")
    write_config(tmp_path, scenario, "node-b", **agent)
    return err


def stored(tmp_path: Path) -> tuple[list[tuple[str, str | None]], tuple[str, bytes] | None]:
    store = open_store(str(tmp_path / "state.db"))
    try:
        (task,) = store.list_tasks(store.list_runs()[0].run_id)
        sessions = [(s.outcome, s.session_id) for s in store.sessions(task.task_id)]
        return sessions, store.session_state(task.task_id)
    finally:
        store.close()


def resume_on_node_b(
    tmp_path: Path, returncode: int = 0, **env: str
) -> list[tuple[str, str | None]]:
    """`ado resume RUN_ID` (it must exit with `returncode`); the task's sessions after it."""
    run_id = stored_run_id(tmp_path)
    resumed = subprocess.run(
        [*ADO, "resume", run_id],
        cwd=tmp_path,
        env={**user_env(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert resumed.returncode == returncode, resumed.stdout + resumed.stderr
    return stored(tmp_path)[0]


def stored_run_id(tmp_path: Path) -> str:
    store = open_store(str(tmp_path / "state.db"))
    try:
        return store.list_runs()[0].run_id
    finally:
        store.close()


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_an_interrupted_session_continues_on_another_node(
    tmp_path: Path, make_repo: Callable[..., Path], name: str
) -> None:
    (tmp_path / "repos.txt").write_text(f"{make_repo('session')}\n")
    with SCENARIOS[name]() as scenario:
        interrupt_on_node_a(tmp_path, scenario)
        before, state = stored(tmp_path)
        after = resume_on_node_b(tmp_path)
        first, *_, resumed = scenario.requests()
    ((outcome, session_id),) = before
    assert outcome == "interrupted" and session_id
    # What was stored: the session's own files, no login.
    assert state is not None and state[0] == session_id
    files = members(state[1])
    assert files and all(Path(n).match(scenario.transcript) for n in files), files
    assert not [n for n in files if Path(n).name in CREDENTIAL_NAMES]
    assert not [n for n, data in files.items() if CANARY.encode() in data]
    # The resume found the files (Claude: else a new session; Codex: else "no rollout found
    # for thread id", exit 1): the same session, with the interrupted turn's prompt.
    assert after == [("interrupted", session_id), ("ok", session_id)]
    assert "hello.txt" in json.dumps(resumed.body)
    if name == "claude":
        (log,) = (tmp_path / "node-b").rglob("attempt-2.stdout.log")
        assert json.loads(log.read_text().splitlines()[0])["session_id"] == session_id
        assert len(resumed.messages) > len(first.messages)  # the earlier turn came along
    else:
        assert len(resumed.body["input"]) > len(first.body["input"])


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_session_over_the_cap_is_not_stored_and_starts_afresh_elsewhere(
    tmp_path: Path, make_repo: Callable[..., Path], name: str
) -> None:
    (tmp_path / "repos.txt").write_text(f"{make_repo('big')}\n")
    with SCENARIOS[name]() as scenario:
        err = interrupt_on_node_a(tmp_path, scenario, session_state_max_mb=0.0001)
        before, state = stored(tmp_path)
        after = resume_on_node_b(tmp_path)
    ((outcome, session_id),) = before
    assert outcome == "interrupted" and session_id and state is None
    (warning,) = [line for line in err.splitlines() if "session_state_max_mb" in line]
    assert session_id in warning and "not kept" in warning
    # Nothing to resume on node B: the agent starts a new session (rather than failing).
    ((_, first), (last_outcome, fresh)) = after
    assert first == session_id and last_outcome == "ok" and fresh != session_id


def test_a_driver_killed_while_resuming_elsewhere_leaves_the_session_resumable(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    """Interrupted on node A; the resume on node B is killed (SIGKILL) right after its fresh
    checkout; node B is gone too: node C still continues the session from the store."""
    (tmp_path / "repos.txt").write_text(f"{make_repo('twice')}\n")
    with claude() as scenario:
        interrupt_on_node_a(tmp_path, scenario)
        killed = resume_on_node_b(tmp_path, -signal.SIGKILL, ADO_TEST_CRASH_AFTER="prepared")
        shutil.rmtree(tmp_path / "node-b")
        write_config(tmp_path, scenario, "node-c")
        after = resume_on_node_b(tmp_path)
    ((outcome, session_id),) = killed
    assert outcome == "interrupted"
    assert after == [("interrupted", session_id), ("ok", session_id)]
    (log,) = (tmp_path / "node-c").rglob("attempt-2.stdout.log")
    assert json.loads(log.read_text().splitlines()[0])["session_id"] == session_id
