"""The forge stand-ins themselves: real git over HTTP, auth, the API shapes, faults."""

from __future__ import annotations

import gzip
import os
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.forge_fixtures import *  # noqa: F403
from tests.stubs.forge import ForgeStandIn, GiteaStandIn, GitHubStandIn, GitLabStandIn

pytestmark = pytest.mark.integration

LIST_ORG = {  # a paginated listing of one owner's repositories, per forge
    "github": "/orgs/acme/repos?per_page=2",
    "gitlab": "/groups/acme/projects?per_page=2",
    "gitea": "/orgs/acme/repos?limit=2",
}


def run_git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "GIT_AUTHOR_NAME": "Dev",
        "GIT_AUTHOR_EMAIL": "dev@example.com",
        "GIT_COMMITTER_NAME": "Dev",
        "GIT_COMMITTER_EMAIL": "dev@example.com",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env=env, check=check, timeout=120
    )


def clone_and_commit(
    standin: ForgeStandIn, tmp_path: Path, repo: str, branch: str = "ado/x"
) -> Path:
    work = tmp_path / "work" / repo.replace("/", "_")
    work.parent.mkdir(parents=True, exist_ok=True)
    run_git(tmp_path, "clone", "-q", standin.clone_url(repo), str(work))
    run_git(work, "checkout", "-q", "-b", branch)
    (work / "change.txt").write_text("changed\n")
    run_git(work, "add", "-A")
    run_git(work, "commit", "-q", "-m", "a change")
    return work


def open_pull(standin: ForgeStandIn, repo: str, branch: str) -> tuple[int, Any]:
    if standin.kind == "gitlab":
        body = {"source_branch": branch, "target_branch": "main", "title": "A change"}
        status, _, data = standin.call(
            "POST", f"/projects/{repo.replace('/', '%2F')}/merge_requests", body
        )
    else:
        body = {"head": branch, "base": "main", "title": "A change", "body": "Made by ado."}
        status, _, data = standin.call("POST", f"/repos/{repo}/pulls", body)
    return status, data


def head_sha_of(standin: ForgeStandIn, pull: dict[str, Any]) -> str:
    return str(pull["sha"] if standin.kind == "gitlab" else pull["head"]["sha"])


def test_clone_and_push_with_the_token(forge_standin: ForgeStandIn, tmp_path: Path) -> None:
    url = forge_standin.add_repo("acme/widget", files={"README.md": "hi\n", "src/a.py": "x = 1\n"})
    assert url == f"http://{forge_standin.host}/acme/widget.git"
    work = clone_and_commit(forge_standin, tmp_path, "acme/widget")
    assert (work / "src/a.py").read_text() == "x = 1\n"
    run_git(work, "push", "-q", "origin", "ado/x")
    local = run_git(work, "rev-parse", "HEAD").stdout.strip()
    assert forge_standin.branch_sha("acme/widget", "ado/x") == local
    assert forge_standin.branch_sha("acme/widget", "nope") is None
    assert (forge_standin.bare_path("acme/widget") / "HEAD").exists()


def test_bearer_header_works_for_git(github_standin: ForgeStandIn, tmp_path: Path) -> None:
    url = github_standin.add_repo("acme/widget")
    header = f"http.extraHeader=Authorization: Bearer {github_standin.token}"
    run_git(tmp_path, "-c", header, "clone", "-q", url, str(tmp_path / "w"))
    assert (tmp_path / "w/README.md").exists()


def test_wrong_token_fails_as_against_a_forge(forge_standin: ForgeStandIn, tmp_path: Path) -> None:
    forge_standin.add_repo("acme/widget")
    bad = run_git(
        tmp_path, "clone", forge_standin.clone_url("acme/widget", "wrong"), "x", check=False
    )
    assert bad.returncode != 0
    assert "Authentication failed" in bad.stderr
    anonymous = f"http://{forge_standin.host}/acme/widget.git"
    none = run_git(tmp_path, "ls-remote", anonymous, check=False)
    assert none.returncode != 0
    assert ("401" in none.stderr) or ("could not read Username" in none.stderr)
    assert any(status == 401 for _, _, status, _ in forge_standin.requests)
    assert all("wrong" not in path for _, path, _, _ in forge_standin.requests)


def test_push_to_a_read_only_repository_is_403(forge_standin: ForgeStandIn, tmp_path: Path) -> None:
    forge_standin.add_repo("acme/frozen", can_push=False)
    work = clone_and_commit(forge_standin, tmp_path, "acme/frozen")
    push = run_git(work, "push", "origin", "ado/x", check=False)
    assert push.returncode != 0
    assert "403" in push.stderr
    assert forge_standin.branch_sha("acme/frozen", "ado/x") is None


def test_large_chunked_push_streams_through(gitea_standin: ForgeStandIn, tmp_path: Path) -> None:
    gitea_standin.add_repo("acme/big")
    work = clone_and_commit(gitea_standin, tmp_path, "acme/big")
    (work / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # > http.postBuffer: chunked
    run_git(work, "add", "-A")
    run_git(work, "commit", "-q", "-m", "big")
    run_git(work, "push", "-q", "origin", "ado/x")
    assert (
        gitea_standin.branch_sha("acme/big", "ado/x")
        == run_git(work, "rev-parse", "HEAD").stdout.strip()
    )


def test_many_concurrent_clones(gitlab_standin: ForgeStandIn, tmp_path: Path) -> None:
    gitlab_standin.add_repo("acme/widget")

    def clone(i: int) -> int:
        target = tmp_path / f"c{i}"
        return run_git(
            tmp_path,
            "clone",
            "-q",
            gitlab_standin.clone_url("acme/widget"),
            str(target),
            check=False,
        ).returncode

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(clone, range(8))) == [0] * 8


def test_api_lists_paginate_with_links(forge_standin: ForgeStandIn) -> None:
    for n in range(5):
        forge_standin.add_repo(f"acme/repo{n}")
    status, headers, first = forge_standin.call("GET", LIST_ORG[forge_standin.kind])
    assert status == 200
    assert len(first) == 2
    link = headers["Link"]
    assert "page=2" in link.split('rel="next"')[0]
    assert "page=3" in link.split('rel="last"')[0].rsplit("<", 1)[1]
    if forge_standin.kind == "gitlab":
        assert (headers["x-next-page"], headers["x-total"], headers["x-total-pages"]) == (
            "2",
            "5",
            "3",
        )
    if forge_standin.kind == "gitea":
        assert headers["x-total-count"] == "5"
    status, headers, last = forge_standin.call("GET", LIST_ORG[forge_standin.kind] + "&page=3")
    assert len(last) == 1
    assert 'rel="next"' not in headers["Link"]
    if forge_standin.kind == "gitlab":
        assert headers["x-next-page"] == ""


def test_pull_request_carries_the_real_head_sha(
    forge_standin: ForgeStandIn, tmp_path: Path
) -> None:
    forge_standin.add_repo("acme/widget")
    work = clone_and_commit(forge_standin, tmp_path, "acme/widget")
    run_git(work, "push", "-q", "origin", "ado/x")
    status, pull = open_pull(forge_standin, "acme/widget", "ado/x")
    assert status == 201, pull
    assert head_sha_of(forge_standin, pull) == forge_standin.branch_sha("acme/widget", "ado/x")
    (work / "more.txt").write_text("more\n")
    run_git(work, "add", "-A")
    run_git(work, "commit", "-q", "-m", "more")
    run_git(work, "push", "-q", "origin", "ado/x")
    [listed] = forge_standin.pulls("acme/widget")
    assert head_sha_of(forge_standin, listed) == run_git(work, "rev-parse", "HEAD").stdout.strip()


def test_pull_request_for_a_missing_branch_is_refused(forge_standin: ForgeStandIn) -> None:
    forge_standin.add_repo("acme/widget")
    status, body = open_pull(forge_standin, "acme/widget", "no-such-branch")
    assert status == {"github": 422, "gitlab": 422, "gitea": 404}[forge_standin.kind], body
    assert forge_standin.pulls("acme/widget") == []


def test_api_refuses_a_wrong_token(forge_standin: ForgeStandIn) -> None:
    status, _, body = forge_standin.call("GET", "/user", token="wrong")
    assert status == 401
    assert body["message"]
    status, _, body = forge_standin.call("GET", "/user")
    assert status == 200
    assert body["login" if forge_standin.kind != "gitlab" else "username"] == forge_standin.user


def test_schema_check_catches_a_wrong_reply(
    forge_standin: ForgeStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "private_user_json" if forge_standin.kind == "github" else "user_json"
    real = getattr(forge_standin, name)
    monkeypatch.setattr(forge_standin, name, lambda login: {**real(login), "id": "not-a-number"})
    status, _, _ = forge_standin.call("GET", "/user")
    assert status == 200
    assert forge_standin.schema_errors, "a reply with a string id passed the schema check"
    assert "id" in forge_standin.schema_errors[0]
    forge_standin.schema_errors.clear()  # the fixture's own check would fail otherwise


def test_github_merge_honours_allowed_methods(
    github_standin: GitHubStandIn, tmp_path: Path
) -> None:
    github_standin.add_repo("acme/widget", merge_methods=("squash",))
    work = clone_and_commit(github_standin, tmp_path, "acme/widget")
    run_git(work, "push", "-q", "origin", "ado/x")
    status, pull = open_pull(github_standin, "acme/widget", "ado/x")
    path = f"/repos/acme/widget/pulls/{pull['number']}/merge"
    status, _, body = github_standin.call("PUT", path, {"merge_method": "merge"})
    assert status == 405, body
    status, _, body = github_standin.call("PUT", path, {"merge_method": "squash", "sha": "0" * 40})
    assert status == 409, body
    status, _, body = github_standin.call("PUT", path, {"merge_method": "squash"})
    assert status == 200 and body["merged"], body
    assert github_standin.branch_sha("acme/widget", "main") == body["sha"]
    status, _, merged = github_standin.call("GET", f"/repos/acme/widget/pulls/{pull['number']}")
    assert (merged["merged"], merged["state"]) == (True, "closed")
    assert github_standin.call("DELETE", "/repos/acme/widget/git/refs/heads/ado/x")[0] == 204
    assert github_standin.call("DELETE", "/repos/acme/widget/git/refs/heads/ado/x")[0] == 422


def test_github_checks_reviews_and_rate_headers(
    github_standin: GitHubStandIn, tmp_path: Path
) -> None:
    github_standin.add_repo("acme/widget")
    work = clone_and_commit(github_standin, tmp_path, "acme/widget")
    run_git(work, "push", "-q", "origin", "ado/x")
    _, pull = open_pull(github_standin, "acme/widget", "ado/x")
    sha = pull["head"]["sha"]
    github_standin.set_checks("acme/widget", sha, "failure")
    github_standin.add_review("acme/widget", pull["number"], user="alice", state="APPROVED")
    status, headers, combined = github_standin.call(
        "GET", f"/repos/acme/widget/commits/{sha}/status"
    )
    assert (status, combined["state"]) == (200, "failure")
    assert int(headers["x-ratelimit-limit"]) == 5000
    assert headers["x-ratelimit-resource"] == "core"
    _, _, runs = github_standin.call("GET", "/repos/acme/widget/commits/ado/x/check-runs")
    assert runs["check_runs"][0]["conclusion"] == "failure"
    _, _, reviews = github_standin.call("GET", f"/repos/acme/widget/pulls/{pull['number']}/reviews")
    assert [(r["user"]["login"], r["state"]) for r in reviews] == [("alice", "APPROVED")]
    _, _, found = github_standin.call("GET", "/search/repositories?q=org:acme+archived:false")
    assert [item["full_name"] for item in found["items"]] == ["acme/widget"]


def test_github_secondary_limit_fault(github_standin: GitHubStandIn) -> None:
    github_standin.secondary_limit(r"/user$", retry_after=3, after=1)
    assert github_standin.call("GET", "/user")[0] == 200
    status, headers, body = github_standin.call("GET", "/user")
    assert (status, headers["retry-after"]) == (403, "3")
    assert "secondary rate limit" in body["message"]
    assert github_standin.call("GET", "/user")[0] == 200
    assert [s for m, p, s, _ in github_standin.requests if p.endswith("/user")] == [200, 403, 200]
    times = [t for *_, t in github_standin.requests]
    assert times == sorted(times) and times[-1] <= time.monotonic()


def test_github_primary_limit_fault(github_standin: GitHubStandIn) -> None:
    github_standin.primary_limit(r"/repos/", status=429, reset_in=30)
    github_standin.add_repo("acme/widget")
    status, headers, _ = github_standin.call("GET", "/repos/acme/widget")
    assert (status, headers["x-ratelimit-remaining"]) == (429, "0")
    assert int(headers["x-ratelimit-reset"]) > time.time()


def test_gitlab_nested_groups_and_rate_limit(gitlab_standin: GitLabStandIn, tmp_path: Path) -> None:
    gitlab_standin.add_repo("grp/sub/name", files={"deep.txt": "deep\n"})
    run_git(tmp_path, "clone", "-q", gitlab_standin.clone_url("grp/sub/name"), str(tmp_path / "d"))
    assert (tmp_path / "d/deep.txt").read_text() == "deep\n"
    gitlab_standin.add_repo("grp/top")
    status, _, project = gitlab_standin.call("GET", "/projects/grp%2Fsub%2Fname")
    assert (status, project["path_with_namespace"]) == (200, "grp/sub/name")
    assert gitlab_standin.call("GET", f"/projects/{project['id']}")[2]["id"] == project["id"]
    _, _, direct = gitlab_standin.call("GET", "/groups/grp/projects")
    _, _, nested = gitlab_standin.call("GET", "/groups/grp/projects?include_subgroups=true")
    assert [p["path_with_namespace"] for p in direct] == ["grp/top"]
    assert {p["path_with_namespace"] for p in nested} == {"grp/top", "grp/sub/name"}
    gitlab_standin.rate_limit(r"/projects/", retry_after=2)
    status, headers, body = gitlab_standin.call("GET", "/projects/grp%2Ftop")
    assert (status, headers["retry-after"], headers["ratelimit-remaining"]) == (429, "2", "0")
    assert body == "Retry later\n"


def test_gitlab_merge_and_approvals(gitlab_standin: GitLabStandIn, tmp_path: Path) -> None:
    gitlab_standin.add_repo("acme/widget", merge_methods=("merge",))
    work = clone_and_commit(gitlab_standin, tmp_path, "acme/widget")
    run_git(work, "push", "-q", "origin", "ado/x")
    _, mr = open_pull(gitlab_standin, "acme/widget", "ado/x")
    base = f"/projects/acme%2Fwidget/merge_requests/{mr['iid']}"
    gitlab_standin.add_review("acme/widget", mr["iid"], user="alice", state="APPROVED")
    _, _, approvals = gitlab_standin.call("GET", base + "/approvals")
    assert [a["user"]["username"] for a in approvals["approved_by"]] == ["alice"]
    assert gitlab_standin.call("PUT", base + "/merge", {"squash": True})[0] == 405
    status, _, merged = gitlab_standin.call("PUT", base + "/merge", {"sha": mr["sha"]})
    assert (status, merged["state"]) == (200, "merged")
    assert gitlab_standin.branch_sha("acme/widget", "main") == merged["merge_commit_sha"]


def test_gzip_request_bodies_pass_through_to_git(gitea_standin: GiteaStandIn) -> None:
    gitea_standin.add_repo("acme/widget")
    sha = gitea_standin.branch_sha("acme/widget", "main")
    want = f"want {sha}\n".encode()
    body = b"%04x%s0000" % (len(want) + 4, want) + b"0009done\n"
    request = urllib.request.Request(
        f"http://{gitea_standin.host}/acme/widget.git/git-upload-pack",
        data=gzip.compress(body),
        headers={
            **gitea_standin.auth_headers(),
            "Content-Type": "application/x-git-upload-pack-request",
            "Content-Encoding": "gzip",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.headers["Content-Type"] == "application/x-git-upload-pack-result"
        data = reply.read()
    assert data.startswith(b"0008NAK\n")
    assert b"PACK" in data


def test_faults_apply_to_git_requests_too(gitea_standin: GiteaStandIn, tmp_path: Path) -> None:
    gitea_standin.add_repo("acme/widget")
    gitea_standin.add_fault("GET", r"/info/refs$", 503, body="try later\n")
    url = gitea_standin.clone_url("acme/widget")
    failed = run_git(tmp_path, "clone", "-q", url, str(tmp_path / "a"), check=False)
    assert failed.returncode != 0 and "503" in failed.stderr
    run_git(tmp_path, "clone", "-q", url, str(tmp_path / "b"))


def test_gitea_rate_limit(gitea_standin: GiteaStandIn) -> None:
    gitea_standin.rate_limit(r"/user$", retry_after=5, times=2)
    assert [gitea_standin.call("GET", "/user")[0] for _ in range(3)] == [429, 429, 200]
