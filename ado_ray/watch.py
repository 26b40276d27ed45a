"""`ado watch RUN_ID`: follow a run in the store, from anywhere (the store is the truth).

On a terminal, the live panel of `ado batch` (engine/panel.py): counts per state, the
repositories in flight with their phase and for how long, elapsed time and ETA, the latest
outcomes; at the end a table of every repository. Elsewhere, plain lines: the counts
whenever they change (with what is in flight), and a line per repository as it finishes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from ado_ray import api
from ado_ray.api import ConfigSources
from ado_ray.engine import panel
from ado_ray.engine.driver import EXIT_INTERRUPTED, exit_code
from ado_ray.engine.panel import Board, BoardReader
from ado_ray.models import RunStatus

SHOWN_IN_LINE = 8  # repositories in flight named on a plain line


def watch(
    run_id: str,
    sources: ConfigSources,
    stream: IO[str] | None = None,
    every_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    recent: int = 8,
    live: bool | None = None,
) -> int:
    """Show the run until it is no longer running, or until it says running but its
    driver is gone (its lease lapsed, or its process on this host died): then say how to
    resume it. `live`: the rich panel (default: when `stream` is a terminal).

    The exit code is the run's: 0 every task changed or had no change, 1 a task failed,
    130 the run was interrupted or its driver is gone (or this watch was interrupted,
    with Ctrl-C; the run is not touched).
    """
    stream = stream or sys.stdout
    live = stream.isatty() if live is None else live
    with api.run_store(api.load_config(sources), run_id) as store:
        reader = BoardReader(store, run_id, recent)
        view: _View = _LiveView(stream, recent) if live else _LineView(stream, recent)
        try:
            while True:
                board = reader.read()
                ended = board.gone is not None or board.run.status is not RunStatus.RUNNING
                if ended:
                    board = reader.read(final=True)
                view.show(board)
                if board.gone is not None:
                    view.close(board)
                    print(
                        f"run {board.run.run_id} has no live driver (last seen "
                        f"{board.gone:%Y-%m-%d %H:%M:%S} UTC); continue it with: "
                        f"ado resume {board.run.run_id}",
                        file=stream,
                        flush=True,
                    )
                    return EXIT_INTERRUPTED
                if ended:
                    view.close(board)
                    return _exit_code(board)
                sleep(every_s)
        except KeyboardInterrupt:
            view.close(None)
            return EXIT_INTERRUPTED


def _exit_code(board: Board) -> int:
    if board.run.status is RunStatus.INTERRUPTED:
        return EXIT_INTERRUPTED
    return exit_code(board.counts)


class _View:
    def show(self, board: Board) -> None: ...

    def close(self, board: Board | None) -> None:
        """The run ended (`board`: its last state), or the watch did (None)."""


class _LineView(_View):
    """Plain lines, for logs and pipes: nothing is printed twice."""

    def __init__(self, stream: IO[str], recent: int) -> None:
        self.stream, self.recent = stream, recent
        self.last: str | None = None
        self.finished: set[str] | None = None  # the last board's finished rows: lines out

    def show(self, board: Board) -> None:
        line = panel.summary_line(board)
        if line != self.last:
            self.last = line
            self._print(line)
            flying = board.in_flight
            if flying:
                names = ", ".join(
                    f"{row.name} {row.state.value} {_since(board, row)}"
                    for row in flying[:SHOWN_IN_LINE]
                )
                more = f" … +{len(flying) - SHOWN_IN_LINE}" if len(flying) > SHOWN_IN_LINE else ""
                self._print(f"  in flight: {names}{more}")
        done = [row for row in board.rows if row.state.terminal]
        if self.finished is None:  # the first look: the latest outcomes, or all at the end
            running = board.run.status is RunStatus.RUNNING and board.gone is None
            in_order = sorted(done, key=lambda row: row.seq)
            shown = list(reversed(board.recent(self.recent))) if running else in_order
            self.finished = {row.task_id for row in done}
        else:  # a board holds the latest to finish (panel.RECENT_READ): those not shown yet
            shown = [row for row in done if row.task_id not in self.finished]
            shown.sort(key=lambda row: row.finished or board.now)
            self.finished = {row.task_id for row in done}
        for row in shown:
            self._print("  " + panel.outcome_line(row))

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class _LiveView(_View):
    """The rich panel, redrawn at every look; at the end a table of every repository."""

    def __init__(self, stream: IO[str], recent: int) -> None:
        self.console = Console(file=stream)
        self.recent = recent
        self.live = Live(console=self.console, auto_refresh=False, transient=True)
        self.started = False

    def show(self, board: Board) -> None:
        self.live.update(
            panel.render(
                board, title=f"watch {board.run.name} ({board.run.run_id})", recent=self.recent
            ),
            refresh=True,
        )
        if not self.started:
            self.started = True
            self.live.start(refresh=True)

    def close(self, board: Board | None) -> None:
        if self.started:
            self.live.stop()
        if board is not None:
            self.console.print(Text(panel.header(board), style="bold"))
            self.console.print(panel.final_table(board))


def _since(board: Board, row: panel.Row) -> str:
    return panel.duration((board.now - row.since).total_seconds()) if row.since else "?"
