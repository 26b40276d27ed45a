"""What a person sees of a run: counts per state, the repositories in flight with their
phase and for how long, elapsed time and ETA, the latest outcomes, and a final table.

A `Board` is read from the store alone (`BoardReader`), so `ado watch` shows the same on
any machine that reaches the store; `ado batch`'s own display (progress.py) renders the
same board, with the outcomes it hears of first-hand laid over it until the store has them.

A board holds the run's counts per state (the store's GROUP BY, so they always add up to
the total) and rows for a bounded set of tasks only: those in flight, the latest to finish
(`RECENT_READ`, also the sample of the ETA's durations) and, at the end, the table's
(`TABLE_ROWS`, the failed first): its memory and each read's cost stay flat in the run's
size. A task's phase is its state in the store: `queued` (also while it waits at a runner
for a slot), `preparing` (clone, checkout, waiting for its limits), `running` (its agent runs),
`collecting` (the commit), `publishing` (push, PR).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ado_ray.engine.lease import driver_gone, gone_note
from ado_ray.models import RunStatus, Step, TaskState
from ado_ray.store import RunRecord, Store, TaskRecord
from ado_ray.store.base import Transition

ACTIVE = (TaskState.PREPARING, TaskState.RUNNING, TaskState.COLLECTING, TaskState.PUBLISHING)
RAN = (TaskState.CHANGED, TaskState.NO_CHANGE, TaskState.FAILED)  # durations for the ETA
STYLES = {
    TaskState.QUEUED: "dim",
    TaskState.PREPARING: "cyan",
    TaskState.RUNNING: "bold cyan",
    TaskState.COLLECTING: "cyan",
    TaskState.PUBLISHING: "cyan",
    TaskState.CHANGED: "green",
    TaskState.NO_CHANGE: "blue",
    TaskState.FAILED: "red",
    TaskState.SKIPPED: "yellow",
    TaskState.CANCELLED: "yellow",
}
SHOWN_IN_FLIGHT = 12
TABLE_ROWS = 100  # in the final table; beyond, the failed ones and a pointer to `ado status`
RECENT_READ = 200  # the latest finished tasks read at each look (outcome lines, the ETA)
IN_FLIGHT_READ = 2000  # tasks in flight read at each look, at most


@dataclass(frozen=True)
class Row:
    """One task as the board shows it."""

    task_id: str
    name: str
    state: TaskState
    attempt: int
    commit: str | None = None
    branch: str | None = None
    since: datetime | None = None  # when it entered its state
    started: datetime | None = None  # when it left the queue, for its current stay on a runner
    busy_s: float = 0.0  # time in preparing..publishing, over every attempt
    result: str | None = None  # a finished task's PR, branch or error (see `result_text`)
    seq: int = 0  # its place in the repository list

    @property
    def finished(self) -> datetime | None:
        return self.since if self.state.terminal else None


@dataclass(frozen=True)
class Board:
    """A run's counts (`run.counts`) and the rows of some of its tasks (see above)."""

    run: RunRecord
    rows: list[Row]
    now: datetime
    gone: datetime | None = None  # the run says running but its driver is gone since then

    @property
    def total(self) -> int:
        return sum(self.run.counts.values())

    @property
    def counts(self) -> dict[str, int]:
        """Tasks per state, in TaskState order, the states that have any."""
        found = self.run.counts
        return {state.value: found[state.value] for state in TaskState if found.get(state.value)}

    @property
    def done(self) -> int:
        return sum(n for state, n in self.run.counts.items() if TaskState(state).terminal)

    @property
    def in_flight(self) -> list[Row]:
        rows = [row for row in self.rows if row.state in ACTIVE]
        return sorted(rows, key=lambda row: row.started or self.now)

    def recent(self, count: int) -> list[Row]:
        rows = [row for row in self.rows if row.state.terminal and row.finished]
        return sorted(rows, key=lambda row: row.finished or self.now, reverse=True)[:count]

    @property
    def elapsed_s(self) -> float:
        return max(0.0, (self.now - self.run.created_at).total_seconds())

    @property
    def parallel(self) -> int:
        value = self.run.config.get("parallel")
        return value if isinstance(value, int) and value > 0 else 1

    def eta_s(self) -> float | None:
        """Seconds until every task is done: the mean time finished tasks spent on a runner,
        for each waiting task and the rest of each one in flight, spread over the run's
        parallelism. None before any task finished, and once the run stopped."""
        if self.run.status is not RunStatus.RUNNING or self.gone is not None:
            return None
        durations = [row.busy_s for row in self.rows if row.state in RAN and row.busy_s > 0]
        flying = [
            (self.now - row.started).total_seconds() if row.started else 0.0
            for row in self.in_flight
        ]
        waiting = self.run.counts.get(TaskState.QUEUED.value, 0)
        return estimate(durations, flying, waiting, self.parallel)

    def with_outcomes(
        self,
        states: Mapping[str, tuple[TaskState, str | None]],
        names: Mapping[str, str] | None = None,
    ) -> Board:
        """This board with some tasks' states replaced (what the driver heard first-hand),
        the counts moved with them. A task without a row was queued when the board was read
        (the driver hears only of tasks it handed out); it gets a row, named from `names`."""
        if not states:
            return self
        counts = dict(self.run.counts)

        def move(old: TaskState, new: TaskState) -> None:
            if old is not new and counts.get(old.value, 0) > 0:
                counts[old.value] -= 1
                counts[new.value] = counts.get(new.value, 0) + 1

        rows = []
        for row in self.rows:
            if row.task_id in states:
                state, text = states[row.task_id]
                move(row.state, state)
                row = replace(row, state=state, since=self.now, result=text)
            rows.append(row)
        seen = {row.task_id for row in self.rows}
        for task_id, (state, text) in states.items():
            if task_id not in seen:
                move(TaskState.QUEUED, state)
                name = (names or {}).get(task_id, task_id)
                rows.append(Row(task_id, name, state, 0, since=self.now, result=text))
        return replace(self, run=replace(self.run, counts=counts), rows=rows)


def estimate(
    durations: Sequence[float], flying_s: Sequence[float], waiting: int, parallel: int
) -> float | None:
    """The ETA: `waiting` tasks and the remainders of those in flight (`flying_s`: how long
    each has been at it), each taking the mean of `durations`, on `parallel` lanes."""
    if not durations:
        return None
    mean = statistics.fmean(durations)
    left = [max(mean - spent, 0.0) for spent in flying_s]
    lanes = max(1, min(parallel, len(flying_s) + waiting))
    return max((sum(left) + waiting * mean) / lanes, max(left, default=0.0))


class BoardReader:
    """Reads a run's board from the store: its counts, the tasks in flight and the
    `RECENT_READ` latest to finish (with `final`, also the final table's: every task of a
    small run, else the failed ones first), each with its changes of state. Results
    (`Row.result`) are filled in for the `recent` latest outcomes, for tasks that finished
    since the last read, and with `final` for every row; each is read once (a changed
    task's checkpoints), and only those of the rows last read are kept."""

    def __init__(self, store: Store, run_id: str, recent: int = 8) -> None:
        self.store, self.run_id, self.recent = store, run_id, recent
        self.results: dict[tuple[str, TaskState], str | None] = {}
        self.finished: set[str] | None = None  # finished among the rows of the last read

    def read(self, final: bool = False) -> Board:
        run = self.store.get_run(self.run_id)
        tasks = self.store.tasks_in_states(run.run_id, ACTIVE, IN_FLIGHT_READ)
        tasks += self.store.recent_tasks(run.run_id, max(self.recent, RECENT_READ))
        if final:
            tasks += self.table_tasks(run)
        tasks = list({task.task_id: task for task in tasks}.values())
        changes = self.store.transitions_of([task.task_id for task in tasks]) if tasks else {}
        now = datetime.now(UTC)
        rows = [task_row(task, changes.get(task.task_id, []), now) for task in tasks]
        board = Board(run, rows, now, driver_gone(run) if run.status is RunStatus.RUNNING else None)
        done = {row.task_id for row in rows if row.state.terminal}
        wanted = {row.task_id for row in board.recent(self.recent)}
        if final:
            wanted |= done
        elif self.finished is not None:  # not at the first read: that shows the recent only
            wanted |= done - self.finished
        self.finished = done
        by_id = {task.task_id: task for task in tasks}
        results = self.results_of([by_id[task_id] for task_id in wanted])
        rows = [
            replace(row, result=results[row.task_id]) if row.task_id in wanted else row
            for row in rows
        ]
        return replace(board, rows=rows)

    def table_tasks(self, run: RunRecord) -> list[TaskRecord]:
        """The final table's tasks: all of a run of up to TABLE_ROWS, else the failed ones
        first and then the others, in list order, TABLE_ROWS in all."""
        first = self.store.task_page(run.run_id, limit=TABLE_ROWS)
        if sum(run.counts.values()) <= TABLE_ROWS:
            return first
        return self.store.tasks_in_states(run.run_id, [TaskState.FAILED], TABLE_ROWS) + first

    def results_of(self, tasks: Sequence[TaskRecord]) -> dict[str, str | None]:
        """Each task's `result_text` (the checkpoints of the changed ones, in one read);
        the cache keeps only these tasks'."""
        keys = {task.task_id: (task.task_id, task.state) for task in tasks}
        todo = [task for task in tasks if keys[task.task_id] not in self.results]
        changed = [task.task_id for task in todo if task.state is TaskState.CHANGED]
        checkpoints = self.store.checkpoints_of(changed) if changed else {}
        for task in todo:
            published = checkpoints.get(task.task_id, {}).get(Step.PUBLISHED) or {}
            self.results[keys[task.task_id]] = result_text(task, published)
        self.results = {key: self.results[key] for key in keys.values()}
        return {task_id: self.results[key] for task_id, key in keys.items()}


def task_row(task: TaskRecord, changes: Sequence[Transition], now: datetime) -> Row:
    """A task's row from its record and its changes of state (oldest first)."""
    busy = 0.0
    for i, change in enumerate(changes):
        if change.state in ACTIVE:
            end = changes[i + 1].at if i + 1 < len(changes) else now
            busy += max(0.0, (end - change.at).total_seconds())
    last = changes[-1] if changes else None
    since = last.at if last is not None and last.state is task.state else task.updated_at
    started = None
    if task.state in ACTIVE:
        started = since
        for change in reversed(changes):
            if change.state not in ACTIVE:
                break
            started = change.at
    return Row(
        task.task_id,
        task.repo.name,
        task.state,
        task.attempt,
        task.commit_sha,
        task.branch,
        since,
        started,
        round(busy, 3),
        seq=task.seq,
    )


def result_text(task: TaskRecord, published: Mapping[str, Any]) -> str | None:
    """What became of a finished task, in a few words: its PR, where its branch went (or
    that it was not pushed: a dry run), or its error."""
    if task.state is TaskState.CHANGED:
        if "number" in published:
            return f"PR #{published['number']} {published.get('url', '')}".rstrip()
        if published:
            return f"pushed {task.branch}"
        return f"{task.branch}, not pushed"
    if task.error:
        prefix = f"{task.failure_class.value}: " if task.failure_class else ""
        return prefix + task.error
    return None


# --- rendering ------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """`7s`, `3m05s`, `1h02m`."""
    if seconds is None:
        return "?"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def status_text(board: Board) -> str:
    status = board.run.status.value
    return status + (f" ({gone_note(board.run.run_id, board.gone)})" if board.gone else "")


def counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{state} {count}" for state, count in counts.items())


def summary_line(board: Board) -> str:
    """`NAME (ID) · STATUS · D/T done · state n, ...`: what changes only when counts do."""
    run = board.run
    return (
        f"{run.name} ({run.run_id}) · {status_text(board)} · {board.done}/{board.total} done"
        f" · {counts_text(board.counts)}"
    )


def timing_text(board: Board, elapsed_s: float | None = None) -> str:
    elapsed = board.elapsed_s if elapsed_s is None else elapsed_s
    eta = board.eta_s()
    text = f"elapsed {duration(elapsed)}"
    if board.done < board.total and board.run.status is RunStatus.RUNNING and not board.gone:
        text += f", eta {duration(eta)}" if eta is not None else ", eta after the first finishes"
    return text


def outcome_line(row: Row) -> str:
    """`changed   billing 3f2a1bc0d4 on ado/x — PR #3 https://...`."""
    text = f"{row.state.value:<9} {row.name}"
    if row.commit and row.state is TaskState.CHANGED:
        text += f" {row.commit[:10]} on {row.branch}"
    if row.result and not (row.commit and row.result == f"pushed {row.branch}"):
        text += f" — {row.result}"
    return text


def in_flight_text(row: Row, now: datetime) -> str:
    """`running    billing  1m05s (1m12s in all) · attempt 2`: time in the phase, and since
    the task left the queue when that is longer."""
    took = duration((now - row.since).total_seconds()) if row.since else "?"
    text = f"{row.state.value:<10} {row.name}  {took}"
    if row.started is not None:
        total = duration((now - row.started).total_seconds())
        if total != took:
            text += f" ({total} in all)"
    if row.attempt > 1:
        text += f" · attempt {row.attempt}"
    return text


def header(board: Board, title: str | None = None, elapsed_s: float | None = None) -> str:
    """`ado NAME (ID) · running · 3/7 done · elapsed 12s, eta 8s`."""
    head = title or f"ado {board.run.name} ({board.run.run_id})"
    return f"{head} · {status_text(board)} · {board.done}/{board.total} done · " + timing_text(
        board, elapsed_s
    )


def render(
    board: Board,
    *,
    title: str | None = None,
    elapsed_s: float | None = None,
    recent: int = 0,
    notes: Iterable[str] = (),
) -> RenderableType:
    """The live panel: header, counts, the tasks in flight, the `recent` latest outcomes."""
    parts: list[RenderableType] = [Text(header(board, title, elapsed_s), style="bold")]
    counts = Text()
    for state, count in board.counts.items():
        if counts:
            counts.append("  ")
        counts.append(f"{state} {count}", style=STYLES[TaskState(state)])
    parts.append(counts)
    flying = board.in_flight
    if flying:
        parts.append(Text(f"in flight ({len(flying)}):", style="dim"))
        for row in flying[:SHOWN_IN_FLIGHT]:
            parts.append(Text("  " + in_flight_text(row, board.now), style=STYLES[row.state]))
        if len(flying) > SHOWN_IN_FLIGHT:
            parts.append(Text(f"  … and {len(flying) - SHOWN_IN_FLIGHT} more", style="dim"))
    latest = board.recent(recent) if recent else []
    if latest:
        parts.append(Text("latest:", style="dim"))
        for row in latest:
            parts.append(Text("  " + outcome_line(row), style=STYLES[row.state]))
    parts.extend(Text(note, style="dim") for note in notes)
    return Group(*parts)


def final_table(board: Board) -> Table:
    """One row per task (the failed ones first when there are too many to show: the board
    read with `final` has those; rows beyond TABLE_ROWS are left out)."""
    if board.total <= TABLE_ROWS:
        rows = sorted(board.rows, key=lambda row: row.seq)
    else:
        rows = sorted(board.rows, key=lambda row: (row.state is not TaskState.FAILED, row.seq))
        rows = rows[:TABLE_ROWS]
    hidden = max(0, board.total - len(rows))
    caption = f"… and {hidden} more: ado status {board.run.run_id}" if hidden else None
    table = Table(
        title=f"{board.run.name} ({board.run.run_id}) · {counts_text(board.counts)}",
        caption=caption,
    )
    for column in ("repository", "state", "attempts", "time", "commit", "result"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row.name,
            Text(row.state.value, style=STYLES[row.state]),
            str(row.attempt),
            duration(row.busy_s) if row.busy_s else "",
            (row.commit or "")[:10],
            row.result or "",
        )
    return table
