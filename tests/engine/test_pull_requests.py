"""`--pr` end to end against the GitHub stand-in: real git over HTTP, the REST API in
GitHub's published shapes, a secondary rate limit mid-run, a paced rollout, and a driver
killed between the push and the PR."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ado_ray import api, reports
from ado_ray.testing import CRASH_ENV
from tests.forge_fixtures import *  # noqa: F403
from tests.stubs.forge import GitHubStandIn

pytestmark = pytest.mark.integration

# Changes one file and prints the environment it was given (so the logs would show a leak).
WRITE = """
import os, pathlib, sys
pathlib.Path('CHANGED.txt').write_text('changed\\n')
print('\\n'.join(f'{k}={v}' for k, v in sorted(os.environ.items())))
with open(sys.argv[1], 'a') as runs:
    runs.write(sys.argv[2] + '\\n')
"""
PR_LIMIT, PR_PERIOD_S = 6, 2.0


def settings(tmp_path: Path, gh: GitHubStandIn, cmd: str, **publish: Any) -> dict[str, Any]:
    return {
        "state": str(tmp_path / "state.db"),
        "work_root": str(tmp_path / "work"),
        "no_ray": True,
        "name": "bump",
        "agent": {"cmd": f"{cmd} {tmp_path / 'agent-runs.log'} {{repo_name}}"},
        "forges": {
            gh.host: {"type": "github", "api_url": gh.api_url, "token_env": "STANDIN_TOKEN"}
        },
        "publish": {"pr": True, **publish},
    }


def fleet(tmp_path: Path, gh: GitHubStandIn, count: int) -> Path:
    repo_list = tmp_path / "repos.txt"
    repo_list.write_text("".join(f"{gh.add_repo(f'acme/r{i}')}\n" for i in range(count)))
    return repo_list


def most_in_any_window(times: list[float], width: float) -> int:
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] > width:
            first += 1
        most = max(most, last - first + 1)
    return most


def assert_one_pr_each(gh: GitHubStandIn, summary: dict[str, Any], **expect: Any) -> None:
    for task in summary["tasks"]:
        path = f"acme/{task['name']}"
        pulls = gh.pulls(path)
        assert len(pulls) == 1, (path, [p["html_url"] for p in pulls])
        assert pulls[0]["head"]["sha"] == task["commit"] == gh.branch_sha(path, "ado/bump")
        assert task["pr_url"] == pulls[0]["html_url"]
        assert pulls[0]["title"] == f"bump: agent changes in {task['name']}"  # no prompt given
        for field, value in expect.items():
            assert pulls[0][field] == value, (path, field)


def test_thirty_repositories_get_one_paced_draft_pr_each_despite_a_secondary_limit(
    tmp_path: Path,
    github_standin: GitHubStandIn,
    script: Callable[[str, str], str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gh = github_standin
    repo_list = fleet(tmp_path, gh, 30)
    gh.secondary_limit(r"/pulls$", retry_after=1, times=2, after=4, method="POST")
    monkeypatch.setenv("STANDIN_TOKEN", gh.token)
    config = settings(tmp_path, gh, script("write", WRITE), draft=True, labels=["deps"])
    config["parallel"] = 8
    config["limits"] = {f"forge:{gh.host}:pr": {"requests": [f"{PR_LIMIT}/{PR_PERIOD_S:g}s"]}}
    out = io.StringIO()
    result = api.start(repo_list, api.ConfigSources(overrides=config), out)

    assert result.counts == {"changed": 30}, result.summary["tasks"]
    assert_one_pr_each(gh, result.summary, draft=True)
    assert all([label["name"] for label in gh.pulls(f"acme/r{i}")[0]["labels"]] == ["deps"]
               for i in range(30))  # fmt: skip
    creations = [(at, status) for method, path, status, at in gh.requests
                 if method == "POST" and path.endswith("/pulls")]  # fmt: skip
    assert sum(status == 403 for _, status in creations) == 2  # the limit was hit, and retried
    # Admission precedes the request by at most the client's latency, so any window a little
    # shorter than the limit's holds at most the limit's count of requests, refused ones too.
    assert most_in_any_window([at for at, _ in creations], PR_PERIOD_S - 0.5) <= PR_LIMIT
    span = max(at for at, _ in creations) - min(at for at, _ in creations)
    assert span >= (30 + 2) / PR_LIMIT * PR_PERIOD_S - PR_PERIOD_S - 0.5  # paced, not bursted

    # The token is nowhere: state, work root (agent logs, checkouts, mirrors), reports, output.
    token = gh.token.encode()
    assert token not in (tmp_path / "state.db").read_bytes()
    files = [path for path in (tmp_path / "work").rglob("*") if path.is_file()]
    assert any(path.name.endswith(".stdout.log") for path in files)
    for path in files:
        assert token not in path.read_bytes(), path
    for render in (reports.to_json, reports.to_markdown, reports.to_junit):
        assert gh.token not in render(result.summary)
    assert "rate limited" in caplog.text
    assert gh.token not in out.getvalue() + caplog.text

    again = api.start(repo_list, api.ConfigSources(overrides=config), io.StringIO())
    assert again.counts == {"skipped": 30}  # the branch and PR exist: no agent, no second PR
    assert all(len(gh.pulls(f"acme/r{i}")) == 1 for i in range(30))
    assert len((tmp_path / "agent-runs.log").read_text().split()) == 30


def test_a_driver_killed_between_push_and_pr_resumes_to_one_pr_each_without_rerunning_agents(
    tmp_path: Path, github_standin: GitHubStandIn, script: Callable[[str, str], str]
) -> None:
    gh = github_standin
    repo_list = fleet(tmp_path, gh, 6)
    (tmp_path / "config.yaml").write_text(
        json.dumps(settings(tmp_path, gh, script("write", WRITE)))
    )
    env = {**os.environ, "STANDIN_TOKEN": gh.token}

    def ado(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ado_ray", *args, "--config", str(tmp_path / "config.yaml")],
            cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    crashed = ado("batch", str(repo_list), "--parallel", "2", **{CRASH_ENV: "pushed:3"})
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    with sqlite3.connect(tmp_path / "state.db") as db:
        steps = db.execute(
            "select t.repo_key, group_concat(c.step) from tasks t"
            " left join checkpoints c using (task_id) group by t.repo_key"
        ).fetchall()
        run_id = db.execute("select run_id from runs").fetchone()[0]
    by_repo = {key.split("/")[-1]: set((done or "").split(",")) for key, done in steps}
    stranded = [r for r, done in by_repo.items() if "pushed" in done and "published" not in done]
    assert stranded, by_repo  # pushed, and killed before its PR
    for name in stranded:
        assert gh.branch_sha(f"acme/{name}", "ado/bump") and not gh.pulls(f"acme/{name}")
    agents_done = {r for r, done in by_repo.items() if "agent_done" in done}

    resumed = ado("resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["counts"] == {"changed": 6}
    assert_one_pr_each(gh, summary)
    runs = (tmp_path / "agent-runs.log").read_text().split()
    assert sorted(runs) == sorted(set(runs)) and len(runs) == 6  # one agent run per repo
    assert agents_done <= set(runs)
