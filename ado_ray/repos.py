"""The repository list: one repository per line, parsed into `RepoSpec`s.

Each line is `TARGET[@REF] [key=value ...]`, split like a POSIX shell (`shlex`): quote
values that contain spaces; `#` starts a comment anywhere outside quotes, so quote a value
that contains `#`. Blank and comment-only lines are skipped. TARGET is one of:

- a local path (absolute, `~/...`, or relative to the list's directory) to a git work tree
  or bare repository, or the same as `file:///absolute/path`; it must exist and look like
  a repository to git (HEAD, objects/ and refs/, directly or behind a `.git` file);
- `https://host[:port]/path`, `http://...`, `ssh://[user@]host[:port]/path`, `git://host/path`;
- scp-like `[user@]host:path`, e.g. `git@github.com:owner/name.git`.

Nothing that git would run a program for, or pass to ssh as an option, gets through: git's
`transport::address` form (`ext::`, `fd::`, ...) and a user, host or path starting with `-`
are refused, and a repository name (`{repo_name}`) never starts with `-`.

`@REF` (a branch, tag or commit SHA, checked like `git check-ref-format`) is whatever
follows the last `@` of the path part: after the host of a URL, after the `:` of an
scp-like target, anywhere in a local path (unless only the whole path, `@` included, names
a repository). `key=value` pairs set template variables for that repository; keys match
`[A-Za-z_][A-Za-z0-9_]*` and may not be `repo_path`, `repo_name`, `prompt_file` or `run_id`.

A repository listed twice is an error rather than merged, because the two lines' refs or
variables may disagree and picking one silently would run something the user did not ask
for. Spellings of one repository are the same repository: scheme, user, default port, host
case, leading or trailing `/` and a `.git` suffix do not count (`https://github.com/o/n`,
`git@github.com:o/n.git` and `ssh://git@github.com/o/n` are one), nor does a local path vs
its `file://` URL. Credentials in URLs are refused, and masked as `***` in the message: a
password anywhere, and any user part of an `http(s)://` or `git://` URL (where the user
slot is where tokens go: `https://TOKEN@host`, so a user name alone is refused too) or
a query string (`?...`); an ssh user name (`git@host:...`, `ssh://git@host/...`) is fine.
Credentials come from git's credential helper or the forge's token variable. Every bad line
is reported at once as `repos.txt:LINE: found; expected ...`. Nothing here touches the
network.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path

from ado_ray.errors import RepoListError
from ado_ray.models import RepoSpec
from ado_ray.redact import mask_remote

__all__ = ["format_repo_line", "parse_repo_list", "parse_repo_text"]

RESERVED_VARS = frozenset({"repo_path", "repo_name", "prompt_file", "run_id"})
MAX_REPORTED = 20

_FORMS = (
    "a local git repository path, https://host/owner/name, ssh://[user@]host[:port]/path, "
    "git://host/path, user@host:owner/name or file:///absolute/path"
)
_DEFAULT_PORTS = {"https": "443", "http": "80", "ssh": "22", "git": "9418"}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
_HELPER = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")  # git's transport::address
_HOST = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")
_USER = re.compile(r"[A-Za-z0-9._~+%!$&'()*,;=-]+")
_PORT = re.compile(r"[0-9]{1,5}")
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_BAD_REF_CHARS = frozenset("~^:?*[\\")
_VAR_RULE = "a name matching [A-Za-z_][A-Za-z0-9_]* other than " + ", ".join(sorted(RESERVED_VARS))
_REF_RULES = "a branch, tag or commit after '@' that git check-ref-format accepts"
_NO_CREDENTIALS = (
    "no credentials in the URL; put the token in the forge's token_env or a git "
    "credential helper, not in the URL"
)
_HEAD = re.compile(r"ref: refs/\S+\s*|[0-9a-f]{40}([0-9a-f]{24})?\s*")


class _BadLine(Exception):
    """One line is wrong; the caller adds `source:line:`."""

    def __init__(self, found: str, expected: str) -> None:
        super().__init__(f"{found}; expected {expected}")


def parse_repo_list(path: Path) -> list[RepoSpec]:
    """Read and parse a repository list; relative paths in it are relative to its directory."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise RepoListError(
            f"{path}: cannot be read ({exc.strerror or exc}); expected a readable repository list"
        ) from exc
    except UnicodeDecodeError as exc:
        raise RepoListError(
            f"{path}: is not UTF-8 text (byte {exc.start}); expected a UTF-8 text file"
        ) from exc
    return parse_repo_text(text, str(path), path.parent)


def parse_repo_text(text: str, source: str, base_dir: Path) -> list[RepoSpec]:
    """Parse the text of a repository list. `source` names it in error messages."""
    specs: list[RepoSpec] = []
    errors: list[str] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        try:
            parsed = _parse_line(raw, number, base_dir)
            if parsed is None:
                continue
            spec, target = parsed
            if (seen := first_line.get(spec.key)) is not None:
                raise _BadLine(f"{_show(target)} repeats line {seen}", "each repository once")
        except _BadLine as exc:
            errors.append(f"{source}:{number}: {exc}")
            continue
        first_line[spec.key] = number
        specs.append(spec)
    if errors:
        shown = errors[:MAX_REPORTED]
        if len(errors) > MAX_REPORTED:
            shown.append(f"... and {len(errors) - MAX_REPORTED} more")
        raise RepoListError("\n".join(shown))
    if not specs:
        raise RepoListError(f"{source}: no repositories; expected one repository per line")
    return specs


def format_repo_line(spec: RepoSpec) -> str:
    """Render `spec` as a line that `parse_repo_text` reads back to the same spec."""
    target = spec.url if spec.ref is None else f"{spec.url}@{spec.ref}"
    words = [shlex.quote(target)]
    words += [f"{key}={shlex.quote(value)}" for key, value in spec.vars.items()]
    return " ".join(words)


def _show(text: str, limit: int = 200) -> str:
    """Quote user text for a message, credentials masked, shortened so one bad line stays
    one line."""
    text = mask_remote(text)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _parse_line(line: str, number: int, base_dir: Path) -> tuple[RepoSpec, str] | None:
    """Return the line's spec and its first word as written, or None for a blank line."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise _BadLine(
            f"{_show(line.strip())} cannot be split into words ({exc})",
            "quotes closed on the same line and no trailing backslash",
        ) from None
    if not words:
        return None
    target, *pairs = words
    url, key, name, ref = _parse_target(target, base_dir)
    variables = _parse_vars(pairs)
    return RepoSpec(url=url, key=key, name=name, ref=ref, vars=variables, line=number), target


def _parse_vars(pairs: list[str]) -> dict[str, str]:
    variables: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals:
            raise _BadLine(f"{_show(pair)} is not key=value", "TARGET[@REF] [key=value ...]")
        if not _VAR.fullmatch(key):
            raise _BadLine(f"{_show(pair)} has an invalid variable name {_show(key)}", _VAR_RULE)
        if key in RESERVED_VARS:
            raise _BadLine(f"{_show(pair)} sets the reserved name {_show(key)}", _VAR_RULE)
        if key in variables:
            raise _BadLine(f"{_show(pair)} sets {_show(key)} again", "each variable once a line")
        variables[key] = value
    return variables


def _parse_target(target: str, base_dir: Path) -> tuple[str, str, str, str | None]:
    """Return (url, key, name, ref) for the first word of a line."""
    if any(ord(char) < 32 or ord(char) == 127 for char in target):
        raise _BadLine(f"{_show(target)} contains a control character", _FORMS)
    if _HELPER.match(target):
        raise _BadLine(
            f"{_show(target)} is git's transport::address form, which runs a helper program",
            _FORMS,
        )
    host_part, colon, after_colon = target.partition(":")
    match = _SCHEME.fullmatch(target)
    scheme = match[1].lower() if match else ""
    if match:
        if scheme != "file" and scheme not in _DEFAULT_PORTS:
            raise _BadLine(f"{_show(target)} uses the unsupported scheme {scheme}://", _FORMS)
        authority, _, path = match[2].partition("/")
    elif colon and "/" not in host_part:  # scp-like, as git tells it from a local path
        authority, path = host_part, after_colon
    else:
        key, name, ref = _local_repo(target, target, base_dir)
        return key, key, name, ref
    if scheme == "file":
        if authority:
            raise _BadLine(f"{_show(target)} names a host", "file:///absolute/path")
        key, name, ref = _local_repo(target, "/" + path, base_dir)
        return _without_ref(target, ref), key, name, ref
    path, ref = _split_ref(target, path)
    return _without_ref(target, ref), *_remote_key_and_name(target, scheme, authority, path), ref


def _without_ref(target: str, ref: str | None) -> str:
    return target if ref is None else target[: -len(ref) - 1]


def _local_repo(target: str, written: str, base_dir: Path) -> tuple[str, str, str | None]:
    """Key, name and ref of a local `PATH[@REF]`; an `@` is part of the path when only the
    whole names a repository (Jenkins' `workspace@2`), so `format_repo_line` reads back."""
    try:
        path, ref = _split_ref(target, written)
        found = _git_dir(target, path, base_dir)
    except _BadLine:
        if "@" in written:
            with contextlib.suppress(_BadLine):
                whole = _git_dir(target, written, base_dir)
                return str(whole), _safe_name(whole.name.removesuffix(".git")), None
        raise
    return str(found), _safe_name(found.name.removesuffix(".git")), ref


def _remote_key_and_name(target: str, scheme: str, authority: str, path: str) -> tuple[str, str]:
    """Key `host[:port]/path` (scheme, user and default port dropped) and name of a remote."""
    expected = f"{scheme}://host/owner/name" if scheme else "host:owner/name"
    user, at, host = authority.rpartition("@")
    if at and ":" in user:
        raise _BadLine(f"{_show(target)} contains a password", _NO_CREDENTIALS)
    if at and scheme not in ("", "ssh"):
        raise _BadLine(f"{_show(target)} has a user or token before '@'", _NO_CREDENTIALS)
    if scheme in ("http", "https") and ("?" in path or "#" in path):
        shown = _show(re.sub(r"[?#].*", "?***", target, flags=re.DOTALL))
        raise _BadLine(f"{shown} has a query string or fragment", _NO_CREDENTIALS)
    if user.startswith("-") or host.startswith("-") or path.lstrip("/").startswith("-"):
        raise _BadLine(
            f"{_show(target)} has a user, host or path starting with '-'",
            f"{expected} (a leading '-' reads as an option to git or ssh)",
        )
    if at and not _USER.fullmatch(user):
        raise _BadLine(f"{_show(target)} has an invalid user name {_show(user)}", expected)
    port = ""
    if scheme and not host.endswith("]") and ":" in host:
        host, _, port = host.rpartition(":")
        if not _PORT.fullmatch(port):
            raise _BadLine(f"{_show(target)} has an invalid port {_show(port)}", expected)
    if not scheme and host.lower() in {"file", "ftp", *_DEFAULT_PORTS} and path[:1] == "/":
        raise _BadLine(f"{_show(target)} looks like a URL without '//'", _FORMS)
    if not _HOST.fullmatch(host):
        raise _BadLine(f"{_show(target)} has no valid host", expected)
    if any(char.isspace() for char in path):
        raise _BadLine(f"{_show(target)} has whitespace in its path", expected)
    path = path.strip("/")
    if not path:
        raise _BadLine(f"{_show(target)} has no repository path", expected)
    path = path.removesuffix(".git").rstrip("/")
    port = "" if port in ("", _DEFAULT_PORTS[scheme or "ssh"]) else ":" + port
    return f"{host.lower()}{port}/{path}", _safe_name(path.rpartition("/")[2])


def _split_ref(target: str, path: str) -> tuple[str, str | None]:
    """Split `path@ref` at its last `@`; `path` is the part of `target` a ref may end."""
    head, at, ref = path.rpartition("@")
    if not at:
        return path, None
    if problem := _ref_problem(ref):
        raise _BadLine(f"{_show(target)} has {problem}", _REF_RULES)
    return head, ref


def _ref_problem(ref: str) -> str | None:
    if not ref:
        return "an empty ref after '@'"
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in ref):
        return f"whitespace or a control character in the ref {_show(ref)}"
    if bad := sorted(_BAD_REF_CHARS.intersection(ref)):
        return f"{''.join(bad)!r} in the ref {_show(ref)}"
    if ".." in ref or "//" in ref:
        return f"'..' or '//' in the ref {_show(ref)}"
    if ref.startswith(("-", "/")) or ref.endswith(("/", ".")):
        return f"the ref {_show(ref)} starting with '-' or '/' or ending with '/' or '.'"
    if any(part.startswith(".") or part.endswith(".lock") for part in ref.split("/")):
        return f"the ref {_show(ref)} with a part starting with '.' or ending with '.lock'"
    return None


def _git_dir(target: str, written: str, base_dir: Path) -> Path:
    """Resolve a local path and check that it is a git repository."""
    if not written:
        raise _BadLine(f"{_show(target)} has no path", _FORMS)
    try:
        path = (base_dir / Path(written).expanduser()).resolve()
        if not path.exists():
            raise _BadLine(f"{_show(target)} ({path}) does not exist", _FORMS)
        if not path.is_dir():
            raise _BadLine(f"{_show(target)} ({path}) is not a directory", _FORMS)
        if not _is_git_dir(path) and not _is_git_dir(_dot_git(path)):
            raise _BadLine(
                f"{_show(target)} ({path}) is not a git repository "
                "(no HEAD, objects/ and refs/ in it or in its .git)",
                "a directory made by git init or git clone",
            )
    except (OSError, ValueError, RuntimeError) as exc:
        raise _BadLine(f"{_show(target)} cannot be checked ({exc})", _FORMS) from None
    return path


def _dot_git(work_tree: Path) -> Path:
    """The git directory of a work tree: `.git`, or where a `.git` file (`gitdir: PATH`, as
    in submodules and linked worktrees) points."""
    dot_git = work_tree / ".git"
    if dot_git.is_file():
        text = dot_git.read_text(encoding="utf-8", errors="replace")
        if text.startswith("gitdir:"):
            return work_tree / text.removeprefix("gitdir:").strip()
    return dot_git


def _is_git_dir(path: Path) -> bool:
    """What git checks (setup.c `is_git_directory`): a valid HEAD, and objects/ and refs/
    here or in the directory `commondir` names (a linked worktree's)."""
    head = path / "HEAD"
    if not head.is_file() or head.stat().st_size > 4096:
        return False
    if not _HEAD.fullmatch(head.read_text(encoding="utf-8", errors="replace")):
        return False
    common = path
    if (path / "commondir").is_file():
        common = path / (path / "commondir").read_text(encoding="utf-8").strip()
    return (common / "objects").is_dir() and (common / "refs").is_dir()


def _safe_name(last: str) -> str:
    """`[A-Za-z0-9._-]` only and no leading `-`, so `{repo_name}` is one word and never an
    option to the agent's program."""
    name = _UNSAFE_NAME.sub("-", last).lstrip("-")
    return name if name not in ("", ".", "..") else "repo"
