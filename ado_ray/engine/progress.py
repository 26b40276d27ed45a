"""Progress of a run: a live panel on a terminal, plain lines anywhere else.

The driver calls `start` with the run (and its counts), then `task_started` / `task_done`
as tasks come and go, `update` with the store's counts per state about once a second,
`note` for anything the user must know now (an interruption, an unreachable store), and
`stop` with the run as it ended.
`attach(store)` before the run (api.py does it) lets the display read the run's board
from the store once a second in a thread of its own (panel.py: each task's state, so
"running" means agents running, how long each has been at it, the ETA); `close()` ends
that thread, whatever way the run ended.

Counts are the store's, with the outcomes the driver hears of first-hand laid over them
until the store's next read has them too, so they always add up to the total. What is kept
does not grow with the run: counts, the tasks in flight, and the outcomes heard since the
last read of the store (without a store, the latest `HEARD_KEPT`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import IO

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from ado_ray.engine import panel
from ado_ray.engine.panel import Board, BoardReader
from ado_ray.engine.spec import TaskSpec
from ado_ray.errors import StoreError
from ado_ray.models import RunStatus, TaskOutcome, TaskState
from ado_ray.store import RunRecord, Store

STATE_ORDER = [state.value for state in TaskState]
POLL_S = 1.0
HEARD_KEPT = 200  # outcomes heard first-hand kept without a store to read


class Progress:
    """Bookkeeping shared by every display; renders nothing itself."""

    def __init__(self) -> None:
        self.total = 0
        self.finished = 0  # terminal before or during this session
        self.finished_here = 0  # during this session
        self.inflight: dict[str, str] = {}  # task id → repo name, handed to the backend
        self.started_at = time.monotonic()
        self.store: Store | None = None
        self.board: Board | None = None
        self.board_read_at = 0.0  # monotonic time the board's read began
        # outcomes heard first-hand: task id → (state, result, when, repo name)
        self.heard: dict[str, tuple[TaskState, str | None, float, str]] = {}
        self.store_counts: dict[str, int] | None = None  # from `update`, without a store
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.poller: threading.Thread | None = None
        self.reader: BoardReader | None = None

    def attach(self, store: Store) -> None:
        """Read the run's board from `store` while it runs (from `start` to `close`)."""
        self.store = store

    def start(self, run: RunRecord) -> None:
        """`run` with its counts (`Store.get_run`)."""
        self.run = run
        self.total = sum(run.counts.values())
        self.finished = sum(n for state, n in run.counts.items() if TaskState(state).terminal)
        self.started_at = time.monotonic()
        now = datetime.now(UTC)
        with self.lock:  # the driver has just set the run running
            self.board = Board(replace(run, status=RunStatus.RUNNING), [], now)
            self.board_read_at = time.monotonic()
        if self.store is not None and self.poller is None:
            self.reader = BoardReader(self.store, run.run_id, recent=0)
            self.closing.clear()
            self.poller = threading.Thread(target=self._poll, name="ado-progress", daemon=True)
            self.poller.start()

    def task_started(self, spec: TaskSpec) -> None:
        self.inflight[spec.task_id] = spec.repo.name

    def task_done(self, outcome: TaskOutcome) -> None:
        name = self.inflight.pop(outcome.task_id, outcome.repo_key)
        if outcome.state.terminal:
            self.finished += 1
            self.finished_here += 1
        with self.lock:
            self.heard.pop(outcome.task_id, None)
            self.heard[outcome.task_id] = (outcome.state, result(outcome), time.monotonic(), name)
            if self.reader is None and len(self.heard) > HEARD_KEPT:
                del self.heard[next(iter(self.heard))]  # the oldest
        self.show_outcome(name, outcome)

    def update(self, counts: dict[str, int]) -> None:
        self.store_counts = counts

    def view(self) -> Board:
        """The board as last read, with what the driver heard since laid over it."""
        with self.lock:
            board = self.board
            assert board is not None, "start() first"
            newer = {
                task_id: (state, text)
                for task_id, (state, text, at, _) in self.heard.items()
                if at >= self.board_read_at
            }
            names = {task_id: heard[3] for task_id, heard in self.heard.items()}
        board = replace(board, now=datetime.now(UTC))
        return board.with_outcomes(newer, names)

    @property
    def counts(self) -> dict[str, int]:
        if self.reader is None and self.store_counts is not None:
            return self.store_counts
        return self.view().counts

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at

    def eta_s(self) -> float | None:
        board = self.view()
        eta = board.eta_s()
        if eta is None and self.finished_here and board.done < board.total:
            # Before the store has durations (or without one): this session's rate.
            return self.elapsed_s() / self.finished_here * (board.total - board.done)
        return eta

    def summary(self) -> str:
        board = self.view()
        counts = self.counts
        done = sum(n for state, n in counts.items() if TaskState(state).terminal)
        text = f"{done}/{self.total} done · elapsed {panel.duration(self.elapsed_s())}"
        eta = self.eta_s()
        if eta is not None and done < self.total and board.run.status is RunStatus.RUNNING:
            text += f", eta {panel.duration(eta)}"
        return text + " · " + panel.counts_text(counts)

    def close(self) -> None:
        """End the store reads (idempotent); the run is over, however it ended."""
        self.closing.set()
        if self.poller is not None:
            self.poller.join(timeout=10)
            self.poller = None

    def final_board(self, run: RunRecord) -> Board:
        """The run's board at its end: from the store, else `run`'s counts and the
        outcomes heard last."""
        self.close()
        if self.reader is not None:
            with contextlib.suppress(StoreError):  # unreachable: what we know is shown
                board = self.reader.read(final=True)
                with self.lock:
                    self.board, self.board_read_at = board, time.monotonic()
                return self.view()
        now = datetime.now(UTC)
        with self.lock:
            rows = [
                panel.Row(task_id, name, state, 0, since=now, result=text)
                for task_id, (state, text, _, name) in self.heard.items()
            ]
        return Board(run, rows, now)

    def _poll(self) -> None:
        assert self.reader is not None
        while not self.closing.is_set():
            began = time.monotonic()
            try:
                board = self.reader.read()
            except StoreError:
                board = None  # the driver's notes say so; keep showing the last board
            if board is not None and not self.closing.is_set():
                with self.lock:
                    self.board, self.board_read_at = board, began
                    self.heard = {  # the older ones are in this read
                        task_id: heard for task_id, heard in self.heard.items() if heard[2] >= began
                    }
                self.refresh()
            self.closing.wait(POLL_S)

    # rendering hooks
    def show_outcome(self, name: str, outcome: TaskOutcome) -> None: ...

    def note(self, message: str) -> None: ...

    def refresh(self) -> None: ...

    def stop(self, run: RunRecord) -> None: ...


class LineProgress(Progress):
    """One line per finished task, a summary every `every_s` seconds, a table at the end;
    for logs and CI."""

    def __init__(self, stream: IO[str], every_s: float = 10.0) -> None:
        super().__init__()
        self.stream = stream
        self.every_s = every_s
        self.last_summary = time.monotonic()

    def show_outcome(self, name: str, outcome: TaskOutcome) -> None:
        self._print(f"[{self.finished}/{self.total}] {describe(name, outcome)}")

    def update(self, counts: dict[str, int]) -> None:
        super().update(counts)
        if time.monotonic() - self.last_summary >= self.every_s:
            self.last_summary = time.monotonic()
            self._print(self.summary())

    def note(self, message: str) -> None:
        self._print(message)

    def stop(self, run: RunRecord) -> None:
        board = self.final_board(run)
        self.store_counts = board.counts
        self._print(self.summary())
        Console(file=self.stream, width=160, no_color=True).print(panel.final_table(board))

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class LiveProgress(Progress):
    """A rich live panel (counts per state, elapsed, ETA, the repositories in flight with
    their phase), a line above it per finished repository, and a table at the end."""

    def __init__(self, stream: IO[str], console: Console | None = None) -> None:
        super().__init__()
        self.console = console or Console(file=stream)
        self.live = Live(console=self.console, refresh_per_second=4, transient=True)
        self.live_on = False

    def start(self, run: RunRecord) -> None:
        super().start(run)
        self.live.update(self._render())
        self.live.start()
        self.live_on = True

    def show_outcome(self, name: str, outcome: TaskOutcome) -> None:
        style = _STYLE.get(outcome.state, "")
        self.console.print(Text(f"[{self.finished}/{self.total}] {describe(name, outcome)}", style))
        self.refresh()

    def update(self, counts: dict[str, int]) -> None:
        super().update(counts)
        self.refresh()

    def note(self, message: str) -> None:
        self.console.print(Text(message, style="yellow"))

    def refresh(self) -> None:
        if self.live_on:
            self.live.update(self._render(), refresh=True)  # at once: agrees with the lines above

    def stop(self, run: RunRecord) -> None:
        board = self.final_board(run)  # closes: the live panel goes, the final one stays
        self.console.print(Text(panel.header(board, elapsed_s=self.elapsed_s()), style="bold"))
        self.console.print(panel.final_table(board))

    def close(self) -> None:
        super().close()
        if self.live_on:  # the run ended without `stop` (an error): leave the terminal sane
            self.live_on = False
            self.live.stop()

    def _render(self) -> RenderableType:
        board = self.view()
        # handed out, but not yet in flight by the store: queued at a runner
        busy = {row.task_id for row in board.rows if row.state is not TaskState.QUEUED}
        waiting = sum(1 for task_id in list(self.inflight) if task_id not in busy)
        notes = [f"{waiting} queued at the runners, waiting for a slot"] if waiting else []
        return panel.render(board, elapsed_s=self.elapsed_s(), notes=notes)


_STYLE = {TaskState.FAILED: "red", TaskState.CHANGED: "green", TaskState.SKIPPED: "yellow"}


def result(outcome: TaskOutcome) -> str | None:
    """What the driver knows of a finished task's result (the store knows its PR)."""
    if outcome.state is TaskState.CHANGED:
        return f"pushed {outcome.branch}" if outcome.pushed_to else f"{outcome.branch}, not pushed"
    if outcome.error:
        prefix = f"{outcome.failure_class.value}: " if outcome.failure_class else ""
        return prefix + outcome.error
    return None


def describe(name: str, outcome: TaskOutcome) -> str:
    """`changed   billing 3f2a1bc0d4 on ado/x (not pushed)`, `failed    web — agent: ...`."""
    text = f"{outcome.state.value:<9} {name}"
    if outcome.commit_sha:
        text += f" {outcome.commit_sha[:10]} on {outcome.branch}"
        if outcome.state is TaskState.CHANGED and not outcome.pushed_to:
            text += " (not pushed)"
    if outcome.error:
        prefix = f"{outcome.failure_class.value}: " if outcome.failure_class else ""
        text += f" — {prefix}{outcome.error}"
    return text


def make_progress(stream: IO[str]) -> Progress:
    return LiveProgress(stream) if stream.isatty() else LineProgress(stream)
