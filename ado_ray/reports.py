"""Reports of a run from the store: one JSON shape, rendered as JSON, Markdown or JUnit XML.

The JSON object is also what `ado batch --json` prints at the end of a run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree as ET

from ado_ray.models import Step, TaskState
from ado_ray.store import RunRecord, Store, TaskRecord


def run_summary(
    store: Store, run: RunRecord, tasks: list[TaskRecord] | None = None
) -> dict[str, Any]:
    tasks = store.list_tasks(run.run_id) if tasks is None else tasks
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.state.value] = counts.get(task.state.value, 0) + 1
    rows = [_task(store, task) for task in tasks]
    return {
        "run_id": run.run_id,
        "name": run.name,
        "status": run.status.value,
        "branch": run.branch,
        "created_at": run.created_at.isoformat(),
        "repo_list": run.repo_list,
        "counts": counts,
        "cost_usd": round(sum(row["cost_usd"] for row in rows), 6),
        "usage": _totals(rows),
        "tasks": [{k: v for k, v in row.items() if k != "_sessions"} for row in rows],
    }


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


def _task(store: Store, task: TaskRecord) -> dict[str, Any]:
    checkpoints = store.checkpoints(task.task_id) if task.commit_sha else {}
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
        "diffstat": _diffstat(checkpoints),
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
        "failure_class": task.failure_class.value if task.failure_class else None,
        "error": task.error,
        "workspace": task.workspace,
        "_sessions": usages,
    }


def _diffstat(checkpoints: dict[Step, dict[str, Any]]) -> str | None:
    stat = (checkpoints.get(Step.COMMITTED) or {}).get("diffstat")
    if not stat:
        return None
    return f"{stat['files']} files, +{stat['insertions']} -{stat['deletions']}"


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2) + "\n"


def to_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# ado run {summary['name']} ({summary['run_id']})",
        "",
        f"- status: {summary['status']}",
        f"- branch: `{summary['branch']}`",
        f"- created: {summary['created_at']}",
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
        "| repository | state | mode | commit | cost | where / error |",
        "|---|---|---|---|---|---|",
    ]
    for task in summary["tasks"]:
        commit = f"`{task['commit'][:10]}`" if task["commit"] else ""
        detail = task["where"] or ""
        if task["error"]:
            detail = f"{task['failure_class'] or 'error'}: {task['error']}"
        mode = f"{task['provider']} ({task['mode']})" if task["provider"] else ""
        lines.append(
            f"| {task['name']} | {task['state']} | {mode} | {commit} "
            f"| ${task['cost_usd']:.4f} | {_cell(detail)} |"
        )
    return "\n".join(lines) + "\n"


def to_junit(summary: dict[str, Any]) -> str:
    tasks = summary["tasks"]
    failures = sum(1 for t in tasks if t["state"] == TaskState.FAILED.value)
    not_run = {TaskState.SKIPPED.value, TaskState.CANCELLED.value, TaskState.QUEUED.value}
    suite = ET.Element(
        "testsuite",
        name=f"ado.{summary['name']}",
        tests=str(len(tasks)),
        failures=str(failures),
        errors="0",
        skipped=str(sum(1 for t in tasks if t["state"] in not_run)),
    )
    for task in tasks:
        case = ET.SubElement(
            suite, "testcase", classname=f"ado.{summary['name']}", name=task["name"]
        )
        if task["state"] == TaskState.FAILED.value:
            failure = ET.SubElement(
                case, "failure", message=task["error"] or "", type=task["failure_class"] or ""
            )
            failure.text = task["error"] or ""
        elif task["state"] in not_run:
            ET.SubElement(case, "skipped", message=task["state"])
        out = ET.SubElement(case, "system-out")
        out.text = f"{task['repo']}: {task['state']}" + (
            f" {task['commit']} ({task['where']})" if task["commit"] else ""
        )
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


FORMATS: dict[str, Callable[[dict[str, Any]], str]] = {
    "json": to_json,
    "md": to_markdown,
    "junit": to_junit,
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
