"""The stand-ins' repository store: real bare repositories on disk, PR metadata in memory.

Branches and SHAs are always read from the bare repositories, so what `git push` did is
what the API reports. Pull requests, reviews, check results and labels are kept here,
forge-neutral; each stand-in renders them in its forge's shapes. Merging is real: a merge
commit (`git merge-tree --write-tree` + `commit-tree`), a squash commit, or a fast-forward,
written to the base branch with a compare-and-swap `update-ref`. A cross-repository PR's
head (a fork's branch) is fetched into the base repository as `refs/pull/N/head`.

Callers hold the stand-in's lock; nothing here locks.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.stubs.forge.git_http import git

ALL_METHODS = ("merge", "squash", "rebase")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RepoRecord:
    path: str  # owner/name, or group/sub/name
    id: int
    default_branch: str = "main"
    archived: bool = False
    fork: bool = False
    topics: tuple[str, ...] = ()
    language: str | None = None
    visibility: str = "public"
    can_push: bool = True
    merge_methods: tuple[str, ...] = ALL_METHODS
    description: str | None = None
    parent: str | None = None
    created_at: str = field(default_factory=now)

    @property
    def owner(self) -> str:
        return self.path.rsplit("/", 1)[0]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]

    @property
    def private(self) -> bool:
        return self.visibility != "public"


@dataclass
class ReviewRecord:
    id: int
    user: str
    state: str  # APPROVED | CHANGES_REQUESTED | COMMENTED | REQUESTED
    commit_id: str | None
    submitted_at: str


@dataclass
class PullRecord:
    repo: str  # the base repository
    number: int
    id: int
    title: str
    body: str | None
    head_repo: str
    head_branch: str
    base_branch: str
    author: str
    last_head_sha: str
    draft: bool = False
    state: str = "open"  # open | closed | merged
    squash: bool = False
    labels: list[str] = field(default_factory=list)
    reviewers: list[str] = field(default_factory=list)
    assignees: list[str] = field(default_factory=list)
    comments: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    closed_at: str | None = None
    merged_at: str | None = None
    merged_by: str | None = None
    merge_sha: str | None = None
    remove_source_branch: bool | None = None

    def touch(self) -> None:
        self.updated_at = now()


class RepoStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, RepoRecord] = {}
        self.pulls: dict[str, list[PullRecord]] = {}
        self.reviews: dict[tuple[str, int], list[ReviewRecord]] = {}
        self.checks: dict[tuple[str, str], str] = {}
        self.labels: dict[str, dict[str, int]] = {}
        self.users: set[str] = set()
        self._ids: dict[tuple[str, str], int] = {}
        self._counter = itertools.count(1001)

    def next_id(self) -> int:
        return next(self._counter)

    def id_for(self, kind: str, key: str) -> int:
        """A stable id per (kind, key): users, groups, namespaces."""
        if (kind, key) not in self._ids:
            self._ids[(kind, key)] = self.next_id()
        return self._ids[(kind, key)]

    def key_for(self, kind: str, number: int) -> str | None:
        return next((k for (kd, k), v in self._ids.items() if kd == kind and v == number), None)

    # ---- repositories ----------------------------------------------------------------------
    def bare_path(self, path: str) -> Path:
        return self.root / f"{path}.git"

    def get(self, path: str) -> RepoRecord | None:
        return self.repos.get(path)

    def by_id(self, number: int) -> RepoRecord | None:
        return next((r for r in self.repos.values() if r.id == number), None)

    def add_repo(
        self, path: str, files: dict[str, str] | None = None, **options: Any
    ) -> RepoRecord:
        if path.count("/") < 1 or path.startswith("/") or path.endswith(".git"):
            raise ValueError(f"repository path {path!r}; expected owner/name (no .git)")
        if path in self.repos:
            raise ValueError(f"repository {path} already exists")
        record = RepoRecord(path=path, id=self.next_id(), **options)
        record.topics = tuple(record.topics)
        record.merge_methods = tuple(record.merge_methods)
        bare = self.bare_path(path)
        bare.parent.mkdir(parents=True, exist_ok=True)
        git(None, "init", "-q", "--bare", "-b", record.default_branch, str(bare))
        files = files if files is not None else {"README.md": f"# {record.name}\n"}
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
            lines = []
            for name, text in files.items():
                blob = git(bare, "hash-object", "-w", "--stdin", stdin=text).stdout.strip()
                lines.append(f"100644 {blob}\t{name}\n")
            git(bare, "update-index", "--index-info", stdin="".join(lines), env=env)
            tree = git(bare, "write-tree", env=env).stdout.strip()
        commit = git(bare, "commit-tree", tree, "-m", "initial").stdout.strip()
        git(bare, "update-ref", f"refs/heads/{record.default_branch}", commit)
        self._register(record)
        return record

    def _register(self, record: RepoRecord) -> None:
        parts = record.owner.split("/")
        for depth in range(1, len(parts) + 1):  # namespaces get ids as soon as they exist
            self.id_for("group", "/".join(parts[:depth]))
        self.repos[record.path] = record

    def fork(self, path: str, owner: str, name: str | None = None) -> RepoRecord:
        source = self.repos[path]
        target = f"{owner}/{name or source.name}"
        if target in self.repos:
            return self.repos[target]
        self.bare_path(target).parent.mkdir(parents=True, exist_ok=True)
        git(None, "clone", "-q", "--bare", str(self.bare_path(path)), str(self.bare_path(target)))
        record = RepoRecord(
            path=target,
            id=self.next_id(),
            default_branch=source.default_branch,
            fork=True,
            topics=source.topics,
            language=source.language,
            visibility=source.visibility,
            merge_methods=source.merge_methods,
            description=source.description,
            parent=path,
        )
        self._register(record)
        return record

    def forks_of(self, path: str) -> list[RepoRecord]:
        return [r for r in self.repos.values() if r.parent == path]

    def branch_sha(self, path: str, branch: str) -> str | None:
        if path not in self.repos:
            return None
        ref = f"refs/heads/{branch}"
        proc = git(self.bare_path(path), "rev-parse", "--verify", "-q", ref, check=False)
        return proc.stdout.strip() or None

    def resolve(self, path: str, ref: str) -> str | None:
        """A branch name or commit SHA, as a commit SHA (None when there is no such commit)."""
        sha = self.branch_sha(path, ref)
        if sha:
            return sha
        proc = git(
            self.bare_path(path), "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False
        )
        return proc.stdout.strip() or None

    def delete_branch(self, path: str, branch: str) -> bool:
        if self.branch_sha(path, branch) is None:
            return False
        git(self.bare_path(path), "update-ref", "-d", f"refs/heads/{branch}")
        return True

    def is_ancestor(self, path: str, older: str, newer: str) -> bool:
        proc = git(self.bare_path(path), "merge-base", "--is-ancestor", older, newer, check=False)
        return proc.returncode == 0

    def count_commits(self, path: str, base: str, head: str) -> int:
        proc = git(self.bare_path(path), "rev-list", "--count", f"{base}..{head}", check=False)
        return int(proc.stdout.strip() or 0)

    def fetch_head(self, base_repo: str, head_repo: str, branch: str, ref: str) -> str | None:
        """Make `head_repo`'s branch available in `base_repo` as `ref`; returns its SHA."""
        sha = self.branch_sha(head_repo, branch)
        if sha is None:
            return None
        bare = self.bare_path(base_repo)
        if head_repo == base_repo:
            git(bare, "update-ref", ref, sha)
        else:
            source = str(self.bare_path(head_repo))
            git(bare, "fetch", "-q", "--no-tags", source, f"+refs/heads/{branch}:{ref}")
        return sha

    # ---- pull requests ---------------------------------------------------------------------
    def create_pull(
        self,
        repo: str,
        head_repo: str,
        head_branch: str,
        base_branch: str,
        title: str,
        body: str | None,
        author: str,
        draft: bool = False,
    ) -> PullRecord:
        pulls = self.pulls.setdefault(repo, [])
        number = len(pulls) + 1
        sha = self.fetch_head(repo, head_repo, head_branch, f"refs/pull/{number}/head") or ""
        pr = PullRecord(repo, number, self.next_id(), title, body, head_repo, head_branch,
                        base_branch, author, sha, draft=draft)  # fmt: skip
        pulls.append(pr)
        return pr

    def pull(self, repo: str, number: int) -> PullRecord | None:
        pulls = self.pulls.get(repo, [])
        return pulls[number - 1] if 0 < number <= len(pulls) else None

    def open_pull(
        self, repo: str, head_repo: str, head_branch: str, base: str
    ) -> PullRecord | None:
        return next(
            (p for p in self.pulls.get(repo, []) if p.state == "open" and p.head_repo == head_repo
             and p.head_branch == head_branch and p.base_branch == base),
            None,
        )  # fmt: skip

    def head_sha(self, pr: PullRecord) -> str:
        """The PR's head SHA: the branch's real SHA, or the last one seen once it is gone."""
        if pr.state == "open":
            sha = self.fetch_head(
                pr.repo, pr.head_repo, pr.head_branch, f"refs/pull/{pr.number}/head"
            )
            if sha:
                pr.last_head_sha = sha
        return pr.last_head_sha

    def mergeable(self, pr: PullRecord) -> bool:
        head, base = self.head_sha(pr), self.branch_sha(pr.repo, pr.base_branch)
        if not head or not base:
            return False
        if self.is_ancestor(pr.repo, base, head):
            return True
        proc = git(self.bare_path(pr.repo), "merge-tree", "--write-tree", base, head, check=False)
        return proc.returncode == 0

    def merge(self, pr: PullRecord, method: str, message: str, by: str) -> str | None:
        """Merge the PR into its base branch; the new base SHA, or None on a conflict.

        `method`: merge (a merge commit), squash (one commit), rebase (a fast-forward when
        possible, else one commit on top of the base, as if rebased and squashed), or ff
        (fast-forward only)."""
        head, base = self.head_sha(pr), self.branch_sha(pr.repo, pr.base_branch)
        if not head or not base:
            return None
        bare = self.bare_path(pr.repo)
        if method in ("rebase", "ff") and self.is_ancestor(pr.repo, base, head):
            new = head
        elif method == "ff":
            return None
        else:
            proc = git(bare, "merge-tree", "--write-tree", base, head, check=False)
            if proc.returncode != 0:
                return None
            parents = ["-p", base, "-p", head] if method == "merge" else ["-p", base]
            tree = proc.stdout.split()[0]
            new = git(bare, "commit-tree", tree, *parents, "-m", message).stdout.strip()
        git(bare, "update-ref", f"refs/heads/{pr.base_branch}", new, base)
        pr.state, pr.merge_sha, pr.merged_by = "merged", new, by
        pr.merged_at = pr.closed_at = now()
        pr.touch()
        return new

    def add_review(self, repo: str, number: int, user: str, state: str) -> ReviewRecord:
        pr = self.pull(repo, number)
        if pr is None:
            raise ValueError(f"{repo} has no pull request #{number}")
        review = ReviewRecord(self.next_id(), user, state, self.head_sha(pr), now())
        self.reviews.setdefault((repo, number), []).append(review)
        self.users.add(user)
        return review

    def review_state(self, repo: str, number: int) -> str | None:
        """The latest decisive review state (APPROVED / CHANGES_REQUESTED) per reviewer,
        combined: any CHANGES_REQUESTED wins, else APPROVED, else None."""
        latest: dict[str, str] = {}
        for review in self.reviews.get((repo, number), []):
            if review.state in ("APPROVED", "CHANGES_REQUESTED"):
                latest[review.user] = review.state
        if "CHANGES_REQUESTED" in latest.values():
            return "CHANGES_REQUESTED"
        return "APPROVED" if latest else None

    def label_id(self, repo: str, name: str) -> int:
        labels = self.labels.setdefault(repo, {})
        if name not in labels:
            labels[name] = self.next_id()
        return labels[name]
