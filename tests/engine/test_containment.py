"""No process an agent starts outlives its attempt, however it detaches: real processes
that leave their session or process group, real SIGKILLs of the runner and of the driver."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ado_ray.engine.process import agent_mark, kill_stale_agent, run_supervised
from tests.engine.test_process import MODES, PY, SANDBOXED, wait_for
from tests.processes import gone, processes_with, token_scope

PATTERNS = ["setsid", "double-fork", "setpgid"]

# Starts a sleeper that detaches as `pattern` says, waits until it runs, then exits or
# hangs. Every process carries TEST_TOKEN (inherited) and the token in its argv.
AGENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    pattern, then, ready, token = sys.argv[1:5]
    alive = ready + ".sleeper"
    sleeper = [sys.executable, "-c",
               "import sys, time; open(sys.argv[1], 'w').close(); time.sleep(300)", alive, token]
    if pattern == "setsid":  # as `setsid sleep 300 &` in a shell
        subprocess.Popen(["setsid", *sleeper])
    elif pattern == "double-fork":  # a daemon: fork, setsid, fork again, first child exits
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, sleeper)
            os._exit(0)
        os.wait()
    elif pattern == "setpgid":  # a process group of its own, in the same session
        subprocess.Popen(sleeper, process_group=0)
    while not os.path.exists(alive):
        time.sleep(0.01)
    open(ready, "w").close()
    if then == "hang":
        time.sleep(300)
    """
)

# A runner: supervises one agent (with the task's pid file and mark) until it is killed.
RUNNER = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from ado_ray.engine.process import agent_mark, run_supervised, write_pidfile
    task_dir, sandbox, *argv = sys.argv[1:]
    task_dir = Path(task_dir)
    asyncio.run(run_supervised(
        argv, cwd=task_dir / "repo", env=dict(os.environ),
        stdout_path=task_dir / "out.log", stderr_path=task_dir / "err.log",
        timeout_s=300, stall_timeout_s=None, sandbox=sandbox, mark=agent_mark(task_dir),
        on_start=lambda pid: write_pidfile(task_dir, pid),
    ))
    """
)


@pytest.fixture
def token() -> Iterator[str]:
    with token_scope() as value:
        yield value


def agent_argv(tmp_path: Path, pattern: str, then: str, token: str) -> list[str]:
    return [PY, "-c", AGENT, pattern, then, str(tmp_path / "ready"), token]


def test_the_patterns_escape_a_process_group_kill(tmp_path: Path, token: str) -> None:
    """Without supervision, each pattern leaves a sleeper behind: the tests below can fail."""
    for pattern in PATTERNS:
        (tmp_path / "ready").unlink(missing_ok=True)
        agent = subprocess.Popen(
            agent_argv(tmp_path, pattern, "hang", token),
            env={**os.environ, "TEST_TOKEN": token},
            start_new_session=True,
        )
        wait_for(tmp_path / "ready")
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
        assert not gone(token, within_s=0.5), pattern
        for pid in processes_with(token):
            os.kill(pid, signal.SIGKILL)
        assert gone(token), pattern


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("then", ["exit", "timeout"])
@pytest.mark.parametrize("sandbox", MODES)
def test_nothing_survives_the_agents_exit_or_timeout(
    tmp_path: Path, token: str, sandbox: str, then: str, pattern: str
) -> None:
    result = asyncio.run(
        run_supervised(
            agent_argv(tmp_path, pattern, "exit" if then == "exit" else "hang", token),
            cwd=tmp_path,
            env={**os.environ, "TEST_TOKEN": token},
            stdout_path=tmp_path / "out.log",
            stderr_path=tmp_path / "err.log",
            timeout_s=60 if then == "exit" else 4,
            stall_timeout_s=None,
            kill_grace_s=1.0,
            poll_s=0.05,
            sandbox=sandbox,
        )
    )
    assert (tmp_path / "ready").exists(), (tmp_path / "err.log").read_text()
    assert result.timed_out is (then == "timeout")
    assert result.returncode == (0 if then == "exit" else None)
    assert gone(token)


def start_runner(
    tmp_path: Path, sandbox: str, argv: list[str], token: str
) -> subprocess.Popen[bytes]:
    (tmp_path / "task" / "repo").mkdir(parents=True)
    env = {**os.environ, "TEST_TOKEN": token}
    runner = subprocess.Popen([PY, "-c", RUNNER, str(tmp_path / "task"), sandbox, *argv], env=env)
    wait_for(tmp_path / "ready")
    return runner


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("sandbox", MODES)
def test_nothing_survives_a_sigkilled_runner(
    tmp_path: Path, token: str, sandbox: str, pattern: str
) -> None:
    runner = start_runner(tmp_path, sandbox, agent_argv(tmp_path, pattern, "hang", token), token)
    runner.kill()
    runner.wait()
    assert gone(token)


@pytest.mark.parametrize("sandbox", MODES)
def test_a_resume_kills_what_a_killed_attempt_left(
    tmp_path: Path, token: str, sandbox: str
) -> None:
    """The runner and the agent's init both SIGKILLed (no init to clean up): before the
    checkout is used again, `kill_stale_agent` finds the rest by group and by mark."""
    argv = agent_argv(tmp_path, "double-fork", "hang", token)
    runner = start_runner(tmp_path, sandbox, argv, token)
    task_dir = tmp_path / "task"
    init = int((task_dir / "agent.pid").read_text().split()[1])
    os.kill(runner.pid, signal.SIGSTOP)  # so that it cannot clean up after its init
    os.kill(init, signal.SIGKILL)
    runner.kill()
    runner.wait()
    if sandbox == "none":  # without a namespace, the detached sleeper lives on
        assert not gone(token, within_s=0.5)
        marked = [pid for pid in processes_with(token) if pid != init]
        assert marked and all(
            f"ADO_AGENT_MARK={agent_mark(task_dir)}".encode()
            in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            for pid in marked
        )
    else:  # in a PID namespace, the death of its init takes every process with it
        assert gone(token)
    assert kill_stale_agent(task_dir) is (sandbox == "none")
    assert gone(token, within_s=0.5)
    assert kill_stale_agent(task_dir) is False  # nothing left: nothing to do


def test_a_stale_agent_still_running_is_killed_by_its_group(tmp_path: Path, token: str) -> None:
    """A runner that is alive but lost (its task given to another): the pid file's group."""
    sandbox = "pid" if SANDBOXED else "none"
    argv = agent_argv(tmp_path, "setsid", "hang", token)
    runner = start_runner(tmp_path, sandbox, argv, token)
    try:
        assert kill_stale_agent(tmp_path / "task") is True
        assert gone(token)
    finally:
        runner.kill()
        runner.wait()


@pytest.mark.e2e
@pytest.mark.parametrize("sandbox", MODES)
def test_nothing_survives_a_sigkilled_no_ray_driver(
    tmp_path: Path,
    token: str,
    sandbox: str,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    (tmp_path / "ado.yaml").write_text(
        f"agent: {{sandbox: {sandbox}, env_allow: [PATH, TEST_TOKEN]}}\n"
    )
    (tmp_path / "repos.txt").write_text(f"{make_repo('orphans')}\n")
    agent = script("detach", AGENT) + f" double-fork hang {tmp_path / 'ready'} {token}"
    argv = [PY, "-m", "ado_ray", "batch", str(tmp_path / "repos.txt"), "--no-ray", "--dry-run"]
    argv += ["--config", str(tmp_path / "ado.yaml"), "--cmd", agent]
    argv += ["--state", str(tmp_path / "state.db"), "--work-root", str(tmp_path / "work")]
    log = tmp_path / "driver.log"
    with open(log, "wb") as out:
        driver = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env={**os.environ, "TEST_TOKEN": token},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists():
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        driver.kill()
        driver.wait()
    assert gone(token)


@pytest.mark.e2e
def test_a_task_run_again_kills_what_an_earlier_agent_left_in_its_directory(
    tmp_path: Path, token: str, make_repo: Callable[..., Path]
) -> None:
    """A brand-new task directory cannot hold an earlier agent, so a new task does not scan
    for one; a task whose directory exists (a resume, a retry) still does, before its agent."""
    (tmp_path / "repos.txt").write_text(f"{make_repo('again')}\n")
    where = ["--no-ray", "--state", str(tmp_path / "s.db"), "--work-root", str(tmp_path / "work")]
    first = [PY, "-m", "ado_ray", "batch", str(tmp_path / "repos.txt"), "--dry-run", *where]
    first += ["--cmd", "false", "--max-attempts", "1", "--json"]
    done = subprocess.run(first, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    task_dir = tmp_path / "work" / "runs" / run_id / f"{run_id}-00001"
    assert task_dir.is_dir()
    # What an attempt killed with its runner and its init would leave: a detached process
    # with the task's mark.
    stale = subprocess.Popen(
        [PY, "-c", "import time; time.sleep(300)", token],
        env={**os.environ, "ADO_AGENT_MARK": agent_mark(task_dir)},
        start_new_session=True,
    )
    try:
        again = [PY, "-m", "ado_ray", "resume", run_id, "--retry-failed", *where]
        subprocess.run(again, cwd=tmp_path, capture_output=True, check=False)
        assert stale.wait(timeout=30) == -signal.SIGKILL
    finally:
        stale.kill()
        stale.wait()
