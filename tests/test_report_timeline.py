"""Phases, stays on a runner and runner slots, from a task's recorded changes of state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ado_ray.models import TaskState
from ado_ray.report_timeline import (
    Phase,
    busy_seconds,
    fmt_duration,
    lanes,
    runner_label,
    stints,
    task_phases,
)
from ado_ray.store import SessionRecord
from ado_ray.store.base import Transition

T0 = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def changes(*steps: tuple[float, TaskState, int], runner: str = "r0") -> list[Transition]:
    return [Transition("t", state, attempt, runner, at(s)) for s, state, attempt in steps]


def session(attempt: int, end_s: float, duration_s: float, wait_s: float = 0.0) -> SessionRecord:
    usage = {"limit_wait_s": wait_s, "provider": "p", "mode": "m"}
    return SessionRecord("t", attempt, "command", None, 0, duration_s, "/l", usage, "ok", at(end_s))


def spans(phases: list[Phase]) -> list[tuple[str, int, float, float | None]]:
    return [
        (
            p.name,
            p.attempt,
            (p.start - T0).total_seconds(),
            (p.end - T0).total_seconds() if p.end else None,
        )
        for p in phases
    ]


def test_each_state_is_a_phase_and_the_wait_for_limits_ends_the_prepare_phase() -> None:
    steps = changes(
        (0, TaskState.PREPARING, 0),
        (10, TaskState.RUNNING, 1),
        (40, TaskState.COLLECTING, 1),
        (42, TaskState.PUBLISHING, 1),
        (45, TaskState.CHANGED, 1),
    )
    phases = task_phases(steps, [session(1, 40, 29.5, wait_s=4)])
    assert spans(phases) == [
        ("prepare", 1, 0, 6),
        ("limit_wait", 1, 6, 10),
        ("agent", 1, 10, 40),
        ("commit", 1, 40, 42),
        ("publish", 1, 42, 45),
    ]
    assert busy_seconds(phases) == 45
    assert [len(s.phases) for s in stints("t", phases)] == [5]  # one stay on the slot


def test_a_retry_repeats_phases_and_a_requeue_leaves_the_runner() -> None:
    retried = changes(
        (0, TaskState.PREPARING, 0),
        (1, TaskState.RUNNING, 1),
        (5, TaskState.PREPARING, 1),  # infra failure, retried: the attempt goes up at running
        (6, TaskState.RUNNING, 2),
        (9, TaskState.FAILED, 2),
    )
    assert spans(task_phases(retried, [])) == [
        ("prepare", 1, 0, 1),
        ("agent", 1, 1, 5),
        ("prepare", 2, 5, 6),
        ("agent", 2, 6, 9),
    ]
    interrupted = changes(
        (0, TaskState.PREPARING, 0), (1, TaskState.RUNNING, 1), (3, TaskState.QUEUED, 1)
    )
    interrupted += changes(
        (10, TaskState.PREPARING, 1), (11, TaskState.COLLECTING, 1), (12, TaskState.NO_CHANGE, 1),
        runner="r1",
    )  # fmt: skip
    phases = task_phases(interrupted, [])
    assert [(s.runner, len(s.phases)) for s in stints("t", phases)] == [("r0", 2), ("r1", 2)]
    assert busy_seconds(phases) == 3 + 2  # the time in the queue is not the task's


def test_a_phase_written_in_the_same_batch_as_the_next_is_dropped_and_an_open_one_kept() -> None:
    steps = changes((0, TaskState.PREPARING, 0), (0, TaskState.RUNNING, 1))
    assert spans(task_phases(steps, [])) == [("agent", 1, 0, None)]
    assert busy_seconds(task_phases(steps, [])) is None


def test_a_run_recorded_before_transitions_shows_its_agent_attempts() -> None:
    phases = task_phases([], [session(1, 30, 20, wait_s=5), session(2, 60, 10)])
    assert spans(phases) == [
        ("limit_wait", 1, 5, 10),
        ("agent", 1, 10, 30),
        ("agent", 2, 50, 60),
    ]


def test_slots_are_packed_per_runner_and_labelled_in_order() -> None:
    def stint(runner: str, start: float, end: float) -> list[Phase]:
        return [Phase("agent", 1, at(start), at(end), runner)]

    all_stints = [
        *stints("a", stint("ado-runner-abc-1", 0, 10)),
        *stints("b", stint("ado-runner-abc-0", 0, 10)),
        *stints("c", stint("ado-runner-abc-0", 0, 5)),
        *stints("d", stint("ado-runner-abc-0", 5, 8)),  # free slot: c's
        *stints("e", stint("ado-runner-abc-0", 9, 12)),  # free again
    ]
    labels, lane = lanes(all_stints, at(100))
    assert labels == ["runner 0 · 1", "runner 0 · 2", "runner 1 · 1"]
    assert lane[0] == 2 and lane[2] == lane[3] == lane[4] and lane[1] != lane[2]


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("ado-runner-local", "local"),
        ("ado-runner-0a1b2c3d4e5f-12", "runner 12"),
        (None, "runner ?"),
        ("custom", "custom"),
    ],
)
def test_runner_labels(name: str | None, label: str) -> None:
    assert runner_label(name) == label


def test_durations_read_as_a_person_would_say_them() -> None:
    assert [fmt_duration(s) for s in (None, 0.42, 12.4, 185, 3725)] == [
        "",
        "0.4s",
        "12s",
        "3m 05s",
        "1h 02m",
    ]
