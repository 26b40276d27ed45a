"""An agent session's files as one small blob: packed where the agent ran, restored elsewhere.

An agent CLI keeps its session (Claude Code's transcript, Codex's rollout, Gemini CLI's
chat files, Aider's chat history) in files of the task's directory on the node that ran
it, and `--resume SESSION` needs them. When an attempt is interrupted, `pack` makes a
gzip'd tar of the files its adapter names (`Agent.session_files`, paths relative to the
task's directory), which travels to the store with the attempt's session row; a resume on
another node `restore`s it into the new task directory before the agent starts.

Both ends distrust the files. `pack` takes regular files only, reached through no
symlink, and never a login (`CREDENTIAL_NAMES`); `restore` writes regular files only,
inside the task's directory and outside its checkout and logs, creating no symlink and
following none, and refuses the whole blob otherwise.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from ado_ray.agents.base import CREDENTIAL_NAMES
from ado_ray.errors import SessionStateError

MAX_RESTORED_BYTES = 1 << 30  # unpacked, whatever the packed size: a gzip bomb is refused
ENGINE_DIRS = frozenset({"repo", "logs"})  # the task's checkout and logs: never restored into


class OverCapError(ValueError):
    """The session's files, packed, are over the cap; the message says by how much."""


def pack(task_dir: Path, paths: Sequence[Path], cap_bytes: int) -> bytes | None:
    """The files `paths` (relative to `task_dir`) as a tar.gz; None when there is none to
    keep. Raises `OverCapError` once the packed size passes `cap_bytes`."""
    kept = [path for path in paths if _packable(task_dir, path)]
    if not kept:
        return None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for path in kept:
            source = task_dir / path
            try:
                fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue  # gone (or replaced by a symlink) since it was listed
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    continue
                member = tarfile.TarInfo(path.as_posix())
                member.size, member.mtime, member.mode = info.st_size, int(info.st_mtime), 0o600
                tar.addfile(member, handle)
            if buffer.tell() > cap_bytes:
                raise OverCapError(f"more than {cap_bytes / 2**20:g} MB packed")
    data = buffer.getvalue()
    if len(data) > cap_bytes:
        raise OverCapError(f"{len(data) / 2**20:.1f} MB packed")
    return data


def _packable(task_dir: Path, path: Path) -> bool:
    """A relative path to a regular file of `task_dir`, through no symlink, not a login."""
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return False
    if path.name in CREDENTIAL_NAMES or path.parts[0] in ENGINE_DIRS:
        return False
    current = task_dir
    for part in path.parts:
        current = current / part
        if current.is_symlink():
            return False
    return current.is_file()


def restore(task_dir: Path, data: bytes) -> list[Path]:
    """Write the files of a `pack`ed blob into `task_dir`; return them (relative). Refuses
    (`SessionStateError`, before writing anything) an absolute or `..` name, a name in the
    checkout or the logs, a login, and any member that is not a regular file (a symlink, a
    hard link, a device, a FIFO)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            names = [_checked(member) for member in members]
            if sum(member.size for member in members) > MAX_RESTORED_BYTES:
                raise SessionStateError(
                    f"the stored session state unpacks to more than {MAX_RESTORED_BYTES} bytes"
                )
            for member, name in zip(members, names, strict=True):
                extracted = tar.extractfile(member)
                if extracted is None:  # pragma: no cover (a regular file always has one)
                    raise SessionStateError(f"the stored session state has no data for {name}")
                _write(task_dir, name, extracted.read(), member.mtime)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SessionStateError(f"the stored session state cannot be read: {exc}") from exc
    return names


def _checked(member: tarfile.TarInfo) -> Path:
    name = PurePosixPath(member.name)
    what = f"the stored session state holds {member.name!r}"
    if not member.isreg():
        raise SessionStateError(f"{what}, which is not a regular file; nothing was restored")
    if name.is_absolute() or ".." in name.parts or not name.parts or "" in name.parts:
        raise SessionStateError(
            f"{what}, a path outside the task's directory; nothing was restored"
        )
    if name.parts[0] in ENGINE_DIRS or name.name in CREDENTIAL_NAMES:
        raise SessionStateError(f"{what}, which no session owns; nothing was restored")
    return Path(*name.parts)


def _write(task_dir: Path, name: Path, content: bytes, mtime: float) -> None:
    """Create `task_dir/name` (mode 0600), its parents as real directories, following no
    symlink on the way."""
    current = task_dir
    for part in name.parts[:-1]:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise SessionStateError(f"{current} is in the way of the stored session state")
        current.mkdir(mode=0o700, exist_ok=True)
    target = task_dir / name
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.utime(target, (mtime, mtime))
