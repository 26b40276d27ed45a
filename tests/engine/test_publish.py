"""Publishing without a forge: conflict rules before the agent runs, and `ado publish` of a
dry run from the commit kept in the store (the workspace gone)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ado_ray import api
from ado_ray.models import Step
from ado_ray.store import open_store
from tests.conftest import git

pytestmark = pytest.mark.integration

# Appends a line to NOTES.txt and counts its own runs in a file outside the repository.
AGENT = """
import pathlib, sys
runs = pathlib.Path(sys.argv[1])
runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
notes = pathlib.Path("NOTES.txt")
notes.write_text((notes.read_text() if notes.exists() else "") + sys.argv[2] + "\\n")
"""


def sources(tmp_path: Path, cmd: str, **overrides: Any) -> api.ConfigSources:
    settings = {
        "state": str(tmp_path / "state.db"),
        "work_root": str(tmp_path / "work"),
        "no_ray": True,
        "agent": {"cmd": cmd},
        **overrides,
    }
    return api.ConfigSources(overrides=settings)


def start(tmp_path: Path, repos: list[Path], cmd: str, **overrides: Any) -> Any:
    repo_list = tmp_path / "repos.txt"
    repo_list.write_text("".join(f"{r}\n" for r in repos))
    return api.start(repo_list, sources(tmp_path, cmd, **overrides), io.StringIO())


@pytest.fixture
def agent(tmp_path: Path, script: Callable[[str, str], str]) -> Callable[[str], str]:
    prefix = script("notes", AGENT)
    return lambda word: f"{prefix} {tmp_path / 'runs-{repo_name}'} {word}"


def runs(tmp_path: Path, name: str) -> int:
    path = tmp_path / f"runs-{name}"
    return len(path.read_text()) if path.exists() else 0


def test_an_existing_branch_is_skipped_before_any_agent_runs(
    tmp_path: Path, make_repo: Callable[..., Path], agent: Callable[[str], str]
) -> None:
    repo = make_repo("r")
    first = start(tmp_path, [repo], agent("one"), name="deps")
    assert first.counts == {"changed": 1}
    pushed = git(repo, "rev-parse", "ado/deps")

    again = start(tmp_path, [repo], agent("two"), name="deps")

    assert again.counts == {"skipped": 1}
    task = again.summary["tasks"][0]
    assert "branch ado/deps exists" in task["error"] and "no agent started" in task["error"]
    assert runs(tmp_path, "r") == 1  # the second agent never ran
    assert git(repo, "rev-parse", "ado/deps") == pushed


@pytest.mark.parametrize("conflict", ["replace", "append"])
def test_replace_and_append_work_on_the_existing_branch(
    tmp_path: Path, make_repo: Callable[..., Path], agent: Callable[[str], str], conflict: str
) -> None:
    repo = make_repo("r")
    start(tmp_path, [repo], agent("one"), name="deps")
    first = git(repo, "rev-parse", "ado/deps")

    result = start(tmp_path, [repo], agent("two"), name="deps", publish={"conflict": conflict})

    assert result.counts == {"changed": 1}
    head = git(repo, "rev-parse", "ado/deps")
    assert head == result.summary["tasks"][0]["commit"] != first
    parent = git(repo, "rev-parse", "ado/deps^")
    notes = git(repo, "show", "ado/deps:NOTES.txt")
    if conflict == "append":
        assert parent == first and notes == "one\ntwo"
    else:
        assert parent == git(repo, "rev-parse", "main") and notes == "two"


def test_publish_pushes_a_dry_runs_commit_from_the_store_without_its_workspace(
    tmp_path: Path, make_repo: Callable[..., Path], agent: Callable[[str], str]
) -> None:
    repos = [make_repo("a"), make_repo("b")]
    dry = start(tmp_path, repos, agent("one"), name="later", dry_run=True)
    assert dry.counts == {"changed": 2}
    assert all("not pushed" in task["where"] for task in dry.summary["tasks"])
    recorded = {task["name"]: task["commit"] for task in dry.summary["tasks"]}
    store = open_store(str(tmp_path / "state.db"))
    try:
        for task in store.list_tasks(dry.run.run_id):
            assert store.bundle(task.task_id) is not None
    finally:
        store.close()
    shutil.rmtree(tmp_path / "work")  # as if the node that ran the agents were gone

    published = api.publish(dry.run.run_id, sources(tmp_path, agent("never")), io.StringIO())

    assert published.counts == {"changed": 2}
    for repo in repos:
        assert git(repo, "rev-parse", "ado/later") == recorded[repo.name]
        assert runs(tmp_path, repo.name) == 1  # no agent ran again
    store = open_store(str(tmp_path / "state.db"))
    try:
        for task in store.list_tasks(dry.run.run_id):
            assert Step.PUSHED in store.checkpoints(task.task_id)
    finally:
        store.close()
