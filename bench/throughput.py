#!/usr/bin/env python3
"""Per-task overhead of ado-ray: throughput against an `xargs -P` floor doing the same git work.

Two measurements, over local bare repositories of one commit (`make_bare_repos`):

1. **throughput**: `ado batch --dry-run --cmd true --parallel P` over N repositories
   (default 5,000) against the floor, `xargs -0 -P P` over a shell script that does per
   repository the git work of ado's dry run: `git clone --mirror` into a cache,
   `git clone --shared` a checkout from that mirror, the agent (`true`, as a program),
   `git status --porcelain` (must be empty), no commit, no push. It prints tasks/s of
   both, their ratio (target >= 0.8), the CPU each side's process tree used per task, and
   the CPU of ado's driver process per task (target < 5 ms).
2. **marginal**: the same with an agent that sleeps S seconds (default 1) over N and 2N
   repositories (default 60 and 120), `--rounds` times: the marginal wall ratio
   (ado(2N) - ado(N)) / (floor(2N) - floor(N)) per round and its median (target <= 1.05).
   Ray's start-up is in both of ado's runs, so it cancels.

Every run is checked: ado must exit 0 with every task `no_change` and a `prepared`
checkpoint at the repositories' commit; the floor must exit 0 with a clean checkout per
repository. If not, it says what is wrong and exits 1. A missed target prints FAIL.

    .venv/bin/python bench/throughput.py [--repos 5000] [--parallel 20] [--only throughput]
                                         [--marginal-repos 60] [--sleep 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import (  # bench/ is on sys.path: Python puts a script's directory there
    ADO,
    CATEGORY_HEADERS,
    CATEGORY_ORDER,
    Measured,
    add_common_args,
    bench_env,
    bench_workdir,
    category_rows,
    check_workdir,
    log,
    make_bare_repos,
    run_measured,
    table,
    tail,
    write_repo_list,
)

TARGET_RATIO = 0.8  # ado's tasks/s over the floor's, at least
TARGET_DRIVER_MS = 5.0  # CPU of ado's driver process per task, under
TARGET_MARGINAL = 1.05  # (ado(2N) - ado(N)) / (floor(2N) - floor(N)), at most
SAMPLE_S = 0.5  # the process-tree sampler's interval (it costs CPU on a small machine)
# ado's dry-run git work, as a plain script: $1 is the repository's path.
FLOOR_SH = """\
#!/bin/sh
set -eu
src=$1
name=${src##*/}
git clone --quiet --mirror "$src" "$BENCH_CACHE/$name"
git clone --quiet --shared "$BENCH_CACHE/$name" "$BENCH_WORK/$name"
cd "$BENCH_WORK/$name"
$BENCH_AGENT > "$BENCH_WORK/$name.agent.log" 2>&1
test -z "$(git status --porcelain)"
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=5000, help="throughput: repositories")
    parser.add_argument("--parallel", type=int, default=20, help="at once (default 20)")
    parser.add_argument(
        "--only", choices=("throughput", "marginal"), help="one measurement (default both)"
    )
    parser.add_argument(
        "--marginal-repos", type=int, default=60, help="marginal: N (and 2N), default 60"
    )
    parser.add_argument("--sleep", type=float, default=1.0, help="marginal: agent's sleep, s")
    parser.add_argument("--rounds", type=int, default=3, help="marginal: rounds (default 3)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if min(args.repos, args.parallel, args.marginal_repos, args.rounds) < 1 or args.sleep < 0:
        parser.error("counts must be at least 1 and --sleep at least 0")
    check_workdir(parser, args.workdir)
    return args


@dataclass
class Run:
    """One timed run of either side over `n` repositories, checked."""

    side: str  # "ado" or "floor"
    n: int
    measured: Measured
    problems: list[str]
    span_s: float | None = None  # ado: first checkout ready → last task done, from its store

    @property
    def tasks_per_s(self) -> float:
        return self.n / self.measured.wall_s

    def cpu_ms(self, categories: tuple[str, ...] | None = None) -> float:
        return self.measured.samples.cpu_s(categories) / self.n * 1000

    def driver_ms(self) -> float:
        own, _ = self.measured.samples.cpu_split(["driver"])
        return own / self.n * 1000


def run_ado(workdir: Path, name: str, repos: list[Path], sha: str, cmd: str, parallel: int) -> Run:
    """`ado batch --dry-run` over `repos`, with its own store, work root and local Ray."""
    repo_list = write_repo_list(workdir / f"{name}.txt", repos)
    state = workdir / f"{name}.db"
    argv = [*ADO, "batch", str(repo_list), "--name", name, "--cmd", cmd, "--dry-run"]
    argv += ["--parallel", str(parallel), "--json"]
    argv += ["--state", str(state), "--work-root", str(workdir / name)]
    measured = run_measured(
        argv,
        env=bench_env(workdir),
        cwd=workdir,
        stderr_path=workdir / f"{name}.log",
        agent_marker="\0",  # the agent is `true` or `sleep`: counted as "other"
        interval_s=SAMPLE_S,
    )
    problems = []
    if measured.returncode != 0:
        log_tail = tail(workdir / f"{name}.log")
        problems.append(f"{name}: ado batch exited {measured.returncode}; its log:\n{log_tail}")
    try:
        counts = json.loads(measured.stdout).get("counts", {})
    except json.JSONDecodeError:
        counts = {}
    if counts != {"no_change": len(repos)}:
        problems.append(f"{name}: task states {counts}; expected {{'no_change': {len(repos)}}}")
    span = None
    try:
        span, wrong = ado_store_check(state, sha)
    except (sqlite3.Error, ValueError) as exc:  # the store's schema is ado's; it may change
        problems.append(f"{name}: could not read its store {state}: {exc}")
    else:
        problems += [f"{name}: {p}" for p in wrong[:10]]
    return Run("ado", len(repos), measured, problems, span)


def ado_store_check(state: Path, sha: str) -> tuple[float, list[str]]:
    """From ado's store: the task span (first `prepared` checkpoint → last task's end),
    and every task that is not `no_change` with a `prepared` checkpoint at `sha`."""
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        rows = db.execute(
            """
            SELECT t.task_id, t.state, t.updated_at, p.data, p.created_at
            FROM tasks t LEFT JOIN checkpoints p ON p.task_id = t.task_id AND p.step = 'prepared'
            """
        ).fetchall()
    wrong = []
    for task_id, state_, _, data, _ in rows:
        base = json.loads(data).get("base_sha") if data else None
        if state_ != "no_change" or base != sha:
            wrong.append(f"task {task_id} is {state_} at {base}; expected no_change at {sha}")

    def ts(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    prepared = [ts(r[4]) for r in rows if r[4]]
    if not prepared:
        raise ValueError("no task has a prepared checkpoint")
    return max(ts(r[2]) for r in rows) - min(prepared), wrong


def run_floor(workdir: Path, name: str, repos: list[Path], agent: str, parallel: int) -> Run:
    """`xargs -P` over FLOOR_SH, with its own cache and work directories."""
    task = workdir / "floor.sh"
    task.write_text(FLOOR_SH)
    listing = workdir / f"{name}.nul"
    listing.write_bytes(b"".join(f"{repo}\0".encode() for repo in repos))
    cache, work = workdir / name / "cache", workdir / name / "work"
    cache.mkdir(parents=True)
    work.mkdir(parents=True)
    env = bench_env(workdir) | {
        "BENCH_CACHE": str(cache),
        "BENCH_WORK": str(work),
        "BENCH_AGENT": agent,
    }
    measured = run_measured(
        ["xargs", "-0", "-P", str(parallel), "-n", "1", "sh", str(task)],
        env=env,
        cwd=workdir,
        stderr_path=workdir / f"{name}.log",
        agent_marker="\0",
        stdin_path=listing,
        interval_s=SAMPLE_S,
    )
    problems = []
    if measured.returncode != 0:
        log_tail = tail(workdir / f"{name}.log")
        problems.append(f"{name}: xargs exited {measured.returncode}; its log:\n{log_tail}")
    missing = [repo.name for repo in repos if not (work / repo.name / ".git" / "HEAD").is_file()]
    if missing:
        problems.append(f"{name}: {len(missing)} checkouts missing, e.g. {missing[:3]}")
    return Run("floor", len(repos), measured, problems)


def cleanup(workdir: Path, name: str) -> None:
    """A run's work root (mirrors, checkouts): thousands of files the next run need not see."""
    shutil.rmtree(workdir / name, ignore_errors=True)


def throughput(args: argparse.Namespace, workdir: Path, repos: list[Path], sha: str) -> dict:
    chosen = repos[: args.repos]
    true = shutil.which("true") or "/bin/true"  # a program, as ado runs it; not the builtin
    log(f"throughput (a): ado batch --dry-run --cmd true over {len(chosen)} repositories")
    ado = run_ado(workdir, "tp-ado", chosen, sha, "true", args.parallel)
    log(f"  {ado.measured.wall_s:.1f} s")
    cleanup(workdir, "tp-ado")
    log(f"throughput (b): the floor, xargs -P {args.parallel} over floor.sh")
    floor = run_floor(workdir, "tp-floor", chosen, true, args.parallel)
    log(f"  {floor.measured.wall_s:.1f} s")
    cleanup(workdir, "tp-floor")
    ratio = ado.tasks_per_s / floor.tasks_per_s
    figures: dict[str, Any] = {
        "repos": len(chosen),
        "parallel": args.parallel,
        "ado": side(ado),
        "floor": side(floor),
        "ratio": round(ratio, 3),
        "ratio_pass": ratio >= TARGET_RATIO,
        "driver_cpu_ms_per_task": round(ado.driver_ms(), 2),
        "driver_pass": ado.driver_ms() < TARGET_DRIVER_MS,
        "problems": ado.problems + floor.problems,
    }
    if ado.span_s:
        figures["ado"]["task_span_s"] = round(ado.span_s, 2)
        figures["ado"]["tasks_per_s_in_span"] = round(ado.n / ado.span_s, 1)
        figures["span_ratio"] = round(ado.n / ado.span_s / floor.tasks_per_s, 3)
    figures["_runs"] = (ado, floor)
    return figures


def side(run: Run) -> dict[str, Any]:
    return {
        "wall_s": round(run.measured.wall_s, 2),
        "tasks_per_s": round(run.tasks_per_s, 1),
        "cpu_s": round(run.measured.samples.cpu_s(), 1),
        "cpu_ms_per_task": round(run.cpu_ms(), 1),
    }


def marginal(args: argparse.Namespace, workdir: Path, repos: list[Path], sha: str) -> dict:
    n = args.marginal_repos
    sleep = shutil.which("sleep") or "/bin/sleep"
    agent = f"{sleep} {args.sleep:g}"
    rounds, problems = [], []
    for r in range(1, args.rounds + 1):
        walls: dict[str, float] = {}
        for count in (n, 2 * n):
            for which in ("ado", "floor"):  # interleaved: the machine's load drifts
                name = f"m{r}-{which}-{count}"
                log(f"marginal round {r}/{args.rounds}: {which} over {count} repositories")
                if which == "ado":
                    run = run_ado(workdir, name, repos[:count], sha, agent, args.parallel)
                else:
                    run = run_floor(workdir, name, repos[:count], agent, args.parallel)
                cleanup(workdir, name)
                log(f"  {run.measured.wall_s:.2f} s")
                problems += run.problems
                walls[f"{which}_{count}"] = run.measured.wall_s
        ado_d = walls[f"ado_{2 * n}"] - walls[f"ado_{n}"]
        floor_d = walls[f"floor_{2 * n}"] - walls[f"floor_{n}"]
        ratio = ado_d / floor_d if floor_d > 0 else float("inf")
        rounds.append({**{k: round(v, 2) for k, v in walls.items()}, "ratio": round(ratio, 3)})
    median = statistics.median(r["ratio"] for r in rounds)
    return {
        "n": n,
        "sleep_s": args.sleep,
        "parallel": args.parallel,
        "rounds": rounds,
        "median_ratio": round(median, 3),
        "pass": median <= TARGET_MARGINAL,
        "problems": problems,
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(tp: dict | None, mg: dict | None, load: tuple[float, float]) -> None:
    cpus = os.cpu_count()
    print(f"load average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f}; {cpus} CPUs")
    if tp is not None:
        ado, floor = tp["_runs"]
        print(
            f"\nthroughput: {tp['repos']} repositories, agent `true`, --dry-run, "
            f"--parallel {tp['parallel']}\n"
        )
        rows = [
            [name, f"{s['wall_s']:.1f}", f"{s['tasks_per_s']:.1f}", f"{s['cpu_s']:.1f}",
             f"{s['cpu_ms_per_task']:.1f}"]
            for name, s in (("ado batch", tp["ado"]), ("xargs floor", tp["floor"]))
        ]  # fmt: skip
        print(table(["side", "wall s", "tasks/s", "CPU s", "CPU ms/task"], rows))
        print(
            f"\nthroughput ratio      = {tp['ratio']:.3f} (ado / floor; target >= {TARGET_RATIO}: "
            f"{verdict(tp['ratio_pass'])})"
        )
        if "span_ratio" in tp:
            print(
                f"in ado's task span    = {tp['ado']['tasks_per_s_in_span']:.1f} tasks/s over "
                f"{tp['ado']['task_span_s']:.1f} s (first checkout ready → last task done, "
                f"from its store; no Ray start-up): {tp['span_ratio']:.3f} of the floor"
            )
        print(
            f"driver CPU per task   = {tp['driver_cpu_ms_per_task']:.2f} ms (the `ado` process "
            f"itself, start-up included; target < {TARGET_DRIVER_MS:g}: "
            f"{verdict(tp['driver_pass'])})"
        )
        print("\nado batch's process tree: peaks per category and CPU")
        print(table(CATEGORY_HEADERS, category_rows(ado.measured.samples, CATEGORY_ORDER)))
        print("\nthe floor's process tree")
        print(table(CATEGORY_HEADERS, category_rows(floor.measured.samples, CATEGORY_ORDER)))
    if mg is not None:
        n = mg["n"]
        print(
            f"\nmarginal wall ratio: {n} → {2 * n} repositories, agent sleeps {mg['sleep_s']:g} s, "
            f"--dry-run, --parallel {mg['parallel']}\n"
        )
        headers = ["round", f"ado {n} s", f"ado {2 * n} s", f"floor {n} s", f"floor {2 * n} s"]
        rows = [
            [i, r[f"ado_{n}"], r[f"ado_{2 * n}"], r[f"floor_{n}"], r[f"floor_{2 * n}"],
             f"{r['ratio']:.3f}"]
            for i, r in enumerate(mg["rounds"], start=1)
        ]  # fmt: skip
        print(table([*headers, "ratio"], rows))
        print(
            f"\nmedian marginal ratio = {mg['median_ratio']:.3f} ((ado(2N) - ado(N)) / "
            f"(floor(2N) - floor(N)); target <= {TARGET_MARGINAL}: {verdict(mg['pass'])})"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_workdir(args.workdir, args.keep) as workdir:
        return bench(args, workdir)


def bench(args: argparse.Namespace, workdir: Path) -> int:
    load_start = os.getloadavg()[0]
    count = max(
        args.repos if args.only != "marginal" else 0,
        2 * args.marginal_repos if args.only != "throughput" else 0,
    )
    log(f"making {count} bare repositories in {workdir}")
    repos, sha = make_bare_repos(workdir / "repos", count)
    tp = throughput(args, workdir, repos, sha) if args.only != "marginal" else None
    mg = marginal(args, workdir, repos, sha) if args.only != "throughput" else None
    problems = [*(tp or {}).get("problems", []), *(mg or {}).get("problems", [])]
    load = (load_start, os.getloadavg()[0])
    if args.json:
        out: dict[str, Any] = {"load_start": load[0], "load_end": load[1]}
        if tp is not None:
            out["throughput"] = {k: v for k, v in tp.items() if not k.startswith("_")}
        if mg is not None:
            out["marginal"] = mg
        print(json.dumps(out, indent=2))
    else:
        report(tp, mg, load)
    for run in (tp or {}).get("_runs", ()):
        if run.measured.leftovers:
            log(f"warning: a run left processes running (killed): {run.measured.leftovers}")
    if problems:
        log("\nTHE WORK FAILED, so these figures do not count:\n" + "\n".join(problems[:20]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
