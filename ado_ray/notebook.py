"""ado-ray from a notebook: small exploratory batches, and past runs as pandas frames.

    from ado_ray import Batch, load_runs, load_tasks
    batch = Batch(["~/src/api", "~/src/web ticket=T-1"], cmd="python fix.py {repo_name}")
    batch.plan()                    # the resolved repositories, nothing started
    result = batch.run()            # progress lines in the cell; a BatchResult
    load_tasks(result.run.run_id)   # a pandas DataFrame, one row per repository

pandas is imported only by the loaders.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ado_ray import api
from ado_ray.config import Config, deep_merge
from ado_ray.engine.driver import BatchResult
from ado_ray.engine.progress import LineProgress
from ado_ray.models import RepoSpec
from ado_ray.repos import parse_repo_text

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
    """Past runs as a DataFrame: one row per run, a column per task state."""
    import pandas as pd

    rows = api.list_runs(api.ConfigSources(overrides={"state": state}), limit)
    frame = pd.DataFrame(
        [{k: v for k, v in row.items() if k != "counts"} | row["counts"] for row in rows]
    )
    return (
        frame.fillna({column: 0 for column in frame.columns if column not in rows[0]})
        if rows
        else frame
    )


def load_tasks(run_id: str, state: str = ".ado/state.db") -> Any:
    """One run's tasks as a DataFrame (the same fields as `ado status --json`)."""
    import pandas as pd

    return pd.DataFrame(api.summary(run_id, api.ConfigSources(overrides={"state": state}))["tasks"])


__all__ = ["Batch", "load_runs", "load_tasks"]
