"""A Gitea (and Forgejo) stand-in: REST v1 under `/api/v1`.

Repositories, pull requests (by index, and by base/head branch), labels, review requests,
reviews, combined commit status, merging (`{"Do": merge|rebase|rebase-merge|squash|
fast-forward-only}`, honouring the repository's allow_* settings), comments, branch
deletion, forks, org/user listings and `/repos/search`, in Gitea's shapes (checked against
`schemas/gitea.json`). Pagination is `page` / `limit` with `Link` and `x-total-count`.

Like Gitea, the combined status of a commit with no statuses is an empty object (state ""),
editing a pull request answers 201, and a pull request is a draft while its title starts
with `WIP:` or `[WIP]`.
"""

from __future__ import annotations

import re
import time
from email.message import Message
from typing import Any, ClassVar

from tests.stubs.forge.base import ForgeStandIn
from tests.stubs.forge.git_http import token_from
from tests.stubs.forge.gitea_shapes import GiteaShapes
from tests.stubs.forge.schema import ResponseSchemas, own_schemas
from tests.stubs.forge.store import PullRecord, RepoRecord, now
from tests.stubs.forge.wire import ApiError, Reply, Request, as_list

WIP_PREFIXES = ("WIP:", "[WIP]")  # Gitea's default [repository.pull-request] setting


def work_in_progress(title: Any) -> bool:
    """Gitea's drafts: a title with a work-in-progress prefix (case-insensitive)."""
    return str(title or "").upper().startswith(WIP_PREFIXES)


STYLES = {  # Do -> (the allow_* setting it needs, how the store merges)
    "merge": ("merge", "merge"), "rebase": ("rebase", "rebase"),
    "rebase-merge": ("rebase", "merge"), "squash": ("squash", "squash"),
    "fast-forward-only": ("rebase", "ff"),
}  # fmt: skip


class GiteaStandIn(ForgeStandIn, GiteaShapes):
    kind = "gitea"
    api_prefix = "/api/v1"
    R = "/repos/{owner}/{repo}"
    ROUTES: ClassVar[list[tuple[str, str, str]]] = [
        ("GET", "/user", "get_user"),
        ("GET", "/repos/search", "search_repos"),
        ("GET", R, "get_repo"),
        ("GET", R + "/pulls", "list_pulls"),
        ("POST", R + "/pulls", "create_pull"),
        ("GET", R + "/pulls/{index}", "get_pull"),
        ("PATCH", R + "/pulls/{index}", "update_pull"),
        ("GET", R + "/labels", "list_labels"),
        ("POST", R + "/labels", "create_label"),
        ("POST", R + "/issues/{index}/labels", "add_labels"),
        ("POST", R + "/pulls/{index}/requested_reviewers", "request_reviewers"),
        ("GET", R + "/pulls/{index}/reviews", "list_reviews"),
        ("GET", R + "/commits/{ref}/status", "combined_status"),
        ("POST", R + "/pulls/{index}/merge", "merge_pull"),
        ("POST", R + "/issues/{index}/comments", "add_comment"),
        ("DELETE", R + "/branches/{branch}", "delete_branch"),
        ("POST", R + "/forks", "create_fork"),
        ("GET", "/orgs/{org}/repos", "org_repos"),
        ("GET", "/users/{username}/repos", "user_repos"),
        ("GET", R + "/pulls/{base}/{head}", "pull_by_branches"),
    ]

    # ---- ForgeStandIn hooks ----------------------------------------------------------------
    def load_schemas(self) -> ResponseSchemas:
        return own_schemas("gitea")

    def authorized(self, headers: Message, query: dict[str, str]) -> bool:
        given = token_from(headers) or query.get("token") or query.get("access_token")
        return given == self.token

    def auth_headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"token {token or self.token}"}

    def unauthorized(self) -> Reply:
        return Reply(401, {"message": "invalid username, password or token", "url": self.swagger})

    def not_found(self) -> Reply:
        return Reply(
            404, {"errors": [], "message": "The target couldn't be found.", "url": self.swagger}
        )

    @property
    def swagger(self) -> str:
        return f"{self.base_url}/api/swagger"

    def error(self, status: int, message: str) -> ApiError:
        return ApiError(status, {"message": message, "url": self.swagger})

    def render_pull(self, pr: PullRecord) -> dict[str, Any]:
        return self.pull_json(pr)

    def rate_limit(
        self, path_regex: str, retry_after: int = 1, times: int | None = 1, after: int = 0
    ) -> None:
        """429 with `retry-after`, as a Gitea behind a rate-limiting proxy answers."""
        reset = str(int(time.time()) + retry_after)
        headers = {
            "retry-after": str(retry_after),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": reset,
        }
        body = {"message": "rate limit exceeded, retry later", "url": self.swagger}
        self.add_fault("*", path_regex, 429, headers, body, times, after)

    def page(self, req: Request, items: list[Any], render: Any, wrap: Any = None) -> Reply:
        reply, page = self.page_reply(req, items, render, "limit", 30, 50, wrap=wrap)
        reply.headers["x-total-count"] = str(page.total)
        return reply

    # ---- handlers ----------------------------------------------------------------------------
    def _repo(self, req: Request) -> RepoRecord:
        return self.repo_or_404(f"{req.params['owner']}/{req.params['repo']}")

    def _pull(self, req: Request) -> PullRecord:
        return self.pull_or_404(self._repo(req).path, req.params["index"])

    def get_user(self, req: Request) -> Reply:
        return Reply(200, self.user_json(self.user))

    def get_repo(self, req: Request) -> Reply:
        return Reply(200, self.repo_json(self._repo(req)))

    def list_pulls(self, req: Request) -> Reply:
        repo, state = self._repo(req), req.query.get("state", "open")
        pulls = [
            pr
            for pr in reversed(self.store.pulls.get(repo.path, []))
            if state == "all" or ("open" if pr.state == "open" else "closed") == state
        ]
        return self.page(req, pulls, self.pull_json)

    def create_pull(self, req: Request) -> Reply:
        repo = self._repo(req)
        head, base = str(req.arg("head") or ""), str(req.arg("base") or "")
        if not req.arg("title"):
            raise ApiError(
                422,
                [
                    {
                        "fieldNames": ["Title"],
                        "classification": "RequiredError",
                        "message": "Required",
                    }
                ],
            )
        owner, _, branch = head.rpartition(":")
        head_repo = (
            repo
            if owner in ("", repo.owner)
            else next((f for f in self.store.forks_of(repo.path) if f.owner == owner), None)
        )
        if head_repo is None or self.store.branch_sha(head_repo.path, branch) is None:
            raise self.error(404, f"The head branch {head} does not exist")
        if self.store.branch_sha(repo.path, base) is None:
            raise self.error(404, f"The base branch {base} does not exist")
        if dup := self.store.open_pull(repo.path, head_repo.path, branch, base):
            raise self.error(409, f"pull request already exists for these targets [id: {dup.id}, "
                             f"head_branch: {branch}, base_branch: {base}]")  # fmt: skip
        probe = self.store.fetch_head(repo.path, head_repo.path, branch, "refs/standin/probe")
        base_sha = self.store.branch_sha(repo.path, base) or ""
        if probe is None or self.store.is_ancestor(repo.path, probe, base_sha):
            raise self.error(
                422, "Invalid PullRequest: There are no changes between the head and the base"
            )
        pr = self.store.create_pull(repo.path, head_repo.path, branch, base, req.arg("title"),
                                    req.arg("body"), self.user,
                                    draft=work_in_progress(req.arg("title")))  # fmt: skip
        self._edit(pr, req)
        return Reply(201, self.pull_json(pr))

    def _label_names(self, repo: str, values: Any) -> list[str]:
        names = []
        for value in as_list(values):
            if isinstance(value, int) or str(value).isdigit():
                name = next(
                    (n for n, i in self.store.labels.get(repo, {}).items() if i == int(value)), None
                )
                if name is None:
                    raise self.error(422, f"label does not exist [id: {value}]")
                names.append(name)
            else:
                names.append(str(value))
        return names

    def _edit(self, pr: PullRecord, req: Request) -> None:
        if req.arg("labels") is not None:
            pr.labels = self._label_names(pr.repo, req.arg("labels"))
        if req.arg("assignees") is not None:
            pr.assignees = [str(a) for a in as_list(req.arg("assignees"))]
            self.store.users.update(pr.assignees)
        if req.arg("assignee"):
            pr.assignees = [str(req.arg("assignee"))]
        pr.touch()

    def get_pull(self, req: Request) -> Reply:
        return Reply(200, self.pull_json(self._pull(req)))

    def pull_by_branches(self, req: Request) -> Reply:
        repo = self._repo(req)
        wanted = (req.params["base"], req.params["head"])
        pulls = reversed(self.store.pulls.get(repo.path, []))
        pr = next((p for p in pulls if (p.base_branch, p.head_branch) == wanted), None)
        if pr is None:
            raise ApiError(404, self.not_found().body)
        return Reply(200, self.pull_json(pr))

    def update_pull(self, req: Request) -> Reply:
        pr = self._pull(req)
        for key in ("title", "body"):
            if req.arg(key) is not None:
                setattr(pr, key, req.arg(key))
        pr.draft = work_in_progress(pr.title)
        if req.arg("base"):
            pr.base_branch = req.arg("base")
        if req.arg("state") == "closed" and pr.state == "open":
            pr.state, pr.closed_at = "closed", now()
        elif req.arg("state") == "open" and pr.state == "closed":
            pr.state, pr.closed_at = "open", None
        self._edit(pr, req)
        return Reply(201, self.pull_json(pr))

    def list_labels(self, req: Request) -> Reply:
        repo = self._repo(req)
        return self.page(
            req,
            sorted(self.store.labels.get(repo.path, {})),
            lambda n: self.label_json(repo.path, n),
        )

    def create_label(self, req: Request) -> Reply:
        repo = self._repo(req)
        if not req.arg("name") or req.arg("name") in self.store.labels.get(repo.path, {}):
            raise self.error(422, "label name is empty or already exists")
        if not re.fullmatch(r"#?[0-9a-fA-F]{6}", str(req.arg("color") or "")):
            raise ApiError(
                422, [{"fieldNames": ["Color"], "classification": "RequiredError",
                       "message": "Required"}],
            )  # fmt: skip
        return Reply(201, self.label_json(repo.path, str(req.arg("name"))))

    def add_labels(self, req: Request) -> Reply:
        pr = self._pull(req)
        for name in self._label_names(pr.repo, req.arg("labels")):
            if name not in pr.labels:
                pr.labels.append(name)
        pr.touch()
        return Reply(200, [self.label_json(pr.repo, name) for name in pr.labels])

    def request_reviewers(self, req: Request) -> Reply:
        pr = self._pull(req)
        added = []
        for login in map(str, as_list(req.arg("reviewers"))):
            if login == pr.author:
                raise self.error(422, "review request for the pull request author is not allowed")
            if login not in pr.reviewers:
                pr.reviewers.append(login)
                added.append(self.store.add_review(pr.repo, pr.number, login, "REQUESTED"))
        return Reply(201, [self.review_json(pr, review) for review in added])

    def list_reviews(self, req: Request) -> Reply:
        pr = self._pull(req)
        reviews = self.store.reviews.get((pr.repo, pr.number), [])
        submitted = {r.user for r in reviews if r.state != "REQUESTED"}
        shown = [r for r in reviews if r.state != "REQUESTED" or r.user not in submitted]
        return self.page(req, shown, lambda r: self.review_json(pr, r))

    def combined_status(self, req: Request) -> Reply:
        repo = self._repo(req)
        sha = self.store.resolve(repo.path, req.params["ref"])
        state = self.store.checks.get((repo.path, sha or ""))
        if sha is None or state is None:
            empty = {"state": "", "sha": "", "total_count": 0, "statuses": None,
                     "repository": None, "commit_url": "", "url": ""}  # fmt: skip
            return Reply(200, empty)
        url = f"{self.api_url}/repos/{repo.path}"
        status = {
            "id": self.store.id_for("status", f"{repo.path}@{sha}"), "status": state,
            "target_url": "", "description": f"CI {state}", "url": f"{url}/statuses/{sha}",
            "context": "ci/standin", "creator": self.user_json(self.user),
            "created_at": repo.created_at, "updated_at": repo.created_at,
        }  # fmt: skip
        return Reply(200, {"state": state, "sha": sha, "total_count": 1, "statuses": [status],
                           "repository": self.repo_json(repo), "commit_url": f"{url}/commits/{sha}",
                           "url": f"{url}/commits/{sha}/status"})  # fmt: skip

    def merge_pull(self, req: Request) -> Reply:
        pr = self._pull(req)
        repo = self.store.repos[pr.repo]
        do = str(req.arg("Do") or "")
        if do not in STYLES:
            raise ApiError(
                422, [{"fieldNames": ["Do"], "classification": "InError", "message": "In"}]
            )
        if not repo.can_push:
            raise self.error(403, "user does not have permission to merge")
        if pr.state == "merged":
            raise self.error(405, "PR already merged")
        if pr.state != "open":
            raise self.error(405, "PR is closed")
        setting, method = STYLES[do]
        if setting not in repo.merge_methods:
            raise self.error(405, f"{do} is not allowed an allowed merge style for this repository")
        head = self.store.head_sha(pr)
        if req.arg("head_commit_id") and req.arg("head_commit_id") != head:
            raise self.error(409, "head out of date")
        message = req.arg("MergeTitleField") or f"Merge pull request '{pr.title}' (#{pr.number})"
        if req.arg("MergeMessageField"):
            message += "\n\n" + req.arg("MergeMessageField")
        if self.store.merge(pr, method, message, self.user) is None:
            raise self.error(405, "Please try again later")
        if req.arg("delete_branch_after_merge"):
            self.store.delete_branch(pr.head_repo, pr.head_branch)
        return Reply(200)

    def add_comment(self, req: Request) -> Reply:
        pr = self._pull(req)
        if not req.arg("body"):
            raise ApiError(
                422,
                [
                    {
                        "fieldNames": ["Body"],
                        "classification": "RequiredError",
                        "message": "Required",
                    }
                ],
            )
        comment = {
            "id": self.store.next_id(),
            "user": self.user,
            "body": req.arg("body"),
            "created_at": now(),
        }
        pr.comments.append(comment)
        html = f"{self.base_url}/{pr.repo}/pulls/{pr.number}"
        data = {
            "id": comment["id"], "html_url": f"{html}#issuecomment-{comment['id']}",
            "pull_request_url": html, "issue_url": "", "user": self.user_json(self.user),
            "original_author": "", "original_author_id": 0, "body": comment["body"],
            "assets": [], "created_at": comment["created_at"], "updated_at": comment["created_at"],
        }  # fmt: skip
        return Reply(201, data)

    def delete_branch(self, req: Request) -> Reply:
        repo = self._repo(req)
        if req.params["branch"] == repo.default_branch:
            raise self.error(403, "can not delete default branch")
        if not self.store.delete_branch(repo.path, req.params["branch"]):
            raise ApiError(404, self.not_found().body)
        return Reply(204)

    def create_fork(self, req: Request) -> Reply:
        repo = self._repo(req)
        owner = str(req.arg("organization") or self.user)
        if f"{owner}/{req.arg('name') or repo.name}" in self.store.repos:
            raise self.error(409, "repository is already forked by user")
        return Reply(202, self.repo_json(self.store.fork(repo.path, owner, req.arg("name"))))

    def _owned(self, owner: str) -> list[RepoRecord]:
        return sorted(
            (r for r in self.store.repos.values() if r.owner == owner), key=lambda r: r.path
        )

    def org_repos(self, req: Request) -> Reply:
        org = req.params["org"]
        if org in self.store.users or not self._owned(org):
            raise ApiError(404, self.not_found().body)
        return self.page(req, self._owned(org), self.repo_json)

    def user_repos(self, req: Request) -> Reply:
        login = req.params["username"]
        if login not in self.store.users and not self._owned(login):
            raise ApiError(404, self.not_found().body)
        return self.page(req, self._owned(login), self.repo_json)

    def search_repos(self, req: Request) -> Reply:
        q, topic = req.query.get("q", "").lower(), req.query.get("topic") == "true"
        uid, mode, archived = req.query.get("uid"), req.query.get("mode"), req.query.get("archived")
        owner = self.store.key_for("user", int(uid)) if uid and uid.isdigit() else None
        found = [
            r for r in sorted(self.store.repos.values(), key=lambda r: r.path)
            if (not q or (q in (t.lower() for t in r.topics) if topic else q in r.name.lower()))
            and (owner is None or r.owner == owner)
            and (archived is None or r.archived == (archived == "true"))
            and (mode not in ("fork", "source") or r.fork == (mode == "fork"))
        ]  # fmt: skip
        return self.page(
            req, found, self.repo_json, wrap=lambda items, page: {"ok": True, "data": items}
        )
