"""GitLab's JSON shapes (users, namespaces, projects, pipelines, merge requests).

A mixin of `GitLabStandIn`: it needs `base_url`, `host`, `user` and `store`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.stubs.forge.store import PullRecord, RepoRecord

if TYPE_CHECKING:
    from tests.stubs.forge.store import RepoStore

MR_STATES = {"open": "opened", "closed": "closed", "merged": "merged"}
PIPELINE_STATUS = {"success": "success", "failure": "failed", "pending": "running"}


class GitLabShapes:
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
        return {"id": number, "username": login, "name": login.title(), "state": "active",
                "locked": False, "avatar_url": f"{self.base_url}/uploads/-/user/avatar/{number}",
                "web_url": f"{self.base_url}/{login}"}  # fmt: skip

    def namespace_json(self, full_path: str) -> dict[str, Any]:
        is_user = full_path in self.store.users
        parent = full_path.rsplit("/", 1)[0] if "/" in full_path else None
        return {
            "id": self.store.id_for("user" if is_user else "group", full_path),
            "name": full_path.rsplit("/", 1)[-1], "path": full_path.rsplit("/", 1)[-1],
            "kind": "user" if is_user else "group", "full_path": full_path,
            "parent_id": self.store.id_for("group", parent) if parent else None,
            "avatar_url": None, "web_url": f"{self.base_url}/{full_path}",
        }  # fmt: skip

    def project_json(self, repo: RepoRecord) -> dict[str, Any]:
        methods = repo.merge_methods
        merge_method = "merge" if "merge" in methods else "ff"
        squash = (
            "never"
            if "squash" not in methods
            else ("always" if methods == ("squash",) else "default_off")
        )
        data: dict[str, Any] = {
            "id": repo.id, "description": repo.description, "name": repo.name,
            "name_with_namespace": " / ".join(repo.path.split("/")), "path": repo.name,
            "path_with_namespace": repo.path, "created_at": repo.created_at,
            "default_branch": repo.default_branch, "tag_list": list(repo.topics),
            "topics": list(repo.topics), "ssh_url_to_repo": f"git@{self.host}:{repo.path}.git",
            "http_url_to_repo": f"{self.base_url}/{repo.path}.git",
            "web_url": f"{self.base_url}/{repo.path}", "readme_url": None, "avatar_url": None,
            "forks_count": len(self.store.forks_of(repo.path)), "star_count": 0,
            "last_activity_at": repo.created_at, "namespace": self.namespace_json(repo.owner),
            "archived": repo.archived, "visibility": repo.visibility, "empty_repo": False,
            "merge_method": merge_method, "squash_option": squash,
            "merge_requests_enabled": True, "repository_access_level": "enabled",
            "merge_requests_access_level": "enabled", "open_issues_count": 0,
            "permissions": {"project_access": {"access_level": 40 if repo.can_push else 20,
                                               "notification_level": 3}, "group_access": None},
        }  # fmt: skip
        if repo.parent and repo.parent in self.store.repos:
            parent = self.store.repos[repo.parent]
            data["forked_from_project"] = {
                "id": parent.id, "name": parent.name, "path": parent.name,
                "path_with_namespace": parent.path, "web_url": f"{self.base_url}/{parent.path}",
            }  # fmt: skip
        return data

    def pipeline_json(self, pr: PullRecord) -> dict[str, Any] | None:
        sha = self.store.head_sha(pr)
        state = self.store.checks.get((pr.repo, sha)) or self.store.checks.get((pr.head_repo, sha))
        if state is None:
            return None
        repo = self.store.repos[pr.repo]
        number = self.store.id_for("pipeline", f"{pr.repo}@{sha}")
        return {"id": number, "iid": number % 1000, "project_id": repo.id, "sha": sha,
                "ref": f"refs/merge-requests/{pr.number}/head", "status": PIPELINE_STATUS[state],
                "source": "merge_request_event", "created_at": pr.created_at,
                "updated_at": pr.updated_at,
                "web_url": f"{self.base_url}/{pr.repo}/-/pipelines/{number}"}  # fmt: skip

    def mr_json(self, pr: PullRecord, full: bool = False) -> dict[str, Any]:
        target, source = self.store.repos[pr.repo], self.store.repos[pr.head_repo]
        mergeable = pr.state == "open" and self.store.mergeable(pr)
        pipeline = self.pipeline_json(pr)
        review = self.store.review_state(pr.repo, pr.number)
        users = [self.user_json(login) for login in pr.assignees]
        detailed = (
            "not_open" if pr.state != "open" else "draft_status" if pr.draft
            else "conflict" if not mergeable
            else "ci_still_running" if pipeline and pipeline["status"] == "running"
            else "requested_changes" if review == "CHANGES_REQUESTED"
            else "mergeable"
        )  # fmt: skip
        merged_by = self.user_json(pr.merged_by) if pr.merged_by else None
        data: dict[str, Any] = {
            "id": pr.id, "iid": pr.number, "project_id": target.id, "title": pr.title,
            "description": pr.body or "", "state": MR_STATES[pr.state],
            "created_at": pr.created_at, "updated_at": pr.updated_at, "merged_by": merged_by,
            "merge_user": merged_by, "merged_at": pr.merged_at,
            "closed_by": self.user_json(self.user) if pr.state == "closed" else None,
            "closed_at": pr.closed_at if pr.state == "closed" else None,
            "target_branch": pr.base_branch, "source_branch": pr.head_branch,
            "user_notes_count": len(pr.comments), "upvotes": 0, "downvotes": 0,
            "author": self.user_json(pr.author), "assignees": users,
            "assignee": users[0] if users else None,
            "reviewers": [self.user_json(login) for login in pr.reviewers],
            "source_project_id": source.id, "target_project_id": target.id,
            "labels": list(pr.labels), "draft": pr.draft, "work_in_progress": pr.draft,
            "milestone": None, "merge_when_pipeline_succeeds": False,
            "merge_status": "cannot_be_merged" if pr.state == "open" and not mergeable
            else "can_be_merged",
            "detailed_merge_status": detailed, "sha": self.store.head_sha(pr),
            "merge_commit_sha": pr.merge_sha if not pr.squash else None,
            "squash_commit_sha": pr.merge_sha if pr.squash else None,
            "discussion_locked": None, "should_remove_source_branch": pr.remove_source_branch,
            "force_remove_source_branch": bool(pr.remove_source_branch),
            "reference": f"!{pr.number}",
            "references": {"short": f"!{pr.number}", "relative": f"!{pr.number}",
                           "full": f"{pr.repo}!{pr.number}"},
            "web_url": f"{self.base_url}/{pr.repo}/-/merge_requests/{pr.number}",
            "time_stats": {"time_estimate": 0, "total_time_spent": 0,
                           "human_time_estimate": None, "human_total_time_spent": None},
            "squash": pr.squash, "squash_on_merge": pr.squash,
            "task_completion_status": {"count": 0, "completed_count": 0},
            "has_conflicts": pr.state == "open" and not mergeable,
            "blocking_discussions_resolved": True, "approvals_before_merge": None,
        }  # fmt: skip
        if full:
            base = self.store.branch_sha(pr.repo, pr.base_branch)
            data.update(
                subscribed=True, changes_count="1", head_pipeline=pipeline, pipeline=pipeline,
                diff_refs={"base_sha": base, "head_sha": data["sha"], "start_sha": base},
                merge_error=None, user={"can_merge": target.can_push}, first_contribution=False,
                latest_build_started_at=None, latest_build_finished_at=None,
            )  # fmt: skip
        return data
