#!/usr/bin/env python3
"""What a one-repository run costs on top of starting Ray, and how fast one that attaches is.

In one invocation, over one local repository with the agent `true` (`--cmd true`: the
`command` agent running `true` in the checkout, so the task ends `no_change`):

1. N rounds, alternating (the machine may be shared), of
   (a) bare Ray: `python -c "import ray; ray.init(...); ray.shutdown()"` with the options
       and environment ado uses for a local instance (engine/backends.py `init_ray`), and
   (b) `ado batch` of the one-repository list, `--json`, starting its own local Ray;
   the medians give `ratio b/a` (target <= 1.1).
2. A local Ray head kept up the way a user gets one: `ado batch --keep-ray` once (untimed:
   it starts the head in WORKDIR/.ado/ray), then N rounds of (c) `ado batch --keep-ray`,
   which attaches to it: median wall (target <= 1.5 s). `ado dashboard --stop` ends it.

Every ado run has `ADO_TRACE_STARTUP=1`, so it prints where its time went (ado_ray/trace.py);
the medians of those stages are printed too. Checked: every command exits 0, every ado run
ends with its one task `no_change`, the attached runs say they joined the kept instance,
no run leaves a process behind, and the kept head is gone at the end; if not, it says what
is wrong and exits 1. A missed target is printed as FAIL, not an error.

    .venv/bin/python bench/startup.py [--rounds 5] [--workdir DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import (  # bench/ is on sys.path: Python puts a script's directory there
    ADO,
    Measured,
    add_common_args,
    bench_env,
    bench_workdir,
    check_workdir,
    finish,
    log,
    make_repos,
    run_measured,
    table,
    tail,
    write_repo_list,
)

RATIO_TARGET = 1.1
ATTACHED_TARGET_S = 1.5
# What `init_ray` does for a local instance (RAY_AUTH_MODE=token is set in the environment).
BARE = (
    "import logging, ray; "
    "ray.init(num_cpus=None, include_dashboard=False, namespace='ado', "
    "log_to_driver=False, logging_level=logging.WARNING); ray.shutdown()"
)
JOINED = "(local Ray kept up, joined)"
# (name, from trace mark, to trace mark); "launch" and "exit" are the process's own.
STAGES = [
    ("imports, config", "launch", "config resolved"),
    ("plan, store", "config resolved", "services answer"),
    ("ray.init", "ray.init begun", "ray.init done"),
    ("waiting for Ray", "services answer", "ray.init done"),
    ("actors ready", "ray.init done", "runner ready"),
    ("first task", "task handed", "task back"),
    ("results out", "task back", "results printed"),
    ("teardown", "results printed", "exit"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each (default 5)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    check_workdir(parser, args.workdir)
    return args


def ado_env(workdir: Path) -> dict[str, str]:
    return bench_env(workdir) | {"ADO_TRACE_STARTUP": "1"}


def bare_ray(workdir: Path, i: int) -> tuple[Measured, list[str]]:
    env = bench_env(workdir) | {"RAY_AUTH_MODE": "token"}
    log_path = workdir / f"bare-{i}.log"
    measured = run_measured(
        [sys.executable, "-c", BARE],
        env=env,
        cwd=workdir,
        stderr_path=log_path,
        agent_marker="\0",
    )
    problems = []
    if measured.returncode != 0:
        problems.append(f"bare ray exited {measured.returncode}; its log:\n{tail(log_path)}")
    if measured.leftovers:
        problems.append(f"bare ray left processes running: {measured.leftovers}")
    return measured, problems


def ado_batch(
    workdir: Path, repo_list: Path, name: str, extra: list[str], joined: bool
) -> tuple[Measured, list[str], dict[str, float]]:
    """`ado batch` of the one-repository list, measured and checked; its trace's marks."""
    argv = [*ADO, "batch", str(repo_list), "--name", name, "--cmd", "true", "--json"]
    argv += ["--state", str(workdir / f"{name}.db"), "--work-root", str(workdir / name)]
    log_path = workdir / f"{name}.log"
    measured = run_measured(
        [*argv, *extra],
        env=ado_env(workdir),
        cwd=workdir,
        stderr_path=log_path,
        agent_marker="\0",
    )
    problems = []
    try:
        counts = json.loads(measured.stdout).get("counts")
    except json.JSONDecodeError:
        counts = None
        problems.append(f"{name}: stdout is not one JSON object: {measured.stdout[:200]!r}")
    if measured.returncode != 0:
        problems.append(f"{name}: exited {measured.returncode}; its log:\n{tail(log_path)}")
    if counts is not None and counts != {"no_change": 1}:
        problems.append(f"{name}: task states {counts}; expected {{'no_change': 1}}")
    stderr = log_path.read_text(errors="replace")
    if joined and JOINED not in stderr:
        problems.append(f"{name}: did not join the kept instance; its log:\n{tail(log_path)}")
    if measured.leftovers:
        problems.append(f"{name}: left processes running: {measured.leftovers}")
    return measured, problems, marks(stderr, measured)


def marks(stderr: str, measured: Measured) -> dict[str, float]:
    """Trace mark → seconds since launch (the first of each; tasks by kind)."""
    found = {"launch": 0.0, "exit": measured.wall_s}
    for line in stderr.splitlines():
        parts = line.split(" ", 4)
        if len(parts) < 5 or parts[0] != "ado-trace":
            continue
        what = parts[4]
        if what.startswith("task "):
            what = "task handed" if " handed to " in what else "task back"
        found.setdefault(what, float(parts[1]) - measured.started_at)
    return found


def stage_medians(runs: list[dict[str, float]]) -> dict[str, float | None]:
    result: dict[str, float | None] = {}
    for name, start, end in STAGES:
        spans = [m[end] - m[start] for m in runs if start in m and end in m]
        result[name] = round(statistics.median(spans), 3) if spans else None
    return result


def stop_kept(workdir: Path) -> list[str]:
    """`ado dashboard --stop` in `workdir`; what is wrong if the head did not go."""
    stop = subprocess.run(
        [*ADO, "dashboard", "--stop"],
        cwd=workdir,
        env=bench_env(workdir),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if stop.returncode != 0 or "stopped the local Ray instance" not in stop.stdout:
        return [f"ado dashboard --stop: exit {stop.returncode}: {stop.stdout}{stop.stderr}"]
    return []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_workdir(args.workdir, args.keep) as workdir:
        return bench(args, workdir)


def bench(args: argparse.Namespace, workdir: Path) -> int:
    repos = make_repos(workdir / "repos", 1, prefix="startup")
    repo_list = write_repo_list(workdir / "repos.txt", repos)
    load_before = os.getloadavg()
    problems: list[str] = []
    bare: list[float] = []
    fresh: list[float] = []
    fresh_marks: list[dict[str, float]] = []
    for i in range(1, args.rounds + 1):
        log(f"round {i}/{args.rounds}: (a) bare ray.init + ray.shutdown")
        measured, found = bare_ray(workdir, i)
        bare.append(measured.wall_s)
        problems += found
        log(f"  {measured.wall_s:.2f} s; (b) ado batch, 1 repository, --cmd true")
        measured, found, seen = ado_batch(workdir, repo_list, f"fresh-{i}", [], joined=False)
        fresh.append(measured.wall_s)
        fresh_marks.append(seen)
        problems += found
        log(f"  {measured.wall_s:.2f} s")

    log("starting a kept local head: ado batch --keep-ray (untimed)")
    first_argv = [*ADO, "batch", str(repo_list), "--cmd", "true", "--keep-ray", "--json"]
    first = subprocess.run(
        [*first_argv, "--state", str(workdir / "first.db"), "--work-root", str(workdir / "first")],
        cwd=workdir,
        env=bench_env(workdir),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    attached: list[float] = []
    attached_marks: list[dict[str, float]] = []
    try:
        if first.returncode != 0:
            problems.append(f"ado batch --keep-ray (starting the head): {first.stderr[-2000:]}")
        else:
            for i in range(1, args.rounds + 1):
                log(f"round {i}/{args.rounds}: (c) ado batch --keep-ray, attached")
                measured, found, seen = ado_batch(
                    workdir, repo_list, f"attached-{i}", ["--keep-ray"], joined=True
                )
                attached.append(measured.wall_s)
                attached_marks.append(seen)
                problems += found
                log(f"  {measured.wall_s:.2f} s")
    finally:
        problems += stop_kept(workdir)
    load_after = os.getloadavg()

    ratio = statistics.median(fresh) / statistics.median(bare)
    attached_s = statistics.median(attached) if attached else None
    figures: dict[str, Any] = {
        "rounds": args.rounds,
        "bare_ray_s": [round(x, 2) for x in bare],
        "ado_fresh_s": [round(x, 2) for x in fresh],
        "ado_attached_s": [round(x, 2) for x in attached],
        "bare_ray_median_s": round(statistics.median(bare), 2),
        "ado_fresh_median_s": round(statistics.median(fresh), 2),
        "ado_attached_median_s": None if attached_s is None else round(attached_s, 2),
        "ratio": round(ratio, 3),
        "ratio_pass": ratio <= RATIO_TARGET,
        "attached_pass": attached_s is not None and attached_s <= ATTACHED_TARGET_S,
        "stages_fresh_s": stage_medians(fresh_marks),
        "stages_attached_s": stage_medians(attached_marks),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "problems": problems,
    }
    return finish(args.json, figures, lambda: report(figures), problems)


def report(figures: dict[str, Any]) -> None:
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    load = ", ".join(f"{x:.2f}" for x in figures["load_before"])
    print(
        f"ado-ray start-up: 1 repository, --cmd true, {figures['rounds']} rounds; "
        f"{figures['cpus']} CPUs, load {load} before\n"
    )
    sides = [
        ("(a) bare ray.init + shutdown", "bare_ray"),
        ("(b) ado batch, own Ray", "ado_fresh"),
        ("(c) ado batch --keep-ray, attached", "ado_attached"),
    ]
    rows = [
        [name, _fmt(figures[f"{key}_median_s"]), " ".join(f"{x:.2f}" for x in figures[f"{key}_s"])]
        for name, key in sides
    ]
    print(table(["side", "median s", "rounds s"], rows))
    print()
    print(
        f"ratio b/a        = {figures['ratio']:.2f} "
        f"(target <= {RATIO_TARGET}: {verdict(figures['ratio_pass'])})"
    )
    attached = figures["ado_attached_median_s"]
    shown = "-" if attached is None else f"{attached:.2f} s"
    print(
        f"attached (c)     = {shown} (target <= {ATTACHED_TARGET_S} s: "
        f"{verdict(figures['attached_pass'])})"
    )
    print("\nwhere ado's time went (medians, s, from ADO_TRACE_STARTUP marks):")
    stage_rows = [
        [name, _fmt(figures["stages_fresh_s"][name]), _fmt(figures["stages_attached_s"][name])]
        for name, _, _ in STAGES
    ]
    print(table(["stage", "(b) own Ray", "(c) attached"], stage_rows))
    print(
        "\n(ray.init runs in a thread of its own from `config resolved` on, so `plan, store` "
        "is inside it; `waiting for Ray` is what the driver had left to wait)"
    )
    after = ", ".join(f"{x:.2f}" for x in figures["load_after"])
    print(f"load {after} after")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
