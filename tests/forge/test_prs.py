"""Batch PR operations, discovery and the forge registry, over a small in-test forge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from ado_ray.errors import ConfigError, UsageError
from ado_ray.forge import FORGES, ForgeSettings, Unpaced, make_forge
from ado_ray.forge.base import (
    Checks,
    Discovery,
    ForgeError,
    MergeMethod,
    MergeResult,
    PRState,
    PRStatus,
    PullRequest,
    RepoFilter,
    RepoInfo,
    Review,
    combine_checks,
    merge_order,
)
from ado_ray.forge.discovery import discover, repo_line
from ado_ray.forge.prs import PRTarget, close_all, merge_all, statuses


def _pr(number: int, state: PRState = PRState.OPEN, draft: bool = False) -> PullRequest:
    return PullRequest(
        number, f"https://f/pr/{number}", state, f"ado/b{number}", "main", draft=draft
    )


class FakeForge:
    kind = "github"
    host = "f"

    def __init__(self, prs: dict[int, tuple[PullRequest, Checks]]) -> None:
        self.prs = prs
        self.calls: list[tuple[str, int]] = []
        self.active = self.peak = 0

    async def pr(self, path: str, number: int) -> PullRequest:
        if number == 99:
            raise ForgeError("boom 99")
        return self.prs[number][0]

    async def pr_status(self, path: str, number: int) -> PRStatus:
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.01)
        self.active -= 1
        pr = await self.pr(path, number)
        return PRStatus(pr, self.prs[number][1], Review.NONE, True)

    async def merge_pr(self, path: str, number: int, method: MergeMethod) -> MergeResult:
        self.calls.append(("merge", number))
        if number == 5:
            return MergeResult(False, method, "Head branch was modified")
        return MergeResult(True, MergeMethod.MERGE, "abc123")

    async def close_pr(self, path: str, number: int, comment: str | None = None) -> PullRequest:
        self.calls.append(("close", number))
        return _pr(number, PRState.CLOSED)

    async def delete_branch(self, path: str, branch: str) -> bool:
        self.calls.append(("delete", int(branch.removeprefix("ado/b"))))
        return True


def _targets(*numbers: int) -> list[PRTarget]:
    return [PRTarget(f"f/acme/r{n}", "f", f"acme/r{n}", n, f"https://f/pr/{n}") for n in numbers]


FORGE = FakeForge(
    {
        1: (_pr(1), Checks.SUCCESS),
        2: (_pr(2), Checks.PENDING),
        3: (_pr(3), Checks.FAILURE),
        4: (_pr(4), Checks.NONE),
        5: (_pr(5), Checks.SUCCESS),
        6: (_pr(6, PRState.MERGED), Checks.SUCCESS),
        7: (_pr(7, draft=True), Checks.SUCCESS),
    }
)


def test_merge_all_skips_and_isolates_failures() -> None:
    forge = FakeForge(FORGE.prs)
    rows = asyncio.run(
        merge_all(
            _targets(1, 2, 3, 4, 5, 6, 7, 99),
            lambda host: forge,
            MergeMethod.SQUASH,
            require_checks=True,
        )
    )
    outcome = {row["number"]: (row["result"], row["reason"]) for row in rows}
    assert [row["number"] for row in rows] == [1, 2, 3, 4, 5, 6, 7, 99]
    assert outcome[1] == ("merged", None)
    assert outcome[2] == ("skipped", "checks pending")
    assert outcome[3] == ("skipped", "checks failing")
    assert outcome[4] == ("skipped", "no checks")
    assert outcome[5] == ("failed", "Head branch was modified")
    assert outcome[6] == ("skipped", "already merged")
    assert outcome[7][0] == "skipped" and "draft" in outcome[7][1]
    assert outcome[99] == ("failed", "boom 99")
    assert rows[0]["method"] == "merge" and rows[0]["repo"] == "f/acme/r1"
    assert sorted(forge.calls) == [("merge", 1), ("merge", 5)]


def test_merge_all_without_required_checks_merges_pending() -> None:
    forge = FakeForge(FORGE.prs)
    rows = asyncio.run(merge_all(_targets(2, 4), lambda host: forge, MergeMethod.MERGE, False))
    assert [row["result"] for row in rows] == ["merged", "merged"]


def test_statuses_are_bounded_and_a_bad_host_fails_its_row_only() -> None:
    forge = FakeForge({n: (_pr(n), Checks.SUCCESS) for n in range(1, 21)})

    def forge_for(host: str) -> Any:
        if host == "unknown":
            raise ConfigError("unknown is on no configured forge")
        return forge

    targets = [*_targets(*range(1, 21)), PRTarget("unknown/a/b", "unknown", "a/b", 1, None)]
    rows = asyncio.run(statuses(targets, forge_for, concurrency=4))
    assert forge.peak == 4
    assert [row["result"] for row in rows] == ["ok"] * 20 + ["failed"]
    assert rows[0]["checks"] == "success" and rows[0]["state"] == "open"
    assert rows[-1]["reason"] == "unknown is on no configured forge"


def test_close_all_comments_closes_and_deletes_branches() -> None:
    forge = FakeForge(FORGE.prs)
    rows = asyncio.run(close_all(_targets(1, 6), lambda host: forge, "bye", delete_branch=True))
    assert [(r["result"], r["branch_deleted"]) for r in rows] == [
        ("closed", True),
        ("skipped", True),
    ]
    assert ("close", 6) not in forge.calls and ("close", 1) in forge.calls


def _repo(name: str, **fields: Any) -> RepoInfo:
    return RepoInfo(
        f"acme/{name}", f"https://f/acme/{name}.git", f"git@f:acme/{name}.git", "dev", **fields
    )


class ListingForge:
    def __init__(self, repos: list[RepoInfo], languages: dict[str, str] | None = None) -> None:
        self.repos = repos
        self.languages = languages

    async def list_repos(self, where: Discovery) -> AsyncIterator[RepoInfo]:
        for repo in self.repos:
            yield repo

    def __getattr__(self, name: str) -> Any:
        if name == "language" and self.languages is not None:
            languages = self.languages

            async def language(repo: RepoInfo) -> str | None:
                return languages.get(repo.path)

            return language
        raise AttributeError(name)


async def _found(forge: Any, where: Discovery, flt: RepoFilter) -> list[str]:
    return [repo.path async for repo in discover(forge, where, flt)]


def test_discover_filters() -> None:
    repos = [
        _repo("a", topics=("deps", "py")),
        _repo("b", archived=True, topics=("deps",)),
        _repo("c", fork=True, topics=("deps",)),
        _repo("d"),
    ]
    flt = RepoFilter(topics=("deps",), skip_archived=True, skip_forks=True)
    assert asyncio.run(_found(ListingForge(repos), Discovery(org="acme"), flt)) == ["acme/a"]


def test_discover_asks_for_languages_only_when_filtering_by_one() -> None:
    forge = ListingForge([_repo("a"), _repo("b")], {"acme/a": "Go", "acme/b": "Python"})
    flt = RepoFilter(language="python")
    assert asyncio.run(_found(forge, Discovery(group="acme"), flt)) == ["acme/b"]


@pytest.mark.parametrize("where", [Discovery(), Discovery(org="a", user="b")])
def test_discover_needs_exactly_one_place(where: Discovery) -> None:
    with pytest.raises(UsageError, match="exactly one of"):
        asyncio.run(_found(ListingForge([]), where, RepoFilter()))


def test_repo_line() -> None:
    repo = _repo("a")
    assert repo_line(repo, pin_default_branch=False) == "https://f/acme/a.git"
    assert repo_line(repo, pin_default_branch=True) == "https://f/acme/a.git@dev"
    assert repo_line(repo, pin_default_branch=True, ssh=True) == "git@f:acme/a.git@dev"


def test_merge_order_follows_the_contract() -> None:
    every = tuple(MergeMethod)
    assert merge_order(MergeMethod.REBASE, every) == ["rebase", "squash", "merge"]
    assert merge_order(MergeMethod.SQUASH, (MergeMethod.REBASE, MergeMethod.MERGE)) == [
        "merge",
        "rebase",
    ]
    assert merge_order(MergeMethod.MERGE, ()) == []


def test_combine_checks() -> None:
    assert combine_checks([]) is Checks.NONE
    assert combine_checks([Checks.SUCCESS, Checks.PENDING]) is Checks.PENDING
    assert combine_checks([Checks.PENDING, Checks.FAILURE, Checks.SUCCESS]) is Checks.FAILURE
    assert combine_checks([Checks.SUCCESS]) is Checks.SUCCESS


@pytest.mark.parametrize("kind", sorted(FORGES))
def test_make_forge_builds_each_type(kind: str) -> None:
    settings = ForgeSettings(type=kind, token_env="T")
    forge = make_forge("git.example.com", settings, SecretStr("s3cret-value"), Unpaced())
    assert (forge.kind, forge.host) == (kind, "git.example.com")
    assert "s3cret-value" not in repr(forge) + repr(vars(forge))


def test_make_forge_names_the_choices() -> None:
    settings = ForgeSettings.model_construct(type="bitbucket", token_env="T")
    with pytest.raises(ConfigError, match="expected one of github, gitlab, gitea"):
        make_forge("b.org", settings, None, Unpaced())
