"""`--pr` end to end against the GitHub stand-in: real git over HTTP, the REST API in
GitHub's published shapes, a secondary rate limit mid-run."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from ado_ray import api
from tests.forge_fixtures import *  # noqa: F403
from tests.stubs.forge import GitHubStandIn

pytestmark = pytest.mark.integration

WRITE = "import pathlib; pathlib.Path('CHANGED.txt').write_text('changed\\n')"


def test_every_repository_gets_exactly_one_draft_pr_despite_a_secondary_limit(
    tmp_path: Path,
    github_standin: GitHubStandIn,
    script: Callable[[str, str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gh = github_standin
    urls = [gh.add_repo(f"acme/r{i}") for i in range(5)]
    gh.secondary_limit(r"/pulls$", retry_after=1, times=1, after=2)
    monkeypatch.setenv("STANDIN_TOKEN", gh.token)
    repo_list = tmp_path / "repos.txt"
    repo_list.write_text("".join(f"{url}\n" for url in urls))
    settings = {
        "state": str(tmp_path / "state.db"),
        "work_root": str(tmp_path / "work"),
        "no_ray": True,
        "name": "bump",
        "agent": {"cmd": script("write", WRITE)},
        "forges": {
            gh.host: {"type": "github", "api_url": gh.api_url, "token_env": "STANDIN_TOKEN"}
        },
        "publish": {"pr": True, "draft": True, "labels": ["deps"]},
    }
    result = api.start(repo_list, api.ConfigSources(overrides=settings), io.StringIO())

    assert result.counts == {"changed": 5}, result.summary["tasks"]
    for i, task in enumerate(result.summary["tasks"]):
        pulls = gh.pulls(f"acme/r{i}")
        assert len(pulls) == 1
        assert pulls[0]["draft"] is True and [label["name"] for label in pulls[0]["labels"]] == [
            "deps"
        ]
        assert pulls[0]["head"]["sha"] == task["commit"] == gh.branch_sha(f"acme/r{i}", "ado/bump")
        assert task["pr_url"] == pulls[0]["html_url"]
    assert any(status == 403 for _, _, status, _ in gh.requests)  # the limit was hit
    assert gh.token.encode() not in (tmp_path / "state.db").read_bytes()
    for path in (tmp_path / "work").rglob("*"):
        if path.is_file():
            assert gh.token.encode() not in path.read_bytes(), path

    again = api.start(repo_list, api.ConfigSources(overrides=settings), io.StringIO())
    assert again.counts == {"skipped": 5}  # the branch and PR exist: no agent, no second PR
    assert all(len(gh.pulls(f"acme/r{i}")) == 1 for i in range(5))
