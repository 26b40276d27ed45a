"""Where a run's tasks execute: in this process, or on Ray actors.

Both backends offer the driver the same small surface, so it has one loop:
`submit(spec)` (an awaitable outcome), `drain(grace)`, `stop_new_agents(reason)`,
`flush()`, `sink_status()`, `limiter_status()`, `record(update)` and `close()`, and once
started `notes` (what to tell the user: the Ray dashboard). Each hosts the run's sink and
runners; the shared rate limiter is a detached Ray actor
(`ado-rate-limiter`) or, in process, a local service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ado_ray.cluster.ray_auth import load_token
from ado_ray.config import Config
from ado_ray.engine.runner import INTERRUPTED, AgentRunner
from ado_ray.engine.spec import RunContext, TaskSpec
from ado_ray.errors import ServiceUnavailableError, UsageError
from ado_ray.limits.actor import (
    ACTOR_NAME,
    LimiterClient,
    RateLimiterService,
    limiter_actor,
)
from ado_ray.models import TaskOutcome, TaskState, TaskUpdate
from ado_ray.store.sink import Sink
from ado_ray.testing import CRASH_ENV
from ado_ray.trace import mark

MAX_FAILED_STARTS = 3  # runner actors that die before they answer, before a run gives up


class LocalBackend:
    """Everything in this process: the `--no-ray` debugging path."""

    notes: tuple[str, ...] = ()

    def __init__(self, ctx: RunContext, url: str, config: Config) -> None:
        self.sink = Sink(url, give_up_after_s=config.store_outage_limit_s, fence=ctx.fence)
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

    async def flush(self) -> None:
        await self.sink.flush()

    async def sink_status(self) -> dict[str, Any]:
        return self.sink.status()

    async def limiter_status(self) -> dict[str, Any]:
        return await self.limiter.status()

    async def record(self, update: TaskUpdate) -> None:
        await self.sink.submit([update], True)

    async def close(self) -> None:
        await self.sink.close()
        await self.limiter_service.close()


class RunnerLost(Exception):
    """The runner a task was on died (its process, or its node) before the task returned."""

    def __init__(self, runner: str, cause: BaseException) -> None:
        super().__init__(f"runner {runner} lost: {type(cause).__name__}")
        self.runner = runner


@dataclass
class _Runner:
    """One runner actor, as the Ray backend sees it."""

    name: str
    handle: Any
    slots: int
    started: asyncio.Task[bool]  # True once it answered; False if it died first
    load: int = 0  # tasks handed to it and not yet returned
    alive: bool = True

    @property
    def ready(self) -> bool:
        return self.alive and self.started.done() and self.started.result()


class RayBackend:
    """A sink actor pinned to this node, runner actors anywhere, the shared limiter actor.

    A runner that dies (its process is killed, its node goes away) fails none of its tasks:
    `submit` raises `RunnerLost` for each, so the driver can put them back in the queue
    (engine/requeue.py), and a replacement runner starts. Tasks go only to runners that
    answer, so a replacement that cannot be placed yet holds nothing up while another runs.
    """

    def __init__(
        self, ctx: RunContext, url: str, config: Config, ray: RayThread | None = None
    ) -> None:
        self.ctx, self.url, self.config = ctx, url, config
        self.slots = runner_slots(config.parallel, config.ray.slots_per_runner)
        self.buffer = max(2, config.parallel // 10)
        self.runners: list[_Runner] = []
        # Ray, begun by the caller while it planned (it then waits for the thread), or here.
        self.ray, self.own_ray = (ray, False) if ray is not None else (RayThread(), True)
        self.notes: tuple[str, ...] = ()  # for the user, once started: the dashboard
        self.stop_reason: str | None = None
        self.draining = False
        self.sink: Any = None

    async def start(self) -> None:
        """Start the sink, the limiter and the runners; return without waiting for the
        runners (a task waits in `_pick` for one that answers)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.ray.begin(self.config)
        self.notes = (await self.ray.wait()).notes
        namespace, suffix = self.config.ray.namespace, self.ctx.run_id
        # Ray's stubs do not know an actor class's methods; handles are typed Any here.
        sink_class: Any = ray.remote(Sink)
        self.runner_class: Any = ray.remote(AgentRunner)
        self.sink = sink_class.options(
            name=f"ado-sink-{suffix}",
            namespace=namespace,
            num_cpus=0,
            # A SQLite file lives on this machine: keep its writer here.
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False
            ),
        ).remote(self.url, give_up_after_s=self.config.store_outage_limit_s, fence=self.ctx.fence)
        # `limiter_actor` waits for the (detached) limiter to answer and checks its
        # settings: in a thread, while the runners start with its handle meanwhile.
        checked = asyncio.ensure_future(
            asyncio.to_thread(limiter_actor, self.config.limiter, namespace)
        )
        handle = await _named_actor(ACTOR_NAME, namespace, checked)
        self.limiter = LimiterClient(handle, namespace=namespace)
        for slots in self.slots:
            self._spawn(slots, crash_point(first=True))
        mark("actors created")
        await checked  # a limiter running with other settings: ConfigError, runners ended
        mark("limiter ready")

    def _spawn(self, slots: int, env: dict[str, str]) -> _Runner:
        """Start a runner actor; it takes tasks once it answers."""
        name = f"ado-runner-{self.ctx.run_id}-{len(self.runners)}"
        options: dict[str, Any] = {
            "name": name,
            "namespace": self.config.ray.namespace,
            "num_cpus": self.config.ray.runner_num_cpus,
            "max_concurrency": slots + self.buffer + 4,
        }
        if env:
            options["runtime_env"] = {"env_vars": env}
        handle = self.runner_class.options(**options).remote(
            self.ctx, self.sink, slots, name, self.limiter
        )
        runner = _Runner(name, handle, slots, asyncio.ensure_future(self._started(handle)))
        self.runners.append(runner)
        return runner

    async def _started(self, handle: Any) -> bool:
        """Wait for a new runner to answer (and pass it a stop already in force)."""
        try:
            await handle.ready.remote()
            mark("runner ready")
            if self.stop_reason is not None:
                await handle.stop_new_agents.remote(self.stop_reason)
        except Exception as exc:  # it died, or could not be placed or set up
            logging.getLogger(__name__).warning("a runner actor did not start: %s", exc)
            return False
        return True

    def submit(self, spec: TaskSpec) -> Awaitable[TaskOutcome]:
        return asyncio.ensure_future(self._run(spec))

    async def _run(self, spec: TaskSpec) -> TaskOutcome:
        import ray

        runner = await self._pick()
        if runner is None:  # interrupted while no runner answered
            return TaskOutcome(spec.task_id, spec.repo.key, TaskState.QUEUED, error=INTERRUPTED)
        runner.load += 1
        mark(f"task {spec.task_id} handed to {runner.name}")
        try:
            outcome: TaskOutcome = await runner.handle.run.options(
                name=f"ado:{spec.repo.name}"
            ).remote(spec)
            mark(f"task {spec.task_id} back")
            return outcome
        except ray.exceptions.RayTaskError:  # raised by the runner's code: not a lost runner
            raise
        except ray.exceptions.RayActorError as exc:  # the runner's process or node is gone
            self._lost(runner)
            raise RunnerLost(runner.name, exc) from exc
        finally:
            runner.load -= 1

    async def _pick(self) -> _Runner | None:
        """The answering runner with the most free slots; waits while none answers (None
        once the run is interrupted). A task beyond the free slots waits for the runners
        still starting, rather than queueing on one that answered first."""
        while not self.draining:
            ready = [r for r in self.runners if r.ready]
            starting = [r.started for r in self.runners if r.alive and not r.started.done()]
            best = min(ready, key=lambda r: r.load - r.slots, default=None)
            if best is not None and (best.load < best.slots or not starting):
                return best
            if not starting:  # every runner is lost: start one
                failed = sum(1 for r in self.runners if r.started.done() and not r.started.result())
                if failed >= MAX_FAILED_STARTS:
                    raise RuntimeError(
                        f"{failed} runner actors of this run died before they answered; see "
                        "the Ray logs (`ray logs`), then `ado resume` the run"
                    )
                self._spawn(max(self.slots), crash_point(first=False))
                continue
            await asyncio.wait(starting, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        return None

    def _lost(self, runner: _Runner) -> None:
        """Once per runner: forget it, make sure it is gone, start another in its place."""
        import ray

        if not runner.alive:
            return
        runner.alive = False
        with contextlib.suppress(Exception):  # unreachable but maybe alive: end it for good
            ray.kill(runner.handle, no_restart=True)
        if not self.draining:
            self._spawn(runner.slots, crash_point(first=False))

    async def drain(self, grace_s: float) -> None:
        self.draining = True
        await self._each("drain", grace_s)

    async def stop_new_agents(self, reason: str) -> None:
        self.stop_reason = reason  # runners started from now on get it too (`_started`)
        await self._each("stop_new_agents", reason)

    async def _each(self, method: str, *args: Any) -> None:
        """Call `method` on every answering runner; one that is lost meanwhile is skipped."""
        import ray

        runners = [r for r in self.runners if r.ready]
        calls = (getattr(r.handle, method).remote(*args) for r in runners)
        results = await asyncio.gather(*calls, return_exceptions=True)
        for runner, result in zip(runners, results, strict=True):
            if isinstance(result, ray.exceptions.RayActorError):
                self._lost(runner)
            elif isinstance(result, BaseException):
                raise result

    async def flush(self) -> None:
        await self.sink.flush.remote()

    async def sink_status(self) -> dict[str, Any]:
        status: dict[str, Any] = await self.sink.status.remote()
        return status

    async def limiter_status(self) -> dict[str, Any]:
        return await self.limiter.status()

    async def record(self, update: TaskUpdate) -> None:
        await self.sink.submit.remote([update], True)

    async def close(self) -> None:
        """Close the sink (its last events written), end the run's actors, and stop Ray:
        its shutdown runs in Ray's own thread; a `RayThread` the caller gave is joined by
        the caller (so results can be shown meanwhile), one begun here is joined here."""
        import ray

        mark("closing")
        try:
            if self.sink is not None:
                await self.sink.close.remote()
                mark("sink closed")
        finally:
            if self.ray.connected:
                actors = [*(r.handle for r in self.runners), self.sink]
                for actor in actors if self.sink is not None else []:
                    with contextlib.suppress(Exception):  # already gone
                        ray.kill(actor)
            self.ray.stop()
            if self.own_ray:
                await asyncio.to_thread(self.ray.join)


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


async def _named_actor(name: str, namespace: str, creating: asyncio.Future[Any]) -> Any:
    """The handle of the named actor `creating` makes (or finds), as soon as Ray knows the
    name: before it answers. `creating`'s own handle if it is done first."""
    import ray

    while not creating.done():
        try:
            return ray.get_actor(name, namespace=namespace)
        except ValueError:  # not registered yet
            await asyncio.wait([creating], timeout=0.02)
    return creating.result()


def crash_point(first: bool) -> dict[str, str]:
    """The environment that carries a test's crash point (ado_ray/testing.py) to runner
    actors, which do not inherit the driver's environment on a cluster it joined. Only the
    first runners get it; their replacements get it switched off, so that a run whose
    runner it killed finishes on the replacement. Empty when no test asked for one."""
    value = os.environ.get(CRASH_ENV)
    if not value:
        return {}
    return {CRASH_ENV: value if first else ""}


def runner_slots(parallel: int, per_runner: int) -> list[int]:
    """Split `parallel` agent slots over as few runners as `per_runner` allows, evenly."""
    count = -(-parallel // per_runner)
    base, extra = divmod(parallel, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


@dataclass(frozen=True)
class RayStart:
    """What `init_ray` did: `started` if it connected this process (`close` then shuts Ray
    down here), `attached` if to a Ray that runs on without it (a cluster, a kept local
    instance), and what to tell the user: the dashboard it started or kept up."""

    started: bool
    notes: tuple[str, ...] = ()
    attached: bool = False


class RayThread:
    """Ray for one driver, started and stopped in a thread of its own.

    `begin(config)` starts `init_ray` at once, so the driver parses the list, opens its
    store and plans while Ray comes up; `result()` (or `await wait()`) then waits for it.
    The thread lives until `stop()`, then shuts Ray down if it connected this process: on
    Linux Ray's processes die with the thread that started them (`PR_SET_PDEATHSIG`), so the
    thread that starts Ray must also be the one that stops it. `join()` waits for that.
    A failed start raises `ServiceUnavailableError` from `result()`/`wait()` (a
    `UsageError` as it is), and nothing of Ray is left running.
    """

    def __init__(self) -> None:
        self._started: Future[RayStart] = Future()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def attached(self) -> bool:
        """Ray answered, and runs on without this process (its end only disconnects)."""
        done = self._started.done() and self._started.exception() is None
        return done and self._started.result().attached

    @property
    def connected(self) -> bool:
        """Ray answered this process (and is not yet being shut down)."""
        done = self._started.done() and self._started.exception() is None
        return done and not self._stop.is_set()

    def begin(self, config: Config) -> None:
        """Start Ray for `config` in the background (once; nothing with `no_ray`)."""
        if self._thread is not None or config.no_ray:
            return
        mark("ray.init begun")
        self._thread = threading.Thread(
            target=self._main, args=(config,), name="ado-ray", daemon=True
        )
        self._thread.start()

    def _main(self, config: Config) -> None:
        # Ray warns that it sets no SIGTERM handler outside the main thread: the driver
        # loop sets its own there (engine/driver.py), so the warning is not the user's.
        ray_log = logging.getLogger("ray._private.worker")
        ray_log.addFilter(_not_main_thread_warning)
        try:
            started = init_ray(config)
        except BaseException as exc:
            self._started.set_exception(_start_error(config, exc))
            return
        finally:
            ray_log.removeFilter(_not_main_thread_warning)
        mark("ray.init done")
        self._started.set_result(started)
        self._stop.wait()
        if started.started:
            import ray

            _end_autoscaler_monitor()
            ray.shutdown()
            mark("ray.shutdown done")

    def result(self) -> RayStart | None:
        """Wait for Ray to answer; raise why it did not (None if never begun: `no_ray`)."""
        return None if self._thread is None else self._started.result()

    async def wait(self) -> RayStart:
        return await asyncio.wrap_future(self._started)

    def stop(self) -> None:
        """Let the thread shut Ray down (it does not wait: `join` does)."""
        self._stop.set()

    def join(self) -> None:
        """`stop`, and wait until Ray is shut down (or its start failed)."""
        self.stop()
        if self._thread is not None:
            self._thread.join()


def _not_main_thread_warning(record: logging.LogRecord) -> bool:
    return "SIGTERM handler is not set" not in record.getMessage()


def _end_autoscaler_monitor() -> None:
    """End the autoscaler monitor of the local instance this process started, before
    `ray.shutdown`. Ray 2.60 stops it last, with SIGTERM, after the GCS: it then tries to
    report its end to the gone GCS until Ray kills it a second later, a second of every
    run's teardown. A local instance of one driver has nothing to autoscale, so SIGKILL is
    safe. Private Ray API: where it is not as expected this does nothing."""
    with contextlib.suppress(Exception):
        from ray._private import worker

        node = worker._global_node
        if node is None or not node.is_head():
            return  # joined a cluster: not ours to touch
        for info in node.all_processes.get("monitor", []):
            info.process.kill()
            info.process.wait(timeout=1)


def _start_error(config: Config, exc: BaseException) -> BaseException:
    """Why Ray did not start, in the house wording; a `UsageError` (or an interrupt) as is."""
    if isinstance(exc, UsageError) or not isinstance(exc, Exception):
        return exc
    if config.ray.address:
        where = f"join the Ray cluster at {config.ray.address} (ray.address)"
        fix = f"is it up (`ray status --address {config.ray.address}`)?"
    else:
        kept = " kept up in .ado/ray (--keep-ray)" if config.ray.keep_dashboard else ""
        where = f"start the local Ray instance{kept}"
        fix = "see Ray's logs under its temp dir (RAY_TMPDIR, default /tmp/ray)"
    lines = str(exc).strip().splitlines()
    error = ServiceUnavailableError(
        f"could not {where}: {type(exc).__name__}: {lines[0] if lines else ''}; nothing "
        f"was started or written; {fix}"
    )
    error.__cause__ = exc
    return error


def init_ray(config: Config) -> RayStart:
    """Join the configured cluster, or the local instance `ray.keep_dashboard` keeps up
    (started if none runs), or start a local instance for this process."""
    import ray

    if ray.is_initialized():
        return RayStart(False)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {
        "namespace": config.ray.namespace,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    address = config.ray.address
    if not address and config.ray.keep_dashboard:
        from ado_ray.cluster.dashboard import keep_local_head, run_notes

        kept, started = keep_local_head(config.ray.num_cpus)
        _auth_mode(kept.client_env.get("RAY_AUTH_MODE", "token"))  # the mode it runs with
        ray.init(address=kept.address, **kwargs)
        return RayStart(True, tuple(run_notes(kept.dashboard_url, kept, started)), True)
    if address:
        # Ray 2.60 turns token authentication on by itself only for a cluster it starts or
        # finds with `auto`; a client given an address must be told, or it cannot join a
        # cluster that wants the token (one without token auth accepts such a client too).
        if load_token(os.environ) is not None:
            _auth_mode("token")
        ray.init(address=address, **kwargs)
        return RayStart(True, attached=True)
    # Token authentication, which Ray 2.60 turns on for a cluster it starts, chosen here:
    # Ray then does not warn on every run that it turned it on.
    _auth_mode("token")
    context = ray.init(
        num_cpus=config.ray.num_cpus, include_dashboard=config.ray.dashboard, **kwargs
    )
    if not (config.ray.dashboard and context.dashboard_url):
        return RayStart(True)
    from ado_ray.cluster.dashboard import note_run, run_notes

    url = f"http://{context.dashboard_url}"
    note_run(url)
    return RayStart(True, tuple(run_notes(url)))


def _auth_mode(mode: str) -> None:
    """`RAY_AUTH_MODE=mode` for this process and its children, unless the user chose a mode.
    Ray reads the variable once, when imported: refresh it, as Ray itself does when it turns
    token authentication on (without this, a process that imported Ray earlier would still
    run without the token)."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = mode
    from ray import _raylet

    ray_config: Any = getattr(_raylet, "Config", None)  # Ray's stubs do not declare it
    if ray_config is not None:
        ray_config.initialize("")
