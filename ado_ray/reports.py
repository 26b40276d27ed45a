"""Reports of a run from the store: one JSON shape, rendered as JSON, Markdown, JUnit XML
or HTML (`report_html.py`).

The JSON object is also what `ado batch --json` prints at the end of a run. Times are ISO
8601 in UTC. A task's `phases` (prepare, limit wait, agent, commit, publish, each with its
start, end and runner) come from the store's record of its state changes
(`report_timeline.py`); its `duration_s` is the time it held a runner slot.

A run of 100,000 tasks is never held whole: the store is read a page of tasks at a time
(`task_rows`: the page, then its checkpoints, sessions and changes of state in one read
each). `run_summary(..., lazy=True)` gives the summary with `tasks` as `TaskRows`, which
reads the pages again at each pass; `write_json` writes such a summary a task at a time,
and the renderers below take one too (they build their text, not every task's row).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import IO, Any
from xml.etree import ElementTree as ET

from ado_ray import report_html
from ado_ray.models import Step, TaskState
from ado_ray.redact import mask_remote
from ado_ray.report_timeline import busy_seconds, fmt_clock, fmt_duration, task_phases
from ado_ray.store import RunRecord, SessionRecord, Store, TaskRecord
from ado_ray.store.base import Transition

SUMMARY_CHARS = 500  # of the agent's own account of its work, per task
NOT_RUN = {TaskState.SKIPPED.value, TaskState.CANCELLED.value, TaskState.QUEUED.value}
PAGE = 1000  # tasks read from the store at a time


def pages(store: Store, run_id: str, page: int | None = None) -> Iterator[list[TaskRecord]]:
    """The run's tasks in list order, a page at a time."""
    after = -1
    while tasks := store.task_page(run_id, after, page or PAGE):
        yield tasks
        after = tasks[-1].seq


def rows_of(store: Store, tasks: Sequence[TaskRecord]) -> list[dict[str, Any]]:
    """The report's row of each task (with its `_sessions` usages): one read each of the
    tasks' checkpoints, sessions and changes of state."""
    ids = [task.task_id for task in tasks]
    if not ids:
        return []
    checkpoints, sessions = store.checkpoints_of(ids), store.sessions_of(ids)
    changes = store.transitions_of(ids)
    return [
        _task(
            task,
            checkpoints.get(task.task_id, {}),
            sessions.get(task.task_id, []),
            changes.get(task.task_id, []),
        )
        for task in tasks
    ]


def task_rows(store: Store, run_id: str, page: int | None = None) -> Iterator[dict[str, Any]]:
    """Every task's row, in list order, read a page at a time."""
    for tasks in pages(store, run_id, page):
        yield from rows_of(store, tasks)


class TaskRows(Sequence[dict[str, Any]]):
    """A run's task rows as a sequence that holds none of them: each pass reads the store
    again, a page at a time (the store must stay open). `len` is the run's task count."""

    def __init__(self, store: Store, run_id: str, total: int) -> None:
        self.store, self.run_id, self.total = store, run_id, total

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in task_rows(self.store, self.run_id):
            yield _public(row)

    def __getitem__(self, index: Any) -> Any:
        raise TypeError("TaskRows is read in order only; iterate over it")


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "_sessions"}


def run_summary(
    store: Store, run: RunRecord, tasks: list[TaskRecord] | None = None, *, lazy: bool = False
) -> dict[str, Any]:
    """The run's report as one JSON object. With `lazy` (and no `tasks`), `tasks` is a
    `TaskRows` and the totals come from one pass over the store that keeps no row."""
    if tasks is not None:
        chunks = [tasks[i : i + PAGE] for i in range(0, len(tasks), PAGE)]
        rows: Any = [row for chunk in chunks for row in rows_of(store, chunk)]
    elif lazy:
        rows = _totals_rows(store, run.run_id)
    else:
        rows = task_rows(store, run.run_id)
    totals = _Totals()
    kept: list[dict[str, Any]] = []
    for row in rows:
        totals.add(row)
        if not lazy:
            kept.append(_public(row))
    finished = totals.finished_at()
    created = run.created_at.isoformat()
    counts = {s.value: totals.counts[s.value] for s in TaskState if s.value in totals.counts}
    return {
        "run_id": run.run_id,
        "name": run.name,
        "status": run.status.value,
        "branch": run.branch,
        "created_at": created,
        "finished_at": finished,  # when the last task ended; None while one has not
        "duration_s": _seconds(created, finished),
        "repo_list": run.repo_list,
        "counts": counts,
        "cost_usd": round(totals.cost_usd, 6),
        "usage": totals.usage(),
        "config": masked_settings(run.config),
        "tasks": TaskRows(store, run.run_id, totals.tasks) if lazy else kept,
    }


def _totals_rows(store: Store, run_id: str) -> Iterator[dict[str, Any]]:
    """Of each task's row, what `_Totals` adds up (tasks and sessions only: a light pass)."""
    for tasks in pages(store, run_id):
        sessions = store.sessions_of([task.task_id for task in tasks])
        for task in tasks:
            usages = [session.usage for session in sessions.get(task.task_id, [])]
            yield {
                "state": task.state.value,
                "cost_usd": _cost(usages),
                "finished_at": _finished_at(task),
                "_sessions": usages,
            }


def _cost(usages: list[dict[str, Any]]) -> float:
    return round(sum(float(u.get("cost_usd", 0.0)) for u in usages), 6)


def _finished_at(task: TaskRecord) -> str | None:
    return task.updated_at.isoformat() if task.state.terminal and task.updated_at else None


class _Totals:
    """What the summary says of all tasks, added up a row at a time."""

    def __init__(self) -> None:
        self.tasks = 0
        self.counts: dict[str, int] = {}
        self.cost_usd = 0.0
        self.last_end: str | None = None
        self.all_ended = True
        self.by_mode: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, row: dict[str, Any]) -> None:
        self.tasks += 1
        self.counts[row["state"]] = self.counts.get(row["state"], 0) + 1
        self.cost_usd += row["cost_usd"]
        end = row["finished_at"]
        if end is None:
            self.all_ended = False
        elif self.last_end is None or end > self.last_end:  # ISO UTC text sorts as time
            self.last_end = end
        for usage in row["_sessions"]:
            key = (usage.get("provider") or "?", usage.get("mode") or "?")
            entry = self.by_mode.setdefault(
                key,
                {
                    "provider": key[0],
                    "mode": key[1],
                    "agent_runs": 0,
                    "cost_usd": 0.0,
                    "tokens": _tokens([]),
                },
            )
            entry["agent_runs"] += 1
            entry["cost_usd"] = round(entry["cost_usd"] + float(usage.get("cost_usd", 0.0)), 6)
            for name, count in _tokens([usage]).items():
                entry["tokens"][name] += count

    def finished_at(self) -> str | None:
        """When the last task ended; None while one has not (or there is none)."""
        return self.last_end if self.tasks and self.all_ended else None

    def usage(self) -> list[dict[str, Any]]:
        """Cost, tokens and agent runs per provider and mode, over the run's sessions."""
        return sorted(self.by_mode.values(), key=lambda entry: (entry["provider"], entry["mode"]))


STATUS_ROWS = 100  # tasks in `ado status`'s table


def status_summary(store: Store, run: RunRecord) -> dict[str, Any]:
    """What `ado status` shows: the run, its counts (the store's), and the rows of at most
    STATUS_ROWS tasks: every task of a small run, else the failed ones first and then the
    others in list order. `total` is the run's task count."""
    total = sum(run.counts.values())
    chosen = store.task_page(run.run_id, limit=STATUS_ROWS)
    if total > STATUS_ROWS:
        failed = store.tasks_in_states(run.run_id, [TaskState.FAILED], STATUS_ROWS)
        ids = {task.task_id for task in failed}
        chosen = (failed + [task for task in chosen if task.task_id not in ids])[:STATUS_ROWS]
    return {
        "run_id": run.run_id,
        "name": run.name,
        "status": run.status.value,
        "branch": run.branch,
        "created_at": run.created_at.isoformat(),
        "repo_list": run.repo_list,
        "counts": {state: n for state, n in run.counts.items() if n},
        "total": total,
        "tasks": [_public(row) for row in rows_of(store, chosen)],
    }


def write_json(summary: dict[str, Any], out: IO[str]) -> None:
    """`to_json(summary)` written to `out`, a task at a time when `tasks` is `TaskRows`."""
    tasks = summary["tasks"]
    if not isinstance(tasks, TaskRows):
        out.write(to_json(summary))
        return
    out.write("{\n")
    items = list(summary.items())
    for i, (key, value) in enumerate(items):
        out.write(f"  {json.dumps(key)}: ")
        if value is tasks:
            out.write("[")
            for n, row in enumerate(tasks):
                text = json.dumps(row, indent=2).replace("\n", "\n    ")
                out.write(("," if n else "") + "\n    " + text)
            out.write("\n  ]" if len(tasks) else "]")
        else:
            out.write(json.dumps(value, indent=2).replace("\n", "\n  "))
        out.write(",\n" if i + 1 < len(items) else "\n")
    out.write("}\n")


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    span = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return round(span.total_seconds(), 3)


def _tokens(usages: list[dict[str, Any]]) -> dict[str, int]:
    return {
        name: sum(int(usage.get(f"{name}_tokens", 0)) for usage in usages)
        for name in ("input", "output", "cache")
    }


def _task(
    task: TaskRecord,
    checkpoints: dict[Step, dict[str, Any]],
    sessions: list[SessionRecord],
    changes: list[Transition],
) -> dict[str, Any]:
    last = sessions[-1] if sessions else None
    usages = [session.usage for session in sessions]
    published = checkpoints.get(Step.PUBLISHED) or {}
    pr_url = published.get("url") if "number" in published else None
    if not task.commit_sha:
        location = None
    elif pr_url:
        location = f"PR #{published['number']} {pr_url}"
    elif published:
        location = f"branch {task.branch} of {published['url']}"
    else:
        location = f"branch {task.branch} in the workspace {task.workspace}/repo (not pushed)"
    stat = (checkpoints.get(Step.COMMITTED) or {}).get("diffstat") if task.commit_sha else None
    phases = task_phases(changes, sessions)
    summary = ((checkpoints.get(Step.AGENT_DONE) or {}).get("summary") or "").strip()
    return {
        "task_id": task.task_id,
        "repo": task.repo.url,
        "name": task.repo.name,
        "line": task.repo.line,
        "ref": task.repo.ref,
        "state": task.state.value,
        "branch": task.branch if task.commit_sha else None,
        "commit": task.commit_sha,
        "where": location,
        "pr_url": pr_url,
        "pr_number": published.get("number"),
        "diffstat": _diffstat(stat),
        "files_changed": stat["files"] if stat else None,
        "insertions": stat["insertions"] if stat else None,
        "deletions": stat["deletions"] if stat else None,
        "base_sha": task.base_sha,
        "attempts": task.attempt,
        "agent": last.agent if last else None,
        "provider": last.usage.get("provider") if last else None,
        "mode": last.usage.get("mode") if last else None,
        "session_id": last.session_id if last else None,
        "cost_usd": _cost(usages),
        "tokens": _tokens(usages),
        "agent_s": round(sum(s.duration_s for s in sessions), 3),
        "limit_wait_s": round(sum(s.usage.get("limit_wait_s", 0.0) for s in sessions), 3),
        "started_at": phases[0].start.isoformat() if phases else None,
        "finished_at": _finished_at(task),
        "duration_s": busy_seconds(phases),
        "runner": phases[-1].runner if phases else None,
        "phases": [phase.to_json() for phase in phases],
        "log_path": last.log_path if last else None,
        "sessions": [_session(session) for session in sessions],
        "agent_summary": summary[:SUMMARY_CHARS] or None,
        "failure_class": task.failure_class.value if task.failure_class else None,
        "error": task.error,
        "workspace": task.workspace,
        "_sessions": usages,
    }


def _session(session: SessionRecord) -> dict[str, Any]:
    """One agent attempt, with its two logs (the engine writes them side by side)."""
    stdout = session.log_path
    stem = stdout.removesuffix(".stdout.log")
    stderr = stem + ".stderr.log" if stem != stdout else None
    return {
        "attempt": session.attempt,
        "agent": session.agent,
        "outcome": session.outcome,
        "exit_code": session.exit_code,
        "duration_s": round(session.duration_s, 3),
        "limit_wait_s": round(float(session.usage.get("limit_wait_s") or 0.0), 3),
        "cost_usd": round(float(session.usage.get("cost_usd") or 0.0), 6),
        "log": stdout,
        "stderr_log": stderr,
    }


def _diffstat(stat: dict[str, Any] | None) -> str | None:
    if not stat:
        return None
    files = stat["files"]
    return f"{files} file{'' if files == 1 else 's'}, +{stat['insertions']} -{stat['deletions']}"


# Secrets are stored as the names of environment variables and `config.masked()` hides the
# literal values a config may hold; this second pass also hides any value under a key
# that names a secret, and credentials in URLs, should a later setting forget to.
_SECRET_WORDS = {"password", "passwd", "secret", "token", "apikey", "credentials", "credential"}
_NAMES_A_VARIABLE = {"env", "var", "variable", "file", "path", "name", "header"}


def masked_settings(value: Any, key: str = "") -> Any:
    """The stored config as shown in a report: secret-looking values replaced by `***`."""
    if isinstance(value, dict):
        if key == "env":
            return {name: "***" for name in value}
        return {name: masked_settings(item, str(name)) for name, item in value.items()}
    if isinstance(value, list):
        return [masked_settings(item, key) for item in value]
    if isinstance(value, str):
        parts = [part for part in re.split(r"[_\-.]", key.lower()) if part]
        secret = bool(parts) and parts[-1] not in _NAMES_A_VARIABLE
        secret = secret and ("api_key" in key.lower() or any(p in _SECRET_WORDS for p in parts))
        return "***" if secret and value else mask_remote(value)
    return value


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2) + "\n"


def to_markdown(summary: dict[str, Any]) -> str:
    day = summary["created_at"][:10]
    lines = [
        f"# ado run {summary['name']} ({summary['run_id']})",
        "",
        f"- status: {summary['status']}",
        f"- branch: `{summary['branch']}`",
        f"- created: {summary['created_at']}",
        f"- finished: {summary['finished_at'] or 'not yet'}"
        + (f" ({fmt_duration(summary['duration_s'])})" if summary["duration_s"] else ""),
        f"- repositories: {len(summary['tasks'])} from `{summary['repo_list']}`",
        "",
        "| state | count |",
        "|---|---|",
        *(f"| {state} | {count} |" for state, count in summary["counts"].items()),
        "",
        f"- cost: ${summary['cost_usd']:.4f}",
        "",
        "| provider | mode | agent runs | input tokens | output tokens | cost |",
        "|---|---|---|---|---|---|",
        *(
            f"| {u['provider']} | {u['mode']} | {u['agent_runs']} | {u['tokens']['input']} "
            f"| {u['tokens']['output']} | ${u['cost_usd']:.4f} |"
            for u in summary["usage"]
        ),
        "",
        f"| repository | state | mode | attempts | duration | finished ({day}, UTC) | diffstat "
        "| commit | cost | where / error | log |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in summary["tasks"]:
        commit = f"`{task['commit'][:10]}`" if task["commit"] else ""
        detail = task["where"] or ""
        if task["error"]:
            detail = f"{task['failure_class'] or 'error'}: {task['error']}"
        mode = f"{task['provider']} ({task['mode']})" if task["provider"] else ""
        log = f"`{task['log_path']}`" if task["log_path"] else ""
        lines.append(
            f"| {_cell(task['name'])} | {task['state']} | {mode} | {task['attempts']} "
            f"| {fmt_duration(task['duration_s'])} | {fmt_clock(task['finished_at'], day)} "
            f"| {task['diffstat'] or ''} | {commit} | ${task['cost_usd']:.4f} | {_cell(detail)} "
            f"| {_cell(log)} |"
        )
    return "\n".join(lines) + "\n"


def to_junit(summary: dict[str, Any]) -> str:
    """One testsuite per run, one testcase per repository; `time` in seconds (a task's time
    on a runner, or its agent time for a run recorded before transitions were)."""
    suite = ET.Element(  # the counts and time are set after the one pass over the tasks
        "testsuite",
        name=f"ado.{summary['name']}",
        tests="0",
        failures="0",
        errors="0",
        skipped="0",
        time="",
        timestamp=summary["created_at"][:19],  # JUnit's form: local ISO time, no zone
    )
    tests = failures = skipped = 0
    total_s = 0.0
    for task in summary["tasks"]:
        seconds = _case_time(task)
        tests, total_s = tests + 1, total_s + seconds
        failures += task["state"] == TaskState.FAILED.value
        skipped += task["state"] in NOT_RUN
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"ado.{summary['name']}",
            name=task["name"],
            time=f"{seconds:.3f}",
        )
        if task["state"] == TaskState.FAILED.value:
            failure = ET.SubElement(
                case, "failure", message=task["error"] or "", type=task["failure_class"] or ""
            )
            failure.text = task["error"] or ""
        elif task["state"] in NOT_RUN:
            ET.SubElement(case, "skipped", message=task["state"])
        out = ET.SubElement(case, "system-out")
        lines = [
            f"{task['repo']}: {task['state']}"
            + (f" {task['commit']} ({task['where']})" if task["commit"] else "")
        ]
        if task["diffstat"]:
            lines.append(f"diffstat: {task['diffstat']}")
        lines += [f"log: {session['log']}" for session in task["sessions"]]
        out.text = "\n".join(lines)
    suite_time = summary["duration_s"] if summary["duration_s"] is not None else total_s
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    suite.set("time", f"{suite_time:.3f}")
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _case_time(task: dict[str, Any]) -> float:
    seconds = task["duration_s"] if task["duration_s"] is not None else task["agent_s"]
    return float(seconds or 0.0)


FORMATS: dict[str, Callable[[dict[str, Any]], str]] = {
    "json": to_json,
    "md": to_markdown,
    "junit": to_junit,
    "html": report_html.to_html,
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
