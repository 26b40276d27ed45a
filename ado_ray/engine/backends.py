"""Where a run's tasks execute: in this process, or on Ray actors.

Both backends offer the driver the same small surface, so it has one loop:
`submit(spec)` (an awaitable outcome), `drain(grace)`, `stop_new_agents(reason)`,
`sink_status()`, `limiter_status()`, `record(update)` and `close()`. Each hosts the
run's sink and runners; the shared rate limiter is a detached Ray actor
(`ado-rate-limiter`) or, in process, a local service.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from typing import Any

from ado_ray.cluster.ray_auth import load_token
from ado_ray.config import Config
from ado_ray.engine.runner import AgentRunner
from ado_ray.engine.spec import RunContext, TaskSpec
from ado_ray.limits.actor import LimiterClient, RateLimiterService, limiter_actor
from ado_ray.models import FailureClass, TaskOutcome, TaskState, TaskUpdate
from ado_ray.store.sink import Sink


class LocalBackend:
    """Everything in this process: the `--no-ray` debugging path."""

    def __init__(self, ctx: RunContext, url: str, config: Config) -> None:
        self.sink = Sink(url, give_up_after_s=config.store_outage_limit_s)
        self.limiter_service = RateLimiterService(config.limiter)
        self.limiter = LimiterClient(self.limiter_service)
        self.runner = AgentRunner(ctx, self.sink, config.parallel, "ado-runner-local", self.limiter)

    async def start(self) -> None:
        pass

    def submit(self, spec: TaskSpec) -> Awaitable[TaskOutcome]:
        return asyncio.ensure_future(self.runner.run(spec))

    async def drain(self, grace_s: float) -> None:
        await self.runner.drain(grace_s)

    async def stop_new_agents(self, reason: str) -> None:
        await self.runner.stop_new_agents(reason)

    async def sink_status(self) -> dict[str, Any]:
        return self.sink.status()

    async def limiter_status(self) -> dict[str, Any]:
        return await self.limiter.status()

    async def record(self, update: TaskUpdate) -> None:
        await self.sink.submit([update], True)

    async def close(self) -> None:
        await self.sink.close()
        await self.limiter_service.close()


class RayBackend:
    """A sink actor pinned to this node, runner actors anywhere, the shared limiter actor."""

    def __init__(self, ctx: RunContext, url: str, config: Config) -> None:
        self.ctx, self.url, self.config = ctx, url, config
        self.slots = runner_slots(config.parallel, config.ray.slots_per_runner)
        self.buffer = max(2, config.parallel // 10)
        self.load = [0] * len(self.slots)
        self.started_ray = False

    async def start(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.started_ray = init_ray(self.config)
        namespace, suffix = self.config.ray.namespace, self.ctx.run_id
        # Ray's stubs do not know an actor class's methods; handles are typed Any here.
        sink_class: Any = ray.remote(Sink)
        runner_class: Any = ray.remote(AgentRunner)
        self.sink = sink_class.options(
            name=f"ado-sink-{suffix}",
            namespace=namespace,
            num_cpus=0,
            # A SQLite file lives on this machine: keep its writer here.
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False
            ),
        ).remote(self.url, give_up_after_s=self.config.store_outage_limit_s)
        self.limiter = LimiterClient(
            limiter_actor(self.config.limiter, namespace), namespace=namespace
        )
        self.runners = [
            runner_class.options(
                name=f"ado-runner-{suffix}-{i}",
                namespace=namespace,
                num_cpus=self.config.ray.runner_num_cpus,
                max_concurrency=n + self.buffer + 4,
            ).remote(self.ctx, self.sink, n, f"ado-runner-{suffix}-{i}", self.limiter)
            for i, n in enumerate(self.slots)
        ]
        await asyncio.gather(*(r.ready.remote() for r in self.runners))

    def submit(self, spec: TaskSpec) -> Awaitable[TaskOutcome]:
        i = min(range(len(self.runners)), key=lambda k: self.load[k] - self.slots[k])
        self.load[i] += 1
        ref = self.runners[i].run.options(name=f"ado:{spec.repo.name}").remote(spec)
        return asyncio.ensure_future(self._outcome(i, ref, spec))

    async def _outcome(self, i: int, ref: Any, spec: TaskSpec) -> TaskOutcome:
        import ray

        try:
            outcome: TaskOutcome = await ref
            return outcome
        except ray.exceptions.RayError as exc:  # the runner died, or its task raised
            message = f"runner lost: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            update = TaskUpdate(
                spec.task_id, TaskState.FAILED, failure_class=FailureClass.INFRA, error=message
            )
            return await record_failure(self, update, spec)
        finally:
            self.load[i] -= 1

    async def drain(self, grace_s: float) -> None:
        await asyncio.gather(*(r.drain.remote(grace_s) for r in self.runners))

    async def stop_new_agents(self, reason: str) -> None:
        await asyncio.gather(*(r.stop_new_agents.remote(reason) for r in self.runners))

    async def sink_status(self) -> dict[str, Any]:
        status: dict[str, Any] = await self.sink.status.remote()
        return status

    async def limiter_status(self) -> dict[str, Any]:
        return await self.limiter.status()

    async def record(self, update: TaskUpdate) -> None:
        await self.sink.submit.remote([update], True)

    async def close(self) -> None:
        import ray

        try:
            await self.sink.close.remote()
        finally:
            for actor in [*self.runners, self.sink]:
                ray.kill(actor)
            if self.started_ray:
                ray.shutdown()


Backend = LocalBackend | RayBackend


async def record_failure(backend: Backend, update: TaskUpdate, spec: TaskSpec) -> TaskOutcome:
    """Record a failure the runner could not; if the store is down too, say so and go on."""
    try:
        await backend.record(update)
    except Exception as exc:  # the store is unreachable: the task stays resumable
        logging.getLogger(__name__).warning("could not record %s: %s", spec.task_id, exc)
    return TaskOutcome(
        spec.task_id,
        spec.repo.key,
        update.state,
        failure_class=update.failure_class,
        error=update.error,
    )


def runner_slots(parallel: int, per_runner: int) -> list[int]:
    """Split `parallel` agent slots over as few runners as `per_runner` allows, evenly."""
    count = -(-parallel // per_runner)
    base, extra = divmod(parallel, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def init_ray(config: Config) -> bool:
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
        # Ray 2.60 turns token authentication on by itself only for a cluster it starts or
        # finds with `auto`; a client given an address must be told, or it cannot join a
        # cluster that wants the token (one without token auth accepts such a client too).
        if "RAY_AUTH_MODE" not in os.environ and load_token(os.environ) is not None:
            os.environ["RAY_AUTH_MODE"] = "token"
        ray.init(address=config.ray.address, **kwargs)
    else:
        ray.init(num_cpus=config.ray.num_cpus, include_dashboard=config.ray.dashboard, **kwargs)
    return True
