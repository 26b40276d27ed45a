"""The `Forge` protocol: what ado-ray asks of GitHub, GitLab and Gitea, in forge-neutral types.

A forge client is built per host (`ado_ray.forge.make_forge`) with its settings, the token
(already read from the environment by the driver, as a `SecretStr`) and a `Pacer` that
every API call goes through. All methods are coroutines; HTTP runs in a worker thread, so
they never block the event loop.

`path` is the repository's path on its forge as it appears in the clone URL, without
`.git`: `owner/name` on GitHub and Gitea, `group/sub/name` on GitLab.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from ado_ray.errors import AdoError


class ForgeError(AdoError):
    """A forge's API refused a request or failed."""

    def __init__(self, message: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ForgeAuthError(ForgeError):
    """The forge refused the token (401/403 that is not a rate limit). The message names the
    host and the token's environment variable, never the token."""


class ForgeNotFound(ForgeError):
    """The repository, pull request or branch does not exist (or the token cannot see it)."""


class ForgeRateLimited(ForgeError):
    """The forge kept answering with a rate limit after every retry the pacer allowed."""

    def __init__(self, message: str, reset_at: float | None = None) -> None:
        super().__init__(message, 429)
        self.reset_at = reset_at


class MergeMethod(enum.StrEnum):
    MERGE = "merge"
    SQUASH = "squash"
    REBASE = "rebase"


def merge_order(asked: MergeMethod, allowed: Sequence[MergeMethod]) -> list[MergeMethod]:
    """The methods to try, in turn: `asked`, then squash, merge, rebase; only those the
    repository allows (`RepoInfo.merge_methods`)."""
    order = [asked, MergeMethod.SQUASH, MergeMethod.MERGE, MergeMethod.REBASE]
    return [m for i, m in enumerate(order) if m in allowed and m not in order[:i]]


class Checks(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    PENDING = "pending"
    NONE = "none"  # no check or status reported for the head commit


class Review(enum.StrEnum):
    APPROVED = "approved"
    CHANGES_REQUESTED = "changes_requested"
    NONE = "none"


class PRState(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    MERGED = "merged"


def combine_checks(states: list[Checks]) -> Checks:
    """Any failure fails; else anything pending is pending; else success if any ran."""
    for verdict in (Checks.FAILURE, Checks.PENDING, Checks.SUCCESS):
        if verdict in states:
            return verdict
    return Checks.NONE


def combine_reviews(latest: Iterable[str], *, approved: str, changes: str) -> Review:
    """From each reviewer's latest verdict: a change request wins over approvals."""
    verdicts = set(latest)
    if changes in verdicts:
        return Review.CHANGES_REQUESTED
    return Review.APPROVED if approved in verdicts else Review.NONE


@dataclass(frozen=True)
class RepoInfo:
    """A repository as its forge describes it."""

    path: str  # owner/name (GitLab: the full namespace path)
    clone_url: str  # https (or http) clone URL
    ssh_url: str | None
    default_branch: str
    id: int | None = None  # GitLab's project id, GitHub/Gitea's repository id
    can_push: bool = True  # the token's user may push branches here
    archived: bool = False
    fork: bool = False
    visibility: str = "public"  # public | private | internal
    language: str | None = None
    topics: tuple[str, ...] = ()
    merge_methods: tuple[MergeMethod, ...] = tuple(MergeMethod)  # what the repo allows
    parent: str | None = None  # a fork's upstream path, where the forge says (not listings)


@dataclass(frozen=True)
class PullRequest:
    """A pull request (GitLab: merge request). `number` is GitLab's `iid`."""

    number: int
    url: str  # the web URL a person opens
    state: PRState
    head_branch: str
    base_branch: str
    head_sha: str | None = None
    draft: bool = False
    title: str = ""
    # The fork `head_branch` lives in, when it is not the PR's own repository, as this
    # forge's API addresses a repository: `owner/name` (GitLab: the source project's id,
    # which it takes in place of the path). None: the branch is in the PR's repository.
    head_fork: str | None = None


@dataclass(frozen=True)
class PRStatus:
    """What `ado prs` shows per repository."""

    pr: PullRequest
    checks: Checks
    review: Review
    mergeable: bool | None  # None: the forge has not computed it (yet)


@dataclass(frozen=True)
class NewPR:
    """What to open. `head_owner` is set when the branch lives in a fork (fork mode)."""

    head_branch: str
    base_branch: str
    title: str
    body: str
    draft: bool = False
    labels: Sequence[str] = ()
    reviewers: Sequence[str] = ()
    team_reviewers: Sequence[str] = ()
    assignees: Sequence[str] = ()
    head_owner: str | None = None
    head_repo: RepoInfo | None = None  # the fork (GitLab needs its project id)


@dataclass(frozen=True)
class MergeResult:
    merged: bool
    method: MergeMethod | None  # the method used (after any fallback)
    message: str  # why not, or the merge commit


@dataclass(frozen=True)
class Discovery:
    """`ado repos <forge> ...`: where to look (exactly one of org, group, user, search)."""

    org: str | None = None  # GitHub/Gitea organisation
    group: str | None = None  # GitLab group (full path)
    user: str | None = None
    search: str | None = None  # GitHub/Gitea search query
    include_subgroups: bool = False  # GitLab


@dataclass(frozen=True)
class RepoFilter:
    topics: tuple[str, ...] = ()  # every one must be present
    language: str | None = None  # case-insensitive
    skip_archived: bool = False
    skip_forks: bool = False
    visibility: str | None = None  # public | private | internal

    def accepts(self, repo: RepoInfo) -> bool:
        if self.skip_archived and repo.archived:
            return False
        if self.skip_forks and repo.fork:
            return False
        if self.visibility is not None and repo.visibility != self.visibility:
            return False
        if self.language is not None and (repo.language or "").lower() != self.language.lower():
            return False
        return all(topic in repo.topics for topic in self.topics)


class Pacer(Protocol):
    """Every API call waits here: it counts against `forge:<host>` (and PR creation also
    against `forge:<host>:pr`), and a forge's rate-limit signal cools the key down for
    every client sharing the limiter."""

    def call(self, *, pr: bool = False) -> AbstractAsyncContextManager[object]:
        """Hold the budget for one API call (`pr=True`: one PR creation)."""

    async def cooldown(self, reset_at: float) -> None:
        """The forge said: no more calls until `reset_at` (epoch seconds)."""


class Unpaced:
    """A `Pacer` that admits every call at once and ignores cooldowns beyond sleeping
    (for tests of a client alone, and one-off CLI calls without a limiter)."""

    def call(self, *, pr: bool = False) -> AbstractAsyncContextManager[object]:
        return contextlib.nullcontext()

    async def cooldown(self, reset_at: float) -> None:
        import asyncio
        import time

        await asyncio.sleep(max(0.0, reset_at - time.time()))


@dataclass(frozen=True)
class Identity:
    """The token's user, and how git authenticates with the token over https."""

    login: str
    git_username: str  # the Basic-auth user name git sends with the token as password


class Forge(Protocol):
    kind: str  # github | gitlab | gitea
    host: str  # host[:port] as in repository URLs

    async def whoami(self) -> Identity: ...

    async def repo(self, path: str) -> RepoInfo:
        """Raise `ForgeNotFound` when there is no such repository."""

    async def find_pr(
        self, path: str, head_branch: str, head_owner: str | None = None
    ) -> PullRequest | None:
        """The open PR from `head_branch` (of `head_owner`'s fork, if given), or None."""

    async def create_pr(self, path: str, new: NewPR) -> PullRequest:
        """Open the PR, then set labels, reviewers and assignees (one call each, if any)."""

    async def update_pr(self, path: str, number: int, title: str, body: str) -> PullRequest: ...

    async def pr(self, path: str, number: int) -> PullRequest: ...

    async def pr_status(self, path: str, number: int) -> PRStatus: ...

    async def merge_pr(self, path: str, number: int, method: MergeMethod) -> MergeResult:
        """Merge with `method`, or with the first method the repository allows (in the order
        squash, merge, rebase after the one asked for) if it forbids that one."""

    async def close_pr(self, path: str, number: int, comment: str | None = None) -> PullRequest:
        """Comment first (if given), then close."""

    async def delete_branch(self, path: str, branch: str) -> bool:
        """True if deleted, False if it was already gone."""

    async def ensure_fork(self, path: str) -> RepoInfo:
        """The token user's fork of `path`, created (and waited for) when missing."""

    def list_repos(self, where: Discovery) -> AsyncIterator[RepoInfo]:
        """Every repository there, following pagination."""
