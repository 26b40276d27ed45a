"""`ado watch RUN_ID`: follow a run in the store, from anywhere (the store is the truth)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

from ado_ray import api
from ado_ray.api import ConfigSources
from ado_ray.engine.driver import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from ado_ray.models import SUCCESS_STATES, RunStatus, TaskState
from ado_ray.store import RunRecord, TaskRecord


def watch(
    run_id: str,
    sources: ConfigSources,
    stream: IO[str] | None = None,
    every_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print the run's counts whenever they change, until it is no longer running.

    The exit code is the run's: 0 every task changed or had no change, 1 a task failed,
    130 the run was interrupted (or this watch was, with Ctrl-C; the run is not touched).
    """
    stream = stream or sys.stdout
    last = None
    try:
        with api.opened_store(api.load_config(sources)) as store:
            while True:
                run = store.get_run(run_id)
                tasks = store.list_tasks(run_id)
                line = _watch_line(run, tasks)
                if line != last:
                    print(line, file=stream, flush=True)
                    last = line
                if run.status is not RunStatus.RUNNING:
                    return _watch_exit(run, tasks)
                sleep(every_s)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _watch_line(run: RunRecord, tasks: list[TaskRecord]) -> str:
    done = sum(1 for task in tasks if task.state.terminal)
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.state.value] = counts.get(task.state.value, 0) + 1
    parts = ", ".join(
        f"{state.value} {counts[state.value]}" for state in TaskState if counts.get(state.value)
    )
    return f"{run.name} ({run.run_id}) · {run.status.value} · {done}/{len(tasks)} done · {parts}"


def _watch_exit(run: RunRecord, tasks: list[TaskRecord]) -> int:
    if run.status is RunStatus.INTERRUPTED:
        return EXIT_INTERRUPTED
    return EXIT_OK if all(task.state in SUCCESS_STATES for task in tasks) else EXIT_FAILED
