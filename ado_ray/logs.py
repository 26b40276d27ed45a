"""`ado logs RUN_ID REPO`: an agent attempt's stdout or stderr, as its runner wrote it.

Each attempt's logs are `<task dir>/logs/attempt-N.{stdout,stderr}.log` on the node that
ran it; the store has their paths (a session row per attempt that ended, the task's
directory for the one running). A capped log holds its head, one line
`[ado-ray: N bytes cut here (agent.log_cap_mb)]` and its tail; it is shown as it is, and
`--follow` keeps up with the runner cutting it back while the agent runs (`LogTail`).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ado_ray import api
from ado_ray.api import ConfigSources
from ado_ray.engine.lease import driver_gone
from ado_ray.errors import AdoError, UsageError
from ado_ray.models import RunStatus, TaskState
from ado_ray.store import RunRecord, Store, TaskRecord
from ado_ray.views import find_task

CHUNK = 1 << 16
MARKER = re.compile(rb"\[ado-ray: (\d+) bytes cut here \(agent\.log_cap_mb\)\]\n")
MARKER_WINDOW = 64 * 1024  # the runner ends the head at a line end at most this far back


@dataclass(frozen=True)
class Attempt:
    number: int
    stdout: Path
    stderr: Path
    ended: bool  # it has a session row; else it is the attempt the task is running


def attempts(store: Store, task: TaskRecord) -> list[Attempt]:
    """The task's agent attempts that have logs, oldest first: those that ended (session
    rows) and the one running now."""
    found = {}
    for session in store.sessions(task.task_id):
        stdout = Path(session.log_path)
        stem = session.log_path.removesuffix(".stdout.log")
        found[session.attempt] = Attempt(session.attempt, stdout, Path(stem + ".stderr.log"), True)
    running = task.state is TaskState.RUNNING or (
        task.state in (TaskState.COLLECTING, TaskState.PUBLISHING) and task.attempt not in found
    )
    if running and task.workspace and task.attempt >= 1 and task.attempt not in found:
        logs = Path(task.workspace) / "logs"
        found[task.attempt] = Attempt(
            task.attempt,
            logs / f"attempt-{task.attempt}.stdout.log",
            logs / f"attempt-{task.attempt}.stderr.log",
            False,
        )
    return [found[number] for number in sorted(found)]


def show(
    run_id: str,
    repo: str,
    sources: ConfigSources,
    out: IO[bytes],
    note: Callable[[str], None],
    attempt: int | None = None,
    stderr: bool = False,
    follow: bool = False,
    every_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Write the log to `out`; with `follow`, keep writing what the agent adds until the
    task ends. `note` gets what is said about it (which attempt, why following stopped)."""
    with api.run_store(api.load_config(sources), run_id) as store:
        run = store.get_run(run_id)
        task = find_task(run, store.list_tasks(run.run_id), repo)
        if follow:
            return _follow(store, run, task, attempt, stderr, out, note, every_s, sleep)
        chosen = _choose(run, task, attempts(store, task), attempt)
        path = chosen.stderr if stderr else chosen.stdout
        _check_here(store, run, task, chosen, path)
        with path.open("rb") as log:
            while data := log.read(CHUNK):
                out.write(data)
        out.flush()
        return 0


def _choose(run: RunRecord, task: TaskRecord, found: list[Attempt], number: int | None) -> Attempt:
    name = task.repo.name
    if not found:
        why = f"it is {task.state.value}"
        if task.error:
            why += f" ({task.failure_class.value + ': ' if task.failure_class else ''}{task.error})"
        follow = " (`--follow` waits for one)" if not task.state.terminal else ""
        raise AdoError(f"{name} in run {run.run_id} has no agent log: {why}{follow}")
    if number is None:
        return found[-1]
    for item in found:
        if item.number == number:
            return item
    have = ", ".join(str(item.number) for item in found)
    raise UsageError(f"{name} in run {run.run_id} has no attempt {number}; expected one of: {have}")


def _check_here(
    store: Store, run: RunRecord, task: TaskRecord, chosen: Attempt, path: Path
) -> None:
    """AdoError (exit 1) unless `path` is a file here, saying where it is."""
    if path.is_file():
        return
    which = f"the {'stderr' if path.name.endswith('.stderr.log') else 'stdout'} log of attempt "
    which += f"{chosen.number} of {task.repo.name}"
    if _task_dir_here(path):
        raise AdoError(
            f"{which} is not at {path}: its agent wrote none"
            + ("" if chosen.ended else " yet (`--follow` waits for it)")
        )
    runners = [c.runner for c in store.transitions(run.run_id) if c.task_id == task.task_id]
    runner = next((r for r in reversed(runners) if r), None)
    ran_on = f" (its runner: {runner})" if runner else ""
    raise AdoError(
        f"{which} is at {path}, which is not on this machine ({socket.gethostname()}): it "
        f"is on the node that ran the task{ran_on}, so run `ado logs` there; or its "
        "directory was removed (`ado gc`)"
    )


def _task_dir_here(log: Path) -> bool:
    """Whether the task's directory (`<task dir>/logs/<log>`) is on this machine."""
    return log.parent.parent.is_dir()


def _follow(
    store: Store,
    run: RunRecord,
    task: TaskRecord,
    number: int | None,
    stderr: bool,
    out: IO[bytes],
    note: Callable[[str], None],
    every_s: float,
    sleep: Callable[[float], None],
) -> int:
    """Write the log as it grows until the task ends (or, with `number`, that attempt):
    the latest attempt's, moving on to the next one when the task starts another."""
    cap = _cap_bytes(run.config)
    tail: LogTail | None = None
    current: Attempt | None = None
    waiting = False
    while True:
        found = attempts(store, task)
        pick = next((a for a in found if a.number == number), None) if number else None
        pick = pick if number else (found[-1] if found else None)
        if pick is not None and (current is None or pick.number != current.number):
            if tail is not None:
                _write(out, tail.read())  # the rest of the attempt before
            path = pick.stderr if stderr else pick.stdout
            if not _task_dir_here(path):
                _check_here(store, run, task, pick, path)  # raises: it is on another node
            if current is not None:
                note(f"attempt {pick.number} of {task.repo.name} started: {path}")
            tail = LogTail(path, cap)
        current = pick or current
        if tail is not None:
            _write(out, tail.read())
        if task.state.terminal or (number and current is not None and current.ended):
            if current is None:
                _choose(run, task, found, number)  # raises, saying why there is no log
            return 0
        if current is None and not waiting:
            what = f"attempt {number}" if number else "its agent"
            note(f"{task.repo.name} is {task.state.value}: waiting for {what} to start")
            waiting = True
        stopped = _stopped(store, run)
        if stopped:
            if tail is not None:
                _write(out, tail.read())
            note(f"stopped following: {stopped}")
            return 0
        sleep(every_s)
        task = next(t for t in store.list_tasks(run.run_id) if t.task_id == task.task_id)


def _stopped(store: Store, run: RunRecord) -> str | None:
    """Why the run will not move on (so neither will the task), or None."""
    current = store.get_run(run.run_id)
    if current.status is not RunStatus.RUNNING:
        return f"run {run.run_id} is {current.status.value} (ado resume {run.run_id})"
    if driver_gone(current) is not None:
        return f"run {run.run_id} has no live driver (ado resume {run.run_id})"
    return None


def _write(out: IO[bytes], data: bytes) -> None:
    if data:
        out.write(data)
        out.flush()


def _cap_bytes(config: dict[str, Any]) -> int | None:
    """The run's `agent.log_cap_mb` in bytes, as the runner computes it (None: no cap)."""
    value = (config.get("agent") or {}).get("log_cap_mb", 10.0)
    return None if value is None else max(1, int(float(value) * 1024 * 1024))


class LogTail:
    """What is new in a log since the last `read`, for `--follow`.

    The runner (`engine/sandbox.py` `CappedLog`) keeps the first half of the cap as it
    came; past the cap it writes one marker line after that head, and now and then moves
    the tail back behind it. So file offsets after the head do not stay put: this follows
    the agent's stream instead (the marker says how many bytes of it were dropped), and
    every byte of it is written once, or, if the runner dropped some before they were read,
    a marker line saying how many.
    """

    def __init__(self, path: Path, cap_bytes: int | None) -> None:
        self.path = path
        self.head = None if cap_bytes is None else cap_bytes // 2
        self.pos = 0  # bytes of the agent's stream written so far
        self.marker_at: int | None = None  # file offset of the marker's text, once there
        self.last = b"\n"  # the last byte written

    def read(self) -> bytes:
        try:
            log = self.path.open("rb")
        except FileNotFoundError:
            return b""
        with log:
            for _ in range(5):  # the runner may cut the log between two reads: read again
                cut = self._marker(log)
                data, pos = self._new(log, cut)
                if self._marker(log) == cut:
                    self.pos = pos
                    if data:
                        self.last = data[-1:]
                    return data
        return b""  # it keeps moving: next time

    def _marker(self, log: IO[bytes]) -> tuple[int, int, int] | None:
        """(head end, bytes dropped, file offset after the marker), or None before a cut."""
        if self.head is None:
            return None
        if self.marker_at is None and os.fstat(log.fileno()).st_size <= self.head:
            return None  # not past the head: never cut yet
        start = self.marker_at if self.marker_at is not None else max(0, self.head - MARKER_WINDOW)
        log.seek(start)
        window = log.read(self.head + 1 - start + 80 if self.marker_at is None else 80)
        found = MARKER.match(window) if self.marker_at is not None else MARKER.search(window)
        if found is None:
            return None
        text_at = start + found.start()
        self.marker_at = text_at
        head_end = self.head if text_at == self.head + 1 else text_at  # +1: a newline lead
        return head_end, int(found.group(1)), start + found.end()

    def _new(self, log: IO[bytes], cut: tuple[int, int, int] | None) -> tuple[bytes, int]:
        pos = self.pos
        if cut is None:
            log.seek(pos)
            data = log.read()
            return data, pos + len(data)
        head_end, dropped, after = cut
        parts = []
        if pos < head_end:
            log.seek(pos)
            parts.append(log.read(head_end - pos))
            pos = head_end
        tail_from = head_end + dropped  # the stream position of the byte at `after`
        if pos < tail_from:
            lead = b"" if (parts[-1][-1:] if parts else self.last) == b"\n" else b"\n"
            missed = tail_from - pos
            parts.append(lead + f"[ado-ray: {missed} bytes cut here (agent.log_cap_mb)]\n".encode())
            pos = tail_from
        log.seek(after + pos - tail_from)
        data = log.read()
        parts.append(data)
        return b"".join(parts), pos + len(data)
