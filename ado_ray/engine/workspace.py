"""Git, owned by the runner: the per-node clone cache, fresh checkouts, commits and pushes.

The agent only edits files; every git command ado-ray needs runs here, through `git()`.
All functions block (they run git as a subprocess); the runner calls them through
`asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from ado_ray.errors import WorkspaceError

LOCAL_TIMEOUT_S = 120.0
NETWORK_TIMEOUT_S = 1800.0  # clone, fetch, ls-remote, push

# Inherited variables that would point git at some other repository than `cwd`.
_REPO_ENV = frozenset(("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR")).union(
    ("GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE")
)
_NO_HOOKS = ("-c", "core.hooksPath=/dev/null")
_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")


def _error(message: str) -> WorkspaceError:
    """The error, with `user:token@` in URLs hidden: messages reach logs and the database."""
    return WorkspaceError(_CREDENTIALS.sub(r"\1***@", message))


def _run(
    args: Sequence[str],
    cwd: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = LOCAL_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in _REPO_ENV} | dict(env or {})
    full_env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", LC_ALL="C")
    try:
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        command = f"git {' '.join(args)} (in {cwd})"
        raise _error(f"{command} did not finish within {timeout:g} s; it was killed") from exc
    except FileNotFoundError as exc:
        raise WorkspaceError("git not found; expected the git program on PATH") from exc


def git(
    args: Sequence[str],
    cwd: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = LOCAL_TIMEOUT_S,
) -> str:
    """Run `git *args` in `cwd` and return its stripped stdout; raise WorkspaceError on failure."""
    done = _run(args, cwd, env=env, timeout=timeout)
    if done.returncode != 0:
        raise _failed(args, cwd, done)
    return done.stdout.strip()


def _failed(
    args: Sequence[str], cwd: Path | None, done: subprocess.CompletedProcess[str]
) -> WorkspaceError:
    tail = "\n".join(done.stderr.strip().splitlines()[-5:]) or "(no error output)"
    command = f"git {' '.join(args)} (in {cwd})"
    return _error(f"{command} failed with exit code {done.returncode}: {tail}")


def _not_an_option(value: str, what: str) -> None:
    if value.startswith("-"):
        raise WorkspaceError(f"{what} {value!r} starts with '-'; expected a {what}, not an option")


# --- paths ----------------------------------------------------------------------------------


def safe_child(root: Path, *parts: str) -> Path:
    """`root/parts...` resolved; WorkspaceError unless it lies strictly inside `root`."""
    base = root.resolve()
    if any("\0" in part for part in parts):
        raise WorkspaceError(f"path part {parts!r} contains a NUL byte; expected plain names")
    path = base.joinpath(*parts).resolve()
    if path == base or not path.is_relative_to(base):
        raise WorkspaceError(
            f"path {'/'.join(parts)!r} resolves to {path}, outside {base}; "
            "expected names without '..', '/' at the start or symlinks leading out"
        )
    return path


def task_dir(work_root: Path, run_id: str, task_id: str) -> Path:
    """The task's private directory: `work_root/runs/<run_id>/<task_id>`."""
    return safe_child(safe_child(work_root / "runs", run_id), task_id)


def remove_tree(path: Path) -> None:
    """Remove a directory tree (or a file or symlink); a missing path is fine."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path)


# --- the clone cache ------------------------------------------------------------------------


def mirror_path(cache_root: Path, url: str) -> Path:
    """Where the bare mirror of `url` lives: `<sanitised-name>-<sha256(url)[:12]>.git`."""
    last = re.split(r"[/:\\]", url.rstrip("/"))[-1].removesuffix(".git")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip(".-")[:40] or "repo"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return cache_root / f"{name}-{digest}.git"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def ensure_mirror(cache_root: Path, url: str) -> Path:
    """Clone `url` into the node's cache as a bare mirror, or refresh the mirror; return it.

    A new mirror is cloned into a temporary directory and renamed into place, so a crash
    never leaves half a mirror. One lock file per mirror serialises runs sharing the node.
    """
    _not_an_option(url, "repository URL")
    cache_root.mkdir(parents=True, exist_ok=True)
    mirror = mirror_path(cache_root, url)
    with _locked(mirror.with_suffix(".lock")):
        if mirror.is_dir():
            fetch = ["fetch", "--prune", "--quiet", "origin", "+refs/*:refs/*"]
            git(fetch, mirror, timeout=NETWORK_TIMEOUT_S)
            return mirror
        tmp_prefix = f".tmp-{mirror.stem}-"
        for stale in cache_root.glob(tmp_prefix + "*"):  # left by a crash; we hold the lock
            remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=cache_root))
        try:
            staged = tmp / "mirror.git"
            # gc.auto=0: checkouts borrow the mirror's objects, so it must never prune them.
            clone = [
                "clone",
                "--mirror",
                "--quiet",
                "--config",
                "gc.auto=0",
                "--",
                url,
                str(staged),
            ]
            git(clone, tmp, timeout=NETWORK_TIMEOUT_S)
            staged.rename(mirror)
        finally:
            remove_tree(tmp)
    return mirror


def resolve_ref(mirror: Path, ref: str | None) -> str:
    """The full commit SHA of `ref` (branch, tag or SHA) in `mirror`, or of its HEAD."""
    name = "HEAD" if ref is None else ref
    _not_an_option(name, "ref")
    done = _run(["rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"], mirror)
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    url = _run(["config", "--get", "remote.origin.url"], mirror).stdout.strip() or str(mirror)
    if ref is None:
        raise _error(f"{url} has no default branch with a commit; expected a ref to be given")
    raise _error(
        f"ref {ref!r} not found in {url}; expected a branch, tag or commit that exists there"
    )


# --- the task's checkout --------------------------------------------------------------------


def create_checkout(mirror: Path, dest: Path, sha: str) -> None:
    """A fresh checkout of `sha` at `dest` (replacing anything there), sharing mirror objects."""
    _not_an_option(sha, "commit")
    remove_tree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clone = ["clone", "--shared", "--no-checkout", "--quiet", "--", str(mirror), str(dest)]
    git(clone, dest.parent)
    git(["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", sha], dest)


def validate_branch_name(name: str) -> None:
    """Raise WorkspaceError unless `name` is a valid git branch name."""
    problem = name in {"", "HEAD", "@"} or name.startswith("-")
    if not problem:
        problem = _run(["check-ref-format", "--branch", name], None).returncode != 0
    if problem:
        raise WorkspaceError(
            f"branch name {name!r} is not valid; expected a git branch name such as "
            "'ado/fix-lint' (no spaces, '..', '~', '^', ':', leading '-' or trailing '.lock')"
        )


def commit_changes(
    repo: Path,
    base_sha: str,
    branch: str,
    message: str,
    author_name: str,
    author_email: str,
) -> str | None:
    """Commit everything the agent changed as exactly one commit on `base_sha`.

    Commits the agent made are squashed; files ignored by .gitignore stay out (also ones the
    agent forced in). Returns the new commit, now at local branch `branch`, or None when
    nothing differs from `base_sha` (and no branch is created). Hooks never run.
    `branch` must have passed `validate_branch_name` (the driver checks it once per run).
    """
    _not_an_option(base_sha, "commit")
    # Detach HEAD at the base without touching any branch the agent made, then rebuild the
    # index from the base and the working tree.
    git(["update-ref", "--no-deref", "HEAD", base_sha], repo)
    git(["reset", "--quiet", "--mixed"], repo)
    git(["add", "--all"], repo)
    if _run(["diff", "--cached", "--quiet"], repo).returncode == 0:
        return None
    # Both -c and the environment: an inherited GIT_AUTHOR_* would otherwise win over -c.
    identity = {f"GIT_{who}_NAME": author_name for who in ("AUTHOR", "COMMITTER")}
    identity |= {f"GIT_{who}_EMAIL": author_email for who in ("AUTHOR", "COMMITTER")}
    config = ["-c", f"user.name={author_name}", "-c", f"user.email={author_email}"]
    config += [*_NO_HOOKS, "-c", "commit.gpgSign=false"]
    commit = ["commit", "--quiet", "--no-verify", "--cleanup=verbatim", "-m", message]
    git([*config, *commit], repo, env=identity)
    git(["checkout", "--quiet", "-B", branch], repo)
    return git(["rev-parse", "HEAD"], repo)


def existing_commit(repo: Path, base_sha: str, branch: str) -> str | None:
    """For resume: the commit at local `branch` if its only parent is `base_sha`, else None."""
    done = _run(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"], repo)
    if done.returncode != 0:
        return None
    sha = done.stdout.strip()
    shas = git(["rev-list", "--parents", "-n", "1", sha], repo).split()
    base = _run(["rev-parse", "--verify", "--quiet", f"{base_sha}^{{commit}}"], repo)
    if base.returncode == 0 and shas[1:] == [base.stdout.strip()]:
        return sha
    return None


# --- publishing -----------------------------------------------------------------------------


def push_branch(repo: Path, remote_url: str, sha: str, branch: str) -> str:
    """Publish `sha` as `branch` in `remote_url`, once: "pushed" or "up-to-date". Never forces."""
    _not_an_option(remote_url, "repository URL")
    _not_an_option(sha, "commit")
    ref = f"refs/heads/{branch}"
    # --force-with-lease=<ref>: with no value: the push succeeds only if the branch is
    # absent (or already at `sha`: "up to date"). One call, and nothing is overwritten.
    push = [*_NO_HOOKS, "push", "--porcelain", "--no-verify", f"--force-with-lease={ref}:"]
    done = _run([*push, remote_url, f"{sha}:{ref}"], repo, timeout=NETWORK_TIMEOUT_S)
    # --porcelain: one "<flag>\t<from>:<to>\t<summary>" line per ref ("=" up to date, "!" rejected)
    flags = [line[0] for line in done.stdout.splitlines() if line[1:2] == "\t"]
    if done.returncode == 0:
        return "up-to-date" if flags == ["="] else "pushed"
    if flags != ["!"]:  # not a rejection: the remote is unreachable or broken
        raise _failed([*push, remote_url, f"{sha}:{ref}"], repo, done)
    listing = git(["ls-remote", remote_url, ref], repo, timeout=NETWORK_TIMEOUT_S)
    remote_sha = listing.split("\t", 1)[0] if listing else "(unknown)"
    raise _error(
        f"branch {branch} already exists in {remote_url} at {remote_sha[:12]}; "
        f"expected it absent or at {sha[:12]}; "
        "choose another --name or --branch, or delete that branch"
    )
