"""The runner's git, against real repositories made in tmp_path."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ado_ray.engine import workspace as ws
from ado_ray.errors import WorkspaceError

ME = {
    "GIT_AUTHOR_NAME": "Upstream Dev",
    "GIT_AUTHOR_EMAIL": "dev@example.com",
    "GIT_COMMITTER_NAME": "Upstream Dev",
    "GIT_COMMITTER_EMAIL": "dev@example.com",
}


def sh(cwd: Path, *args: str) -> str:
    """Plain git for the fixtures, independent of the module under test."""
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **ME, "LC_ALL": "C"},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def commit_file(repo: Path, name: str, text: str, message: str) -> str:
    (repo / name).write_text(text)
    sh(repo, "add", name)
    sh(repo, "commit", "-q", "-m", message)
    return sh(repo, "rev-parse", "HEAD")


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A non-bare repository: main (2 commits, .gitignore), a branch, an annotated tag."""
    repo = tmp_path / "origin"
    repo.mkdir()
    sh(repo, "init", "-q", "-b", "main")
    commit_file(repo, ".gitignore", "*.log\n", "ignore logs")
    sh(repo, "tag", "-a", "v1", "-m", "release 1")
    sh(repo, "checkout", "-q", "-b", "feature")
    commit_file(repo, "feature.txt", "feature\n", "feature work")
    sh(repo, "checkout", "-q", "main")
    commit_file(repo, "README.md", "hello\n", "readme")
    return repo


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def checkout(tmp_path: Path, origin: Path, cache: Path) -> tuple[Path, str]:
    mirror = ws.ensure_mirror(cache, str(origin))
    base = ws.resolve_ref(mirror, None)
    dest = tmp_path / "work" / "repo"
    ws.create_checkout(mirror, dest, base)
    return dest, base


def parents(repo: Path, sha: str) -> list[str]:
    return sh(repo, "rev-list", "--parents", "-n", "1", sha).split()[1:]


def tree(repo: Path, sha: str) -> set[str]:
    return set(sh(repo, "ls-tree", "-r", "--name-only", sha).splitlines())


def branch_sha(repo: Path, branch: str) -> str | None:
    done = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


# --- the git helper and paths ---------------------------------------------------------------


def test_git_error_names_command_exit_code_and_stderr(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError) as info:
        ws.git(["rev-parse", "HEAD"], tmp_path)
    message = str(info.value)
    assert "git rev-parse HEAD" in message
    assert "exit code 128" in message
    assert "not a git repository" in message


def test_git_error_hides_credentials_in_urls(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError) as info:
        ws.git(["ls-remote", "file://user:s3cret@localhost/nowhere"], tmp_path)
    assert "s3cret" not in str(info.value)
    assert "file://***@localhost/nowhere" in str(info.value)


def test_safe_child_joins_inside_root(tmp_path: Path) -> None:
    assert ws.safe_child(tmp_path, "a", "b") == tmp_path.resolve() / "a" / "b"
    assert ws.safe_child(tmp_path, "a/../b") == tmp_path.resolve() / "b"


@pytest.mark.parametrize(
    "parts",
    [("..",), ("a", "..", ".."), ("a/../../x",), ("/etc",), ("a", "/etc/passwd"), (".",), ("",)],
)
def test_safe_child_rejects_escapes(tmp_path: Path, parts: tuple[str, ...]) -> None:
    with pytest.raises(WorkspaceError, match="outside"):
        ws.safe_child(tmp_path / "root", *parts)


def test_safe_child_rejects_symlink_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(WorkspaceError, match="outside"):
        ws.safe_child(root, "link", "x")


def test_task_dir(tmp_path: Path) -> None:
    assert ws.task_dir(tmp_path, "r1", "t1") == tmp_path.resolve() / "runs" / "r1" / "t1"
    for run_id, task_id in [("..", "x"), ("../cache", "t"), ("r1", ".."), ("r1", "/tmp")]:
        with pytest.raises(WorkspaceError):
            ws.task_dir(tmp_path, run_id, task_id)


def test_remove_tree(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_text("x")
    ws.remove_tree(tmp_path / "d")
    ws.remove_tree(tmp_path / "d")  # missing: fine
    (tmp_path / "file").write_text("x")
    ws.remove_tree(tmp_path / "file")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["ado/fix-lint", "feature_1", "a.b/c"])
def test_validate_branch_name_accepts(name: str) -> None:
    ws.validate_branch_name(name)


@pytest.mark.parametrize("name", ["", "HEAD", "-x", "a b", "a..b", "x.lock", "a/", "a~1", "a:b"])
def test_validate_branch_name_rejects(name: str) -> None:
    with pytest.raises(WorkspaceError, match="is not valid; expected a git branch name"):
        ws.validate_branch_name(name)


# --- the clone cache ------------------------------------------------------------------------


def test_mirror_path_is_named_and_hashed(tmp_path: Path) -> None:
    a = ws.mirror_path(tmp_path, "git@github.com:owner/My Repo.git")
    b = ws.mirror_path(tmp_path, "https://github.com/owner/My Repo.git")
    assert a.name.startswith("My-Repo-") and a.name.endswith(".git")
    assert a != b and len(a.name) == len("My-Repo-") + 12 + len(".git")
    assert ws.mirror_path(tmp_path, "https://host/..").name.startswith("repo-")


def test_mirror_created_then_refreshed(origin: Path, cache: Path) -> None:
    mirror = ws.ensure_mirror(cache, str(origin))
    assert mirror == ws.mirror_path(cache, str(origin)) and mirror.is_dir()
    assert sh(mirror, "rev-parse", "--is-bare-repository") == "true"
    assert sh(mirror, "config", "gc.auto") == "0"
    assert ws.resolve_ref(mirror, "main") == sh(origin, "rev-parse", "main")

    new = commit_file(origin, "later.txt", "later\n", "upstream moves on")
    sh(origin, "branch", "-D", "feature")
    assert ws.ensure_mirror(cache, str(origin)) == mirror
    assert ws.resolve_ref(mirror, "main") == new
    with pytest.raises(WorkspaceError):  # pruned
        ws.resolve_ref(mirror, "feature")


def test_mirror_clone_failure_leaves_nothing(tmp_path: Path, cache: Path) -> None:
    url = str(tmp_path / "no-such-repo")
    with pytest.raises(WorkspaceError) as info:
        ws.ensure_mirror(cache, url)
    assert "git clone --mirror" in str(info.value) and url in str(info.value)
    assert not ws.mirror_path(cache, url).exists()
    assert [p.name for p in cache.iterdir()] == [ws.mirror_path(cache, url).stem + ".lock"]


def test_mirror_shared_by_concurrent_callers(origin: Path, cache: Path) -> None:
    with ThreadPoolExecutor(4) as pool:
        mirrors = list(pool.map(lambda _: ws.ensure_mirror(cache, str(origin)), range(4)))
    assert len(set(mirrors)) == 1
    assert sh(mirrors[0], "fsck", "--no-progress") == ""


def test_resolve_ref(origin: Path, cache: Path) -> None:
    mirror = ws.ensure_mirror(cache, str(origin))
    main = sh(origin, "rev-parse", "main")
    feature = sh(origin, "rev-parse", "feature")
    assert ws.resolve_ref(mirror, None) == main
    assert ws.resolve_ref(mirror, "feature") == feature
    assert ws.resolve_ref(mirror, "v1") == sh(origin, "rev-parse", "v1^{commit}")
    assert ws.resolve_ref(mirror, feature) == feature
    assert ws.resolve_ref(mirror, feature[:10]) == feature
    with pytest.raises(WorkspaceError) as info:
        ws.resolve_ref(mirror, "nope")
    assert str(info.value) == (
        f"ref 'nope' not found in {origin}; expected a branch, tag or commit that exists there"
    )
    with pytest.raises(WorkspaceError, match="not found"):
        ws.resolve_ref(mirror, "0" * 40)


# --- checkout and commit --------------------------------------------------------------------


def test_create_checkout_at_sha_and_again_over_it(
    tmp_path: Path, origin: Path, cache: Path
) -> None:
    mirror = ws.ensure_mirror(cache, str(origin))
    dest = tmp_path / "work" / "repo"
    feature = ws.resolve_ref(mirror, "feature")
    ws.create_checkout(mirror, dest, feature)
    assert sh(dest, "rev-parse", "HEAD") == feature
    assert (dest / "feature.txt").read_text() == "feature\n"
    assert not (dest / "README.md").exists()
    assert (dest / ".git" / "objects" / "info" / "alternates").is_file()
    assert sh(dest, "status", "--porcelain") == ""

    (dest / "junk.txt").write_text("left over")
    main = ws.resolve_ref(mirror, "main")
    ws.create_checkout(mirror, dest, main)
    assert sh(dest, "rev-parse", "HEAD") == main
    assert not (dest / "junk.txt").exists() and (dest / "README.md").is_file()


def test_commit_changes_makes_one_commit_on_base(checkout: tuple[Path, str]) -> None:
    repo, base = checkout
    (repo / "README.md").write_text("changed\n")
    (repo / "new.txt").write_text("new\n")
    (repo / ".gitignore").unlink()
    sha = ws.commit_changes(repo, base, "ado/x", "Fix things\n\n#42 kept", "Ado Bot", "bot@x.io")
    assert sha is not None
    assert parents(repo, sha) == [base]
    assert branch_sha(repo, "ado/x") == sha
    assert tree(repo, sha) == {"README.md", "new.txt"}
    log = sh(repo, "log", "-1", "--format=%an|%ae|%cn|%ce|%B", sha)
    assert log == "Ado Bot|bot@x.io|Ado Bot|bot@x.io|Fix things\n\n#42 kept"
    assert sh(repo, "status", "--porcelain") == ""


def test_commit_changes_without_change_returns_none(checkout: tuple[Path, str]) -> None:
    repo, base = checkout
    (repo / "debug.log").write_text("ignored\n")
    assert ws.commit_changes(repo, base, "ado/x", "msg", "Ado Bot", "bot@x.io") is None
    assert branch_sha(repo, "ado/x") is None
    assert sh(repo, "rev-parse", "HEAD") == base


def test_commit_changes_squashes_agent_commits(checkout: tuple[Path, str]) -> None:
    repo, base = checkout
    sh(repo, "checkout", "-q", "-b", "agent-work")
    commit_file(repo, "one.txt", "1\n", "agent 1")
    agent_head = commit_file(repo, "two.txt", "2\n", "agent 2")
    (repo / "three.txt").write_text("3\n")  # and something uncommitted
    sha = ws.commit_changes(repo, base, "ado/x", "squashed", "Ado Bot", "bot@x.io")
    assert sha is not None
    assert parents(repo, sha) == [base]
    assert {"one.txt", "two.txt", "three.txt"} <= tree(repo, sha)
    assert sh(repo, "log", "-1", "--format=%an", sha) == "Ado Bot"
    assert branch_sha(repo, "agent-work") == agent_head  # the agent's branch is untouched


def test_commit_changes_agent_commits_that_cancel_out(checkout: tuple[Path, str]) -> None:
    repo, base = checkout
    commit_file(repo, "tmp.txt", "x\n", "add")
    sh(repo, "rm", "-q", "tmp.txt")
    sh(repo, "commit", "-q", "-m", "remove")
    assert ws.commit_changes(repo, base, "ado/x", "msg", "Ado Bot", "bot@x.io") is None
    assert branch_sha(repo, "ado/x") is None


def test_commit_changes_keeps_ignored_files_out(checkout: tuple[Path, str]) -> None:
    repo, base = checkout
    (repo / "debug.log").write_text("noise\n")
    (repo / "forced.log").write_text("forced\n")
    sh(repo, "add", "-f", "forced.log")
    sh(repo, "commit", "-q", "-m", "agent forces an ignored file")
    (repo / "keep.txt").write_text("keep\n")
    sha = ws.commit_changes(repo, base, "ado/x", "msg", "Ado Bot", "bot@x.io")
    assert sha is not None
    assert tree(repo, sha) == {".gitignore", "README.md", "keep.txt"}


def test_commit_changes_runs_no_hooks(checkout: tuple[Path, str]) -> None:
    repo, base = checkout
    hooks = repo / ".git" / "hooks"
    for hook in ("pre-commit", "commit-msg", "prepare-commit-msg", "post-commit"):
        (hooks / hook).write_text("#!/bin/sh\necho hook ran >&2\nexit 1\n")
        (hooks / hook).chmod(0o755)
    (repo / "new.txt").write_text("new\n")
    assert ws.commit_changes(repo, base, "ado/x", "msg", "Ado Bot", "bot@x.io") is not None


def test_commit_changes_moves_an_existing_branch(checkout: tuple[Path, str]) -> None:
    repo, base = checkout
    (repo / "a.txt").write_text("a\n")
    first = ws.commit_changes(repo, base, "ado/x", "first", "Ado Bot", "bot@x.io")
    (repo / "b.txt").write_text("b\n")
    second = ws.commit_changes(repo, base, "ado/x", "second", "Ado Bot", "bot@x.io")
    assert second is not None and second != first
    assert parents(repo, second) == [base] and branch_sha(repo, "ado/x") == second
    assert tree(repo, second) >= {"a.txt", "b.txt"}


def test_existing_commit(checkout: tuple[Path, str]) -> None:
    repo, base = checkout
    assert ws.existing_commit(repo, base, "ado/x") is None
    (repo / "new.txt").write_text("new\n")
    sha = ws.commit_changes(repo, base, "ado/x", "msg", "Ado Bot", "bot@x.io")
    assert sha is not None
    assert ws.existing_commit(repo, base, "ado/x") == sha
    sh(repo, "branch", "at-base", base)
    assert ws.existing_commit(repo, base, "at-base") is None
    sh(repo, "checkout", "-q", "ado/x")
    commit_file(repo, "more.txt", "more\n", "second commit on top")
    assert ws.existing_commit(repo, base, "ado/x") is None


# --- publishing -----------------------------------------------------------------------------


@pytest.fixture
def committed(checkout: tuple[Path, str]) -> tuple[Path, str]:
    repo, base = checkout
    (repo / "new.txt").write_text("new\n")
    sha = ws.commit_changes(repo, base, "ado/x", "msg", "Ado Bot", "bot@x.io")
    assert sha is not None
    return repo, sha


def test_push_branch_pushes_once(committed: tuple[Path, str], origin: Path) -> None:
    repo, sha = committed
    assert ws.push_branch(repo, str(origin), sha, "ado/x") == "pushed"
    assert sh(origin, "rev-parse", "refs/heads/ado/x") == sha
    assert ws.push_branch(repo, str(origin), sha, "ado/x") == "up-to-date"


def test_push_branch_file_url(committed: tuple[Path, str], origin: Path) -> None:
    repo, sha = committed
    assert ws.push_branch(repo, f"file://{origin}", sha, "ado/y") == "pushed"
    assert sh(origin, "rev-parse", "refs/heads/ado/y") == sha


def test_push_branch_never_overwrites(committed: tuple[Path, str], origin: Path) -> None:
    repo, sha = committed
    main = sh(origin, "rev-parse", "main")
    sh(origin, "branch", "taken", main)
    with pytest.raises(WorkspaceError) as info:
        ws.push_branch(repo, str(origin), sha, "taken")
    assert str(info.value) == (
        f"branch taken already exists in {origin} at {main[:12]}; "
        f"expected it absent or at {sha[:12]}; "
        "choose another --name or --branch, or delete that branch"
    )
    assert sh(origin, "rev-parse", "refs/heads/taken") == main


def test_push_branch_to_missing_remote_fails(committed: tuple[Path, str], tmp_path: Path) -> None:
    repo, sha = committed
    with pytest.raises(WorkspaceError, match=r"push .* does not appear to be a git repository"):
        ws.push_branch(repo, str(tmp_path / "gone"), sha, "ado/x")
