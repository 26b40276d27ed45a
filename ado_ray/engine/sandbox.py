"""The agent's init: a small process between the runner and the agent, and its sandbox.

The runner starts this file (`python -I -S`, standard library only) as its child,
inside `unshare --pid --fork --kill-child --mount-proc` where the kernel allows it, and the
init starts the agent. The init

- reaps everything the agent starts (as PID 1 of a new PID namespace, or as a child
  subreaper without one), so when the agent exits, when the runner says so, or when the
  runner is gone (its end of the control socket closes), it kills every process the agent
  left, whatever they did to their session or process group;
- in a PID namespace, gives the agent a /proc of its own that shows only its own processes:
  the runner's and the driver's environments are out of sight. As root it also makes
  /proc/sys read-only (`kernel.core_pattern` would run a program outside) and drops the
  capabilities that could undo that or read memory (umount, ptrace, raw I/O, BPF);
- copies the agent's stdout and stderr into the log files, keeping at most `cap` bytes of
  each: the head and the tail, with one line where the middle was cut saying how much;
- reports the agent's own exit status, or why it could not be executed.

Control socket, runner → init: `t` SIGTERM every process of the agent; `k` kill them all and
exit; end of file (the runner is gone) is `k`. Init → runner, one line each: `started`,
`error <errno>` (the program could not be executed), `exit <returncode>` (negative: killed
by that signal) or `killed` (the agent was still running when told to stop).
"""

from __future__ import annotations

# Every agent start pays for what the init imports (it is its own interpreter): only what
# it needs, nothing heavy (no typing, subprocess, selectors, shutil, contextlib). The
# runner side imports its own inside its functions.
import ctypes
import errno
import functools
import os
import select
import signal
import stat
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import NoReturn

_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_SET_CHILD_SUBREAPER = 36
# What a root agent could use to see past its /proc or read another process's memory:
# dac_read_search (open_by_handle_at), sys_module, sys_rawio (/proc/kcore, /dev/mem),
# sys_ptrace, sys_admin (umount, mount, setns), mac_override, mac_admin, perfmon, bpf,
# checkpoint_restore.
_DROPPED_CAPS = (2, 16, 17, 19, 21, 32, 33, 38, 39, 40)
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 32, 4096, 16384
_MNT_DETACH = 2
_CHUNK = 64 * 1024
_FINISH_S = 10.0  # killing, reaping and draining what is left, at most


# --- runner side -------------------------------------------------------------------------


class Probe:
    """What this host allows: the namespace command that works, or why there is none."""

    __slots__ = ("prefix", "reason")

    def __init__(self, prefix: tuple[str, ...], reason: str = "") -> None:
        self.prefix = prefix  # () when no sandbox is possible
        self.reason = reason

    def __repr__(self) -> str:
        return f"Probe(prefix={self.prefix!r}, reason={self.reason!r})"


@functools.cache
def probe() -> Probe:
    """Try each way to start a PID namespace with its own /proc, once per process."""
    import shutil
    import subprocess

    unshare = shutil.which("unshare")
    if unshare is None:
        return Probe((), "no `unshare` on PATH (util-linux)")
    flags = ("--pid", "--fork", "--kill-child", "--mount-proc")
    candidates: list[tuple[str, ...]] = [(unshare, *flags)] if os.geteuid() == 0 else []
    candidates += [
        (unshare, "--user", "--map-current-user", *flags),
        (unshare, "--user", "--map-root-user", *flags),
    ]
    reason = ""
    for prefix in candidates:
        try:
            done = subprocess.run(
                [*prefix, "true"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"`unshare` failed: {exc}"
            continue
        if done.returncode == 0:
            return Probe(prefix)
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = said[-1] if said else f"`unshare` exited with {done.returncode}"
    return Probe((), reason)


def init_command(
    argv: Sequence[str], namespace: Sequence[str], ctl_fd: int, cap_bytes: int | None
) -> list[str]:
    """The command that runs `argv` under this init, inside `namespace` (an unshare
    prefix from `probe`, or () for none), reporting on the socket `ctl_fd`."""
    # Imported, not run as a script: a script is compiled on every start, a module's
    # bytecode is cached. Appended to the path, so no standard module can be shadowed.
    here = os.path.dirname(os.path.abspath(__file__))
    boot = f"import sys; sys.path.append({here!r}); from sandbox import main; main(sys.argv[1:])"
    init = [sys.executable, "-I", "-S", "-c", boot, str(ctl_fd)]
    return [*namespace, *init, str(cap_bytes or 0), "ns" if namespace else "-", "--", *argv]


# --- init side (standard library only: this runs as a script) ------------------------------


class CappedLog:
    """One output stream written to `fd`, of which at most `cap` bytes are kept (0: all).

    The first half of the cap is kept as it came; after it the file holds a moving tail
    of up to twice the other half, cut back to that half (at a line start when there is one
    near) whenever it grows past, and once more at the end. Nothing is buffered: the file
    grows with the output, so stall detection can watch it.
    """

    def __init__(self, fd: int, cap: int) -> None:
        info = os.fstat(fd)
        self.regular = stat.S_ISREG(info.st_mode)  # else (a pipe, a tty): written, not capped
        self.fd, self.cap = fd, cap if self.regular else 0
        self.head = self.cap // 2
        self.keep = self.cap - self.head
        self.base = info.st_size
        self.received = self.end = 0  # bytes of the stream; bytes in the file
        self.head_end = self.tail_start = self.head
        self.lead = b""  # a newline before the marker when the head ends mid-line
        self.cut = False

    def write(self, data: bytes) -> None:
        if not self.regular:
            _pwrite(self.fd, data, None)
            return
        _pwrite(self.fd, data, self.base + self.end)
        self.end += len(data)
        self.received += len(data)
        if self.cap and self.end - self.tail_start > 2 * self.keep:
            self._compact()

    def close(self) -> None:
        if self.cap and self.end - self.tail_start > self.keep:
            self._compact()

    def _compact(self) -> None:
        fd, base = self.fd, self.base
        if not self.cut:  # end the head after its last line, if one ends near
            size = min(_CHUNK, self.head)
            window = os.pread(fd, size, base + self.head - size)
            newline = window.rfind(b"\n")
            if newline >= 0:
                self.head_end = self.head - size + newline + 1
            elif self.head:
                self.lead = b"\n"
        src = self.end - self.keep
        window = os.pread(fd, min(_CHUNK, self.keep), base + src)
        newline = window.find(b"\n")
        if 0 <= newline < len(window) - 1:  # start the tail at a line
            src += newline + 1
        kept = self.end - src
        dropped = self.received - self.head_end - kept
        marker = self.lead + f"[ado-ray: {dropped} bytes cut here (agent.log_cap_mb)]\n".encode()
        dst = self.head_end + len(marker)
        if dst > src:  # a marker longer than the cut (tiny caps): move the tail in one go
            tail = os.pread(fd, kept, base + src)
            _pwrite(fd, marker + tail, base + self.head_end)
        else:  # forward, chunk by chunk: writes never overtake reads
            _pwrite(fd, marker, base + self.head_end)
            for offset in range(0, kept, _CHUNK):
                chunk = os.pread(fd, min(_CHUNK, kept - offset), base + src + offset)
                _pwrite(fd, chunk, base + dst + offset)
        os.ftruncate(fd, base + dst + kept)
        self.end, self.tail_start, self.cut = dst + kept, dst, True


def _pwrite(fd: int, data: bytes, offset: int | None) -> None:
    """All of `data` at `offset` (None: at the file's position)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[written:]
        offset = None if offset is None else offset + written


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def descendants(root: int) -> Iterator[int]:
    """Every live descendant of `root` (by a scan of /proc: no `children` files needed)."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] not in (b"Z", b"X"):
                parents.setdefault(int(fields[1]), []).append(int(name))
    todo = list(parents.get(root, ()))
    while todo:
        pid = todo.pop()
        yield pid
        todo.extend(parents.get(pid, ()))


def _proc_mounts_elsewhere() -> list[bytes]:
    """Mount points of procfs other than /proc and below it (a host's /proc bound in)."""
    points = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index(b"-") + 1]
            point = fields[4].decode("unicode_escape").encode("latin-1")  # \040 and co.
            if fstype == b"proc" and point != b"/proc" and not point.startswith(b"/proc/"):
                points.append(point)
    return points


class Init:
    """The agent's parent and reaper (see the module docstring)."""

    def __init__(self, ctl: int, cap: int, namespace: bool) -> None:
        self.ctl, self.namespace = ctl, namespace
        self.libc = _libc()
        self.logs = [CappedLog(1, cap), CappedLog(2, cap)]
        self.pipes: dict[int, CappedLog] = {}
        self.poller = select.poll()
        self.watched: set[int] = set()  # the descriptors registered with the poller
        self.agent = 0
        self.status: int | None = None
        self.stop = False

    def run(self, argv: list[str]) -> NoReturn:
        if self.namespace:
            if os.getuid() == 0:
                self.harden()
        else:
            self.libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)
        self.watch(wake_r)
        self.watch(self.ctl)
        self.start(argv)
        try:
            while self.status is None and not self.stop:
                for fd in self.ready(1.0):
                    if fd in self.pipes:
                        self.pump(fd)
                    elif fd == self.ctl:
                        self.command()
                    elif self.signalled(wake_r):
                        self.signal_all(signal.SIGTERM)
                self.reap()
        except Exception as exc:  # a bug of ours: the agent must not outlive it
            try:  # noqa: SIM105 (no contextlib here: see the imports)
                self.logs[1].write(f"ado-ray sandbox: {type(exc).__name__}: {exc}\n".encode())
            except OSError:
                pass
        self.finish()

    def watch(self, fd: int) -> None:
        self.poller.register(fd, select.POLLIN)
        self.watched.add(fd)

    def unwatch(self, fd: int) -> None:
        self.poller.unregister(fd)
        self.watched.discard(fd)

    def ready(self, timeout_s: float) -> list[int]:
        """The watched descriptors with something to read (or closed), within `timeout_s`."""
        try:
            return [fd for fd, _ in self.poller.poll(timeout_s * 1000)]
        except InterruptedError:  # pragma: no cover - Python retries poll() by itself
            return []

    def start(self, argv: list[str]) -> None:
        """Start the agent: fork, then exec in the child (what `subprocess.Popen` does, less
        its import): stdin /dev/null, stdout and stderr into our pipes, its own session,
        no other descriptor of ours, default signal dispositions; it dies with this init
        and refuses to start if the init is gone. An exec that fails comes back as its
        errno through a close-on-exec pipe."""
        pipes = [os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)]
        failed_r, failed_w = os.pipe2(os.O_CLOEXEC)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        me = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: only async-signal-safe work until exec, then exec or die
            try:
                self.libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != me:
                    os._exit(1)
                os.setsid()
                for fd, target in ((devnull, 0), (pipes[0][1], 1), (pipes[1][1], 2)):
                    os.dup2(fd, target)  # dup2'd descriptors are inheritable
                os.closerange(3, failed_w)
                os.closerange(failed_w + 1, os.sysconf("SC_OPEN_MAX"))
                for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # ignored by Python at start
                    signal.signal(sig, signal.SIG_DFL)
                os.execvp(argv[0], argv)
            except OSError as exc:
                os.write(failed_w, str(exc.errno or errno.ENOEXEC).encode())
            finally:
                os._exit(127)
        os.close(failed_w)
        os.close(devnull)
        for _, write in pipes:
            os.close(write)
        said = b""
        while chunk := os.read(failed_r, 32):  # end of file: the exec happened
            said += chunk
        os.close(failed_r)
        if said:
            os.waitpid(pid, 0)
            self.tell(f"error {int(said)}")
            os._exit(127)
        self.agent = pid
        for (read, _), log in zip(pipes, self.logs, strict=True):
            os.set_blocking(read, False)
            self.pipes[read] = log
            self.watch(read)
        self.tell("started")

    def harden(self) -> None:
        """As root in the namespace: no other procfs in sight, /proc/sys read-only, and
        none of the capabilities that would undo either."""
        libc, problems = self.libc, []
        for point in _proc_mounts_elsewhere():
            if libc.umount2(point, _MNT_DETACH) != 0:
                problems.append(f"umount {point.decode()}: {os.strerror(ctypes.get_errno())}")
        for path in (b"/proc/sys", b"/proc/sysrq-trigger"):
            if not os.path.exists(path):
                continue
            if (
                libc.mount(path, path, None, _MS_BIND | _MS_REC, None) != 0
                or libc.mount(None, path, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None) != 0
            ):
                problems.append(f"read-only {path.decode()}: {os.strerror(ctypes.get_errno())}")
        for cap in _DROPPED_CAPS:
            failed = libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
            if failed and ctypes.get_errno() != errno.EINVAL:  # EINVAL: a kernel without it
                problems.append(f"drop capability {cap}: {os.strerror(ctypes.get_errno())}")
        if problems:
            self.logs[1].write(f"ado-ray sandbox: {'; '.join(problems)}\n".encode())

    def pump(self, fd: int) -> None:
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:
            return
        if data:
            self.pipes[fd].write(data)
            return
        self.unwatch(fd)
        os.close(fd)
        del self.pipes[fd]

    def signalled(self, wake_r: int) -> bool:
        """Whether SIGTERM, SIGINT or SIGHUP came (SIGCHLD only wakes the loop up)."""
        try:
            signals = os.read(wake_r, 512)
        except BlockingIOError:
            return False
        return any(s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) for s in signals)

    def command(self) -> None:
        try:
            data = os.read(self.ctl, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if b"t" in data:
            self.signal_all(signal.SIGTERM)
        if b"k" in data or not data:  # told to, or the runner is gone
            self.stop = True
        if not data:
            self.unwatch(self.ctl)

    def tell(self, line: str) -> None:
        try:  # noqa: SIM105
            os.write(self.ctl, f"{line}\n".encode())
        except OSError:  # the runner is gone: nobody to tell
            pass

    def signal_all(self, sig: signal.Signals) -> None:
        """Every process the agent started, wherever it moved to (this init excepted)."""
        targets = [-1] if self.namespace else list(descendants(os.getpid()))
        for pid in targets:
            try:  # noqa: SIM105
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def reap(self) -> bool:
        """Collect every child that has exited; False when none is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.agent:
                self.status = os.waitstatus_to_exitcode(status)

    def finish(self) -> NoReturn:
        for fd in [fd for fd in self.watched if fd not in self.pipes]:
            self.unwatch(fd)  # from here on, only the output matters
        deadline = time.monotonic() + _FINISH_S
        while time.monotonic() < deadline:
            self.signal_all(signal.SIGKILL)
            if not self.reap():
                break
            time.sleep(0.01)
        while self.pipes and time.monotonic() < deadline:  # nobody writes any more: drain
            for fd in self.ready(0.1):
                if fd in self.pipes:
                    self.pump(fd)
        for log in self.logs:
            log.close()
        self.tell("killed" if self.status is None else f"exit {self.status}")
        code = self.status if self.status is not None else 128 + signal.SIGKILL
        os._exit(code if code >= 0 else 128 - code)


def main(args: list[str]) -> NoReturn:
    ctl, cap, namespace, separator, *argv = args
    if separator != "--" or not argv:
        sys.exit("usage: sandbox.py CTL_FD CAP_BYTES ns|- -- PROGRAM [ARG...]")
    os.set_blocking(int(ctl), False)
    Init(int(ctl), int(cap), namespace == "ns").run(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
