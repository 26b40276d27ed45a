"""Forges: GitHub, GitLab and Gitea/Forgejo clients behind one `Forge` protocol.

`make_forge(host, settings, token, pacer)` builds the client named by `settings.type`
(a key of `FORGES`, or a dotted `module:Class` path for a client of your own).
"""

from __future__ import annotations

import importlib

from pydantic import SecretStr

from ado_ray.errors import ConfigError
from ado_ray.forge.base import (
    Checks,
    Discovery,
    Forge,
    ForgeAuthError,
    ForgeError,
    ForgeNotFound,
    ForgeRateLimited,
    Identity,
    MergeMethod,
    MergeResult,
    NewPR,
    Pacer,
    PRState,
    PRStatus,
    PullRequest,
    RepoFilter,
    RepoInfo,
    Review,
    Unpaced,
)
from ado_ray.forge.config import ForgeSettings

FORGES: dict[str, str] = {
    "github": "ado_ray.forge.github:GitHub",
    "gitlab": "ado_ray.forge.gitlab:GitLab",
    "gitea": "ado_ray.forge.gitea:Gitea",
}

__all__ = [
    "FORGES",
    "Checks",
    "Discovery",
    "Forge",
    "ForgeAuthError",
    "ForgeError",
    "ForgeNotFound",
    "ForgeRateLimited",
    "ForgeSettings",
    "Identity",
    "MergeMethod",
    "MergeResult",
    "NewPR",
    "PRState",
    "PRStatus",
    "Pacer",
    "PullRequest",
    "RepoFilter",
    "RepoInfo",
    "Review",
    "Unpaced",
    "make_forge",
]


def make_forge(host: str, settings: ForgeSettings, token: SecretStr | None, pacer: Pacer) -> Forge:
    """The client for `host`, of the type `settings.type` names."""
    spec = FORGES.get(settings.type, settings.type)
    module_name, _, class_name = spec.partition(":")
    if not class_name:
        raise ConfigError(
            f"forges.{host}: unknown forge type {settings.type!r}; expected one of "
            f"{', '.join(FORGES)} (or a module:Class path)"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"forges.{host}: cannot load the forge client {spec!r} ({exc}); expected one of "
            f"{', '.join(FORGES)} or an importable module:Class"
        ) from exc
    forge: Forge = cls(host, settings, token, pacer)
    return forge
