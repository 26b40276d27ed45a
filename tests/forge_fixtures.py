"""Pytest fixtures for the forge stand-ins (`tests/stubs/forge`).

Each yields a started stand-in in the test's `tmp_path` and, at teardown, fails the test if
any reply broke the forge's response schema. `forge_standin` runs a test once per forge.

Use from a test module or conftest with either:

    pytest_plugins = ["tests.forge_fixtures"]
    from tests.forge_fixtures import *  # noqa: F403

The GitHub schema needs `bash .ci/forge-schemas.sh` (make test runs it); without it the
GitHub cases are skipped, except under CI (`CI` set), where they fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.stubs.forge import ForgeStandIn, GiteaStandIn, GitHubStandIn, GitLabStandIn
from tests.stubs.forge.schema import require_github_schemas

__all__ = ["forge_standin", "gitea_standin", "github_standin", "gitlab_standin"]

S = TypeVar("S", bound=ForgeStandIn)


def _serve(cls: type[S], tmp_path: Path) -> Iterator[S]:
    standin = cls(tmp_path, token=f"tok-{cls.kind}-standin")
    with standin:
        yield standin
    errors = "\n".join(standin.schema_errors)
    assert not standin.schema_errors, f"{cls.kind} stand-in replies broke the schema:\n{errors}"


@pytest.fixture
def github_standin(tmp_path: Path) -> Iterator[GitHubStandIn]:
    require_github_schemas()
    yield from _serve(GitHubStandIn, tmp_path)


@pytest.fixture
def gitlab_standin(tmp_path: Path) -> Iterator[GitLabStandIn]:
    yield from _serve(GitLabStandIn, tmp_path)


@pytest.fixture
def gitea_standin(tmp_path: Path) -> Iterator[GiteaStandIn]:
    yield from _serve(GiteaStandIn, tmp_path)


@pytest.fixture(params=["github", "gitlab", "gitea"])
def forge_standin(request: pytest.FixtureRequest) -> ForgeStandIn:
    standin: ForgeStandIn = request.getfixturevalue(f"{request.param}_standin")
    return standin
