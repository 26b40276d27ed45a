"""Operations over many pull requests, on any forge (`ado prs`, `ado prs merge|close`).

Each function takes the targets and `forge_for(host) -> Forge`, works on up to
`concurrency` PRs at once, and returns one row per target, in the targets' order:

    {"repo": "github.com/acme/x", "url": ..., "number": 3, "result": "merged", "reason": ...}

A failure is that PR's row (`result: failed` and the error as `reason`), never the batch's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ado_ray.forge.base import Checks, Forge, MergeMethod, PRState

Row = dict[str, Any]
ForgeFor = Callable[[str], Forge]
CONCURRENCY = 8
_SKIP_CHECKS = {
    Checks.PENDING: "checks pending",
    Checks.FAILURE: "checks failing",
    Checks.NONE: "no checks",
}


@dataclass(frozen=True)
class PRTarget:
    """One pull request: the repository's key (as in the run), its host and path on the
    forge, the PR's number and web URL."""

    repo_key: str
    host: str
    path: str
    number: int
    url: str | None = None


def _row(target: PRTarget, result: str, reason: str | None = None, **extra: Any) -> Row:
    return {
        "repo": target.repo_key,
        "url": target.url,
        "number": target.number,
        "result": result,
        "reason": reason,
        **extra,
    }


async def _each(
    targets: Iterable[PRTarget],
    forge_for: ForgeFor,
    work: Callable[[Forge, PRTarget], Awaitable[Row]],
    concurrency: int,
) -> list[Row]:
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(target: PRTarget) -> Row:
        async with gate:
            try:
                return await work(forge_for(target.host), target)
            except Exception as exc:  # the per-PR boundary: the row records it
                return _row(target, "failed", str(exc) or type(exc).__name__)

    return list(await asyncio.gather(*(one(target) for target in targets)))


async def statuses(
    targets: Iterable[PRTarget], forge_for: ForgeFor, *, concurrency: int = CONCURRENCY
) -> list[Row]:
    """Each PR's state, checks, review and mergeability (`result: ok`)."""

    async def work(forge: Forge, target: PRTarget) -> Row:
        status = await forge.pr_status(target.path, target.number)
        pr = status.pr
        return {
            **_row(target, "ok"),
            "url": pr.url,
            "title": pr.title,
            "state": pr.state.value,
            "draft": pr.draft,
            "checks": status.checks.value,
            "review": status.review.value,
            "mergeable": status.mergeable,
        }

    return await _each(targets, forge_for, work, concurrency)


async def merge_all(
    targets: Iterable[PRTarget],
    forge_for: ForgeFor,
    method: MergeMethod,
    require_checks: bool,
    *,
    concurrency: int = CONCURRENCY,
) -> list[Row]:
    """Merge every open PR (with the repository's fallback methods); skip one that is not
    open, a draft, or (with `require_checks`) whose checks did not succeed."""

    async def work(forge: Forge, target: PRTarget) -> Row:
        status = await forge.pr_status(target.path, target.number)
        pr = status.pr
        if pr.state is not PRState.OPEN:
            return _row(target, "skipped", f"already {pr.state.value}", url=pr.url)
        if pr.draft:
            return _row(target, "skipped", "draft; mark it ready for review first", url=pr.url)
        if require_checks and status.checks is not Checks.SUCCESS:
            return _row(target, "skipped", _SKIP_CHECKS[status.checks], url=pr.url)
        merged = await forge.merge_pr(target.path, target.number, method)
        used = merged.method.value if merged.method else None
        if merged.merged:
            return _row(target, "merged", None, url=pr.url, method=used, detail=merged.message)
        return _row(target, "failed", merged.message, url=pr.url, method=used)

    return await _each(targets, forge_for, work, concurrency)


async def close_all(
    targets: Iterable[PRTarget],
    forge_for: ForgeFor,
    comment: str | None,
    delete_branch: bool,
    *,
    concurrency: int = CONCURRENCY,
) -> list[Row]:
    """Close every open PR (commenting first, if given), and delete its head branch if
    asked (in the fork, for a fork's PR); a PR already closed or merged is skipped (its
    branch is still deleted if asked)."""

    async def work(forge: Forge, target: PRTarget) -> Row:
        pr = await forge.pr(target.path, target.number)
        if pr.state is PRState.OPEN:
            pr = await forge.close_pr(target.path, target.number, comment)
            row = _row(target, "closed", None, url=pr.url)
        else:
            row = _row(target, "skipped", f"already {pr.state.value}", url=pr.url)
        if delete_branch:
            where = pr.head_fork or target.path
            row["branch_deleted"] = await forge.delete_branch(where, pr.head_branch)
        return row

    return await _each(targets, forge_for, work, concurrency)
