"""The driver's memory and `ado status`'s time with a very long repository list.

For each size N (`--sizes 20000,100000`) a list of N repositories is generated: ten real
local repositories (one commit each, copied from one template) spread through the list,
and N - 10 `https://git.invalid/scale/rNNNNNN` URLs, which the parser accepts and nothing
clones (`.invalid` never resolves). Each command below runs as a subprocess with its own
state store; its peak RSS is the kernel's `ru_maxrss` from `wait4`, taken by a small
launcher (`python -S`, ~10 MB) that spawns the command: a process started straight from
this one would carry this process's own peak into its `ru_maxrss` (Linux records the
pre-`exec` memory's high-water mark too). It is the command's own peak, or a waited-for
child's if larger (the `git` a `--no-ray` run starts is far smaller).

1. floor: `python -c 'import ado_ray.cli, ado_ray.api'`, the interpreter and ado's imports;
2. `ado batch LIST --plan`: parse and check the list, print it;
3. `ado batch LIST --no-ray ...` with `ADO_TEST_CRASH_AFTER=planned`: the run and its N
   tasks are created and the driver has planned the run (lease, tokens, cost so far, its
   first tasks), then it kills itself (SIGKILL) before starting its backend;
4. `ado resume RUN` the same way: the resume's planning (the dead driver's lease on this
   host is taken over at once);
5. (not measured) the bench writes the URL tasks' lives into the store, as runners would
   have: `preparing`, `running`, `collecting`, then `changed` (90%), `no_change` (5%) or
   `failed` (5%), with checkpoints (`prepared`, `agent_done` with a summary, `committed`
   with a diffstat) and one agent session each;
6. `ado resume RUN --no-ray --json`: a real run of the ten local tasks to the end (the
   agent appends a line to a file), whose driver streams the N tasks, shows progress and
   prints the summary of all N as JSON;
7. `ado status RUN`, `ado status RUN --json`, `ado report RUN` as Markdown, JSON and
   HTML, and `ado runs`.

Targets: every command's peak RSS < 300 MB, and `ado status` of the run < 2 s.

    .venv/bin/python bench/scale.py [--sizes 20000,100000] [--postgres]
                                    [--workdir DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (  # bench/ is on sys.path: Python puts a script's directory there
    ADO,
    add_common_args,
    bench_env,
    bench_workdir,
    check_workdir,
    log,
    make_repos,
    table,
    tail,
    write_agent,
)

from ado_ray.models import CheckpointEvent, Event, SessionEvent, Step, TaskState, TaskUpdate
from ado_ray.store import Store, open_store

RSS_TARGET_MB = 300
STATUS_TARGET_S = 2.0
LOCAL_REPOS = 10
FILL_BATCH = 5_000  # events per store.apply while filling


@dataclass
class Step_:
    name: str
    argv: list[str]
    wall_s: float
    rss_mb: float
    returncode: int
    out_bytes: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="20000,100000", help="repositories per list (default 20000,100000)"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="state in a private PostgreSQL, not SQLite"
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    check_workdir(parser, args.workdir)
    try:
        args.sizes = [int(size) for size in args.sizes.split(",") if size]
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: expected numbers separated by commas")
    if any(size <= LOCAL_REPOS for size in args.sizes):
        parser.error(f"--sizes: each must be more than {LOCAL_REPOS}")
    return args


# argv: RESULT_FILE PROGRAM ARGS...; writes "ru_maxrss_kb exit_code" to RESULT_FILE
LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def measure(name: str, argv: Sequence[str], env: dict[str, str], cwd: Path) -> Step_:
    """Run `argv` to its end; its wall time and peak RSS (wait4's ru_maxrss)."""
    out_path, err_path, result = cwd / f"{name}.out", cwd / f"{name}.log", cwd / f"{name}.rss"
    launcher = [sys.executable, "-S", "-c", LAUNCHER, str(result)]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.monotonic()
        subprocess.run([*launcher, *argv], cwd=cwd, env=env, stdout=out, stderr=err, check=True)
        wall_s = time.monotonic() - start
    rss_kb, returncode = (int(word) for word in result.read_text().split())
    return Step_(name, list(argv), wall_s, rss_kb / 1024, returncode, out_path.stat().st_size)


def write_list(path: Path, size: int, local: Sequence[Path]) -> list[int]:
    """N lines: the local repositories at evenly spread lines, URLs elsewhere; their seqs."""
    every = size // len(local)
    at = {i * every + every // 2: repo for i, repo in enumerate(local)}
    with open(path, "w") as out:
        for i in range(size):
            repo = at.get(i)
            out.write(f"{repo}\n" if repo else f"https://git.invalid/scale/r{i:06d}\n")
    return sorted(seq + 1 for seq in at)


def lives(task_ids: Sequence[str]) -> Iterator[Event]:
    """What runners would have written for these tasks, ending changed, no_change or failed."""
    rng = random.Random(7)
    for n, task_id in enumerate(task_ids):
        sha = f"{n:040x}"
        yield TaskUpdate(task_id, TaskState.PREPARING, lease_owner="bench:1:runner-0")
        yield CheckpointEvent(task_id, Step.PREPARED, {"base_sha": sha})
        yield TaskUpdate(task_id, TaskState.RUNNING, attempt=1, base_sha=sha)
        usage = {"provider": "anthropic", "mode": "api", "cost_usd": 0.01, "input_tokens": 900}
        yield SessionEvent(task_id, 1, "command", None, 0, 2.5, f"/logs/{task_id}.log", usage, "ok")
        summary = "Changed the file as asked; nothing else needed. " * 3
        yield CheckpointEvent(task_id, Step.AGENT_DONE, {"exit_code": 0, "summary": summary})
        roll = rng.random()
        if roll < 0.05:
            yield TaskUpdate(task_id, TaskState.FAILED, error="agent exited 1", failure_class=None)
            continue
        yield TaskUpdate(task_id, TaskState.COLLECTING)
        if roll < 0.10:
            yield CheckpointEvent(task_id, Step.COMMITTED, {"commit_sha": None})
            yield TaskUpdate(task_id, TaskState.NO_CHANGE)
            continue
        stat = {"files": 1, "insertions": 3, "deletions": 1}
        yield CheckpointEvent(
            task_id, Step.COMMITTED, {"branch": "ado/scale", "commit_sha": sha, "diffstat": stat}
        )
        yield TaskUpdate(task_id, TaskState.CHANGED, branch="ado/scale", commit_sha=sha)


def fill(url: str, run_id: str, size: int, local_seqs: Sequence[int]) -> float:
    """Write the URL tasks' lives into the store; the seconds it took."""
    start = time.monotonic()
    store: Store = open_store(url)
    try:
        local = set(local_seqs)
        ids = [f"{run_id}-{seq:05d}" for seq in range(1, size + 1) if seq not in local]
        batch: list[Event] = []
        for event in lives(ids):
            batch.append(event)
            if len(batch) >= FILL_BATCH:
                store.apply(batch)
                batch = []
        if batch:
            store.apply(batch)
    finally:
        store.close()
    return time.monotonic() - start


def run_id_of(state: str) -> str:
    store = open_store(state)
    try:
        runs = store.list_runs(1)
        return runs[0].run_id if runs else ""
    finally:
        store.close()


def bench_size(size: int, workdir: Path, state: str, local: Sequence[Path], agent: Path) -> dict:
    here = workdir / f"n{size}"
    here.mkdir()
    repo_list = here / "repos.txt"
    local_seqs = write_list(repo_list, size, local)
    env = bench_env(workdir)
    # Bytecode cached under the workdir, as an installed ado-ray has it (this environment
    # may say PYTHONDONTWRITEBYTECODE, which makes every command compile ado-ray anew).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    crash = {**env, "ADO_TEST_CRASH_AFTER": "planned"}
    store_args = ["--state", state]
    run_args = [*store_args, "--no-ray", "--work-root", str(here / "work")]
    steps: list[Step_] = []
    problems: list[str] = []

    def step(name: str, argv: Sequence[str], expect: int = 0, env_: dict | None = None) -> Step_:
        log(f"  {name}: {shlex.join(argv[len(ADO) :]) if argv[: len(ADO)] == ADO else ''}")
        done = measure(name, argv, env_ or env, here)
        log(f"    {done.wall_s:.2f} s, {done.rss_mb:.0f} MB, exit {done.returncode}")
        if done.returncode != expect:
            problems.append(
                f"{name} exited {done.returncode}, expected {expect}; its log:\n"
                f"{tail(here / f'{name}.log')}"
            )
        steps.append(done)
        return done

    warm = [*ADO, "runs", "--state", str(here / "warm-up.db")]  # fills the bytecode cache
    subprocess.run(warm, cwd=here, env=env, capture_output=True, check=False)
    step(
        "floor (python -c 'import ado_ray.cli, ado_ray.api')",
        [sys.executable, "-c", "import ado_ray.cli, ado_ray.api"],
    )
    cmd = f"sh {shlex.quote(str(agent))}"
    step("ado batch --plan", [*ADO, "batch", str(repo_list), "--plan", "--cmd", cmd])
    batch = [*ADO, "batch", str(repo_list), "--name", "scale", "--cmd", cmd, *run_args]
    step("ado batch: planning", batch, -signal.SIGKILL, crash)
    run_id = run_id_of(state)
    if not run_id:
        problems.append("ado batch created no run")
        return {"size": size, "steps": [vars(s) for s in steps], "problems": problems}
    step("ado resume: planning", [*ADO, "resume", run_id, *run_args], -signal.SIGKILL, crash)
    log(f"  filling the store: {size - len(local_seqs)} tasks' lives")
    fill_s = fill(state, run_id, size, local_seqs)
    log(f"    {fill_s:.1f} s")
    # exit 1: the filled-in lives include failed tasks
    resumed = step(
        "ado resume --json: to the end", [*ADO, "resume", run_id, *run_args, "--json"], 1
    )
    try:
        summary = json.loads((here / f"{resumed.name}.out").read_text() or "{}")
    except json.JSONDecodeError as exc:
        summary = {}
        problems.append(f"ado resume --json printed no JSON object: {exc}")
    if summary and len(summary.get("tasks", [])) != size:
        problems.append(f"the summary lists {len(summary.get('tasks', []))} tasks, not {size}")
    if summary:
        by_seq = {int(t["task_id"].rsplit("-", 1)[1]): t["state"] for t in summary["tasks"]}
        wrong = [seq for seq in local_seqs if by_seq.get(seq) != "changed"]
        if wrong:
            problems.append(f"local tasks {wrong} did not end changed")
    del summary
    step("ado status", [*ADO, "status", run_id, *store_args])
    step("ado status --json", [*ADO, "status", run_id, "--json", *store_args])
    for fmt in ("md", "json", "html"):
        step(f"ado report --format {fmt}", [*ADO, "report", run_id, "--format", fmt, *store_args])
    step("ado runs", [*ADO, "runs", *store_args])
    return {
        "size": size,
        "run_id": run_id,
        "fill_s": round(fill_s, 1),
        "steps": [
            vars(s) | {"wall_s": round(s.wall_s, 2), "rss_mb": round(s.rss_mb)} for s in steps
        ],
        "problems": problems,
    }


def rounded(step: Step_) -> dict[str, Any]:
    return vars(step) | {"wall_s": round(step.wall_s, 2), "rss_mb": round(step.rss_mb)}


def verdicts(result: dict) -> dict[str, Any]:
    steps = result["steps"]
    ado = [s for s in steps if not s["name"].startswith("floor")]
    peak = max(ado, key=lambda s: s["rss_mb"]) if ado else None
    status = next((s for s in steps if s["name"] == "ado status"), None)
    return {
        "peak_rss_mb": peak["rss_mb"] if peak else None,
        "peak_rss_step": peak["name"] if peak else None,
        "rss_pass": peak is not None and peak["rss_mb"] < RSS_TARGET_MB,
        "status_s": status["wall_s"] if status else None,
        "status_pass": status is not None and status["wall_s"] < STATUS_TARGET_S,
    }


def show(results: list[dict], backend: str, load: str) -> None:
    for result in results:
        size = result["size"]
        floor = next(s for s in result["steps"] if s["name"].startswith("floor"))
        print(f"\nado-ray at scale: {size:,} repositories, state in {backend}; load {load}")
        rows = [
            [
                s["name"],
                f"{s['wall_s']:.2f}",
                f"{s['rss_mb']:.0f}",
                f"{s['rss_mb'] - floor['rss_mb']:+.0f}",
                f"{s['out_bytes'] / 1e6:.1f}",
            ]
            for s in result["steps"]
        ]
        print(table(["command", "wall s", "peak RSS MB", "over floor", "stdout MB"], rows))
        if "fill_s" in result:
            print(f"(filling the store with the tasks' lives, not measured: {result['fill_s']} s)")
        v = result["verdicts"]
        print(
            f"peak RSS of an ado command: {v['peak_rss_mb']} MB ({v['peak_rss_step']}); "
            f"target < {RSS_TARGET_MB} MB: {'PASS' if v['rss_pass'] else 'FAIL'}"
        )
        if v["status_s"] is not None:
            print(
                f"ado status: {v['status_s']:.2f} s (floor {floor['wall_s']:.2f} s); "
                f"target < {STATUS_TARGET_S:g} s: {'PASS' if v['status_pass'] else 'FAIL'}"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_workdir(args.workdir, args.keep) as workdir:
        log(f"making {LOCAL_REPOS} repositories in {workdir}")
        local = make_repos(workdir / "repos", LOCAL_REPOS)
        agent = write_agent(workdir / "agent.sh", 0)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        results = []
        server = None
        try:
            if args.postgres:
                sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
                import psycopg

                from tests.servers import PostgresServer

                server = PostgresServer(workdir / "pg")
                server.start()
            for i, size in enumerate(args.sizes):
                log(f"{size} repositories")
                if server is not None:
                    with psycopg.connect(server.url(), autocommit=True) as conn:
                        conn.execute(f"CREATE DATABASE scale{i}")
                    state = server.url(f"scale{i}")
                else:
                    state = str(workdir / f"n{size}.db")
                result = bench_size(size, workdir, state, local, agent)
                result["verdicts"] = verdicts(result)
                results.append(result)
        finally:
            if server is not None:
                server.stop()
                server.cleanup()
        load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
        backend = "PostgreSQL (private server)" if args.postgres else "SQLite"
        figures = {
            "backend": backend,
            "load_before": load,
            "load_after": load_after,
            "results": results,
        }
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            show(results, backend, f"{load} → {load_after}")
        problems = [p for r in results for p in r["problems"]]
        if problems:
            log("\nTHE WORK FAILED, so these figures do not count:\n" + "\n".join(problems[:20]))
            return 1
        return 0


if __name__ == "__main__":
    sys.exit(main())
