"""Gitea's JSON shapes (users, repositories, labels, pull requests, reviews).

A mixin of `GiteaStandIn`: it needs `api_url`, `base_url`, `host`, `user` and `store`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.stubs.forge.store import PullRecord, RepoRecord, ReviewRecord

if TYPE_CHECKING:
    from tests.stubs.forge.store import RepoStore

REVIEW_STATES = {"APPROVED": "APPROVED", "CHANGES_REQUESTED": "REQUEST_CHANGES",
                 "COMMENTED": "COMMENT", "REQUESTED": "REQUEST_REVIEW"}  # fmt: skip
COLORS = ("00aabb", "e11d21", "fbca04", "009800", "207de5", "5319e7")


class GiteaShapes:
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
        return {
            "id": number, "login": login, "login_name": "", "source_id": 0, "full_name": "",
            "email": f"{login}@noreply.example.com",
            "avatar_url": f"{self.base_url}/avatars/{number}",
            "html_url": f"{self.base_url}/{login}", "language": "", "is_admin": False,
            "last_login": "2020-01-01T00:00:00Z", "created": "2020-01-01T00:00:00Z",
            "restricted": False, "active": True, "prohibit_login": False, "location": "",
            "website": "", "description": "", "visibility": "public", "followers_count": 0,
            "following_count": 0, "starred_repos_count": 0,
        }  # fmt: skip

    def repo_json(self, repo: RepoRecord, with_parent: bool = True) -> dict[str, Any]:
        methods = repo.merge_methods
        parent = self.store.repos.get(repo.parent or "")
        return {
            "id": repo.id, "owner": self.user_json(repo.owner), "name": repo.name,
            "full_name": repo.path, "description": repo.description or "", "empty": False,
            "private": repo.visibility == "private", "fork": repo.fork, "template": False,
            "parent": self.repo_json(parent, with_parent=False) if parent and with_parent else None,
            "mirror": False, "size": 1, "language": repo.language or "",
            "languages_url": f"{self.api_url}/repos/{repo.path}/languages",
            "html_url": f"{self.base_url}/{repo.path}", "url": f"{self.api_url}/repos/{repo.path}",
            "link": "", "ssh_url": f"git@{self.host}:{repo.path}.git",
            "clone_url": f"{self.base_url}/{repo.path}.git", "original_url": "", "website": "",
            "stars_count": 0, "forks_count": len(self.store.forks_of(repo.path)),
            "watchers_count": 0, "open_issues_count": 0,
            "open_pr_counter": sum(p.state == "open" for p in self.store.pulls.get(repo.path, [])),
            "release_counter": 0, "default_branch": repo.default_branch, "archived": repo.archived,
            "created_at": repo.created_at, "updated_at": repo.created_at,
            "archived_at": repo.created_at if repo.archived else "1970-01-01T00:00:00Z",
            "permissions": {"admin": False, "push": repo.can_push, "pull": True},
            "has_issues": True, "has_wiki": True, "has_pull_requests": True, "has_projects": False,
            "has_releases": True, "has_packages": False, "has_actions": False,
            "ignore_whitespace_conflicts": False, "allow_merge_commits": "merge" in methods,
            "allow_rebase": "rebase" in methods, "allow_rebase_explicit": "rebase" in methods,
            "allow_squash_merge": "squash" in methods,
            "allow_fast_forward_only_merge": "rebase" in methods,
            "allow_rebase_update": True, "default_delete_branch_after_merge": False,
            "default_merge_style": next(iter(methods), "merge"),
            "default_allow_maintainer_edit": False,
            "avatar_url": "", "mirror_interval": "",
            # as Gitea's convert.ToRepo: internal is "not private, in a private-visibility org"
            "internal": repo.visibility == "internal",
            "object_format_name": "sha1", "mirror_updated": "0001-01-01T00:00:00Z",
            "repo_transfer": None, "topics": list(repo.topics), "licenses": [],
        }  # fmt: skip

    def label_json(self, repo: str, name: str) -> dict[str, Any]:
        number = self.store.label_id(repo, name)
        return {"id": number, "name": name, "exclusive": False, "is_archived": False,
                "color": COLORS[number % len(COLORS)], "description": "",
                "url": f"{self.api_url}/repos/{repo}/labels/{number}"}  # fmt: skip

    def _branch(self, path: str, branch: str, sha: str) -> dict[str, Any]:
        repo = self.store.repos[path]
        return {
            "label": branch,
            "ref": branch,
            "sha": sha,
            "repo_id": repo.id,
            "repo": self.repo_json(repo),
        }

    def pull_json(self, pr: PullRecord) -> dict[str, Any]:
        html = f"{self.base_url}/{pr.repo}/pulls/{pr.number}"
        head, base = self.store.head_sha(pr), self.store.branch_sha(pr.repo, pr.base_branch) or ""
        users = [self.user_json(login) for login in pr.assignees]
        return {
            "id": pr.id, "url": html, "number": pr.number, "user": self.user_json(pr.author),
            "title": pr.title, "body": pr.body or "",
            "labels": [self.label_json(pr.repo, name) for name in pr.labels], "milestone": None,
            "assignee": users[0] if users else None, "assignees": users or None,
            "requested_reviewers": [self.user_json(login) for login in pr.reviewers] or None,
            "requested_reviewers_teams": None, "state": "open" if pr.state == "open" else "closed",
            "draft": pr.draft, "is_locked": False, "comments": len(pr.comments),
            "review_comments": 0,
            "additions": 0, "deletions": 0, "changed_files": 0, "html_url": html,
            "diff_url": f"{html}.diff", "patch_url": f"{html}.patch",
            "mergeable": pr.state == "open" and self.store.mergeable(pr),
            "merged": pr.state == "merged",
            "merged_at": pr.merged_at, "merge_commit_sha": pr.merge_sha,
            "merged_by": self.user_json(pr.merged_by) if pr.merged_by else None,
            "allow_maintainer_edit": False, "base": self._branch(pr.repo, pr.base_branch, base),
            "head": self._branch(pr.head_repo, pr.head_branch, head), "merge_base": base,
            "due_date": None, "created_at": pr.created_at, "updated_at": pr.updated_at,
            "closed_at": pr.closed_at, "pin_order": 0,
        }  # fmt: skip

    def review_json(self, pr: PullRecord, review: ReviewRecord) -> dict[str, Any]:
        html = f"{self.base_url}/{pr.repo}/pulls/{pr.number}"
        return {
            "id": review.id, "user": self.user_json(review.user), "team": None,
            "state": REVIEW_STATES[review.state], "body": "", "commit_id": review.commit_id or "",
            "stale": False, "official": review.state != "REQUESTED", "dismissed": False,
            "comments_count": 0, "submitted_at": review.submitted_at,
            "updated_at": review.submitted_at,
            "html_url": f"{html}#issuecomment-{review.id}", "pull_request_url": html,
        }  # fmt: skip
