"""The Python API of the forge commands: `ado prs [merge|close] RUN_ID` and `ado repos`.

Forge calls go through the configured limiter (the Redis one is shared with running
batches, so `forge:<host>` budgets hold across them); tokens are read here, in the
process the user started, from each forge's `token_env`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from ado_ray.api import ConfigSources, load_config, opened_store
from ado_ray.config import Config
from ado_ray.engine.driver import run_sync
from ado_ray.engine.publish import repo_host, repo_path
from ado_ray.errors import UsageError
from ado_ray.forge import Forge, make_forge
from ado_ray.forge.base import Discovery, MergeMethod, RepoFilter
from ado_ray.forge.discovery import check_discovery, discover, repo_line
from ado_ray.forge.pacing import LimiterPacer
from ado_ray.forge.prs import PRTarget, close_all, merge_all, statuses
from ado_ray.limits.actor import LimiterClient, RateLimiterService
from ado_ray.models import Step

Rows = list[dict[str, Any]]


@asynccontextmanager
async def forge_clients(config: Config) -> AsyncIterator[Callable[[str], Forge]]:
    """`forge_for(host)`: one client per host, paced by the configured limiter."""
    service = RateLimiterService(config.limiter)
    limiter = LimiterClient(service)
    made: dict[str, Forge] = {}

    def forge_for(host: str) -> Forge:
        if host not in made:
            if host not in config.forges:
                raise UsageError(f"{host} has no entry in `forges:`; expected one for its type")
            settings = config.forges[host]
            pacer = LimiterPacer(limiter, dict(config.limits), host, config.limit_wait_timeout_s)
            made[host] = make_forge(host, settings, settings.token(), pacer)
        return made[host]

    try:
        yield forge_for
    finally:
        await service.close()


def pr_targets(config: Config, run_id: str) -> list[PRTarget]:
    """The run's PRs, from each task's `published` checkpoint, in list order."""
    targets = []
    with opened_store(config) as store:
        for task in store.list_tasks(store.get_run(run_id).run_id):
            published = store.checkpoints(task.task_id).get(Step.PUBLISHED) or {}
            host = repo_host(task.repo)
            if "number" in published and host is not None:
                number, url = int(published["number"]), published.get("url")
                targets.append(PRTarget(task.repo.key, host, repo_path(task.repo), number, url))
    return targets


def _on_prs(
    run_id: str,
    sources: ConfigSources,
    action: Callable[[list[PRTarget], Callable[[str], Forge]], Awaitable[Rows]],
) -> Rows:
    config = load_config(sources)
    targets = pr_targets(config, run_id)

    async def go() -> Rows:
        async with forge_clients(config) as forge_for:
            return await action(targets, forge_for)

    return run_sync(go()) if targets else []


def pr_statuses(run_id: str, sources: ConfigSources) -> Rows:
    return _on_prs(run_id, sources, lambda targets, forge_for: statuses(targets, forge_for))


def merge_prs(run_id: str, sources: ConfigSources, method: str, require_checks: bool) -> Rows:
    merge = MergeMethod(method)
    return _on_prs(
        run_id, sources, lambda targets, ff: merge_all(targets, ff, merge, require_checks)
    )


def close_prs(
    run_id: str, sources: ConfigSources, comment: str | None, delete_branch: bool
) -> Rows:
    return _on_prs(
        run_id, sources, lambda targets, ff: close_all(targets, ff, comment, delete_branch)
    )


DEFAULT_HOSTS = {"github": "github.com", "gitlab": "gitlab.com"}


def find_repos(
    kind: str,
    host: str | None,
    where: Discovery,
    flt: RepoFilter,
    sources: ConfigSources,
    *,
    pin_default_branch: bool = False,
    ssh: bool = False,
) -> list[tuple[str, dict[str, Any]]]:
    """(repos.txt line, full record) for every repository found there that passes `flt`."""
    config = load_config(sources)
    host = (host or DEFAULT_HOSTS.get(kind, "")).lower()
    if not host:
        raise UsageError(f"ado repos {kind} needs --host; expected the forge's host[:port]")
    settings = config.forges.get(host)
    if settings is None or settings.type != kind:
        found = f"a {settings.type} forge" if settings else "no entry in `forges:`"
        raise UsageError(f"{host} is {found}; expected a {kind} forge configured for it")
    check_discovery(where)

    async def go() -> list[tuple[str, dict[str, Any]]]:
        async with forge_clients(config) as forge_for:
            found = []
            async for repo in discover(forge_for(host), where, flt):
                record = {**repo.__dict__, "topics": list(repo.topics)}
                record["merge_methods"] = [m.value for m in repo.merge_methods]
                found.append((repo_line(repo, pin_default_branch, ssh), record))
            return found

    return run_sync(go())
