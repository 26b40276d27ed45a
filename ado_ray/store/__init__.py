"""State stores: the `Store` protocol, its backends, and `open_store(url)` to pick one.

A backend is registered in `BACKENDS` by short name, as a dotted path to its class, and is
imported only when a URL asks for it. Its class provides `from_url(url) -> Store`.

Store URLs: a plain file path, `sqlite:///abs/path/state.db` or `sqlite:rel/path/state.db`
choose SQLite; `postgresql://user@host/db` (or `postgres://`) chooses PostgreSQL.
"""

from __future__ import annotations

import importlib
import re

from ado_ray.errors import ConfigError
from ado_ray.redact import mask_url as describe_store  # the store's URL, safe to print
from ado_ray.store.base import Fence, Lease, RunRecord, SessionRecord, Store, TaskRecord

__all__ = [
    "BACKENDS",
    "Fence",
    "Lease",
    "RunRecord",
    "SessionRecord",
    "Store",
    "TaskRecord",
    "describe_store",
    "open_store",
]

BACKENDS: dict[str, str] = {
    "sqlite": "ado_ray.store.sqlite:SQLiteStore",
    "postgresql": "ado_ray.store.postgres:PostgresStore",
}

# URL scheme -> backend name
SCHEMES: dict[str, str] = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def backend_name(url: str) -> str:
    """The name of the backend that `url` asks for; a URL with no scheme is a SQLite file."""
    match = _SCHEME.match(url)
    if match is None:
        return "sqlite"
    scheme = match[1].lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            f"store {describe_store(url)!r} has the unknown scheme '{scheme}'; expected a file "
            f"path or one of the schemes {', '.join(SCHEMES)} (sqlite:///path/state.db, "
            "postgresql://user@host/db)"
        )
    return SCHEMES[scheme]


def open_store(url: str) -> Store:
    """The store at `url`, not yet connected (backends connect on first use)."""
    name = backend_name(url)
    if name not in BACKENDS:
        raise ConfigError(
            f"store {describe_store(url)!r} needs the '{name}' backend, which this ado-ray "
            f"does not have; available backends: {', '.join(BACKENDS)}"
        )
    module_name, _, class_name = BACKENDS[name].partition(":")
    try:
        backend = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise ConfigError(f"the '{name}' store backend cannot be loaded: {exc}") from exc
    store: Store = backend.from_url(url)
    return store
