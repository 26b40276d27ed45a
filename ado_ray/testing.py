"""Deterministic crash points, for tests of exactly-once behaviour (never set in production).

`ADO_TEST_CRASH_AFTER=<step>` kills the process that runs a task with SIGKILL right after
the task durably reached `<step>`: one of `prepared`, `agent_done`, `committed`, `pushed`,
`published`. With `--no-ray` that process is the driver; with Ray it is the runner.
`ADO_TEST_CRASH_AFTER=pushed:3` crashes at the third task to get there (in this process),
so a test can kill a run part-way through. `ADO_TEST_CRASH_AFTER=planned` kills the
driver once it has planned the run (created or loaded it, read its first tasks to hand
out) and before it starts its backend: bench/scale.py measures planning that way.

This is the one place outside `config.py` that reads the environment: it is a test hook,
not a setting, and it must work in every process a run starts.
"""

from __future__ import annotations

import os
import signal
import threading

CRASH_ENV = "ADO_TEST_CRASH_AFTER"
STEPS = ("prepared", "agent_done", "committed", "pushed", "published")
DRIVER_STEPS = ("planned",)  # reached by the driver, not by a task

_reached: dict[str, int] = {}
_lock = threading.Lock()


def crash_requested(step: str) -> bool:
    """True if reaching `step` now must kill this process (counts each call)."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return False
    name, _, nth = wanted.partition(":")
    if name != step:
        return False
    with _lock:
        _reached[step] = _reached.get(step, 0) + 1
        return _reached[step] == (int(nth) if nth else 1)


def crash() -> None:
    """Die at once, as `kill -9` would: no cleanup, no flush, no exit handlers."""
    os.kill(os.getpid(), signal.SIGKILL)
