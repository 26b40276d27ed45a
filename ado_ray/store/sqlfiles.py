"""The SQL files of the store backends, loaded once: `sql/<dialect>/queries.sql` and the
numbered migrations beside it (`0001_init.sql`, ...)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from types import MappingProxyType

_SECTION = re.compile(r"^-- name: (\w+)[ \t]*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d+)_\w+\.sql$")


@cache
def load_queries(dialect: str) -> Mapping[str, str]:
    """The `-- name: x` sections of `sql/<dialect>/queries.sql`, by name."""
    text = (files("ado_ray.store") / "sql" / dialect / "queries.sql").read_text("utf-8")
    parts = _SECTION.split(text)  # [preamble, name, body, name, body, ...]
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"sql/{dialect}/queries.sql: query '{name}' is defined twice")
        queries[name] = body.strip()
    return MappingProxyType(queries)


@cache
def load_migrations(dialect: str) -> tuple[tuple[int, str, str], ...]:
    """(version, file name, script) of each numbered file in `sql/<dialect>/`, in order."""
    found = []
    for entry in (files("ado_ray.store") / "sql" / dialect).iterdir():
        if match := _MIGRATION.match(entry.name):
            found.append((int(match[1]), entry.name, entry.read_text("utf-8")))
    found.sort()
    versions = [version for version, _, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"sql/{dialect}: two migrations share a version number: {versions}")
    return tuple(found)
