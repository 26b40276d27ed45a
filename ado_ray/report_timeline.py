"""When each task did what, and on which runner: its phases, from the store's transitions.

Since schema version 4 the store keeps one row per change of a task's state (a trigger on
`tasks`, see `store/sql/*/0004_task_transitions.sql`) with the time it was written and the
runner that held the task. A state lasts until the next change, so the phases are

- `preparing` → **prepare**, whose last `limit_wait_s` (from the next attempt's session)
  is **limit_wait**: the route is chosen, and its limits waited for, just before `running`;
- `running` → **agent**, `collecting` → **commit**, `publishing` → **publish**;
- `queued` (waiting, or requeued after an interruption) and terminal states → no phase.

The times are the sink's write times, so each is late by up to its batching delay (50 ms by
default), and two changes written in one batch share a time (the phase between them is
dropped). Runs recorded before version 4 have no transitions: their phases are the agent
attempts only, from each session's end time and duration.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ado_ray.models import TaskState
from ado_ray.store import SessionRecord
from ado_ray.store.base import Transition

PHASES = ("prepare", "limit_wait", "agent", "commit", "publish")
PHASE_OF_STATE = {
    TaskState.PREPARING: "prepare",
    TaskState.RUNNING: "agent",
    TaskState.COLLECTING: "commit",
    TaskState.PUBLISHING: "publish",
}


@dataclass(frozen=True)
class Phase:
    name: str  # one of PHASES
    attempt: int
    start: datetime
    end: datetime | None  # None: the task is still in it
    runner: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "phase": self.name,
            "attempt": self.attempt,
            "start": self.start.isoformat(),
            "end": self.end.isoformat() if self.end else None,
            "runner": self.runner,
        }


def task_phases(
    transitions: Sequence[Transition], sessions: Sequence[SessionRecord]
) -> list[Phase]:
    """The task's phases in time order (see the module docstring)."""
    if not transitions:
        return _session_phases(sessions)
    waits = {s.attempt: float(s.usage.get("limit_wait_s") or 0.0) for s in sessions}
    phases: list[Phase] = []
    for i, change in enumerate(transitions):
        name = PHASE_OF_STATE.get(change.state)
        if name is None:
            continue
        after = transitions[i + 1] if i + 1 < len(transitions) else None
        end = after.at if after else None
        attempt = change.attempt
        if name == "prepare" and after is not None and after.state is TaskState.RUNNING:
            attempt = after.attempt
            wait = timedelta(seconds=waits.get(attempt, 0.0))
            if wait and after.at - wait > change.at:
                phases.append(Phase(name, attempt, change.at, after.at - wait, change.runner))
                phases.append(Phase("limit_wait", attempt, after.at - wait, end, change.runner))
                continue
        phases.append(Phase(name, attempt, change.at, end, change.runner))
    return [p for p in phases if p.end is None or p.end > p.start]


def _session_phases(sessions: Sequence[SessionRecord]) -> list[Phase]:
    """A run recorded before transitions were: each agent attempt and its limit wait."""
    phases = []
    for session in sessions:
        if session.created_at is None:
            continue
        start = session.created_at - timedelta(seconds=session.duration_s)
        wait = timedelta(seconds=float(session.usage.get("limit_wait_s") or 0.0))
        if wait:
            phases.append(Phase("limit_wait", session.attempt, start - wait, start, None))
        phases.append(Phase("agent", session.attempt, start, session.created_at, None))
    return phases


@dataclass(frozen=True)
class Stint:
    """Phases one after the other on one runner, without a gap: one stay on a slot."""

    task_id: str
    runner: str | None
    phases: tuple[Phase, ...]

    @property
    def start(self) -> datetime:
        return self.phases[0].start

    def end(self, now: datetime) -> datetime:
        """When it ended; `now` for a stint still running."""
        return self.phases[-1].end or now


def stints(task_id: str, phases: Iterable[Phase]) -> list[Stint]:
    """The task's phases cut where it left its runner (a gap, or another runner)."""
    out: list[list[Phase]] = []
    for phase in phases:
        last = out[-1][-1] if out else None
        if last is not None and last.end == phase.start and last.runner == phase.runner:
            out[-1].append(phase)
        else:
            out.append([phase])
    return [Stint(task_id, group[0].runner, tuple(group)) for group in out]


def busy_seconds(phases: Iterable[Phase]) -> float | None:
    """Seconds the task held a runner slot (its finished phases), None if it had none."""
    spans = [(p.end - p.start).total_seconds() for p in phases if p.end is not None]
    return round(sum(spans), 3) if spans else None


def lanes(all_stints: Sequence[Stint], now: datetime) -> tuple[list[str], list[int]]:
    """Runner slots for the stints: (lane labels, each stint's lane).

    The store records which runner held a task, not which of its slots: slots are found by
    packing each runner's stints greedily in start order (the fewest lanes in which none
    overlaps, which is at most the runner's slots). Stints of unknown runner share lanes.
    """
    order = sorted(range(len(all_stints)), key=lambda i: (all_stints[i].start, i))
    free_at: dict[str | None, list[tuple[datetime, int]]] = {}  # per runner: (free at, slot)
    lane_of: dict[tuple[str | None, int], int] = {}  # (runner, slot) → lane
    labels: list[str] = []
    assigned = [0] * len(all_stints)
    for i in order:
        stint = all_stints[i]
        heap = free_at.setdefault(stint.runner, [])
        if heap and heap[0][0] <= stint.start:
            _, slot = heapq.heappop(heap)
        else:  # every slot of this runner is busy: it has one more than we knew
            slot = len(heap)
            lane_of[(stint.runner, slot)] = len(labels)
            labels.append(f"{runner_label(stint.runner)} · {slot + 1}")
        heapq.heappush(heap, (stint.end(now), slot))
        assigned[i] = lane_of[(stint.runner, slot)]
    ranked = sorted(range(len(labels)), key=lambda k: _label_key(labels[k]))
    new_index = {old: new for new, old in enumerate(ranked)}
    return [labels[k] for k in ranked], [new_index[lane] for lane in assigned]


def _label_key(label: str) -> tuple[str, int]:
    runner, _, slot = label.rpartition(" · ")
    return runner, int(slot)


def runner_label(runner: str | None) -> str:
    """`ado-runner-<run_id>-3` → `runner 3`; `ado-runner-local` → `local`."""
    if not runner:
        return "runner ?"
    name = runner.removeprefix("ado-runner-")
    last = name.rpartition("-")[2]
    return f"runner {last}" if last.isdigit() and name != last else name


def fmt_duration(seconds: float | None) -> str:
    """`0.4s`, `12s`, `3m 05s`, `1h 02m`; empty for None."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def fmt_clock(iso: str | None, day: str | None = None) -> str:
    """`HH:MM:SS` of an ISO time (UTC), with its date in front unless it is `day`."""
    if not iso:
        return ""
    moment = datetime.fromisoformat(iso)
    date = f"{moment:%Y-%m-%d}"
    return f"{moment:%H:%M:%S}" if date == day else f"{date} {moment:%H:%M:%S}"
