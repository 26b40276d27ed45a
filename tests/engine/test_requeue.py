"""What a lost runner costs a task, decided from a real SQLite store.

The backend here stands in for Ray only to lose runners on cue: each submission writes
to the store what a runner would have written before it died, then raises `RunnerLost`
(tests/engine/test_lost_runners.py kills real runner processes).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from ado_ray.engine.backends import RunnerLost
from ado_ray.engine.driver import respec, run_sync, task_specs
from ado_ray.engine.progress import Progress
from ado_ray.engine.requeue import MAX_ACTIVE_LOSSES, Requeue
from ado_ray.engine.spec import TaskSpec
from ado_ray.models import (
    CheckpointEvent,
    Event,
    FailureClass,
    RepoSpec,
    RunStatus,
    Step,
    TaskOutcome,
    TaskState,
    TaskUpdate,
)
from ado_ray.store import RunRecord, Store, TaskRecord, open_store

RUN = "0123456789ab"
TASK = f"{RUN}-00001"
STARTED = [TaskUpdate(TASK, TaskState.RUNNING, attempt=1)]  # its agent ran there
PREPARING = [TaskUpdate(TASK, TaskState.PREPARING)]  # cloning there, no agent yet
WAITING: list[Event] = []  # waiting for a slot there


class LosingBackend:
    """Each `submit` applies the next list of events and loses its runner; None finishes."""

    def __init__(self, store: Store, plan: Sequence[list[Event] | None]) -> None:
        self.store, self.plan = store, list(plan)
        self.specs: list[TaskSpec] = []

    async def submit(self, spec: TaskSpec) -> TaskOutcome:
        self.specs.append(spec)
        events = self.plan.pop(0)
        if events is None:
            self.store.apply([TaskUpdate(spec.task_id, TaskState.CHANGED)])
            return TaskOutcome(spec.task_id, spec.repo.key, TaskState.CHANGED)
        self.store.apply(events)
        raise RunnerLost(f"ado-runner-{RUN}-{len(self.specs) - 1}", RuntimeError("gone"))

    async def flush(self) -> None:
        pass

    async def record(self, update: TaskUpdate) -> None:
        self.store.apply([update])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = open_store(str(tmp_path / "state.db"))
    store.migrate()
    repo = RepoSpec(url="/src/r1", key="/src/r1", name="r1")
    run = RunRecord(RUN, "r", datetime.now(UTC), RunStatus.RUNNING, "ado/r", {}, "repos.txt")
    store.create_run(run, [TaskRecord(TASK, RUN, 1, repo, TaskState.QUEUED)])
    return store


def drive(store: Store, plan: Sequence[list[Event] | None], max_attempts: int = 2) -> Any:
    backend = LosingBackend(store, plan)
    requeue = Requeue(
        cast(Any, backend), store, RUN, respec, max_attempts, Progress(), lambda: False
    )
    spec = task_specs(store, store.list_tasks(RUN))[0]
    outcome = run_sync(requeue.run(spec))
    return outcome, backend.specs, store.list_tasks(RUN)[0]


def test_a_task_that_had_not_started_is_submitted_again_at_no_cost(store: Store) -> None:
    outcome, specs, _ = drive(store, [WAITING, PREPARING, None])
    assert outcome.state is TaskState.CHANGED
    assert [(s.attempt, s.failures) for s in specs] == [(0, 0), (0, 0), (0, 0)]


def test_an_agent_lost_with_its_runner_spends_one_attempt(store: Store) -> None:
    outcome, specs, _ = drive(store, [STARTED, None])
    assert outcome.state is TaskState.CHANGED
    assert [(s.attempt, s.failures) for s in specs] == [(0, 0), (1, 1)]  # attempt 2 is the last


def test_agents_lost_in_every_attempt_fail_the_task(store: Store) -> None:
    second = [TaskUpdate(TASK, TaskState.RUNNING, attempt=2)]
    outcome, specs, task = drive(store, [STARTED, second, None])
    assert len(specs) == 2
    assert (task.state, task.failure_class) == (TaskState.FAILED, FailureClass.INFRA)
    assert outcome.state is TaskState.FAILED and "in each of its 2 attempts" in str(task.error)


def test_a_task_past_agent_done_continues_from_its_checkpoint_without_spending(
    store: Store,
) -> None:
    done = [
        TaskUpdate(TASK, TaskState.RUNNING, attempt=1),
        CheckpointEvent(TASK, Step.PREPARED, {"base_sha": "0" * 40}),
        CheckpointEvent(TASK, Step.AGENT_DONE, {"session_id": None}),
        TaskUpdate(TASK, TaskState.COLLECTING),
    ]
    outcome, specs, _ = drive(store, [done, None], max_attempts=1)
    assert outcome.state is TaskState.CHANGED
    assert Step.AGENT_DONE in specs[1].checkpoints and specs[1].failures == 0


def test_a_task_whose_runner_keeps_dying_under_it_fails(store: Store) -> None:
    _, specs, task = drive(store, [PREPARING] * MAX_ACTIVE_LOSSES + [None])
    assert len(specs) == MAX_ACTIVE_LOSSES
    assert task.state is TaskState.FAILED and f"{MAX_ACTIVE_LOSSES} times" in str(task.error)


def test_a_task_that_finished_before_its_runner_died_keeps_its_outcome(store: Store) -> None:
    finished = [TaskUpdate(TASK, TaskState.NO_CHANGE)]
    outcome, specs, _ = drive(store, [finished])
    assert len(specs) == 1 and outcome.state is TaskState.NO_CHANGE
