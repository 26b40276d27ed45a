"""Where a task's branch goes and what becomes of it: credentials, conflicts, push, PR.

Two targets, chosen by `publish.pr`: the branch alone (pushed to the repository it came
from, also a local path), or the branch plus a pull request on the repository's forge.

Before the agent runs, `Publisher.target` looks at the remote (is the run's branch there?
is a PR open from it?) so that `--conflict skip` costs no agent run, and decides where the
branch is pushed (the repository, or the token user's fork with `--fork`). The decision is
kept in the `prepared` checkpoint, so a resumed task pushes where it was meant to.

Tokens stay in this process's memory: git gets them through `GIT_CONFIG_*` variables given
to the git subprocess alone (`workspace.auth_env`), never in a URL, argv or file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ado_ray import metrics
from ado_ray.engine import workspace as ws
from ado_ray.engine.failures import TaskFailed, TaskStopped
from ado_ray.engine.spec import RunContext
from ado_ray.errors import GitAuthError, WorkspaceError
from ado_ray.forge import Forge, ForgeError, NewPR, PullRequest, make_forge
from ado_ray.forge.base import ForgeAuthError, ForgeNotFound, ForgeRateLimited
from ado_ray.forge.config import DEFAULT_BODY, Conflict
from ado_ray.forge.http import GIT_USERNAMES
from ado_ray.forge.pacing import LimiterPacer
from ado_ray.limits.actor import LimiterClient
from ado_ray.models import FailureClass, RepoSpec


@dataclass(frozen=True)
class Target:
    """Where the task's branch goes; decided before the agent runs."""

    push_url: str
    lease: str | None = None  # the remote branch's sha seen then (None: it was absent)
    base_branch: str | None = None  # the PR's base
    head_owner: str | None = None  # fork mode: the fork's owner
    pr_number: int | None = None  # an open PR from the branch seen then
    start_sha: str | None = None  # append: the agent works on top of the existing branch

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, repo: RepoSpec) -> Target:
        return cls(**data) if data else cls(push_url=repo.url)


def repo_host(repo: RepoSpec) -> str | None:
    """`host[:port]` of a remote repository (its key's first part); None for a local one."""
    return None if repo.key.startswith("/") else repo.key.split("/", 1)[0]


def repo_path(repo: RepoSpec) -> str:
    """The repository's path on its forge: `owner/name` (GitLab: `group/sub/name`)."""
    return repo.key.split("/", 1)[1]


class Publisher:
    """One task's way to its remote and forge (the forge client is made on first use)."""

    def __init__(self, ctx: RunContext, limiter: LimiterClient, repo: RepoSpec) -> None:
        self.ctx, self.limiter, self.repo = ctx, limiter, repo
        self.host = repo_host(repo)
        self.settings = ctx.forges.get(self.host) if self.host else None
        self._forge: Forge | None = None

    @property
    def forge(self) -> Forge:
        if self._forge is None:
            if self.settings is None or self.host is None:
                raise TaskFailed(
                    FailureClass.INPUT,
                    f"{self.repo.url} is on no configured forge; expected its host in `forges:`",
                )
            pacer = LimiterPacer(
                self.limiter, self.ctx.limits, self.host, self.ctx.limit_wait_timeout_s
            )
            token = self.ctx.tokens.get(self.host)
            self._forge = make_forge(self.host, self.settings, token, pacer)
        return self._forge

    def git_env(self, url: str) -> dict[str, str]:
        """Credentials for git at `url`: the forge token of the repository's host, if any."""
        token = self.ctx.tokens.get(self.host) if self.host else None
        if token is None or self.settings is None:
            return {}
        username = GIT_USERNAMES[self.settings.type]
        return ws.auth_env(url, username, token.get_secret_value())

    @contextlib.asynccontextmanager
    async def errors(self, doing: str) -> AsyncIterator[None]:
        """Turn forge and git refusals into the task's failure classes, naming the host
        and the token's variable (never the token)."""
        try:
            yield
        except ForgeRateLimited as exc:
            raise TaskFailed(FailureClass.RATE_LIMITED, f"{doing}: {exc}") from exc
        except ForgeNotFound as exc:
            raise TaskFailed(FailureClass.FORGE, f"{doing}: {exc}") from exc
        except (ForgeAuthError, GitAuthError) as exc:
            raise TaskFailed(FailureClass.FORGE, f"{doing}: {self.auth_hint(exc)}") from exc
        except ForgeError as exc:
            raise TaskFailed(FailureClass.FORGE, f"{doing}: {exc}") from exc
        except WorkspaceError as exc:
            raise TaskFailed(FailureClass.FORGE, f"{doing}: {exc}") from exc

    def auth_hint(self, exc: Exception) -> str:
        if isinstance(exc, ForgeAuthError) or self.settings is None:
            return str(exc)
        variable = self.settings.token_env
        if self.host not in self.ctx.tokens:
            return f"{exc} (no token: ${variable} is not set for {self.host})"
        return f"{self.host} refused the token in ${variable}: {exc}"

    # --- before the agent -----------------------------------------------------------------

    async def target(self, mirror_has_branch: bool) -> Target:
        """Look at the remote before any agent runs; raise `TaskStopped` when the branch or
        a PR from it exists and the conflict rule says to leave it alone."""
        ctx, branch = self.ctx, self.ctx.branch
        publish = ctx.publish
        push_url, head_owner, base_branch = self.repo.url, None, None
        if publish.pr or publish.fork:
            path = repo_path(self.repo)
            async with self.errors(f"looking up {path} on {self.host}"):
                info = await self.forge.repo(path)
                base_branch = self.repo.ref if mirror_has_branch else info.default_branch
                if not info.can_push:
                    if not publish.fork:
                        raise TaskFailed(
                            FailureClass.FORGE,
                            f"the token in ${self.token_env} may not push to {path} on "
                            f"{self.host}; --fork pushes to a fork of it instead",
                        )
                    fork = await self.forge.ensure_fork(path)
                    push_url, head_owner = fork.clone_url, fork.path.split("/", 1)[0]
        async with self.errors(f"looking for branch {branch} in {push_url}"):
            lease = await asyncio.to_thread(
                ws.remote_branch_sha, push_url, branch, env=self.git_env(push_url)
            )
        pr = None
        if publish.pr:
            async with self.errors(f"looking for an open PR from {branch}"):
                pr = await self.forge.find_pr(repo_path(self.repo), branch, head_owner)
        if (lease or pr) and publish.conflict is Conflict.SKIP:
            found = [f"branch {branch} exists in {push_url} at {lease[:12]}"] if lease else []
            found += [f"PR #{pr.number} is open from it ({pr.url})"] if pr else []
            raise TaskStopped(
                "; ".join(found) + "; no agent started (--conflict replace or append works on "
                "it, or choose another --name)"
            )
        return Target(
            push_url=push_url,
            lease=lease,
            base_branch=base_branch,
            head_owner=head_owner,
            pr_number=pr.number if pr else None,
            start_sha=lease if publish.conflict is Conflict.APPEND else None,
        )

    @property
    def token_env(self) -> str:
        return self.settings.token_env if self.settings else "(none)"

    # --- after the commit -----------------------------------------------------------------

    async def push(self, checkout: Path, target: Target, sha: str) -> str:
        """Push `sha` as the run's branch: "pushed" or "up-to-date"."""
        expect = target.lease if self.ctx.publish.conflict is not Conflict.SKIP else ""
        async with self.errors(f"pushing {self.ctx.branch} to {target.push_url}"):
            return await asyncio.to_thread(
                ws.push_branch,
                checkout,
                target.push_url,
                sha,
                self.ctx.branch,
                expect=expect or "",
                env=self.git_env(target.push_url),
            )

    async def open_pr(self, target: Target, fields: Mapping[str, str]) -> PullRequest:
        """The one PR of this branch: found (a resume, or `--conflict replace|append`), or
        opened. Labels, reviewers and assignees are set on a PR this call opens."""
        publish, path, branch = self.ctx.publish, repo_path(self.repo), self.ctx.branch
        title = publish.title.format_map(fields)
        body = (publish.body or DEFAULT_BODY).format_map(fields)
        async with self.errors(f"opening the PR of {branch} on {self.host}"):
            found = await self.forge.find_pr(path, branch, target.head_owner)
            if found is not None:
                if publish.conflict is Conflict.REPLACE and target.pr_number == found.number:
                    updated = await self.forge.update_pr(path, found.number, title, body)
                    return metrics.pr(updated, "updated")
                return metrics.pr(found, "existing")
            base = target.base_branch or (await self.forge.repo(path)).default_branch
            # Fork mode: the fork itself (GitLab opens the MR from the fork's project id).
            fork = await self.forge.ensure_fork(path) if target.head_owner else None
            new = NewPR(
                head_branch=branch,
                base_branch=base,
                title=title,
                body=body,
                draft=publish.draft,
                labels=publish.labels,
                reviewers=publish.reviewers,
                team_reviewers=publish.team_reviewers,
                assignees=publish.assignees,
                head_owner=target.head_owner,
                head_repo=fork,
            )
            return metrics.pr(await self.forge.create_pr(path, new), "opened")
