"""Reports of a run from the store: one JSON shape, rendered as JSON, Markdown, JUnit XML
or HTML (`report_html.py`).

The JSON object is also what `ado batch --json` prints at the end of a run. Times are ISO
8601 in UTC. A task's `phases` (prepare, limit wait, agent, commit, publish, each with its
start, end and runner) come from the store's record of its state changes
(`report_timeline.py`); its `duration_s` is the time it held a runner slot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from xml.etree import ElementTree as ET

from ado_ray import report_html
from ado_ray.models import Step, TaskState
from ado_ray.redact import mask_remote
from ado_ray.report_timeline import busy_seconds, fmt_clock, fmt_duration, task_phases
from ado_ray.store import RunRecord, SessionRecord, Store, TaskRecord
from ado_ray.store.base import Transition

SUMMARY_CHARS = 500  # of the agent's own account of its work, per task
NOT_RUN = {TaskState.SKIPPED.value, TaskState.CANCELLED.value, TaskState.QUEUED.value}


def run_summary(
    store: Store, run: RunRecord, tasks: list[TaskRecord] | None = None
) -> dict[str, Any]:
    tasks = store.list_tasks(run.run_id) if tasks is None else tasks
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.state.value] = counts.get(task.state.value, 0) + 1
    changes: dict[str, list[Transition]] = {}
    for change in store.transitions(run.run_id):
        changes.setdefault(change.task_id, []).append(change)
    rows = [_task(store, task, changes.get(task.task_id, [])) for task in tasks]
    ends = [row["finished_at"] for row in rows]
    finished = max(ends) if ends and all(ends) else None  # ISO UTC text sorts as time does
    created = run.created_at.isoformat()
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
        "cost_usd": round(sum(row["cost_usd"] for row in rows), 6),
        "usage": _totals(rows),
        "config": masked_settings(run.config),
        "tasks": [{k: v for k, v in row.items() if k != "_sessions"} for row in rows],
    }


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    span = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return round(span.total_seconds(), 3)


def _totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cost, tokens and agent runs per provider and mode, over the run's sessions."""
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        for usage in row["_sessions"]:
            key = (usage.get("provider") or "?", usage.get("mode") or "?")
            entry = totals.setdefault(
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
    return sorted(totals.values(), key=lambda entry: (entry["provider"], entry["mode"]))


def _tokens(usages: list[dict[str, Any]]) -> dict[str, int]:
    return {
        name: sum(int(usage.get(f"{name}_tokens", 0)) for usage in usages)
        for name in ("input", "output", "cache")
    }


def _task(store: Store, task: TaskRecord, changes: list[Transition]) -> dict[str, Any]:
    checkpoints = store.checkpoints(task.task_id)
    sessions = store.sessions(task.task_id)
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
        "cost_usd": round(sum(float(u.get("cost_usd", 0.0)) for u in usages), 6),
        "tokens": _tokens(usages),
        "agent_s": round(sum(s.duration_s for s in sessions), 3),
        "limit_wait_s": round(sum(s.usage.get("limit_wait_s", 0.0) for s in sessions), 3),
        "started_at": phases[0].start.isoformat() if phases else None,
        "finished_at": task.updated_at.isoformat()
        if task.state.terminal and task.updated_at
        else None,
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
    tasks = summary["tasks"]
    failures = sum(1 for t in tasks if t["state"] == TaskState.FAILED.value)
    times = [_case_time(task) for task in tasks]
    suite_time = summary["duration_s"] if summary["duration_s"] is not None else sum(times)
    suite = ET.Element(
        "testsuite",
        name=f"ado.{summary['name']}",
        tests=str(len(tasks)),
        failures=str(failures),
        errors="0",
        skipped=str(sum(1 for t in tasks if t["state"] in NOT_RUN)),
        time=f"{suite_time:.3f}",
        timestamp=summary["created_at"][:19],  # JUnit's form: local ISO time, no zone
    )
    for task, seconds in zip(tasks, times, strict=True):
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
