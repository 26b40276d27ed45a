#!/usr/bin/env python3
"""PRs opened through a paced forge: `ado batch --pr` on the GitHub stand-in with
`forge:<host>:pr` limited, against an unlimited `xargs -P` + `curl` loop.

In one invocation, with the GitHub stand-in (`tests/stubs/forge`: real `git http-backend`
with token auth, the REST API in GitHub's shapes, every reply checked against GitHub's
OpenAPI description) serving on 127.0.0.1 from a thread of this process:

1. `ado batch --pr` over N repositories on the stand-in (`acme/r0000`, ...), as a subprocess
   with its own state file, work root and local Ray, a config file naming the stand-in as a
   `github` forge and limiting `forge:<host>:pr` to `--pr-limit` PRs a minute, counted in
   windows of `--pr-period` seconds (180/min in 10 s windows is `30/10s`); the agent appends
   a line to `CHANGED.txt`.
2. The baseline: `xargs -P` over a shell script that, per repository of a second set
   (`base/r0000`, ...), clones it over HTTP (the token as `http.extraHeader`), runs the same
   agent, commits, pushes a branch and opens its PR with `curl -X POST .../pulls`. No limits.

From the stand-in's own request log it computes the PRs opened per minute against the limit
(target >= 0.95) and the over-admission: the most PR creations in any window of the limit's
length, less the limit (target 0). It prints both wall times and their ratio, and where
ado's time went (start-up before its first request, the work, the teardown). Both sides'
work is checked: every task `changed`, every repository with exactly one PR whose head is
its branch's SHA, the branch one commit changing `CHANGED.txt`, no reply off GitHub's
schema; if not, it says what is wrong and exits 1. A missed target is reported, not an error.

    .venv/bin/python bench/forge.py [--repos 200] [--parallel 20] [--pr-limit 180]
                                    [--pr-period 10] [--no-validate] [--no-ray] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.stubs.forge

from _common import (  # bench/ is on sys.path: Python puts a script's directory there
    ADO,
    CATEGORY_HEADERS,
    CATEGORY_ORDER,
    Measured,
    add_common_args,
    bench_env,
    bench_workdir,
    branch_problems,
    category_rows,
    check_workdir,
    finish,
    log,
    run_measured,
    table,
    tail,
)

from tests.stubs.forge import GitHubStandIn, SchemaUnavailable
from tests.stubs.forge.schema import ResponseSchemas

TARGET_RATE = 0.95
# A creation reaches the stand-in a little after the limiter admitted it (the grant's way
# back from the limiter, a second hold on forge:<host>, a thread, a connection), and not
# always equally late. Over-admission is counted in the limit's own windows, as the forge
# sees the requests; counted in windows this much shorter too, it is what is left once ado's
# latency is allowed for (the limiter's own).
LATENCY_ALLOWANCE_S = 0.5
# The process-tree sampler runs in this process, beside the stand-in's threads: sampling
# less often than the other benchmarks leaves the stand-in more of the interpreter.
SAMPLE_INTERVAL_S = 1.0
TOKEN_VAR = "BENCH_FORGE_TOKEN"
ADO_OWNER, BASE_OWNER = "acme", "base"  # ado's repositories, the baseline's
RUN_NAME = "bench"
ADO_BRANCH = f"ado/{RUN_NAME}"
BASELINE_BRANCH = "bench-baseline"
AGENT_SH = "#!/bin/sh\necho x >> CHANGED.txt\n"
AGENT_TIMEOUT_S = 120
# One repository of the baseline: $1 is its path on the stand-in (owner/name).
TASK_SH = """\
#!/bin/sh
set -eu
path=$1
name=${path##*/}
auth="Authorization: Bearer $BENCH_TOKEN"
git -c http.extraHeader="$auth" clone --quiet "$BENCH_GIT/$path.git" "$BENCH_WORK/$name"
cd "$BENCH_WORK/$name"
sh "$BENCH_AGENT" > /dev/null 2>&1
git add -A
git commit --quiet --no-verify -m "bench: agent changes in $name"
git -c http.extraHeader="$auth" push --quiet origin HEAD:refs/heads/{branch}
body="{\\"title\\": \\"bench: $name\\", \\"head\\": \\"{branch}\\", \\"base\\": \\"main\\"}"
curl --silent --show-error --fail -o "$BENCH_WORK/$name.pr.json" -X POST --data "$body" \\
    -H "$auth" -H "Accept: application/vnd.github+json" -H "Content-Type: application/json" \\
    "$BENCH_API/repos/$path/pulls"
"""
# From its own process, a request to the stand-in every 0.2 s whose path carries the
# time.monotonic() (one clock for every process) it was sent at: the stand-in logs its
# arrival, so the difference is the stand-in's own intake delay (accept, a thread, the
# interpreter it shares with everything in this process), not ado's.
PROBE_PY = """\
import http.client, sys, time
port, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    sent = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", f"/bench-probe/{sent:.6f}")
    conn.getresponse().read()
    conn.close()
    time.sleep(max(0.0, 0.2 - (time.monotonic() - sent)))
"""
PROBE = re.compile(r"^/bench-probe/(?P<sent>[0-9.]+)$")
PROBE_MAX_S = 1800  # the probe stops by itself at the latest after this long
PULLS = re.compile(r"^/api/v3/repos/(?P<owner>[^/]+)/[^/]+/pulls$")
REPO_IN_PATH = re.compile(rf"(?<=/)(?:{ADO_OWNER}|{BASE_OWNER})/r\d+")
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=200, help="repositories (default 200)")
    parser.add_argument("--parallel", type=int, default=20, help="at once (default 20)")
    parser.add_argument(
        "--pr-limit",
        type=int,
        default=180,
        help="PR creations allowed per minute on forge:<host>:pr (default 180)",
    )
    parser.add_argument(
        "--pr-period",
        type=float,
        default=10.0,
        help="the limit's window in seconds: 180/min with 10 is the spec '30/10s', "
        "with 60 '180/1m' (default 10)",
    )
    parser.add_argument(
        "--no-validate",
        action="store_true",
        help="skip the stand-in's check of every reply against GitHub's schema",
    )
    parser.add_argument(
        "--no-ray", action="store_true", help="run ado with --no-ray (default: its own local Ray)"
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    if min(args.repos, args.parallel, args.pr_limit) < 1 or args.pr_period <= 0:
        parser.error("--repos, --parallel and --pr-limit must be at least 1, --pr-period > 0")
    per_window = args.pr_limit * args.pr_period / 60
    if per_window < 1 or abs(per_window - round(per_window)) > 1e-9:
        parser.error(
            f"--pr-limit {args.pr_limit}/min in {args.pr_period:g} s windows is "
            f"{per_window:g} per window; expected a whole number of at least 1"
        )
    args.per_window = round(per_window)
    period = "1m" if args.pr_period == 60 else f"{args.pr_period:g}s"
    args.spec = f"{args.per_window}/{period}"
    check_workdir(parser, args.workdir)
    return args


# --- the stand-in --------------------------------------------------------------------------


class TimedSchemas(ResponseSchemas):
    """A forge's schema checks (`inner`; None: none at all), with their CPU time added up."""

    def __init__(self, inner: ResponseSchemas | None) -> None:  # no super(): all is inner's
        self.inner = inner
        self.cpu_s = 0.0
        self.checked = 0
        self._count_lock = threading.Lock()

    def check(self, method: str, template: str, status: int, body: Any) -> list[str]:
        if self.inner is None:
            return []
        cpu = time.thread_time()
        try:
            return self.inner.check(method, template, status, body)
        finally:
            with self._count_lock:
                self.cpu_s += time.thread_time() - cpu
                self.checked += 1


class BenchGitHub(GitHubStandIn):
    """The GitHub stand-in, adding up the CPU time its schema checks take (or skipping them)."""

    def __init__(self, workdir: Path, token: str, validate: bool = True) -> None:
        self.validate = validate
        super().__init__(workdir, token=token)

    def load_schemas(self) -> ResponseSchemas:
        # SchemaUnavailable if GitHub's description is not installed
        self.timed = TimedSchemas(super().load_schemas() if self.validate else None)
        return self.timed


# --- the two sides -------------------------------------------------------------------------


def forge_env(workdir: Path, gh: GitHubStandIn) -> dict[str, str]:
    """bench_env without proxies (the stand-in is on 127.0.0.1), with the token."""
    env = {k: v for k, v in bench_env(workdir).items() if k.lower() not in PROXY_VARS}
    env.update(no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    env.update({TOKEN_VAR: gh.token, "GIT_TERMINAL_PROMPT": "0"})
    return env


@dataclass
class AdoSide:
    measured: Measured
    summary: dict[str, Any]
    problems: list[str] = field(default_factory=list)


def run_ado(
    args: argparse.Namespace, workdir: Path, gh: GitHubStandIn, urls: list[str], agent: Path
) -> AdoSide:
    repo_list = workdir / "repos.txt"
    repo_list.write_text("".join(f"{url}\n" for url in urls))
    config = {
        "forges": {gh.host: {"type": "github", "api_url": gh.api_url, "token_env": TOKEN_VAR}},
        "limits": {f"forge:{gh.host}:pr": {"requests": [args.spec]}},
        "publish": {"pr": True},
    }
    config_path = workdir / "ado.yaml"
    config_path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    argv = [*ADO, "batch", str(repo_list), "--config", str(config_path), "--pr"]
    argv += ["--name", RUN_NAME, "--cmd", f"sh {shlex.quote(str(agent))}"]
    argv += ["--parallel", str(args.parallel), "--json"]
    argv += ["--state", str(workdir / "ado.db"), "--work-root", str(workdir / "ado")]
    argv += ["--timeout", str(AGENT_TIMEOUT_S)]  # a stuck task fails the run, not hangs it
    if args.no_ray:
        argv.append("--no-ray")
    stderr_path = workdir / "ado.log"
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE_PY, str(gh.port), str(PROBE_MAX_S)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        measured = run_measured(
            argv,
            env=forge_env(workdir, gh),
            cwd=workdir,
            stderr_path=stderr_path,
            agent_marker=agent.name,
            interval_s=SAMPLE_INTERVAL_S,
        )
    finally:
        probe.kill()
        probe.wait()
    try:
        summary = json.loads(measured.stdout) if measured.stdout.strip() else {}
    except json.JSONDecodeError:
        summary = {}
    side = AdoSide(measured, summary)
    if measured.returncode != 0:
        said = "\n".join(f"    {line}" for line in measured.stdout.splitlines()[-5:])
        side.problems.append(
            f"ado batch exited {measured.returncode}; its log:\n{tail(stderr_path)}\n{said}"
        )
    counts = summary.get("counts", {})
    if counts != {"changed": len(urls)}:
        side.problems.append(f"task states {counts}; expected {{'changed': {len(urls)}}}")
    for task in summary.get("tasks", []):
        path = urlsplit(task["repo"]).path.removeprefix("/").removesuffix(".git")
        wrong = pr_problems(gh, path, ADO_BRANCH, also=task.get("commit"))
        if not wrong and task.get("pr_url") != gh.pulls(path)[0]["html_url"]:
            wrong = [f"{path}: the task's pr_url is {task.get('pr_url')!r}, not its PR's"]
        side.problems += wrong
    return side


def run_baseline(
    args: argparse.Namespace, workdir: Path, gh: GitHubStandIn, paths: list[str], agent: Path
) -> Measured:
    task = workdir / "task.sh"
    task.write_text(TASK_SH.replace("{branch}", BASELINE_BRANCH))
    listing = workdir / "baseline.nul"
    listing.write_bytes(b"".join(f"{path}\0".encode() for path in paths))
    (workdir / "baseline").mkdir()
    env = forge_env(workdir, gh) | {
        "BENCH_TOKEN": gh.token,
        "BENCH_GIT": gh.base_url,
        "BENCH_API": gh.api_url,
        "BENCH_WORK": str(workdir / "baseline"),
        "BENCH_AGENT": str(agent),
    }
    argv = ["xargs", "-0", "-P", str(args.parallel), "-n", "1", "sh", str(task)]
    return run_measured(
        argv,
        env=env,
        cwd=workdir,
        stderr_path=workdir / "baseline.log",
        agent_marker=agent.name,
        stdin_path=listing,
        interval_s=SAMPLE_INTERVAL_S,
    )


def pr_problems(gh: GitHubStandIn, path: str, branch: str, also: str | None = None) -> list[str]:
    """What is wrong with `path`'s PR: there must be exactly one, open, from `branch` into
    main, its head the branch's SHA (and `also`, the commit ado reported, when given)."""
    sha = gh.branch_sha(path, branch)
    pulls = gh.pulls(path)
    if sha is None:
        return [f"{path}: no branch {branch}"]
    if len(pulls) != 1:
        return [f"{path}: {len(pulls)} PRs; expected exactly one"]
    pr = pulls[0]
    found = (pr["state"], pr["head"]["ref"], pr["base"]["ref"], pr["head"]["sha"])
    if found != ("open", branch, "main", sha) or (also is not None and also != sha):
        return [f"{path}: PR {found}, branch {branch} at {sha}, ado's commit {also}"]
    return []


# --- figures -------------------------------------------------------------------------------


def most_in_any_window(times: list[float], width: float) -> int:
    """The most of the sorted `times` in any half-open window [t, t + width)."""
    most = first = 0
    for last, at in enumerate(times):
        while at - times[first] >= width:
            first += 1
        most = max(most, last - first + 1)
    return most


def creations(gh: GitHubStandIn, owner: str, since: float, until: float) -> dict[str, Any]:
    """`owner`'s PR creations that arrived between `since` and `until` (time.monotonic(),
    as the stand-in's log has them): the successful ones, all attempts, and for each attempt
    (in arrival order) the time since its repository's last `GET .../pulls` (ado looks the
    PR up right before it creates one: client latency, plus any wait for the limit)."""
    created, attempts, leads = [], [], []
    looked_up: dict[str, float] = {}
    for method, path, status, at in sorted(gh.requests, key=lambda request: request[3]):
        match = PULLS.match(path.split("?", 1)[0])
        if not match or match["owner"] != owner or not since <= at <= until:
            continue
        if method == "GET":
            looked_up[path.split("?", 1)[0]] = at
        elif method == "POST":
            attempts.append(at)
            leads.append(at - looked_up.get(path, at))
            if status == 201:
                created.append(at)
    return {"created": created, "attempts": attempts, "leads": leads}


def rates(times: list[float], per_window: int, period: float) -> dict[str, Any]:
    """PR creations per minute: over whole windows of the limit, and first to last."""
    count = len(times)
    out: dict[str, Any] = {"count": count}
    if count < 2:
        return out
    span = times[-1] - times[0]
    out["span_s"] = span
    out["first_to_last_per_min"] = (count - 1) / span * 60 if span > 0 else float("inf")
    windows = (count - 1) // per_window  # the (k·N+1)th creation can come k windows after the 1st
    out["whole_windows"] = windows
    out["min_span_s"] = windows * period
    if windows:
        last = windows * per_window
        out["whole_windows_span_s"] = times[last] - times[0]
        out["whole_windows_per_min"] = last / (times[last] - times[0]) * 60
    return out


def ado_phases(gh: GitHubStandIn, start: float, end: float) -> dict[str, float]:
    """From the stand-in's log: launch → ado's first request, → its last, → exit."""
    mine = [
        at for _m, path, _s, at in list(gh.requests) if start <= at <= end and not PROBE.match(path)
    ]
    if not mine:
        return {}
    return {
        "startup_s": min(mine) - start,
        "requests_span_s": max(mine) - min(mine),
        "teardown_s": end - max(mine),
        "requests": len(mine),
    }


def intake_delays_ms(gh: GitHubStandIn) -> dict[str, float] | None:
    """The probe's requests: from sending to the stand-in's arrival time, in ms."""
    delays = sorted(
        (at - float(match["sent"])) * 1000
        for _m, path, _s, at in list(gh.requests)
        if (match := PROBE.match(path))
    )
    if not delays:
        return None
    return {
        "probes": len(delays),
        "median": round(statistics.median(delays), 1),
        "p99": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))], 1),
        "max": round(delays[-1], 1),
    }


def request_mix(gh: GitHubStandIn, start: float, end: float) -> dict[str, int]:
    """The requests that arrived between `start` and `end`, by kind, most first."""
    kinds: Counter[str] = Counter()
    for method, path, status, at in list(gh.requests):
        if start <= at <= end and not PROBE.match(path):
            kind = REPO_IN_PATH.sub("{repo}", path.split("?", 1)[0])
            if "service=" in path:
                kind += "?" + path.split("?", 1)[1]
            kinds[f"{method} {kind} {status}"] += 1
    return dict(kinds.most_common())


def side_figures(measured: Measured, standin_cpu_s: float, prs: dict[str, Any]) -> dict[str, Any]:
    return {
        "wall_s": round(measured.wall_s, 2),
        "cpu_s": round(measured.samples.cpu_s(), 2),
        "standin_cpu_s": round(standin_cpu_s, 2),
        "prs": prs.get("count", 0),
        "prs_per_min": round(prs.get("first_to_last_per_min", 0.0), 1),
        "pr_span_s": round(prs.get("span_s", 0.0), 2),
    }


def report(args: argparse.Namespace, f: dict[str, Any], ado: Measured) -> None:
    mode = "--no-ray" if args.no_ray else "its own local Ray"
    print(
        f"ado-ray forge pacing: {args.repos} repositories on the GitHub stand-in, "
        f"--parallel {args.parallel}, forge:<host>:pr limited to {args.spec} "
        f"({args.pr_limit}/min); ado with {mode}\n"
    )
    rows = [
        [
            name,
            f"{s['wall_s']:.2f}",
            f"{s['cpu_s']:.1f}",
            f"{s['standin_cpu_s']:.1f}",
            s["prs"],
            f"{s['pr_span_s']:.1f}",
            f"{s['prs_per_min']:.0f}",
        ]
        for name, s in f["sides"].items()
    ]
    headers = ["side", "wall s", "CPU s", "stand-in CPU s", "PRs", "PR span s", "PRs/min"]
    print(table(headers, rows))
    print()
    r = f["ado_rates"]
    print(f"ratio a/b (wall)             = {f['ratio_wall']:.2f}")
    if "whole_windows_per_min" in r:
        print(
            f"PRs/min over whole windows   = {r['whole_windows_per_min']:.1f} of "
            f"{args.pr_limit}: ratio {f['rate_ratio']:.3f} (target >= {TARGET_RATE}: "
            f"{'PASS' if f['rate_pass'] else 'FAIL'}); creations 1 → "
            f"{r['whole_windows'] * args.per_window + 1} in {r['whole_windows_span_s']:.2f} s, "
            f"{r['whole_windows']} windows of {args.pr_period:g} s"
        )
    else:
        print(f"PRs/min over whole windows   = n/a: {r['count']} PRs never filled a window")
    if "first_to_last_per_min" in r:
        print(
            f"PRs/min first → last         = {r['first_to_last_per_min']:.1f}: ratio "
            f"{r['first_to_last_per_min'] / args.pr_limit:.3f} ((count - 1) / span; "
            "counts the first window's burst)"
        )
        print(
            f"ado's PR span                = {r['span_s']:.1f} s (the limit's minimum for "
            f"{r['count']} PRs: {r['min_span_s']:.0f} s)"
        )
    print(
        f"over-admission               = {f['over_admission']} (most creations arriving in any "
        f"{args.pr_period:g} s window: {f['most_in_window']} of {args.per_window}; target 0: "
        f"{'PASS' if f['over_admission_pass'] else 'FAIL'})"
    )
    window = args.pr_period - LATENCY_ALLOWANCE_S
    print(
        f"{'  allowing ' + format(LATENCY_ALLOWANCE_S, 'g') + ' s of latency':<29}= "
        f"{f['over_admission_allowing_latency']} (most in any {window:g} s window: "
        f"{f['most_in_shorter_window']} of {args.per_window})"
    )
    gaps = f["gaps_s"]
    if gaps:
        print(
            f"{'creation i to i+' + str(args.per_window):<29}= {gaps['median']:.3f} s median, "
            f"{gaps['least']:.3f} s least ({args.pr_period:g} s: the limit sets the pace)"
        )
    lead = f["first_window_lead_ms"]
    if lead:
        print(
            f"PR lookup → creation         = {lead['median']:.0f} ms median, {lead['max']:.0f} ms "
            "max (first window: no wait for the limit; the lookup's reply and ado's latency)"
        )
    intake = f["standin_intake_ms"]
    if intake:
        print(
            f"stand-in's intake delay      = {intake['median']:.0f} ms median, {intake['p99']:.0f} "
            f"ms p99, {intake['max']:.0f} ms max ({intake['probes']} probes sent from another "
            "process during (a))"
        )
    p = f.get("ado_phases")
    if p:
        wall = f["sides"]["ado batch --pr"]["wall_s"]
        print(
            f"ado's start-up               = {p['startup_s']:.1f} s of {wall:.1f} s "
            f"({p['startup_s'] / wall:.0%}): launch → its first request; then "
            f"{p['requests_span_s']:.1f} s of requests ({p['requests']}), last request → exit "
            f"{p['teardown_s']:.1f} s"
        )
    b = f["baseline_rates"]
    if "first_to_last_per_min" in b:
        print(
            f"baseline's PRs/min           = {b['first_to_last_per_min']:.0f} (no limit; "
            f"first → last {b['span_s']:.1f} s)"
        )
    v = f["validation"]
    checked = (
        f"checked {v['replies']} replies against GitHub's schema in {v['cpu_s']:.1f} s of CPU"
        if v["replies"]
        else "checked no reply against GitHub's schema (--no-validate)"
    )
    print("\nado batch's process tree: peaks per category and CPU")
    print(table(CATEGORY_HEADERS, category_rows(ado.samples, CATEGORY_ORDER)))
    print(
        f"\n(the stand-in {checked}; the sampler, every {SAMPLE_INTERVAL_S:g} s, used "
        f"{f['sampler_cpu_s']:.1f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_workdir(args.workdir, args.keep) as workdir:
        try:
            return bench(args, workdir)
        except SchemaUnavailable as exc:
            log(f"error: {exc}; or run with --no-validate")
            return 2


def self_cpu_s() -> float:
    """This process's own CPU time (the stand-in's threads and the sampler)."""
    times = os.times()
    return times.user + times.system


def bench(args: argparse.Namespace, workdir: Path) -> int:
    agent = workdir / "agent.sh"
    agent.write_text(AGENT_SH)
    with BenchGitHub(workdir, f"tok-{uuid.uuid4().hex}", not args.no_validate) as gh:
        log(f"making 2 x {args.repos} repositories on the stand-in at {gh.base_url}")
        urls = [gh.add_repo(f"{ADO_OWNER}/r{i:04d}") for i in range(args.repos)]
        base = [f"{BASE_OWNER}/r{i:04d}" for i in range(args.repos)]
        for path in base:
            gh.add_repo(path)
        offset = time.time() - time.monotonic()

        log(f"(a) ado batch --pr over {args.repos} repositories, forge:{gh.host}:pr {args.spec}")
        cpu = self_cpu_s()
        ado = run_ado(args, workdir, gh, urls, agent)
        ado_cpu = self_cpu_s() - cpu - ado.measured.samples.sampler_cpu_s
        a_start = ado.measured.started_at - offset
        a_end = a_start + ado.measured.wall_s
        log(f"  {ado.measured.wall_s:.1f} s")

        log(f"(b) baseline: xargs -P {args.parallel} over task.sh (git + curl, no limit)")
        cpu = self_cpu_s()
        baseline = run_baseline(args, workdir, gh, base, agent)
        base_cpu = self_cpu_s() - cpu - baseline.samples.sampler_cpu_s
        b_start = baseline.started_at - offset
        b_end = b_start + baseline.wall_s
        log(f"  {baseline.wall_s:.1f} s")

        problems = [f"ado: {p}" for p in ado.problems]
        if baseline.returncode != 0:
            problems.append(
                f"baseline: xargs exited {baseline.returncode}; its log:\n"
                f"{tail(workdir / 'baseline.log')}"
            )
        problems += [
            f"baseline: {p}" for path in base for p in pr_problems(gh, path, BASELINE_BRANCH)
        ]
        for side, paths, branch in (
            ("ado", [f"{ADO_OWNER}/r{i:04d}" for i in range(args.repos)], ADO_BRANCH),
            ("baseline", base, BASELINE_BRANCH),
        ):
            bares = [gh.bare_path(path) for path in paths]
            problems += [f"{side}: {p}" for p in branch_problems(bares, branch)]
        problems += [f"stand-in: {e}" for e in gh.schema_errors[:20]]
        for name, measured in (("ado", ado.measured), ("baseline", baseline)):
            if measured.leftovers:
                log(f"warning: {name} left processes running (killed): {measured.leftovers}")

        a_prs = creations(gh, ADO_OWNER, a_start, a_end)
        b_prs = creations(gh, BASE_OWNER, b_start, b_end)
        refused = len(a_prs["attempts"]) - len(a_prs["created"])
        if refused:
            problems.append(f"ado: {refused} PR creations refused by the stand-in")
        validation = {"replies": gh.timed.checked, "cpu_s": round(gh.timed.cpu_s, 2)}

    ado_rates = rates(a_prs["created"], args.per_window, args.pr_period)
    baseline_rates = rates(b_prs["created"], args.per_window, args.pr_period)
    attempts = a_prs["attempts"]
    most = most_in_any_window(attempts, args.pr_period)
    most_shorter = most_in_any_window(attempts, args.pr_period - LATENCY_ALLOWANCE_S)
    gaps = [b - a for a, b in zip(attempts, attempts[args.per_window :], strict=False)]
    first_leads = a_prs["leads"][: args.per_window]
    figures: dict[str, Any] = {
        "repos": args.repos,
        "parallel": args.parallel,
        "pr_limit_per_min": args.pr_limit,
        "pr_period_s": args.pr_period,
        "spec": args.spec,
        "ray": not args.no_ray,
        "sides": {
            "ado batch --pr": side_figures(ado.measured, ado_cpu, ado_rates),
            "xargs + curl": side_figures(baseline, base_cpu, baseline_rates),
        },
        "ratio_wall": round(ado.measured.wall_s / baseline.wall_s, 3),
        "ado_rates": {k: round(v, 3) for k, v in ado_rates.items()},
        "baseline_rates": {k: round(v, 3) for k, v in baseline_rates.items()},
        "over_admission": max(0, most - args.per_window),
        "most_in_window": most,
        "latency_allowance_s": LATENCY_ALLOWANCE_S,
        "over_admission_allowing_latency": max(0, most_shorter - args.per_window),
        "most_in_shorter_window": most_shorter,
        # from each creation to the per_window-th after it
        "gaps_s": {"median": round(statistics.median(gaps), 3), "least": round(min(gaps), 3)}
        if gaps
        else None,
        # lookup → creation in the first window, where nothing waits for the limit: latency
        "first_window_lead_ms": {
            "median": round(statistics.median(first_leads) * 1000, 1),
            "max": round(max(first_leads) * 1000, 1),
        }
        if first_leads
        else None,
        "validation": validation,
        "standin_intake_ms": intake_delays_ms(gh),
        "requests": {
            "ado": request_mix(gh, a_start, a_end),
            "baseline": request_mix(gh, b_start, b_end),
        },
        # when ado's PR creations arrived, in seconds after the first
        "ado_creations_s": [round(at - a_prs["attempts"][0], 3) for at in a_prs["attempts"]],
        "sampler_cpu_s": round(
            ado.measured.samples.sampler_cpu_s + baseline.samples.sampler_cpu_s, 2
        ),
        "problems": problems,
    }
    rate = ado_rates.get("whole_windows_per_min")
    figures["rate_ratio"] = round(rate / args.pr_limit, 3) if rate else None
    figures["rate_pass"] = rate is not None and rate / args.pr_limit >= TARGET_RATE
    figures["over_admission_pass"] = most <= args.per_window
    phases = ado_phases(gh, a_start, a_end)
    if phases:
        figures["ado_phases"] = {k: round(v, 3) for k, v in phases.items()}
        figures["startup_share"] = round(phases["startup_s"] / ado.measured.wall_s, 3)
    return finish(args.json, figures, lambda: report(args, figures, ado.measured), problems)


if __name__ == "__main__":
    sys.exit(main())
