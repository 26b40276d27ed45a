"""Git, owned by the runner: the per-node clone cache, fresh checkouts, commits and pushes.

The agent only edits files; every git command ado-ray needs runs here, through `git()`.
All functions block (they run git as a subprocess); the runner calls them through
`asyncio.to_thread`.
"""

from __future__ import annotations

import base64
import binascii
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
from typing import Any
from urllib.parse import urlsplit

from ado_ray.errors import GitAuthError, OversizedFileError, WorkspaceError

LOCAL_TIMEOUT_S = 120.0
NETWORK_TIMEOUT_S = 1800.0  # clone, fetch, ls-remote, push
MAX_STAT_LINES = 50  # of diffstat's text

# Inherited variables that would point git at some other repository than `cwd`.
_REPO_ENV = frozenset(("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR")).union(
    ("GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE")
)
_NO_HOOKS = ("-c", "core.hooksPath=/dev/null")
_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")
_AUTH_HEADER = re.compile(r"(authorization:\s*(?:\w+\s+)?)\S+", re.IGNORECASE)
# What git (or the server, through "remote:" lines) says when it refuses the credentials.
_AUTH_REFUSED = re.compile(
    r"Authentication failed|could not read (?:Username|Password)|"
    r"The requested URL returned error: 40[13]\b|Permission to .+ denied|"
    r"HTTP Basic: Access denied|Permission denied \(publickey",
    re.IGNORECASE,
)
BUNDLE_REF = "refs/ado/bundle"  # the one ref of every bundle create_bundle writes


def _secrets(env: Mapping[str, str] | None) -> list[str]:
    """The credentials in `env` (auth_env's header, in every form it could be echoed in)."""
    found: list[str] = []
    for key, value in (env or {}).items():
        if not key.startswith("GIT_CONFIG_VALUE_") or not _AUTH_HEADER.match(value):
            continue
        found.append(value)
        encoded = value.split()[-1]
        found.append(encoded)
        with contextlib.suppress(binascii.Error, UnicodeDecodeError):
            pair = base64.b64decode(encoded, validate=True).decode()
            found += [pair, pair.partition(":")[2]]
    # Longest first, so that a secret containing another is hidden whole.
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def _masked(message: str, env: Mapping[str, str] | None = None) -> str:
    """`message` with `user:token@` in URLs, Authorization header values and the
    credentials of `env` hidden: messages reach logs and the database."""
    for secret in _secrets(env):
        message = message.replace(secret, "***")
    message = _AUTH_HEADER.sub(r"\1***", message)
    return _CREDENTIALS.sub(r"\1***@", message)


def _error(message: str, env: Mapping[str, str] | None = None) -> WorkspaceError:
    """A WorkspaceError whose message shows no credentials (see `_masked`)."""
    return WorkspaceError(_masked(message, env))


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
        raise _failed(args, cwd, done, env)
    return done.stdout.strip()


def _failed(
    args: Sequence[str],
    cwd: Path | None,
    done: subprocess.CompletedProcess[str],
    env: Mapping[str, str] | None = None,
) -> WorkspaceError:
    """The error for a git command that failed: `GitAuthError` when the server refused the
    credentials, else `WorkspaceError`; either way without credentials in the message."""
    # rstrip: git pads `remote:` lines with spaces (to overwrite progress output).
    lines = [line.rstrip() for line in done.stderr.strip().splitlines()]
    tail = "\n".join(lines[-5:]) or "(no error output)"
    command = f"git {' '.join(args)} (in {cwd})"
    message = f"{command} failed with exit code {done.returncode}: {tail}"
    if _AUTH_REFUSED.search(done.stderr):
        return GitAuthError(
            _masked(message, env) + "; the git server refused the credentials: check that the "
            "token is set, valid, not expired and allowed to read and push this repository"
        )
    return _error(message, env)


def _not_an_option(value: str, what: str) -> None:
    if value.startswith("-"):
        raise WorkspaceError(f"{what} {value!r} starts with '-'; expected a {what}, not an option")


# --- credentials ----------------------------------------------------------------------------


def auth_env(url: str, username: str, token: str) -> dict[str, str]:
    """Environment for git that sends `username:token` to `url`'s origin, and nowhere else.

    The credentials go in an `http.<scheme>://<host[:port]>/.extraHeader` setting given
    through `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_0`/`GIT_CONFIG_VALUE_0`: never in a URL,
    argv or a file, and only to the git subprocess that gets this environment (not to the
    agent). git matches the key against each request's URL, so a redirect or submodule on
    another host never sees the header. For `https://` and `http://` URLs only; any other
    URL (ssh, scp-like, a local path) gets `{}`.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in {"https", "http"} or not parts.hostname:
        return {}
    host = parts.hostname  # lower case, without user:password@
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    try:
        port = parts.port
    except ValueError as exc:
        raise WorkspaceError(
            f"repository URL {_masked(url)!r} has an invalid port; expected a number"
        ) from exc
    origin = f"{scheme}://{host}" + (f":{port}" if port is not None else "") + "/"
    basic = base64.b64encode(f"{username}:{token}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"http.{origin}.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


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


def ensure_mirror(cache_root: Path, url: str, *, env: Mapping[str, str] | None = None) -> Path:
    """Clone `url` into the node's cache as a bare mirror, or refresh the mirror; return it.

    A new mirror is cloned into a temporary directory and renamed into place, so a crash
    never leaves half a mirror. One lock file per mirror serialises runs sharing the node.
    `env` (such as `auth_env`'s) reaches the git processes only; nothing of it is stored.
    """
    _not_an_option(url, "repository URL")
    cache_root.mkdir(parents=True, exist_ok=True)
    mirror = mirror_path(cache_root, url)
    lock = mirror.with_suffix(".lock")
    with _locked(lock):
        os.utime(lock)  # last used: `ado gc` removes mirrors unused for long
        if mirror.is_dir():
            fetch = ["fetch", "--prune", "--quiet", "origin", "+refs/*:refs/*"]
            git(fetch, mirror, env=env, timeout=NETWORK_TIMEOUT_S)
            return mirror
        # One name per mirror, not a random one: we hold its lock, and anything there is a
        # crash's leftover (no listing of a cache of thousands of mirrors to find it).
        tmp = cache_root / f".tmp-{mirror.stem}-staging"
        remove_tree(tmp)
        tmp.mkdir()
        try:
            staged = tmp / "mirror.git"
            # gc.auto=0: checkouts borrow the mirror's objects, so it must never prune them.
            # --template=: no sample hooks or other template files (none is ever used).
            clone = ["clone", "--mirror", "--quiet", "--template=", "--config", "gc.auto=0"]
            clone += ["--", url, str(staged)]
            git(clone, tmp, env=env, timeout=NETWORK_TIMEOUT_S)
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
    # --template=: no sample hooks and such to write now and delete after (hooks never run).
    clone = ["clone", "--shared", "--no-checkout", "--quiet", "--template="]
    clone += ["--", str(mirror), str(dest)]
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
    max_file_bytes: int | None = None,
) -> str | None:
    """Commit everything the agent changed as exactly one commit on `base_sha`.

    Commits the agent made are squashed; files ignored by .gitignore stay out (also ones the
    agent forced in). Returns the new commit, now at local branch `branch`, or None when
    nothing differs from `base_sha` (and no branch is created). Hooks never run.
    `branch` must have passed `validate_branch_name` (the driver checks it once per run).
    An added or changed file over `max_file_bytes` raises `OversizedFileError` (nothing is
    committed).
    """
    _not_an_option(base_sha, "commit")
    if _untouched(repo, base_sha):  # the common case of a run that changes nothing
        return None
    # Detach HEAD at the base without touching any branch the agent made, then rebuild the
    # index from the base and the working tree.
    git(["update-ref", "--no-deref", "HEAD", base_sha], repo)
    git(["reset", "--quiet", "--mixed"], repo)
    git(["add", "--all"], repo)
    if _run(["diff", "--cached", "--quiet"], repo).returncode == 0:
        return None
    if max_file_bytes is not None:
        _check_sizes(repo, max_file_bytes)
    # Both -c and the environment: an inherited GIT_AUTHOR_* would otherwise win over -c.
    identity = {f"GIT_{who}_NAME": author_name for who in ("AUTHOR", "COMMITTER")}
    identity |= {f"GIT_{who}_EMAIL": author_email for who in ("AUTHOR", "COMMITTER")}
    config = ["-c", f"user.name={author_name}", "-c", f"user.email={author_email}"]
    config += [*_NO_HOOKS, "-c", "commit.gpgSign=false"]
    commit = ["commit", "--quiet", "--no-verify", "--cleanup=verbatim", "-m", message]
    git([*config, *commit], repo, env=identity)
    git(["checkout", "--quiet", "-B", branch], repo)
    return git(["rev-parse", "HEAD"], repo)


def _untouched(repo: Path, base_sha: str) -> bool:
    """Whether the checkout is `base_sha` as checked out, in one git command: HEAD at it and
    nothing staged, changed or untracked outside .gitignore (what `git add --all` would
    take). False means "maybe changed": `commit_changes` then looks the long way."""
    args = ["status", "--porcelain=v2", "--branch", "--untracked-files=normal"]
    done = _run([*args, "--ignore-submodules=none"], repo)
    lines = done.stdout.splitlines()
    return (
        done.returncode == 0
        and f"# branch.oid {base_sha}" in lines
        and all(line.startswith("# ") for line in lines)
    )


def _check_sizes(repo: Path, max_bytes: int) -> None:
    """Refuse staged files (added or changed) larger than `max_bytes`, naming them. Just
    after `git add --all`, a staged file's size is its size in the working tree."""
    staged = git(["diff", "--cached", "--name-only", "-z", "--diff-filter=AMT"], repo)
    sizes = [((repo / path).lstat().st_size, path) for path in staged.split("\0") if path]
    big = sorted((size, path) for size, path in sizes if size > max_bytes)
    if big:
        shown = ", ".join(f"{path} ({size / 2**20:.1f} MB)" for size, path in big[-5:])
        raise OversizedFileError(
            f"the agent wrote {len(big)} file(s) over the {max_bytes / 2**20:g} MB limit: "
            f"{shown}; nothing was committed (raise git.max_file_mb, or keep such files out: "
            "don't write them, or list them in .gitignore)"
        )


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


# --- bundles: a commit that outlives its workspace -------------------------------------------


def create_bundle(repo: Path, base_sha: str, commit_sha: str) -> bytes:
    """`base_sha..commit_sha` of `repo` as a git bundle: its one ref, `BUNDLE_REF`, points at
    `commit_sha`, and `base_sha` is its prerequisite (any clone of the base can take it)."""
    _not_an_option(base_sha, "commit")
    _not_an_option(commit_sha, "commit")
    # A bundle names its tips by ref, so the commit gets a temporary one.
    git(["update-ref", "--no-deref", BUNDLE_REF, commit_sha], repo)
    try:
        with tempfile.TemporaryDirectory(prefix="ado-bundle-") as tmp:
            path = Path(tmp) / "commit.bundle"
            git(["bundle", "create", "--quiet", str(path), BUNDLE_REF, f"^{base_sha}"], repo)
            return path.read_bytes()
    finally:
        git(["update-ref", "-d", BUNDLE_REF], repo)


def restore_bundle(
    mirror: Path, dest: Path, base_sha: str, data: bytes, commit_sha: str, branch: str
) -> None:
    """Rebuild a task's commit from its bundle: a fresh checkout of `base_sha` from `mirror`
    at `dest` (replacing anything there), the bundle fetched into it, and local `branch` at
    `commit_sha`, checked out. WorkspaceError unless the bundle holds exactly `commit_sha`
    with `base_sha` as its one parent (what `commit_changes` makes)."""
    _not_an_option(commit_sha, "commit")
    create_checkout(mirror, dest, base_sha)
    with tempfile.TemporaryDirectory(prefix="ado-bundle-") as tmp:
        path = Path(tmp) / "commit.bundle"
        path.write_bytes(data)
        heads = git(["bundle", "list-heads", str(path)], dest).splitlines()
        tips = {ref: sha for sha, _, ref in (line.partition(" ") for line in heads)}
        if tips.get(BUNDLE_REF) != commit_sha:
            found = ", ".join(f"{ref} at {sha[:12]}" for ref, sha in tips.items()) or "no refs"
            raise WorkspaceError(
                f"the stored bundle holds {found}; expected {BUNDLE_REF} at {commit_sha[:12]}; "
                "the store's bundle and commit disagree: run the task again"
            )
        git(["fetch", "--quiet", "--no-tags", str(path), BUNDLE_REF], dest)
    shas = git(["rev-list", "--parents", "-n", "1", commit_sha], dest).split()
    if shas != [commit_sha, base_sha]:
        raise WorkspaceError(
            f"commit {commit_sha[:12]} from the stored bundle has parents "
            f"{[sha[:12] for sha in shas[1:]]}; expected exactly {base_sha[:12]}"
        )
    git(["checkout", "--quiet", "-B", branch, commit_sha], dest)


def diffstat(repo: Path, base_sha: str, commit_sha: str) -> dict[str, Any]:
    """What `commit_sha` changes against `base_sha`, for reports and pull requests:
    `files`, `insertions`, `deletions` (a binary file counts as a file with no lines) and
    `text`, git's `--stat` at 100 columns in at most MAX_STAT_LINES lines (the first files,
    a line saying how many more, then git's summary line). Renames count once, whatever
    the user's git config says."""
    _not_an_option(base_sha, "commit")
    _not_an_option(commit_sha, "commit")

    def diff(form: str) -> str:
        args = ["diff", "--no-color", "--no-ext-diff", "--find-renames", form]
        done = _run([*args, base_sha, commit_sha, "--"], repo)
        if done.returncode != 0:
            raise _failed([*args, base_sha, commit_sha], repo, done)
        return done.stdout.rstrip()  # not strip(): --stat lines start with a space

    files = insertions = deletions = 0
    for line in diff("--numstat").splitlines():
        added, deleted, _path = line.split("\t", 2)
        files += 1
        insertions += int(added) if added.isdigit() else 0  # "-" for a binary file
        deletions += int(deleted) if deleted.isdigit() else 0
    lines = diff("--stat=100").splitlines()
    if len(lines) > MAX_STAT_LINES:
        shown = MAX_STAT_LINES - 2
        lines = [*lines[:shown], f" ... and {len(lines) - 1 - shown} more files", lines[-1]]
    text = "\n".join(lines)
    return {"files": files, "insertions": insertions, "deletions": deletions, "text": text}


# --- publishing -----------------------------------------------------------------------------


def remote_branch_sha(url: str, branch: str, *, env: Mapping[str, str] | None = None) -> str | None:
    """The commit at `branch` in the repository at `url`, or None when there is no such branch."""
    _not_an_option(url, "repository URL")
    _not_an_option(branch, "branch")
    ref = f"refs/heads/{branch}"
    listing = git(
        ["ls-remote", "--heads", "--", url, ref], None, env=env, timeout=NETWORK_TIMEOUT_S
    )
    # ls-remote matches patterns by their tail (refs/heads/x/refs/heads/<branch> too): be exact.
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            return sha
    return None


def push_branch(
    repo: Path,
    remote_url: str,
    sha: str,
    branch: str,
    *,
    expect: str | None = "",
    env: Mapping[str, str] | None = None,
) -> str:
    """Publish `sha` as `branch` in `remote_url`: "pushed", or "up-to-date" when the branch is
    there already at `sha` (so a retry after a push that did succeed passes).

    `expect` is what the branch must be before the push, checked by the server atomically
    (git's `--force-with-lease`): "" (the default) absent, so nothing is ever overwritten;
    a commit SHA: at that commit, which is replaced even if `sha` does not descend from it
    (a new commit for the same branch); None: anything (an unconditional force; avoid).
    Anything else is refused with WorkspaceError saying what was found.
    """
    _not_an_option(remote_url, "repository URL")
    _not_an_option(sha, "commit")
    if expect:
        _not_an_option(expect, "commit")
    ref = f"refs/heads/{branch}"
    push = [*_NO_HOOKS, "push", "--porcelain", "--no-verify"]
    if expect is None:
        refspec = f"+{sha}:{ref}"
    else:
        # A lease of "" means "absent"; a lease alone allows a non-fast-forward update.
        # No "+" on the refspec: with git 2.39 a "+" would override the lease.
        push.append(f"--force-with-lease={ref}:{expect}")
        refspec = f"{sha}:{ref}"
    args = [*push, remote_url, refspec]
    done = _run(args, repo, env=env, timeout=NETWORK_TIMEOUT_S)
    # --porcelain: one "<flag>\t<from>:<to>\t<summary>" line per ref ("=" up to date, "!" rejected)
    results = [line.split("\t") for line in done.stdout.splitlines() if line[1:2] == "\t"]
    flags = [fields[0] for fields in results]
    if done.returncode == 0:
        return "up-to-date" if flags == ["="] else "pushed"
    stale = flags == ["!"] and "(stale info)" in results[0][-1]
    if expect is None or not stale:  # unreachable, broken, or refused for another reason
        error = _failed(args, repo, done, env)
        if flags == ["!"]:  # the server said why: "[remote rejected] (protected branch)"
            error = type(error)(_masked(f"{error}; the push was {results[0][-1]}", env))
        raise error
    found = remote_branch_sha(remote_url, branch, env=env)
    where = f"at {found[:12]}" if found else "absent"
    if not expect:
        raise _error(
            f"branch {branch} already exists in {remote_url} {where}; "
            f"expected it absent or at {sha[:12]}; "
            "choose another --name or --branch, or delete that branch",
            env,
        )
    raise _error(
        f"branch {branch} in {remote_url} is {where}; expected it at {expect[:12]} "
        f"(to replace it with {sha[:12]}); someone else changed it since: look at that branch, "
        "then publish again",
        env,
    )


def is_branch(repo: Path, ref: str) -> bool:
    """True if `ref` names a branch of `repo` (a mirror's branches are the remote's)."""
    _not_an_option(ref, "ref")
    return _run(["rev-parse", "--verify", "--quiet", f"refs/heads/{ref}"], repo).returncode == 0


def has_commit(repo: Path, sha: str) -> bool:
    """True if the commit `sha` is in `repo`."""
    _not_an_option(sha, "commit")
    return _run(["cat-file", "-e", f"{sha}^{{commit}}"], repo).returncode == 0


def fetch_branch(
    mirror: Path, url: str, branch: str, *, env: Mapping[str, str] | None = None
) -> None:
    """Fetch `branch` of another remote (a fork) into `mirror`, so its commits can be built on."""
    _not_an_option(url, "repository URL")
    refspec = f"+refs/heads/{branch}:refs/ado/fetched/{branch}"
    git(["fetch", "--quiet", "--", url, refspec], mirror, env=env, timeout=NETWORK_TIMEOUT_S)
