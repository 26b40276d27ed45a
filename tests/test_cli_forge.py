"""The forge commands through the real `ado` CLI, once per forge (GitHub, GitLab, Gitea):
`batch --pr`, `prs` (show, merge, close), `publish --pr` of a dry run, `repos`, `--fork`,
and the input and credential errors.

`ado` runs in-process (click's `CliRunner` on `ado_ray.cli:main`, `--no-ray`) against a
stand-in: real git over HTTP plus the forge's REST API in its published shapes. Every
assertion is on what the stand-in holds (PRs, branches, comments, merges) or on parsed
JSON output, besides the exit code.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from ado_ray.cli import main
from tests.conftest import git
from tests.forge_fixtures import *  # noqa: F403
from tests.stubs.forge import ForgeStandIn
from tests.stubs.forge.store import PullRecord

pytestmark = pytest.mark.e2e

TOKEN_ENV = "ADO_TEST_FORGE_TOKEN"
REVIEWER = "alice"
BRANCH = "ado/bump"
# Writes CHANGED.txt in the checkout and appends "<repo_name>" to the log file (argv[1]),
# so a test can count agent runs per repository.
AGENT = """
import pathlib, sys
with open(sys.argv[1], "a") as log:
    log.write(sys.argv[2] + "\\n")
pathlib.Path("CHANGED.txt").write_text("changed by the agent\\n")
"""
# Where each forge's PR JSON keeps the web URL and the head commit.
WEB_URL = {"github": "html_url", "gitlab": "web_url", "gitea": "html_url"}


def head_sha(kind: str, pull: dict[str, Any]) -> str:
    return str(pull["sha"] if kind == "gitlab" else pull["head"]["sha"])


def table(stdout: str) -> dict[str, list[str]]:
    """A rich table as printed by `ado prs ...`: first cell → the row's other cells."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("│"):
            first, *cells = (cell.strip() for cell in line.strip("│").split("│"))
            rows[first] = cells
    return rows


def run_ado(*args: str, env: dict[str, str | None] | None = None) -> Result:
    """`ado ARGS` in this process; `env` is laid over os.environ (None unsets a variable)."""
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@dataclass
class Forge:
    """One stand-in plus what the CLI needs for it: a config file with its `forges:` entry,
    the token in $ADO_TEST_FORGE_TOKEN, a state store and an agent that logs its runs."""

    standin: ForgeStandIn
    tmp_path: Path
    config: Path
    agent: str

    @property
    def kind(self) -> str:
        return self.standin.kind

    @property
    def env(self) -> dict[str, str | None]:
        return {"ADO_CONFIG": str(self.config), TOKEN_ENV: self.standin.token}

    def ado(self, *args: str, expect: int | None = 0, **env: str | None) -> Result:
        """`ado ARGS` with this forge's config; asserts the exit code unless `expect` is None."""
        result = run_ado(*args, env={**self.env, **env})
        if expect is not None:
            assert result.exit_code == expect, (
                f"ado {shlex.join(args)} exited {result.exit_code}, expected {expect}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def ado_json(self, *args: str, expect: int | None = 0, **env: str | None) -> Any:
        return json.loads(self.ado(*args, "--json", expect=expect, **env).stdout)

    def repo_list(self, lines: Sequence[str], name: str = "repos.txt") -> Path:
        path = self.tmp_path / name
        path.write_text("".join(f"{line}\n" for line in lines))
        return path

    def batch(self, urls: Sequence[str], *flags: str, expect: int | None = 0) -> dict[str, Any]:
        """`ado batch` over `urls` as run "bump" (branch ado/bump); the run's JSON summary."""
        repos = self.repo_list(urls)
        args = ["batch", str(repos), "--cmd", self.agent, "--no-ray", "--name", "bump", *flags]
        summary: dict[str, Any] = self.ado_json(*args, expect=expect)
        return summary

    def agent_runs(self) -> list[str]:
        log = self.tmp_path / "agent.log"
        return log.read_text().split() if log.exists() else []

    def pulls(self, path: str) -> list[dict[str, Any]]:
        """The PRs of `path` in the forge's own JSON shape."""
        return self.standin.pulls(path)

    def record(self, path: str) -> PullRecord:
        """The one PR of `path`, as the stand-in keeps it (forge-neutral)."""
        records = self.standin.store.pulls.get(path, [])
        assert len(records) == 1, f"{path} has {len(records)} PRs; expected exactly one"
        return records[0]

    def git(self, path: str, *args: str) -> str | None:
        """`git ARGS` in the stand-in's bare repository: its output, None if it failed."""
        proc = subprocess.run(
            ["git", "-C", str(self.standin.bare_path(path)), *args],
            capture_output=True,
            text=True,
        )
        return proc.stdout if proc.returncode == 0 else None

    def commit_on_main(self, path: str, name: str, text: str) -> str:
        """Someone else's commit on `path`'s main branch (pushed straight to the bare
        repository, as a merge of another PR would); its SHA."""
        work = self.tmp_path / "elsewhere" / path
        git(self.tmp_path, "clone", "-q", str(self.standin.bare_path(path)), str(work))
        (work / name).write_text(text)
        git(work, "add", name)
        git(work, "commit", "-q", "-m", f"{name} from elsewhere")
        git(work, "push", "-q", "origin", "HEAD:main")
        return git(work, "rev-parse", "HEAD")

    def key(self, path: str) -> str:
        """The repository's key, as `ado prs` rows name it (host:port/path)."""
        return f"{self.standin.host}/{path}"

    def url(self, path: str) -> str:
        """The repository's clone URL, as repos.txt and run summaries name it."""
        return f"{self.standin.base_url}/{path}.git"


@pytest.fixture
def forge(forge_standin: ForgeStandIn, tmp_path: Path, script: Callable[[str, str], str]) -> Forge:
    standin = forge_standin
    standin.add_user(REVIEWER)
    config = tmp_path / "ado.yaml"
    settings = {
        "state": str(tmp_path / "state.db"),
        "work_root": str(tmp_path / "work"),
        "forges": {
            standin.host: {"type": standin.kind, "api_url": standin.api_url, "token_env": TOKEN_ENV}
        },
    }
    config.write_text(yaml.safe_dump(settings))
    agent = f"{script('agent', AGENT)} {tmp_path / 'agent.log'} {{repo_name}}"
    return Forge(standin, tmp_path, config, agent)


# ---- a run with PRs in every checks state ---------------------------------------------------

CHECKS = {"acme/green": "success", "acme/red": "failure", "acme/pending": "pending"}
REVIEWS = {"acme/green": "APPROVED", "acme/red": "CHANGES_REQUESTED"}
REBASE_ONLY = "acme/rebase-only"  # green checks, but the repository allows rebase merges only


@dataclass
class OpenedRun:
    run_id: str
    summary: dict[str, Any]
    paths: list[str]


@pytest.fixture
def opened(forge: Forge) -> OpenedRun:
    """`ado batch --pr --label deps --reviewer alice --assignee alice` over four
    repositories, then checks and reviews set on each PR's head commit."""
    urls = [forge.standin.add_repo(path) for path in CHECKS]
    urls.append(forge.standin.add_repo(REBASE_ONLY, merge_methods=("rebase",)))
    paths = [*CHECKS, REBASE_ONLY]
    flags = ["--pr", "--label", "deps", "--reviewer", REVIEWER, "--assignee", REVIEWER]
    summary = forge.batch(urls, *flags)
    assert summary["counts"] == {"changed": 4}, summary["tasks"]
    for path in paths:
        (pull,) = forge.pulls(path)
        sha = head_sha(forge.kind, pull)
        forge.standin.set_checks(path, sha, CHECKS.get(path, "success"))
        if path in REVIEWS:
            forge.standin.add_review(path, 1, REVIEWER, REVIEWS[path])
    return OpenedRun(summary["run_id"], summary, paths)


def test_batch_pr_opens_one_labelled_pr_per_repo_and_prs_shows_their_live_state(
    forge: Forge, opened: OpenedRun
) -> None:
    by_repo = {task["repo"]: task for task in opened.summary["tasks"]}
    for path in opened.paths:
        (pull,) = forge.pulls(path)
        record = forge.record(path)
        task = by_repo[forge.url(path)]
        assert task["pr_url"] == pull[WEB_URL[forge.kind]]
        assert head_sha(forge.kind, pull) == task["commit"]
        assert forge.standin.branch_sha(path, BRANCH) == task["commit"]
        assert (record.labels, record.reviewers, record.assignees) == (
            ["deps"],
            [REVIEWER],
            [REVIEWER],
        )
        assert record.base_branch == "main" and record.head_branch == BRANCH

    rows = forge.ado_json("prs", opened.run_id)

    assert [row["repo"] for row in rows] == [forge.key(path) for path in opened.paths]
    expected_review = {"APPROVED": "approved", "CHANGES_REQUESTED": "changes_requested"}
    for path, row in zip(opened.paths, rows, strict=True):
        (pull,) = forge.pulls(path)
        assert row["url"] == pull[WEB_URL[forge.kind]]
        assert row["state"] == "open" and row["result"] == "ok"
        assert row["checks"] == CHECKS.get(path, "success"), row
        assert row["review"] == expected_review.get(REVIEWS.get(path, ""), "none"), row
        assert row["mergeable"] is True, row

    shown = table(forge.ado("prs", opened.run_id).stdout)
    assert list(shown) == [forge.key(path) for path in opened.paths]
    for path, row in zip(opened.paths, rows, strict=True):
        expected = [row["url"], "open", row["checks"], row["review"], "True", ""]
        assert shown[forge.key(path)] == expected

    # a token the forge refuses: every row fails, naming the host and the variable
    wrong = "tok-wrong-0123456789"
    refused = forge.ado("prs", opened.run_id, "--json", expect=1, **{TOKEN_ENV: wrong})
    for row in json.loads(refused.stdout):
        assert row["result"] == "failed" and f"${TOKEN_ENV}" in row["reason"], row
        assert forge.standin.host in row["reason"] and wrong not in row["reason"], row


def test_merge_with_required_checks_merges_only_green_prs_with_an_allowed_method(
    forge: Forge, opened: OpenedRun
) -> None:
    before = {path: forge.standin.branch_sha(path, "main") for path in opened.paths}

    result = forge.ado("prs", "merge", opened.run_id, "--method", "squash", "--require-checks")
    rows = forge.ado_json("prs", "merge", opened.run_id, "--require-checks")  # again: no-op

    shown = {repo: cells[1:] for repo, cells in table(result.stdout).items()}  # no URL
    assert shown[forge.key("acme/green")] == ["merged", "squash", ""]
    assert shown[forge.key(REBASE_ONLY)] == ["merged", "rebase", ""]  # squash is forbidden
    assert shown[forge.key("acme/red")] == ["skipped", "", "checks failing"]
    assert shown[forge.key("acme/pending")] == ["skipped", "", "checks pending"]
    for path in ("acme/green", REBASE_ONLY):
        assert forge.record(path).state == "merged"
        assert forge.git(path, "show", "main:CHANGED.txt") == "changed by the agent\n"
    # squash: one new commit on the old base; rebase: the base fast-forwarded to the head
    squashed = forge.standin.branch_sha("acme/green", "main")
    assert forge.git("acme/green", "rev-parse", f"{squashed}^@") == f"{before['acme/green']}\n"
    assert squashed != forge.record("acme/green").last_head_sha
    assert forge.standin.branch_sha(REBASE_ONLY, "main") == forge.record(REBASE_ONLY).last_head_sha
    for path in ("acme/red", "acme/pending"):
        assert forge.record(path).state == "open"
        assert forge.standin.branch_sha(path, "main") == before[path]
        assert forge.git(path, "show", "main:CHANGED.txt") is None
    # the second merge sees the first one's result, live from the forge
    again = {row["repo"]: (row["result"], row["reason"]) for row in rows}
    assert again[forge.key("acme/green")] == ("skipped", "already merged")
    assert again[forge.key("acme/red")] == ("skipped", "checks failing")


def test_a_merge_the_forge_refuses_exits_1_with_its_reason(forge: Forge) -> None:
    url = forge.standin.add_repo("acme/clash")
    run = forge.batch([url], "--pr")
    base = forge.commit_on_main("acme/clash", "CHANGED.txt", "changed on main meanwhile\n")

    result = forge.ado("prs", "merge", run["run_id"], "--json", expect=1)

    (row,) = json.loads(result.stdout)
    assert row["result"] == "failed" and row["reason"], row  # the forge's own words
    assert row["method"] == "squash", row
    assert forge.record("acme/clash").state == "open"
    assert forge.standin.branch_sha("acme/clash", "main") == base
    (status,) = forge.ado_json("prs", run["run_id"])
    assert status["state"] == "open" and status["mergeable"] is False, status


def test_close_comments_closes_and_deletes_the_branches(forge: Forge, opened: OpenedRun) -> None:
    forge.ado("prs", "merge", opened.run_id, "--require-checks")  # green + rebase-only merge

    rows = forge.ado_json(
        "prs", "close", opened.run_id, "--comment", "superseded", "--delete-branch"
    )

    results = {row["repo"]: row for row in rows}
    for path in opened.paths:
        row, record = results[forge.key(path)], forge.record(path)
        assert row["branch_deleted"] is True, row
        assert forge.standin.branch_sha(path, BRANCH) is None
        if path in ("acme/red", "acme/pending"):
            assert row["result"] == "closed" and record.state == "closed"
            assert [comment["body"] for comment in record.comments] == ["superseded"]
        else:  # merged before: not closed, not commented, but its branch goes too
            assert (row["result"], row["reason"]) == ("skipped", "already merged"), row
            assert record.state == "merged" and record.comments == []
    states = {row["repo"]: row["state"] for row in forge.ado_json("prs", opened.run_id)}
    assert sorted(states.values()) == ["closed", "closed", "merged", "merged"]


# ---- publish a dry run later ----------------------------------------------------------------


def test_publish_pr_opens_prs_for_a_dry_runs_commits_without_running_the_agent_again(
    forge: Forge,
) -> None:
    paths = ["acme/one", "acme/two"]
    urls = [forge.standin.add_repo(path) for path in paths]
    dry = forge.batch(urls, "--dry-run")
    assert dry["counts"] == {"changed": 2}
    for path in paths:
        assert forge.pulls(path) == [] and forge.standin.branch_sha(path, BRANCH) is None
    recorded = {task["repo"]: task["commit"] for task in dry["tasks"]}  # by clone URL

    published = forge.ado_json("publish", dry["run_id"], "--pr", "--no-ray")

    assert published["counts"] == {"changed": 2}
    assert sorted(forge.agent_runs()) == ["one", "two"]  # one run each, in the dry run
    for path in paths:
        (pull,) = forge.pulls(path)
        assert head_sha(forge.kind, pull) == recorded[forge.url(path)]
        assert forge.standin.branch_sha(path, BRANCH) == recorded[forge.url(path)]
    urls_shown = {row["repo"]: row["url"] for row in forge.ado_json("prs", dry["run_id"])}
    assert urls_shown == {
        forge.key(path): forge.pulls(path)[0][WEB_URL[forge.kind]] for path in paths
    }


# ---- fork mode ------------------------------------------------------------------------------


def test_fork_pushes_to_the_token_users_fork_and_opens_one_pr_from_it(forge: Forge) -> None:
    standin = forge.standin
    url = standin.add_repo("acme/locked", can_push=False)
    fork_path = f"{standin.user}/locked"

    summary = forge.batch([url], "--pr", "--fork")

    (task,) = summary["tasks"]
    assert task["state"] == "changed", task
    fork = standin.store.get(fork_path)
    assert fork is not None and fork.fork and fork.parent == "acme/locked"
    assert standin.branch_sha(fork_path, BRANCH) == task["commit"]
    assert standin.branch_sha("acme/locked", BRANCH) is None  # nothing pushed upstream
    (pull,) = forge.pulls("acme/locked")
    record = forge.record("acme/locked")
    assert record.head_repo == fork_path and record.head_branch == BRANCH
    assert head_sha(forge.kind, pull) == task["commit"]
    if forge.kind == "gitlab":
        assert pull["source_project_id"] == fork.id != pull["target_project_id"]
    else:
        assert pull["head"]["repo"]["full_name"] == fork_path
    assert task["pr_url"] == pull[WEB_URL[forge.kind]]

    (row,) = forge.ado_json("prs", "close", summary["run_id"], "--delete-branch")

    assert row["result"] == "closed" and row["branch_deleted"] is True, row
    assert record.state == "closed" and standin.branch_sha(fork_path, BRANCH) is None


def test_fork_refuses_a_same_named_repository_of_the_user_that_is_not_its_fork(
    forge: Forge,
) -> None:
    standin = forge.standin
    url = standin.add_repo("acme/locked", can_push=False)
    standin.add_repo(f"{standin.user}/locked")  # the user's own project, not a fork

    summary = forge.batch([url], "--pr", "--fork", expect=1)

    (task,) = summary["tasks"]
    assert task["failure_class"] == "forge", task
    assert f"{standin.user}/locked exists and is not a fork" in task["error"], task
    assert standin.branch_sha(f"{standin.user}/locked", BRANCH) is None  # nothing pushed
    assert forge.pulls("acme/locked") == [] and forge.agent_runs() == []


# ---- ado repos ------------------------------------------------------------------------------

PLAIN = [f"acme/svc-{i}" for i in range(7)]  # public, Python, topic "svc"
SPECIAL: dict[str, dict[str, Any]] = {
    "acme/old": {"archived": True, "topics": ("svc",), "language": "Python"},
    "acme/copy": {"fork": True, "parent": "acme/svc-0", "topics": ("svc",), "language": "Python"},
    "acme/secret": {"visibility": "private", "topics": ("svc",), "language": "Python"},
    "acme/inside": {"visibility": "internal", "topics": ("svc",), "language": "Python"},
    "acme/gadget": {"language": "Go", "topics": ("tool",)},
    "acme/next": {"default_branch": "develop", "topics": ("svc",), "language": "Python"},
}
NESTED = "acme/platform/deep"  # GitLab only: a subgroup's project
PAGE = 3  # the stand-in's page cap, so that the listing spans several pages
# how `ado repos <kind>` is pointed at acme, and the API listing that it pages through
DISCOVER = {
    "github": (("--org", "acme"), "/orgs/acme/repos"),
    "gitlab": (("--group", "acme"), "/groups/acme/projects"),
    "gitea": (("--org", "acme"), "/orgs/acme/repos"),
}


@pytest.fixture
def fleet(forge: Forge) -> list[str]:
    """The repositories under acme (on GitLab also one in a subgroup), PAGE per page."""
    standin = forge.standin
    for path in PLAIN:
        standin.add_repo(path, topics=("svc",), language="Python")
    for path, options in SPECIAL.items():
        standin.add_repo(path, **options)
    paths = [*PLAIN, *SPECIAL]
    if forge.kind == "gitlab":
        standin.add_repo(NESTED, topics=("svc",), language="Python")
    standin.max_per_page = PAGE
    return paths


def repos_args(forge: Forge, *flags: str) -> list[str]:
    """`ado repos <kind> --host H --org|--group acme FLAGS`."""
    return ["repos", forge.kind, "--host", forge.standin.host, *DISCOVER[forge.kind][0], *flags]


def listed(forge: Forge, *flags: str) -> list[str]:
    """The repos.txt lines that `ado repos ... FLAGS` prints."""
    return forge.ado(*repos_args(forge, *flags)).stdout.splitlines()


def plan(forge: Forge, lines: list[str]) -> list[str]:
    """`ado batch --plan` of a list of `lines`: the lines it resolved them to."""
    listing = forge.repo_list(lines, "listed.txt")
    return forge.ado("batch", str(listing), "--cmd", forge.agent, "--plan").stdout.splitlines()


def test_repos_follows_every_page_and_lists_each_repository_once(
    forge: Forge, fleet: list[str]
) -> None:
    start = len(forge.standin.requests)

    lines = listed(forge)

    assert sorted(lines) == sorted(forge.url(path) for path in fleet)
    pages = [
        path for method, path, status, _ in forge.standin.requests[start:]
        if method == "GET" and path.startswith(forge.standin.api_prefix + DISCOVER[forge.kind][1])
        and status == 200
    ]  # fmt: skip
    assert len(pages) == -(-len(fleet) // PAGE) > 1, pages

    # the lines are a valid repos.txt: `ado batch --plan` reads every one back
    assert sorted(plan(forge, lines)) == sorted(lines)
    ssh = listed(forge, "--ssh")
    assert sorted(ssh) == sorted(f"git@{forge.standin.host}:{path}.git" for path in fleet)
    assert len(plan(forge, ssh)) == len(fleet)


def test_repos_filters_pins_and_json(forge: Forge, fleet: list[str]) -> None:
    python_svc = [*PLAIN, "acme/next"]  # topic svc, Python, not archived, not a fork, public
    cases: dict[tuple[str, ...], list[str]] = {
        ("--topic", "svc", "--skip-archived", "--skip-forks", "--visibility", "public"): python_svc,
        ("--language", "go"): ["acme/gadget"],
        ("--topic", "tool", "--topic", "svc"): [],
        ("--visibility", "private"): ["acme/secret"],
        ("--visibility", "internal"): ["acme/inside"],
        ("--skip-forks",): [p for p in fleet if p != "acme/copy"],
        ("--skip-archived",): [p for p in fleet if p != "acme/old"],
    }
    for flags, expected in cases.items():
        assert sorted(listed(forge, *flags)) == sorted(forge.url(p) for p in expected), flags

    pinned = listed(forge, "--pin-default-branch", *next(iter(cases)))
    assert sorted(pinned) == sorted(
        f"{forge.url(p)}@{'develop' if p == 'acme/next' else 'main'}" for p in python_svc
    )
    # the pinned lines run: a dry run over them checks out each default branch
    dry = forge.batch(pinned, "--dry-run")
    assert dry["counts"] == {"changed": len(python_svc)}
    assert sorted(task["repo"] for task in dry["tasks"]) == sorted(map(forge.url, python_svc))

    records = {record["path"]: record for record in forge.ado_json(*repos_args(forge))}
    assert sorted(records) == sorted(fleet)
    assert records["acme/next"]["default_branch"] == "develop"
    assert records["acme/old"]["archived"] is True and records["acme/copy"]["fork"] is True
    assert records["acme/secret"]["visibility"] == "private"
    assert records["acme/inside"]["visibility"] == "internal"
    assert records["acme/svc-1"]["topics"] == ["svc"]
    assert records["acme/svc-1"]["clone_url"] == forge.url("acme/svc-1")


@pytest.mark.parametrize("forge_standin", ["gitlab"], indirect=True)
def test_gitlab_include_subgroups_adds_the_subgroups_projects(
    forge: Forge, fleet: list[str]
) -> None:
    assert forge.url(NESTED) not in listed(forge)

    lines = listed(forge, "--include-subgroups", "--topic", "svc", "--skip-forks")

    assert forge.url(NESTED) in lines
    tagged = [path for path in [*fleet, NESTED] if path not in ("acme/copy", "acme/gadget")]
    assert sorted(lines) == sorted(map(forge.url, tagged))


# ---- errors ---------------------------------------------------------------------------------


def test_a_repository_on_a_host_without_a_forge_entry_is_exit_2_naming_file_and_line(
    forge: Forge,
) -> None:
    url = forge.standin.add_repo("acme/fine")
    repos = forge.repo_list([url, "https://git.nowhere.test/acme/stray"])

    result = forge.ado("batch", str(repos), "--cmd", forge.agent, "--no-ray", "--pr", expect=2)

    assert f"{repos}:2:" in result.stderr and "git.nowhere.test" in result.stderr
    assert f"{repos}:1:" not in result.stderr
    assert forge.agent_runs() == [] and forge.standin.requests == []  # nothing started


def test_pr_with_the_token_variable_unset_is_exit_2_naming_the_variable(forge: Forge) -> None:
    repos = forge.repo_list([forge.standin.add_repo("acme/fine")])

    result = forge.ado(
        "batch", str(repos), "--cmd", forge.agent, "--no-ray", "--pr", expect=2, **{TOKEN_ENV: None}
    )

    assert f"${TOKEN_ENV}" in result.stderr and forge.standin.host in result.stderr
    assert forge.agent_runs() == [] and forge.standin.requests == []


def test_a_wrong_token_fails_the_task_as_forge_naming_host_and_variable_not_the_token(
    forge: Forge,
) -> None:
    wrong = "tok-wrong-0123456789"
    repos = forge.repo_list([forge.standin.add_repo("acme/fine")])

    result = forge.ado(
        "batch", str(repos), "--cmd", forge.agent, "--no-ray", "--pr", "--json",
        expect=1, **{TOKEN_ENV: wrong},
    )  # fmt: skip

    (task,) = json.loads(result.stdout)["tasks"]
    assert task["state"] == "failed" and task["failure_class"] == "forge", task
    assert forge.standin.host in task["error"] and f"${TOKEN_ENV}" in task["error"], task
    assert wrong not in result.stdout + result.stderr
    assert wrong.encode() not in (forge.tmp_path / "state.db").read_bytes()
    assert forge.agent_runs() == [] and forge.pulls("acme/fine") == []
