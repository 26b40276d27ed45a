"""`AgentRunner`: supervises up to `slots` agents at once.

Ray makes it an async actor (`max_concurrency` above `slots`, so a few tasks can wait in
line and `drain` can still be called while every slot is busy); `--no-ray` uses the same
class in-process. Agents are external processes, so one runner waits on many of them:
`--parallel 100` means a handful of Python workers, not a hundred.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ado_ray.agents import Agent, make_agent
from ado_ray.engine import workspace as ws
from ado_ray.engine.spec import Emit, RunContext, TaskSpec
from ado_ray.engine.task import execute, tidy_workspace
from ado_ray.limits.actor import LimiterClient
from ado_ray.models import Event, TaskOutcome, TaskState, TaskUpdate

INTERRUPTED = "interrupted; `ado resume` continues it from its last checkpoint"


def sink_emitter(sink: Any) -> Emit:
    """Send events to the sink, whether it is a Ray actor handle or an in-process `Sink`."""
    if hasattr(sink.submit, "remote"):
        return RemoteEmitter(sink)

    async def emit_local(events: Sequence[Event], durable: bool) -> None:
        await sink.submit(list(events), durable)

    return emit_local


class RemoteEmitter:
    """A runner's events to the sink actor, fewer round trips, in order.

    Non-durable events wait up to `delay_s` to travel with others (or with the next
    durable call, which sends everything before it). One send at a time, so the sink
    receives them in the order they were emitted (Ray does not order an async actor's
    calls that were not awaited).

    An agent's start (the `running` update, with its attempt number) travels at once: if
    this runner is lost, the driver reads from the store whether the task's agent had
    started, and so whether the loss cost the task an attempt (engine/requeue.py).
    """

    def __init__(self, sink: Any, delay_s: float = 0.1) -> None:
        self.sink, self.delay_s = sink, delay_s
        self.buffer: list[Event] = []
        self.lock = asyncio.Lock()
        self.flusher: asyncio.Task[None] | None = None

    async def __call__(self, events: Sequence[Event], durable: bool) -> None:
        self.buffer.extend(events)
        if durable:
            await self.send(True)
        elif any(isinstance(e, TaskUpdate) and e.state is TaskState.RUNNING for e in events):
            await self.send(False)
        elif self.flusher is None:
            self.flusher = asyncio.ensure_future(self.flush_later())

    async def flush_later(self) -> None:
        await asyncio.sleep(self.delay_s)
        self.flusher = None
        await self.send(False)

    async def send(self, durable: bool) -> None:
        async with self.lock:
            batch, self.buffer = self.buffer, []
            if batch:
                await self.sink.submit.remote(batch, durable)


class AgentRunner:
    def __init__(
        self, ctx: RunContext, sink: Any, slots: int, name: str, limiter: LimiterClient
    ) -> None:
        self.ctx = ctx
        self.name = name
        # One adapter per route, keyed by the route's limit key.
        self.agents: dict[str, Agent] = {
            route.key: make_agent(
                ctx.agent.model_copy(update={"name": route.agent, "cmd": route.cmd})
            )
            for route in ctx.routes
        }
        self.limiter = limiter
        self.stop_reason: str | None = None  # set when a budget forbids new agent starts
        self._emit = sink_emitter(sink)
        self._slots = asyncio.Semaphore(slots)
        self._slot_count = slots
        self._threads: ThreadPoolExecutor | None = None
        self._active: dict[str, asyncio.Future[TaskOutcome]] = {}
        self._draining = False

    async def ready(self) -> str:
        return self.name

    async def run(self, spec: TaskSpec) -> TaskOutcome:
        if self._threads is None:
            # Git runs in threads (asyncio.to_thread); the default pool has cpu_count + 4
            # threads, which would queue the git work of most slots behind a few.
            self._threads = ThreadPoolExecutor(self._slot_count + 4, thread_name_prefix="ado-git")
            asyncio.get_running_loop().set_default_executor(self._threads)
        async with self._slots:
            if self._draining:
                return TaskOutcome(spec.task_id, spec.repo.key, TaskState.QUEUED, error=INTERRUPTED)
            inner = asyncio.ensure_future(
                execute(
                    self.ctx,
                    spec,
                    self.agents,
                    self._emit,
                    self.name,
                    self.limiter,
                    lambda: self.stop_reason,
                )
            )
            self._active[spec.task_id] = inner
            try:
                outcome = await inner
                task_dir = ws.task_dir(self.ctx.work_root, self.ctx.run_id, spec.task_id)
                await asyncio.to_thread(tidy_workspace, self.ctx, task_dir, outcome.state)
                return outcome
            except asyncio.CancelledError:
                if not self._draining:
                    raise
                await self._emit(
                    [TaskUpdate(spec.task_id, TaskState.QUEUED, error=INTERRUPTED)], True
                )
                return TaskOutcome(spec.task_id, spec.repo.key, TaskState.QUEUED, error=INTERRUPTED)
            finally:
                del self._active[spec.task_id]

    async def stop_new_agents(self, reason: str) -> None:
        """Start no more agents (running ones finish); tasks that would start one are skipped."""
        self.stop_reason = reason

    async def drain(self, grace_s: float) -> int:
        """Start no more tasks; give running ones `grace_s`, then cancel them (their agents'
        process groups are killed). Return how many were cancelled."""
        self._draining = True
        deadline = time.monotonic() + grace_s
        while self._active and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        leftover = list(self._active.values())
        for future in leftover:
            future.cancel()
        if leftover:
            await asyncio.wait(leftover, timeout=self.ctx.agent.kill_grace_s + 10)
        return len(leftover)
