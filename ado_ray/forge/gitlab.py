"""GitLab (gitlab.com and self-managed) over REST v4.

A project is addressed by its URL-encoded full path (`group%2Fsub%2Fname`); a merge
request's `number` is its `iid`. Drafts are the `Draft: ` title prefix. Reviewers and
assignees are user ids, looked up by username.
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
    Review,
    merge_order,
)
from ado_ray.forge.http import RestForge, seg

log = logging.getLogger(__name__)

DRAFT = "Draft: "
DEVELOPER = 30  # the access level that may push branches
_PENDING = {
    "created",
    "waiting_for_resource",
    "preparing",
    "pending",
    "running",
    "scheduled",
    "manual",
    "waiting_for_callback",
}
_FAILED = {"failed", "canceled", "canceling"}
_UNCHECKED = {"checking", "unchecked", "preparing", "approvals_syncing", "cannot_be_merged_recheck"}
_STATES = {"opened": PRState.OPEN, "merged": PRState.MERGED}


class GitLab(RestForge):
    """A `Forge` for one GitLab host."""

    kind = "gitlab"

    _me: tuple[Identity, int] | None = None
    fork_wait_default_s = 120.0

    async def _user(self) -> tuple[Identity, int]:
        if self._me is None:
            data = (await self.api.request("GET", "/user")).data
            self._me = (
                Identity(login=data["username"], git_username=self.git_username),
                int(data["id"]),
            )
        return self._me

    async def whoami(self) -> Identity:
        return (await self._user())[0]

    async def _project(self, path: str | int) -> dict[str, Any]:
        data: dict[str, Any] = (await self.api.request("GET", f"/projects/{_pid(path)}")).data
        return data

    async def repo(self, path: str) -> RepoInfo:
        data = await self._project(path)
        info = repo_info(data)
        levels = [
            (access or {}).get("access_level") or 0
            for access in (data.get("permissions") or {}).values()
        ]
        if any(levels):
            return _replace(info, can_push=max(levels) >= DEVELOPER)
        # Access inherited from a parent group shows in neither field: ask the member list.
        _, user_id = await self._user()
        response = await self.api.request(
            "GET", f"/projects/{data['id']}/members/all/{user_id}", ok=(200, 404)
        )
        level = (response.data or {}).get("access_level", 0) if response.status == 200 else 0
        return _replace(info, can_push=level >= DEVELOPER)

    async def language(self, repo: RepoInfo) -> str | None:
        """The project's main language (GitLab lists languages apart from the project)."""
        data = (
            await self.api.request("GET", f"/projects/{_pid(repo.id or repo.path)}/languages")
        ).data
        if not isinstance(data, dict) or not data:
            return None
        return str(max(data.items(), key=lambda item: float(item[1]))[0])

    async def find_pr(
        self, path: str, head_branch: str, head_owner: str | None = None
    ) -> PullRequest | None:
        source_id: int | None = None
        if head_owner:
            try:
                source_id = (await self._project(_fork_path(path, head_owner)))["id"]
            except ForgeNotFound:
                return None
        params = {"state": "opened", "source_branch": head_branch}
        async for mr in self.api.paginate(f"/projects/{_pid(path)}/merge_requests", params):
            wanted = source_id if source_id is not None else mr.get("project_id")
            if mr.get("source_branch") == head_branch and mr.get("source_project_id") == wanted:
                return pull_request(mr)
        return None

    async def create_pr(self, path: str, new: NewPR) -> PullRequest:
        payload: dict[str, Any] = {
            "source_branch": new.head_branch,
            "target_branch": new.base_branch,
            "title": DRAFT + new.title if new.draft else new.title,
            "description": new.body,
        }
        if new.labels:
            payload["labels"] = ",".join(new.labels)
        if new.assignees:
            payload["assignee_ids"] = await self._user_ids(new.assignees, "assignees")
        if new.reviewers:
            payload["reviewer_ids"] = await self._user_ids(new.reviewers, "reviewers")
        if new.team_reviewers:
            log.warning(
                "%s: GitLab has no team reviewers; ignoring %s", path, ", ".join(new.team_reviewers)
            )
        source: str | int = path
        if new.head_owner or new.head_repo:
            fork = new.head_repo
            source = fork.id or fork.path if fork else _fork_path(path, new.head_owner or "")
            payload["target_project_id"] = (await self._project(path))["id"]
        response = await self.api.request(
            "POST", f"/projects/{_pid(source)}/merge_requests", json=payload, pr=True
        )
        return pull_request(response.data)

    async def _user_ids(self, usernames: Sequence[str], what: str) -> list[int]:
        ids = []
        for name in usernames:
            found = (await self.api.request("GET", "/users", params={"username": name})).data
            if not found:
                raise ForgeError(
                    f"{self.api.where} has no user named {name!r}; check publish.{what}"
                )
            ids.append(int(found[0]["id"]))
        return ids

    async def update_pr(self, path: str, number: int, title: str, body: str) -> PullRequest:
        if (await self.pr(path, number)).draft and not title.startswith(DRAFT):
            title = DRAFT + title  # a title without the prefix would mark it ready
        payload = {"title": title, "description": body}
        response = await self.api.request("PUT", _mr(path, number), json=payload)
        return pull_request(response.data)

    async def pr(self, path: str, number: int) -> PullRequest:
        return pull_request((await self.api.request("GET", _mr(path, number))).data)

    async def pr_status(self, path: str, number: int) -> PRStatus:
        mr = (await self.api.request("GET", _mr(path, number))).data
        pipeline = mr.get("head_pipeline")
        if not pipeline:
            pipelines = (await self.api.request("GET", _mr(path, number) + "/pipelines")).data
            pipeline = pipelines[0] if pipelines else None
        detailed = mr.get("detailed_merge_status")
        if detailed == "requested_changes":
            review = Review.CHANGES_REQUESTED
        else:
            approvals = (await self.api.request("GET", _mr(path, number) + "/approvals")).data
            approved = approvals.get("approved", True) and approvals.get("approved_by")
            review = Review.APPROVED if approved else Review.NONE
        return PRStatus(
            pr=pull_request(mr),
            checks=pipeline_checks(pipeline.get("status") if pipeline else None),
            review=review,
            mergeable=_mergeable(detailed, mr.get("merge_status")),
        )

    async def merge_pr(self, path: str, number: int, method: MergeMethod) -> MergeResult:
        order = merge_order(method, repo_info(await self._project(path)).merge_methods)
        message = f"{path} allows no merge method"
        for candidate in order:
            response = await self.api.request(
                "PUT",
                _mr(path, number) + "/merge",
                json={"squash": candidate is MergeMethod.SQUASH},
                ok=(200, 400, 405, 406, 409, 422),
            )
            data = response.data if isinstance(response.data, dict) else {}
            if response.status == 200 and data.get("state", "merged") == "merged":
                sha = (
                    data.get("merge_commit_sha") or data.get("squash_commit_sha") or data.get("sha")
                )
                return MergeResult(True, candidate, str(sha or "merged"))
            message = str(
                data.get("message") or data.get("error") or f"not merged ({response.status})"
            )
            if "squash" not in message.lower():
                return MergeResult(False, candidate, message)
        return MergeResult(False, None, message)

    async def close_pr(self, path: str, number: int, comment: str | None = None) -> PullRequest:
        if comment:
            await self.api.request("POST", _mr(path, number) + "/notes", json={"body": comment})
        response = await self.api.request("PUT", _mr(path, number), json={"state_event": "close"})
        return pull_request(response.data)

    async def delete_branch(self, path: str, branch: str) -> bool:
        response = await self.api.request(
            "DELETE", f"/projects/{_pid(path)}/repository/branches/{seg(branch)}", ok=(204, 404)
        )
        return response.status == 204

    async def ensure_fork(self, path: str) -> RepoInfo:
        me = await self.whoami()
        try:
            return self.own_fork(await self.repo(_fork_path(path, me.login)), path)
        except ForgeNotFound:
            pass
        created = (await self.api.request("POST", f"/projects/{_pid(path)}/fork", json={})).data
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fork_wait_s
        while True:
            data = await self._project(created["id"])
            if data.get("import_status") in (None, "none", "finished"):
                return await self.repo(data["path_with_namespace"])
            if data.get("import_status") == "failed" or loop.time() > deadline:
                raise ForgeError(
                    f"{self.api.where}: the fork {data['path_with_namespace']} of {path} is "
                    f"{data.get('import_status')} after {self.fork_wait_s:g}s; expected "
                    "finished. Check it in GitLab, then try again"
                )
            await asyncio.sleep(1.0)

    async def list_repos(self, where: Discovery) -> AsyncIterator[RepoInfo]:
        group = where.group or where.org
        if group:
            params = {"include_subgroups": where.include_subgroups}
            pages = self.api.paginate(f"/groups/{seg(group)}/projects", params)
        elif where.user:
            pages = self.api.paginate(f"/users/{seg(where.user)}/projects")
        elif where.search:
            pages = self.api.paginate("/projects", {"search": where.search})
        else:
            raise ValueError("Discovery needs one of group, org, user or search")
        async for item in pages:
            yield repo_info(item)


def _pid(path: str | int) -> str:
    return str(path) if isinstance(path, int) else seg(path)


def _mr(path: str, number: int) -> str:
    return f"/projects/{_pid(path)}/merge_requests/{number}"


def _fork_path(path: str, owner: str) -> str:
    return f"{owner}/{path.rsplit('/', 1)[-1]}"


def _replace(info: RepoInfo, **changes: Any) -> RepoInfo:
    import dataclasses

    return dataclasses.replace(info, **changes)


def merge_methods(project: dict[str, Any]) -> tuple[MergeMethod, ...]:
    """What `merge_method` (merge | rebase_merge | ff) and `squash_option` allow."""
    plain = MergeMethod.REBASE if project.get("merge_method") == "ff" else MergeMethod.MERGE
    squash = project.get("squash_option")
    if squash == "never":
        return (plain,)
    if squash == "always":
        return (MergeMethod.SQUASH,)
    return (plain, MergeMethod.SQUASH)


def repo_info(data: dict[str, Any]) -> RepoInfo:
    return RepoInfo(
        path=data["path_with_namespace"],
        clone_url=data["http_url_to_repo"],
        ssh_url=data.get("ssh_url_to_repo"),
        default_branch=data.get("default_branch") or "main",
        id=data.get("id"),
        archived=bool(data.get("archived")),
        fork=bool(data.get("forked_from_project")),
        visibility=data.get("visibility") or "private",
        topics=tuple(data.get("topics") or data.get("tag_list") or ()),
        merge_methods=merge_methods(data),
        parent=(data.get("forked_from_project") or {}).get("path_with_namespace"),
    )


def pull_request(data: dict[str, Any]) -> PullRequest:
    title = data.get("title") or ""
    draft = data.get("draft", data.get("work_in_progress"))
    source, target = data.get("source_project_id"), data.get("target_project_id")
    return PullRequest(
        number=data["iid"],
        url=data["web_url"],
        state=_STATES.get(data.get("state", ""), PRState.CLOSED),
        head_branch=data["source_branch"],
        base_branch=data["target_branch"],
        head_sha=data.get("sha"),
        draft=bool(draft) if draft is not None else title.startswith(DRAFT),
        title=title,
        head_fork=str(source) if source and target and source != target else None,
    )


def pipeline_checks(status: str | None) -> Checks:
    if status == "success":
        return Checks.SUCCESS
    if status in _FAILED:
        return Checks.FAILURE
    if status in _PENDING:
        return Checks.PENDING
    return Checks.NONE  # no pipeline, or skipped


def _mergeable(detailed: str | None, merge_status: str | None) -> bool | None:
    if detailed == "mergeable" or merge_status == "can_be_merged":
        return True
    if (detailed is None and merge_status is None) or detailed in _UNCHECKED:
        return None
    if detailed is None and merge_status in _UNCHECKED:
        return None
    return False
