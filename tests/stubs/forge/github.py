"""A GitHub stand-in: REST v3 under `/api/v3` (as GitHub Enterprise Server serves it).

Answers in the shapes of GitHub's OpenAPI description (checked on every reply, see
`schema.py`): repositories, pull requests, labels, reviewers, assignees, comments,
reviews, combined status and check runs, merges, branch deletion, forks, repository
listings and search. Every reply carries `x-ratelimit-*` headers; pagination is `page` /
`per_page` with a `Link` header. The shapes themselves are built in `github_shapes.py`.
"""

from __future__ import annotations

import time
from email.message import Message
from typing import Any, ClassVar

from tests.stubs.forge.base import ForgeStandIn
from tests.stubs.forge.git_http import token_from
from tests.stubs.forge.github_shapes import GitHubShapes
from tests.stubs.forge.schema import ResponseSchemas, github_schemas
from tests.stubs.forge.store import PullRecord, RepoRecord
from tests.stubs.forge.wire import ApiError, Reply, Request, as_list

DOCS = "https://docs.github.com/enterprise-server@3.19/rest"
METHOD_WORDS = {"merge": "Merge commits", "squash": "Squash merges", "rebase": "Rebase merges"}


def error(status: int, message: str, **extra: Any) -> ApiError:
    return ApiError(status, {"message": message, "documentation_url": DOCS, **extra})


def invalid(resource: str, field: str | None = None, message: str | None = None) -> ApiError:
    detail: dict[str, Any] = {"resource": resource, "code": "custom" if message else "invalid"}
    if field:
        detail["field"] = field
    if message:
        detail["message"] = message
    return error(422, "Validation Failed", errors=[detail])


class GitHubStandIn(ForgeStandIn, GitHubShapes):
    kind = "github"
    api_prefix = "/api/v3"
    RATE_LIMITS: ClassVar[dict[str, int]] = {"core": 5000, "search": 30}
    R = "/repos/{owner}/{repo}"
    ROUTES: ClassVar[list[tuple[str, str, str]]] = [
        ("GET", "/user", "get_user"),
        ("GET", R, "get_repo"),
        ("GET", R + "/pulls", "list_pulls"),
        ("POST", R + "/pulls", "create_pull"),
        ("GET", R + "/pulls/{pull_number}", "get_pull"),
        ("PATCH", R + "/pulls/{pull_number}", "update_pull"),
        ("POST", R + "/issues/{issue_number}/labels", "add_labels"),
        ("POST", R + "/pulls/{pull_number}/requested_reviewers", "request_reviewers"),
        ("POST", R + "/issues/{issue_number}/assignees", "add_assignees"),
        ("POST", R + "/issues/{issue_number}/comments", "add_comment"),
        ("GET", R + "/pulls/{pull_number}/reviews", "list_reviews"),
        ("GET", R + "/commits/{ref}/status", "combined_status"),
        ("GET", R + "/commits/{ref}/check-runs", "check_runs"),
        ("PUT", R + "/pulls/{pull_number}/merge", "merge_pull"),
        ("DELETE", R + "/git/refs/{ref}", "delete_ref"),
        ("POST", R + "/forks", "create_fork"),
        ("GET", "/orgs/{org}/repos", "org_repos"),
        ("GET", "/users/{username}/repos", "user_repos"),
        ("GET", "/search/repositories", "search_repos"),
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._rate: dict[str, list[float]] = {}  # resource -> [used, reset epoch]
        super().__init__(*args, **kwargs)

    # ---- ForgeStandIn hooks ----------------------------------------------------------------
    def load_schemas(self) -> ResponseSchemas:
        return github_schemas()

    def authorized(self, headers: Message, query: dict[str, str]) -> bool:
        return token_from(headers) == self.token

    def auth_headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def unauthorized(self) -> Reply:
        return Reply(
            401, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}
        )

    def not_found(self) -> Reply:
        return Reply(404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"})

    def default_headers(self, path: str) -> dict[str, str]:
        resource = "search" if path.startswith(self.api_prefix + "/search/") else "core"
        limit = self.RATE_LIMITS[resource]
        with self._lock:
            used, reset = self._rate.get(resource, [0, 0.0])
            if reset <= time.time() or used >= limit:  # a fresh window, never a silent 0
                used, reset = 0, time.time() + 3600
            used += 1
            self._rate[resource] = [used, reset]
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(limit - int(used)),
            "x-ratelimit-reset": str(int(reset)),
            "x-ratelimit-used": str(int(used)),
            "x-ratelimit-resource": resource,
            "x-github-api-version-selected": "2022-11-28",
        }

    def render_pull(self, pr: PullRecord) -> dict[str, Any]:
        return self.pull_json(pr, full=True)

    # ---- fault helpers -----------------------------------------------------------------------
    def secondary_limit(
        self, path_regex: str, retry_after: int = 1, times: int | None = 1, after: int = 0,
        method: str = "*",
    ) -> None:  # fmt: skip
        """GitHub's secondary (abuse) rate limit: 403 with `retry-after`."""
        body = {
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes "
            "before you try again. If you reach out to GitHub Support for help, please "
            "include the request ID.",
            "documentation_url": f"{DOCS}/overview/rate-limits-for-the-rest-api"
            "#about-secondary-rate-limits",
            "status": "403",
        }
        headers = {"retry-after": str(retry_after), "x-ratelimit-remaining": "4990"}
        self.add_fault(method, path_regex, 403, headers, body, times, after)

    def primary_limit(
        self, path_regex: str, reset_in: int = 1, status: int = 403, times: int | None = 1,
        after: int = 0, method: str = "*",
    ) -> None:  # fmt: skip
        """GitHub's primary rate limit: 403 (or 429), `x-ratelimit-remaining: 0`, reset epoch."""
        reset = int(time.time()) + reset_in
        user_id = self.store.id_for("user", self.user)
        body = {
            "message": f"API rate limit exceeded for user ID {user_id}.",
            "documentation_url": f"{DOCS}/overview/rate-limits-for-the-rest-api",
            "status": str(status),
        }
        headers = {
            "x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0",
            "x-ratelimit-used": "5000", "x-ratelimit-reset": str(reset),
            "x-ratelimit-resource": "core",
        }  # fmt: skip
        self.add_fault(method, path_regex, status, headers, body, times, after)

    def rate_limit(
        self, path_regex: str, retry_after: int = 1, times: int | None = 1, after: int = 0
    ) -> None:
        self.primary_limit(path_regex, reset_in=retry_after, times=times, after=after)

    # ---- handlers ----------------------------------------------------------------------------
    def _repo(self, req: Request) -> RepoRecord:
        return self.repo_or_404(f"{req.params['owner']}/{req.params['repo']}")

    def _pull(self, req: Request, key: str = "pull_number") -> PullRecord:
        return self.pull_or_404(self._repo(req).path, req.params[key])

    def get_user(self, req: Request) -> Reply:
        return Reply(200, self.private_user_json(self.user))

    def get_repo(self, req: Request) -> Reply:
        return Reply(200, self.repo_json(self._repo(req), full=True))

    def list_pulls(self, req: Request) -> Reply:
        repo = self._repo(req)
        state = req.query.get("state", "open")
        head = req.query.get("head")
        pulls = [
            pr for pr in reversed(self.store.pulls.get(repo.path, []))
            if (state == "all" or ("open" if pr.state == "open" else "closed") == state)
            and (not req.query.get("base") or pr.base_branch == req.query["base"])
            and (not head or head in (self._head_label(pr), pr.head_branch))
        ]  # fmt: skip
        return self.page_reply(req, pulls, lambda pr: self.pull_json(pr, full=False))[0]

    def _head_label(self, pr: PullRecord) -> str:
        return f"{self.store.repos[pr.head_repo].owner}:{pr.head_branch}"

    def create_pull(self, req: Request) -> Reply:
        repo = self._repo(req)
        if not repo.can_push and not req.arg("head", "").count(":"):
            raise error(403, "Resource not accessible by personal access token")
        head, base = str(req.arg("head") or ""), str(req.arg("base") or "")
        if not req.arg("title"):
            raise invalid("PullRequest", "title")
        owner, _, branch = head.rpartition(":")
        head_repo = (
            repo
            if owner in ("", repo.owner)
            else next((f for f in self.store.forks_of(repo.path) if f.owner == owner), None)
        )
        if self.store.branch_sha(repo.path, base) is None:
            raise invalid("PullRequest", "base")
        if head_repo is None or self.store.branch_sha(head_repo.path, branch) is None:
            raise invalid("PullRequest", "head")
        if self.store.open_pull(repo.path, head_repo.path, branch, base):
            raise invalid(
                "PullRequest",
                message=f"A pull request already exists for {head_repo.owner}:{branch}.",
            )
        probe = self.store.fetch_head(repo.path, head_repo.path, branch, "refs/standin/probe")
        base_sha = self.store.branch_sha(repo.path, base)
        if probe is None or base_sha is None or self.store.is_ancestor(repo.path, probe, base_sha):
            raise invalid("PullRequest", message=f"No commits between {base} and {branch}")
        pr = self.store.create_pull(
            repo.path, head_repo.path, branch, base, str(req.arg("title")), req.arg("body"),
            self.user, draft=bool(req.arg("draft", False)),
        )  # fmt: skip
        reply = Reply(201, self.pull_json(pr, full=True))
        reply.headers["Location"] = reply.body["url"]
        return reply

    def get_pull(self, req: Request) -> Reply:
        return Reply(200, self.pull_json(self._pull(req), full=True))

    def update_pull(self, req: Request) -> Reply:
        pr = self._pull(req)
        for key in ("title", "body"):
            if req.arg(key) is not None:
                setattr(pr, key, req.arg(key))
        if req.arg("base"):
            if self.store.branch_sha(pr.repo, req.arg("base")) is None:
                raise invalid("PullRequest", "base")
            pr.base_branch = req.arg("base")
        state = req.arg("state")
        if state == "closed" and pr.state == "open":
            pr.state, pr.closed_at = "closed", pr.updated_at
        elif state == "open" and pr.state == "closed":
            if self.store.branch_sha(pr.head_repo, pr.head_branch) is None:
                raise invalid("PullRequest", "state", "cannot reopen: the head branch is gone")
            pr.state, pr.closed_at = "open", None
        pr.touch()
        return Reply(200, self.pull_json(pr, full=True))

    def add_labels(self, req: Request) -> Reply:
        pr = self._pull(req, "issue_number")
        names = req.body if isinstance(req.body, list) else as_list(req.arg("labels"))
        for name in names:
            name = name["name"] if isinstance(name, dict) else str(name)
            self.store.label_id(pr.repo, name)
            if name not in pr.labels:
                pr.labels.append(name)
        pr.touch()
        return Reply(200, [self.label_json(pr.repo, name) for name in pr.labels])

    def request_reviewers(self, req: Request) -> Reply:
        pr = self._pull(req)
        for login in as_list(req.arg("reviewers")):
            if login == pr.author:
                raise invalid(
                    "PullRequest", message="Review cannot be requested from pull request author."
                )
            self.store.users.add(login)
            if login not in pr.reviewers:
                pr.reviewers.append(login)
        pr.touch()
        return Reply(201, self.pull_json(pr, full=False))

    def add_assignees(self, req: Request) -> Reply:
        pr = self._pull(req, "issue_number")
        for login in as_list(req.arg("assignees")):
            self.store.users.add(login)
            if login not in pr.assignees:
                pr.assignees.append(login)
        pr.touch()
        return Reply(201, self.issue_json(pr))

    def add_comment(self, req: Request) -> Reply:
        pr = self._pull(req, "issue_number")
        if not req.arg("body"):
            raise invalid("IssueComment", "body")
        comment = {"id": self.store.next_id(), "user": self.user, "body": req.arg("body"),
                   "created_at": pr.updated_at}  # fmt: skip
        pr.comments.append(comment)
        return Reply(201, self.comment_json(pr, comment))

    def list_reviews(self, req: Request) -> Reply:
        pr = self._pull(req)
        reviews = self.store.reviews.get((pr.repo, pr.number), [])
        return self.page_reply(req, reviews, lambda r: self.review_json(pr, r))[0]

    def _ref_sha(self, req: Request) -> tuple[RepoRecord, str]:
        repo = self._repo(req)
        sha = self.store.resolve(repo.path, req.params["ref"])
        if sha is None:
            raise error(422, f"No commit found for SHA: {req.params['ref']}")
        return repo, sha

    def combined_status(self, req: Request) -> Reply:
        repo, sha = self._ref_sha(req)
        return Reply(200, self.status_json(repo, sha, self.store.checks.get((repo.path, sha))))

    def check_runs(self, req: Request) -> Reply:
        repo, sha = self._ref_sha(req)
        state = self.store.checks.get((repo.path, sha))
        runs = [self.check_run_json(repo, sha, state)] if state else []
        return Reply(200, {"total_count": len(runs), "check_runs": runs})

    def merge_pull(self, req: Request) -> Reply:
        pr = self._pull(req)
        repo = self.store.repos[pr.repo]
        method = req.arg("merge_method") or "merge"
        if method not in METHOD_WORDS:
            raise invalid("PullRequest", "merge_method")
        if not repo.can_push:
            raise error(403, "Resource not accessible by personal access token")
        if pr.state != "open":
            raise error(405, "Pull Request is not mergeable")
        if method not in repo.merge_methods:
            raise error(405, f"{METHOD_WORDS[method]} are not allowed on this repository.")
        head = self.store.head_sha(pr)
        if req.arg("sha") and req.arg("sha") != head:
            raise error(409, "Head branch was modified. Review and try the merge again.")
        title = req.arg("commit_title") or (
            f"Merge pull request #{pr.number} from {self._head_label(pr).replace(':', '/')}"
            if method == "merge" else f"{pr.title} (#{pr.number})"
        )  # fmt: skip
        message = "\n\n".join(p for p in (title, req.arg("commit_message") or "") if p)
        sha = self.store.merge(pr, method, message, self.user)
        if sha is None:
            raise error(405, "Pull Request is not mergeable")
        return Reply(
            200, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}
        )

    def delete_ref(self, req: Request) -> Reply:
        repo = self._repo(req)
        ref = req.params["ref"]
        if not ref.startswith("heads/") or not self.store.delete_branch(repo.path, ref[6:]):
            raise error(422, "Reference does not exist")
        return Reply(204)

    def create_fork(self, req: Request) -> Reply:
        repo = self._repo(req)
        owner = req.arg("organization") or self.user
        fork = self.store.fork(repo.path, owner, req.arg("name"))
        return Reply(202, self.repo_json(fork, full=True))

    def _owned(self, owner: str) -> list[RepoRecord]:
        return sorted(
            (r for r in self.store.repos.values() if r.owner == owner), key=lambda r: r.path
        )

    def org_repos(self, req: Request) -> Reply:
        org = req.params["org"]
        if org in self.store.users or not self._owned(org):
            raise ApiError(404, self.not_found().body)
        return self.page_reply(req, self._owned(org), self.repo_json)[0]

    def user_repos(self, req: Request) -> Reply:
        login = req.params["username"]
        if login not in self.store.users and not self._owned(login):
            raise ApiError(404, self.not_found().body)
        return self.page_reply(req, self._owned(login), self.repo_json)[0]

    def search_repos(self, req: Request) -> Reply:
        query = req.query.get("q", "").strip()
        if not query:
            raise invalid("Search", "q")
        found = [
            r for r in sorted(self.store.repos.values(), key=lambda r: r.path) if matches(r, query)
        ]

        def wrap(items: list[Any], page: Any) -> dict[str, Any]:
            return {"total_count": page.total, "incomplete_results": False, "items": items}

        return self.page_reply(req, found, lambda r: self.repo_json(r, score=1.0), wrap=wrap)[0]


def matches(repo: RepoRecord, query: str) -> bool:
    """GitHub search qualifiers, minimally: org/user/repo/topic/language/archived/fork/is."""
    fork_mode = "false"
    for term in query.split():
        key, sep, value = term.partition(":")
        value, lower = value.strip('"'), value.strip('"').lower()
        if not sep:
            if term.lower() not in repo.name.lower():
                return False
        elif (
            (key in ("org", "user", "owner") and repo.owner.lower() != lower)
            or (key == "repo" and repo.path.lower() != lower)
            or (key == "topic" and lower not in (t.lower() for t in repo.topics))
            or (key == "language" and (repo.language or "").lower() != lower)
            or (key == "archived" and repo.archived != (lower == "true"))
            or (key == "is" and lower in ("public", "private") and repo.visibility != lower)
        ):
            return False
        elif key == "fork":
            fork_mode = lower
    return {"true": True, "only": repo.fork}.get(fork_mode, not repo.fork)
