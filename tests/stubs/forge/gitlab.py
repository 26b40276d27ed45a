"""A GitLab stand-in: REST v4 under `/api/v4`.

Projects are addressed by numeric id or URL-encoded full path (`group%2Fsub%2Fname`);
namespaces nest. Projects, their languages (`add_repo(language=...)`, as 100%), merge
requests, approvals, MR pipelines, notes, merging (honouring the project's `merge_method`
and `squash_option`), branch deletion, forks and group/user project listings answer in
GitLab's shapes, checked against `schemas/gitlab.json`.
Pagination is `page` / `per_page` with `x-page`, `x-per-page`, `x-total`, `x-total-pages`,
`x-next-page`, `x-prev-page` and `Link`.

How `add_repo(merge_methods=...)` maps onto GitLab's settings: "merge" present →
`merge_method: merge`, else "rebase" present → `ff`; squash → `squash_option: default_off`,
no squash → `never`, only squash → `always`.
"""

from __future__ import annotations

import time
from email.message import Message
from typing import Any, ClassVar

from tests.stubs.forge.base import ForgeStandIn
from tests.stubs.forge.git_http import token_from
from tests.stubs.forge.gitlab_shapes import MR_STATES, GitLabShapes
from tests.stubs.forge.schema import ResponseSchemas, own_schemas
from tests.stubs.forge.store import PullRecord, RepoRecord, now
from tests.stubs.forge.wire import ApiError, Page, Reply, Request, as_list


def error(status: int, message: Any) -> ApiError:
    return ApiError(status, {"message": message})


class GitLabStandIn(ForgeStandIn, GitLabShapes):
    kind = "gitlab"
    api_prefix = "/api/v4"
    P = "/projects/{id}"
    MR = P + "/merge_requests/{merge_request_iid}"
    ROUTES: ClassVar[list[tuple[str, str, str]]] = [
        ("GET", "/user", "get_user"),
        ("GET", "/users", "find_users"),
        ("GET", P, "get_project"),
        ("GET", P + "/languages", "languages"),
        ("GET", P + "/merge_requests", "list_mrs"),
        ("POST", P + "/merge_requests", "create_mr"),
        ("GET", MR, "get_mr"),
        ("PUT", MR, "update_mr"),
        ("PUT", MR + "/merge", "merge_mr"),
        ("GET", MR + "/approvals", "approvals"),
        ("GET", MR + "/pipelines", "mr_pipelines"),
        ("POST", MR + "/notes", "add_note"),
        ("DELETE", P + "/repository/branches/{branch}", "delete_branch"),
        ("POST", P + "/fork", "fork"),
        ("GET", "/groups/{id}/projects", "group_projects"),
        ("GET", "/users/{user_id}/projects", "user_projects"),
    ]

    # ---- ForgeStandIn hooks ----------------------------------------------------------------
    def load_schemas(self) -> ResponseSchemas:
        return own_schemas("gitlab")

    def authorized(self, headers: Message, query: dict[str, str]) -> bool:
        given = headers.get("PRIVATE-TOKEN") or query.get("private_token") or token_from(headers)
        return given == self.token

    def auth_headers(self, token: str | None = None) -> dict[str, str]:
        return {"PRIVATE-TOKEN": token or self.token}

    def unauthorized(self) -> Reply:
        return Reply(401, {"message": "401 Unauthorized"})

    def not_found(self) -> Reply:
        return Reply(404, {"message": "404 Not found"})

    def render_pull(self, pr: PullRecord) -> dict[str, Any]:
        return self.mr_json(pr, full=True)

    def rate_limit(
        self, path_regex: str, retry_after: int = 1, times: int | None = 1, after: int = 0
    ) -> None:
        """GitLab's rate limit: 429, `retry-after`, `ratelimit-*` headers, "Retry later"."""
        headers = {
            "retry-after": str(retry_after),
            "ratelimit-name": "throttle_authenticated_api",
            "ratelimit-limit": "2000",
            "ratelimit-observed": "2001",
            "ratelimit-remaining": "0",
            "ratelimit-reset": str(int(time.time()) + retry_after),
            "ratelimit-resettime": time.strftime(
                "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + retry_after)
            ),
        }
        self.add_fault("*", path_regex, 429, headers, "Retry later\n", times, after)

    def page(self, req: Request, items: list[Any], render: Any) -> Reply:
        reply, page = self.page_reply(req, items, render, default=20, maximum=100)
        reply.headers.update(gitlab_page_headers(page))
        return reply

    # ---- lookups -----------------------------------------------------------------------------
    def project(self, ident: str) -> RepoRecord:
        repo = self.store.by_id(int(ident)) if ident.isdigit() else self.store.get(ident)
        if repo is None:
            raise error(404, "404 Project Not Found")
        return repo

    def _mr(self, req: Request) -> PullRecord:
        repo = self.project(req.params["id"])
        try:
            pr = self.store.pull(repo.path, int(req.params["merge_request_iid"]))
        except ValueError:
            pr = None
        if pr is None:
            raise error(404, "404 Not found")
        return pr

    def _logins(self, ids: Any) -> list[str]:
        logins = (self.store.key_for("user", int(i)) for i in as_list(ids) if str(i).isdigit())
        return [login for login in logins if login]

    # ---- handlers ----------------------------------------------------------------------------
    def get_user(self, req: Request) -> Reply:
        data = {
            **self.user_json(self.user), "created_at": "2020-01-01T00:00:00.000Z", "bio": "",
            "location": "", "public_email": None, "job_title": "", "organization": "",
            "bot": False, "email": f"{self.user}@example.com", "is_admin": False,
            "can_create_group": True, "can_create_project": True, "two_factor_enabled": True,
            "external": False, "private_profile": False, "projects_limit": 100000,
            "last_activity_on": now()[:10], "identities": [],
        }  # fmt: skip
        return Reply(200, data)

    def find_users(self, req: Request) -> Reply:
        name = req.query.get("username")
        known = (
            sorted(self.store.users) if name is None else [u for u in self.store.users if u == name]
        )
        return self.page(req, known, self.user_json)

    def get_project(self, req: Request) -> Reply:
        return Reply(200, self.project_json(self.project(req.params["id"])))

    def languages(self, req: Request) -> Reply:
        """Percentages by language, as GitLab's repository analysis reports them."""
        repo = self.project(req.params["id"])
        return Reply(200, {repo.language: 100.0} if repo.language else {})

    def list_mrs(self, req: Request) -> Reply:
        repo = self.project(req.params["id"])
        state = req.query.get("state", "all")
        mrs = [
            pr for pr in reversed(self.store.pulls.get(repo.path, []))
            if state in ("all", MR_STATES[pr.state])
            and req.query.get("source_branch") in (None, pr.head_branch)
            and req.query.get("target_branch") in (None, pr.base_branch)
        ]  # fmt: skip
        return self.page(req, mrs, self.mr_json)

    def create_mr(self, req: Request) -> Reply:
        source = self.project(req.params["id"])
        target_id = req.arg("target_project_id")
        target = self.project(str(target_id)) if target_id else source
        head, base, title = req.arg("source_branch"), req.arg("target_branch"), req.arg("title")
        for name, value in (("source_branch", head), ("target_branch", base), ("title", title)):
            if not value:
                raise ApiError(400, {"error": f"{name} is missing"})
        if source.path == target.path and head == base:
            raise error(422, ["You can't use same project/branch for source and target"])
        if self.store.branch_sha(source.path, head) is None:
            raise error(422, [f'Source branch "{head}" does not exist'])
        if self.store.branch_sha(target.path, base) is None:
            raise error(422, [f'Target branch "{base}" does not exist'])
        if dup := self.store.open_pull(target.path, source.path, head, base):
            raise error(
                409,
                [
                    "Another open merge request already exists for this source branch: "
                    f"!{dup.number}"
                ],
            )
        draft = bool(req.arg("draft")) or str(title).lower().startswith(("draft:", "[draft]"))
        pr = self.store.create_pull(target.path, source.path, head, base, title,
                                    req.arg("description"), self.user, draft=draft)  # fmt: skip
        self._apply(pr, req)
        return Reply(201, self.mr_json(pr, full=True))

    def _apply(self, pr: PullRecord, req: Request) -> None:
        if req.arg("labels") is not None:
            pr.labels = as_list(req.arg("labels"))
        pr.labels += [x for x in as_list(req.arg("add_labels")) if x not in pr.labels]
        pr.labels = [x for x in pr.labels if x not in as_list(req.arg("remove_labels"))]
        for key, attr in (("assignee_ids", "assignees"), ("reviewer_ids", "reviewers")):
            if req.arg(key) is not None:
                setattr(pr, attr, self._logins(req.arg(key)))
        if req.arg("assignee_id") is not None:
            pr.assignees = self._logins([req.arg("assignee_id")])
        if req.arg("squash") is not None:
            pr.squash = str(req.arg("squash")).lower() in ("true", "1")
        if req.arg("remove_source_branch") is not None:
            pr.remove_source_branch = str(req.arg("remove_source_branch")).lower() in ("true", "1")
        pr.touch()

    def get_mr(self, req: Request) -> Reply:
        return Reply(200, self.mr_json(self._mr(req), full=True))

    def update_mr(self, req: Request) -> Reply:
        pr = self._mr(req)
        if req.arg("title") is not None:
            pr.title = req.arg("title")
            pr.draft = pr.title.lower().startswith(("draft:", "[draft]"))
        if req.arg("description") is not None:
            pr.body = req.arg("description")
        if req.arg("target_branch"):
            pr.base_branch = req.arg("target_branch")
        event = req.arg("state_event")
        if event == "close" and pr.state == "open":
            pr.state, pr.closed_at = "closed", now()
        elif event == "reopen" and pr.state == "closed":
            pr.state, pr.closed_at = "open", None
        self._apply(pr, req)
        return Reply(200, self.mr_json(pr, full=True))

    def merge_mr(self, req: Request) -> Reply:
        pr = self._mr(req)
        repo = self.store.repos[pr.repo]
        project = self.project_json(repo)
        if not repo.can_push:
            raise error(401, "401 Unauthorized")
        if pr.state != "open" or pr.draft:
            raise error(405, "405 Method Not Allowed")
        squash = (
            pr.squash
            if req.arg("squash") is None
            else str(req.arg("squash")).lower() in ("true", "1")
        )
        if squash and project["squash_option"] == "never":
            raise error(405, "405 Method Not Allowed")
        squash = squash or project["squash_option"] == "always"
        head = self.store.head_sha(pr)
        if req.arg("sha") and req.arg("sha") != head:
            raise error(409, "SHA does not match HEAD of source branch: " + head)
        base = self.store.branch_sha(pr.repo, pr.base_branch) or ""
        if project["merge_method"] == "ff" and not self.store.is_ancestor(pr.repo, base, head):
            raise error(406, "Branch cannot be merged")
        pr.squash = squash
        method = "squash" if squash else ("ff" if project["merge_method"] == "ff" else "merge")
        message = req.arg("squash_commit_message" if squash else "merge_commit_message") or (
            f"Merge branch '{pr.head_branch}' into '{pr.base_branch}'\n\n{pr.title}\n\n"
            f"See merge request {pr.repo}!{pr.number}"
        )  # fmt: skip
        if self.store.merge(pr, method, message, self.user) is None:
            raise error(406, "Branch cannot be merged")
        if (
            str(req.arg("should_remove_source_branch", "")).lower() in ("true", "1")
            or pr.remove_source_branch
        ):
            self.store.delete_branch(pr.head_repo, pr.head_branch)
        return Reply(200, self.mr_json(pr, full=True))

    def approvals(self, req: Request) -> Reply:
        pr = self._mr(req)
        latest: dict[str, str] = {}
        for review in self.store.reviews.get((pr.repo, pr.number), []):
            latest[review.user] = review.state
        approvers = [login for login, state in latest.items() if state == "APPROVED"]
        data = {
            "id": pr.id, "iid": pr.number, "project_id": self.store.repos[pr.repo].id,
            "title": pr.title, "description": pr.body or "", "state": MR_STATES[pr.state],
            "created_at": pr.created_at, "updated_at": pr.updated_at,
            "merge_status": "can_be_merged", "approved": bool(approvers),
            "approvals_required": 0, "approvals_left": 0, "require_password_to_approve": False,
            "approved_by": [{"user": self.user_json(login)} for login in approvers],
            "suggested_approvers": [], "approvers": [], "approver_groups": [],
            "user_has_approved": self.user in approvers, "user_can_approve": self.user != pr.author,
            "approval_rules_left": [], "has_approval_rules": False,
            "merge_request_approvers_available": False, "multiple_approval_rules_available": False,
            "invalid_approvers_rules": [],
        }  # fmt: skip
        return Reply(200, data)

    def mr_pipelines(self, req: Request) -> Reply:
        pipeline = self.pipeline_json(self._mr(req))
        return self.page(req, [pipeline] if pipeline else [], lambda p: p)

    def add_note(self, req: Request) -> Reply:
        pr = self._mr(req)
        if not req.arg("body"):
            raise ApiError(400, {"error": "body is missing"})
        note = {
            "id": self.store.next_id(),
            "user": self.user,
            "body": req.arg("body"),
            "created_at": now(),
        }
        pr.comments.append(note)
        data = {
            "id": note["id"], "type": None, "body": note["body"], "attachment": None,
            "author": self.user_json(self.user), "created_at": note["created_at"],
            "updated_at": note["created_at"], "system": False, "noteable_id": pr.id,
            "noteable_type": "MergeRequest", "noteable_iid": pr.number,
            "project_id": self.store.repos[pr.repo].id, "resolvable": False,
            "confidential": False, "internal": False, "commands_changes": {},
        }  # fmt: skip
        return Reply(201, data)

    def delete_branch(self, req: Request) -> Reply:
        repo = self.project(req.params["id"])
        if req.params["branch"] == repo.default_branch:
            raise error(405, "405 Method Not Allowed")
        if not self.store.delete_branch(repo.path, req.params["branch"]):
            raise error(404, "404 Branch Not Found")
        return Reply(204)

    def fork(self, req: Request) -> Reply:
        repo = self.project(req.params["id"])
        namespace = req.arg("namespace_path") or req.arg("namespace") or self.user
        name = req.arg("path") or repo.name
        if f"{namespace}/{name}" in self.store.repos:
            raise error(
                409, {"name": ["has already been taken"], "path": ["has already been taken"]}
            )
        return Reply(201, self.project_json(self.store.fork(repo.path, str(namespace), name)))

    def _projects(self, req: Request, owner: str, nested: bool) -> Reply:
        archived = req.query.get("archived")
        repos = sorted(
            (r for r in self.store.repos.values()
             if (r.owner == owner or (nested and r.path.startswith(owner + "/")))
             and (archived is None or r.archived == (archived == "true"))),
            key=lambda r: r.path,
        )  # fmt: skip
        return self.page(req, repos, self.project_json)

    def group_projects(self, req: Request) -> Reply:
        ident = req.params["id"]
        group = self.store.key_for("group", int(ident)) if ident.isdigit() else ident
        if not group or not any(r.path.startswith(group + "/") for r in self.store.repos.values()):
            raise error(404, "404 Group Not Found")
        nested = req.query.get("include_subgroups") == "true"
        return self._projects(req, group, nested)

    def user_projects(self, req: Request) -> Reply:
        ident = req.params["user_id"]
        login = self.store.key_for("user", int(ident)) if ident.isdigit() else ident
        if login not in self.store.users:
            raise error(404, "404 User Not Found")
        return self._projects(req, login, nested=False)


def gitlab_page_headers(page: Page) -> dict[str, str]:
    return {
        "x-page": str(page.page),
        "x-per-page": str(page.per_page),
        "x-total": str(page.total),
        "x-total-pages": str(page.last),
        "x-next-page": str(page.page + 1) if page.page < page.last else "",
        "x-prev-page": str(page.page - 1) if page.page > 1 else "",
    }
