"""What `ado logs` and `ado diff` share: finding a run's repository by what a user types."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ado_ray.errors import UsageError
from ado_ray.store import RunRecord, TaskRecord

SHOWN = 10  # candidates named in an error


def find_task(run: RunRecord, tasks: Sequence[TaskRecord], query: str) -> TaskRecord:
    """The task whose repository `query` names: its name, key or URL exactly, else a unique
    prefix of one of them, else a unique substring. UsageError (exit 2) when none matches,
    or several do at the first level anything matches, listing them."""
    if not query:
        raise UsageError("REPO is empty; expected a repository's name, key or part of one")

    def texts(task: TaskRecord) -> tuple[str, ...]:
        return (task.repo.name, task.repo.key, task.repo.url)

    tests: list[Callable[[str], bool]] = [
        lambda text: text == query,
        lambda text: text.startswith(query),
        lambda text: query in text,
    ]
    for test in tests:
        found = [task for task in tasks if any(test(text) for text in texts(task))]
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(f"{t.repo.name} ({t.repo.url})" for t in found[:SHOWN])
            more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
            raise UsageError(
                f"'{query}' matches {len(found)} repositories of run {run.run_id}: "
                f"{names}{more}; expected one: give more of its name or its URL"
            )
    names = ", ".join(task.repo.name for task in tasks[:SHOWN])
    more = f" and {len(tasks) - SHOWN} more" if len(tasks) > SHOWN else ""
    raise UsageError(
        f"no repository of run {run.run_id} is, starts with or contains '{query}'; "
        f"expected one of its {len(tasks)}: {names}{more} (`ado status {run.run_id}` lists them)"
    )
