"""ado's metrics, as Prometheus scrapes them from a real Ray's metrics agent.

A Ray head of this module's own (free ports, its own temp dir, a known metrics export
port) runs `ado batch` for real; a thread scrapes the endpoint twice a second throughout,
and each series is checked against what the run's JSON summary says happened. Counters
are compared as the growth over the run, so the order of the tests does not matter (the
rate limiter actor, and so its counters, outlives runs). Ray's agent exports what a
process recorded every 10 s, and when the process ends: every check polls, with a
deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ado_ray import metrics
from ado_ray.cluster import grafana
from ado_ray.models import TaskState
from tests.forge_fixtures import *  # noqa: F403
from tests.servers import free_port
from tests.stubs.forge import GiteaStandIn

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
SAMPLES = ROOT / "tests" / "agents" / "samples"
DEADLINE_S = 180.0

# A Claude Code that replays recorded real runs, chosen by the checkout's mode.txt:
# change (writes a file), nochange, fail (--max-turns exhausted, exit 1), limited (a
# subscription limit resetting in 4 s the first time, then as change).
FAKE_CLAUDE = """\
import json, pathlib, sys, time
samples, marker = pathlib.Path(SAMPLES), pathlib.Path(MARKER)
mode = pathlib.Path("mode.txt").read_text().strip()
if mode == "limited" and not marker.exists():
    marker.touch()
    info = {"status": "rejected", "resetsAt": int(time.time()) + 4, "rateLimitType": "five_hour"}
    print(json.dumps({"type": "rate_limit_event", "rate_limit_info": info}))
    sys.exit(1)
if mode == "fail":
    sys.stdout.write((samples / "claude-2.1.332-max-turns.stream.jsonl").read_text())
    sys.exit(1)
if mode in ("change", "limited"):
    pathlib.Path("hello.txt").write_text("hi\\n")
sys.stdout.write((samples / "claude-2.1.332-create-file.stream.jsonl").read_text())
"""


# --- unit: no Ray needed ----------------------------------------------------------------------


def test_importing_and_calling_without_ray_does_nothing_and_imports_no_ray() -> None:
    code = (
        "import sys\n"
        "from ado_ray import metrics\n"
        "metrics.agent_run('claude', {'provider': 'claude', 'mode': 'api', 'cost_usd': 1}, 3.0)\n"
        "metrics.limit_wait('command', 1.0); metrics.cooldown('command')\n"
        "assert metrics.pr('x', 'opened') == 'x' and metrics.admitted(None) is None\n"
        "metrics.task_counts('r', {'queued': 1}); metrics.sink_wrote(None, [], 0.1, None)\n"
        "assert 'ray' not in sys.modules, 'imported ray'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_names_and_labels_are_bounded_and_prometheus_shaped() -> None:
    allowed = {"run", "state", "failure_class", "agent", "mode", "key", "provider", "kind"}
    for metric in metrics.METRICS:
        assert re.fullmatch(r"ado_[a-z_]+", metric.name), metric.name
        assert not metric.name.endswith("_total"), "Ray adds _total to counters"
        assert set(metric.labels) <= allowed, metric
        assert metric.kind != "histogram" or list(metric.buckets) == sorted(metric.buckets)
    assert [m.labels for m in metrics.METRICS if "run" in m.labels] == [("run", "state")]
    assert metrics.TASK_OUTCOMES.exported == "ray_ado_task_outcomes_total"
    assert metrics.AGENT_SECONDS.exported == "ray_ado_agent_seconds"


def test_the_readme_table_lists_every_metric_as_defined() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Watching a run", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`ray_ado_"):
            rows[cells[0].strip("`")] = cells
    assert set(rows) == {m.exported for m in metrics.METRICS}
    for metric in metrics.METRICS:
        name, kind, labels, _ = rows[metric.exported]
        assert kind == metric.kind, name
        assert re.findall(r"`([a-z_]+)`", labels) == list(metric.labels), name


# --- a real Ray, scraped ------------------------------------------------------------------------


class MetricsRay:
    """A Ray head on free ports with a known metrics export port; only its own processes
    are stopped (it leads a session of its own)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp_dir = tempfile.mkdtemp(prefix="ado-metrics-")  # short: unix socket paths
        self.port, self.metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ADO_"))}
        self.env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        self.head: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> MetricsRay:
        ports = {
            "--port": self.port,
            "--metrics-export-port": self.metrics_port,
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--ray-client-server-port": free_port(),
        }
        command = [
            RAY, "start", "--head", "--block", "--num-cpus=1", "--include-dashboard=false",
            "--node-ip-address=127.0.0.1", f"--object-store-memory={80 * 1024**2}",
            f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
            *(f"{flag}={port}" for flag, port in ports.items()),
        ]  # fmt: skip
        with (self.root / "head.log").open("ab") as log:
            self.head = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                start_new_session=True,
            )  # fmt: skip
        probe = "import sys, ray\nray.init(address=sys.argv[1])\n"
        subprocess.run(
            [sys.executable, "-c", probe, self.address],
            env=self.env,
            capture_output=True,
            timeout=timeout,
            check=True,
        )
        until(lambda: self.scrape() is not None, timeout, "the metrics endpoint to answer")
        return self

    def scrape(self) -> list[Sample] | None:
        """ado's samples on the endpoint now; None if it does not answer."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        return [
            sample
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("ray_ado_")
        ]

    def stop(self) -> None:
        if self.head is None:
            return
        procs = [p for p in psutil.process_iter() if _session(p) == self.head.pid]
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(procs, timeout=30)
        self.head.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _session(proc: psutil.Process) -> int | None:
    try:
        return os.getsid(proc.pid)
    except OSError:
        return None


class Scraper:
    """Scrapes twice a second in a thread and keeps every answer (gauges of a process that
    ended leave the endpoint after two report intervals)."""

    def __init__(self, ray: MetricsRay) -> None:
        self.ray = ray
        self.history: list[list[Sample]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while not self.stopped.is_set():
            samples = self.ray.scrape()
            if samples is not None:
                self.history.append(samples)
            self.stopped.wait(0.5)

    def latest(self) -> list[Sample]:
        return self.history[-1] if self.history else []


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum over Ray's per-process labels of `name`'s samples with `labels`."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def gauge(samples: list[Sample], run_id: str) -> dict[str, float]:
    return {
        s.labels["state"]: s.value
        for s in samples
        if s.name == metrics.TASKS.exported and s.labels.get("run") == run_id
    }


@pytest.fixture(scope="module")
def metrics_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsRay]:
    ray = MetricsRay(tmp_path_factory.mktemp("metrics-ray"))
    try:
        yield ray.start()
    finally:
        ray.stop()


def fake_claude(tmp_path: Path) -> str:
    """The replaying Claude Code's path (for `agent.cmd`)."""
    path = tmp_path / "claude"
    marker = tmp_path / "limited-once"
    path.write_text(f"#!{sys.executable}\nSAMPLES, MARKER = {str(SAMPLES)!r}, {str(marker)!r}\n")
    with path.open("a") as script:
        script.write(FAKE_CLAUDE)
    path.chmod(0o755)
    return str(path)


def batch(
    ray: MetricsRay,
    tmp_path: Path,
    repo_list: Path,
    *flags: str,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`ado batch --json` on `ray` with the replaying Claude Code; its summary."""
    agent = {"name": "claude", "cmd": fake_claude(tmp_path), "prompt": "do it"}
    (tmp_path / "ado.yaml").write_text(json.dumps({"agent": agent, **(config or {})}))
    proc = subprocess.run(
        [sys.executable, "-m", "ado_ray", "batch", str(repo_list), "--json",
         "--ray-address", ray.address, *flags],
        cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE_S,
        env={**ray.env, "ADO_STATE": str(tmp_path / "state.db"),
             "ADO_WORK_ROOT": str(tmp_path / "work"), **(env or {})},
    )  # fmt: skip
    assert proc.stdout, proc.stderr
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


def midpoint(bounds: tuple[float, ...], value: float) -> float:
    """Where Ray's metrics agent puts an observation of `value` when it sums a histogram."""
    lower = 0.0
    for bound in bounds:
        if value <= bound:
            return (lower + bound) / 2
        lower = bound
    return bounds[-1] * 2


def grown(before: list[Sample], after: list[Sample], name: str, **labels: str) -> float:
    return round(total(after, name, **labels) - total(before, name, **labels), 6)


@pytest.mark.e2e
def test_a_runs_series_match_what_it_did(
    metrics_ray: MetricsRay, tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    modes = {"alpha": "change", "beta": "change", "gamma": "nochange", "delta": "fail"}
    modes["omega"] = "limited"
    repos = [make_repo(name, {"mode.txt": f"{mode}\n"}) for name, mode in modes.items()]
    (tmp_path / "repos.txt").write_text("".join(f"{repo}\n" for repo in repos))
    before = metrics_ray.scrape() or []
    with Scraper(metrics_ray) as scraper:
        summary = batch(metrics_ray, tmp_path, tmp_path / "repos.txt", "--name", "metered")
        run_id = summary["run_id"]
        assert summary["counts"] == {"changed": 3, "no_change": 1, "failed": 1}, summary
        (usage,) = summary["usage"]  # one provider and mode: claude, default
        assert (usage["provider"], usage["mode"], usage["agent_runs"]) == ("claude", "default", 6)
        final = {state.value: float(summary["counts"].get(state.value, 0)) for state in TaskState}
        c, a = metrics.TASK_OUTCOMES.exported, metrics.AGENT_SECONDS.exported
        expected = {
            (c, (("state", "changed"), ("failure_class", "none"))): 3,
            (c, (("state", "no_change"), ("failure_class", "none"))): 1,
            (c, (("state", "failed"), ("failure_class", "agent"))): 1,
            (c, ()): 5,
            (f"{a}_count", (("agent", "claude"), ("mode", "default"))): 6,
            (f"{a}_count", ()): 6,
            (f"{metrics.LIMIT_WAIT.exported}_count", (("key", "claude"),)): 6,
            (metrics.LIMITER_ADMITTED.exported, (("key", "claude"),)): 6,
            (metrics.LIMITER_COOLDOWNS.exported, (("key", "claude"),)): 1,
            (metrics.COST.exported, (("provider", "claude"), ("mode", "default"))): usage[
                "cost_usd"
            ],
        }
        for kind in ("input", "output", "cache"):
            labels = (("provider", "claude"), ("mode", "default"), ("kind", kind))
            expected[(metrics.TOKENS.exported, labels)] = usage["tokens"][kind]

        def seen() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            now = scraper.latest()
            return {key: grown(before, now, key[0], **dict(key[1])) for key in expected}

        def settled() -> bool:
            finals = [gauge(samples, run_id) for samples in scraper.history]
            return seen() == expected and final in finals

        with contextlib.suppress(AssertionError):
            until(settled, DEADLINE_S, "the run's series")
        assert seen() == expected
        observed = [g for g in (gauge(s, run_id) for s in scraper.history) if g]
        assert final in observed, observed[-3:]
    # Every look at the gauge accounts for every task, in one state each.
    assert all(sum(g.values()) == 5 and set(g) == set(final) for g in observed)
    now = scraper.latest()
    assert usage["cost_usd"] > 0 and usage["tokens"]["input"] > 0
    # The cooldown was waited for under its key (the other grants came at once).
    wait = metrics.LIMIT_WAIT.exported
    assert grown(before, now, f"{wait}_bucket", key="claude", le="1.0") <= 5
    assert grown(before, now, f"{metrics.SINK_BATCH.exported}_count") >= 5
    # Each agent run in its bucket; Ray's agent rebuilds `_sum` from the buckets' midpoints.
    durations = [s["duration_s"] for t in summary["tasks"] for s in t["sessions"]]
    bounds = metrics.AGENT_SECONDS.buckets
    for bound in bounds:
        below = sum(d <= bound for d in durations)
        assert grown(before, now, f"{a}_bucket", le=str(float(bound))) == below, bound
    assert grown(before, now, f"{a}_sum") == pytest.approx(
        sum(midpoint(bounds, d) for d in durations)
    )
    # No series carries a repository, a path or a URL.
    names = {name for name in modes} | {str(repo) for repo in repos}
    for sample in now:
        assert not set(sample.labels.values()) & names, sample
    # What the dashboard asks for, Prometheus has (pull requests: the next test).
    asked = {
        name
        for p in grafana.dashboard()["panels"]
        for t in p["targets"]
        for name in re.findall(r"ray_ado_[a-z_]+", t["expr"])
    }
    have = {sample.name for sample in now}
    assert asked - have <= {metrics.PRS.exported}


@pytest.mark.e2e
def test_pull_requests_are_counted_opened_then_updated(
    metrics_ray: MetricsRay, tmp_path: Path, gitea_standin: GiteaStandIn
) -> None:
    forge = gitea_standin
    urls = [forge.add_repo(f"acme/{name}", {"mode.txt": "change\n"}) for name in ("p1", "p2")]
    (tmp_path / "repos.txt").write_text("".join(f"{url}\n" for url in urls))
    config = {"forges": {forge.host: {"type": "gitea", "api_url": forge.api_url,
                                      "token_env": "STANDIN_TOKEN"}}}  # fmt: skip
    env = {"STANDIN_TOKEN": forge.token}
    name = metrics.PRS.exported
    before = metrics_ray.scrape() or []

    def published(state: str) -> float:
        return grown(before, scraper.latest(), name, state=state)

    with Scraper(metrics_ray) as scraper:
        for conflict, state in (("skip", "opened"), ("replace", "updated")):
            summary = batch(metrics_ray, tmp_path, tmp_path / "repos.txt", "--name", "prs",
                            "--pr", "--conflict", conflict, config=config, env=env)  # fmt: skip
            assert summary["counts"] == {"changed": 2}, summary
            assert all(len(forge.pulls(f"acme/{n}")) == 1 for n in ("p1", "p2"))
            until(lambda state=state: published(state) >= 2, DEADLINE_S, f"{state} PRs")
    now = scraper.latest()
    assert {s: grown(before, now, name, state=s) for s in ("opened", "updated", "existing")} == {
        "opened": 2,
        "updated": 2,
        "existing": 0,
    }
