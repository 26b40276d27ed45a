"""ado-ray from a notebook: small exploratory batches, and past runs as pandas frames.

    from ado_ray import Batch, load_runs, load_tasks
    batch = Batch(["~/src/api", "~/src/web ticket=T-1"], cmd="python fix.py {repo_name}")
    batch.plan()                    # the resolved repositories, nothing started
    result = batch.run()            # progress lines in the cell; a BatchResult
    load_tasks(result.run.run_id)   # a pandas DataFrame, one row per repository

pandas is imported only by the loaders; it comes with `pip install 'ado-ray[notebook]'`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ado_ray import api, reports
from ado_ray.config import Config, deep_merge
from ado_ray.engine.driver import BatchResult
from ado_ray.engine.progress import LineProgress
from ado_ray.models import FailureClass, RepoSpec, RunStatus, Step, TaskState
from ado_ray.repos import parse_repo_text
from ado_ray.store import Store, TaskRecord

AGENT_SHORTCUTS = ("cmd", "prompt", "prompt_file", "timeout_s", "stall_timeout_s", "env_allow")


class Batch:
    """A batch described in Python; the same engine as `ado batch`.

    `repos` is a repository-list file, or the lines of one. Keyword arguments are config
    keys (`parallel=4`, `state="..."`, `ray={"address": ...}`); `cmd`, `prompt`,
    `prompt_file`, `timeout_s`, `stall_timeout_s` and `env_allow` are shortcuts for
    `agent={...}`.
    """

    def __init__(
        self, repos: str | Path | Sequence[str], *, config_file: Path | None = None, **settings: Any
    ) -> None:
        agent = {key: settings.pop(key) for key in AGENT_SHORTCUTS if key in settings}
        overrides = deep_merge(settings, {"agent": agent}) if agent else settings
        self.config: Config = api.load_config(api.ConfigSources(config_file, overrides))
        self._repos = repos

    def plan(self) -> list[RepoSpec]:
        return self._checked()[0]

    def run(self) -> BatchResult:
        repos, prompt = self._checked()
        source = str(self._repos) if isinstance(self._repos, str | Path) else "<notebook>"
        return api.start_planned(
            self.config, repos, source, prompt, LineProgress(sys.stdout, every_s=5)
        )

    def _checked(self) -> tuple[list[RepoSpec], str | None]:
        if isinstance(self._repos, str | Path):
            return api.plan(Path(self._repos).expanduser(), self.config)
        repos = parse_repo_text("\n".join(self._repos), "<notebook>", Path.cwd())
        return api.check_plan(repos, "<notebook>", self.config)


def load_runs(state: str = ".ado/state.db", limit: int = 1000) -> Any:
    """Past runs as a DataFrame, newest first: one row per run, with `tasks` (how many) and
    a column per task state (`TaskState`, in its order), 0 where none is in that state.

    The columns and their types are the same however many runs there are (none included):
    `created_at` is a UTC datetime, `status` a category of `RunStatus`.
    """
    pd = _pandas()

    rows = [
        {key: value for key, value in row.items() if key != "counts"}
        | {"tasks": sum(row["counts"].values())}
        | {member.value: row["counts"].get(member.value, 0) for member in TaskState}
        for row in api.list_runs(api.ConfigSources(overrides={"state": state}), limit)
    ]
    return _frame(pd, rows, RUN_COLUMNS | {member.value: "int64" for member in TaskState})


def load_tasks(run_id: str | Iterable[str], state: str = ".ado/state.db") -> Any:
    """The tasks of one run (or of several: `load_tasks(load_runs().run_id)`) as a DataFrame,
    one row per repository and run, in repository-list order.

    The fields of `ado status --json`, with the tokens as `input_tokens`, `output_tokens`
    and `cache_tokens`, plus `run_id`, `created_at`, `updated_at` and `finished_at` (UTC
    datetimes; NaT while a task is not finished) and `files_changed`, `insertions` and
    `deletions` of the task's commit. Exactly the columns of `TASK_COLUMNS`, of those types,
    for any run (and for no run at all); `started_at` and `duration_s` are NA where the
    report does not give them.
    """
    pd = _pandas()

    run_ids = [run_id] if isinstance(run_id, str) else list(run_id)
    rows: list[dict[str, Any]] = []
    if run_ids:
        sources = api.ConfigSources(overrides={"state": state})
        with api.opened_store(api.load_config(sources)) as store:
            for one in run_ids:
                tasks = store.list_tasks(one)
                summary = reports.run_summary(store, store.get_run(one), tasks)
                rows += [
                    _task_row(store, task, row)
                    for task, row in zip(tasks, summary["tasks"], strict=True)
                ]
    return _frame(pd, rows, TASK_COLUMNS)


def _task_row(store: Store, task: TaskRecord, row: dict[str, Any]) -> dict[str, Any]:
    checkpoints = store.checkpoints(task.task_id) if task.commit_sha else {}
    stat = (checkpoints.get(Step.COMMITTED) or {}).get("diffstat") or {}
    return (
        row
        | {f"{name}_tokens": count for name, count in (row.get("tokens") or {}).items()}
        | {
            "run_id": task.run_id,
            "created_at": task.created_at,
            "updated_at": task.updated_at,
            "finished_at": task.updated_at if task.state.terminal else None,
            "files_changed": stat.get("files"),
            "insertions": stat.get("insertions"),
            "deletions": stat.get("deletions"),
        }
    )


# Column -> pandas dtype. Text is pandas' "string" (missing: <NA>) in pandas 2 and 3 alike;
# counts that may be missing are "Int64"; states and classes are categories listing every
# value, so `value_counts()` and charts show the ones that never occurred as 0.
RUN_COLUMNS: dict[str, Any] = {
    "run_id": "string",
    "name": "string",
    "created_at": "datetime64[ns, UTC]",
    "status": ("category", RunStatus),
    "branch": "string",
    "tasks": "int64",
}
TASK_COLUMNS: dict[str, Any] = {
    "run_id": "string",
    "task_id": "string",
    "name": "string",
    "repo": "string",
    "line": "int64",
    "ref": "string",
    "state": ("category", TaskState),
    "failure_class": ("category", FailureClass),
    "error": "string",
    "created_at": "datetime64[ns, UTC]",
    "updated_at": "datetime64[ns, UTC]",
    "started_at": "datetime64[ns, UTC]",
    "finished_at": "datetime64[ns, UTC]",
    "duration_s": "float64",
    "attempts": "int64",
    "agent": "string",
    "provider": "string",
    "mode": "string",
    "session_id": "string",
    "agent_s": "float64",
    "limit_wait_s": "float64",
    "cost_usd": "float64",
    "input_tokens": "int64",
    "output_tokens": "int64",
    "cache_tokens": "int64",
    "branch": "string",
    "commit": "string",
    "base_sha": "string",
    "diffstat": "string",
    "files_changed": "Int64",
    "insertions": "Int64",
    "deletions": "Int64",
    "where": "string",
    "pr_url": "string",
    "pr_number": "Int64",
    "workspace": "string",
}


def _pandas() -> Any:
    try:
        import pandas
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "load_runs and load_tasks need pandas, which is not installed here; "
            "install the notebook extra: pip install 'ado-ray[notebook]'"
        ) from exc
    return pandas


def _frame(pd: Any, rows: list[dict[str, Any]], columns: dict[str, Any]) -> Any:
    """`rows` as a DataFrame of exactly `columns`, in that order and of those types (a key
    missing from the rows gives a column of NA; keys beyond `columns` are left out)."""
    raw = pd.DataFrame.from_records(rows, columns=list(columns)) if rows else None
    return pd.DataFrame(
        {
            name: _column(pd, raw[name] if raw is not None else [], dtype)
            for name, dtype in columns.items()
        }
    )


def _column(pd: Any, values: Any, dtype: Any) -> Any:
    if isinstance(dtype, tuple):  # ("category", SomeEnum)
        categories = pd.CategoricalDtype([member.value for member in dtype[1]], ordered=False)
        return pd.Series(values, dtype=object).astype(categories)
    if str(dtype).startswith("datetime64"):
        times = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601")
        return times.astype(dtype)
    return pd.Series(values, dtype=object).astype(dtype)


__all__ = ["RUN_COLUMNS", "TASK_COLUMNS", "Batch", "load_runs", "load_tasks"]
