"""`ado repos <forge> ...`: list a forge's repositories as lines of a repository list."""

from __future__ import annotations

import shlex
from collections.abc import AsyncIterator

from ado_ray.errors import UsageError
from ado_ray.forge.base import Discovery, Forge, RepoFilter, RepoInfo

_WHERE = ("org", "group", "user", "search")


def check_discovery(where: Discovery) -> Discovery:
    """Exactly one of org, group, user and search, or a `UsageError` saying which."""
    given = [name for name in _WHERE if getattr(where, name)]
    if len(given) != 1:
        found = ", ".join(given) if given else "none"
        raise UsageError(
            f"repository discovery needs exactly one of --org, --group, --user or --search; "
            f"got {found}"
        )
    return where


async def discover(forge: Forge, where: Discovery, flt: RepoFilter) -> AsyncIterator[RepoInfo]:
    """Every repository `where` points to on `forge` that `flt` accepts, in the forge's order.

    A forge that reports languages apart from its listing (GitLab) is asked per repository,
    and only when `flt` filters by language.
    """
    check_discovery(where)
    language_of = getattr(forge, "language", None)
    async for repo in forge.list_repos(where):
        if flt.language is not None and repo.language is None and language_of is not None:
            import dataclasses

            repo = dataclasses.replace(repo, language=await language_of(repo))
        if flt.accepts(repo):
            yield repo


def repo_line(repo: RepoInfo, pin_default_branch: bool, ssh: bool = False) -> str:
    """The repos.txt line for `repo`: its clone URL (ssh if asked and known), plus
    `@<default branch>` when pinned."""
    url = repo.ssh_url if ssh and repo.ssh_url else repo.clone_url
    target = f"{url}@{repo.default_branch}" if pin_default_branch else url
    return shlex.quote(target)
