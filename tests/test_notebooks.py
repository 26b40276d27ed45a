"""The notebooks in notebooks/ run top to bottom, from any directory, and draw their charts;
`load_runs` and `load_tasks` give the same columns and types whatever the runs hold."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from ado_ray import Batch, load_runs, load_tasks
from ado_ray.models import FailureClass, TaskState
from ado_ray.notebook import RUN_COLUMNS, TASK_COLUMNS

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
STATES = [state.value for state in TaskState]
ADD_LINE = "from pathlib import Path\nPath('README.md').write_text('changed\\n')\n"


def execute(name: str, cwd: Path, ray_address: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run notebooks/NAME with its kernel in `cwd`; fail on any cell's error."""
    monkeypatch.setenv("RAY_ADDRESS", ray_address)  # the kernel joins the session's Ray instance
    scratch = cwd.parent / f"{cwd.name}-tmp"  # the notebook's temporary directory, not /tmp
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws PNGs
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]
    assert errors == []
    return notebook


def text(cell: Any) -> str:
    return "".join(
        o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in cell.outputs
    )


def pngs(cell: Any) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.outputs)


@pytest.mark.e2e
def test_quickstart_runs_from_another_directory_and_draws_a_chart(
    ray_address: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    notebook = execute("quickstart.ipynb", tmp_path, ray_address, monkeypatch)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]

    assert text(code[0]) == "['alpha', 'beta', 'gamma']"
    assert text(code[1]) == "['alpha', 'beta', 'gamma']"
    assert text(code[2]).endswith("{'changed': 2, 'no_change': 1}")
    assert text(code[3]).count("no_change") == 1
    assert pngs(code[4]) == 1
    runs = text(code[5])
    assert "notebook-demo" in runs and "failed" in runs  # a state no task was in: a column of 0
    assert list(tmp_path.iterdir()) == []  # it wrote nothing where it was started


@pytest.mark.e2e
def test_explore_runs_charts_durations_costs_and_failures(
    ray_address: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    notebook = execute("explore_runs.ipynb", tmp_path, ray_address, monkeypatch)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    charts = {cell.source.splitlines()[0]: pngs(cell) for cell in code if pngs(cell)}

    assert len(charts) == 3, charts  # durations, cost per provider and mode, failures
    assert all(count == 1 for count in charts.values())
    assert "sample-1" in text(code[2]) and "sample-2" in text(code[2])
    by_mode = text(code[5])
    assert "claude (subscription)" in by_mode and "haiku (api)" in by_mode
    failures = text(code[6])  # failed tasks per class, 0 for the classes that did not occur
    for failure in ("agent", "timeout", "input", "infra"):
        assert re.search(rf"^{failure} +[1-9]", failures, re.M), failures
    assert re.search(r"^forge +0$", failures, re.M), failures
    assert list(tmp_path.iterdir()) == []


def test_the_notebooks_are_what_make_notebooks_writes(tmp_path: Path) -> None:
    """Cell by cell; outputs are not compared (`jupyter execute --inplace` keeps them)."""
    subprocess.run(
        [sys.executable, str(NOTEBOOKS / "make_notebooks.py"), str(tmp_path)], check=True
    )

    def cells(path: Path) -> list[tuple[str, str, str]]:
        notebook = nbformat.read(path, as_version=4)
        return [(cell.id, cell.cell_type, cell.source) for cell in notebook.cells]

    for name in ("quickstart.ipynb", "explore_runs.ipynb"):
        assert cells(NOTEBOOKS / name) == cells(tmp_path / name), (
            f"notebooks/{name} is not what make_notebooks.py writes; "
            "edit the script and run `python notebooks/make_notebooks.py`"
        )


@pytest.fixture
def changed_run(
    make_repo: Callable[..., Path], script: Callable[[str, str], str], tmp_path: Path
) -> tuple[str, str]:
    """A finished run (in-process, no Ray) whose two tasks are both `changed`."""
    repos = [str(make_repo(name)) for name in ("one", "two")]
    state = str(tmp_path / "state.db")
    result = Batch(
        repos,
        cmd=script("edit", ADD_LINE),
        no_ray=True,
        name="only-changed",
        state=state,
        work_root=str(tmp_path / "work"),
    ).run()
    assert result.counts == {"changed": 2}
    return result.run.run_id, state


def test_load_runs_has_a_zero_column_for_every_state_that_did_not_occur(
    changed_run: tuple[str, str],
) -> None:
    _, state = changed_run
    runs = load_runs(state=state)

    assert list(runs.columns) == [*RUN_COLUMNS, *STATES]
    row = runs.iloc[0]
    assert row["name"] == "only-changed" and row["tasks"] == 2
    assert {s: int(row[s]) for s in STATES} == {s: 2 if s == "changed" else 0 for s in STATES}
    assert all(runs[s].dtype == "int64" for s in STATES)
    assert isinstance(runs["created_at"].dtype, pd.DatetimeTZDtype)
    assert str(runs["created_at"].dtype.tz) == "UTC"
    assert list(runs["status"].cat.categories) == ["running", "interrupted", "finished"]


def test_load_runs_of_an_empty_store_has_the_same_columns_and_types(
    changed_run: tuple[str, str], tmp_path: Path
) -> None:
    _, state = changed_run
    empty = load_runs(state=str(tmp_path / "empty.db"))

    assert len(empty) == 0
    assert empty.dtypes.to_dict() == load_runs(state=state).dtypes.to_dict()


def test_load_tasks_has_stable_columns_and_types(changed_run: tuple[str, str]) -> None:
    run_id, state = changed_run
    tasks = load_tasks(run_id, state=state)
    none = load_tasks([], state=state)

    assert list(tasks.columns) == list(TASK_COLUMNS) == list(none.columns)
    assert tasks.dtypes.to_dict() == none.dtypes.to_dict()
    assert len(none) == 0 and list(tasks["name"]) == ["one", "two"]
    for column in ("created_at", "updated_at", "started_at", "finished_at"):
        assert isinstance(tasks[column].dtype, pd.DatetimeTZDtype)
    assert (tasks["finished_at"] >= tasks["created_at"]).all()  # both finished: no NaT
    assert list(tasks["state"].cat.categories) == STATES
    assert list(tasks["failure_class"].cat.categories) == [c.value for c in FailureClass]
    assert tasks["state"].value_counts()["failed"] == 0
    assert tasks["failure_class"].isna().all() and tasks["pr_url"].isna().all()
    assert list(tasks["files_changed"]) == [1, 1] and list(tasks["insertions"]) == [1, 1]
    assert (tasks["agent_s"] > 0).all() and tasks["agent_s"].dtype == "float64"
    assert (tasks["cost_usd"] == 0).all() and (tasks["input_tokens"] == 0).all()
    assert list(tasks["provider"]) == ["command", "command"]
    assert list(tasks["run_id"]) == [run_id, run_id]


def test_load_tasks_takes_several_runs(changed_run: tuple[str, str]) -> None:
    run_id, state = changed_run
    assert list(load_tasks([run_id, run_id], state=state)["run_id"]) == [run_id] * 4
