"""Supervised agent processes: an allow-listed environment, a sandbox, timeouts, capped logs.

An agent runs under a small init of ours (`sandbox.py`) — in a PID namespace with its own
/proc where the kernel allows it — with stdin closed and its output copied into log files
capped at `log_cap_mb` each. `run_supervised` waits on it without blocking the event loop
and, whatever way the wait ends (exit, hard timeout, stall, cancellation, or the death of
this process), leaves no process the agent started alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import functools
import hashlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ado_ray.engine.sandbox import descendants, init_command, probe
from ado_ray.errors import AgentError
from ado_ray.models import ProcessExit

log = logging.getLogger(__name__)

SANDBOX_MODES = ("auto", "pid", "none")
DEFAULT_LOG_CAP_MB = 10.0
MARK_ENV = "ADO_AGENT_MARK"  # in every agent's environment: finds its processes after a crash
_KILL_WAIT_S = 5.0  # for the init to kill, reap and report, once told to
_NOT_EXECUTABLE = {errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.EISDIR}


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


def agent_mark(task_dir: Path) -> str:
    """The value of `ADO_AGENT_MARK` for a task's agents (the same on every attempt)."""
    return hashlib.sha256(str(task_dir.resolve()).encode()).hexdigest()[:24]


def namespace_for(mode: str) -> tuple[str, ...]:
    """The sandbox command prefix for `agent.sandbox` on this host; () runs without one."""
    if mode not in SANDBOX_MODES:
        raise AgentError(f"agent.sandbox is {mode!r}; expected one of {', '.join(SANDBOX_MODES)}")
    if mode == "none":
        return ()
    found = probe()
    if found.prefix:
        return found.prefix
    if mode == "pid":
        raise AgentError(
            f"agent.sandbox is 'pid' but this host cannot start one ({found.reason}); expected "
            "root (CAP_SYS_ADMIN) or user namespaces, or set agent.sandbox: auto or none"
        )
    _warn_unsandboxed(found.reason)
    return ()


@functools.cache
def _warn_unsandboxed(reason: str) -> None:
    log.warning(
        "agent sandbox unavailable on %s (%s): agents run without a PID namespace and can "
        "read, through /proc, the environment of every process of uid %d here, this one "
        "included; only the allow-list (agent.env_allow) limits what they are given. "
        "Allow user namespaces or CAP_SYS_ADMIN to sandbox them, or set agent.sandbox: none",
        socket.gethostname(),
        reason,
        os.geteuid(),
    )


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(pgid, sig)


def _output_state(*paths: Path) -> list[tuple[int, int]]:
    """Size and modification time of each file: any write changes one of them (the size
    alone does not do: a capped log is cut back now and then)."""
    state = []
    for path in paths:
        try:
            info = path.stat()
        except FileNotFoundError:
            state.append((-1, 0))
        else:
            state.append((info.st_size, info.st_mtime_ns))
    return state


def _tell(ctl: socket.socket, command: bytes) -> None:
    with contextlib.suppress(OSError):  # the init is gone already
        ctl.send(command)


def _report(ctl: socket.socket) -> list[str]:
    """The lines the init has sent so far."""
    data = b""
    with contextlib.suppress(OSError):  # BlockingIOError: nothing more for now
        while chunk := ctl.recv(4096):
            data += chunk
    return data.decode("utf-8", "replace").splitlines()


def _finished(report: Sequence[str]) -> bool:
    """Whether the init saw the end through (it kills what is left before it says so)."""
    return any(line == "killed" or line.startswith(("exit ", "error ")) for line in report)


def _kill_leftovers(proc: subprocess.Popen[bytes], mark: str | None) -> None:
    """The init did not see it through: kill its group (in a PID namespace, that is every
    process of the agent), then whatever carries the agent's mark."""
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_KILL_WAIT_S)  # SIGKILL cannot be caught: this takes milliseconds
    if mark is not None:
        with contextlib.suppress(AgentError):  # unkillable: the next attempt refuses to start
            kill_marked(mark, within_s=_KILL_WAIT_S)


async def _stop(
    proc: subprocess.Popen[bytes],
    ctl: socket.socket,
    grace_s: float,
    poll_s: float,
    mark: str | None,
) -> None:
    """SIGTERM every process of the agent, give the agent `grace_s` to exit, then kill them
    all. The killing happens even if this coroutine is cancelled during the grace."""
    _tell(ctl, b"t")
    try:
        deadline = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(min(poll_s, 0.05))
    finally:
        _tell(ctl, b"k")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_KILL_WAIT_S)  # the init kills, reaps and exits: milliseconds
        if not _finished(_report(ctl)):
            _kill_leftovers(proc, mark)


class _ExitWatch:
    """Wakes the supervising loop as soon as the init exits (a pidfd in the event loop),
    instead of at its next poll: an agent's end is seen in microseconds, not up to `poll_s`
    late. Without pidfds (Linux before 5.3), a plain sleep."""

    def __init__(self, pid: int) -> None:
        try:
            self.fd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfd_open here: poll
            self.fd = None

    async def wait(self, timeout_s: float) -> None:
        """Sleep up to `timeout_s`, less if the process exits first (or has exited)."""
        if self.fd is None:
            await asyncio.sleep(timeout_s)
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def exited() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(self.fd, exited)
        try:
            await asyncio.wait([done], timeout=timeout_s)
        finally:
            loop.remove_reader(self.fd)

    def __enter__(self) -> _ExitWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _start(
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    stdout_path: Path,
    stderr_path: Path,
    namespace: Sequence[str],
    cap_bytes: int | None,
) -> tuple[subprocess.Popen[bytes], socket.socket]:
    if not argv:
        raise AgentError("agent command is empty; expected a program and its arguments")
    if not cwd.is_dir():
        raise AgentError(f"working directory {cwd} does not exist; expected the task's checkout")
    for path in (stdout_path, stderr_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    ours, theirs = socket.socketpair()  # ours is not inherited by any other child
    ours.setblocking(False)
    try:
        # read and write: the init reads back what it keeps of a log past its cap
        with open(stdout_path, "w+b") as stdout, open(stderr_path, "w+b") as stderr:
            proc = subprocess.Popen(
                init_command(argv, namespace, theirs.fileno(), cap_bytes),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its own session, so its own process group
                pass_fds=(theirs.fileno(),),
            )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return proc, ours


def _returncode(
    proc: subprocess.Popen[bytes], report: Sequence[str], argv: Sequence[str], stderr_path: Path
) -> int | None:
    """The agent's own exit status, as its init reported it."""
    for line in report:
        word, _, value = line.partition(" ")
        if word == "error":
            code = int(value)
            if code in _NOT_EXECUTABLE:
                raise AgentError(
                    f"agent command {argv[0]!r} not found (or not executable); "
                    "expected a program on PATH or a path"
                )
            raise OSError(code, f"cannot execute {argv[0]!r}: {os.strerror(code)}")
        if word == "exit":
            return int(value)
    if "started" not in report:
        with contextlib.suppress(OSError):
            said = stderr_path.read_text(errors="replace").strip().splitlines()[-1:]
        raise OSError(
            f"the agent's sandbox exited with {proc.returncode} before it started the agent"
            + (f": {said[0]}" if said else "")
        )
    return proc.returncode  # the init itself was killed: the agent's status is lost


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
    sandbox: str = "auto",
    log_cap_mb: float | None = DEFAULT_LOG_CAP_MB,
    mark: str | None = None,
    stop_when: Callable[[Path, Path], bool] | None = None,
) -> ProcessExit:
    """Run `argv` (no shell) and wait for it, killing every process it started on a hard
    timeout, on a stall (stdout + stderr have not been written for `stall_timeout_s`), when
    it exits, when this coroutine is cancelled (then CancelledError is re-raised) and when
    this process dies. `returncode` is the agent's own; None when we killed the agent.

    `sandbox` is `auto` (a PID namespace where the host allows one, else a warning), `pid`
    (one, or AgentError) or `none`. Each log keeps at most `log_cap_mb` (None: all).
    `mark` goes into the agent's environment as ADO_AGENT_MARK (see `kill_marked`).
    `on_start(pid)` is told the id of the process group the runner started (the sandbox),
    e.g. to record it so that a later run can kill an agent whose runner died.
    `stop_when(stdout_path, stderr_path)`, asked at every poll, stops the agent when True
    (as a timeout does, but neither `timed_out` nor `stalled`: the adapter says why)."""
    namespace = await asyncio.to_thread(namespace_for, sandbox)
    if mark is not None:
        env = {**env, MARK_ENV: mark}
    cap = None if log_cap_mb is None else max(1, int(log_cap_mb * 1024 * 1024))
    start = time.monotonic()
    proc, ctl = _start(argv, cwd, env, stdout_path, stderr_path, namespace, cap)
    deadline = start + timeout_s
    last_state, last_growth = _output_state(stdout_path, stderr_path), start
    timed_out = stalled = stopped = False
    exited = _ExitWatch(proc.pid)
    with ctl, exited:
        try:
            if on_start is not None:
                on_start(proc.pid)
            while proc.poll() is None:
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                if stall_timeout_s is not None:
                    state = _output_state(stdout_path, stderr_path)
                    if state != last_state:
                        last_state, last_growth = state, now
                    elif now - last_growth >= stall_timeout_s:
                        stalled = True
                        break
                if stop_when is not None and stop_when(stdout_path, stderr_path):
                    stopped = True
                    break
                await exited.wait(max(0.0, min(poll_s, deadline - now)))
        except BaseException:  # CancelledError (Ctrl-C in the runner), or anything unexpected
            await _stop(proc, ctl, kill_grace_s, poll_s, mark)
            raise
        if timed_out or stalled or stopped:
            await _stop(proc, ctl, kill_grace_s, poll_s, mark)
            returncode = None
        else:
            report = _report(ctl)
            if not _finished(report):
                _kill_leftovers(proc, mark)
            returncode = _returncode(proc, report, argv, stderr_path)
    return ProcessExit(
        returncode=returncode,
        timed_out=timed_out,
        stalled=stalled,
        duration_s=time.monotonic() - start,
        stdout_path=str(stdout_path),
        stderr_path=str(stderr_path),
    )


# --- stale agents ------------------------------------------------------------------------
# An agent's init kills everything when its runner dies. Should the init die too (killed
# with it, or by the OOM killer), a resume still finds what is left of the task's agents:
# by the process group in the pid file, everything below it, and the mark in their
# environment. A checkout is rebuilt only when none of them is left.

PIDFILE = "agent.pid"


def write_pidfile(task_dir: Path, pid: int) -> None:
    (task_dir / PIDFILE).write_text(f"{socket.gethostname()} {pid}\n", encoding="utf-8")


def _recorded_group(task_dir: Path) -> int | None:
    """The process group named in the task's pid file, if it is still this task's."""
    try:
        host, pid_text = (task_dir / PIDFILE).read_text(encoding="utf-8").split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    (task_dir / PIDFILE).unlink(missing_ok=True)
    if host != socket.gethostname():
        return None
    try:  # the process's working directory proves it is ours and not a recycled pid
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    return pid if cwd.is_relative_to(task_dir.resolve()) else None


def _marked(needle: bytes) -> list[int]:
    """Live processes (this one excepted) with `needle` as one entry of their environment."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(int(name))
    return found


def kill_marked(mark: str, within_s: float = 10.0) -> bool:
    """SIGKILL every process whose environment has ADO_AGENT_MARK=`mark` until none is left;
    True if there were any. Raises AgentError if some outlive `within_s`."""
    needle = f"{MARK_ENV}={mark}".encode()
    deadline = time.monotonic() + within_s
    seen = False
    while pids := _marked(needle):
        if time.monotonic() >= deadline:
            raise AgentError(
                f"processes {', '.join(map(str, pids))} of an earlier agent of this task "
                f"outlived SIGKILL for {within_s:g}s; expected none before its checkout is "
                "used again (see them with `ps -o pid,stat,args -p PID`)"
            )
        seen = True
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    return seen


def kill_stale_agent(task_dir: Path) -> bool:
    """Kill every process left of this task's earlier agents; True if there were any.
    Raises AgentError if some cannot be killed (the checkout must not be shared)."""
    group = _recorded_group(task_dir)
    if group is not None:
        victims = [group, *descendants(group)]
        _signal_group(group, signal.SIGKILL)  # in a PID namespace, this kills all of it
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and Path(f"/proc/{group}").exists():
            time.sleep(0.05)
    return kill_marked(agent_mark(task_dir)) or group is not None
