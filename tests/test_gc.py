"""Disk: a finished task's checkout goes unless it is worth a look; `ado gc` removes old
runs' directories and unused mirrors, but not what a kept checkout borrows, nor any record."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ado_ray import api
from ado_ray.cli import main
from tests.conftest import git

pytestmark = pytest.mark.integration


def start(tmp_path: Path, state: str, repos: list[Path], name: str, **overrides: Any) -> Any:
    repo_list = tmp_path / f"{name}.txt"
    repo_list.write_text("".join(f"{r}\n" for r in repos))
    settings = {
        "state": str(tmp_path / state),
        "work_root": str(tmp_path / "work"),
        "no_ray": True,
        "name": name,
        "dry_run": True,
        "agent": {"cmd": "sh -c 'echo x > CHANGED.txt'"},
        **overrides,
    }
    return api.start(repo_list, api.ConfigSources(overrides=settings), io.StringIO())


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep-workspaces"])
def test_finished_checkouts_go_but_a_failed_ones_stays_and_logs_stay(
    tmp_path: Path, make_repo: Callable[..., Path], keep: bool
) -> None:
    cmd = "sh -c 'test {repo_name} = same || echo x > CHANGED.txt; test {repo_name} != bad'"
    repos = [make_repo("good"), make_repo("same"), make_repo("bad")]
    result = start(tmp_path, "state.db", repos, "tidy", dry_run=False, keep_workspaces=keep,
                   agent={"cmd": cmd})  # fmt: skip

    tasks = {task["name"]: task for task in result.summary["tasks"]}
    assert {name: task["state"] for name, task in tasks.items()} == {
        "good": "changed", "same": "no_change", "bad": "failed"
    }  # fmt: skip
    for name, task in tasks.items():
        task_dir = Path(task["workspace"])
        assert (task_dir / "logs" / "attempt-1.stdout.log").is_file()
        assert (task_dir / "repo").is_dir() == (keep or name == "bad"), name
        assert (task_dir / "home").is_dir() == keep, name


def gc(tmp_path: Path, *args: str, state: str = "state.db") -> dict[str, Any]:
    argv = ["gc", "--state", str(tmp_path / state), "--work-root", str(tmp_path / "work"), *args]
    done = CliRunner().invoke(main, [*argv, "--json"])
    assert done.exit_code == 0, done.output
    result: dict[str, Any] = json.loads(done.output)
    return result


def test_gc_removes_old_runs_and_unused_mirrors_but_not_what_a_kept_checkout_borrows(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    shared, own = make_repo("shared"), make_repo("own")
    ours = start(tmp_path, "state.db", [shared, own], "ours")
    theirs = start(tmp_path, "other.db", [shared], "theirs")  # same work root, other store
    assert ours.counts == {"changed": 2} and theirs.counts == {"changed": 1}
    runs = tmp_path / "work" / "runs"
    ours_dir, theirs_dir = runs / ours.run.run_id, runs / theirs.run.run_id
    mirrors = sorted((tmp_path / "work" / "cache").glob("*.git"))
    assert len(mirrors) == 2

    young = gc(tmp_path, "--older-than", "1h", "--mirrors-unused", "1h")
    assert young["removed"] == [] and young["kept_runs"] == 1 and young["unknown_runs"] == 1

    planned = gc(tmp_path, "--older-than", "0d", "--mirrors-unused", "0d", "--dry-run")
    listed = {(item["kind"], Path(item["path"]).name) for item in planned["removed"]}
    own_mirror = next(m for m in mirrors if m.name.startswith("own"))
    assert listed == {("run", ours.run.run_id), ("mirror", own_mirror.name)}
    assert planned["bytes"] > 0 and ours_dir.is_dir() and own_mirror.is_dir()  # dry run

    done = gc(tmp_path, "--older-than", "0d", "--mirrors-unused", "0d")
    assert {(item["kind"], Path(item["path"]).name) for item in done["removed"]} == listed
    assert not ours_dir.exists() and not own_mirror.exists()
    assert theirs_dir.is_dir()  # another store's run is not ours to judge
    shared_mirror = next(m for m in mirrors if m.name.startswith("shared"))
    assert shared_mirror.is_dir()  # its checkout borrows the mirror's objects
    checkout = next(theirs_dir.glob("*/repo"))
    assert git(checkout, "cat-file", "-t", "HEAD~1") == "commit"  # the kept checkout still reads

    report = CliRunner().invoke(
        main, ["status", ours.run.run_id, "--state", str(tmp_path / "state.db"), "--json"]
    )
    assert json.loads(report.output)["counts"] == {"changed": 2}  # records stay


def test_gc_rejects_a_duration_it_cannot_read(tmp_path: Path) -> None:
    done = CliRunner().invoke(
        main, ["gc", "--older-than", "soon", "--state", str(tmp_path / "s.db")]
    )
    assert done.exit_code == 2
    assert "--older-than 'soon': expected a number and a unit" in done.output
