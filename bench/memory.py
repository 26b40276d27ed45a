#!/usr/bin/env python3
"""How much memory ado-ray's Ray side takes with many agents at once (target under 2 GB).

Runs `ado batch` over N local repositories (default 100) with `--parallel` N, the agent a
shell script that sleeps S seconds (default 5) and appends to one file, so every agent is
running at the same time. Every 0.25 s it samples the run's whole process tree and sums
the memory of Ray's processes (GCS server, raylet, the dashboard and runtime-env agents,
monitors, workers) and of the `ado` driver; the agents (`sh`, `sleep`) and git are counted
apart. It prints the peaks, how many Ray worker processes there were (`--parallel 100` is
a few runner actors, not a hundred Python workers) and `target < 2048 MB: PASS/FAIL` for
Ray's processes plus the driver; beside it, the same sum with ado's init per agent
(`engine/sandbox.py` under `unshare`, one pair of processes per running agent) counted in.
It exits 1 if a task did not end `changed`.

    .venv/bin/python bench/memory.py [--repos 100] [--parallel 100] [--sleep 5] [--json]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from _common import (  # bench/ is on sys.path: Python puts a script's directory there
    CATEGORY_HEADERS,
    CATEGORY_ORDER,
    RAY_CATEGORIES,
    Samples,
    add_common_args,
    bench_workdir,
    category_rows,
    check_workdir,
    finish,
    log,
    make_repos,
    run_ado_batch,
    table,
    write_agent,
    write_repo_list,
)

TARGET_MB = 2048
RAY_AND_DRIVER = (*RAY_CATEGORIES, "driver")
# ado's init between a runner and each agent (engine/sandbox.py, under `unshare`): a
# process of ado's, not the agent's, though one per agent; shown beside the target.
WITH_INITS = (*RAY_AND_DRIVER, "agent init")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=100, help="repositories (default 100)")
    parser.add_argument(
        "--parallel", type=int, help="agents at once (default: as many as repositories)"
    )
    parser.add_argument("--sleep", type=float, default=5.0, help="agent's sleep, s (default 5)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    args.parallel = args.parallel or args.repos
    if min(args.repos, args.parallel) < 1 or args.sleep < 0:
        parser.error("--repos and --parallel must be at least 1, --sleep at least 0")
    check_workdir(parser, args.workdir)
    return args


def figures(args: argparse.Namespace, samples: Samples, wall_s: float) -> dict[str, Any]:
    def peak(categories: tuple[str, ...]) -> dict[str, Any]:
        usage, at_s = samples.peak(categories)
        return {
            "processes": usage.count,
            "rss_mb": round(usage.rss / 2**20),
            "pss_mb": round(usage.pss / 2**20),
            "uss_mb": round(usage.uss / 2**20),
            "rss_peak_at_s": round(at_s, 1),
        }

    busiest = samples.peak_workers()
    ray_and_driver = peak(RAY_AND_DRIVER)
    return {
        "repos": args.repos,
        "parallel": args.parallel,
        "sleep_s": args.sleep,
        "wall_s": round(wall_s, 2),
        "cpu_s": round(samples.cpu_s(), 2),
        "ray": peak(RAY_CATEGORIES),
        "driver": peak(("driver",)),
        "ray_and_driver": ray_and_driver,
        "agent_inits": peak(("agent init",)),
        "ray_driver_and_inits": peak(WITH_INITS),
        "agents_at_once": samples.peak(("agent",))[0].count,
        "ray_workers": dict(busiest.worker_titles) if busiest else {},
        "target_mb": TARGET_MB,
        "pass": ray_and_driver["rss_mb"] < TARGET_MB,
        "samples": len(samples.items),
        "mean_sample_interval_s": round(samples.mean_interval_s(), 3),
        "sampler_cpu_s": round(samples.sampler_cpu_s, 2),
    }


def report(result: dict[str, Any], samples: Samples) -> None:
    print(
        f"ado-ray memory: {result['repos']} repositories, --parallel {result['parallel']}, "
        f"agent sleeps {result['sleep_s']:g} s; wall {result['wall_s']:.1f} s, "
        f"CPU {result['cpu_s']:.1f} s\n"
    )
    print("peaks per category (each figure's own peak) and CPU:")
    print(table(CATEGORY_HEADERS, category_rows(samples, CATEGORY_ORDER)))
    fields = ("processes", "rss_mb", "pss_mb", "uss_mb")
    rows = [
        [label, *(result[key][field] for field in fields)]
        for label, key in (
            ("Ray's processes", "ray"),
            ("ado driver", "driver"),
            ("Ray + driver", "ray_and_driver"),
            ("agent inits", "agent_inits"),
            ("Ray + driver + inits", "ray_driver_and_inits"),
        )
    ]
    print("\npeak sums (MB):")
    print(table(["", *CATEGORY_HEADERS[1:5]], rows))
    workers = ", ".join(f"{title} x{n}" for title, n in sorted(result["ray_workers"].items()))
    count = sum(result["ray_workers"].values())
    print(
        f"\nRay worker processes: {count} ({workers}) "
        f"for {result['agents_at_once']} agents running at once"
    )
    verdict = "PASS" if result["pass"] else "FAIL"
    print(
        f"target < {TARGET_MB} MB (RSS of Ray + driver): "
        f"{result['ray_and_driver']['rss_mb']} MB: {verdict}"
    )
    inits = result["ray_driver_and_inits"]
    print(
        f"with ado's {result['agent_inits']['processes']} agent-init processes (sandbox.py, "
        f"unshare) counted too: {inits['rss_mb']} MB RSS, {inits['pss_mb']} MB PSS"
    )
    print(
        f"\n({result['samples']} samples, every {result['mean_sample_interval_s']:.2f} s; "
        f"the sampler used {result['sampler_cpu_s']:.1f} s of CPU)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_workdir(args.workdir, args.keep) as workdir:
        return bench(args, workdir)


def bench(args: argparse.Namespace, workdir: Path) -> int:
    log(f"making {args.repos} repositories in {workdir}")
    repos = make_repos(workdir / "repos", args.repos)
    agent = write_agent(workdir / "agent.sh", args.sleep)
    log(f"ado batch over {args.repos} repositories, --parallel {args.parallel}")
    run = run_ado_batch(
        workdir,
        write_repo_list(workdir / "repos.txt", repos),
        repos,
        name="memory",
        cmd=f"sh {shlex.quote(str(agent))}",
        parallel=args.parallel,
        agent_marker=agent.name,
    )
    log(f"  {run.measured.wall_s:.1f} s")
    if run.measured.leftovers:
        log(f"warning: ado left processes running (killed): {run.measured.leftovers}")
    result = figures(args, run.measured.samples, run.measured.wall_s)
    result["problems"] = run.problems
    return finish(args.json, result, lambda: report(result, run.measured.samples), run.problems)


if __name__ == "__main__":
    sys.exit(main())
