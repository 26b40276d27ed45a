"""The `ado` command run for real, in subprocesses: exit codes, crash points, Ctrl-C, locks.

A crash point (`ADO_TEST_CRASH_AFTER`, ado_ray/testing.py) kills the driver (`--no-ray`) or
a runner with SIGKILL right after a task's durable step: deterministic, no sleeping.

Drivers join the session's Ray instance (`--ray-address`) to skip a Ray start-up each.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ado_ray.models import TaskState
from ado_ray.testing import CRASH_ENV, STEPS
from tests.conftest import git

pytestmark = pytest.mark.e2e
ADO = [sys.executable, "-m", "ado_ray"]


def ado_env(tmp_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "ADO_STATE": str(tmp_path / "state.db"),
        "ADO_WORK_ROOT": str(tmp_path / "work"),
        **(extra or {}),
    }


def ado(
    tmp_path: Path,
    *args: str,
    check: bool = False,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*ADO, *args],
        cwd=tmp_path,
        env=ado_env(tmp_path, env),
        capture_output=True,
        text=True,
        timeout=180,
        **kwargs,
    )
    if check and proc.returncode:
        raise AssertionError(
            f"ado {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def spawn(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*ADO, *args],
        cwd=tmp_path,
        env=ado_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def db_rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "state.db") as conn:
        return conn.execute(sql).fetchall()


def wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def test_invalid_repo_list_exits_2_with_file_and_line_and_writes_nothing(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    good = make_repo("good")
    (tmp_path / "repos.txt").write_text(f"# fleet\n{good}\n\ngit@host:\n")
    proc = ado(tmp_path, "batch", "repos.txt", "--cmd", "true", "--no-ray")
    assert proc.returncode == 2
    assert (
        "repos.txt:4:" in proc.stderr and "git@host:" in proc.stderr and "expected" in proc.stderr
    )
    assert not (tmp_path / "state.db").exists()
    assert not (tmp_path / "work").exists()


def test_usage_errors_exit_2(tmp_path: Path, make_repo: Callable[..., Path]) -> None:
    (tmp_path / "repos.txt").write_text(f"{make_repo('x')}\n")
    missing_cmd = ado(tmp_path, "batch", "repos.txt", "--no-ray")
    assert missing_cmd.returncode == 2 and "needs --cmd" in missing_cmd.stderr
    bad_placeholder = ado(tmp_path, "batch", "repos.txt", "--no-ray", "--cmd", "echo {ticket}")
    assert (
        bad_placeholder.returncode == 2
        and "repos.txt:1:" in bad_placeholder.stderr
        and "ticket" in bad_placeholder.stderr
    )
    assert ado(tmp_path, "batch", "repos.txt", "--cmd", "true", "--parallel", "0").returncode == 2
    unknown_run = ado(tmp_path, "status", "deadbeef0000")
    assert unknown_run.returncode == 2 and "no run 'deadbeef0000'" in unknown_run.stderr


def test_plan_prints_the_resolved_list(tmp_path: Path, make_repo: Callable[..., Path]) -> None:
    repo = make_repo("planned")
    (tmp_path / "repos.txt").write_text(
        f"{repo}@main  ticket=T-1  # comment\nhttps://example.com/o/n.git\n"
    )
    proc = ado(tmp_path, "batch", "repos.txt", "--plan", "--cmd", "true", check=True)
    assert proc.stdout.splitlines() == [f"{repo}@main ticket=T-1", "https://example.com/o/n.git"]
    assert not (tmp_path / "state.db").exists()


def test_json_output_runs_status_and_reports(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    repos = [make_repo("j1"), make_repo("j2")]
    (tmp_path / "repos.txt").write_text("".join(f"{r}\n" for r in repos))
    agent = script("edit", "import sys\nif sys.argv[1] == 'j1': open('a', 'w').write('a')")
    proc = ado(
        tmp_path,
        "batch",
        "repos.txt",
        "--json",
        "--ray-address",
        ray_address,
        "--cmd",
        f"{agent} {{repo_name}}",
        "--name",
        "js",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["counts"] == {"changed": 1, "no_change": 1}
    by_name = {t["name"]: t for t in out["tasks"]}
    assert by_name["j1"]["branch"] == "ado/js" and len(by_name["j1"]["commit"]) == 40
    assert by_name["j2"]["commit"] is None and by_name["j2"]["error"] is None
    assert "[2/2]" in proc.stderr  # progress went to stderr

    runs = json.loads(ado(tmp_path, "runs", "--json", check=True).stdout)
    assert [r["run_id"] for r in runs] == [out["run_id"]] and runs[0]["counts"] == out["counts"]
    status = json.loads(ado(tmp_path, "status", out["run_id"][:6], "--json", check=True).stdout)
    assert status["tasks"] == out["tasks"]
    assert "j1" in ado(tmp_path, "status", out["run_id"], check=True).stdout
    md = ado(tmp_path, "report", out["run_id"], "--format", "md", check=True).stdout
    assert "| j1 | changed | command (default) |" in md
    ado(tmp_path, "report", out["run_id"], "--format", "junit", "-o", "r.xml", check=True)
    assert 'tests="2" failures="0"' in (tmp_path / "r.xml").read_text()


SLOW = """
import os, sys, time
open(os.environ["ADO_VAR_LOG"], "a").write(sys.argv[1] + "\\n")
time.sleep(float(open(sys.argv[2]).read()))  # seconds, read from a file the test controls
open("change.txt", "w").write(sys.argv[1])
"""


def slow_agent(
    tmp_path: Path, script: Callable[[str, str], str], seconds: float
) -> tuple[str, Path]:
    duration = tmp_path / "sleep-seconds"
    duration.write_text(str(seconds))
    return script("slow", SLOW) + f" {{repo_name}} {duration}", duration


def _fleet(tmp_path: Path, make_repo: Callable[..., Path], count: int) -> list[Path]:
    repos = [make_repo(f"k{i}") for i in range(count)]
    log = tmp_path / "agent-runs.log"
    (tmp_path / "repos.txt").write_text("".join(f"{r} log={log}\n" for r in repos))
    return repos


# Logs its repository's name, then edits the checkout.
EDIT = """
import os, sys
open(os.environ["ADO_VAR_LOG"], "a").write(sys.argv[1] + "\\n")
open("change.txt", "w").write(sys.argv[1])
"""


def _crash_fleet(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> tuple[list[Path], str]:
    """Three repositories (run one at a time: the crash at the second's step finds the first
    finished and the third not started) and the --cmd of the logging agent."""
    repos = _fleet(tmp_path, make_repo, 3)
    return repos, script("edit", EDIT) + " {repo_name}"


def _agent_runs(tmp_path: Path) -> list[str]:
    log = tmp_path / "agent-runs.log"
    return log.read_text().split() if log.exists() else []


def _one_commit_each(repos: list[Path], branch: str) -> None:
    for repo in repos:
        assert len(git(repo, "rev-list", f"main..{branch}").split()) == 1, repo
        assert git(repo, "show", f"{branch}:change.txt") == repo.name


@pytest.mark.parametrize("moved", [False, True], ids=["same-node", "work-root-gone"])
@pytest.mark.parametrize("step", STEPS)
def test_a_driver_killed_at_each_step_resumes_to_one_commit_and_no_agent_rerun(
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
    step: str,
    moved: bool,
) -> None:
    repos, cmd = _crash_fleet(tmp_path, make_repo, script)
    first = ado(
        tmp_path,
        *("batch", "repos.txt", "--no-ray", "--parallel", "1", "--name", "cp", "--cmd", cmd),
        env={CRASH_ENV: f"{step}:2"},
    )
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    states = [s for (s,) in db_rows(tmp_path, "select state from tasks order by seq")]
    assert states[0] == "changed" and not TaskState(states[1]).terminal and states[2] == "queued"
    reached = {
        s for (s,) in db_rows(tmp_path, "select step from checkpoints where task_id like '%-00002'")
    }
    assert reached == set(STEPS[: STEPS.index(step) + 1])
    if moved:  # resume as another node would: no checkout, no clone cache
        shutil.rmtree(tmp_path / "work")

    run_id = db_rows(tmp_path, "select run_id from runs")[0][0]
    proc = ado(tmp_path, "resume", run_id, "--no-ray")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _one_commit_each(repos, "ado/cp")
    # Only edits that existed nowhere else are paid for again: the agent's, before the commit
    # (with it) was stored, on a node that is gone.
    again = moved and step == "agent_done"
    assert _agent_runs(tmp_path) == (["k0", "k1", "k1", "k2"] if again else ["k0", "k1", "k2"])


NOOP = """
import os, sys
open(os.environ["ADO_VAR_LOG"], "a").write(sys.argv[1] + "\\n")
"""


def test_a_task_without_change_ends_in_its_committed_write_and_a_crash_there_loses_nothing(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> None:
    """A dry run's task that changed nothing: `no_change` goes to the store in the same
    write as its `committed` checkpoint (one durable write less per task), so a driver
    killed right after it finds the task finished; the resume runs no agent again."""
    _fleet(tmp_path, make_repo, 1)
    cmd = script("noop", NOOP) + " {repo_name}"
    first = ado(
        tmp_path,
        *("batch", "repos.txt", "--no-ray", "--dry-run", "--name", "nc", "--cmd", cmd),
        env={CRASH_ENV: "committed"},
    )
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    assert db_rows(tmp_path, "select state from tasks") == [("no_change",)]
    (data,) = db_rows(tmp_path, "select data from checkpoints where step = 'committed'")[0]
    assert json.loads(data)["commit_sha"] is None
    run_id = db_rows(tmp_path, "select run_id from runs")[0][0]
    proc = ado(tmp_path, "resume", run_id, "--no-ray")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert db_rows(tmp_path, "select state from tasks") == [("no_change",)]
    assert _agent_runs(tmp_path) == ["k0"]


@pytest.mark.parametrize("step", STEPS)
def test_a_runner_killed_at_each_step_is_replaced_and_the_run_finishes(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
    step: str,
) -> None:
    repos, cmd = _crash_fleet(tmp_path, make_repo, script)
    proc = ado(
        tmp_path,
        *("batch", "repos.txt", "--json", "--parallel", "1", "--name", "cp", "--cmd", cmd),
        *("--ray-address", ray_address),
        env={CRASH_ENV: f"{step}:2"},  # reaches the runners through their runtime_env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lost: ActorDiedError; its tasks go back to the queue" in proc.stderr
    assert json.loads(proc.stdout)["counts"] == {"changed": 3}
    _one_commit_each(repos, "ado/cp")
    assert sorted(_agent_runs(tmp_path)) == ["k0", "k1", "k2"]  # no agent ran twice
    # The crashed task and the one waiting behind it on that runner spent no extra attempt.
    assert db_rows(tmp_path, "select attempt from tasks") == [(1,), (1,), (1,)]


def test_ctrl_c_stops_and_the_run_resumes(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    repos = _fleet(tmp_path, make_repo, 6)
    cmd, duration = slow_agent(tmp_path, script, 60)
    driver = spawn(
        tmp_path,
        "batch",
        "repos.txt",
        "--parallel",
        "2",
        "--ray-address",
        ray_address,
        "--cmd",
        cmd,
        "--grace",
        "1",
    )
    wait_for(
        lambda: (
            (tmp_path / "agent-runs.log").exists()
            and len((tmp_path / "agent-runs.log").read_text().split()) == 2
        )
    )
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=90)
    assert driver.returncode == 130, out + err
    assert "ado resume" in out
    assert db_rows(tmp_path, "select status from runs") == [("interrupted",)]
    assert {row[0] for row in db_rows(tmp_path, "select state from tasks")} == {"queued"}

    duration.write_text("0")
    run_id = db_rows(tmp_path, "select run_id from runs")[0][0]
    proc = ado(tmp_path, "resume", run_id, "--ray-address", ray_address)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(
        len(
            git(
                r, "rev-list", "main..ado/" + db_rows(tmp_path, "select name from runs")[0][0]
            ).split()
        )
        == 1
        for r in repos
    )


def test_a_second_driver_on_the_same_run_is_refused(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    _fleet(tmp_path, make_repo, 2)
    driver = spawn(
        tmp_path,
        "batch",
        "repos.txt",
        "--ray-address",
        ray_address,
        "--cmd",
        slow_agent(tmp_path, script, 3)[0],
    )
    try:
        wait_for(lambda: (tmp_path / "agent-runs.log").exists())
        run_id = db_rows(tmp_path, "select run_id from runs")[0][0]
        second = ado(tmp_path, "resume", run_id, "--no-ray")
        assert second.returncode == 2
        assert f"run {run_id} is being driven by" in second.stderr
    finally:
        driver.communicate(timeout=60)
    assert driver.returncode == 0
