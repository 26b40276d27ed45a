"""Supervised agent processes: real processes, real signals, real process groups."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ado_ray.engine.process import build_env, run_supervised
from ado_ray.errors import AgentError
from ado_ray.models import ProcessExit

PY = sys.executable

# A child that starts a grandchild in its own process group, records both pids, then
# behaves as `then` says.
SPAWNER = """
import os, signal, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100)"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
then = sys.argv[2]
if then == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if then != "exit":
    time.sleep(100)
"""


@pytest.fixture(autouse=True)
def _reap_leftovers(tmp_path: Path) -> Iterator[None]:
    """Should a test fail, do not leave its sleeping processes behind."""
    yield
    pid_file = tmp_path / "pids"
    if pid_file.exists():
        for pid in pids(pid_file):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie nobody has reaped yet counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in {"Z", "X"}


def wait_dead(pid: int, within_s: float = 2.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def pids(path: Path) -> tuple[int, int]:
    leader, grandchild = path.read_text().split()
    return int(leader), int(grandchild)


def run(
    tmp_path: Path,
    argv: list[str],
    *,
    timeout_s: float = 10.0,
    stall_timeout_s: float | None = None,
    kill_grace_s: float = 5.0,
    env: dict[str, str] | None = None,
) -> ProcessExit:
    return asyncio.run(
        run_supervised(
            argv,
            cwd=tmp_path,
            env=os.environ.copy() if env is None else env,
            stdout_path=tmp_path / "logs" / "stdout.log",
            stderr_path=tmp_path / "logs" / "stderr.log",
            timeout_s=timeout_s,
            stall_timeout_s=stall_timeout_s,
            kill_grace_s=kill_grace_s,
            poll_s=0.05,
        )
    )


def test_success_writes_output_files(tmp_path: Path) -> None:
    code = "import os, sys; print('out', len(sys.stdin.read()), os.getcwd())"
    code += "; print('err', file=sys.stderr)"
    result = run(tmp_path, [PY, "-c", code])
    assert result.returncode == 0
    assert not result.timed_out and not result.stalled
    assert result.stdout_path == str(tmp_path / "logs" / "stdout.log")
    assert Path(result.stdout_path).read_text() == f"out 0 {tmp_path}\n"
    assert Path(result.stderr_path).read_text() == "err\n"
    assert 0 < result.duration_s < 5


def test_non_zero_exit(tmp_path: Path) -> None:
    result = run(tmp_path, [PY, "-c", "raise SystemExit(3)"])
    assert (result.returncode, result.timed_out, result.stalled) == (3, False, False)


def test_hard_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    result = run(tmp_path, [PY, "-c", SPAWNER, str(pid_file), "sleep"], timeout_s=1.0)
    assert result.timed_out and not result.stalled and result.returncode is None
    assert 1.0 <= result.duration_s < 3.0  # SIGTERM was enough: no wait for the grace
    leader, grandchild = pids(pid_file)
    assert wait_dead(leader) and wait_dead(grandchild)


def test_sigterm_ignored_means_sigkill_after_grace(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    argv = [PY, "-c", SPAWNER, str(pid_file), "ignore-term"]
    result = run(tmp_path, argv, timeout_s=1.0, kill_grace_s=0.5)
    assert result.timed_out and result.returncode is None
    assert 1.45 <= result.duration_s < 4.0
    leader, grandchild = pids(pid_file)
    assert wait_dead(leader) and wait_dead(grandchild)


def test_stall_kills_a_silent_process(tmp_path: Path) -> None:
    code = "import time; print('started', flush=True); time.sleep(100)"
    result = run(tmp_path, [PY, "-c", code], stall_timeout_s=0.5)
    assert result.stalled and not result.timed_out and result.returncode is None
    assert result.duration_s < 3.0
    assert Path(result.stdout_path).read_text() == "started\n"


def test_steady_output_is_not_a_stall(tmp_path: Path) -> None:
    code = "import time\nfor i in range(12):\n    print(i, flush=True)\n    time.sleep(0.1)"
    result = run(tmp_path, [PY, "-c", code], stall_timeout_s=0.5)
    assert result.returncode == 0 and not result.stalled
    assert result.duration_s > 1.0  # it ran past the stall window
    assert Path(result.stdout_path).read_text().split() == [str(i) for i in range(12)]


def test_leftover_grandchild_is_killed_after_exit(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    result = run(tmp_path, [PY, "-c", SPAWNER, str(pid_file), "exit"])
    assert result.returncode == 0 and not result.timed_out
    assert result.duration_s < 5.0  # did not wait for the grandchild's sleep
    _, grandchild = pids(pid_file)
    assert wait_dead(grandchild)


def test_cancellation_kills_the_group_and_reraises(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"

    async def main() -> None:
        task = asyncio.create_task(
            run_supervised(
                [PY, "-c", SPAWNER, str(pid_file), "ignore-term"],
                cwd=tmp_path,
                env=os.environ.copy(),
                stdout_path=tmp_path / "out.log",
                stderr_path=tmp_path / "err.log",
                timeout_s=30.0,
                stall_timeout_s=None,
                kill_grace_s=0.3,
                poll_s=0.05,
            )
        )
        deadline = time.monotonic() + 10
        while not pid_file.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        task.cancel()
        await task

    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert time.monotonic() - started < 5.0
    leader, grandchild = pids(pid_file)
    assert wait_dead(leader) and wait_dead(grandchild)


def test_missing_or_non_executable_command(tmp_path: Path) -> None:
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\necho hi\n")  # no execute bit
    for command in ["no-such-agent-cli", str(tmp_path / "missing"), str(script), str(tmp_path)]:
        with pytest.raises(AgentError) as info:
            run(tmp_path, [command])
        assert str(info.value) == (
            f"agent command {command!r} not found (or not executable); "
            "expected a program on PATH or a path"
        )


def test_missing_working_directory(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="working directory"):
        asyncio.run(
            run_supervised(
                [PY, "-c", "pass"],
                cwd=tmp_path / "gone",
                env={},
                stdout_path=tmp_path / "o",
                stderr_path=tmp_path / "e",
                timeout_s=5,
                stall_timeout_s=None,
            )
        )


def test_build_env_allow_list() -> None:
    base = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "LC_CTYPE": "UTF-8",
        "LCX": "no",
        "path": "lower",
        "ANTHROPIC_API_KEY": "secret",
        "HOME": "/root",
    }
    env = build_env(["PATH", "LANG", "LC_*"], {"HOME": "/task/home", "X": "1"}, base)
    assert env == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "LC_CTYPE": "UTF-8",
        "HOME": "/task/home",
        "X": "1",
    }


def test_build_env_defaults_to_os_environ_and_reaches_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADO_TEST_SECRET", "hunter2")
    monkeypatch.setenv("ADO_TEST_ALLOWED", "yes")
    env = build_env(["PATH", "ADO_TEST_ALLOWED"], {"ADO_EXTRA": "x"})
    assert "ADO_TEST_SECRET" not in env and env["ADO_TEST_ALLOWED"] == "yes"
    code = "import os; print(sorted(k for k in os.environ if k.startswith('ADO_')))"
    result = run(tmp_path, [PY, "-c", code], env=env)
    assert Path(result.stdout_path).read_text() == "['ADO_EXTRA', 'ADO_TEST_ALLOWED']\n"


def test_on_start_gets_the_group_id_and_its_failure_stops_the_agent(tmp_path: Path) -> None:
    seen: list[int] = []
    code = "import os; print(os.getpid(), os.getpgid(0))"
    result = asyncio.run(
        run_supervised(
            [PY, "-c", code],
            cwd=tmp_path,
            env=os.environ.copy(),
            stdout_path=tmp_path / "out.log",
            stderr_path=tmp_path / "err.log",
            timeout_s=10,
            stall_timeout_s=None,
            on_start=seen.append,
        )
    )
    assert result.returncode == 0
    assert Path(result.stdout_path).read_text().split() == [str(seen[0])] * 2

    def refuse(pid: int) -> None:
        (tmp_path / "pids").write_text(f"{pid} {pid}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(
            run_supervised(
                [PY, "-c", "import time; time.sleep(100)"],
                cwd=tmp_path,
                env=os.environ.copy(),
                stdout_path=tmp_path / "out.log",
                stderr_path=tmp_path / "err.log",
                timeout_s=30,
                stall_timeout_s=None,
                kill_grace_s=0.5,
                on_start=refuse,
            )
        )
    assert wait_dead(pids(tmp_path / "pids")[0])
