"""Local stand-ins for GitHub, GitLab and Gitea: real git over HTTP plus each forge's REST API.

    with GitHubStandIn(tmp_path, token="tok-xyz") as gh:
        url = gh.add_repo("acme/widget", files={"README.md": "hi\n"})
        ...  # git clone/push gh.clone_url("acme/widget"); point a client at gh.api_url

`STANDINS` maps a forge kind to its class. Fixtures live in `tests/forge_fixtures.py`.
"""

from tests.stubs.forge.base import ForgeStandIn
from tests.stubs.forge.gitea import GiteaStandIn
from tests.stubs.forge.github import GitHubStandIn
from tests.stubs.forge.gitlab import GitLabStandIn
from tests.stubs.forge.schema import (
    GITHUB_DESCRIPTION,
    OCTOKIT_OPENAPI_VERSION,
    SchemaUnavailable,
)
from tests.stubs.forge.wire import ApiError, Reply, Request

STANDINS: dict[str, type[ForgeStandIn]] = {
    "github": GitHubStandIn,
    "gitlab": GitLabStandIn,
    "gitea": GiteaStandIn,
}

__all__ = [
    "GITHUB_DESCRIPTION",
    "OCTOKIT_OPENAPI_VERSION",
    "STANDINS",
    "ApiError",
    "ForgeStandIn",
    "GitHubStandIn",
    "GitLabStandIn",
    "GiteaStandIn",
    "Reply",
    "Request",
    "SchemaUnavailable",
]
