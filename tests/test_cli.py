"""The `ado` command run for real, in subprocesses: exit codes, kill -9, Ctrl-C, locks.

Drivers join the session's Ray instance (`--ray-address`) to skip a Ray start-up each.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git

pytestmark = pytest.mark.e2e
ADO = [sys.executable, "-m", "ado_ray"]


def ado(
    tmp_path: Path, *args: str, check: bool = False, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ADO_STATE": str(tmp_path / "state.db"),
        "ADO_WORK_ROOT": str(tmp_path / "work"),
    }
    proc = subprocess.run(
        [*ADO, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, **kwargs
    )
    if check and proc.returncode:
        raise AssertionError(
            f"ado {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def spawn(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "ADO_STATE": str(tmp_path / "state.db"),
        "ADO_WORK_ROOT": str(tmp_path / "work"),
    }
    return subprocess.Popen(
        [*ADO, *args],
        cwd=tmp_path,
        env=env,
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


def test_kill_9_then_resume_gives_exactly_one_commit_and_reruns_no_finished_agent(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    repos = _fleet(tmp_path, make_repo, 8)
    cmd, _ = slow_agent(tmp_path, script, 0.7)
    driver = spawn(
        tmp_path,
        "batch",
        "repos.txt",
        "--parallel",
        "3",
        "--name",
        "k9",
        "--ray-address",
        ray_address,
        "--cmd",
        cmd,
    )
    wait_for(
        lambda: (
            (tmp_path / "state.db").exists()
            and bool(db_rows(tmp_path, "select 1 from tasks where state='changed'"))
        )
    )
    time.sleep(0.4)  # land somewhere in the middle of other tasks
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    done_before = {
        row[0]
        for row in db_rows(
            tmp_path,
            "select t.repo_key from checkpoints c join tasks t using (task_id)"
            " where c.step='agent_done'",
        )
    }
    assert 0 < len(done_before) < 8

    proc = ado(
        tmp_path,
        "resume",
        db_rows(tmp_path, "select run_id from runs")[0][0],
        "--ray-address",
        ray_address,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = (tmp_path / "agent-runs.log").read_text().split()
    for repo in repos:
        assert len(git(repo, "rev-list", "main..ado/k9").split()) == 1, repo
        assert git(repo, "show", "ado/k9:change.txt") == repo.name
    for key in done_before:
        assert runs.count(Path(key).name) == 1, f"{key} ran its agent again after agent_done"


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
