"""What the CLI adapters share: the prompt as one argument, reading their logs, finding
their session files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ado_ray.agents.base import AgentContext
from ado_ray.errors import UsageError

MAX_PROMPT_BYTES = 120_000  # under Linux's 128 KiB limit on one argument (MAX_ARG_STRLEN)
# A session id as the CLIs make them (UUIDs, hex); anything else names no files.
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def prompt_argument(ctx: AgentContext, agent: str) -> str:
    """The prompt file's text, to pass as one argv word; a UsageError if it cannot be."""
    if ctx.prompt_file is None:
        raise UsageError(f"the {agent} agent needs --prompt or --prompt-file")
    text = ctx.prompt_file.read_text(encoding="utf-8")
    if not text.strip():
        raise UsageError(f"{ctx.prompt_file}: the prompt is empty; expected the task for {agent}")
    size = len(text.encode())
    if size > MAX_PROMPT_BYTES:
        raise UsageError(
            f"{ctx.prompt_file}: the prompt has {size} bytes; the {agent} agent passes it as "
            f"one argument, at most {MAX_PROMPT_BYTES} bytes: shorten it, or point the prompt "
            "at a file in the repository"
        )
    return text


def json_events(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file; other lines (and a truncated last one) skipped."""
    try:
        handle = path.open(encoding="utf-8", errors="replace")
    except OSError:
        return
    with handle:
        for line in handle:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event


def tail(path: Path, limit: int = 2000) -> str:
    """The end of a log (at most `limit` bytes), stripped; "" if it cannot be read."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, 2) - limit))
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def last_line(path: Path, limit: int = 400) -> str:
    """The last non-empty line of a log, for an error message."""
    lines = [line.strip() for line in tail(path, limit).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def session_paths(ctx: AgentContext, session_id: str, patterns: Iterable[str]) -> list[Path]:
    """The regular files of the task's directory that match one of the glob `patterns`,
    relative to `ctx.task_dir`, sorted. In a pattern, `~/` at the start is the agent's
    HOME, `{id}` the session id and `{id8}` its first 8 characters. A symlink is never
    one; a session id that is not a plain word (a UUID, hex) names none."""
    if not SESSION_ID.fullmatch(session_id):
        return []
    home = ctx.home.relative_to(ctx.task_dir).as_posix()
    found: set[Path] = set()
    for pattern in patterns:
        pattern = pattern.format(id=session_id, id8=session_id[:8])
        if pattern.startswith("~/"):
            pattern = f"{home}/{pattern[2:]}"
        for path in ctx.task_dir.glob(pattern):
            if path.is_file() and not path.is_symlink():
                found.add(path.relative_to(ctx.task_dir))
    return sorted(found)
