"""Progress of a run: a live display on a terminal, plain lines anywhere else.

The driver calls `start`, then `task_started` / `task_done` as tasks come and go, `update`
with the store's counts per state about once a second, `note` for anything the user must
know now (an interruption, an unreachable store), and `stop`.
"""

from __future__ import annotations

import time
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ado_ray.engine.spec import TaskSpec
from ado_ray.models import TaskOutcome, TaskState
from ado_ray.store import RunRecord, TaskRecord

STATE_ORDER = [state.value for state in TaskState]


class Progress:
    """Bookkeeping shared by every display; renders nothing itself."""

    def __init__(self) -> None:
        self.total = 0
        self.finished = 0  # terminal before or during this session
        self.finished_here = 0  # during this session (for the ETA)
        self.counts: dict[str, int] = {}
        self.inflight: dict[str, str] = {}  # task id → repo name
        self.started_at = time.monotonic()

    def start(self, run: RunRecord, tasks: list[TaskRecord]) -> None:
        self.run = run
        self.total = len(tasks)
        self.finished = sum(1 for t in tasks if t.state.terminal)
        self.counts = {}
        for task in tasks:
            self.counts[task.state.value] = self.counts.get(task.state.value, 0) + 1
        self.started_at = time.monotonic()

    def task_started(self, spec: TaskSpec) -> None:
        self.inflight[spec.task_id] = spec.repo.name

    def task_done(self, outcome: TaskOutcome) -> None:
        name = self.inflight.pop(outcome.task_id, outcome.repo_key)
        if outcome.state.terminal:
            self.finished += 1
            self.finished_here += 1
        self.show_outcome(name, outcome)

    def update(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def eta_s(self) -> float | None:
        if not self.finished_here:
            return None
        elapsed = time.monotonic() - self.started_at
        return elapsed / self.finished_here * (self.total - self.finished)

    def summary(self) -> str:
        parts = [f"{state} {self.counts[state]}" for state in STATE_ORDER if self.counts.get(state)]
        eta = self.eta_s()
        eta_text = (
            f", eta {_duration(eta)}" if eta is not None and self.finished < self.total else ""
        )
        return f"{self.finished}/{self.total} done{eta_text} · " + ", ".join(parts)

    # rendering hooks
    def show_outcome(self, name: str, outcome: TaskOutcome) -> None: ...

    def note(self, message: str) -> None: ...

    def stop(self, tasks: list[TaskRecord]) -> None: ...


class LineProgress(Progress):
    """One line per finished task and a summary every `every_s` seconds; for logs and CI."""

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

    def stop(self, tasks: list[TaskRecord]) -> None:
        self.start(self.run, tasks)
        self._print(self.summary())

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class LiveProgress(Progress):
    """A rich live panel: counts per state, ETA, the repositories in flight."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self.console = Console(file=stream)
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.notes: list[str] = []

    def start(self, run: RunRecord, tasks: list[TaskRecord]) -> None:
        super().start(run, tasks)
        self.live.update(self._render())
        self.live.start()

    def show_outcome(self, name: str, outcome: TaskOutcome) -> None:
        if outcome.state is TaskState.FAILED:
            self.console.print(Text(describe(name, outcome), style="red"))
        self.live.update(self._render())

    def update(self, counts: dict[str, int]) -> None:
        super().update(counts)
        self.live.update(self._render())

    def note(self, message: str) -> None:
        self.notes = [*self.notes[-2:], message]
        self.live.update(self._render())

    def stop(self, tasks: list[TaskRecord]) -> None:
        super().start(self.run, tasks)
        self.inflight.clear()
        self.live.update(self._render())
        self.live.stop()

    def _render(self) -> Any:
        table = Table.grid(padding=(0, 2))
        for state in STATE_ORDER:
            if self.counts.get(state):
                table.add_row(state, str(self.counts[state]))
        names = list(self.inflight.values())
        flight = ", ".join(names[:8]) + (f" … +{len(names) - 8}" if len(names) > 8 else "")
        lines: list[Any] = [
            Text(f"ado {self.run.name} ({self.run.run_id}) · {self.summary()}", style="bold"),
            table,
        ]
        if flight:
            lines.append(Text(f"in flight: {flight}", style="dim"))
        lines.extend(Text(note, style="yellow") for note in self.notes)
        return Group(*lines)


def describe(name: str, outcome: TaskOutcome) -> str:
    text = f"{outcome.state.value:<9} {name}"
    if outcome.commit_sha:
        text += f" {outcome.commit_sha[:10]} on {outcome.branch}"
    if outcome.error:
        prefix = f"{outcome.failure_class.value}: " if outcome.failure_class else ""
        text += f" — {prefix}{outcome.error}"
    return text


def make_progress(stream: IO[str]) -> Progress:
    return LiveProgress(stream) if stream.isatty() else LineProgress(stream)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
