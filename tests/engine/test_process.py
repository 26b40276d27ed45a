"""Supervised agent processes: real processes, real signals, real sandboxes.

Inside a sandbox an agent's pids are its namespace's, so the tests find an agent's
processes from outside by a token of their own, in their argv or environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ado_ray.engine.process import build_env, run_supervised
from ado_ray.engine.sandbox import probe
from ado_ray.errors import AgentError
from ado_ray.models import ProcessExit
from tests.processes import gone, token_scope

PY = sys.executable
SANDBOXED = bool(probe().prefix)
# Each containment test runs in both modes: with a PID namespace, and with none.
MODES = [
    pytest.param(
        "pid", marks=pytest.mark.skipif(not SANDBOXED, reason=f"no sandbox: {probe().reason}")
    ),
    "none",
]


@pytest.fixture
def token() -> Iterator[str]:
    with token_scope() as value:
        yield value


def wait_for(path: Path, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {within_s}s"
        time.sleep(0.02)


# A child that starts a grandchild (in its process group), says so, then behaves as
# `then` says. Both carry the token in their environment.
SPAWNER = """
import os, signal, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100)"])
open(sys.argv[1] + ".tmp", "w").close()
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
then = sys.argv[2]
if then == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if then != "exit":
    time.sleep(100)
"""


def run(
    tmp_path: Path,
    argv: list[str],
    *,
    timeout_s: float = 30.0,
    stall_timeout_s: float | None = None,
    kill_grace_s: float = 5.0,
    env: dict[str, str] | None = None,
    sandbox: str = "auto",
    log_cap_mb: float | None = 10.0,
    stop_when: Callable[[Path, Path], bool] | None = None,
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
            sandbox=sandbox,
            log_cap_mb=log_cap_mb,
            stop_when=stop_when,
        )
    )


@pytest.mark.parametrize("sandbox", MODES)
def test_success_writes_output_files(tmp_path: Path, sandbox: str) -> None:
    code = "import os, sys; print('out', len(sys.stdin.read()), os.getcwd())"
    code += "; print('err', file=sys.stderr)"
    result = run(tmp_path, [PY, "-c", code], sandbox=sandbox)
    assert result.returncode == 0
    assert not result.timed_out and not result.stalled
    assert result.stdout_path == str(tmp_path / "logs" / "stdout.log")
    assert Path(result.stdout_path).read_text() == f"out 0 {tmp_path}\n"
    assert Path(result.stderr_path).read_text() == "err\n"
    assert 0 < result.duration_s < 10


@pytest.mark.parametrize("sandbox", MODES)
def test_the_agents_own_exit_status_is_reported(tmp_path: Path, sandbox: str) -> None:
    result = run(tmp_path, [PY, "-c", "raise SystemExit(3)"], sandbox=sandbox)
    assert (result.returncode, result.timed_out, result.stalled) == (3, False, False)
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert run(tmp_path, [PY, "-c", suicide], sandbox=sandbox).returncode == -signal.SIGKILL


@pytest.mark.skipif(not SANDBOXED, reason=f"no sandbox: {probe().reason}")
def test_the_sandbox_is_on_by_default_and_none_opts_out(tmp_path: Path) -> None:
    code = "import os; print(os.getppid(), len([p for p in os.listdir('/proc') if p.isdigit()]))"
    run(tmp_path, [PY, "-c", code])
    parent, visible = map(int, (tmp_path / "logs" / "stdout.log").read_text().split())
    assert (parent, visible) == (1, 2)  # the init and the agent: nothing else in sight
    run(tmp_path, [PY, "-c", code], sandbox="none")
    parent, visible = map(int, (tmp_path / "logs" / "stdout.log").read_text().split())
    assert parent != 1 and visible > 2


@pytest.mark.parametrize("sandbox", MODES)
def test_hard_timeout_kills_everything(tmp_path: Path, token: str, sandbox: str) -> None:
    env = {**os.environ, "TEST_TOKEN": token}
    ready = tmp_path / "ready"
    argv = [PY, "-c", SPAWNER, str(ready), "sleep"]
    result = run(tmp_path, argv, timeout_s=3.0, env=env, sandbox=sandbox)
    assert ready.exists()
    assert result.timed_out and not result.stalled and result.returncode is None
    assert 3.0 <= result.duration_s < 7.5  # SIGTERM was enough: no wait for the 5 s grace
    assert gone(token)


@pytest.mark.parametrize("sandbox", MODES)
def test_sigterm_ignored_means_sigkill_after_grace(
    tmp_path: Path, token: str, sandbox: str
) -> None:
    env = {**os.environ, "TEST_TOKEN": token}
    ready = tmp_path / "ready"
    argv = [PY, "-c", SPAWNER, str(ready), "ignore-term"]
    result = run(tmp_path, argv, timeout_s=3.0, kill_grace_s=1.0, env=env, sandbox=sandbox)
    assert ready.exists()
    assert result.timed_out and result.returncode is None
    assert 4.0 <= result.duration_s < 10.0
    assert gone(token)


@pytest.mark.parametrize("sandbox", MODES)
def test_an_adapter_can_stop_its_agent_on_what_it_prints(
    tmp_path: Path, token: str, sandbox: str
) -> None:
    env = {**os.environ, "TEST_TOKEN": token}
    code = "import time; print('retrying in 32s', flush=True); time.sleep(100)"
    seen: list[str] = []

    def stop_when(stdout: Path, stderr: Path) -> bool:
        seen.append(stdout.read_text() if stdout.exists() else "")
        return "retrying" in seen[-1]

    result = run(tmp_path, [PY, "-c", code], env=env, sandbox=sandbox, stop_when=stop_when)
    assert result.returncode is None and not result.timed_out and not result.stalled
    assert result.duration_s < 10.0
    assert seen[-1] == "retrying in 32s\n"
    assert gone(token)


def test_stall_kills_a_silent_process(tmp_path: Path) -> None:
    code = "import time; print('started', flush=True); time.sleep(100)"
    result = run(tmp_path, [PY, "-c", code], stall_timeout_s=1.0)
    assert result.stalled and not result.timed_out and result.returncode is None
    assert result.duration_s < 8.0
    assert Path(result.stdout_path).read_text() == "started\n"


def test_steady_output_is_not_a_stall(tmp_path: Path) -> None:
    code = "import time\nfor i in range(12):\n    print(i, flush=True)\n    time.sleep(0.25)"
    result = run(tmp_path, [PY, "-c", code], stall_timeout_s=1.5)
    assert result.returncode == 0 and not result.stalled
    assert result.duration_s > 2.5  # it ran past the stall window
    assert Path(result.stdout_path).read_text().split() == [str(i) for i in range(12)]


def test_output_past_the_cap_is_not_a_stall(tmp_path: Path) -> None:
    """Once the head is full, the log is cut back now and then: it still changes."""
    code = (
        "import sys, time\n"
        "for i in range(40):\n"
        "    sys.stdout.write(f'{i:07d}' * 1000 + '\\n'); sys.stdout.flush(); time.sleep(0.1)"
    )
    result = run(tmp_path, [PY, "-c", code], stall_timeout_s=1.5, log_cap_mb=0.02)
    assert result.returncode == 0 and not result.stalled


@pytest.mark.parametrize("sandbox", MODES)
def test_leftovers_are_killed_after_exit(tmp_path: Path, token: str, sandbox: str) -> None:
    env = {**os.environ, "TEST_TOKEN": token}
    ready = tmp_path / "ready"
    result = run(tmp_path, [PY, "-c", SPAWNER, str(ready), "exit"], env=env, sandbox=sandbox)
    assert ready.exists()
    assert result.returncode == 0 and not result.timed_out
    assert result.duration_s < 10.0  # did not wait for the grandchild's sleep
    assert gone(token)


@pytest.mark.parametrize("sandbox", MODES)
def test_cancellation_kills_everything_and_reraises(
    tmp_path: Path, token: str, sandbox: str
) -> None:
    ready = tmp_path / "ready"

    async def main() -> None:
        task = asyncio.create_task(
            run_supervised(
                [PY, "-c", SPAWNER, str(ready), "ignore-term"],
                cwd=tmp_path,
                env={**os.environ, "TEST_TOKEN": token},
                stdout_path=tmp_path / "out.log",
                stderr_path=tmp_path / "err.log",
                timeout_s=60.0,
                stall_timeout_s=None,
                kill_grace_s=0.5,
                poll_s=0.05,
                sandbox=sandbox,
            )
        )
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        task.cancel()
        await task

    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert ready.exists()
    assert time.monotonic() - started < 20.0
    assert gone(token)


@pytest.mark.parametrize("sandbox", MODES)
def test_missing_or_non_executable_command(tmp_path: Path, sandbox: str) -> None:
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\necho hi\n")  # no execute bit
    for command in ["no-such-agent-cli", str(tmp_path / "missing"), str(script), str(tmp_path)]:
        with pytest.raises(AgentError) as info:
            run(tmp_path, [command], sandbox=sandbox)
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


def test_unknown_sandbox_mode(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match=r"agent.sandbox is 'chroot'; expected one of auto, pid"):
        run(tmp_path, [PY, "-c", "pass"], sandbox="chroot")


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


@pytest.mark.parametrize("sandbox", MODES)
def test_on_start_gets_the_group_id_and_its_failure_stops_the_agent(
    tmp_path: Path, token: str, sandbox: str
) -> None:
    groups: list[tuple[int, int]] = []

    def record(pid: int) -> None:  # the process group the runner started leads the agent
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        groups.append((pid, int(stat[2])))

    result = asyncio.run(
        run_supervised(
            [PY, "-c", "pass"],
            cwd=tmp_path,
            env=os.environ.copy(),
            stdout_path=tmp_path / "out.log",
            stderr_path=tmp_path / "err.log",
            timeout_s=30,
            stall_timeout_s=None,
            on_start=record,
            sandbox=sandbox,
        )
    )
    assert result.returncode == 0
    assert len(groups) == 1 and groups[0][0] == groups[0][1]

    def refuse(pid: int) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(
            run_supervised(
                [PY, "-c", "import time; time.sleep(100)"],
                cwd=tmp_path,
                env={**os.environ, "TEST_TOKEN": token},
                stdout_path=tmp_path / "out.log",
                stderr_path=tmp_path / "err.log",
                timeout_s=30,
                stall_timeout_s=None,
                kill_grace_s=0.5,
                on_start=refuse,
                sandbox=sandbox,
            )
        )
    assert gone(token)


# --- the log cap -------------------------------------------------------------------------

CUT = re.compile(rb"\[ado-ray: (\d+) bytes cut here \(agent\.log_cap_mb\)\]\n")


@pytest.mark.parametrize("sandbox", MODES)
def test_logs_keep_head_and_tail_and_say_how_much_was_cut(tmp_path: Path, sandbox: str) -> None:
    cap = 64 * 1024
    code = (
        "import sys\n"
        "for i in range(20000):\n"
        "    print(f'line {i:05d}', flush=i % 1000 == 0)\n"
        "print('x' * 100000, file=sys.stderr, end='')"
    )
    result = run(tmp_path, [PY, "-c", code], log_cap_mb=cap / 2**20, sandbox=sandbox)
    assert result.returncode == 0
    out = Path(result.stdout_path).read_bytes()
    sent = b"".join(f"line {i:05d}\n".encode() for i in range(20000))
    marker = CUT.search(out)
    assert marker is not None
    head, tail = out[: marker.start()], out[marker.end() :]
    assert sent.startswith(head) and sent.endswith(tail)  # cut at line ends, nothing altered
    assert head.endswith(b"\n") and tail.startswith(b"line ")
    assert len(head) + int(marker.group(1)) + len(tail) == len(sent)
    assert cap - 2 * 12 <= len(head) + len(tail) <= cap
    err = Path(result.stderr_path).read_bytes()
    marker = CUT.search(err)  # no line at all: cut at the byte
    assert marker is not None and err.startswith(b"x" * (cap // 2) + b"\n[ado-ray:")
    assert int(marker.group(1)) == 100000 - cap and len(err) == cap + marker.end() - cap // 2


def test_logs_under_the_cap_or_uncapped_are_whole(tmp_path: Path) -> None:
    code = "import sys; sys.stdout.write('y' * 300000)"
    run(tmp_path, [PY, "-c", code], log_cap_mb=1.0)
    assert (tmp_path / "logs" / "stdout.log").read_bytes() == b"y" * 300000
    run(tmp_path, [PY, "-c", code], log_cap_mb=None)
    assert (tmp_path / "logs" / "stdout.log").read_bytes() == b"y" * 300000


def test_a_flood_of_output_is_capped_while_it_runs(tmp_path: Path) -> None:
    """50 MB through a 1 MB cap: the file never holds much more than the cap."""
    code = (
        "import sys, time\n"
        "chunk = b'z' * 65535 + b'\\n'\n"
        "for _ in range(800): sys.stdout.buffer.write(chunk)\n"
        "sys.stdout.flush(); time.sleep(100)"
    )
    path = tmp_path / "logs" / "stdout.log"
    sizes: list[int] = []

    async def main() -> ProcessExit:
        task = asyncio.create_task(
            run_supervised(
                [PY, "-c", code],
                cwd=tmp_path,
                env=os.environ.copy(),
                stdout_path=path,
                stderr_path=tmp_path / "logs" / "stderr.log",
                timeout_s=60,
                stall_timeout_s=2.0,
                poll_s=0.05,
                log_cap_mb=1.0,
            )
        )
        while not task.done():
            with contextlib.suppress(FileNotFoundError):
                sizes.append(path.stat().st_size)
            await asyncio.sleep(0.01)
        return await task

    result = asyncio.run(main())
    assert result.stalled  # it printed 50 MB, then nothing
    assert max(sizes) <= 1.5 * 2**20 + 128 * 1024  # plus one read, before it is cut back
    marker = CUT.search(path.read_bytes())
    assert marker is not None
    assert path.stat().st_size - marker.end() + marker.start() <= 2**20
    assert int(marker.group(1)) + path.stat().st_size - len(marker.group(0)) == 800 * 65536


# --- where there is no sandbox -------------------------------------------------------------

WITHOUT_UNSHARE = """
import asyncio, os, sys
from pathlib import Path
from ado_ray.engine.process import run_supervised
cwd = Path(sys.argv[1])
for sandbox in sys.argv[2:]:
    try:
        asyncio.run(run_supervised(
            [sys.executable, "-c", "import os; print(os.getppid())"], cwd=cwd, env={},
            stdout_path=cwd / "out.log", stderr_path=cwd / "err.log", timeout_s=60,
            stall_timeout_s=None, sandbox=sandbox,
        ))
        print(sandbox, "ran, parent", (cwd / "out.log").read_text().strip())
    except Exception as exc:
        print(sandbox, type(exc).__name__, exc)
"""


def test_without_a_sandbox_auto_warns_once_and_pid_refuses(tmp_path: Path) -> None:
    """A host where `unshare` cannot be found stands in for one that forbids it."""
    done = subprocess.run(
        [PY, "-c", WITHOUT_UNSHARE, str(tmp_path), "auto", "auto", "pid"],
        env={**os.environ, "PATH": str(tmp_path)},  # no unshare on it
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("auto ran, parent ") and lines[0] != "auto ran, parent 1"
    assert lines[1].startswith("auto ran, parent ")
    assert lines[2] == (
        "pid AgentError agent.sandbox is 'pid' but this host cannot start one (no `unshare` "
        "on PATH (util-linux)); expected root (CAP_SYS_ADMIN) or user namespaces, or set "
        "agent.sandbox: auto or none"
    )
    warnings = [line for line in done.stderr.splitlines() if "sandbox" in line]
    assert len(warnings) == 1, done.stderr
    assert warnings[0].startswith("agent sandbox unavailable on ")
    assert "can read, through /proc, the environment of every process of uid" in warnings[0]
