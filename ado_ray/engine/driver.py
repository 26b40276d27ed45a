"""The driver: plan a run (or load one to resume), hold its lock, hand tasks to runners.

It never keeps more than `--parallel` plus a small buffer of tasks in flight, collects
outcomes as they finish and feeds the progress display. Ctrl-C (or SIGTERM) stops
submission, gives running agents a grace period, and leaves every unfinished task
resumable. The same loop drives Ray actors or, with `no_ray`, the same runner and task
function in this process (engine/backends.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import SecretStr

from ado_ray.agents.routing import routes
from ado_ray.config import Config
from ado_ray.engine import workspace as ws
from ado_ray.engine.agent_run import Session
from ado_ray.engine.backends import Backend, LocalBackend, RayBackend, RayThread, record_failure
from ado_ray.engine.lease import HeldLease, run_lock
from ado_ray.engine.progress import Progress
from ado_ray.engine.requeue import Requeue
from ado_ray.engine.spec import RunContext, TaskSpec
from ado_ray.errors import LeaseLostError, StoreError, UsageError, WorkspaceError
from ado_ray.models import (
    SUCCESS_STATES,
    FailureClass,
    RepoSpec,
    RunStatus,
    Step,
    TaskOutcome,
    TaskState,
    TaskUpdate,
)
from ado_ray.store import RunRecord, Store, TaskRecord
from ado_ray.testing import crash, crash_requested

T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
PAGE = 1000  # tasks read from the store at a time


@dataclass(frozen=True)
class BatchResult:
    """A run as its driver left it: the run (with its counts per state, from the store),
    whether it was interrupted, and its summary (reports.run_summary), read from the store
    only when asked for: a run of 100,000 tasks holds none of them here. `write_json`
    writes the summary as JSON a page of tasks at a time (`ado batch --json`)."""

    run: RunRecord
    interrupted: bool
    summarize: Callable[[], dict[str, Any]] | None = field(default=None, repr=False)
    write_json: Callable[[IO[str]], None] | None = field(default=None, repr=False)

    @cached_property
    def summary(self) -> dict[str, Any]:
        return self.summarize() if self.summarize is not None else {}

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.run.counts)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return exit_code(self.run.counts)


def exit_code(counts: Mapping[str, int]) -> int:
    """0 if every task changed or had no change, else 1 (a run's exit code, uninterrupted)."""
    ok = {state.value for state in SUCCESS_STATES}
    return EXIT_OK if all(state in ok for state, n in counts.items() if n) else EXIT_FAILED


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


def task_specs(store: Store, tasks: Sequence[TaskRecord]) -> list[TaskSpec]:
    """The unfinished tasks, with their checkpoints and any interrupted agent session (one
    read of the sessions and one of the checkpoints for all of them)."""
    tasks = [task for task in tasks if not task.state.terminal]
    ids = [task.task_id for task in tasks]
    all_sessions = store.sessions_of(ids) if ids else {}
    checkpoints = store.checkpoints_of(ids) if ids else {}
    specs = []
    for task in tasks:
        sessions = all_sessions.get(task.task_id, [])
        last = sessions[-1] if sessions else None
        session = None
        if last is not None and last.outcome == "interrupted" and last.session_id:
            session = Session(str(last.usage.get("provider")), last.session_id)
        specs.append(
            TaskSpec(
                task.task_id,
                task.repo,
                task.attempt,
                checkpoints.get(task.task_id, {}),
                session,
                recorded_attempts=max((s.attempt for s in sessions), default=0),
            )
        )
    return specs


def run_tasks(store: Store, run_id: str, page: int | None = None) -> Iterator[TaskRecord]:
    """Every task of the run, in list order, read a page at a time."""
    after = -1
    while tasks := store.task_page(run_id, after, page or PAGE):
        yield from tasks
        after = tasks[-1].seq


class Pending:
    """The run's unfinished tasks still to hand out, in list order: read from the store a
    page at a time (`page` tasks with their checkpoints and sessions, a few queries), so
    the driver never holds more than a page of specs whatever the run's size. The tasks
    after the page are read when it is used up: their state is still the one they had
    when the driver started, as no one else drives the run."""

    def __init__(self, store: Store, run_id: str, page: int | None = None) -> None:
        self.store, self.run_id, self.page = store, run_id, page or PAGE
        self.after = -1  # the seq of the last task read
        self.specs: collections.deque[TaskSpec] = collections.deque()
        self.done = False  # no task after `after` is unfinished

    def read(self) -> bool:
        """Whether a task is left, reading the next page if need be (a blocking read)."""
        while not self.specs and not self.done:
            tasks = self.store.task_page(self.run_id, self.after, self.page, unfinished=True)
            if len(tasks) < self.page:
                self.done = True
            if tasks:
                self.after = tasks[-1].seq
                self.specs.extend(task_specs(self.store, tasks))
        return bool(self.specs)

    async def more(self) -> bool:
        """`read`, off the event loop when a page must be read."""
        if self.specs or self.done:
            return bool(self.specs)
        return await asyncio.to_thread(self.read)

    def pop(self) -> TaskSpec:
        return self.specs.popleft()


def drive(
    store: Store,
    config: Config,
    run: RunRecord,
    prompt: str | None,
    progress: Progress,
    cwd: Path | None = None,
    requeue: Sequence[TaskState] = (),
    ray: RayThread | None = None,
) -> BatchResult:
    """Run every unfinished task of `run`; return the run's final state. Tasks in a state
    of `requeue` (a resume's `--retry-failed`, `ado publish`) are queued again first, under
    the run's lease. `ray`: Ray already begun by the caller (api.py), else started here."""
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
        keep_workspaces=config.keep_workspaces,
        limits=dict(config.limits),
        limit_wait_timeout_s=config.limit_wait_timeout_s,
        routes=routes(config),
        prices=dict(config.prices),
        max_cost_per_task_usd=config.max_cost_per_task_usd,
        publish=config.publish,
        forges=dict(config.forges),
        tokens=forge_tokens(config, (task.repo for task in run_tasks(store, run.run_id))),
    )
    with run_lock(store, run.run_id, config.lease_ttl_s) as lease:
        ctx = dataclasses.replace(ctx, fence=lease.fence)  # on every write of the run's sink
        store.set_run_status(run.run_id, RunStatus.RUNNING, fence=lease.fence)
        if requeue:
            store.requeue_tasks(run.run_id, list(requeue), fence=lease.fence)
        pending = Pending(store, run.run_id)
        pending.read()  # the first page
        progress.start(store.get_run(run.run_id))
        url = state_url(config, cwd)
        backend: Backend = (
            LocalBackend(ctx, url, config) if config.no_ray else RayBackend(ctx, url, config, ray)
        )
        budget = Budget(config.max_cost_usd, spent_so_far(store, run.run_id))
        if crash_requested("planned"):  # a test hook (ado_ray/testing.py); bench/scale.py
            crash()
        try:
            interrupted = run_sync(
                _loop(backend, ctx, pending, config, store, progress, budget, lease)
            )
        except LeaseLostError:
            with contextlib.suppress(StoreError):  # refused if another driver has the run now
                store.set_run_status(run.run_id, RunStatus.INTERRUPTED, fence=lease.fence)
            raise
        store.set_run_status(
            run.run_id,
            RunStatus.INTERRUPTED if interrupted else RunStatus.FINISHED,
            fence=lease.fence,
        )
        final = store.get_run(run.run_id)
        progress.stop(final)
        return BatchResult(final, interrupted)


def forge_tokens(config: Config, repos: Iterable[RepoSpec]) -> dict[str, SecretStr]:
    """host -> token for the forges the run's repositories are on, read from each forge's
    `token_env` here in the driver (tokens never enter the store or the config dump)."""
    hosts = {repo.key.split("/", 1)[0] for repo in repos if not repo.key.startswith("/")}
    tokens = {host: config.forges[host].token() for host in sorted(hosts & set(config.forges))}
    return {host: token for host, token in tokens.items() if token is not None}


def respec(store: Store, task: TaskRecord) -> TaskSpec:
    """An unfinished task's spec as the store has it now (a task whose runner was lost)."""
    return with_bundle(store, task_specs(store, [task])[0])


def with_bundle(store: Store, spec: TaskSpec) -> TaskSpec:
    """A task past `committed` but not published carries its stored commit to the runner;
    one with an interrupted session, that session's stored files (`with_session_state`)."""
    spec = with_session_state(store, spec)
    if not _wants_bundle(spec):
        return spec
    stored = store.bundle(spec.task_id)
    return dataclasses.replace(spec, bundle=stored[1]) if stored else spec


def with_session_state(store: Store, spec: TaskSpec) -> TaskSpec:
    """A task that will continue an interrupted agent session carries the files of that
    session the store has, so that any node can continue it (read here, at submission, so
    that a large run never holds them all)."""
    if spec.session is None or not _wants_session_state(spec):
        return spec
    stored = store.session_state(spec.task_id)
    if stored is None or stored[0] != spec.session.session_id:
        return spec
    return dataclasses.replace(spec, session_state=stored[1])


def _wants_bundle(spec: TaskSpec) -> bool:
    return Step.COMMITTED in spec.checkpoints and Step.PUBLISHED not in spec.checkpoints


def _wants_session_state(spec: TaskSpec) -> bool:
    return spec.session is not None and Step.AGENT_DONE not in spec.checkpoints


def wants_stored(spec: TaskSpec) -> bool:
    """Whether `with_bundle` has anything to read for `spec` (most tasks: nothing)."""
    return _wants_bundle(spec) or _wants_session_state(spec)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, also from a thread that already runs a loop (a Jupyter kernel)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="ado-driver") as pool:
        return pool.submit(asyncio.run, coro).result()


async def _loop(
    backend: Backend,
    ctx: RunContext,
    pending: Pending,
    config: Config,
    store: Store,
    progress: Progress,
    budget: Budget,
    lease: HeldLease | None = None,
) -> bool:
    """Submit with a bound, collect outcomes, watch health; True if the run was interrupted.

    SIGINT/SIGTERM stop submission and give running agents `interrupt_grace_s`. A store
    that stays unreachable beyond `store_outage_limit_s` stops the run the same way and
    raises `StoreError` at the end: every task is left resumable. A lost `lease` stops
    submission at once and the running agents without grace, and raises `LeaseLostError`.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    health = Health(progress, lease)

    def interrupt(reason: str, grace_s: float = config.interrupt_grace_s) -> None:
        if not stop.is_set():
            stop.set()
            progress.note(
                f"{reason}: letting running agents finish (up to {grace_s:g}s)"
                if grace_s
                else f"{reason}: starting nothing more, stopping the running agents now"
            )
            draining.append(loop.create_task(backend.drain(grace_s)))

    draining: list[asyncio.Task[None]] = []
    signals = _handle_signals(loop, interrupt)
    inflight: dict[asyncio.Future[TaskOutcome], TaskSpec] = {}
    limit = config.parallel + (0 if config.no_ray else max(2, config.parallel // 10))
    requeue = Requeue(backend, store, ctx.run_id, respec, ctx.max_attempts, progress, stop.is_set)
    try:
        await backend.start()
        for note in backend.notes:  # the Ray dashboard's URL, and how to pass its token
            progress.note(note)
        while inflight or (not stop.is_set() and await pending.more()):
            while len(inflight) < limit and not stop.is_set() and await pending.more():
                if lost := health.lease_lost():
                    interrupt(lost, 0)
                    break
                spec = pending.pop()
                if wants_stored(spec):  # a read of the store: off the loop, and only then
                    spec = await asyncio.to_thread(with_bundle, store, spec)
                inflight[asyncio.ensure_future(requeue.run(spec))] = spec
                progress.task_started(spec)
            done, _ = await asyncio.wait(inflight, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                spec = inflight.pop(future)
                outcome = await _outcome(backend, future, spec)
                progress.task_done(outcome)
                if budget.spend(outcome.cost_usd):
                    progress.note(f"{budget.reason}: starting no more agents")
                    await backend.stop_new_agents(budget.reason)
                    await _skip(backend, progress, pending, budget.reason)
            gave_up = await health.check(backend, store, ctx.run_id)
            if lost := health.lease_lost():
                interrupt(lost, 0)
            elif gave_up:
                interrupt("the state store is unreachable")
        await asyncio.gather(*draining)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        try:
            await backend.close()
        except StoreError as exc:
            if not (health.store_gave_up or health.lease_lost()):  # else: said below
                raise
            health.closing_error = exc
    if lost := health.lease_lost():
        raise LeaseLostError(health.lease_message(lost, ctx.run_id))
    if health.store_gave_up:
        raise StoreError(
            f"the state store was unreachable for more than {config.store_outage_limit_s:g}s, "
            f"so the run stopped; once it is back, continue with: ado resume {ctx.run_id}"
        )
    return stop.is_set()


def _handle_signals(loop: asyncio.AbstractEventLoop, interrupt: Callable[[str], None]) -> list[int]:
    """Ctrl-C and SIGTERM interrupt the run; only possible in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt, "interrupted")
    return [signal.SIGINT, signal.SIGTERM]


async def _outcome(
    backend: Backend, future: asyncio.Future[TaskOutcome], spec: TaskSpec
) -> TaskOutcome:
    """A finished task's outcome; an exception escaping the runner fails the task (infra).
    (A lost runner is not one: `Requeue` hands its tasks out again.)"""
    try:
        return future.result()
    except Exception as exc:
        cause = getattr(exc, "cause", None) or exc  # a Ray task error: what the runner raised
        lines = str(cause).splitlines()
        message = f"{type(cause).__name__}: {lines[0] if lines else ''}"
        update = TaskUpdate(
            spec.task_id, TaskState.FAILED, failure_class=FailureClass.INFRA, error=message
        )
        return await record_failure(backend, update, spec)


class Budget:
    """`--max-cost` for the run: once spent, no new agent starts anywhere in the cluster."""

    def __init__(self, cap_usd: float | None, spent_usd: float) -> None:
        self.cap_usd, self.spent_usd = cap_usd, spent_usd
        self.reason = ""

    def spend(self, cost_usd: float) -> bool:
        """Add a task's cost; True the first time the cap is reached."""
        self.spent_usd += cost_usd
        if self.cap_usd is None or self.reason or self.spent_usd < self.cap_usd:
            return False
        self.reason = f"the run cost ${self.spent_usd:.2f}, at --max-cost ${self.cap_usd:g}"
        return True


def spent_so_far(store: Store, run_id: str) -> float:
    """What the run's agent sessions cost before this driver (a resumed run)."""
    return store.run_cost(run_id)


async def _skip(backend: Backend, progress: Progress, pending: Pending, reason: str) -> None:
    """Tasks never submitted: skipped, with the reason (`--retry-failed` runs them again)."""
    while await pending.more():
        spec = pending.pop()
        update = TaskUpdate(spec.task_id, TaskState.SKIPPED, error=f"no agent started: {reason}")
        await backend.record(update)
        progress.task_started(spec)
        progress.task_done(
            TaskOutcome(spec.task_id, spec.repo.key, TaskState.SKIPPED, error=update.error)
        )


class Health:
    """About once a second: counts from the store, and whether the store and the limiter
    answer. Outages are shown, not fatal; only a store outage beyond the sink's limit
    stops the run. At every look, whether the run's lease is still this driver's (the
    renewal thread's verdict, or a write the store refused)."""

    def __init__(self, progress: Progress, lease: HeldLease | None = None, every_s: float = 1.0):
        self.progress = progress
        self.lease = lease
        self.every_s = every_s
        self.last = 0.0
        self.store_gave_up = False
        self.closing_error: StoreError | None = None  # closing the sink after a stop failed
        self.shown: dict[str, float | None] = {"store": None, "limiter": None}

    def lease_lost(self) -> str | None:
        return self.lease.lost() if self.lease is not None else None

    async def check(self, backend: Backend, store: Store, run_id: str) -> bool:
        if time.monotonic() - self.last < self.every_s:
            return False
        self.last = time.monotonic()
        with contextlib.suppress(StoreError):  # the sink's status tells the user about it
            self.progress.update(await asyncio.to_thread(lambda: store.get_run(run_id).counts))
        sink = await backend.sink_status()
        if sink.get("fenced") and self.lease is not None:
            self.lease.lose(str(sink["fenced"]))
        self._show("store", sink["failing_since"], sink["last_error"])
        limiter = await backend.limiter_status()
        self._show("limiter", limiter.get("unavailable_since"), limiter.get("last_error"))
        self.store_gave_up = bool(sink["gave_up"])
        return self.store_gave_up

    def lease_message(self, lost: str, run_id: str) -> str:
        """What the driver says when it stopped because its lease was lost."""
        refused = self.closing_error if isinstance(self.closing_error, LeaseLostError) else None
        parts = [lost]
        if refused is not None and str(refused) not in lost:
            parts.append(str(refused))
        elif self.closing_error is not None:
            parts.append(f"events not yet written are lost ({self.closing_error})")
        parts.append(
            "this driver stopped starting agents and stopped its running ones; the run is "
            f"resumable: ado resume {run_id} (refused while another driver holds the lease)"
        )
        return "; ".join(parts)

    def _show(self, what: str, since: float | None, error: str | None) -> None:
        if since == self.shown[what]:
            return
        self.shown[what] = since
        if since is None:
            self.progress.note(f"the {what} answers again")
        else:
            when = datetime.fromtimestamp(since, UTC).strftime("%H:%M:%S")
            self.progress.note(f"the {what} is unreachable since {when} UTC ({error}); retrying")
