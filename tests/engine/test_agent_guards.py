"""What the engine guards around an agent run: its git identity, the size of what it adds,
output it cannot read (the run is paid for: recorded, not repeated), timeouts kept on time
with many agents on one runner, and a resume that keeps the run's settings."""

from __future__ import annotations

import io
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ado_ray import api
from ado_ray.store import open_store
from tests.conftest import git

pytestmark = pytest.mark.integration


def sources(tmp_path: Path, **overrides: Any) -> api.ConfigSources:
    settings = {
        "state": str(tmp_path / "state.db"),
        "work_root": str(tmp_path / "work"),
        "no_ray": True,
        **overrides,
    }
    return api.ConfigSources(overrides=settings)


def start(tmp_path: Path, repos: list[Path], **overrides: Any) -> Any:
    repo_list = tmp_path / "repos.txt"
    repo_list.write_text("".join(f"{r}\n" for r in repos))
    return api.start(repo_list, sources(tmp_path, **overrides), io.StringIO())


def test_an_agent_can_commit_with_the_runs_identity_and_its_commits_become_one(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    repo = make_repo("ident")
    cmd = "sh -c 'echo one > one.txt && git add -A && git commit -qm agent-commit'"
    result = start(tmp_path, [repo], name="ident", agent={"cmd": cmd},
                   git={"author_name": "Run Bot", "author_email": "run@bot.example"})  # fmt: skip

    assert result.counts == {"changed": 1}, result.summary["tasks"][0]["error"]
    assert git(repo, "rev-list", "main..ado/ident").split() == [
        result.summary["tasks"][0]["commit"]
    ]
    assert git(repo, "log", "-1", "--format=%an <%ae>", "ado/ident") == "Run Bot <run@bot.example>"
    assert git(repo, "show", "ado/ident:one.txt") == "one"


def test_a_file_over_the_size_limit_fails_the_task_as_agent_and_commits_nothing(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> None:
    repos = [make_repo("big"), make_repo("small")]
    agent = script(
        "big",
        "import pathlib, sys\n"
        "size = 11 * 2**20 if sys.argv[1] == 'big' else 1000\n"
        "pathlib.Path('data.bin').write_bytes(b'x' * size)\n",
    )
    result = start(tmp_path, repos, name="size", agent={"cmd": f"{agent} {{repo_name}}"})

    by_name = {task["name"]: task for task in result.summary["tasks"]}
    assert by_name["small"]["state"] == "changed"
    big = by_name["big"]
    assert (big["state"], big["failure_class"], big["attempts"]) == ("failed", "agent", 1)
    assert "data.bin (11.0 MB)" in big["error"] and "10 MB limit" in big["error"]
    assert big["commit"] is None
    assert "ado/size" not in git(repos[0], "branch", "--list")


def test_output_the_adapter_cannot_read_is_recorded_once_and_not_retried(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    cli = tmp_path / "claude"  # a Claude Code whose result line has a token count that is text
    cli.write_text(
        "#!/bin/sh\n"
        'echo \'{"type":"system","subtype":"init","session_id":"s-1"}\'\n'
        'echo \'{"type":"result","subtype":"success","is_error":false,"session_id":"s-1",'
        '"result":"done","usage":{"input_tokens":"many","output_tokens":3}}\'\n'
    )
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    result = start(tmp_path, [make_repo("odd")], name="odd", max_attempts=3,
                   agent={"name": "claude", "cmd": str(cli), "prompt": "do it"})  # fmt: skip

    task = result.summary["tasks"][0]
    assert (task["state"], task["failure_class"], task["attempts"]) == (
        "failed",
        "agent_output",
        1,
    )
    assert "attempt-1.stdout.log" in task["error"] and "ValueError" in task["error"]
    with open_store(str(tmp_path / "state.db")) as store:
        sessions = store.sessions(task["task_id"])
    assert [(s.attempt, s.usage.get("provider")) for s in sessions] == [(1, "claude")]


def test_every_one_of_25_agents_on_one_runner_is_killed_within_a_second_of_its_timeout(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    repos = [make_repo(f"t{i}") for i in range(25)]
    result = start(tmp_path, repos, name="slow", parallel=25, max_attempts=1,
                   agent={"cmd": "sleep 60", "timeout_s": 3, "kill_grace_s": 0})  # fmt: skip

    assert result.counts == {"failed": 25}
    with open_store(str(tmp_path / "state.db")) as store:
        durations = [
            session.duration_s
            for task in result.summary["tasks"]
            for session in store.sessions(task["task_id"])
        ]
    assert len(durations) == 25
    assert all(3.0 <= d <= 4.0 for d in durations), sorted(durations)


def test_a_resume_keeps_the_runs_parallelism(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> None:
    repos = [make_repo(f"p{i}") for i in range(6)]
    log, gate = tmp_path / "concurrency.log", tmp_path / "fail-first-run"
    gate.touch()
    agent = script(
        "gated",
        "import os, pathlib, sys, time\n"
        "log, gate = sys.argv[1], pathlib.Path(sys.argv[2])\n"
        "if gate.exists(): sys.exit(1)\n"
        "with open(log, 'a') as out: out.write(f'start {time.time()}\\n')\n"
        "time.sleep(0.6)\n"
        "pathlib.Path('CHANGED.txt').write_text('x')\n"
        "with open(log, 'a') as out: out.write(f'end {time.time()}\\n')\n",
    )
    first = start(tmp_path, repos, name="par", parallel=2, agent={"cmd": f"{agent} {log} {gate}"})
    assert first.counts == {"failed": 6}
    gate.unlink()

    resumed = api.resume(first.run.run_id, sources(tmp_path), True, io.StringIO())

    assert resumed.counts == {"changed": 6}
    running = peak = 0
    for line in sorted(log.read_text().splitlines(), key=lambda line: float(line.split()[1])):
        running += 1 if line.startswith("start") else -1
        peak = max(peak, running)
    assert peak == 2
