"""The driver: plan a run (or load one to resume), hold its lock, hand tasks to runners.

It never keeps more than `--parallel` plus a small buffer of tasks in flight, collects
outcomes as they finish and feeds the progress display. Ctrl-C (or SIGTERM) stops
submission, gives running agents a grace period, and leaves every unfinished task
resumable. With `no_ray` the same runner and task function run in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ado_ray.config import Config
from ado_ray.engine import workspace as ws
from ado_ray.engine.progress import Progress
from ado_ray.engine.runner import AgentRunner
from ado_ray.engine.task import RunContext, TaskSpec
from ado_ray.errors import RunLockedError, UsageError, WorkspaceError
from ado_ray.models import (
    SUCCESS_STATES,
    FailureClass,
    RepoSpec,
    RunStatus,
    TaskOutcome,
    TaskState,
    TaskUpdate,
)
from ado_ray.store import RunRecord, Store, TaskRecord
from ado_ray.store.sink import Sink

LOCK_TTL_S = 30.0
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@dataclass(frozen=True)
class BatchResult:
    run: RunRecord
    tasks: list[TaskRecord]
    interrupted: bool
    summary: dict[str, Any] = field(default_factory=dict)  # reports.run_summary, for --json

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for task in self.tasks:
            counts[task.state.value] = counts.get(task.state.value, 0) + 1
        return counts

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK if all(t.state in SUCCESS_STATES for t in self.tasks) else EXIT_FAILED


def state_url(config: Config, cwd: Path | None = None) -> str:
    """The store URL with a relative SQLite path made absolute (Ray workers have other cwds)."""
    if "://" in config.state or config.state.startswith("sqlite:"):
        return config.state
    return str(((cwd or Path.cwd()) / config.state).resolve())


def new_run(
    store: Store, config: Config, repos: Sequence[RepoSpec], repo_list: str, prompt: str | None
) -> RunRecord:
    """Create the run and its queued tasks in one transaction."""
    run_id = uuid.uuid4().hex[:12]
    name = config.name or f"run-{datetime.now(UTC):%m%d}-{secrets.token_hex(2)}"
    branch = config.branch or f"ado/{name}"
    try:
        ws.validate_branch_name(branch)
    except WorkspaceError as exc:
        raise UsageError(str(exc)) from exc
    settings = config.masked()
    settings["prompt"] = prompt
    run = RunRecord(run_id, name, datetime.now(UTC), RunStatus.RUNNING, branch, settings, repo_list)
    tasks = [
        TaskRecord(f"{run_id}-{seq:05d}", run_id, seq, repo, TaskState.QUEUED)
        for seq, repo in enumerate(repos, start=1)
    ]
    store.create_run(run, tasks)
    return run


@contextlib.contextmanager
def run_lock(store: Store, run_id: str) -> Iterator[None]:
    """Hold the run's lease while the driver works, renewing it in the background.

    A lease left by a dead driver on this host (its pid is gone) is taken over at once;
    one from another host expires after LOCK_TTL_S.
    """
    host = socket.gethostname()
    owner = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    holder = store.acquire_run_lock(run_id, owner, LOCK_TTL_S)
    if holder is not None and _dead_local_owner(holder, host):
        store.break_run_lock(run_id)
        holder = store.acquire_run_lock(run_id, owner, LOCK_TTL_S)
    if holder is not None:
        raise RunLockedError(
            f"run {run_id} is being driven by {holder}; wait for it to finish, or stop it "
            f"(the lease expires {LOCK_TTL_S:g}s after its driver dies)"
        )
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LOCK_TTL_S / 3):
            with contextlib.suppress(Exception):  # an outage: the next renewal tries again
                store.acquire_run_lock(run_id, owner, LOCK_TTL_S)

    thread = threading.Thread(target=renew, name="ado-run-lock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(Exception):
            store.release_run_lock(run_id, owner)


def _dead_local_owner(holder: str, host: str) -> bool:
    parts = holder.split(":")
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def task_specs(store: Store, tasks: Sequence[TaskRecord]) -> list[TaskSpec]:
    return [
        TaskSpec(t.task_id, t.repo, t.attempt, store.checkpoints(t.task_id))
        for t in tasks
        if not t.state.terminal
    ]


def drive(
    store: Store,
    config: Config,
    run: RunRecord,
    prompt: str | None,
    progress: Progress,
    cwd: Path | None = None,
) -> BatchResult:
    """Run every unfinished task of `run`; return the run's final state."""
    cwd = cwd or Path.cwd()
    ctx = RunContext(
        run_id=run.run_id,
        run_name=run.name,
        branch=run.branch,
        work_root=(cwd / config.work_root).resolve(),
        agent=config.agent,
        git=config.git,
        prompt=prompt,
        dry_run=config.dry_run,
        max_attempts=config.max_attempts,
    )
    with run_lock(store, run.run_id):
        store.set_run_status(run.run_id, RunStatus.RUNNING)
        tasks = store.list_tasks(run.run_id)
        specs = task_specs(store, tasks)
        progress.start(run, tasks)
        url = state_url(config, cwd)
        if config.no_ray:
            interrupted = asyncio.run(_drive_local(ctx, specs, url, config, store, progress))
        else:
            interrupted = _drive_ray(ctx, specs, url, config, store, progress)
        store.set_run_status(
            run.run_id, RunStatus.INTERRUPTED if interrupted else RunStatus.FINISHED
        )
        final = store.list_tasks(run.run_id)
        progress.stop(final)
        return BatchResult(store.get_run(run.run_id), final, interrupted)


# --- in-process ----------------------------------------------------------------------------


async def _drive_local(
    ctx: RunContext,
    specs: list[TaskSpec],
    url: str,
    config: Config,
    store: Store,
    progress: Progress,
) -> bool:
    sink = Sink(url)
    runner = AgentRunner(ctx, sink, slots=config.parallel, name="ado-runner-local")
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task[int]] = []

    def on_signal() -> None:
        if not interrupted.is_set():
            interrupted.set()
            progress.note(
                f"interrupted: letting running agents finish (up to {config.interrupt_grace_s:g}s)"
            )
            draining.append(loop.create_task(runner.drain(config.interrupt_grace_s)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    pending = list(reversed(specs))
    inflight: dict[asyncio.Future[TaskOutcome], TaskSpec] = {}
    last_poll = 0.0
    try:
        while inflight or (pending and not interrupted.is_set()):
            while pending and len(inflight) < config.parallel and not interrupted.is_set():
                spec = pending.pop()
                inflight[asyncio.ensure_future(runner.run(spec))] = spec
                progress.task_started(spec)
            done, _ = await asyncio.wait(inflight, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                del inflight[future]
                progress.task_done(future.result())
            if time.monotonic() - last_poll > 1.0:
                last_poll = time.monotonic()
                progress.update(store.get_run(ctx.run_id).counts)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await sink.close()
    return interrupted.is_set()


# --- Ray -----------------------------------------------------------------------------------


def _drive_ray(
    ctx: RunContext,
    specs: list[TaskSpec],
    url: str,
    config: Config,
    store: Store,
    progress: Progress,
) -> bool:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started = _init_ray(config)
    namespace = config.ray.namespace
    suffix = ctx.run_id
    # Ray's stubs do not know an actor class's methods; handles are typed Any here.
    sink_class: Any = ray.remote(Sink)
    runner_class: Any = ray.remote(AgentRunner)
    sink = sink_class.options(
        name=f"ado-sink-{suffix}",
        namespace=namespace,
        num_cpus=0,
        # The sink writes the SQLite file on this machine: keep it here.
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        ),
    ).remote(url)
    slots = runner_slots(config.parallel, config.ray.slots_per_runner)
    buffer = max(2, config.parallel // 10)
    runners = [
        runner_class.options(
            name=f"ado-runner-{suffix}-{i}",
            namespace=namespace,
            num_cpus=config.ray.runner_num_cpus,
            max_concurrency=n + buffer + 4,
        ).remote(ctx, sink, n, f"ado-runner-{suffix}-{i}")
        for i, n in enumerate(slots)
    ]
    ray.get([r.ready.remote() for r in runners])
    pending = list(reversed(specs))
    inflight: dict[Any, tuple[int, TaskSpec]] = {}
    load = [0] * len(runners)
    interrupted = False
    last_poll = 0.0
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        try:
            while pending or inflight:
                while pending and len(inflight) < config.parallel + buffer:
                    spec = pending.pop()
                    i = min(range(len(runners)), key=lambda k: load[k] - slots[k])
                    ref = runners[i].run.options(name=f"ado:{spec.repo.name}").remote(spec)
                    inflight[ref] = (i, spec)
                    load[i] += 1
                    progress.task_started(spec)
                ready, rest = ray.wait(list(inflight), num_returns=1, timeout=0.5)
                if ready and rest:
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                for ref in ready:
                    i, spec = inflight.pop(ref)
                    load[i] -= 1
                    progress.task_done(_outcome(ray, ref, spec, sink))
                if time.monotonic() - last_poll > 1.0:
                    last_poll = time.monotonic()
                    progress.update(store.get_run(ctx.run_id).counts)
        except KeyboardInterrupt:
            interrupted = True
            progress.note(
                f"interrupted: letting running agents finish (up to {config.interrupt_grace_s:g}s)"
            )
            ray.get([r.drain.remote(config.interrupt_grace_s) for r in runners])
            for ref, (_, spec) in inflight.items():
                progress.task_done(_outcome(ray, ref, spec, sink))
        ray.get(sink.close.remote())
    finally:
        signal.signal(signal.SIGTERM, previous)
        for actor in [*runners, sink]:
            ray.kill(actor)
        if started:
            ray.shutdown()
    return interrupted


def _outcome(ray: Any, ref: Any, spec: TaskSpec, sink: Any) -> TaskOutcome:
    """A task's outcome; a runner that died mid-task fails the task as infrastructure."""
    try:
        outcome: TaskOutcome = ray.get(ref)
        return outcome
    except ray.exceptions.RayError as exc:
        message = f"runner lost: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        update = TaskUpdate(
            spec.task_id, TaskState.FAILED, failure_class=FailureClass.INFRA, error=message
        )
        ray.get(sink.submit.remote([update], True))
        return TaskOutcome(
            spec.task_id,
            spec.repo.key,
            TaskState.FAILED,
            failure_class=FailureClass.INFRA,
            error=message,
        )


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def runner_slots(parallel: int, per_runner: int) -> list[int]:
    """Split `parallel` agent slots over as few runners as `per_runner` allows, evenly."""
    count = -(-parallel // per_runner)
    base, extra = divmod(parallel, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def _init_ray(config: Config) -> bool:
    """Join the configured cluster or start a local instance; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {
        "namespace": config.ray.namespace,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if config.ray.address:
        ray.init(address=config.ray.address, **kwargs)
    else:
        ray.init(num_cpus=config.ray.num_cpus, include_dashboard=config.ray.dashboard, **kwargs)
    return True
