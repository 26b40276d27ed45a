"""GitHub (github.com and GitHub Enterprise Server) over REST v3."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from ado_ray.forge.base import (
    Checks,
    Discovery,
    ForgeError,
    ForgeNotFound,
    Identity,
    MergeMethod,
    MergeResult,
    NewPR,
    PRState,
    PRStatus,
    PullRequest,
    RepoInfo,
    Review,
    combine_checks,
    combine_reviews,
    merge_order,
)
from ado_ray.forge.http import RestForge, fork_of_head, seg

log = logging.getLogger(__name__)

_FAILED = {"failure", "cancelled", "timed_out", "action_required", "startup_failure", "stale"}


class GitHub(RestForge):
    """A `Forge` for one GitHub host."""

    kind = "github"

    _me: Identity | None = None

    async def whoami(self) -> Identity:
        if self._me is None:
            data = (await self.api.request("GET", "/user")).data
            self._me = Identity(login=data["login"], git_username=self.git_username)
        return self._me

    async def repo(self, path: str) -> RepoInfo:
        return repo_info((await self.api.request("GET", f"/repos/{path}")).data)

    async def find_pr(
        self, path: str, head_branch: str, head_owner: str | None = None
    ) -> PullRequest | None:
        owner = head_owner or path.split("/", 1)[0]
        params = {"head": f"{owner}:{head_branch}", "state": "open"}
        async for item in self.api.paginate(f"/repos/{path}/pulls", params):
            if item["head"]["ref"] == head_branch:
                return pull_request(item)
        return None

    async def create_pr(self, path: str, new: NewPR) -> PullRequest:
        head = f"{new.head_owner}:{new.head_branch}" if new.head_owner else new.head_branch
        payload = {
            "title": new.title,
            "head": head,
            "base": new.base_branch,
            "body": new.body,
            "draft": new.draft,
        }
        data = (await self.api.request("POST", f"/repos/{path}/pulls", json=payload, pr=True)).data
        pr = pull_request(data)
        if new.labels:
            await self.api.request(
                "POST", f"/repos/{path}/issues/{pr.number}/labels", json={"labels": [*new.labels]}
            )
        if new.reviewers or new.team_reviewers:
            await self.api.request(
                "POST",
                f"/repos/{path}/pulls/{pr.number}/requested_reviewers",
                json={"reviewers": [*new.reviewers], "team_reviewers": [*new.team_reviewers]},
            )
        if new.assignees:
            await self.api.request(
                "POST",
                f"/repos/{path}/issues/{pr.number}/assignees",
                json={"assignees": [*new.assignees]},
            )
        return pr

    async def update_pr(self, path: str, number: int, title: str, body: str) -> PullRequest:
        payload = {"title": title, "body": body}
        data = (await self.api.request("PATCH", f"/repos/{path}/pulls/{number}", json=payload)).data
        return pull_request(data)

    async def pr(self, path: str, number: int) -> PullRequest:
        return pull_request((await self.api.request("GET", f"/repos/{path}/pulls/{number}")).data)

    async def pr_status(self, path: str, number: int) -> PRStatus:
        data = (await self.api.request("GET", f"/repos/{path}/pulls/{number}")).data
        pr = pull_request(data)
        checks = await self._checks(path, pr.head_sha) if pr.head_sha else Checks.NONE
        mergeable = data.get("mergeable")
        return PRStatus(
            pr=pr,
            checks=checks,
            review=await self._review(path, number),
            mergeable=mergeable if isinstance(mergeable, bool) else None,
        )

    async def _checks(self, path: str, sha: str) -> Checks:
        status = (await self.api.request("GET", f"/repos/{path}/commits/{sha}/status")).data
        states: list[Checks] = []
        if status.get("total_count", len(status.get("statuses") or ())):
            states.append(
                {"success": Checks.SUCCESS, "pending": Checks.PENDING}.get(
                    status.get("state"), Checks.FAILURE
                )
            )
        runs = self.api.paginate(f"/repos/{path}/commits/{sha}/check-runs", items_key="check_runs")
        async for run in runs:
            if run.get("status") != "completed":
                states.append(Checks.PENDING)
            elif run.get("conclusion") in _FAILED:
                states.append(Checks.FAILURE)
            else:  # success, neutral, skipped
                states.append(Checks.SUCCESS)
        return combine_checks(states)

    async def _review(self, path: str, number: int) -> Review:
        latest: dict[str, str] = {}
        async for review in self.api.paginate(f"/repos/{path}/pulls/{number}/reviews"):
            state = review.get("state")
            user = (review.get("user") or {}).get("login", "")
            if state in ("APPROVED", "CHANGES_REQUESTED", "DISMISSED"):
                latest[user] = state  # the list is oldest first
        return combine_reviews(latest.values(), approved="APPROVED", changes="CHANGES_REQUESTED")

    async def merge_pr(self, path: str, number: int, method: MergeMethod) -> MergeResult:
        allowed = (await self.repo(path)).merge_methods
        order = merge_order(method, allowed)
        if not order:
            return MergeResult(False, None, f"{path} allows no merge method")
        message = ""
        for candidate in order:
            response = await self.api.request(
                "PUT",
                f"/repos/{path}/pulls/{number}/merge",
                json={"merge_method": candidate.value},
                ok=(200, 405, 409),
            )
            data = response.data if isinstance(response.data, dict) else {}
            message = str(data.get("message", ""))
            if response.status == 200 and data.get("merged", True):
                return MergeResult(True, candidate, str(data.get("sha") or message))
            if response.status == 405 and "not allowed" in message.lower():
                log.info(
                    "%s#%d: %s merges are not allowed; trying the next", path, number, candidate
                )
                continue
            return MergeResult(False, candidate, message or f"not merged ({response.status})")
        return MergeResult(False, None, f"no merge method was accepted: {message}")

    async def close_pr(self, path: str, number: int, comment: str | None = None) -> PullRequest:
        if comment:
            await self.api.request(
                "POST", f"/repos/{path}/issues/{number}/comments", json={"body": comment}
            )
        payload = {"state": "closed"}
        data = (await self.api.request("PATCH", f"/repos/{path}/pulls/{number}", json=payload)).data
        return pull_request(data)

    async def delete_branch(self, path: str, branch: str) -> bool:
        ref = "/".join(seg(part) for part in branch.split("/"))
        response = await self.api.request(
            "DELETE", f"/repos/{path}/git/refs/heads/{ref}", ok=(204, 404, 422)
        )
        return response.status == 204

    async def ensure_fork(self, path: str) -> RepoInfo:
        me = await self.whoami()
        name = path.rsplit("/", 1)[-1]
        try:
            return self.own_fork(await self.repo(f"{me.login}/{name}"), path)
        except ForgeNotFound:
            pass
        data = (await self.api.request("POST", f"/repos/{path}/forks", json={})).data
        fork_path = data.get("full_name") or f"{me.login}/{name}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fork_wait_s
        while True:
            try:
                return await self.repo(fork_path)
            except ForgeNotFound:
                if loop.time() > deadline:
                    raise ForgeError(
                        f"{self.api.where}: the fork {fork_path} of {path} did not appear within "
                        f"{self.fork_wait_s:g}s; try again once GitHub shows it"
                    ) from None
                await asyncio.sleep(1.0)

    async def list_repos(self, where: Discovery) -> AsyncIterator[RepoInfo]:
        if where.org or where.group:
            pages = self.api.paginate(
                f"/orgs/{seg(where.org or where.group or '')}/repos", {"type": "all"}
            )
        elif where.user:
            pages = self.api.paginate(f"/users/{seg(where.user)}/repos")
        elif where.search:
            pages = self.api.paginate(
                "/search/repositories", {"q": where.search}, items_key="items"
            )
        else:
            raise ValueError("Discovery needs one of org, group, user or search")
        async for item in pages:
            yield repo_info(item)


def repo_info(data: dict[str, Any]) -> RepoInfo:
    allowed = [
        method
        for method, flag in (
            (MergeMethod.MERGE, "allow_merge_commit"),
            (MergeMethod.SQUASH, "allow_squash_merge"),
            (MergeMethod.REBASE, "allow_rebase_merge"),
        )
        if data.get(flag, True)  # absent from listings: assume allowed, the merge tells
    ]
    visibility = data.get("visibility") or ("private" if data.get("private") else "public")
    return RepoInfo(
        path=data["full_name"],
        clone_url=data["clone_url"],
        ssh_url=data.get("ssh_url"),
        default_branch=data.get("default_branch") or "main",
        id=data.get("id"),
        can_push=bool((data.get("permissions") or {"push": True}).get("push")),
        archived=bool(data.get("archived")),
        fork=bool(data.get("fork")),
        visibility=visibility,
        language=data.get("language"),
        topics=tuple(data.get("topics") or ()),
        merge_methods=tuple(allowed),
        parent=(data.get("parent") or {}).get("full_name"),
    )


def pull_request(data: dict[str, Any]) -> PullRequest:
    if data.get("merged") or data.get("merged_at"):
        state = PRState.MERGED
    else:
        state = PRState.OPEN if data.get("state") == "open" else PRState.CLOSED
    return PullRequest(
        number=data["number"],
        url=data["html_url"],
        state=state,
        head_branch=data["head"]["ref"],
        base_branch=data["base"]["ref"],
        head_sha=data["head"].get("sha"),
        draft=bool(data.get("draft")),
        title=data.get("title") or "",
        head_fork=fork_of_head(data),
    )
