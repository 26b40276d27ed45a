"""ado-ray's metrics: `ray.util.metrics` series, exported by Ray's own metrics agents.

Every Ray node runs a metrics agent that serves what the processes on it recorded, in
Prometheus' text format, at `http://<node>:<metrics export port>/metrics` (`ray start
--metrics-export-port`, `ray.init(_metrics_export_port=...)`). Ray puts `ray_` in front of
every name, and a counter gets `_total` after it: `ado_task_outcomes` is scraped as
`ray_ado_task_outcomes_total` (`Metric.exported`). Each process's series carry Ray's own
labels too (`WorkerId`, `NodeAddress`, `SessionName`, ...): sum over them.

Who records what (the process that knows the value):

- the sink (`store/sink.py`), after each batch it wrote: the batch's time, the tasks that
  reached a terminal state in it, and its run's tasks per state (read from the store,
  at most once a second unless a task ended);
- the runners (`engine/task.py`, `engine/publish.py`, `limits/actor.py`'s `Hold`): each
  agent run's time, tokens and cost, the wait for each limit grant, pull requests;
- the rate limiter actor (`limits/actor.py`): grants and cooldowns, by key.

The series are created once per process, by the first call that finds Ray connected in it
(a Ray worker, or a driver that joined Ray). Without Ray (`--no-ray`) every function here
does nothing, and importing this module imports no Ray.

Labels carry only short, bounded values: states, failure classes, agent, provider and mode
names, limit keys (`command`, `claude:api`, `git:<host>`, `forge:<host>`), and the run id
on the per-run gauge alone (its series end with the run's sink). Never a repository, a
URL, a message or a secret.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ado_ray.errors import StoreError
from ado_ray.models import TaskState, TaskUpdate

if TYPE_CHECKING:
    from ado_ray.store import Fence, Store

T = TypeVar("T")
Kind = Literal["counter", "gauge", "histogram"]
NO_FAILURE = "none"  # the failure_class label of a task that did not fail
COUNTS_EVERY_S = 1.0  # the sink reads its run's counts at most this often (but see above)


@dataclass(frozen=True)
class Metric:
    """One series' definition: the README's table and the Grafana dashboard read these."""

    name: str  # as recorded; Prometheus shows `exported`
    kind: Kind
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()  # a histogram's upper bounds, seconds

    @property
    def exported(self) -> str:
        """The name Prometheus scrapes (a histogram adds `_bucket`, `_sum`, `_count`)."""
        return f"ray_{self.name}{'_total' if self.kind == 'counter' else ''}"


TASKS = Metric(
    "ado_tasks",
    "gauge",
    ("run", "state"),
    "Tasks of a run in each state, while the run's sink runs",
)
TASK_OUTCOMES = Metric(
    "ado_task_outcomes",
    "counter",
    ("state", "failure_class"),
    "Tasks that reached a terminal state (failure_class `none` unless failed)",
)
AGENT_SECONDS = Metric(
    "ado_agent_seconds",
    "histogram",
    ("agent", "mode"),
    "Time of each agent run (attempt), by adapter and access mode",
    (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
LIMIT_WAIT = Metric(
    "ado_limit_wait_seconds",
    "histogram",
    ("key",),
    "Time from asking the rate limiter for a key's budget to being granted it",
    (0.01, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 3600),
)
LIMITER_ADMITTED = Metric(
    "ado_limiter_admitted",
    "counter",
    ("key",),
    "Grants the rate limiter made, by limit key",
)
LIMITER_COOLDOWNS = Metric(
    "ado_limiter_cooldowns",
    "counter",
    ("key",),
    "Provider limit signals that put a key in cooldown",
)
TOKENS = Metric(
    "ado_tokens",
    "counter",
    ("provider", "mode", "kind"),
    "Tokens the agents used, by provider, mode and kind (input, output, cache)",
)
COST = Metric(
    "ado_cost_usd",
    "counter",
    ("provider", "mode"),
    "What the agent runs cost, USD, by provider and mode",
)
SINK_BATCH = Metric(
    "ado_sink_batch_seconds",
    "histogram",
    (),
    "Time the sink took to write one batch of events to the store (one transaction)",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PRS = Metric(
    "ado_prs",
    "counter",
    ("state",),
    "Pull requests published: opened, updated (--conflict replace) or existing (found)",
)
METRICS = (
    TASKS,
    TASK_OUTCOMES,
    AGENT_SECONDS,
    LIMIT_WAIT,
    LIMITER_ADMITTED,
    LIMITER_COOLDOWNS,
    TOKENS,
    COST,
    SINK_BATCH,
    PRS,
)
TOKEN_KINDS = {"input": "input_tokens", "output": "output_tokens", "cache": "cache_tokens"}


def _connected() -> bool:
    """Whether this process is connected to Ray; never imports Ray itself."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


class _Series:
    """This process's metric objects, and when the sink last read each run's counts."""

    def __init__(self) -> None:
        from ray.util import metrics as ray_metrics

        self.by_name: dict[str, Any] = {}
        for metric in METRICS:
            if metric.kind == "histogram":
                self.by_name[metric.name] = ray_metrics.Histogram(
                    metric.name, metric.help, list(metric.buckets), metric.labels
                )
            else:
                cls = ray_metrics.Counter if metric.kind == "counter" else ray_metrics.Gauge
                self.by_name[metric.name] = cls(metric.name, metric.help, metric.labels)
        self.counts_read: dict[str, float] = {}  # run id -> monotonic time

    def inc(self, metric: Metric, value: float, **labels: str) -> None:
        if value > 0:  # Ray refuses to add zero
            self.by_name[metric.name].inc(value, tags=labels)

    def set(self, metric: Metric, value: float, **labels: str) -> None:
        self.by_name[metric.name].set(value, tags=labels)

    def observe(self, metric: Metric, value: float, **labels: str) -> None:
        self.by_name[metric.name].observe(max(value, 0.0), tags=labels)


@functools.cache
def _created() -> _Series:
    # One per process: Ray's metric objects belong to the process that recorded them.
    return _Series()


def _series() -> _Series | None:
    return _created() if _connected() else None


# --- what the call sites use: one call each -------------------------------------------------


def sink_wrote(store: Store, batch: Sequence[object], seconds: float, fence: Fence | None) -> None:
    """The sink committed `batch` in `seconds`: its time, the outcomes in it and (for a
    fenced run's sink) the run's tasks per state. Called in the sink's store thread."""
    series = _series()
    if series is None:
        return
    series.observe(SINK_BATCH, seconds)
    updates = [event for event in batch if isinstance(event, TaskUpdate)]
    ended = [update for update in updates if update.state.terminal]
    for update in ended:
        failure = update.failure_class.value if update.failure_class else NO_FAILURE
        series.inc(TASK_OUTCOMES, 1, state=update.state.value, failure_class=failure)
    if fence is None or not updates:
        return
    last = series.counts_read.get(fence.run_id)
    if not ended and last is not None and time.monotonic() - last < COUNTS_EVERY_S:
        return
    series.counts_read[fence.run_id] = time.monotonic()
    try:
        counts = store.get_run(fence.run_id).counts
    except StoreError:
        return  # the next batch tries again; the batch itself is written
    task_counts(fence.run_id, counts)


def task_counts(run_id: str, counts: Mapping[str, int]) -> None:
    """A run's tasks per state (every state, zeros included)."""
    series = _series()
    if series is not None:
        for state in TaskState:
            series.set(TASKS, counts.get(state.value, 0), run=run_id, state=state.value)


def agent_run(agent: str, usage: Mapping[str, Any], seconds: float) -> None:
    """One agent run: its time, and the tokens and cost in its `usage` (agent_run.account)."""
    series = _series()
    if series is None:
        return
    provider, mode = str(usage.get("provider")), str(usage.get("mode"))
    series.observe(AGENT_SECONDS, seconds, agent=agent, mode=mode)
    for kind, field in TOKEN_KINDS.items():
        tokens = usage.get(field) or 0
        series.inc(TOKENS, tokens, provider=provider, mode=mode, kind=kind)
    series.inc(COST, float(usage.get("cost_usd") or 0.0), provider=provider, mode=mode)


def limit_wait(key: str, seconds: float) -> None:
    """A grant for `key`, `seconds` after it was asked for."""
    series = _series()
    if series is not None:
        series.observe(LIMIT_WAIT, seconds, key=key)


def admitted(result: T) -> T:
    """The limiter answered an acquisition: a `Grant` counts for its key, a `Denied`
    nothing. Returns `result`."""
    series = _series()
    if series is not None:
        from ado_ray.limits.base import Grant  # loaded by the limiter that calls this anyway

        if isinstance(result, Grant):
            series.inc(LIMITER_ADMITTED, 1, key=result.key)
    return result


def cooldown(key: str) -> None:
    """A provider's limit signal put `key` in cooldown."""
    series = _series()
    if series is not None:
        series.inc(LIMITER_COOLDOWNS, 1, key=key)


def pr(pull_request: T, state: str) -> T:
    """A pull request was published (`opened`, `updated`, `existing`); returns it."""
    series = _series()
    if series is not None:
        series.inc(PRS, 1, state=state)
    return pull_request


def exported_names(metrics: Iterable[Metric] = METRICS) -> list[str]:
    """Every name Prometheus shows for `metrics`, histograms' `_bucket`/`_sum`/`_count` too."""
    names = []
    for metric in metrics:
        if metric.kind == "histogram":
            names += [f"{metric.exported}_{part}" for part in ("bucket", "sum", "count")]
        else:
            names.append(metric.exported)
    return names
