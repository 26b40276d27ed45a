"""Schema version 4: every change of a task's state is kept (a trigger on `tasks`), for the
report's timeline. Runs against every backend."""

from __future__ import annotations

from ado_ray.models import CheckpointEvent, FailureClass, Step, TaskState, TaskUpdate
from ado_ray.store import Store
from tests.store.conftest import Raw, create_run


def test_each_change_of_state_is_kept_with_its_attempt_runner_and_time(
    store: Store, raw: Raw
) -> None:
    t0, t1, _ = create_run(store)
    store.apply(
        [
            TaskUpdate(t0, TaskState.PREPARING, lease_owner="ado-runner-x-0", workspace="/w"),
            CheckpointEvent(t0, Step.PREPARED, {"base_sha": "abc"}),
            TaskUpdate(t0, TaskState.PREPARING, base_sha="abc"),  # same state: no change
            TaskUpdate(t0, TaskState.RUNNING, attempt=1),
        ]
    )
    store.apply([TaskUpdate(t0, TaskState.RUNNING, attempt=1)])  # a replay: no change
    store.apply([TaskUpdate(t1, TaskState.PREPARING, lease_owner="ado-runner-x-1")])
    store.apply([TaskUpdate(t0, TaskState.COLLECTING), TaskUpdate(t0, TaskState.NO_CHANGE)])
    store.apply(
        [TaskUpdate(t1, TaskState.FAILED, failure_class=FailureClass.INPUT, error="no ref")]
    )

    changes = store.transitions("run-0001")
    assert [(c.task_id, c.state, c.attempt, c.runner) for c in changes] == [
        (t0, TaskState.PREPARING, 0, "ado-runner-x-0"),
        (t0, TaskState.RUNNING, 1, "ado-runner-x-0"),
        (t1, TaskState.PREPARING, 0, "ado-runner-x-1"),
        (t0, TaskState.COLLECTING, 1, "ado-runner-x-0"),
        (t0, TaskState.NO_CHANGE, 1, "ado-runner-x-0"),  # the lease is cleared, not the runner
        (t1, TaskState.FAILED, 0, "ado-runner-x-1"),
    ]
    times = [c.at for c in changes]
    assert all(t.tzinfo is not None for t in times) and times[0] <= times[2] <= times[3]
    assert times[0] == times[1] and times[3] == times[4]  # one batch, one time
    tasks = {task.task_id: task for task in store.list_tasks("run-0001")}
    assert changes[-1].at == tasks[t1].updated_at  # the change's time is the row's
    assert store.transitions("run-none") == []


def test_a_requeue_is_a_change_and_a_deleted_run_takes_its_changes(store: Store, raw: Raw) -> None:
    (t0,) = create_run(store, "run-a", 1)
    store.apply([TaskUpdate(t0, TaskState.PREPARING, lease_owner="r")])
    store.apply([TaskUpdate(t0, TaskState.FAILED, failure_class=FailureClass.INFRA, error="x")])
    assert store.requeue_tasks("run-a", [TaskState.FAILED]) == 1
    states = [c.state for c in store.transitions("run-a")]
    assert states == [TaskState.PREPARING, TaskState.FAILED, TaskState.QUEUED]
    raw.delete_run("run-a")
    assert raw.rows("task_transitions") == []
