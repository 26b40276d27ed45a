"""The Python API: what the CLI calls, and what a notebook uses directly.

Every function validates all input before it writes anything: a bad repository list,
config or prompt raises a `UsageError` and leaves the store untouched.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ado_ray import reports
from ado_ray.agents import make_agent
from ado_ray.agents.routing import routes
from ado_ray.config import Config, build_config, deep_merge
from ado_ray.engine.backends import init_ray
from ado_ray.engine.driver import BatchResult, drive, new_run, run_sync, state_url
from ado_ray.engine.progress import Progress, make_progress
from ado_ray.engine.publish import repo_host
from ado_ray.errors import ServiceUnavailableError, StoreError, UsageError
from ado_ray.forge.config import check_template
from ado_ray.limits.actor import LimiterClient, RateLimiterService
from ado_ray.limits.base import LimiterUnavailable, LimitSpec
from ado_ray.models import RepoSpec, TaskState
from ado_ray.repos import format_repo_line, parse_repo_list
from ado_ray.store import Store, open_store

RUN_KEYS = (  # kept by a resumed run (flags given to `ado resume` still win)
    "agent", "git", "dry_run", "max_attempts", "publish", "parallel", "fallback",
    "max_cost_usd", "max_cost_per_task_usd",
)  # fmt: skip
PROBE_KEY = "ado:probe"  # read (never acquired) to check that the limiter's backend answers


@dataclass(frozen=True)
class ConfigSources:
    """Where a command's config comes from: a file, a context, environment and flags."""

    config_file: Path | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    context: str | None = None

    def with_overrides(self, base: Mapping[str, Any]) -> ConfigSources:
        """`base` below this source's own overrides (a resumed run's stored settings)."""
        return dataclasses.replace(self, overrides=deep_merge(dict(base), self.overrides))


def load_config(sources: ConfigSources) -> Config:
    return build_config(sources.config_file, sources.overrides, context=sources.context)


def read_prompt(config: Config) -> str | None:
    agent = config.agent
    if agent.prompt is not None and agent.prompt_file is not None:
        raise UsageError("give --prompt or --prompt-file, not both")
    if agent.prompt_file is None:
        return agent.prompt
    try:
        return agent.prompt_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"--prompt-file {agent.prompt_file}: cannot read it ({exc.strerror})"
        ) from exc


def plan(repo_list: Path, config: Config) -> tuple[list[RepoSpec], str | None]:
    """Parse and check everything a run needs; raise UsageError on any problem."""
    return check_plan(parse_repo_list(repo_list), str(repo_list), config)


def check_plan(
    repos: list[RepoSpec], source: str, config: Config
) -> tuple[list[RepoSpec], str | None]:
    prompt = read_prompt(config)
    check_agents(config, repos, source)
    check_publish(config, repos, source)
    return repos, prompt


def check_publish(config: Config, repos: list[RepoSpec], source: str) -> None:
    """Read `publish.body_file`; with `--pr`/`--fork`, every repository must be on a
    configured forge whose token variable is set."""
    publish = config.publish
    if publish.body_file is not None:
        try:
            body = publish.body_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--pr-body-file {publish.body_file}: cannot read it ({exc})") from exc
        try:
            check_template(body)
        except ValueError as exc:
            raise UsageError(f"--pr-body-file {publish.body_file}: {exc}") from exc
        config.publish = publish.model_copy(update={"body": body, "body_file": None})
    if config.dry_run or not (publish.pr or publish.fork):
        return
    problems, unset = [], set()
    for repo in repos:
        host = repo_host(repo)
        if host is None or host not in config.forges:
            problems.append(
                f"{source}:{repo.line}: {repo.url} is on "
                + (f"the host {host}, which has no forge" if host else "no forge (a local path)")
                + "; expected a repository on a host listed in `forges:` (github.com, "
                "gitlab.com, or your own entry) for --pr"
            )
        elif not os.environ.get(config.forges[host].token_env):
            unset.add(f"${config.forges[host].token_env} (for {host})")
    if unset:
        problems.append(f"--pr needs the forge token in {', '.join(sorted(unset))}; it is not set")
    if problems:
        shown = problems[:20] + (
            [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        )
        raise UsageError("\n".join(shown))


def check_agents(config: Config, repos: list[RepoSpec], source: str) -> None:
    """Every route's adapter can be built and accepts every repository."""
    for route in routes(config):
        agent = make_agent(config.agent.model_copy(update={"name": route.agent, "cmd": route.cmd}))
        check = getattr(agent, "check_repos", None)
        if check is not None:
            check(repos, source)


def plan_text(repo_list: Path, sources: ConfigSources) -> str:
    repos, _ = plan(repo_list, load_config(sources))
    return "".join(f"{format_repo_line(repo)}\n" for repo in repos)


def check_services(config: Config) -> None:
    """Before a run starts: the store and the limiter's backend must answer.

    Raises `ServiceUnavailableError` (exit 2) naming every server that did not.
    """
    problems = []
    try:
        with opened_store(config):
            pass
    except StoreError as exc:
        problems.append(f"state store: {exc}")
    try:
        run_sync(_probe_limiter(config))
    except LimiterUnavailable as exc:
        problems.append(f"limiter: {exc}")
    if problems:
        raise ServiceUnavailableError(
            "\n".join(problems)
            + "\nnothing was started; start the server(s) or fix the URLs, then retry"
        )


async def _probe_limiter(config: Config) -> None:
    service = RateLimiterService(config.limiter)
    try:
        await service.snapshot({PROBE_KEY: LimitSpec()})
    finally:
        await service.close()


def limits(sources: ConfigSources) -> list[dict[str, Any]]:
    """Every configured limit key: its spec, current use, cooldown and leases.

    The Redis backend is read directly. The in-memory one lives in the `ado-rate-limiter`
    actor of a Ray cluster (`ray.address`); without one only the configuration is shown.
    """
    config = load_config(sources)
    if config.limiter.backend == "memory" and config.ray.address:
        import ray

        from ado_ray.limits.actor import ACTOR_NAME

        init_ray(config)
        try:
            actor = ray.get_actor(ACTOR_NAME, namespace=config.ray.namespace)
        except ValueError:
            actor = None
        if actor is not None:
            rows: list[dict[str, Any]] = run_sync(
                LimiterClient(actor).snapshot(dict(config.limits))
            )
            return rows
    service = RateLimiterService(config.limiter)

    async def read() -> list[dict[str, Any]]:
        try:
            return await service.snapshot(dict(config.limits))
        finally:
            await service.close()

    return run_sync(read())


@contextmanager
def opened_store(config: Config) -> Iterator[Store]:
    store = open_store(state_url(config))
    try:
        store.migrate()
        yield store
    finally:
        store.close()


def start(
    repo_list: Path,
    sources: ConfigSources,
    progress_stream: IO[str],
    progress: Progress | None = None,
) -> BatchResult:
    config = load_config(sources)
    repos, prompt = plan(repo_list, config)
    check_services(config)
    return start_planned(
        config, repos, str(repo_list), prompt, progress or make_progress(progress_stream)
    )


def start_planned(
    config: Config, repos: list[RepoSpec], source: str, prompt: str | None, progress: Progress
) -> BatchResult:
    with opened_store(config) as store:
        run = new_run(store, config, repos, source, prompt)
        return _drive(store, config, run.run_id, prompt, progress)


def resume(
    run_id: str,
    sources: ConfigSources,
    retry_failed: bool,
    progress_stream: IO[str],
    progress: Progress | None = None,
) -> BatchResult:
    """Continue a run with its own agent and git settings (flags given now still win)."""
    with opened_store(load_config(sources)) as store:
        run = store.get_run(run_id)
        stored = {key: run.config[key] for key in RUN_KEYS if key in run.config}
        stored.get("agent", {}).pop("env", None)  # masked when stored; comes from config now
        config = load_config(sources.with_overrides(stored))
        prompt = run.config.get("prompt")
        repos = [task.repo for task in store.list_tasks(run.run_id)]
        check_agents(config, repos, run.repo_list)
        check_publish(config, repos, run.repo_list)
        check_services(config)
        if retry_failed:
            store.requeue_tasks(run.run_id, [TaskState.FAILED, TaskState.SKIPPED])
        return _drive(store, config, run.run_id, prompt, progress or make_progress(progress_stream))


def publish(
    run_id: str,
    sources: ConfigSources,
    progress_stream: IO[str],
    progress: Progress | None = None,
) -> BatchResult:
    """Push (and with `publish.pr`, open PRs for) the commits of RUN_ID, e.g. a dry run's,
    from the commits kept in the store: no agent runs again."""
    with opened_store(load_config(sources)) as store:
        store.requeue_tasks(run_id, [TaskState.CHANGED])
    live = sources.with_overrides({}).overrides
    forced = ConfigSources(
        sources.config_file, deep_merge(dict(live), {"dry_run": False}), sources.context
    )
    return resume(run_id, forced, False, progress_stream, progress)


def _drive(
    store: Store, config: Config, run_id: str, prompt: str | None, progress: Progress
) -> BatchResult:
    result = drive(store, config, store.get_run(run_id), prompt, progress)
    return dataclasses.replace(result, summary=reports.run_summary(store, result.run, result.tasks))


def list_runs(sources: ConfigSources, limit: int = 50) -> list[dict[str, Any]]:
    with opened_store(load_config(sources)) as store:
        return [
            {
                "run_id": run.run_id,
                "name": run.name,
                "created_at": run.created_at.isoformat(),
                "status": run.status.value,
                "branch": run.branch,
                "counts": run.counts,
            }
            for run in store.list_runs(limit)
        ]


def summary(run_id: str, sources: ConfigSources) -> dict[str, Any]:
    with opened_store(load_config(sources)) as store:
        return reports.run_summary(store, store.get_run(run_id))


def gc(
    sources: ConfigSources, older_than: str, mirrors_unused: str, dry_run: bool
) -> dict[str, Any]:
    """`ado gc`: what was (or, with `dry_run`, would be) removed under the work root."""
    from ado_ray import gc as disk

    older_s = disk.parse_duration(older_than, "--older-than")
    unused_s = disk.parse_duration(mirrors_unused, "--mirrors-unused")
    config = load_config(sources)
    with opened_store(config) as store:
        found = disk.plan(store, config.work_root, older_s, unused_s)
    removed = found.removals if dry_run else disk.apply(found)
    return {
        "dry_run": dry_run,
        "removed": [item.to_json() for item in removed],
        "bytes": sum(item.size_bytes for item in removed),
        "kept_runs": found.kept_runs,
        "unknown_runs": found.unknown_runs,
    }
