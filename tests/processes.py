"""Finding a test's processes from outside, by a token of their own in their argv or
environment (inside a sandbox an agent's pids are its PID namespace's, not the host's)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


def processes_with(token: str) -> list[int]:
    """Live processes (zombies excepted), this one excepted, with `token` in their argv
    or their environment."""
    found, needle = [], token.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            state = Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            seen = Path(f"/proc/{name}/cmdline").read_bytes()
            seen += Path(f"/proc/{name}/environ").read_bytes()
        except (OSError, IndexError):
            continue
        if needle in seen and state not in (b"Z", b"X"):
            found.append(int(name))
    return found


def gone(token: str, within_s: float = 10.0) -> bool:
    """True once no process carries `token` (waits up to `within_s`)."""
    deadline = time.monotonic() + within_s
    while processes_with(token):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def kill_all_with(token: str) -> None:
    for pid in processes_with(token):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def token_scope() -> Iterator[str]:
    """A token for a test's processes; should the test fail, they are killed after it."""
    value = f"adotest-{uuid.uuid4().hex}"
    try:
        yield value
    finally:
        kill_all_with(value)
