"""A task whose runner was lost goes back to the queue, and pays only for what was lost.

A Ray runner dies with its process or its node; `RayBackend` then raises `RunnerLost` for
each task it held, and starts a replacement. `Requeue.run` hands such a task out again,
rebuilt from the store (its checkpoints, its attempt count, its commit bundle), so it
continues from its last checkpoint on whichever runner takes it. What the store says
decides the cost:

- the task's `attempt` grew on that runner (`running`, sent at once by the runner): an
  agent was running there, and that attempt of `--max-attempts` is spent; with none left,
  the task fails (`infra`);
- otherwise (it was waiting for a slot, cloning, committing or pushing) it spends none;
- a task that loses its runner `MAX_ACTIVE_LOSSES` times while working on it fails, in case
  it is what kills them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from ado_ray.engine.backends import Backend, RunnerLost, record_failure
from ado_ray.engine.progress import Progress
from ado_ray.engine.runner import INTERRUPTED
from ado_ray.engine.spec import TaskSpec
from ado_ray.errors import StoreError
from ado_ray.models import FailureClass, Step, TaskOutcome, TaskState, TaskUpdate
from ado_ray.store import Store, TaskRecord

MAX_ACTIVE_LOSSES = 3

# Rebuilds a task's spec from the store (driver.task_specs, then driver.with_bundle).
Rebuild = Callable[[Store, TaskRecord], TaskSpec]


class Requeue:
    """Submits tasks, and submits again those whose runner was lost."""

    def __init__(
        self,
        backend: Backend,
        store: Store,
        run_id: str,
        rebuild: Rebuild,
        max_attempts: int,
        progress: Progress,
        stopping: Callable[[], bool],
    ) -> None:
        self.backend, self.store, self.run_id, self.rebuild = backend, store, run_id, rebuild
        self.max_attempts, self.progress, self.stopping = max_attempts, progress, stopping
        self.spent: dict[str, int] = {}  # task id -> attempts lost with runners
        self.losses: dict[str, int] = {}  # task id -> runners lost while it was active
        self.noted: set[str] = set()  # runners whose loss the user was told of

    async def run(self, spec: TaskSpec) -> TaskOutcome:
        """The task's outcome, from whichever runner finishes it."""
        while True:
            try:
                return await self.backend.submit(spec)
            except RunnerLost as lost:
                if lost.runner not in self.noted:
                    self.noted.add(lost.runner)
                    self.progress.note(f"{lost}; its tasks go back to the queue")
                again = await self.after_loss(spec, lost)
                if isinstance(again, TaskOutcome):
                    return again
                spec = again

    async def after_loss(self, spec: TaskSpec, lost: RunnerLost) -> TaskSpec | TaskOutcome:
        """The spec to submit again, or the outcome if the task is finished or may not go on."""
        task_id = spec.task_id
        try:
            await self.backend.flush()  # what the runner sent before it died is in the store
            record = await asyncio.to_thread(self.find, task_id)
            if record.state.terminal:  # it finished there; only the answer was lost
                return _outcome_of(record)
            again = await asyncio.to_thread(self.rebuild, self.store, record)
        except StoreError as exc:
            return _unreachable(spec, lost, exc)
        agent_lost = record.attempt > spec.attempt and Step.AGENT_DONE not in again.checkpoints
        if agent_lost:
            self.spent[task_id] = self.spent.get(task_id, 0) + 1
        if record.attempt > spec.attempt or record.state is not TaskState.QUEUED:
            self.losses[task_id] = self.losses.get(task_id, 0) + 1
        reason = None
        if agent_lost and self.spent[task_id] >= self.max_attempts:
            reason = f"{lost} while its agent ran, in each of its {self.max_attempts} attempts"
        elif self.losses.get(task_id, 0) >= MAX_ACTIVE_LOSSES:
            reason = f"{lost}; the task's runner was lost {MAX_ACTIVE_LOSSES} times while it ran"
        if reason is not None:
            update = TaskUpdate(
                task_id, TaskState.FAILED, failure_class=FailureClass.INFRA, error=reason
            )
            return await record_failure(self.backend, update, spec)
        try:
            await self.backend.record(TaskUpdate(task_id, TaskState.QUEUED))
        except StoreError as exc:
            return _unreachable(spec, lost, exc)
        if self.stopping():  # interrupted meanwhile: it stays queued for `ado resume`
            return TaskOutcome(task_id, spec.repo.key, TaskState.QUEUED, error=INTERRUPTED)
        return dataclasses.replace(again, failures=self.spent.get(task_id, 0))

    def find(self, task_id: str) -> TaskRecord:
        found = self.store.get_task(task_id)
        if found is None or found.run_id != self.run_id:
            raise StoreError(f"task {task_id} of run {self.run_id} is not in the store")
        return found


def _unreachable(spec: TaskSpec, lost: RunnerLost, exc: StoreError) -> TaskOutcome:
    """Nothing to decide on without the store: the task stays resumable."""
    error = f"{lost}, and the store is unreachable ({exc}); {INTERRUPTED}"
    return TaskOutcome(spec.task_id, spec.repo.key, TaskState.QUEUED, error=error)


def _outcome_of(record: TaskRecord) -> TaskOutcome:
    return TaskOutcome(
        record.task_id,
        record.repo.key,
        record.state,
        branch=record.branch,
        commit_sha=record.commit_sha,
        failure_class=record.failure_class,
        error=record.error,
    )
