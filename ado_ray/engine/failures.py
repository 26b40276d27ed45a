"""How a task attempt ends early: the exceptions the per-task boundary (`task.execute`)
turns into outcomes."""

from __future__ import annotations

from ado_ray.models import FailureClass


class TaskFailed(Exception):
    """The attempt failed with a class; retried only if the class is retryable."""

    def __init__(self, failure_class: FailureClass, message: str) -> None:
        super().__init__(message)
        self.failure_class = failure_class


class TaskStopped(Exception):
    """No agent may start here (a budget, or `--conflict skip`): the task is skipped, with
    the reason."""
