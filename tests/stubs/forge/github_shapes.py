"""GitHub's JSON shapes, as the OpenAPI description (`@octokit/openapi`, GHES) defines them.

A mixin of `GitHubStandIn`: it needs `api_url`, `base_url`, `host`, `user` and `store`.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from tests.stubs.forge.store import PullRecord, RepoRecord, ReviewRecord

if TYPE_CHECKING:
    from tests.stubs.forge.store import RepoStore

# GitHub's URL templates for a repository, relative to its API URL.
REPO_URLS = {
    "archive_url": "/{archive_format}{/ref}", "assignees_url": "/assignees{/user}",
    "blobs_url": "/git/blobs{/sha}", "branches_url": "/branches{/branch}",
    "collaborators_url": "/collaborators{/collaborator}", "comments_url": "/comments{/number}",
    "commits_url": "/commits{/sha}", "compare_url": "/compare/{base}...{head}",
    "contents_url": "/contents/{+path}", "contributors_url": "/contributors",
    "deployments_url": "/deployments", "downloads_url": "/downloads", "events_url": "/events",
    "forks_url": "/forks", "git_commits_url": "/git/commits{/sha}",
    "git_refs_url": "/git/refs{/sha}", "git_tags_url": "/git/tags{/sha}", "hooks_url": "/hooks",
    "issue_comment_url": "/issues/comments{/number}",
    "issue_events_url": "/issues/events{/number}", "issues_url": "/issues{/number}",
    "keys_url": "/keys{/key_id}", "labels_url": "/labels{/name}", "languages_url": "/languages",
    "merges_url": "/merges", "milestones_url": "/milestones{/number}",
    "notifications_url": "/notifications{?since,all,participating}",
    "pulls_url": "/pulls{/number}", "releases_url": "/releases{/id}",
    "stargazers_url": "/stargazers", "statuses_url": "/statuses/{sha}",
    "subscribers_url": "/subscribers", "subscription_url": "/subscription", "tags_url": "/tags",
    "teams_url": "/teams", "trees_url": "/git/trees{/sha}",
}  # fmt: skip
COLORS = ("0e8a16", "1d76db", "b60205", "fbca04", "5319e7", "c5def5")


def node_id(kind: str, number: int) -> str:
    return base64.b64encode(f"0:{kind}{number}".encode()).decode().rstrip("=")


class GitHubShapes:
    user: str
    store: RepoStore
    if TYPE_CHECKING:  # provided by ForgeStandIn

        @property
        def api_url(self) -> str: ...
        @property
        def base_url(self) -> str: ...
        @property
        def host(self) -> str: ...

    def user_json(self, login: str) -> dict[str, Any]:
        number = self.store.id_for("user", login)
        url = f"{self.api_url}/users/{login}"
        return {
            "login": login, "id": number, "node_id": node_id("U", number),
            "avatar_url": f"{self.base_url}/avatars/u/{number}", "gravatar_id": "",
            "url": url, "html_url": f"{self.base_url}/{login}",
            "followers_url": f"{url}/followers", "following_url": f"{url}/following{{/other_user}}",
            "gists_url": f"{url}/gists{{/gist_id}}",
            "starred_url": f"{url}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{url}/subscriptions", "organizations_url": f"{url}/orgs",
            "repos_url": f"{url}/repos", "events_url": f"{url}/events{{/privacy}}",
            "received_events_url": f"{url}/received_events",
            "type": "User" if login in self.store.users else "Organization",
            "site_admin": False, "user_view_type": "public",
        }  # fmt: skip

    def private_user_json(self, login: str) -> dict[str, Any]:
        owned = [r for r in self.store.repos.values() if r.owner == login]
        return {
            **self.user_json(login), "user_view_type": "private", "name": login,
            "company": None, "blog": "", "location": None, "email": f"{login}@example.com",
            "hireable": None, "bio": None, "twitter_username": None,
            "public_repos": sum(not r.private for r in owned), "public_gists": 0,
            "followers": 0, "following": 0, "created_at": "2020-01-01T00:00:00Z",
            "updated_at": "2020-01-01T00:00:00Z", "private_gists": 0,
            "total_private_repos": sum(r.private for r in owned),
            "owned_private_repos": sum(r.private for r in owned), "disk_usage": 0,
            "collaborators": 0, "two_factor_authentication": True,
        }  # fmt: skip

    def repo_json(
        self, repo: RepoRecord, full: bool = False, score: float | None = None
    ) -> dict[str, Any]:
        url = f"{self.api_url}/repos/{repo.path}"
        forks = len(self.store.forks_of(repo.path))
        methods = repo.merge_methods
        data: dict[str, Any] = {
            "id": repo.id, "node_id": node_id("R", repo.id), "name": repo.name,
            "full_name": repo.path, "owner": self.user_json(repo.owner), "private": repo.private,
            "html_url": f"{self.base_url}/{repo.path}", "description": repo.description,
            "fork": repo.fork, "url": url,
            **{key: url + suffix for key, suffix in REPO_URLS.items()},
            "git_url": f"git://{self.host}/{repo.path}.git",
            "ssh_url": f"git@{self.host}:{repo.path}.git",
            "clone_url": f"{self.base_url}/{repo.path}.git",
            "svn_url": f"{self.base_url}/{repo.path}",
            "mirror_url": None, "homepage": None, "language": repo.language,
            "forks_count": forks, "forks": forks, "stargazers_count": 0, "watchers_count": 0,
            "watchers": 0, "size": 1, "default_branch": repo.default_branch,
            "open_issues_count": 0, "open_issues": 0, "is_template": False,
            "topics": list(repo.topics), "has_issues": True, "has_projects": True,
            "has_wiki": True, "has_pages": False, "has_downloads": True,
            "has_discussions": False, "archived": repo.archived, "disabled": False,
            "visibility": repo.visibility, "pushed_at": repo.created_at,
            "created_at": repo.created_at, "updated_at": repo.created_at,
            "permissions": {"admin": False, "maintain": False, "push": repo.can_push,
                            "triage": True, "pull": True},
            "allow_forking": True, "web_commit_signoff_required": False, "license": None,
            "allow_merge_commit": "merge" in methods, "allow_squash_merge": "squash" in methods,
            "allow_rebase_merge": "rebase" in methods, "allow_auto_merge": False,
            "delete_branch_on_merge": False,
        }  # fmt: skip
        if full:
            data.update(subscribers_count=0, network_count=forks, temp_clone_token=None)
            data.update(allow_update_branch=False, use_squash_pr_title_as_default=False)
            if repo.parent and repo.parent in self.store.repos:
                parent = self.repo_json(self.store.repos[repo.parent])
                data.update(parent=parent, source=parent)
            if repo.owner not in self.store.users:
                data["organization"] = self.user_json(repo.owner)
        if score is not None:
            data["score"] = score
        return data

    def label_json(self, repo: str, name: str) -> dict[str, Any]:
        number = self.store.label_id(repo, name)
        return {
            "id": number,
            "node_id": node_id("L", number),
            "name": name,
            "description": "",
            "url": f"{self.api_url}/repos/{repo}/labels/{name}",
            "default": False,
            "color": COLORS[number % len(COLORS)],
        }

    def _branch_json(self, repo_path: str, branch: str, sha: str) -> dict[str, Any]:
        repo = self.store.repos[repo_path]
        return {"label": f"{repo.owner}:{branch}", "ref": branch, "sha": sha,
                "user": self.user_json(repo.owner), "repo": self.repo_json(repo)}  # fmt: skip

    def pull_json(self, pr: PullRecord, full: bool) -> dict[str, Any]:
        url = f"{self.api_url}/repos/{pr.repo}"
        html = f"{self.base_url}/{pr.repo}/pull/{pr.number}"
        head = self.store.head_sha(pr)
        base = self.store.branch_sha(pr.repo, pr.base_branch) or ""
        links = {"self": f"{url}/pulls/{pr.number}", "html": html,
                 "issue": f"{url}/issues/{pr.number}",
                 "comments": f"{url}/issues/{pr.number}/comments",
                 "review_comments": f"{url}/pulls/{pr.number}/comments",
                 "review_comment": f"{url}/pulls/comments{{/number}}",
                 "commits": f"{url}/pulls/{pr.number}/commits",
                 "statuses": f"{url}/statuses/{head}"}  # fmt: skip
        users = [self.user_json(login) for login in pr.assignees]
        data: dict[str, Any] = {
            "url": links["self"], "id": pr.id, "node_id": node_id("PR", pr.id), "html_url": html,
            "diff_url": f"{html}.diff", "patch_url": f"{html}.patch", "issue_url": links["issue"],
            "commits_url": links["commits"], "review_comments_url": links["review_comments"],
            "review_comment_url": links["review_comment"], "comments_url": links["comments"],
            "statuses_url": links["statuses"], "number": pr.number,
            "state": "open" if pr.state == "open" else "closed", "locked": False,
            "title": pr.title, "user": self.user_json(pr.author), "body": pr.body or None,
            "labels": [self.label_json(pr.repo, name) for name in pr.labels], "milestone": None,
            "active_lock_reason": None, "created_at": pr.created_at, "updated_at": pr.updated_at,
            "closed_at": pr.closed_at, "merged_at": pr.merged_at, "merge_commit_sha": pr.merge_sha,
            "assignee": users[0] if users else None, "assignees": users,
            "requested_reviewers": [self.user_json(login) for login in pr.reviewers],
            "requested_teams": [], "head": self._branch_json(pr.head_repo, pr.head_branch, head),
            "base": self._branch_json(pr.repo, pr.base_branch, base),
            "_links": {key: {"href": value} for key, value in links.items()},
            "author_association": "OWNER"
            if pr.author == self.store.repos[pr.repo].owner else "CONTRIBUTOR",
            "auto_merge": None, "draft": pr.draft,
        }  # fmt: skip
        if full:
            mergeable = self.store.mergeable(pr) if pr.state == "open" else None
            state = {True: "clean", False: "dirty", None: "unknown"}[mergeable]
            data.update(
                merged=pr.state == "merged", mergeable=mergeable, rebaseable=mergeable,
                mergeable_state="draft" if pr.draft and mergeable else state,
                merged_by=self.user_json(pr.merged_by) if pr.merged_by else None,
                comments=len(pr.comments), review_comments=0, maintainer_can_modify=False,
                commits=self.store.count_commits(pr.repo, base, head) if head and base else 0,
                additions=0, deletions=0, changed_files=0,
            )  # fmt: skip
        return data

    def issue_json(self, pr: PullRecord) -> dict[str, Any]:
        url = f"{self.api_url}/repos/{pr.repo}/issues/{pr.number}"
        html = f"{self.base_url}/{pr.repo}/pull/{pr.number}"
        users = [self.user_json(login) for login in pr.assignees]
        return {
            "id": pr.id, "node_id": node_id("I", pr.id), "url": url,
            "repository_url": f"{self.api_url}/repos/{pr.repo}",
            "labels_url": f"{url}/labels{{/name}}",
            "comments_url": f"{url}/comments", "events_url": f"{url}/events", "html_url": html,
            "number": pr.number, "state": "open" if pr.state == "open" else "closed",
            "title": pr.title, "body": pr.body or None, "user": self.user_json(pr.author),
            "labels": [self.label_json(pr.repo, name) for name in pr.labels],
            "assignee": users[0] if users else None, "assignees": users, "milestone": None,
            "locked": False, "active_lock_reason": None, "comments": len(pr.comments),
            "pull_request": {"url": f"{self.api_url}/repos/{pr.repo}/pulls/{pr.number}",
                             "html_url": html, "diff_url": f"{html}.diff",
                             "patch_url": f"{html}.patch", "merged_at": pr.merged_at},
            "closed_at": pr.closed_at, "created_at": pr.created_at, "updated_at": pr.updated_at,
            "draft": pr.draft, "author_association": "CONTRIBUTOR",
        }  # fmt: skip

    def comment_json(self, pr: PullRecord, comment: dict[str, Any]) -> dict[str, Any]:
        base = f"{self.api_url}/repos/{pr.repo}/issues"
        return {
            "id": comment["id"], "node_id": node_id("IC", comment["id"]),
            "url": f"{base}/comments/{comment['id']}", "body": comment["body"],
            "html_url": f"{self.base_url}/{pr.repo}/pull/{pr.number}#issuecomment-{comment['id']}",
            "user": self.user_json(comment["user"]), "created_at": comment["created_at"],
            "updated_at": comment["created_at"], "issue_url": f"{base}/{pr.number}",
            "author_association": "CONTRIBUTOR",
        }  # fmt: skip

    def review_json(self, pr: PullRecord, review: ReviewRecord) -> dict[str, Any]:
        html = f"{self.base_url}/{pr.repo}/pull/{pr.number}#pullrequestreview-{review.id}"
        pull_url = f"{self.api_url}/repos/{pr.repo}/pulls/{pr.number}"
        return {
            "id": review.id, "node_id": node_id("PRR", review.id),
            "user": self.user_json(review.user),
            "body": "", "state": review.state, "html_url": html, "pull_request_url": pull_url,
            "_links": {"html": {"href": html}, "pull_request": {"href": pull_url}},
            "submitted_at": review.submitted_at, "commit_id": review.commit_id,
            "author_association": "COLLABORATOR",
        }  # fmt: skip

    def status_json(self, repo: RepoRecord, sha: str, state: str | None) -> dict[str, Any]:
        url = f"{self.api_url}/repos/{repo.path}"
        statuses = []
        if state:
            number = self.store.id_for("status", f"{repo.path}@{sha}")
            statuses.append({
                "id": number, "node_id": node_id("SC", number), "state": state,
                "description": f"CI {state}", "context": "ci/standin", "target_url": None,
                "avatar_url": None, "url": f"{url}/statuses/{sha}", "created_at": repo.created_at,
                "updated_at": repo.created_at, "required": False,
            })  # fmt: skip
        data = self.repo_json(repo)
        minimal = {k: v for k, v in data.items() if not k.startswith("allow_")}
        return {"state": state or "pending", "statuses": statuses, "sha": sha,
                "total_count": len(statuses), "repository": minimal,
                "commit_url": f"{url}/commits/{sha}",
                "url": f"{url}/commits/{sha}/status"}  # fmt: skip

    def check_run_json(self, repo: RepoRecord, sha: str, state: str | None) -> dict[str, Any]:
        number = self.store.id_for("check", f"{repo.path}@{sha}")
        run_url = f"{self.api_url}/repos/{repo.path}/check-runs/{number}"
        done = state in ("success", "failure")
        return {
            "id": number, "node_id": node_id("CR", number), "head_sha": sha, "external_id": None,
            "url": run_url,
            "html_url": f"{self.base_url}/{repo.path}/runs/{number}", "details_url": None,
            "status": "completed" if done else "in_progress", "conclusion": state if done else None,
            "started_at": repo.created_at, "completed_at": repo.created_at if done else None,
            "output": {"title": None, "summary": None, "text": None, "annotations_count": 0,
                       "annotations_url": f"{run_url}/annotations"},
            "name": "standin-ci", "check_suite": {"id": number + 1}, "app": None,
            "pull_requests": [],
        }  # fmt: skip
