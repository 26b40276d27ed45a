"""The Python API: what the CLI calls, and what a notebook uses directly.

Every function validates all input before it writes anything: a bad repository list,
config or prompt raises a `UsageError` and leaves the store untouched.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from ado_ray import reports
from ado_ray.agents import make_agent
from ado_ray.agents.command import CommandAgent
from ado_ray.agents.routing import routes
from ado_ray.config import Config, build_config, deep_merge
from ado_ray.engine.backends import RayThread, init_ray
from ado_ray.engine.driver import BatchResult, drive, new_run, run_sync, run_tasks, state_url
from ado_ray.engine.lease import driver_gone, gone_note
from ado_ray.engine.process import build_env
from ado_ray.engine.progress import Progress, make_progress
from ado_ray.engine.publish import repo_host
from ado_ray.errors import (
    CorruptStoreError,
    ServiceUnavailableError,
    StoreError,
    UnknownRunError,
    UsageError,
)
from ado_ray.forge.config import check_template
from ado_ray.limits.actor import LimiterClient, RateLimiterService
from ado_ray.limits.base import LimiterUnavailable, LimitSpec
from ado_ray.models import RepoSpec, TaskState
from ado_ray.repos import format_repo_line, parse_repo_list
from ado_ray.store import RunRecord, Store, describe_store, open_store
from ado_ray.trace import mark

RUN_KEYS = (  # kept by a resumed run (flags given to `ado resume` still win)
    "agent", "git", "dry_run", "max_attempts", "publish", "parallel", "fallback",
    "max_cost_usd", "max_cost_per_task_usd", "keep_workspaces",
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
    resolve_programs(config)
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
        elif config.forges[host].token() is None:
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


def resolve_programs(config: Config, cwd: Path | None = None) -> None:
    """Each `command` route's program, as the agents will run it (in `config`, so the run
    keeps it): a relative path made absolute from `cwd` (where ado started), and, when the
    agents run on this machine, checked to be there now (a path, or a name on their PATH).
    A Ray job's agents run on the cluster: there a relative path is refused."""
    cwd = Path.cwd() if cwd is None else cwd
    here = config.ray.dashboard_url is None and (config.no_ray or config.ray.address is None)
    for route in routes(config):
        if route.agent != "command" or not route.cmd:
            continue
        agent = CommandAgent(config.agent.model_copy(update={"cmd": route.cmd}))
        path = build_env(config.agent.env_allow, {**config.agent.env, **route.env}).get("PATH")
        search = os.defpath if path is None else path
        cmd = agent.resolve_program(
            cwd, search, check=here, relative=config.ray.dashboard_url is None
        )
        if cmd is None:
            continue
        if route.provider in config.providers:
            provider = config.providers[route.provider]
            config.providers[route.provider] = provider.model_copy(update={"cmd": cmd})
        else:
            config.agent = config.agent.model_copy(update={"cmd": cmd})


def plan_text(repo_list: Path, sources: ConfigSources) -> str:
    repos, _ = plan(repo_list, load_config(sources))
    return "".join(f"{format_repo_line(repo)}\n" for repo in repos)


def check_resume_list(repo_list: Path, run_id: str, sources: ConfigSources) -> None:
    """`ado batch REPO_LIST --resume RUN_ID`: the list must resolve to the run's own
    repositories, refs and variables (written in any spelling); else say what differs."""
    listed = parse_repo_list(repo_list)
    with run_store(load_config(sources), run_id) as store:
        run = store.get_run(run_id)
        stored = [task.repo for task in store.list_tasks(run.run_id)]
    if problems := _list_differences(listed, stored, str(repo_list), run):
        raise UsageError(
            "\n".join(problems) + f"\nexpected the run's own list ({run.repo_list}); "
            f"`ado resume {run.run_id}` continues the run without one, and a different list "
            "is a new run (leave out --resume)"
        )


def _list_differences(
    listed: list[RepoSpec], stored: list[RepoSpec], source: str, run: RunRecord, shown: int = 10
) -> list[str]:
    """What differs between a repository list and a run's repositories (by key, ref and
    variables: the spelling of a target does not count): [] if nothing."""
    ours, theirs = {r.key: r for r in listed}, {r.key: r for r in stored}
    new = [f"{source}:{r.line} {r.url}" for r in listed if r.key not in theirs]
    gone = [f"{r.url} ({run.repo_list}:{r.line})" for r in stored if r.key not in ours]
    changed = [
        f"{source}:{r.line} {format_repo_line(r)!r} (the run has {format_repo_line(old)!r})"
        for r in listed
        if (old := theirs.get(r.key)) is not None and (r.ref, r.vars) != (old.ref, old.vars)
    ]

    def some(items: list[str]) -> str:
        more = f" and {len(items) - shown} more" if len(items) > shown else ""
        return ", ".join(items[:shown]) + more

    def count(items: list[str], one: str, many: str) -> str:
        return f"{len(items)} {one if len(items) == 1 else many}"

    problems = []
    if new:
        repos = count(new, "repository", "repositories")
        verb = "is" if len(new) == 1 else "are"
        problems.append(f"{repos} in {source} {verb} not in run {run.run_id}: {some(new)}")
    if gone:
        verb = "is" if len(gone) == 1 else "are"
        problems.append(f"{len(gone)} of the run's {verb} not in {source}: {some(gone)}")
    if changed:
        what = count(changed, "repository has", "repositories have")
        problems.append(f"{what} another ref or other variables in {source}: {some(changed)}")
    return problems


def check_services(config: Config) -> None:
    """Before a run starts: the store and the limiter's backend must answer.

    Raises `ServiceUnavailableError` (exit 2) naming every server that did not.
    """
    problems = []
    try:
        with opened_store(config):
            pass
    except CorruptStoreError:
        raise  # not an outage: starting the server would not help
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


@contextmanager
def existing_store(config: Config) -> Iterator[Store | None]:
    """The store, for a command that only reads it (or may fail before it writes); None
    where there is none yet (no SQLite file), which is then not created."""
    store = open_store(state_url(config))
    try:
        if not store.exists():
            yield None
            return
        store.migrate()
        yield store
    finally:
        store.close()


@contextmanager
def run_store(config: Config, run_id: str) -> Iterator[Store]:
    """`existing_store`, where a missing store means that there is no such run."""
    with existing_store(config) as store:
        if store is None:
            raise UnknownRunError(
                f"no run '{run_id}': there is no state store at "
                f"{describe_store(state_url(config))} (nothing has run with this --state); "
                "`ado runs` lists the runs"
            )
        yield store


def start(
    repo_list: Path,
    sources: ConfigSources,
    progress_stream: IO[str],
    progress: Progress | None = None,
    ray: RayThread | None = None,
) -> BatchResult:
    """Plan and drive a new run. Ray starts (`ray`, if given, is begun; the caller then
    joins it) as soon as the config is known, and comes up while the list is parsed and
    checked and the store opened; the run is stored only once Ray answers."""
    config = load_config(sources)
    mark("config resolved")
    with ray_for(config, ray) as ray:
        repos, prompt = plan(repo_list, config)
        mark("planned")
        check_services(config)
        mark("services answer")
        return start_planned(
            config, repos, str(repo_list), prompt, progress or make_progress(progress_stream), ray
        )


def start_planned(
    config: Config,
    repos: list[RepoSpec],
    source: str,
    prompt: str | None,
    progress: Progress,
    ray: RayThread | None = None,
) -> BatchResult:
    with ray_for(config, ray) as ray, opened_store(config) as store:
        ray.result()  # a Ray that does not start leaves nothing written
        run = new_run(store, config, repos, source, prompt)
        mark("run stored")
        return _drive(store, config, run.run_id, prompt, progress, ray=ray)


@contextmanager
def ray_for(config: Config, given: RayThread | None) -> Iterator[RayThread]:
    """`given`, begun for `config` (its owner joins it), or a `RayThread` of this block,
    joined at its end (Ray shut down), however the block ends."""
    ray = given if given is not None else RayThread()
    ray.begin(config)
    try:
        yield ray
    finally:
        if given is None:
            ray.join()


def resume(
    run_id: str,
    sources: ConfigSources,
    retry_failed: bool,
    progress_stream: IO[str],
    progress: Progress | None = None,
    ray: RayThread | None = None,
) -> BatchResult:
    """Continue a run with its own agent and git settings (flags given now still win)."""
    requeue = [TaskState.FAILED, TaskState.SKIPPED] if retry_failed else []
    return _resume(run_id, sources, requeue, progress or make_progress(progress_stream), ray)


def _resume(
    run_id: str,
    sources: ConfigSources,
    requeue: list[TaskState],
    progress: Progress,
    ray: RayThread | None = None,
) -> BatchResult:
    with run_store(load_config(sources), run_id) as store:
        run = store.get_run(run_id)
        stored = {key: run.config[key] for key in RUN_KEYS if key in run.config}
        stored.get("agent", {}).pop("env", None)  # masked when stored; comes from config now
        config = load_config(sources.with_overrides(stored))
        with ray_for(config, ray) as ray:  # Ray comes up while the run is checked
            prompt = run.config.get("prompt")
            repos = [task.repo for task in run_tasks(store, run.run_id)]  # a page at a time
            check_agents(config, repos, run.repo_list)
            check_publish(config, repos, run.repo_list)
            check_services(config)
            ray.result()  # a Ray that does not start leaves the run as it was
            return _drive(store, config, run.run_id, prompt, progress, requeue, ray)


def publish(
    run_id: str,
    sources: ConfigSources,
    progress_stream: IO[str],
    progress: Progress | None = None,
    ray: RayThread | None = None,
) -> BatchResult:
    """Push (and with `publish.pr`, open PRs for) the commits of RUN_ID, e.g. a dry run's,
    from the commits kept in the store: no agent runs again."""
    live = sources.with_overrides({}).overrides
    forced = ConfigSources(
        sources.config_file, deep_merge(dict(live), {"dry_run": False}), sources.context
    )
    changed = [TaskState.CHANGED]
    return _resume(run_id, forced, changed, progress or make_progress(progress_stream), ray)


def _drive(
    store: Store,
    config: Config,
    run_id: str,
    prompt: str | None,
    progress: Progress,
    requeue: Sequence[TaskState] = (),
    ray: RayThread | None = None,
) -> BatchResult:
    progress.attach(store)  # the display reads each task's phase from the store
    try:
        run = store.get_run(run_id)
        result = drive(store, config, run, prompt, progress, requeue=requeue, ray=ray)
    finally:
        progress.close()  # before the store closes, however the run ended
    return dataclasses.replace(
        result,
        summarize=lambda: read_summary(config, run_id),
        write_json=lambda out: write_summary(config, run_id, out),
    )


def read_summary(config: Config, run_id: str) -> dict[str, Any]:
    """The run's summary (reports.run_summary, every task in it), from the store."""
    with run_store(config, run_id) as store:
        return reports.run_summary(store, store.get_run(run_id))


def write_summary(config: Config, run_id: str, out: IO[str], driver: bool = False) -> None:
    """The run's summary as JSON on `out`, a page of tasks at a time (with `driver`, the
    run's lease too, as `status --json` shows it)."""
    with run_store(config, run_id) as store:
        run = store.get_run(run_id)
        summary = reports.run_summary(store, run, lazy=True)
        reports.write_json(summary | ({"driver": driver_info(run)} if driver else {}), out)


def list_runs(sources: ConfigSources, limit: int = 50) -> list[dict[str, Any]]:
    with existing_store(load_config(sources)) as store:
        if store is None:
            return []
        return [
            {
                "run_id": run.run_id,
                "name": run.name,
                "created_at": run.created_at.isoformat(),
                "status": run.status.value,
                "branch": run.branch,
                "counts": run.counts,
                "driver": driver_info(run),
            }
            for run in store.list_runs(limit)
        ]


def summary(run_id: str, sources: ConfigSources) -> dict[str, Any]:
    with run_store(load_config(sources), run_id) as store:
        run = store.get_run(run_id)
        return reports.run_summary(store, run) | {"driver": driver_info(run)}


def status(run_id: str, sources: ConfigSources) -> dict[str, Any]:
    """`ado status`: reports.status_summary, with the run's lease."""
    with run_store(load_config(sources), run_id) as store:
        run = store.get_run(run_id)
        return reports.status_summary(store, run) | {"driver": driver_info(run)}


def write_status_json(run_id: str, sources: ConfigSources, out: IO[str]) -> None:
    """`ado status --json`: `summary`'s object, written a page of tasks at a time."""
    write_summary(load_config(sources), run_id, out, driver=True)


def write_report(run_id: str, sources: ConfigSources, fmt: str, out: IO[str]) -> None:
    """`ado report`: the run's report in `fmt` (reports.FORMATS) on `out`, its tasks read
    from the store a page at a time (JSON is also written so)."""
    config = load_config(sources)
    if fmt == "json":
        write_summary(config, run_id, out)
        return
    with run_store(config, run_id) as store:
        out.write(
            reports.FORMATS[fmt](reports.run_summary(store, store.get_run(run_id), lazy=True))
        )


def driver_info(run: RunRecord) -> dict[str, Any] | None:
    """The run's lease as `runs --json` and `status --json` show it: who drives it, and
    since when it has no live driver (`gone_since`, while its status still says running)."""
    lease, gone = run.lease, driver_gone(run)
    if lease is None and gone is None:
        return None
    return {
        "owner": lease.owner if lease else None,
        "generation": lease.generation if lease else None,
        "renewed_at": lease.renewed_at.isoformat() if lease and lease.renewed_at else None,
        "expires_at": lease.expires_at.isoformat() if lease else None,
        "gone_since": gone.isoformat() if gone else None,
    }


def status_text(row: Mapping[str, Any]) -> str:
    """A run's status for people: `running (driver gone since ...; ado resume ID)` for a
    run whose driver is gone, else the status itself. `row`: a `list_runs` row or a summary."""
    gone = (row.get("driver") or {}).get("gone_since")
    if not gone:
        return str(row["status"])
    return f"{row['status']} ({gone_note(row['run_id'], datetime.fromisoformat(gone))})"


def gc(
    sources: ConfigSources, older_than: str, mirrors_unused: str, dry_run: bool
) -> dict[str, Any]:
    """`ado gc`: what was (or, with `dry_run`, would be) removed under the work root."""
    from ado_ray import gc as disk

    older_s = disk.parse_duration(older_than, "--older-than")
    unused_s = disk.parse_duration(mirrors_unused, "--mirrors-unused")
    config = load_config(sources)
    with existing_store(config) as store:  # none yet: every run directory is another's
        found = disk.plan(store, config.work_root, older_s, unused_s)
    removed = found.removals if dry_run else disk.apply(found)
    return {
        "dry_run": dry_run,
        "removed": [item.to_json() for item in removed],
        "bytes": sum(item.size_bytes for item in removed),
        "kept_runs": found.kept_runs,
        "unknown_runs": found.unknown_runs,
    }
