"""Reading a run a page at a time: the store's bulk reads, the driver handing out tasks
page by page, and the status and reports built from pages, on every backend.

The page size is cut to 2 here (`driver.PAGE`, `reports.PAGE`) so that a few tasks span
several pages; bench/scale.py measures what that buys at 100,000 tasks.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ado_ray import api, reports
from ado_ray.engine import driver
from ado_ray.models import CheckpointEvent, SessionEvent, Step, TaskState, TaskUpdate
from ado_ray.repos import parse_repo_list
from ado_ray.store import Store, open_store
from tests.store.conftest import RUN, create_run

ORDER = """
import pathlib, sys
with open(sys.argv[1], "a") as out:
    out.write(sys.argv[2] + "\\n")
pathlib.Path("CHANGED.txt").write_text("changed\\n")
"""


def test_a_page_of_tasks_follows_the_list_and_skips_finished_ones_on_request(
    store: Store,
) -> None:
    ids = create_run(store, n_tasks=5)
    store.apply([TaskUpdate(ids[1], TaskState.CHANGED), TaskUpdate(ids[3], TaskState.FAILED)])
    assert [t.task_id for t in store.task_page(RUN, limit=2)] == ids[:2]
    assert [t.task_id for t in store.task_page(RUN, 1, 2)] == ids[2:4]
    assert [t.task_id for t in store.task_page(RUN, 4, 2)] == []
    unfinished = store.task_page(RUN, limit=10, unfinished=True)
    assert [t.task_id for t in unfinished] == [ids[0], ids[2], ids[4]]
    assert [t.task_id for t in store.tasks_in_states(RUN, [TaskState.QUEUED], 2)] == [
        ids[0],
        ids[2],
    ]
    assert {t.task_id for t in store.recent_tasks(RUN, 10)} == {ids[1], ids[3]}
    assert [t.task_id for t in store.recent_tasks(RUN, 1)] in ([ids[1]], [ids[3]])
    found = store.get_task(ids[3])
    assert found is not None and found.state is TaskState.FAILED
    assert store.get_task("no-such-task") is None


def test_bulk_reads_return_what_the_per_task_reads_do(store: Store) -> None:
    ids = create_run(store, n_tasks=3)
    usage = {"cost_usd": 0.25, "provider": "anthropic"}
    store.apply(
        [
            TaskUpdate(ids[0], TaskState.RUNNING, attempt=1),
            CheckpointEvent(ids[0], Step.AGENT_DONE, {"exit_code": 0}),
            CheckpointEvent(ids[0], Step.PREPARED, {"base_sha": "a" * 40}),
            SessionEvent(ids[0], 2, "command", None, 0, 1.0, "l2", usage, "ok"),
            SessionEvent(ids[0], 1, "command", "s1", 1, 2.0, "l1", usage, "interrupted"),
            SessionEvent(ids[2], 1, "command", None, 0, 1.0, "l", {"cost_usd": 1.5}, "ok"),
            TaskUpdate(ids[0], TaskState.CHANGED),
        ]
    )
    checkpoints = store.checkpoints_of(ids)
    assert checkpoints == {ids[0]: store.checkpoints(ids[0])}
    assert list(checkpoints[ids[0]]) == [Step.PREPARED, Step.AGENT_DONE]  # in step order
    sessions = store.sessions_of(ids)
    assert sessions == {task_id: store.sessions(task_id) for task_id in (ids[0], ids[2])}
    assert [s.attempt for s in sessions[ids[0]]] == [1, 2]
    changes = store.transitions_of(ids)
    assert [c.state for c in changes[ids[0]]] == [TaskState.RUNNING, TaskState.CHANGED]
    assert changes[ids[0]] == [c for c in store.transitions(RUN) if c.task_id == ids[0]]
    assert store.run_cost(RUN) == pytest.approx(2.0)
    assert store.run_cost("no-such-run") == 0.0


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver, "PAGE", 2)
    monkeypatch.setattr(reports, "PAGE", 2)


@pytest.mark.integration
def test_a_resume_over_several_pages_runs_only_the_unfinished_tasks_in_list_order(
    store_url: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
    small_pages: None,
) -> None:
    names = [f"r{i}" for i in range(7)]
    repo_list = tmp_path / "repos.txt"
    repo_list.write_text("".join(f"{make_repo(name)}\n" for name in names))
    order = tmp_path / "order.txt"
    settings: dict[str, Any] = {
        "state": store_url,
        "work_root": str(tmp_path / "work"),
        "parallel": 1,
        "no_ray": True,
        "name": "pages",
        "agent": {"cmd": f"{script('order', ORDER)} {order} {{repo_name}}"},
    }
    sources = api.ConfigSources(overrides=settings)
    config = api.load_config(sources)
    with api.opened_store(config) as store:  # planned, then some tasks ended before a crash
        run = driver.new_run(store, config, parse_repo_list(repo_list), str(repo_list), None)
        ids = [task.task_id for task in store.list_tasks(run.run_id)]
        store.apply(
            [
                TaskUpdate(ids[1], TaskState.NO_CHANGE),
                TaskUpdate(ids[2], TaskState.SKIPPED, error="no agent started"),
                TaskUpdate(ids[5], TaskState.FAILED, error="agent exited 1"),
            ]
        )

    result = api.resume(run.run_id, sources, False, io.StringIO())

    assert order.read_text().split() == ["r0", "r3", "r4", "r6"]  # each once, in list order
    assert result.counts == {"changed": 4, "no_change": 1, "failed": 1, "skipped": 1}
    assert result.exit_code == driver.EXIT_FAILED
    summary = result.summary
    assert [t["name"] for t in summary["tasks"]] == names
    states = ["changed", "no_change", "skipped", "changed", "changed", "failed", "changed"]
    assert [t["state"] for t in summary["tasks"]] == states
    assert summary["counts"] == result.counts
    streamed = io.StringIO()
    assert result.write_json is not None
    result.write_json(streamed)
    assert json.loads(streamed.getvalue()) == summary  # the same object, a task at a time


@pytest.mark.integration
def test_status_and_reports_of_a_run_over_several_pages_count_every_task(
    store_url: str, small_pages: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reports, "STATUS_ROWS", 3)
    store = open_store(store_url)
    try:
        store.migrate()
        ids = create_run(store, n_tasks=7)
        usage = {"cost_usd": 0.5, "provider": "anthropic", "mode": "api", "input_tokens": 10}
        store.apply(
            [TaskUpdate(ids[i], TaskState.CHANGED, commit_sha=f"{i:040x}") for i in (0, 1, 2)]
            + [TaskUpdate(ids[i], TaskState.FAILED, error="boom") for i in (4, 6)]
            + [SessionEvent(i, 1, "command", None, 0, 1.0, "l", usage, "ok") for i in ids[:3]]
        )
        run = store.get_run(RUN)
        lazy = reports.run_summary(store, run, lazy=True)
        whole = reports.run_summary(store, run)
        assert len(lazy["tasks"]) == 7
        assert list(lazy["tasks"]) == whole["tasks"]
        assert {k: v for k, v in lazy.items() if k != "tasks"} == {
            k: v for k, v in whole.items() if k != "tasks"
        }
        assert whole["counts"] == {"queued": 2, "changed": 3, "failed": 2}
        assert whole["cost_usd"] == pytest.approx(1.5)
        assert whole["usage"][0]["agent_runs"] == 3
        streamed = io.StringIO()
        reports.write_json(lazy, streamed)
        assert streamed.getvalue() == reports.to_json(whole)  # byte for byte
        markdown = reports.to_markdown(lazy)
        assert "- repositories: 7 from" in markdown
        assert markdown.count("| failed |") == 1 + 2  # the counts table and two rows
        junit = reports.to_junit(lazy)
        assert 'tests="7" failures="2" errors="0" skipped="2"' in junit
        status = reports.status_summary(store, run)
        assert status["total"] == 7 and status["counts"] == whole["counts"]
        # more tasks than rows shown: the failed ones first, then the others in list order
        assert [t["task_id"] for t in status["tasks"]] == [ids[4], ids[6], ids[0]]
    finally:
        store.close()
