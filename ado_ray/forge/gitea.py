"""Gitea and Forgejo over REST v1.

Drafts are the `WIP: ` title prefix; labels are set by id (looked up by name in the
repository's labels, created when missing); git authenticates with the token user's login
as the user name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
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
    combine_reviews,
    merge_order,
)
from ado_ray.forge.http import RestForge, forge_message, fork_of_head, seg

log = logging.getLogger(__name__)

DRAFT = "WIP: "
LABEL_COLOR = "#ededed"  # a label created for --label (Gitea requires a colour)
_STATUS = {"success": Checks.SUCCESS, "pending": Checks.PENDING}
_FAILED = {"failure", "error", "warning"}


class Gitea(RestForge):
    """A `Forge` for one Gitea or Forgejo host."""

    kind = "gitea"

    _me: Identity | None = None

    async def whoami(self) -> Identity:
        if self._me is None:
            login = (await self.api.request("GET", "/user")).data["login"]
            self._me = Identity(login=login, git_username=self.git_username)
        return self._me

    async def repo(self, path: str) -> RepoInfo:
        return repo_info((await self.api.request("GET", f"/repos/{path}")).data)

    async def find_pr(
        self, path: str, head_branch: str, head_owner: str | None = None
    ) -> PullRequest | None:
        owner = (head_owner or path.split("/", 1)[0]).lower()
        async for item in self.api.paginate(f"/repos/{path}/pulls", {"state": "open"}):
            head = item.get("head") or {}
            head_repo = head.get("repo") or {}
            login = ((head_repo.get("owner") or {}).get("login") or "").lower()
            if head.get("ref") == head_branch and login in (owner, ""):
                return pull_request(item)
        return None

    async def create_pr(self, path: str, new: NewPR) -> PullRequest:
        payload: dict[str, Any] = {
            "head": f"{new.head_owner}:{new.head_branch}" if new.head_owner else new.head_branch,
            "base": new.base_branch,
            "title": DRAFT + new.title if new.draft else new.title,
            "body": new.body,
        }
        if new.assignees:
            payload["assignees"] = [*new.assignees]
        if new.labels:
            payload["labels"] = await self._label_ids(path, new.labels)
        data = (await self.api.request("POST", f"/repos/{path}/pulls", json=payload, pr=True)).data
        pr = pull_request(data)
        if new.reviewers or new.team_reviewers:
            await self.api.request(
                "POST",
                f"/repos/{path}/pulls/{pr.number}/requested_reviewers",
                json={"reviewers": [*new.reviewers], "team_reviewers": [*new.team_reviewers]},
            )
        return pr

    async def _label_ids(self, path: str, names: Sequence[str]) -> list[int]:
        """The labels' ids; a label the repository lacks is created (as GitHub and GitLab
        do on first use), or left out with a warning where the token may not create it."""
        known: dict[str, int] = {}
        async for label in self.api.paginate(f"/repos/{path}/labels"):
            known[label["name"]] = int(label["id"])
        refused = []
        for name in dict.fromkeys(name for name in names if name not in known):
            response = await self.api.request(
                "POST",
                f"/repos/{path}/labels",
                json={"name": name, "color": LABEL_COLOR},
                ok=(201, 403, 422),
            )
            if response.status == 201 and isinstance(response.data, dict):
                known[name] = int(response.data["id"])
            else:
                refused.append(f"{name} ({response.status} {forge_message(response.data)})")
        if refused:
            log.warning(
                "%s has no label %s and refused to create it; create it in the repository",
                path,
                ", ".join(refused),
            )
        return [known[name] for name in names if name in known]

    async def update_pr(self, path: str, number: int, title: str, body: str) -> PullRequest:
        if (await self.pr(path, number)).draft and not title.startswith(DRAFT):
            title = DRAFT + title  # a title without the prefix would mark it ready
        payload = {"title": title, "body": body}
        data = (await self.api.request("PATCH", f"/repos/{path}/pulls/{number}", json=payload)).data
        return pull_request(data)

    async def pr(self, path: str, number: int) -> PullRequest:
        return pull_request((await self.api.request("GET", f"/repos/{path}/pulls/{number}")).data)

    async def pr_status(self, path: str, number: int) -> PRStatus:
        data = (await self.api.request("GET", f"/repos/{path}/pulls/{number}")).data
        pr = pull_request(data)
        checks = Checks.NONE
        if pr.head_sha:
            status = (
                await self.api.request("GET", f"/repos/{path}/commits/{pr.head_sha}/status")
            ).data
            checks = commit_checks(status)
        latest: dict[str, str] = {}
        async for review in self.api.paginate(f"/repos/{path}/pulls/{number}/reviews"):
            user = (review.get("user") or {}).get("login", "")
            if review.get("dismissed"):
                latest.pop(user, None)
            elif review.get("state") in ("APPROVED", "REQUEST_CHANGES"):
                latest[user] = review["state"]
        mergeable = data.get("mergeable")
        return PRStatus(
            pr=pr,
            checks=checks,
            review=combine_reviews(latest.values(), approved="APPROVED", changes="REQUEST_CHANGES"),
            mergeable=mergeable if isinstance(mergeable, bool) else None,
        )

    async def merge_pr(self, path: str, number: int, method: MergeMethod) -> MergeResult:
        order = merge_order(method, (await self.repo(path)).merge_methods)
        message = f"{path} allows no merge method"
        for candidate in order:
            response = await self.api.request(
                "POST",
                f"/repos/{path}/pulls/{number}/merge",
                json={"Do": candidate.value},
                ok=(200, 204, 405, 409),
            )
            if response.status in (200, 204):
                return MergeResult(True, candidate, "merged")
            data = response.data if isinstance(response.data, dict) else {}
            message = str(data.get("message") or f"not merged ({response.status})")
            lowered = message.lower()
            if response.status == 405 and ("not allowed" in lowered or "style" in lowered):
                continue
            return MergeResult(False, candidate, message)
        return MergeResult(False, None, message)

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
        response = await self.api.request("DELETE", f"/repos/{path}/branches/{ref}", ok=(204, 404))
        return response.status == 204

    async def ensure_fork(self, path: str) -> RepoInfo:
        me = await self.whoami()
        fork_path = f"{me.login}/{path.rsplit('/', 1)[-1]}"
        try:
            return self.own_fork(await self.repo(fork_path), path)
        except ForgeNotFound:
            pass
        data = (await self.api.request("POST", f"/repos/{path}/forks", json={})).data
        if isinstance(data, dict) and data.get("full_name"):
            fork_path = data["full_name"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fork_wait_s
        while True:
            try:
                return await self.repo(fork_path)
            except ForgeNotFound:
                if loop.time() > deadline:
                    raise ForgeError(
                        f"{self.api.where}: the fork {fork_path} of {path} did not appear within "
                        f"{self.fork_wait_s:g}s; try again once it shows"
                    ) from None
                await asyncio.sleep(1.0)

    async def list_repos(self, where: Discovery) -> AsyncIterator[RepoInfo]:
        org = where.org or where.group
        if org:
            pages = self.api.paginate(f"/orgs/{seg(org)}/repos")
        elif where.user:
            pages = self.api.paginate(f"/users/{seg(where.user)}/repos")
        elif where.search:
            pages = self.api.paginate("/repos/search", {"q": where.search}, items_key="data")
        else:
            raise ValueError("Discovery needs one of org, group, user or search")
        async for item in pages:
            yield repo_info(item)


def repo_info(data: dict[str, Any]) -> RepoInfo:
    allowed = [
        method
        for method, flag in (
            (MergeMethod.MERGE, "allow_merge_commits"),
            (MergeMethod.SQUASH, "allow_squash_merge"),
            (MergeMethod.REBASE, "allow_rebase"),
        )
        if data.get(flag, True)
    ]
    if data.get("private"):
        visibility = "private"
    elif data.get("internal"):
        visibility = "internal"
    else:
        visibility = "public"
    return RepoInfo(
        path=data["full_name"],
        clone_url=data["clone_url"],
        ssh_url=data.get("ssh_url") or None,
        default_branch=data.get("default_branch") or "main",
        id=data.get("id"),
        can_push=bool((data.get("permissions") or {"push": True}).get("push")),
        archived=bool(data.get("archived")),
        fork=bool(data.get("fork")),
        visibility=visibility,
        language=data.get("language") or None,
        topics=tuple(data.get("topics") or ()),
        merge_methods=tuple(allowed),
        parent=(data.get("parent") or {}).get("full_name"),
    )


def pull_request(data: dict[str, Any]) -> PullRequest:
    if data.get("merged"):
        state = PRState.MERGED
    else:
        state = PRState.OPEN if data.get("state") == "open" else PRState.CLOSED
    title = data.get("title") or ""
    head = data.get("head") or {}
    return PullRequest(
        number=data["number"],
        url=data["html_url"],
        state=state,
        head_branch=head.get("ref", ""),
        base_branch=(data.get("base") or {}).get("ref", ""),
        head_sha=head.get("sha"),
        draft=bool(data.get("draft")) or title.startswith(DRAFT),
        title=title,
        head_fork=fork_of_head(data),
    )


def commit_checks(status: dict[str, Any]) -> Checks:
    """The combined commit status: `state`, with no statuses at all meaning none."""
    if not status.get("total_count", len(status.get("statuses") or ())):
        return Checks.NONE
    state = status.get("state") or ""
    return Checks.FAILURE if state in _FAILED else _STATUS.get(state, Checks.NONE)
