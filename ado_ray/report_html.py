"""`ado report RUN --format html`: a run as one self-contained HTML page.

Sections: a summary (counts per state, cost, tokens, time), cost and tokens per provider
and mode, a timeline of the runner slots with each task's phases, a histogram of agent run
durations, failures grouped by class, one row per repository (state, attempts, duration,
diffstat, PR, links to the attempt logs) and the run's settings. Everything is in the file:
the CSS and a few lines of script to filter the table (`report_style.py`; the page is
complete without the script) and the charts (inline SVG, `report_svg.py`). Nothing is
fetched when it is viewed.

Every string that comes from the run (repository names and URLs, errors, agent summaries,
settings) goes through `html.escape`; links are made only from http(s) URLs and from the
logs' file paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from html import escape
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ado_ray import report_svg
from ado_ray.report_style import CSS, SCRIPT
from ado_ray.report_timeline import Phase, fmt_clock, fmt_duration, lanes, stints

STATES = ("changed", "no_change", "failed", "skipped", "cancelled", "queued", "preparing",
          "running", "collecting", "publishing")  # fmt: skip
PHASE_LABELS = {
    "prepare": "prepare",
    "limit_wait": "limit wait",
    "agent": "agent",
    "commit": "commit",
    "publish": "publish",
}
MESSAGES_PER_CLASS = 25  # distinct failure messages shown per class (most frequent first)
MESSAGE_CHARS = 1500  # of one failure message in the failures section
CELL_CHARS = 300  # of an error or agent summary in the repository table


def to_html(summary: dict[str, Any]) -> str:
    title = f"ado run {summary['name']} ({summary['run_id']})"
    sections = [
        _summary(summary),
        _usage(summary),
        _timeline(summary),
        _durations(summary),
        _failures(summary),
        _repositories(summary),
        _settings(summary),
    ]
    try:
        made_by = f"ado-ray {version('ado-ray')}"
    except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
        made_by = "ado-ray"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            _header(summary),
            '<main id="report">',
            *sections,
            "</main>",
            f"<footer>Made by {escape(made_by)} from the run's state store. "
            "Times are UTC.</footer>",
            f"<script>{SCRIPT}</script>",
            "</body>",
            "</html>",
        ]
    )


# --- small pieces -------------------------------------------------------------------------


def _badge(state: str, text: str | None = None) -> str:
    return f'<span class="badge st-{escape(state)}">{escape(text or state)}</span>'


def _href(url: str | None) -> str | None:
    """An http(s) URL as an attribute value; anything else (javascript:, data:) is no link."""
    if url and url.lower().startswith(("https://", "http://")):
        return escape(url)
    return None


def _file_href(path: str) -> str:
    return escape(Path(path).absolute().as_uri())


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _section(anchor: str, heading: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{anchor}"><h2>{heading}</h2>{note_html}{body}</section>'


def _when(iso: str | None) -> str:
    return fmt_clock(iso) + " UTC" if iso else ""


# --- header and summary -----------------------------------------------------------------


def _header(summary: dict[str, Any]) -> str:
    facts = [
        ("status", _badge("run-" + summary["status"], summary["status"])),
        ("branch", f"<code>{escape(summary['branch'])}</code>"),
        ("created", escape(_when(summary["created_at"]))),
        ("finished", escape(_when(summary["finished_at"]) or "not yet")),
        ("repository list", f"<code>{escape(summary['repo_list'])}</code>"),
    ]
    items = "".join(f"<div><dt>{name}</dt><dd>{value}</dd></div>" for name, value in facts)
    links = "".join(
        f'<a href="#{anchor}">{name}</a>'
        for anchor, name in [
            ("summary", "Summary"),
            ("usage", "Cost"),
            ("timeline", "Timeline"),
            ("durations", "Durations"),
            ("failures", "Failures"),
            ("repositories", "Repositories"),
            ("settings", "Settings"),
        ]
    )
    return (
        f'<header><h1>{escape(summary["name"])} <span class="id">{escape(summary["run_id"])}'
        f'</span></h1><dl class="facts">{items}</dl><nav>{links}</nav></header>'
    )


def _summary(summary: dict[str, Any]) -> str:
    counts: dict[str, int] = summary["counts"]
    total = len(summary["tasks"])
    order = [s for s in STATES if s in counts] + [s for s in counts if s not in STATES]
    cards = [f'<div class="card"><b>{total:,}</b><span class="label">repositories</span></div>']
    for state in order:
        edge = f"st-{escape(state)}-edge"
        cards.append(f'<div class="card {edge}"><b>{counts[state]:,}</b>{_badge(state)}</div>')
    bar = "".join(
        f'<span class="st-{escape(s)}" style="flex-grow:{counts[s]}" '
        f'title="{escape(s)}: {counts[s]}"></span>'
        for s in order
    )
    usage = summary["usage"]
    tokens = {name: sum(u["tokens"][name] for u in usage) for name in ("input", "output")}
    agent_s = wait_s = 0.0
    runs = 0
    for task in summary["tasks"]:  # one pass: a run's tasks may be read from the store
        agent_s += task["agent_s"]
        wait_s += task["limit_wait_s"]
        runs += len(task["sessions"])
    figures = [
        ("cost", f"${summary['cost_usd']:,.2f}"),
        ("input / output tokens", f"{tokens['input']:,} / {tokens['output']:,}"),
        ("wall time", fmt_duration(summary["duration_s"]) or "running"),
        ("agent time (sum)", fmt_duration(agent_s) or "0s"),
        ("waiting for limits", fmt_duration(wait_s) or "0s"),
        ("agent runs", f"{runs:,}"),
    ]
    numbers = "".join(f"<div><dt>{name}</dt><dd>{value}</dd></div>" for name, value in figures)
    body = (
        f'<div class="cards">{"".join(cards)}</div>'
        f'<div class="stack" role="img" aria-label="tasks per state">{bar}</div>'
        f'<dl class="figures">{numbers}</dl>'
    )
    return _section("summary", "Summary", body)


def _usage(summary: dict[str, Any]) -> str:
    usage = summary["usage"]
    if not usage:
        return _section("usage", "Cost and tokens", '<p class="empty">No agent ran.</p>')
    top = max(u["cost_usd"] for u in usage) or 1.0
    rows = "".join(
        f"<tr><td>{escape(u['provider'])}</td><td>{escape(u['mode'])}</td>"
        f'<td class="num">{u["agent_runs"]:,}</td><td class="num">{u["tokens"]["input"]:,}</td>'
        f'<td class="num">{u["tokens"]["output"]:,}</td>'
        f'<td class="num">{u["tokens"]["cache"]:,}</td><td class="num">${u["cost_usd"]:,.4f}</td>'
        f'<td class="share"><span style="width:{u["cost_usd"] / top * 100:.1f}%"></span></td></tr>'
        for u in usage
    )
    total = (
        f'<tr class="total"><td colspan="2">total</td>'
        f'<td class="num">{sum(u["agent_runs"] for u in usage):,}</td>'
        + "".join(
            f'<td class="num">{sum(u["tokens"][name] for u in usage):,}</td>'
            for name in ("input", "output", "cache")
        )
        + f'<td class="num">${summary["cost_usd"]:,.4f}</td><td></td></tr>'
    )
    table = (
        '<table class="grid-table"><thead><tr><th>provider</th><th>mode</th>'
        '<th class="num">agent runs</th><th class="num">input tokens</th>'
        '<th class="num">output tokens</th><th class="num">cache tokens</th>'
        f'<th class="num">cost</th><th>share of cost</th></tr></thead><tbody>{rows}{total}'
        "</tbody></table>"
    )
    return _section("usage", "Cost and tokens per provider and mode", table)


# --- charts ---------------------------------------------------------------------------------


def _phase(data: dict[str, Any]) -> Phase:
    end = data["end"]
    return Phase(
        data["phase"],
        data["attempt"],
        datetime.fromisoformat(data["start"]),
        datetime.fromisoformat(end) if end else None,
        data["runner"],
    )


def _timeline(summary: dict[str, Any]) -> str:
    tasks = summary["tasks"]  # read once; each task kept only as `_slim` of it
    per_task = [
        (_slim(task, TIMELINE_KEYS), stints(task["task_id"], map(_phase, task["phases"])))
        for task in tasks
    ]
    moments = [datetime.fromisoformat(summary["created_at"])]
    for task, spans in per_task:
        for stint in spans:
            moments += [p.start for p in stint.phases] + [p.end for p in stint.phases if p.end]
        if task["finished_at"] and spans:
            moments.append(datetime.fromisoformat(task["finished_at"]))
    if len(moments) == 1:
        empty = '<p class="empty">No task has reached a runner yet.</p>'
        return _section("timeline", "Timeline", empty)
    t0, t1 = min(moments), max(moments)
    every = [stint for _, spans in per_task for stint in spans]
    labels, lane_of = lanes(every, t1)
    detail = len(tasks) <= report_svg.DETAIL_MAX
    bars, k = [], 0
    for task, spans in per_task:
        for i, stint in enumerate(spans):
            bars.append(
                report_svg.Bar(
                    stint,
                    lane_of[k],
                    task["state"],
                    i == len(spans) - 1,
                    _stint_title(task, stint.phases) if detail else "",
                    f"#t-{task['task_id']}",
                )
            )
            k += 1
    legend = "".join(
        f'<span><i class="ph-{name}"></i>{label}</span>' for name, label in PHASE_LABELS.items()
    ) + "".join(
        f'<span><i class="st-{state}"></i>ended {state}</span>'
        for state in STATES[:5]  # the end states
        if state in summary["counts"]
    )
    note = (
        f"{len(labels)} runner slots over {escape(fmt_duration((t1 - t0).total_seconds()))}, "
        f"since {escape(fmt_clock(t0.isoformat()))} UTC. "
        + (
            "Each bar is one task's stay on a slot, in its phases; the mark at its end is "
            "how the task ended. Point at a bar for its repository and times; click to go "
            "to its row."
            if detail
            else f"Over {report_svg.DETAIL_MAX:,} tasks: each bar is one task's stay on a "
            "slot in the colour of how it ended, without its phases."
        )
        + " Slots are inferred from the runner each task ran on."
    )
    chart = report_svg.timeline(bars, labels, t0, t1, detail)
    return _section("timeline", "Timeline", f'<div class="legend">{legend}</div>{chart}', note=note)


TIMELINE_KEYS = ("task_id", "name", "state", "attempts", "finished_at")
FAILURE_KEYS = ("task_id", "name", "failure_class", "error")


def _slim(task: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """What a section keeps of a task while it reads them all (a run may have 100,000)."""
    return {key: task[key] for key in keys}


def _stint_title(task: dict[str, Any], phases: Iterable[Phase]) -> str:
    lines = [f"{task['name']} — {task['state']}"]
    for phase in phases:
        end = phase.end
        took = fmt_duration((end - phase.start).total_seconds()) if end else "still running"
        attempt = f" (attempt {phase.attempt})" if task["attempts"] > 1 else ""
        lines.append(
            f"{PHASE_LABELS.get(phase.name, phase.name)}{attempt}: {took}, "
            f"from {fmt_clock(phase.start.isoformat())}"
        )
    return "\n".join(lines)


def _durations(summary: dict[str, Any]) -> str:
    runs = [
        (session["duration_s"], session["outcome"])
        for task in summary["tasks"]
        for session in task["sessions"]
    ]
    if not runs:
        return _section("durations", "Agent run durations", '<p class="empty">No agent ran.</p>')
    legend = "".join(
        f'<span><i class="oc-{cls}"></i>{label}</span>'
        for cls, label, _ in report_svg.OUTCOME_GROUPS
    )
    note = f"{len(runs):,} agent runs (every attempt), by how long the agent ran."
    body = f'<div class="legend">{legend}</div>{report_svg.histogram(runs)}'
    return _section("durations", "Agent run durations", body, note=note)


# --- failures, repositories, settings -------------------------------------------------------


def _failures(summary: dict[str, Any]) -> str:
    failed = [_slim(t, FAILURE_KEYS) for t in summary["tasks"] if t["state"] == "failed"]
    if not failed:
        return _section("failures", "Failures", '<p class="empty">No task failed.</p>')
    by_class: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task in failed:
        messages = by_class.setdefault(task["failure_class"] or "unknown", {})
        messages.setdefault(task["error"] or "(no message)", []).append(task)
    parts = []
    sizes = {cls: sum(map(len, messages.values())) for cls, messages in by_class.items()}
    for cls, messages in sorted(by_class.items(), key=lambda item: -sizes[item[0]]):
        n = sizes[cls]
        ranked = sorted(messages.items(), key=lambda item: -len(item[1]))
        items = []
        for message, where in ranked[:MESSAGES_PER_CLASS]:
            repos = ", ".join(
                f'<a href="#t-{escape(t["task_id"])}">{escape(t["name"])}</a>' for t in where[:40]
            ) + (f" and {len(where) - 40} more" if len(where) > 40 else "")
            items.append(
                f'<li><pre class="message">{escape(_cut(message, MESSAGE_CHARS))}</pre>'
                f'<p class="repos">{len(where)} &times; {repos}</p></li>'
            )
        more = len(ranked) - MESSAGES_PER_CLASS
        rest = f'<p class="note">and {more} other messages (see the table)</p>' if more > 0 else ""
        parts.append(
            f'<div class="failure-class"><h3>{_badge("failed", cls)} {n} '
            f"{'task' if n == 1 else 'tasks'}</h3><ul>{''.join(items)}</ul>{rest}</div>"
        )
    return _section("failures", f"Failures ({len(failed):,})", "".join(parts))


def _repositories(summary: dict[str, Any]) -> str:
    day = summary["created_at"][:10]
    rows = [_row(task, day) for task in summary["tasks"]]
    options = "".join(
        f'<option value="{escape(s)}">{escape(s)} ({n})</option>'
        for s, n in summary["counts"].items()
    )
    controls = (
        '<div class="controls"><input id="filter" type="search" placeholder="Filter by text" '
        'aria-label="filter the repositories by text"><select id="state-filter" '
        f'aria-label="filter by state"><option value="">every state</option>{options}</select>'
        f'<span id="shown">{len(rows):,} repositories</span></div>'
    )
    head = "".join(
        f"<th{' class=num' if name in {'#', 'attempts', 'duration', 'cost'} else ''}>{name}</th>"
        for name in (
            "#", "repository", "state", "attempts", "duration", f"finished ({day})", "diffstat",
            "cost", "pull request / branch", "logs", "error / agent summary",
        )
    )  # fmt: skip
    table = (
        f'<table class="grid-table repos" id="repos"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return _section("repositories", "Repositories", controls + table)


def _row(task: dict[str, Any], day: str) -> str:
    name = escape(task["name"])
    repo = f"<b>{name}</b><small>{escape(task['repo'])}</small>"
    diff = ""
    if task["files_changed"] is not None:
        diff = (
            f"{task['files_changed']} {'file' if task['files_changed'] == 1 else 'files'} "
            f'<span class="add">+{task["insertions"]}</span> '
            f'<span class="del">&minus;{task["deletions"]}</span>'
        )
    pr = _href(task["pr_url"])
    if pr:
        where = f'<a href="{pr}">PR #{escape(str(task["pr_number"]))}</a>'
    elif task["where"]:
        where = f'<span class="muted">{escape(task["where"])}</span>'
    else:
        where = ""
    logs = " ".join(
        f'<a href="{_file_href(s["log"])}">#{s["attempt"]}</a>'
        + (f' <a href="{_file_href(s["stderr_log"])}">err</a>' if s["stderr_log"] else "")
        for s in task["sessions"]
        if s["log"]
    )
    if task["error"]:
        detail = (
            f'<span class="cls">{escape(task["failure_class"] or "error")}</span> '
            f"{escape(_cut(task['error'], CELL_CHARS))}"
        )
    else:
        said = escape(_cut(task["agent_summary"] or "", CELL_CHARS))
        detail = f'<span class="muted">{said}</span>'
    cost = f"${task['cost_usd']:.4f}" if task["sessions"] else ""
    cells = [
        f'<td class="num">{task["line"] or ""}</td>',
        f"<td>{repo}</td>",
        f"<td>{_badge(task['state'])}</td>",
        f'<td class="num">{task["attempts"]}</td>',
        f'<td class="num">{escape(fmt_duration(task["duration_s"]))}</td>',
        f"<td>{escape(fmt_clock(task['finished_at'], day))}</td>",
        f'<td class="diff">{diff}</td>',
        f'<td class="num">{cost}</td>',
        f"<td>{where}</td>",
        f'<td class="logs">{logs}</td>',
        f'<td class="detail">{detail}</td>',
    ]
    return (
        f'<tr id="t-{escape(task["task_id"])}" data-state="{escape(task["state"])}">'
        f"{''.join(cells)}</tr>"
    )


def _settings(summary: dict[str, Any]) -> str:
    text = json.dumps(summary["config"], indent=2, sort_keys=False)
    body = (
        "<details><summary>The run's settings as stored with it (secret values masked)"
        f'</summary><pre class="settings">{escape(text)}</pre></details>'
    )
    return _section("settings", "Settings", body)
