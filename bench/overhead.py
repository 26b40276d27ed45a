#!/usr/bin/env python3
"""What ado-ray's orchestration costs over a plain `xargs -P` doing the same git work.

In one invocation, over the same N local repositories and the same agent (a shell script
that sleeps S seconds and appends to one file), with P at once:

1. fixed start-up: `ado batch` over one repository with the agent `true`: interpreter and
   imports, Ray start, actors, one trivial task, teardown;
2. `ado batch` over the N repositories (branch ado/bench);
3. the baseline: `xargs -P` over a shell script that, per repository, mirrors it into a
   cache, makes a `--shared` checkout, runs the agent, commits and pushes the commit
   (branch bench-baseline).

It prints both wall times, their ratio raw and with the fixed start-up (the median of
`--startup-runs` such runs, one before and the rest after the two measured ones) taken off
ado's time (target <= 1.15), and for each side the peak memory (RSS, PSS, USS) of its whole
process tree and an estimate of the CPU time the tree used. From ado's own store it adds
where ado's time went (start-up, task span, teardown; per task: agent, commit, push) and
the ratio of its task span alone to the baseline. Both sides' results are checked: every
repository must have its branch with exactly one commit; if not, it says what is wrong and
exits 1. A missed target is reported, not an error.

    .venv/bin/python bench/overhead.py [--repos 200] [--sleep 1] [--parallel 20] [--json]
"""

from __future__ import annotations

import argparse
import shlex
import sqlite3
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import (  # bench/ is on sys.path: Python puts a script's directory there
    AGENT_CATEGORIES,
    CATEGORY_HEADERS,
    CATEGORY_ORDER,
    AdoRun,
    Measured,
    add_common_args,
    bench_env,
    bench_workdir,
    branch_problems,
    category_rows,
    check_workdir,
    finish,
    log,
    make_repos,
    run_ado_batch,
    run_measured,
    table,
    tail,
    write_agent,
    write_repo_list,
)

TARGET = 1.15
BASELINE_BRANCH = "bench-baseline"
# What ado does per repository, as a plain script: $1 is the repository's path.
TASK_SH = """\
#!/bin/sh
set -eu
src=$1
name=${src##*/}
git clone --quiet --mirror "$src" "$BENCH_CACHE/$name.git"
git clone --quiet --shared "$BENCH_CACHE/$name.git" "$BENCH_WORK/$name"
cd "$BENCH_WORK/$name"
sh "$BENCH_AGENT" > "$BENCH_WORK/$name.agent.log" 2>&1
git add -A
git commit --quiet --no-verify -m "bench: agent changes in $name"
git push --quiet "$src" HEAD:refs/heads/{branch}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=200, help="repositories (default 200)")
    parser.add_argument("--sleep", type=float, default=1.0, help="agent's sleep, s (default 1)")
    parser.add_argument("--parallel", type=int, default=20, help="at once (default 20)")
    parser.add_argument(
        "--startup-runs",
        type=int,
        default=3,
        help="1-repository runs to take the fixed start-up from, their median (default 3)",
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    if min(args.repos, args.parallel, args.startup_runs) < 1 or args.sleep < 0:
        parser.error("--repos, --parallel and --startup-runs must be at least 1, --sleep >= 0")
    check_workdir(parser, args.workdir)
    return args


def run_baseline(workdir: Path, repos: list[Path], agent: Path, parallel: int) -> Measured:
    task = workdir / "task.sh"
    task.write_text(TASK_SH.replace("{branch}", BASELINE_BRANCH))
    listing = workdir / "repos.nul"
    listing.write_bytes(b"".join(f"{repo}\0".encode() for repo in repos))
    for sub in ("cache", "work"):
        (workdir / "baseline" / sub).mkdir(parents=True)
    env = bench_env(workdir) | {
        "BENCH_CACHE": str(workdir / "baseline" / "cache"),
        "BENCH_WORK": str(workdir / "baseline" / "work"),
        "BENCH_AGENT": str(agent),
    }
    argv = ["xargs", "-0", "-P", str(parallel), "-n", "1", "sh", str(task)]
    return run_measured(
        argv,
        env=env,
        cwd=workdir,
        stderr_path=workdir / "baseline.log",
        agent_marker=agent.name,
        stdin_path=listing,
    )


def ado_phases(run: AdoRun, state: Path) -> dict[str, float]:
    """Where ado's wall time went, from the timestamps in its store (written by its sink,
    so each is up to ~0.05 s late): launch → first task's checkout ready → last task done
    (the task span) → exit, and per task the medians of the agent's run, commit and push."""
    run_id = run.summary["run_id"]
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        rows = db.execute(
            """
            SELECT t.updated_at, s.duration_s, p.created_at, a.created_at, c.created_at
            FROM tasks t
            JOIN sessions s ON s.task_id = t.task_id
            JOIN checkpoints p ON p.task_id = t.task_id AND p.step = 'prepared'
            JOIN checkpoints a ON a.task_id = t.task_id AND a.step = 'agent_done'
            JOIN checkpoints c ON c.task_id = t.task_id AND c.step = 'committed'
            WHERE t.run_id = ?
            """,
            (run_id,),
        ).fetchall()

    def ts(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    launched = run.measured.started_at
    first, last = min(ts(r[2]) for r in rows), max(ts(r[0]) for r in rows)
    return {
        "launch_to_first_checkout_s": first - launched,
        "task_span_s": last - first,
        "last_task_to_exit_s": launched + run.measured.wall_s - last,
        "agent_median_s": statistics.median(r[1] for r in rows),
        "commit_median_s": statistics.median(ts(r[4]) - ts(r[3]) for r in rows),
        "push_median_s": statistics.median(ts(r[0]) - ts(r[4]) for r in rows),
    }


def side(measured: Measured) -> dict[str, Any]:
    everything, _ = measured.samples.peak()
    orchestration, _ = measured.samples.peak(set(CATEGORY_ORDER) - set(AGENT_CATEGORIES))
    return {
        "wall_s": round(measured.wall_s, 2),
        "cpu_s": round(measured.samples.cpu_s(), 2),
        "peak_rss_mb": round(everything.rss / 2**20),
        "peak_pss_mb": round(everything.pss / 2**20),
        "peak_uss_mb": round(everything.uss / 2**20),
        "peak_processes": everything.count,
        "peak_rss_without_agents_mb": round(orchestration.rss / 2**20),
        "peak_pss_without_agents_mb": round(orchestration.pss / 2**20),
        "samples": len(measured.samples.items),
        "mean_sample_interval_s": round(measured.samples.mean_interval_s(), 3),
        "sampler_cpu_s": round(measured.samples.sampler_cpu_s, 2),
    }


def report(args: argparse.Namespace, figures: dict[str, Any], ado: Measured) -> None:
    rows = [
        [
            name,
            f"{s['wall_s']:.2f}",
            f"{s['cpu_s']:.1f}",
            s["peak_rss_mb"],
            s["peak_pss_mb"],
            s["peak_uss_mb"],
            s["peak_processes"],
        ]
        for name, s in figures["sides"].items()
    ]
    print(
        f"ado-ray overhead: {args.repos} repositories, agent sleeps {args.sleep:g} s, "
        f"--parallel {args.parallel}\n"
    )
    headers = ["side", "wall s", "CPU s", "peak RSS MB", "PSS MB", "USS MB", "processes"]
    print(table(headers, rows))
    print()
    print(f"ratio (raw)               = {figures['ratio_raw']:.2f}")
    runs = ", ".join(f"{wall:.1f}" for wall in figures["fixed_startup_runs_s"])
    print(f"fixed start-up            = {figures['fixed_startup_s']:.1f} s (median of {runs})")
    print(
        f"ratio excluding start-up  = {figures['ratio_excluding_startup']:.2f} "
        f"(target <= {TARGET}: {'PASS' if figures['pass'] else 'FAIL'})"
    )
    ideal = -(-args.repos // args.parallel) * args.sleep
    print(f"agent time alone          = {ideal:.1f} s ({args.repos}/{args.parallel} waves)")
    phases = figures.get("ado_phases")
    if phases:
        print(
            f"ratio of ado's task span  = {figures['ratio_task_span']:.2f} "
            "(first checkout ready → last task done, from ado's store; no start-up in it)"
        )
        print(
            "\nado's wall time, from its store: launch → first checkout "
            f"{phases['launch_to_first_checkout_s']:.1f} s, task span "
            f"{phases['task_span_s']:.1f} s, last task → exit "
            f"{phases['last_task_to_exit_s']:.1f} s\nper task (median): agent "
            f"{phases['agent_median_s']:.2f} s, commit {phases['commit_median_s']:.2f} s, "
            f"push {phases['push_median_s']:.2f} s"
        )
    print("\nado batch's process tree: peaks per category and CPU")
    print(table(CATEGORY_HEADERS, category_rows(ado.samples, CATEGORY_ORDER)))
    sampler = sum(s["sampler_cpu_s"] for s in figures["sides"].values())
    every = figures["sides"]["ado batch"]["mean_sample_interval_s"]
    print(
        f"\n(ado's tree sampled every {every:.2f} s on average; "
        f"the sampler used {sampler:.1f} s of CPU in all)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_workdir(args.workdir, args.keep) as workdir:
        return bench(args, workdir)


def bench(args: argparse.Namespace, workdir: Path) -> int:
    log(f"making {args.repos} repositories in {workdir}")
    repos = make_repos(workdir / "repos", args.repos)
    startup_repos = make_repos(workdir / "startup-repos", 1, prefix="startup")
    agent = write_agent(workdir / "agent.sh", args.sleep)
    cmd = f"sh {shlex.quote(str(agent))}"

    startups: list[AdoRun] = []

    def startup_run() -> None:
        i = len(startups) + 1
        log(f"fixed start-up {i}/{args.startup_runs}: ado batch over 1 repository, agent `true`")
        startups.append(
            run_ado_batch(
                workdir,
                write_repo_list(workdir / f"startup-{i}.txt", startup_repos),
                startup_repos,
                name=f"startup-{i}",
                cmd="true",
                parallel=args.parallel,
                agent_marker=agent.name,
                expect="no_change",
            )
        )
        log(f"  {startups[-1].measured.wall_s:.1f} s")

    startup_run()  # one before the runs measured, the others after: the machine may be shared
    log(f"(a) ado batch over {args.repos} repositories")
    ado = run_ado_batch(
        workdir,
        write_repo_list(workdir / "repos.txt", repos),
        repos,
        name="bench",
        cmd=cmd,
        parallel=args.parallel,
        agent_marker=agent.name,
    )
    log(f"  {ado.measured.wall_s:.1f} s")
    log(f"(b) baseline: xargs -P {args.parallel} over task.sh")
    baseline = run_baseline(workdir, repos, agent, args.parallel)
    log(f"  {baseline.wall_s:.1f} s")
    while len(startups) < args.startup_runs:
        startup_run()

    problems = [f"start-up run: {p}" for run in startups for p in run.problems]
    problems += [f"ado: {p}" for p in ado.problems]
    if baseline.returncode != 0:
        problems.append(
            f"baseline: xargs exited {baseline.returncode}; its log:\n"
            f"{tail(workdir / 'baseline.log')}"
        )
    problems += [f"baseline: {p}" for p in branch_problems(repos, BASELINE_BRANCH)]
    for run in [*startups, ado]:
        if run.measured.leftovers:
            log(f"warning: {run.name} left processes running (killed): {run.measured.leftovers}")

    startup_walls = sorted(run.measured.wall_s for run in startups)
    fixed = statistics.median(startup_walls)
    startup = min(startups, key=lambda run: abs(run.measured.wall_s - fixed))
    figures: dict[str, Any] = {
        "repos": args.repos,
        "sleep_s": args.sleep,
        "parallel": args.parallel,
        "sides": {
            "ado batch": side(ado.measured),
            "xargs baseline": side(baseline),
            "ado start-up (1 repo)": side(startup.measured),
        },
        "ratio_raw": round(ado.measured.wall_s / baseline.wall_s, 3),
        "fixed_startup_s": round(fixed, 2),
        "fixed_startup_runs_s": [round(wall, 2) for wall in startup_walls],
        "ratio_excluding_startup": round((ado.measured.wall_s - fixed) / baseline.wall_s, 3),
        "problems": problems,
    }
    figures["pass"] = figures["ratio_excluding_startup"] <= TARGET
    if ado.summary.get("run_id") and not problems:
        try:
            phases = ado_phases(ado, workdir / "bench.db")
        except sqlite3.Error as exc:  # the store's schema is ado's; it may change
            log(f"note: no breakdown of ado's time; reading its store failed: {exc}")
        else:
            figures["ado_phases"] = {k: round(v, 3) for k, v in phases.items()}
            figures["ratio_task_span"] = round(phases["task_span_s"] / baseline.wall_s, 3)
    return finish(args.json, figures, lambda: report(args, figures, ado.measured), problems)


if __name__ == "__main__":
    sys.exit(main())
