"""Supervised agent processes: an allow-listed environment, a process group, timeouts.

An agent runs as its own process group with stdin closed and its output going straight to
files. `run_supervised` waits on it without blocking the event loop and, whatever way the
wait ends (exit, hard timeout, stall, cancellation), leaves no process of that group alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ado_ray.errors import AgentError
from ado_ray.models import ProcessExit


def build_env(
    allow: Sequence[str],
    extra: Mapping[str, str],
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables of `base` (default: os.environ) whose names match a pattern of `allow`
    (fnmatch, case-sensitive: `PATH`, `LC_*`), overlaid with `extra`. Nothing else passes."""
    source = os.environ if base is None else base
    env = {
        name: value
        for name, value in source.items()
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in allow)
    }
    env.update(extra)
    return env


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(pgid, sig)


def _output_size(*paths: Path) -> int:
    size = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            size += path.stat().st_size
    return size


async def _stop_group(proc: subprocess.Popen[bytes], grace_s: float, poll_s: float) -> None:
    """SIGTERM the group, give the leader `grace_s` to exit, then SIGKILL the group and reap.

    The SIGKILL and the reaping happen even if this coroutine is cancelled during the grace.
    """
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        deadline = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(min(poll_s, 0.05))
    finally:
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)  # SIGKILL cannot be caught: this takes milliseconds


def _start(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], stdout_path: Path, stderr_path: Path
) -> subprocess.Popen[bytes]:
    if not argv:
        raise AgentError("agent command is empty; expected a program and its arguments")
    if not cwd.is_dir():
        raise AgentError(f"working directory {cwd} does not exist; expected the task's checkout")
    for path in (stdout_path, stderr_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        try:
            return subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its own session, so its own process group
                close_fds=True,
            )
        except OSError as exc:
            if exc.errno not in {errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.EISDIR}:
                raise
            raise AgentError(
                f"agent command {argv[0]!r} not found (or not executable); "
                "expected a program on PATH or a path"
            ) from exc
    # The child holds its own copies of the two files; ours close here.


async def run_supervised(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdout_path: Path,
    stderr_path: Path,
    timeout_s: float,
    stall_timeout_s: float | None,
    kill_grace_s: float = 5.0,
    poll_s: float = 0.2,
    on_start: Callable[[int], object] | None = None,
) -> ProcessExit:
    """Run `argv` (no shell) and wait for it, killing its whole process group on a hard
    timeout, on a stall (stdout + stderr have not grown for `stall_timeout_s`) or when this
    coroutine is cancelled (then CancelledError is re-raised). Anything the agent left running
    in its group is killed after it exits. `returncode` is None when we killed the agent.
    `on_start(pid)` is told the group's id (= the agent's pid) once it runs, e.g. to record it
    so that a later run can kill an agent whose runner died."""
    start = time.monotonic()
    proc = _start(argv, cwd, env, stdout_path, stderr_path)
    deadline = start + timeout_s
    last_size, last_growth = -1, start
    timed_out = stalled = False
    try:
        if on_start is not None:
            on_start(proc.pid)
        while proc.poll() is None:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if stall_timeout_s is not None:
                size = _output_size(stdout_path, stderr_path)
                if size != last_size:
                    last_size, last_growth = size, now
                elif now - last_growth >= stall_timeout_s:
                    stalled = True
                    break
            await asyncio.sleep(max(0.0, min(poll_s, deadline - now)))
    except BaseException:  # CancelledError (Ctrl-C in the runner), or anything unexpected
        await _stop_group(proc, kill_grace_s, poll_s)
        raise
    if timed_out or stalled:
        await _stop_group(proc, kill_grace_s, poll_s)
        returncode = None
    else:
        returncode = proc.returncode
        _signal_group(proc.pid, signal.SIGKILL)  # whatever it left behind in its group
    return ProcessExit(
        returncode=returncode,
        timed_out=timed_out,
        stalled=stalled,
        duration_s=time.monotonic() - start,
        stdout_path=str(stdout_path),
        stderr_path=str(stderr_path),
    )


# --- stale agents ------------------------------------------------------------------------
# A killed driver takes its runner actors with it, but an agent leads its own process group
# and outlives them. Before a task's workspace is rebuilt, kill what is left of its agent.

PIDFILE = "agent.pid"


def write_pidfile(task_dir: Path, pid: int) -> None:
    (task_dir / PIDFILE).write_text(f"{socket.gethostname()} {pid}\n", encoding="utf-8")


def kill_stale_agent(task_dir: Path) -> bool:
    """Kill the process group named in the task's pid file if it is still this task's agent."""
    try:
        host, pid_text = (task_dir / PIDFILE).read_text(encoding="utf-8").split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    (task_dir / PIDFILE).unlink(missing_ok=True)
    if host != socket.gethostname():
        return False
    try:  # the process's working directory proves it is ours and not a recycled pid
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    if not cwd.is_relative_to(task_dir):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    return True
