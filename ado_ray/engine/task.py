"""One repository's task: workspace → agent → collect → publish, with checkpoints.

The same coroutine runs inside a Ray `AgentRunner` actor and in-process (`--no-ray`).

Exactly-once rests on one ordering rule: a checkpoint is durably written *before* the
side effect that depends on it. `agent_done` is stored before the runner commits, and
`committed` before it pushes. So after a crash at any moment:
- no `agent_done`: nothing left the workspace; the agent runs again on a fresh checkout;
- `agent_done`, no `committed`: the agent's edits are still in the task's workspace; the
  runner commits them (or finds the commit it already made) without running the agent;
- `committed`: the runner (re-)pushes that very commit, which is a no-op if it got there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ado_ray.agents import Agent, AgentContext
from ado_ray.config import AgentSettings, GitSettings
from ado_ray.engine import workspace as ws
from ado_ray.engine.process import build_env, run_supervised
from ado_ray.errors import AgentError, WorkspaceError
from ado_ray.models import (
    CheckpointEvent,
    Event,
    FailureClass,
    RepoSpec,
    SessionEvent,
    Step,
    TaskOutcome,
    TaskState,
    TaskUpdate,
    UsageEvent,
)

Emit = Callable[[Sequence[Event], bool], Awaitable[None]]


@dataclass(frozen=True)
class RunContext:
    """What every task of a run shares; sent once to each runner."""

    run_id: str
    run_name: str
    branch: str
    work_root: Path  # absolute
    agent: AgentSettings
    git: GitSettings
    prompt: str | None
    dry_run: bool
    max_attempts: int

    @property
    def cache_root(self) -> Path:
        return self.work_root / "cache"


@dataclass(frozen=True)
class TaskSpec:
    """One task as the driver hands it out, with what the store knows of it."""

    task_id: str
    repo: RepoSpec
    attempt: int  # agent attempts made so far
    checkpoints: dict[Step, dict[str, Any]] = field(default_factory=dict)


class TaskFailed(Exception):
    def __init__(self, failure_class: FailureClass, message: str) -> None:
        super().__init__(message)
        self.failure_class = failure_class


async def execute(
    ctx: RunContext, spec: TaskSpec, agent: Agent, emit: Emit, owner: str
) -> TaskOutcome:
    """Run one task to a terminal state; the per-repository failure boundary."""
    attempt = spec.attempt
    checkpoints = dict(spec.checkpoints)
    while True:
        try:
            return await _pipeline(ctx, spec, agent, emit, owner, attempt, checkpoints)
        except TaskFailed as failure:
            cls, message = failure.failure_class, str(failure)
        except Exception as exc:  # the one broad catch: isolate this repository
            cls, message = FailureClass.INFRA, f"{type(exc).__name__}: {exc}"
        attempt += 1
        if not cls.retryable or attempt >= ctx.max_attempts or Step.AGENT_DONE in checkpoints:
            await emit(
                [TaskUpdate(spec.task_id, TaskState.FAILED, failure_class=cls, error=message)],
                True,
            )
            return TaskOutcome(
                spec.task_id, spec.repo.key, TaskState.FAILED, failure_class=cls, error=message
            )


async def _pipeline(
    ctx: RunContext,
    spec: TaskSpec,
    agent: Agent,
    emit: Emit,
    owner: str,
    attempt: int,
    checkpoints: dict[Step, dict[str, Any]],
) -> TaskOutcome:
    task_id, repo = spec.task_id, spec.repo
    task_dir = ws.task_dir(ctx.work_root, ctx.run_id, task_id)
    repo_path = task_dir / "repo"

    if Step.AGENT_DONE not in checkpoints:
        await emit(
            [
                TaskUpdate(
                    task_id,
                    TaskState.PREPARING,
                    workspace=str(task_dir),
                    lease_owner=owner,
                    clear_failure=True,
                )
            ],
            False,
        )
        base_sha = await _prepare(ctx, repo, task_dir, repo_path, checkpoints.get(Step.PREPARED))
        checkpoints[Step.PREPARED] = {"base_sha": base_sha}
        await emit(
            [
                CheckpointEvent(task_id, Step.PREPARED, checkpoints[Step.PREPARED]),
                TaskUpdate(task_id, TaskState.RUNNING, base_sha=base_sha, attempt=attempt + 1),
            ],
            False,
        )
        checkpoints[Step.AGENT_DONE] = await _run_agent(
            ctx, spec, agent, emit, task_dir, repo_path, attempt + 1
        )
        await emit([CheckpointEvent(task_id, Step.AGENT_DONE, checkpoints[Step.AGENT_DONE])], True)
    base_sha = checkpoints[Step.PREPARED]["base_sha"]

    if Step.COMMITTED not in checkpoints:
        await emit([TaskUpdate(task_id, TaskState.COLLECTING, lease_owner=owner)], False)
        if not repo_path.is_dir():
            raise TaskFailed(
                FailureClass.INFRA,
                f"the agent finished but its workspace {repo_path} is gone; "
                "resume on the node that ran it, or re-run the task",
            )
        commit_sha = await asyncio.to_thread(_commit, ctx, repo, repo_path, base_sha)
        checkpoints[Step.COMMITTED] = {
            "branch": ctx.branch if commit_sha else None,
            "commit_sha": commit_sha,
        }
        await emit([CheckpointEvent(task_id, Step.COMMITTED, checkpoints[Step.COMMITTED])], True)
    commit_sha = checkpoints[Step.COMMITTED]["commit_sha"]

    if commit_sha is None:
        await emit([TaskUpdate(task_id, TaskState.NO_CHANGE)], True)
        return TaskOutcome(task_id, repo.key, TaskState.NO_CHANGE)

    pushed_to = None
    if not ctx.dry_run:
        await emit([TaskUpdate(task_id, TaskState.PUBLISHING, lease_owner=owner)], False)
        try:
            result = await asyncio.to_thread(
                ws.push_branch, repo_path, repo.url, commit_sha, ctx.branch
            )
        except WorkspaceError as exc:
            raise TaskFailed(FailureClass.FORGE, str(exc)) from exc
        pushed_to = repo.url
        await emit(
            [CheckpointEvent(task_id, Step.PUBLISHED, {"url": pushed_to, "result": result})], False
        )
    await emit(
        [TaskUpdate(task_id, TaskState.CHANGED, branch=ctx.branch, commit_sha=commit_sha)], True
    )
    return TaskOutcome(
        task_id,
        repo.key,
        TaskState.CHANGED,
        branch=ctx.branch,
        commit_sha=commit_sha,
        pushed_to=pushed_to,
    )


async def _prepare(
    ctx: RunContext,
    repo: RepoSpec,
    task_dir: Path,
    repo_path: Path,
    prepared: dict[str, Any] | None,
) -> str:
    """A fresh checkout at the base commit (the one recorded before, on a retry or resume)."""
    task_dir.mkdir(parents=True, exist_ok=True)
    kill_stale_agent(task_dir)
    try:
        mirror = await asyncio.to_thread(ws.ensure_mirror, ctx.cache_root, repo.url)
    except WorkspaceError as exc:
        raise TaskFailed(FailureClass.INFRA, str(exc)) from exc
    try:
        base_sha = (
            prepared["base_sha"]
            if prepared
            else await asyncio.to_thread(ws.resolve_ref, mirror, repo.ref)
        )
    except WorkspaceError as exc:
        raise TaskFailed(FailureClass.INPUT, str(exc)) from exc
    await asyncio.to_thread(ws.create_checkout, mirror, repo_path, base_sha)
    return str(base_sha)


async def _run_agent(
    ctx: RunContext,
    spec: TaskSpec,
    agent: Agent,
    emit: Emit,
    task_dir: Path,
    repo_path: Path,
    attempt: int,
) -> dict[str, Any]:
    """Run the agent once; return the `agent_done` data, or raise TaskFailed."""
    home = task_dir / "home"
    home.mkdir(exist_ok=True)
    prompt_file = None
    if ctx.prompt is not None:
        prompt_file = task_dir / "prompt.md"
        prompt_file.write_text(ctx.prompt, encoding="utf-8")
    actx = AgentContext(
        run_id=ctx.run_id,
        task_id=spec.task_id,
        repo=spec.repo,
        repo_path=repo_path,
        task_dir=task_dir,
        home=home,
        prompt_file=prompt_file,
        resume_session=None,
    )
    invocation = agent.invocation(actx)
    env = build_env(ctx.agent.env_allow, {"HOME": str(home), **ctx.agent.env, **invocation.env})
    logs = task_dir / "logs"
    logs.mkdir(exist_ok=True)
    stdout_path, stderr_path = (
        logs / f"attempt-{attempt}.stdout.log",
        logs / f"attempt-{attempt}.stderr.log",
    )
    try:
        exit = await run_supervised(
            invocation.argv,
            cwd=repo_path,
            env=env,
            stdout_path=stdout_path,
            stderr_path=stderr_path,
            timeout_s=ctx.agent.timeout_s,
            stall_timeout_s=ctx.agent.stall_timeout_s,
            kill_grace_s=ctx.agent.kill_grace_s,
            on_start=lambda pid: _write_pidfile(task_dir, pid),
        )
    except AgentError as exc:
        raise TaskFailed(FailureClass.INPUT, str(exc)) from exc
    finally:
        (task_dir / PIDFILE).unlink(missing_ok=True)
    result = agent.parse(actx, exit)
    if exit.timed_out or exit.stalled:
        outcome = "timeout" if exit.timed_out else "stalled"
    else:
        outcome = "ok" if result.ok else "failed"
    usage = {
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "cost_usd": result.cost_usd,
    }
    events: list[Event] = [
        SessionEvent(
            spec.task_id,
            attempt,
            agent.name,
            result.session_id,
            exit.returncode,
            exit.duration_s,
            str(stdout_path),
            usage,
            outcome,
        )
    ]
    if result.input_tokens or result.output_tokens or result.cost_usd:
        events.append(
            UsageEvent(
                spec.task_id,
                attempt,
                agent.limit_key,
                result.input_tokens,
                result.output_tokens,
                result.cost_usd,
            )
        )
    await emit(events, False)
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
    return {"session_id": result.session_id, "exit_code": exit.returncode, "usage": usage}


def _commit(ctx: RunContext, repo: RepoSpec, repo_path: Path, base_sha: str) -> str | None:
    existing = ws.existing_commit(repo_path, base_sha, ctx.branch)
    if existing:
        return existing
    message = ctx.git.message.format(
        run_name=ctx.run_name, run_id=ctx.run_id, repo_name=repo.name, branch=ctx.branch
    )
    return ws.commit_changes(
        repo_path, base_sha, ctx.branch, message, ctx.git.author_name, ctx.git.author_email
    )


# --- stale agents ------------------------------------------------------------------------
# A killed driver takes its runner actors with it, but an agent leads its own process group
# and outlives them. Before a task's workspace is rebuilt, kill what is left of its agent.

PIDFILE = "agent.pid"


def _write_pidfile(task_dir: Path, pid: int) -> None:
    (task_dir / PIDFILE).write_text(f"{socket.gethostname()} {pid}\n", encoding="utf-8")


def kill_stale_agent(task_dir: Path) -> bool:
    """Kill the process group named in the task's pid file if it is still this task's agent."""
    try:
        host, pid_text = (task_dir / PIDFILE).read_text(encoding="utf-8").split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    (task_dir / PIDFILE).unlink(missing_ok=True)
    if host != socket.gethostname():
        return False
    try:  # the process's working directory proves it is ours and not a recycled pid
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    if not cwd.is_relative_to(task_dir):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    return True
