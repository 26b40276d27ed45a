"""One repository's task: workspace → agent → collect → publish, with checkpoints.

The same coroutine runs inside a Ray `AgentRunner` actor and in-process (`--no-ray`).

Exactly-once rests on one ordering rule: a checkpoint is durably written *before* the
side effect that depends on it. `agent_done` is stored before the runner commits, and
`committed` before it pushes. So after a crash at any moment:
- no `agent_done`: nothing left the workspace; the agent runs again on a fresh checkout;
- `agent_done`, no `committed`: the agent's edits are still in the task's workspace; the
  runner commits them (or finds the commit it already made) without running the agent
  (on another node, where that workspace is not, the agent runs again: see `execute`);
- `committed`: the runner (re-)pushes that very commit, which is a no-op if it got there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, NoReturn

from ado_ray import metrics
from ado_ray.agents import Agent, AgentContext
from ado_ray.agents.routing import Route
from ado_ray.engine import session_state
from ado_ray.engine import workspace as ws
from ado_ray.engine.agent_run import Session, TaskMemory, account, acquire_route
from ado_ray.engine.failures import TaskFailed, TaskStopped
from ado_ray.engine.process import (
    PIDFILE,
    agent_mark,
    build_env,
    kill_stale_agent,
    run_supervised,
    write_pidfile,
)
from ado_ray.engine.publish import Publisher, Target
from ado_ray.engine.spec import Emit, RunContext, TaskSpec
from ado_ray.errors import (
    AgentError,
    GitAuthError,
    LeaseLostError,
    OversizedFileError,
    SessionStateError,
    StoreError,
    WorkspaceError,
)
from ado_ray.limits.actor import LimiterClient
from ado_ray.limits.base import LimitSpec, LimitTimeout
from ado_ray.limits.config import route
from ado_ray.models import (
    BundleEvent,
    CheckpointEvent,
    Event,
    FailureClass,
    ProcessExit,
    SessionEvent,
    SessionStateEvent,
    Step,
    TaskOutcome,
    TaskState,
    TaskUpdate,
    UsageEvent,
)
from ado_ray.testing import crash, crash_requested

log = logging.getLogger(__name__)
MAX_RATE_LIMITED = 20  # provider limits one task may hit before it fails as rate_limited
DEFAULT_COOLDOWN_S = 60.0  # a limit signal without a reset time cools its key this long


async def execute(
    ctx: RunContext,
    spec: TaskSpec,
    agents: Mapping[str, Agent],
    emit: Emit,
    owner: str,
    limiter: LimiterClient,
    stop_reason: Callable[[], str | None] = lambda: None,
) -> TaskOutcome:
    """Run one task to a terminal state; the per-repository failure boundary.

    A retryable failure starts over from the checkpoints reached. A provider's rate limit
    is not the task's failure and uses up no attempt: its key cools down for every
    client, and the next try takes the next route (or waits for the reset).
    `agents` maps each route's limit key to its adapter. `spec.failures` attempts were
    spent before (by a runner that was lost).

    A task past `agent_done` but not `committed` whose agent's checkout is not on this node
    (it ran on a node that is gone) runs its agent again at the same base commit: those
    edits existed nowhere else. (Committing before `agent_done` is durable would not help:
    a crash during the commit would then cost a new agent run even on the same node.)
    """
    checkpoints = dict(spec.checkpoints)
    done, committed = Step.AGENT_DONE in checkpoints, Step.COMMITTED in checkpoints
    if done and not committed and not _agent_checkout_here(ctx, spec):
        del checkpoints[Step.AGENT_DONE]
    memory = TaskMemory(session=spec.session)
    tries, failures = 0, spec.failures
    while True:
        attempt = spec.attempt + tries + 1
        run = _Run(ctx, spec, agents, emit, owner, limiter, attempt, memory, stop_reason)
        try:
            return await run.pipeline(checkpoints)
        except TaskStopped as stopped:
            skipped = TaskUpdate(spec.task_id, TaskState.SKIPPED, error=str(stopped))
            await emit([skipped], True)
            return TaskOutcome(
                spec.task_id,
                spec.repo.key,
                TaskState.SKIPPED,
                error=str(stopped),
                cost_usd=memory.cost_usd,
            )
        except TaskFailed as failure:
            cls, message = failure.failure_class, str(failure)
        except LimitTimeout as exc:  # limit_wait_timeout_s ran out
            cls, message = FailureClass.RATE_LIMITED, str(exc)
        except LeaseLostError:
            raise  # the run is another driver's now: nothing to record, nothing to retry
        except Exception as exc:  # the one broad catch: isolate this repository
            cls, message = FailureClass.INFRA, f"{type(exc).__name__}: {exc}"
        tries += 1
        if cls is not FailureClass.RATE_LIMITED or tries > MAX_RATE_LIMITED:
            failures += 1
        if not cls.retryable or failures >= ctx.max_attempts or Step.AGENT_DONE in checkpoints:
            failed = TaskUpdate(spec.task_id, TaskState.FAILED, failure_class=cls, error=message)
            await emit([failed], True)
            return TaskOutcome(
                spec.task_id,
                spec.repo.key,
                TaskState.FAILED,
                failure_class=cls,
                error=message,
                cost_usd=memory.cost_usd,
            )


def tidy_workspace(ctx: RunContext, task_dir: Path, state: TaskState) -> None:
    """Free a finished task's disk: its checkout and the agent's home (which may hold
    copied credentials). Kept: the logs; the checkout of a failed task (to look into) and
    of a dry run's commit (to review); everything with `keep_workspaces`."""
    if ctx.keep_workspaces:
        return
    ws.remove_tree(task_dir / "home")
    if state is not TaskState.FAILED and not (ctx.dry_run and state is TaskState.CHANGED):
        ws.remove_tree(task_dir / "repo")


def _agent_checkout_here(ctx: RunContext, spec: TaskSpec) -> bool:
    """Whether this node holds the checkout the `agent_done` agent left its edits in: the
    task's checkout, and the route mark of that attempt (the last one with a session row),
    since a node may hold a checkout of an earlier, failed attempt of the same task."""
    task_dir = ws.task_dir(ctx.work_root, ctx.run_id, spec.task_id)
    if not (task_dir / "repo").is_dir():
        return False
    attempt = spec.recorded_attempts
    return attempt == 0 or (task_dir / "logs" / f"attempt-{attempt}.route").is_file()


class _Run:
    """One attempt at a task, from the checkpoints it has reached to a terminal state."""

    def __init__(
        self,
        ctx: RunContext,
        spec: TaskSpec,
        agents: Mapping[str, Agent],
        emit: Emit,
        owner: str,
        limiter: LimiterClient,
        attempt: int,
        memory: TaskMemory,
        stop_reason: Callable[[], str | None],
    ) -> None:
        self.ctx, self.spec, self.agents, self.emit = ctx, spec, agents, emit
        self.owner, self.limiter, self.attempt = owner, limiter, attempt
        self.memory, self.stop_reason = memory, stop_reason
        self.task_id, self.repo = spec.task_id, spec.repo
        self.task_dir = ws.task_dir(ctx.work_root, ctx.run_id, spec.task_id)
        self.repo_path = self.task_dir / "repo"
        self.publisher = Publisher(ctx, limiter, spec.repo)

    @property
    def host(self) -> str:
        """The host in limit keys (`git:<host>`, `forge:<host>`); `local` for local paths."""
        return "local" if self.repo.key.startswith("/") else self.repo.key.split("/", 1)[0]

    def limited(self, key: str) -> AbstractAsyncContextManager[object]:
        """Hold `key`'s budget around a block, if `limits:` (or a parent key) has one."""
        key, spec = route(self.ctx.limits, key)
        if spec == LimitSpec():
            return contextlib.nullcontext()
        return self.limiter.hold(key, spec, timeout_s=self.ctx.limit_wait_timeout_s)

    async def update(self, state: TaskState, durable: bool = False, **fields: Any) -> None:
        await self.emit([TaskUpdate(self.task_id, state, **fields)], durable)

    async def checkpoint(self, step: Step, data: dict[str, Any], durable: bool) -> None:
        await self.emit([CheckpointEvent(self.task_id, step, data)], durable)

    async def reached(self, step: Step) -> None:
        """A step's checkpoint is written: the place for a test's crash point."""
        if crash_requested(step.value):
            await self.emit([], True)  # everything before it is in the store
            crash()

    async def pipeline(self, checkpoints: dict[Step, dict[str, Any]]) -> TaskOutcome:
        ctx = self.ctx
        if Step.AGENT_DONE not in checkpoints:
            await self.update(
                TaskState.PREPARING,
                workspace=str(self.task_dir),
                lease_owner=self.owner,
                clear_failure=True,
            )
            # An agent of this task can have run on this node only in this directory (its
            # checkout, logs and pidfile are there), so none is left if it is new; else look
            # (a scan of every process here: too dear to make for every new task).
            fresh = not self.task_dir.exists()
            self.task_dir.mkdir(parents=True, exist_ok=True)
            if not fresh:
                await asyncio.to_thread(kill_stale_agent, self.task_dir)
            resumable = Step.PREPARED in checkpoints and self.repo_path.is_dir()
            if self.memory.session is None and resumable and self.attempt == self.spec.attempt + 1:
                self.memory.session = await asyncio.to_thread(self.session_from_log)
            if self.memory.session is None or not resumable:
                checkpoints[Step.PREPARED] = await self.prepare(checkpoints.get(Step.PREPARED))
                await self.checkpoint(Step.PREPARED, checkpoints[Step.PREPARED], durable=False)
                await self.reached(Step.PREPARED)
                base_sha = checkpoints[Step.PREPARED]["base_sha"]
                await self.update(TaskState.PREPARING, base_sha=base_sha)
            checkpoints[Step.AGENT_DONE] = await self.run_agent(checkpoints[Step.PREPARED])
            await self.checkpoint(Step.AGENT_DONE, checkpoints[Step.AGENT_DONE], durable=True)
            await self.reached(Step.AGENT_DONE)
        base_sha = checkpoints[Step.PREPARED]["base_sha"]

        ended = False  # `no_change` written with the `committed` checkpoint
        if Step.COMMITTED not in checkpoints:
            await self.update(TaskState.COLLECTING, lease_owner=self.owner)
            if not self.repo_path.is_dir():
                raise TaskFailed(
                    FailureClass.INFRA,
                    f"the agent finished but its workspace {self.repo_path} is gone; "
                    "resume on the node that ran it, or re-run the task",
                )
            commit_sha = await asyncio.to_thread(self.commit, base_sha)
            checkpoints[Step.COMMITTED] = await self.keep_commit(base_sha, commit_sha)
            ended = commit_sha is None
            await self.reached(Step.COMMITTED)
        commit_sha = checkpoints[Step.COMMITTED]["commit_sha"]

        if commit_sha is None:
            if not ended:  # a resume from a `committed` of no commit
                await self.update(TaskState.NO_CHANGE, durable=True)
            cost = self.memory.cost_usd
            return TaskOutcome(self.task_id, self.repo.key, TaskState.NO_CHANGE, cost_usd=cost)
        pushed_to = None
        if not ctx.dry_run:
            published = checkpoints.get(Step.PUBLISHED)
            if published is None or (ctx.publish.pr and "number" not in published):
                published = await self.publish(checkpoints, commit_sha)
            pushed_to = published.get("remote", published["url"])
        await self.update(TaskState.CHANGED, durable=True, branch=ctx.branch, commit_sha=commit_sha)
        return TaskOutcome(
            self.task_id,
            self.repo.key,
            TaskState.CHANGED,
            branch=ctx.branch,
            commit_sha=commit_sha,
            pushed_to=pushed_to,
            cost_usd=self.memory.cost_usd,
        )

    async def keep_commit(self, base_sha: str, commit_sha: str | None) -> dict[str, Any]:
        """Write `committed`, with the commit itself as a bundle (up to the size cap), so that
        publishing never needs this workspace; without a commit, the task's end with it."""
        committed: dict[str, Any] = {
            "branch": self.ctx.branch if commit_sha else None,
            "commit_sha": commit_sha,
        }
        events: list[Event] = []
        if commit_sha is not None:
            repo = self.repo_path
            committed["diffstat"] = await asyncio.to_thread(ws.diffstat, repo, base_sha, commit_sha)
            bundle = await asyncio.to_thread(ws.create_bundle, repo, base_sha, commit_sha)
            kept = len(bundle) <= self.ctx.publish.bundle_max_mb * 1024 * 1024
            committed["bundle_bytes"] = len(bundle) if kept else None
            if kept:
                events.append(BundleEvent(self.task_id, commit_sha, bundle))
        events.append(CheckpointEvent(self.task_id, Step.COMMITTED, committed))
        if commit_sha is None:  # nothing to publish: the task ends here, in the same write
            events.append(TaskUpdate(self.task_id, TaskState.NO_CHANGE))
        await self.emit(events, True)
        return committed

    async def publish(self, checkpoints: dict[Step, dict[str, Any]], sha: str) -> dict[str, Any]:
        """Push the commit (once: `pushed`), then open or find its PR (`published`)."""
        ctx = self.ctx
        await self.update(TaskState.PUBLISHING, lease_owner=self.owner)
        prepared = checkpoints[Step.PREPARED]
        if "target" in prepared:
            target = Target.from_json(prepared["target"], self.repo)
        else:  # committed by a dry run: look at the remote now (`ado publish`)
            target = await self.publisher.target(await self.ref_is_branch(await self.mirror()))
        if Step.PUSHED not in checkpoints:
            await self.restore_commit(prepared["base_sha"], sha)
            async with self.limited(f"forge:{self.host}"):
                result = await self.publisher.push(self.repo_path, target, sha)
            checkpoints[Step.PUSHED] = {"url": target.push_url, "result": result}
            await self.checkpoint(Step.PUSHED, checkpoints[Step.PUSHED], durable=True)
            await self.reached(Step.PUSHED)
        published: dict[str, Any] = {"url": target.push_url, "remote": target.push_url}
        if ctx.publish.pr:
            pr = await self.publisher.open_pr(target, self.pr_fields(checkpoints))
            published = {"url": pr.url, "number": pr.number, "remote": target.push_url}
        checkpoints[Step.PUBLISHED] = published
        await self.checkpoint(Step.PUBLISHED, published, durable=True)
        await self.reached(Step.PUBLISHED)
        return published

    async def restore_commit(self, base_sha: str, sha: str) -> None:
        """The commit in this task's checkout: as left there, or from the stored bundle."""
        if self.repo_path.is_dir() and await asyncio.to_thread(ws.has_commit, self.repo_path, sha):
            return
        if self.spec.bundle is None:
            raise TaskFailed(
                FailureClass.INFRA,
                f"commit {sha[:12]} is neither in {self.repo_path} nor stored (its bundle was "
                "over publish.bundle_max_mb); re-run the task",
            )
        mirror = await self.mirror()
        branch, bundle = self.ctx.branch, self.spec.bundle
        await asyncio.to_thread(
            ws.restore_bundle, mirror, self.repo_path, base_sha, bundle, sha, branch
        )

    def pr_fields(self, checkpoints: dict[Step, dict[str, Any]]) -> dict[str, str]:
        """The values of the PR title and body templates."""
        ctx = self.ctx
        stat = checkpoints[Step.COMMITTED].get("diffstat") or {}
        summary = ((checkpoints.get(Step.AGENT_DONE) or {}).get("summary") or "").strip()
        message = ctx.git.message.format(
            run_name=ctx.run_name, run_id=ctx.run_id, repo_name=self.repo.name, branch=ctx.branch
        )
        # Without a prompt, the commit's subject stands in (without the run name that the
        # default title puts in front already).
        subject = (message.splitlines() or [""])[0].removeprefix(f"{ctx.run_name}: ")
        lines = [line.strip().lstrip("#").strip() for line in (ctx.prompt or "").splitlines()]
        return {
            "run_name": ctx.run_name,
            "run_id": ctx.run_id,
            "repo_name": self.repo.name,
            "branch": ctx.branch,
            "prompt_line": next((line for line in lines if line), subject)[:120],
            "diffstat": stat.get("text", ""),
            "summary": f"\n{summary}\n" if summary else "",
        }

    async def mirror(self) -> Path:
        """The node's mirror of the repository, refreshed (counts against `git:<host>`)."""
        try:
            async with self.limited(f"git:{self.host}"):
                return await asyncio.to_thread(
                    ws.ensure_mirror,
                    self.ctx.cache_root,
                    self.repo.url,
                    env=self.publisher.git_env(self.repo.url),
                )
        except GitAuthError as exc:
            raise TaskFailed(FailureClass.FORGE, self.publisher.auth_hint(exc)) from exc
        except WorkspaceError as exc:
            raise TaskFailed(FailureClass.INFRA, str(exc)) from exc

    async def ref_is_branch(self, mirror: Path) -> bool:
        ref = self.repo.ref
        return ref is not None and await asyncio.to_thread(ws.is_branch, mirror, ref)

    async def prepare(self, prepared: dict[str, Any] | None) -> dict[str, Any]:
        """A fresh checkout at the base commit (the one recorded before, on a retry or
        resume), after a look at the remote when the run publishes."""
        mirror = await self.mirror()
        target = None
        if not self.ctx.dry_run:
            target = await self.publisher.target(await self.ref_is_branch(mirror))
        try:
            if prepared:
                base_sha = prepared["base_sha"]
            elif target is not None and target.start_sha:  # --conflict append
                base_sha = target.start_sha
                if not await asyncio.to_thread(ws.has_commit, mirror, base_sha):
                    env = self.publisher.git_env(target.push_url)
                    await asyncio.to_thread(
                        ws.fetch_branch, mirror, target.push_url, self.ctx.branch, env=env
                    )
            else:
                base_sha = await asyncio.to_thread(ws.resolve_ref, mirror, self.repo.ref)
        except WorkspaceError as exc:
            raise TaskFailed(FailureClass.INPUT, str(exc)) from exc
        await asyncio.to_thread(ws.create_checkout, mirror, self.repo_path, base_sha)
        data: dict[str, Any] = {"base_sha": str(base_sha)}
        if target is not None:
            data["target"] = target.to_json()
        return data

    async def run_agent(self, prepared: dict[str, Any]) -> dict[str, Any]:
        """Take a route, run its agent once; return the `agent_done` data."""
        ctx, memory = self.ctx, self.memory
        reason = self.stop_reason()
        if (
            reason is None
            and ctx.max_cost_per_task_usd
            and memory.cost_usd >= ctx.max_cost_per_task_usd
        ):
            cap = ctx.max_cost_per_task_usd
            reason = f"this task cost ${memory.cost_usd:.2f}, at --max-cost-per-task ${cap:g}"
        if reason is not None:
            raise TaskStopped(f"no agent started: {reason}")
        routes = ctx.routes
        signals = any(getattr(self.agents[r.key], "signals_limits", True) for r in routes)
        chosen, hold, waited = await acquire_route(
            routes, ctx.limits, self.limiter, ctx.limit_wait_timeout_s, signals
        )
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_exit(hold)  # entered by acquire_route; released on the way out
            session = memory.session
            if session is not None and session.provider != chosen.provider:
                session = None  # another provider cannot continue it: start fresh
                await self.prepare(prepared)
            await self.update(TaskState.RUNNING, attempt=self.attempt)
            agent = self.agents[chosen.key]
            if session is not None:
                await asyncio.to_thread(self.restore_session, agent, chosen, session)
            actx, exit = await self.supervise(agent, chosen, session)
            try:  # a whole log may be large: read it off the loop that supervises the others
                result = await asyncio.to_thread(agent.parse, actx, exit)
            except Exception as exc:
                await self.unreadable_output(agent, chosen, exit, exc)
            if hold.spec.tokens:
                await hold.reconcile(
                    result.input_tokens + result.output_tokens + result.cache_tokens
                )
        if result.failure_class is FailureClass.RATE_LIMITED or result.limited_until is not None:
            await self.limiter.report_limited(
                hold.key, result.limited_until or time.time() + DEFAULT_COOLDOWN_S
            )
        usage, totals = account(result, chosen, ctx.prices, session)
        usage["limit_wait_s"] = round(waited, 3)
        metrics.agent_run(agent.name, usage, exit.duration_s)
        memory.cost_usd += usage["cost_usd"]
        if result.session_id:
            memory.session = Session(chosen.provider, result.session_id, totals)
        outcome = (
            "timeout"
            if exit.timed_out
            else "stalled"
            if exit.stalled
            else "ok"
            if result.ok
            else "failed"
        )
        events: list[Event] = [
            SessionEvent(
                self.task_id,
                self.attempt,
                agent.name,
                result.session_id,
                exit.returncode,
                exit.duration_s,
                exit.stdout_path,
                usage,
                outcome,
            )
        ]
        if usage["input_tokens"] or usage["output_tokens"] or usage["cost_usd"]:
            events.append(
                UsageEvent(
                    self.task_id,
                    self.attempt,
                    chosen.key,
                    usage["input_tokens"],
                    usage["output_tokens"],
                    usage["cost_usd"],
                )
            )
        await self.emit(events, False)
        if result.failure_class is FailureClass.RATE_LIMITED:  # even if we killed it mid-wait
            raise TaskFailed(
                FailureClass.RATE_LIMITED, result.message or "a provider limit was hit"
            )
        if exit.timed_out:
            raise TaskFailed(
                FailureClass.TIMEOUT,
                f"the agent ran longer than {ctx.agent.timeout_s:g}s and was killed",
            )
        if exit.stalled:
            raise TaskFailed(
                FailureClass.TIMEOUT,
                f"the agent printed nothing for {ctx.agent.stall_timeout_s:g}s "
                "and was killed (stall timeout)",
            )
        if not result.ok:
            raise TaskFailed(
                result.failure_class or FailureClass.AGENT, result.message or "the agent failed"
            )
        return {
            "session_id": result.session_id,
            "summary": (result.result_text or "")[:4000] or None,
            "exit_code": exit.returncode,
            "provider": chosen.provider,
            "mode": chosen.mode,
            "usage": usage,
        }

    async def unreadable_output(
        self, agent: Agent, chosen: Route, exit: ProcessExit, exc: Exception
    ) -> NoReturn:
        """The agent ran (and may have been paid for) but its output cannot be read: record
        the attempt's session first, then fail the task for good (another run would cost as
        much and end the same way)."""
        usage = {"provider": chosen.provider, "mode": chosen.mode, "cost_usd": 0.0}
        event = SessionEvent(
            self.task_id,
            self.attempt,
            agent.name,
            None,
            exit.returncode,
            exit.duration_s,
            exit.stdout_path,
            usage,
            "unreadable",
        )
        await self.emit([event], True)
        raise TaskFailed(
            FailureClass.AGENT_OUTPUT,
            f"could not read the {agent.name} agent's output ({type(exc).__name__}: {exc}); "
            f"its log is {exit.stdout_path} (not retried: the agent run itself is done)",
        ) from exc

    def agent_context(self, chosen: Route, session: Session | None) -> AgentContext:
        ctx, task_dir = self.ctx, self.task_dir
        home = task_dir / "home"
        home.mkdir(exist_ok=True)
        prompt_file = None
        if ctx.prompt is not None:
            prompt_file = task_dir / "prompt.md"
            prompt_file.write_text(ctx.prompt, encoding="utf-8")
        return AgentContext(
            run_id=ctx.run_id,
            task_id=self.task_id,
            repo=self.repo,
            repo_path=self.repo_path,
            task_dir=task_dir,
            home=home,
            prompt_file=prompt_file,
            resume_session=session.session_id if session else None,
            model=chosen.model,
            base_url=chosen.base_url,
            max_turns=chosen.max_turns,
            mode=chosen.mode,
        )

    def session_from_log(self) -> Session | None:
        """The session of an agent whose driver was killed under it (so nothing recorded
        it): read from that attempt's own output by its route's adapter."""
        logs = self.task_dir / "logs"
        marks = [(int(p.name.split("-")[1].split(".")[0]), p) for p in logs.glob("attempt-*.route")]
        marks = [(n, p) for n, p in marks if n > self.spec.recorded_attempts]
        if not marks:
            return None
        number, mark = max(marks)
        with contextlib.suppress(Exception):  # a partial or foreign log: start fresh
            key = json.loads(mark.read_text())["key"]
            chosen = next(route for route in self.ctx.routes if route.key == key)
            cut = ProcessExit(
                None,
                False,
                False,
                0.0,
                str(logs / f"attempt-{number}.stdout.log"),
                str(logs / f"attempt-{number}.stderr.log"),
            )
            session_id = self.agents[key].parse(self.agent_context(chosen, None), cut).session_id
            if session_id:
                return Session(chosen.provider, session_id)
        return None

    async def supervise(
        self, agent: Agent, chosen: Route, session: Session | None
    ) -> tuple[AgentContext, ProcessExit]:
        """Start the agent in the checkout with its own HOME and allow-listed environment."""
        ctx, task_dir = self.ctx, self.task_dir
        actx = self.agent_context(chosen, session)
        invocation = await asyncio.to_thread(agent.invocation, actx)  # may copy credentials
        extra = {"HOME": str(actx.home), **ctx.git.identity_env()}
        extra |= {**ctx.agent.env, **chosen.env, **invocation.env}
        env = build_env(ctx.agent.env_allow, extra)
        logs = task_dir / "logs"
        logs.mkdir(exist_ok=True)
        # Which route this attempt took: a resume after a killed driver reads it back.
        (logs / f"attempt-{self.attempt}.route").write_text(json.dumps({"key": chosen.key}))
        stdout_path = logs / f"attempt-{self.attempt}.stdout.log"
        stderr_path = logs / f"attempt-{self.attempt}.stderr.log"
        started = time.monotonic()
        try:
            exit = await run_supervised(
                invocation.argv,
                cwd=self.repo_path,
                env=env,
                stdout_path=stdout_path,
                stderr_path=stderr_path,
                timeout_s=ctx.agent.timeout_s,
                stall_timeout_s=ctx.agent.stall_timeout_s,
                kill_grace_s=ctx.agent.kill_grace_s,
                on_start=lambda pid: write_pidfile(task_dir, pid),
                sandbox=ctx.agent.sandbox,
                log_cap_mb=ctx.agent.log_cap_mb,
                mark=agent_mark(task_dir),
                stop_when=invocation.stop_when,
            )
        except AgentError as exc:
            raise TaskFailed(FailureClass.INPUT, str(exc)) from exc
        except asyncio.CancelledError:
            # Interrupted (Ctrl-C): keep the agent's own session id so that a resume
            # continues that session in this workspace instead of starting over.
            cut = ProcessExit(
                None, False, False, time.monotonic() - started, str(stdout_path), str(stderr_path)
            )
            session_id = None
            with contextlib.suppress(Exception):  # a partial log: take what it says, if anything
                session_id = agent.parse(actx, cut).session_id
            usage = {"provider": chosen.provider, "mode": chosen.mode}
            interrupted = SessionEvent(
                self.task_id,
                self.attempt,
                agent.name,
                session_id,
                None,
                cut.duration_s,
                str(stdout_path),
                usage,
                "interrupted",
            )
            with contextlib.suppress(StoreError):  # unwritable (a lost lease): stop all the same
                await asyncio.shield(self.record_interrupted(agent, actx, interrupted))
            raise
        finally:
            (task_dir / PIDFILE).unlink(missing_ok=True)
        return actx, exit

    async def record_interrupted(
        self, agent: Agent, actx: AgentContext, interrupted: SessionEvent
    ) -> None:
        """Write an interrupted attempt's session row with its session's files, so that a
        resume on any node can continue the session (see engine/session_state.py)."""
        events: list[Event] = [interrupted]
        if interrupted.session_id:
            sid = interrupted.session_id
            state = await asyncio.to_thread(self.pack_session, agent, actx, sid)
            if state is not None:
                events.append(SessionStateEvent(self.task_id, self.attempt, sid, state))
        await self.emit(events, True)

    def pack_session(self, agent: Agent, actx: AgentContext, session_id: str) -> bytes | None:
        """The session's files as `session_state.pack` makes them; None (and a warning)
        when they are over `agent.session_state_max_mb` or cannot be read."""
        cap_mb = self.ctx.agent.session_state_max_mb
        if not cap_mb:
            return None
        try:
            paths = agent.session_files(actx, session_id)
            return session_state.pack(self.task_dir, paths, int(cap_mb * 2**20))
        except (session_state.OverCapError, OSError) as exc:
            log.warning(
                "task %s: the files of %s session %s are not kept, so only this node can "
                "continue it: %s (agent.session_state_max_mb is %g)",
                self.task_id,
                agent.name,
                session_id,
                exc,
                cap_mb,
            )
            return None

    def restore_session(self, agent: Agent, chosen: Route, session: Session) -> None:
        """Put the stored files of the interrupted `session` where its agent looks for
        them, unless this node has them already (it ran that attempt)."""
        spec = self.spec
        if spec.session_state is None or spec.session is None:
            return
        if spec.session.session_id != session.session_id:
            return
        if agent.session_files(self.agent_context(chosen, session), session.session_id):
            return
        try:
            session_state.restore(self.task_dir, spec.session_state)
        except SessionStateError as exc:
            log.warning("task %s: %s; the agent starts its session afresh", self.task_id, exc)

    def commit(self, base_sha: str) -> str | None:
        ctx = self.ctx
        if self.spec.checkpoints:  # a resumed task may have committed before it stopped
            existing = ws.existing_commit(self.repo_path, base_sha, ctx.branch)
            if existing:
                return existing
        message = ctx.git.message.format(
            run_name=ctx.run_name, run_id=ctx.run_id, repo_name=self.repo.name, branch=ctx.branch
        )
        max_mb = ctx.git.max_file_mb
        try:
            return ws.commit_changes(
                self.repo_path, base_sha, ctx.branch, message, ctx.git.author_name,
                ctx.git.author_email, None if max_mb is None else int(max_mb * 2**20),
            )  # fmt: skip
        except OversizedFileError as exc:
            raise TaskFailed(FailureClass.AGENT, str(exc)) from exc
