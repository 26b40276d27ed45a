"""The runner's git, against real repositories made in tmp_path."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from ado_ray.engine import workspace as ws
from ado_ray.errors import GitAuthError, WorkspaceError

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


def test_mirror_clone_replaces_what_a_crashed_clone_left(origin: Path, cache: Path) -> None:
    url = str(origin)
    staging = cache / f".tmp-{ws.mirror_path(cache, url).stem}-staging"
    (staging / "mirror.git").mkdir(parents=True)  # a clone killed half-way
    (staging / "mirror.git" / "HEAD").write_text("garbage")
    mirror = ws.ensure_mirror(cache, url)
    assert ws.resolve_ref(mirror, "main") == sh(origin, "rev-parse", "main")
    assert not staging.exists()
    assert sorted(p.name for p in cache.iterdir()) == sorted([mirror.name, mirror.stem + ".lock"])


def test_mirror_and_checkout_get_no_template_files(checkout: tuple[Path, str], cache: Path) -> None:
    repo, _ = checkout
    (mirror,) = cache.glob("*.git")
    for git_dir in (mirror, repo / ".git"):  # no sample hooks, description, info/exclude
        assert not (git_dir / "hooks").exists() and not (git_dir / "description").exists()


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


def test_commit_changes_without_change_on_a_branch_of_the_agent(checkout: tuple[Path, str]) -> None:
    repo, base = checkout
    sh(repo, "checkout", "-q", "-b", "agent-work")  # at the base, nothing else
    assert ws.commit_changes(repo, base, "ado/x", "msg", "Ado Bot", "bot@x.io") is None
    assert branch_sha(repo, "ado/x") is None


def test_commit_changes_sees_a_mode_change_alone(checkout: tuple[Path, str]) -> None:
    repo, base = checkout
    (repo / "README.md").chmod(0o755)
    sha = ws.commit_changes(repo, base, "ado/x", "msg", "Ado Bot", "bot@x.io")
    assert sha is not None
    assert sh(repo, "ls-tree", sha, "README.md").startswith("100755 ")


def test_commit_changes_sees_an_untracked_directory(checkout: tuple[Path, str]) -> None:
    repo, base = checkout
    (repo / "pkg" / "sub").mkdir(parents=True)
    (repo / "pkg" / "sub" / "mod.py").write_text("x = 1\n")
    sha = ws.commit_changes(repo, base, "ado/x", "msg", "Ado Bot", "bot@x.io")
    assert sha is not None
    assert "pkg/sub/mod.py" in sh(repo, "ls-tree", "-r", "--name-only", sha).split()


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
    hooks.mkdir(exist_ok=True)  # checkouts get no template (so no hooks directory)
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
    with pytest.raises(WorkspaceError) as info:
        ws.push_branch(repo, str(tmp_path / "gone"), sha, "ado/x")
    assert not isinstance(info.value, GitAuthError)  # not every failure is about credentials


def other_commit(origin: Path, branch: str) -> str:
    """A commit on main's parent, so not an ancestor of the task's commit; at `branch`."""
    sha = sh(origin, "commit-tree", "-p", "main~1", "-m", "someone else", "main~1^{tree}")
    sh(origin, "branch", "-f", branch, sha)
    return sha


def test_push_branch_expect_sha_replaces_what_it_expects(
    committed: tuple[Path, str], origin: Path
) -> None:
    repo, sha = committed
    old = other_commit(origin, "ado/x")
    assert ws.push_branch(repo, str(origin), sha, "ado/x", expect=old) == "pushed"
    assert sh(origin, "rev-parse", "refs/heads/ado/x") == sha
    is_ancestor = ["git", "merge-base", "--is-ancestor", old, sha]
    assert subprocess.run(is_ancestor, cwd=origin, check=False).returncode == 1  # not a ff
    # A retry of a push that did succeed finds the branch at sha: fine, whatever it expected.
    assert ws.push_branch(repo, str(origin), sha, "ado/x", expect=old) == "up-to-date"


def test_push_branch_expect_sha_refuses_a_branch_that_moved(
    committed: tuple[Path, str], origin: Path
) -> None:
    repo, sha = committed
    moved = other_commit(origin, "ado/x")
    expected = sh(origin, "rev-parse", "main")
    with pytest.raises(WorkspaceError) as info:
        ws.push_branch(repo, str(origin), sha, "ado/x", expect=expected)
    message = str(info.value)
    assert message.startswith(
        f"branch ado/x in {origin} is at {moved[:12]}; expected it at {expected[:12]} "
        f"(to replace it with {sha[:12]})"
    )
    assert sh(origin, "rev-parse", "refs/heads/ado/x") == moved
    with pytest.raises(
        WorkspaceError, match=rf"ado/y in .* is absent; expected it at {expected[:12]}"
    ):
        ws.push_branch(repo, str(origin), sha, "ado/y", expect=expected)
    assert branch_sha(origin, "ado/y") is None


def test_push_branch_expect_none_forces(committed: tuple[Path, str], origin: Path) -> None:
    repo, sha = committed
    other_commit(origin, "ado/x")
    assert ws.push_branch(repo, str(origin), sha, "ado/x", expect=None) == "pushed"
    assert sh(origin, "rev-parse", "refs/heads/ado/x") == sha
    assert ws.push_branch(repo, str(origin), sha, "ado/new", expect=None) == "pushed"


def test_push_branch_says_why_the_server_refused(committed: tuple[Path, str], origin: Path) -> None:
    repo, sha = committed
    hook = origin / ".git" / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'ado/* is a protected branch' >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(WorkspaceError) as info:
        ws.push_branch(repo, str(origin), sha, "ado/x")
    message = str(info.value)
    assert "remote: ado/* is a protected branch" in message
    assert "the push was [remote rejected] (pre-receive hook declined)" in message
    assert "already exists" not in message and not isinstance(info.value, GitAuthError)


@pytest.mark.parametrize(
    "refusal",
    [
        "Permission to acme/r.git denied to ado-bot.",
        "HTTP Basic: Access denied",
        "Authentication failed for https://example.com/acme/r.git/",
    ],
)
def test_push_branch_refused_credentials_raise_git_auth_error(
    committed: tuple[Path, str], origin: Path, refusal: str
) -> None:
    """What forges print (as `remote:` lines) when a token may not push."""
    repo, sha = committed
    hook = origin / ".git" / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\necho '{refusal}' >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(GitAuthError, match="the git server refused the credentials") as info:
        ws.push_branch(repo, str(origin), sha, "ado/x")
    assert f"remote: {refusal}" in str(info.value)
    assert isinstance(info.value, WorkspaceError)


def test_remote_branch_sha(origin: Path) -> None:
    main = sh(origin, "rev-parse", "main")
    assert ws.remote_branch_sha(str(origin), "main") == main
    assert ws.remote_branch_sha(f"file://{origin}", "feature") == sh(origin, "rev-parse", "feature")
    assert ws.remote_branch_sha(str(origin), "ado/x") is None
    sh(origin, "branch", "deep/refs/heads/ado/x", main)  # ls-remote would match its tail
    assert ws.remote_branch_sha(str(origin), "ado/x") is None
    assert ws.remote_branch_sha(str(origin), "v1") is None  # a tag, not a branch
    with pytest.raises(WorkspaceError, match="starts with '-'"):
        ws.remote_branch_sha("--upload-pack=touch /tmp/x", "main")


# --- bundles --------------------------------------------------------------------------------


def test_bundle_restores_the_commit_in_another_place(
    committed: tuple[Path, str], origin: Path, cache: Path, tmp_path: Path
) -> None:
    repo, sha = committed
    base = parents(repo, sha)[0]
    tree_sha = sh(repo, "rev-parse", f"{sha}^{{tree}}")
    data = ws.create_bundle(repo, base, sha)
    assert data.startswith(b"# v2 git bundle\n")
    assert branch_sha(repo, "ado/x") == sha
    assert sh(repo, "for-each-ref", "refs/ado") == ""  # the temporary ref is gone
    ws.remove_tree(repo)

    dest = tmp_path / "elsewhere" / "repo"
    mirror = ws.mirror_path(cache, str(origin))
    ws.restore_bundle(mirror, dest, base, data, sha, "ado/x")
    assert sh(dest, "rev-parse", "HEAD") == sha
    assert branch_sha(dest, "ado/x") == sha
    assert sh(dest, "symbolic-ref", "HEAD") == "refs/heads/ado/x"
    assert sh(dest, "rev-parse", f"{sha}^{{tree}}") == tree_sha
    assert (dest / "new.txt").read_text() == "new\n"
    assert sh(dest, "status", "--porcelain") == ""
    assert ws.existing_commit(dest, base, "ado/x") == sha  # what resume looks for
    assert ws.push_branch(dest, str(origin), sha, "ado/x") == "pushed"
    assert sh(origin, "rev-parse", "refs/heads/ado/x") == sha


def test_bundle_holds_only_what_the_base_lacks(committed: tuple[Path, str]) -> None:
    repo, sha = committed
    base = parents(repo, sha)[0]
    big = ws.create_bundle(repo, sh(repo, "rev-list", "--max-parents=0", base), sha)
    small = ws.create_bundle(repo, base, sha)
    assert len(small) < len(big)
    assert ws.create_bundle(repo, base, sha) == small  # the same commit, the same bytes


def test_restore_bundle_refuses_a_bundle_of_another_commit(
    committed: tuple[Path, str], origin: Path, cache: Path, tmp_path: Path
) -> None:
    repo, sha = committed
    base = parents(repo, sha)[0]
    data = ws.create_bundle(repo, base, sha)
    mirror = ws.mirror_path(cache, str(origin))
    dest = tmp_path / "restored"
    wrong = "f" * 40
    with pytest.raises(WorkspaceError) as info:
        ws.restore_bundle(mirror, dest, base, data, wrong, "ado/x")
    assert str(info.value) == (
        f"the stored bundle holds {ws.BUNDLE_REF} at {sha[:12]}; expected {ws.BUNDLE_REF} at "
        "ffffffffffff; the store's bundle and commit disagree: run the task again"
    )
    with pytest.raises(WorkspaceError, match="bundle"):
        ws.restore_bundle(mirror, dest, base, b"not a bundle\n", sha, "ado/x")
    assert branch_sha(dest, "ado/x") is None


def test_restore_bundle_refuses_a_commit_not_on_the_base(
    checkout: tuple[Path, str], origin: Path, cache: Path, tmp_path: Path
) -> None:
    repo, base = checkout
    commit_file(repo, "one.txt", "1\n", "one")
    tip = commit_file(repo, "two.txt", "2\n", "two")  # two commits: not what commit_changes makes
    data = ws.create_bundle(repo, base, tip)
    mirror = ws.mirror_path(cache, str(origin))
    with pytest.raises(
        WorkspaceError, match=rf"parents \['\w{{12}}'\]; expected exactly {base[:12]}"
    ):
        ws.restore_bundle(mirror, tmp_path / "restored", base, data, tip, "ado/x")


# --- diffstat -------------------------------------------------------------------------------


def test_diffstat_counts_files_and_lines(checkout: tuple[Path, str]) -> None:
    repo, base = checkout
    (repo / "README.md").write_text("hello\nworld\n")  # +1
    (repo / ".gitignore").unlink()  # -1
    (repo / "new.txt").write_text("a\nb\nc\n")  # +3
    (repo / "blob.bin").write_bytes(b"\0\1\2")  # binary: a file, no lines
    sha = ws.commit_changes(repo, base, "ado/x", "msg", "Ado Bot", "bot@x.io")
    assert sha is not None
    stat = ws.diffstat(repo, base, sha)
    assert {k: stat[k] for k in ("files", "insertions", "deletions")} == {
        "files": 4,
        "insertions": 4,
        "deletions": 1,
    }
    lines = stat["text"].splitlines()
    assert lines[-1] == " 4 files changed, 4 insertions(+), 1 deletion(-)"
    assert [line.split("|")[0].strip() for line in lines[:-1]] == [
        ".gitignore",
        "README.md",
        "blob.bin",
        "new.txt",
    ]
    assert "Bin 0 -> 3 bytes" in stat["text"]


def test_diffstat_text_is_at_most_50_lines(checkout: tuple[Path, str]) -> None:
    repo, base = checkout
    for i in range(60):
        (repo / f"f{i:02}.txt").write_text(f"{i}\n")
    sha = ws.commit_changes(repo, base, "ado/x", "msg", "Ado Bot", "bot@x.io")
    assert sha is not None
    stat = ws.diffstat(repo, base, sha)
    assert (stat["files"], stat["insertions"], stat["deletions"]) == (60, 60, 0)
    lines = stat["text"].splitlines()
    assert len(lines) == ws.MAX_STAT_LINES == 50
    assert lines[0].startswith(" f00.txt ") and lines[47].startswith(" f47.txt ")
    assert lines[48:] == [" ... and 12 more files", " 60 files changed, 60 insertions(+)"]
    assert ws.diffstat(repo, base, base) == {
        "files": 0,
        "insertions": 0,
        "deletions": 0,
        "text": "",
    }


# --- credentials over HTTP ------------------------------------------------------------------

USER, TOKEN = "x-access-token", "ghs_s3cretToken42"
BASIC = base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()


def test_auth_env_sets_one_header_for_the_origin() -> None:
    env = ws.auth_env("https://ado:old@GitHub.com/acme/r.git", USER, TOKEN)
    assert env == {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.https://github.com/.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {BASIC}",
    }
    assert ws.auth_env("http://[::1]:8080/r", "u", "t")["GIT_CONFIG_KEY_0"] == (
        "http.http://[::1]:8080/.extraHeader"
    )
    for url in ["git@github.com:acme/r.git", "ssh://git@host/r.git", "/srv/r.git", "file:///r"]:
        assert ws.auth_env(url, USER, TOKEN) == {}


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("https://github.com/other/repo.git", True),  # any repository of that origin
        ("https://github.com:443/acme/r.git", True),  # the default port is the same origin
        ("https://github.com:8443/acme/r.git", False),
        ("http://github.com/acme/r.git", False),  # not over plain http
        ("https://api.github.com/acme/r.git", False),
        ("https://github.com.evil.example/acme/r.git", False),
    ],
)
def test_auth_env_header_reaches_only_its_origin(url: str, sent: bool, tmp_path: Path) -> None:
    """As git itself matches `http.<url>.*` settings against a request's URL."""
    env = {**os.environ, **ws.auth_env("https://github.com/acme/r.git", USER, TOKEN)}
    done = subprocess.run(
        ["git", "config", "--get-urlmatch", "http.extraHeader", url],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout.strip() == (f"Authorization: Basic {BASIC}" if sent else "")


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class GitHTTP:
    """Git's smart HTTP protocol for the repositories under `root` (`git http-backend`
    behind a WSGI server on 127.0.0.1), for one username and token: other requests get
    `refusal` (a 401 asks for credentials, as forges do)."""

    CGI_KEYS = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "REMOTE_ADDR")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.refusal = "401 Unauthorized"
        self.seen: list[str | None] = []  # the Authorization header of each request
        self.server = make_server("127.0.0.1", 0, self.app, handler_class=_Quiet)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/{name}"

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        self.seen.append(environ.get("HTTP_AUTHORIZATION"))
        if environ.get("HTTP_AUTHORIZATION") != f"Basic {BASIC}":
            challenge = [("WWW-Authenticate", 'Basic realm="git"')]
            start_response(self.refusal, challenge if self.refusal.startswith("401") else [])
            return [b"no\n"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        cgi = {k: v for k, v in environ.items() if k.startswith("HTTP_") or k in self.CGI_KEYS}
        cgi |= {"CONTENT_LENGTH": str(length), "GIT_PROJECT_ROOT": str(self.root)}
        cgi |= {"GIT_HTTP_EXPORT_ALL": "1", "REMOTE_USER": USER, "PATH": os.environ["PATH"]}
        out = subprocess.run(["git", "http-backend"], input=body, env=cgi, capture_output=True)
        head, _, payload = re.split(rb"(\r?\n\r?\n)", out.stdout, maxsplit=1)
        headers = [tuple(h.split(": ", 1)) for h in head.decode().splitlines()]
        status = dict(headers).pop("Status", "200 OK")
        start_response(status, [h for h in headers if h[0] != "Status"])
        return [payload]


@pytest.fixture
def forge(tmp_path: Path, origin: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHTTP]:
    """`origin` served over HTTP; git sees no user config (no credential helper to ask)."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    server = GitHTTP(origin.parent)
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def files_under(root: Path) -> Iterator[bytes]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path.read_bytes()


def test_clone_fetch_and_push_with_auth_env_store_no_credentials(
    forge: GitHTTP, origin: Path, cache: Path, tmp_path: Path
) -> None:
    url = forge.url("origin")
    env = ws.auth_env(url, USER, TOKEN)
    mirror = ws.ensure_mirror(cache, url, env=env)
    assert ws.resolve_ref(mirror, "main") == sh(origin, "rev-parse", "main")
    config = (mirror / "config").read_text()
    assert TOKEN not in config and BASIC not in config and "extraheader" not in config.lower()
    assert sh(mirror, "config", "remote.origin.url") == url
    for data in files_under(cache):  # nothing anywhere in the cache
        assert TOKEN.encode() not in data and BASIC.encode() not in data

    new = commit_file(origin, "later.txt", "later\n", "upstream moves on")
    assert ws.ensure_mirror(cache, url, env=env) == mirror  # a refresh
    assert ws.resolve_ref(mirror, "main") == new
    assert ws.remote_branch_sha(url, "main", env=env) == new

    dest = tmp_path / "work" / "repo"
    ws.create_checkout(mirror, dest, new)
    (dest / "fix.txt").write_text("fix\n")
    sha = ws.commit_changes(dest, new, "ado/x", "msg", "Ado Bot", "bot@x.io")
    assert sha is not None
    assert ws.push_branch(dest, url, sha, "ado/x", env=env) == "pushed"
    assert sh(origin, "rev-parse", "refs/heads/ado/x") == sha
    assert ws.remote_branch_sha(url, "ado/x", env=env) == sha
    assert ws.push_branch(dest, url, sha, "ado/x", env=env) == "up-to-date"
    assert set(forge.seen) == {f"Basic {BASIC}"}  # every request carried the header
    for data in files_under(dest / ".git"):
        assert TOKEN.encode() not in data and BASIC.encode() not in data


@pytest.mark.parametrize("refusal", ["401 Unauthorized", "403 Forbidden"])
def test_refused_credentials_raise_git_auth_error_without_the_token(
    forge: GitHTTP, cache: Path, committed: tuple[Path, str], refusal: str
) -> None:
    forge.refusal = refusal
    url = forge.url("origin")
    wrong = ws.auth_env(url, USER, "wrong-token-123")
    repo, sha = committed
    calls: list[Callable[[], object]] = [
        lambda: ws.ensure_mirror(cache, url, env=wrong),
        lambda: ws.remote_branch_sha(url, "main", env=wrong),
        lambda: ws.push_branch(repo, url, sha, "ado/x", env=wrong),
        lambda: ws.remote_branch_sha(url, "main"),  # no credentials at all
    ]
    for call in calls:
        with pytest.raises(GitAuthError) as info:
            call()
        message = str(info.value)
        assert "the git server refused the credentials" in message
        assert "wrong-token-123" not in message
        assert wrong["GIT_CONFIG_VALUE_0"].split()[-1] not in message
    assert not ws.mirror_path(cache, url).exists()


def test_credentials_reach_no_other_origin(forge: GitHTTP, origin: Path) -> None:
    other = GitHTTP(origin.parent)  # the same repositories, on another port
    other.thread.start()
    try:
        env = ws.auth_env(forge.url("origin"), USER, TOKEN)
        with pytest.raises(GitAuthError):
            ws.remote_branch_sha(other.url("origin"), "main", env=env)
        assert other.seen and set(other.seen) == {None}
    finally:
        other.server.shutdown()
        other.server.server_close()


def test_a_server_that_echoes_the_credentials_does_not_leak_them(
    forge: GitHTTP, origin: Path, committed: tuple[Path, str]
) -> None:
    """Whatever the server prints comes back in `remote:` lines: the header, the pair."""
    hook = origin / ".git" / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        'echo "got Authorization: $HTTP_AUTHORIZATION" >&2\n'
        'echo "got $HTTP_AUTHORIZATION" >&2\n'
        'echo "$HTTP_AUTHORIZATION" | cut -d" " -f2 | base64 -d >&2\n'
        "exit 1\n"
    )
    hook.chmod(0o755)
    repo, sha = committed
    url = forge.url("origin")
    with pytest.raises(WorkspaceError) as info:
        ws.push_branch(repo, url, sha, "ado/x", env=ws.auth_env(url, USER, TOKEN))
    message = str(info.value)
    # The server did print them, and each form is masked.
    assert "remote: got ***\nremote: got Basic ***\nremote: ***\n" in message
    assert TOKEN not in message and BASIC not in message
