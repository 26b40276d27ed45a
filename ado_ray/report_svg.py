"""The HTML report's charts, drawn here as inline SVG: a timeline of the run's runner slots
and a histogram of agent durations.

Why SVG written by Python rather than a JavaScript chart library: the report must open
offline, years later, from a CI artifact or an e-mail, so it can fetch nothing; SVG needs
no code at view time (nothing to fail, nothing for a content policy to block), prints
sharply, scales with the page, and is plain text that tests can read. A library would have
to be embedded whole in every report (hundreds of kB) and would draw only once its script
ran. Colours come from the page's CSS classes (`.ph-*` for phases, `.st-*` for states).

Scale: the timeline has one row per runner slot, not per task, so its height depends on
`--parallel` only; its size grows with the tasks (one group with a tooltip per stay on a
slot). Above `DETAIL_MAX` tasks it is drawn coarser: one bar per stay in the colour of the
task's end state, without phases, tooltips or links, which keeps 20,000 tasks near 2 MB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from statistics import median, quantiles

from ado_ray.report_timeline import Stint, fmt_duration

DETAIL_MAX = 3000  # tasks up to which the timeline shows phases, tooltips and links
WIDTH = 1200  # viewBox units; the SVG scales to the page's width
LABEL_W = 118
RIGHT = 14
NICE_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800)
NICE_FACTORS = (1, 2, 2.5, 5, 10)


def nice_step(span: float, most: int, steps: Sequence[float] | None = None) -> float:
    """The smallest "round" step that cuts `span` into at most `most` parts."""
    if span <= 0:
        return 1.0
    for step in steps or ():
        if span / step <= most:
            return float(step)
    rough = span / most
    power = 10 ** math.floor(math.log10(rough))
    return float(next(f * power for f in NICE_FACTORS if f * power >= rough))


def clock(seconds: float) -> str:
    """Elapsed time as an axis label: `0:45`, `12:00`, `1:05:00`."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def short(seconds: float) -> str:
    """A round duration as an axis label: `0.5s`, `30s`, `2m`, `2m 30s`, `1h 30m`."""
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}m {rest:02d}s" if rest else f"{minutes}m"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}h {rest // 60:02d}m" if rest // 60 else f"{hours}h"


def _n(value: float) -> str:
    """A coordinate, short: 12.3 rather than 12.345678."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class Bar:
    """One stint on the timeline, with what its tooltip and link show."""

    stint: Stint
    lane: int
    state: str  # the task's state now: the colour of its end mark
    final: bool  # the task's last stint (it ends there, if it ended)
    title: str  # tooltip
    href: str  # the task's row in the table


def timeline(
    bars: Sequence[Bar], labels: Sequence[str], t0: datetime, t1: datetime, detail: bool
) -> str:
    """Runner slots (rows) over time since `t0`, each stint a bar of its phases."""
    span = max((t1 - t0).total_seconds(), 1.0)
    lane_h = min(18.0, max(4.0, 640.0 / max(len(labels), 1)))
    bar_h = max(3.0, lane_h * 0.72)
    top, plot_w = 26.0, WIDTH - LABEL_W - RIGHT
    height = top + lane_h * len(labels) + 8

    def x(moment: datetime) -> float:
        return LABEL_W + (moment - t0).total_seconds() / span * plot_w

    out = [
        f'<svg class="chart timeline" viewBox="0 0 {WIDTH} {_n(height)}" role="img" '
        f'aria-label="timeline of {len(bars)} task stints on {len(labels)} runner slots" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    step = nice_step(span, 10, NICE_STEPS_S)
    ticks = [i * step for i in range(int(span // step) + 1)]
    for tick in ticks:
        tx = LABEL_W + tick / span * plot_w
        out.append(
            f'<line class="grid" x1="{_n(tx)}" x2="{_n(tx)}" y1="{_n(top - 4)}" '
            f'y2="{_n(height - 8)}"/><text class="tick" x="{_n(tx)}" y="{_n(top - 9)}" '
            f'text-anchor="middle">{clock(tick)}</text>'
        )
    every = max(1, math.ceil(11 / lane_h))  # label every lane if it is tall enough to read
    for i, label in enumerate(labels):
        y = top + i * lane_h
        if i % 2:
            out.append(
                f'<rect class="band" x="{LABEL_W}" y="{_n(y)}" width="{_n(plot_w)}" '
                f'height="{_n(lane_h)}"/>'
            )
        if i % every == 0:
            out.append(
                f'<text class="lane" x="{LABEL_W - 6}" y="{_n(y + lane_h / 2 + 4)}" '
                f'text-anchor="end">{escape(label)}</text>'
            )
    for bar in bars:
        y = top + bar.lane * lane_h + (lane_h - bar_h) / 2
        end = bar.stint.end(t1)
        if not detail:
            out.append(
                f'<rect class="st-{escape(bar.state)}" x="{_n(x(bar.stint.start))}" y="{_n(y)}" '
                f'width="{_n(max(x(end) - x(bar.stint.start), 0.6))}" height="{_n(bar_h)}"/>'
            )
            continue
        parts = [f'<g><title>{escape(bar.title)}</title><a href="{escape(bar.href)}">']
        for phase in bar.stint.phases:
            left, right = x(phase.start), x(phase.end or t1)
            parts.append(
                f'<rect class="ph-{escape(phase.name)}" x="{_n(left)}" y="{_n(y)}" '
                f'width="{_n(max(right - left, 0.6))}" height="{_n(bar_h)}"/>'
            )
        if bar.final and bar.stint.phases[-1].end is not None:
            parts.append(
                f'<rect class="st-{escape(bar.state)} cap" '
                f'x="{_n(max(x(end) - 3, x(bar.stint.start)))}" '
                f'y="{_n(y - 1)}" width="3" height="{_n(bar_h + 2)}"/>'
            )
        parts.append("</a></g>")
        out.append("".join(parts))
    out.append("</svg>")
    return "\n".join(out)


OUTCOME_GROUPS = (  # (css class, label, session outcomes)
    ("ok", "finished", {"ok"}),
    ("failed", "failed", {"failed", "unreadable"}),
    ("timeout", "timed out or stalled", {"timeout", "stalled"}),
    ("other", "interrupted", None),  # anything else
)


def histogram(durations: Sequence[tuple[float, str]]) -> str:
    """Agent attempts by duration, stacked by how they ended; median and p90 marked."""
    values = [seconds for seconds, _ in durations]
    top_s = max(values)
    width = nice_step(top_s, 24, (*(s / 10 for s in NICE_STEPS_S[:3]), *NICE_STEPS_S))
    n_bins = max(1, math.ceil(top_s / width + 1e-9))
    if top_s == n_bins * width:
        n_bins += 1  # the longest attempt in a bin of its own rather than on the edge
    counts = [[0] * len(OUTCOME_GROUPS) for _ in range(n_bins)]
    for seconds, outcome in durations:
        group = next(
            (i for i, (_, _, names) in enumerate(OUTCOME_GROUPS) if names and outcome in names),
            len(OUTCOME_GROUPS) - 1,
        )
        counts[min(int(seconds // width), n_bins - 1)][group] += 1
    peak = max(sum(row) for row in counts)
    y_step = max(1.0, nice_step(peak, 5))  # counts: whole numbers
    y_top = max(y_step, math.ceil(peak / y_step) * y_step)
    left, top, plot_w, plot_h = 56.0, 14.0, WIDTH - 56.0 - RIGHT, 220.0
    height = top + plot_h + 46
    bin_w = plot_w / n_bins

    def y(count: float) -> float:
        return top + plot_h - count / y_top * plot_h

    out = [
        f'<svg class="chart histogram" viewBox="0 0 {WIDTH} {_n(height)}" role="img" '
        f'aria-label="histogram of {len(values)} agent run durations" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    ticks = [i * y_step for i in range(int(y_top // y_step) + 1)]
    for tick in ticks:
        out.append(
            f'<line class="grid" x1="{_n(left)}" x2="{_n(left + plot_w)}" y1="{_n(y(tick))}" '
            f'y2="{_n(y(tick))}"/><text class="tick" x="{_n(left - 6)}" '
            f'y="{_n(y(tick) + 4)}" text-anchor="end">{tick:g}</text>'
        )
    for i, row in enumerate(counts):
        base = 0
        for group, count in enumerate(row):
            if not count:
                continue
            cls, label, _ = OUTCOME_GROUPS[group]
            bx = left + i * bin_w + 1
            out.append(
                f'<rect class="oc-{cls}" x="{_n(bx)}" y="{_n(y(base + count))}" '
                f'width="{_n(max(bin_w - 2, 0.8))}" height="{_n(y(base) - y(base + count))}">'
                f"<title>{short(i * width)} to {short((i + 1) * width)}: "
                f"{count} {label}</title></rect>"
            )
            base += count
    label_every = max(1, math.ceil(n_bins / 12))
    for i in range(0, n_bins + 1, label_every):
        anchor = "end" if i == n_bins else "middle"  # the last one inside the chart
        out.append(
            f'<text class="tick" x="{_n(left + i * bin_w)}" y="{_n(top + plot_h + 16)}" '
            f'text-anchor="{anchor}">{short(i * width)}</text>'
        )
    out.append(
        f'<text class="axis" x="{_n(left + plot_w / 2)}" y="{_n(height - 6)}" '
        'text-anchor="middle">agent run duration</text>'
    )
    marks = [("median", median(values))]
    if len(values) >= 2:
        marks.append(("p90", quantiles(values, n=10, method="inclusive")[-1]))
    for name, seconds in marks:
        mx = left + seconds / (n_bins * width) * plot_w
        out.append(
            f'<line class="mark" x1="{_n(mx)}" x2="{_n(mx)}" y1="{_n(top)}" '
            f'y2="{_n(top + plot_h)}"/><text class="mark" x="{_n(mx + 4)}" '
            f'y="{_n(top + 10 + (12 if name == "p90" else 0))}">{name} '
            f"{fmt_duration(seconds)}</text>"
        )
    out.append(
        f'<line class="axisline" x1="{_n(left)}" x2="{_n(left + plot_w)}" '
        f'y1="{_n(top + plot_h)}" y2="{_n(top + plot_h)}"/>'
    )
    out.append("</svg>")
    return "\n".join(out)
