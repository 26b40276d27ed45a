#!/usr/bin/env python3
"""ado-ray against all-repos at all-repos' own game: one `sed` code-mod over N repositories.

Over the same N local repositories (real git, one commit each; `src/app.py` and
`src/util.py` say `foo`, as do two files outside the glob), both sides make the same change,
`sed -i s/foo/bar/g` on the files `git ls-files -- '*.py'` lists, commit it and push it as a
branch to the repository it came from, P at once:

- ado: `ado batch --cmd "sh -c 'git ls-files -z -- \\*.py | xargs -0 -r sed -i s/foo/bar/g'"
  --parallel P`, which is what all-repos-sed runs per repository (branch `ado/<mode>-<i>`);
- all-repos, in the same script: `all-repos-clone -j P` (a `json_file` source listing the
  repositories' paths) then `all-repos-sed -j P s/foo/bar/g '*.py'`, pushed by a push module
  of three lines that does what all-repos' own `github_pull_request` does before it opens the
  PR: `git push origin HEAD:<branch>` (branch `all-repos_autofix_<mode>-<i>`).

Each round runs both sides cold (fresh caches: a new ado work root, a new all-repos
output dir), then warm (ado's mirrors under the same work root; all-repos' output dir
already cloned, `all-repos-clone` run again as a user would to bring it up to date). The
order of the sides alternates between rounds. It prints every wall time, the ratio
ado / all-repos of the medians, cold and warm (target <= 0.8), each side's CPU and memory,
and where ado's time went from the timestamps in its store (start-up, task span, teardown;
per task: checkout, agent, commit, push). `--trace-git` also times every git command each
side runs (git's trace2 events), which costs a little on both sides. Both sides' results
are checked: every repository must have each branch, one commit whose diff is exactly the
expected one; if not, it says what is wrong and exits 1. A missed target is not an error.

    .venv/bin/python bench/allrepos.py [--repos 200] [--parallel 20] [--rounds 2]
                                       [--no-ray] [--trace-git] [--workdir DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
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
    finish,
    git,
    log,
    mb,
    run_measured,
    table,
    tail,
)

TARGET = 0.8
EXPRESSION = "s/foo/bar/g"
GLOB = "*.py"
FILES = {
    "README.md": "# foo\n\nNot in the glob: neither side changes this foo.\n",
    "src/app.py": "import foo\n\n\ndef main() -> int:\n    return foo.run()  # foo, foo\n",
    "src/util.py": "NAME = 'foo'\nVALUE = 1\n",
    "docs/notes.txt": "foo stays\n",
}
# Per repository, what all-repos-sed runs in its checkout (it then drops non-text files,
# which these are not): `git ls-files -z -- GLOB | xargs -0 sed -i EXPRESSION`.
SED_SH = f"git ls-files -z -- {shlex.quote(GLOB)} | xargs -0 -r sed -i {shlex.quote(EXPRESSION)}"
ADO_CMD = f"sh -c {shlex.quote(SED_SH)}"
# all-repos' push setting names a module with `Settings` and `push(settings, branch)`.
PUSH_MODULE = "bench_allrepos_push"
PUSH_PY = '''\
"""all-repos push for the benchmark: the branch to the repository it came from."""
import collections

from all_repos import autofix_lib

Settings = collections.namedtuple("Settings", ())


def push(settings, branch_name):
    autofix_lib.run("git", "push", "--quiet", "origin", f"HEAD:refs/heads/{branch_name}")
'''
ADO_PHASES = ("preparing", "running", "collecting", "publishing")
PHASE_NAMES = {
    "preparing": "checkout",
    "running": "agent",
    "collecting": "commit",
    "publishing": "push",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=200, help="repositories (default 200)")
    parser.add_argument("--parallel", type=int, default=20, help="at once (default 20)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="cold + warm pairs per side (default 2)"
    )
    parser.add_argument(
        "--no-ray", action="store_true", help="run ado with --no-ray (default: its own local Ray)"
    )
    parser.add_argument(
        "--trace-git",
        action="store_true",
        help="time every git command both sides run (GIT_TRACE2_EVENT; costs a little)",
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    if min(args.repos, args.parallel, args.rounds) < 1:
        parser.error("--repos, --parallel and --rounds must be at least 1")
    check_workdir(parser, args.workdir)
    return args


# --- repositories and the expected change ------------------------------------------------------


def make_repos(root: Path, count: int) -> tuple[list[Path], str]:
    """`count` repositories with one commit of FILES on `main` (one built, the rest copied,
    so every repository has the same commit), and the diff the code-mod must make."""
    template = root / ".template"
    for rel, text in FILES.items():
        (template / rel).parent.mkdir(parents=True, exist_ok=True)
        (template / rel).write_text(text)
    git(template, "init", "-q", "-b", "main")
    git(template, "add", "-A")
    git(template, "commit", "-q", "-m", "initial")
    repos = [root / f"repo-{i:04d}" for i in range(count)]
    for repo in repos:
        shutil.copytree(template, repo, symlinks=True)
    # The expected change, made with Python rather than sed: the check must not trust sed.
    for rel in git(template, "ls-files", "--", GLOB).splitlines():
        path = template / rel
        path.write_text(path.read_text().replace("foo", "bar"))
    git(template, "commit", "-q", "-a", "-m", "expected")
    expected = git(template, "diff", "--no-color", "HEAD~1", "HEAD")
    shutil.rmtree(template)
    return repos, expected


def change_problems(repos: list[Path], branch: str, expected: str) -> list[str]:
    """What is wrong with `branch` in each repository: it must be one commit on `main`
    whose diff is `expected`. An empty list means every repository is right."""
    problems = []
    for repo in repos:
        ref = f"refs/heads/{branch}"
        done = subprocess.run(
            ["git", "log", "--no-color", "--format=tformat:%s", "-p", f"main..{ref}"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=False,
        )
        subject, _, diff = done.stdout.partition("\n\n")
        if done.returncode != 0:
            problems.append(f"{repo.name}: no branch {branch}")
        elif "\n" in subject.strip() or diff.strip() != expected:
            problems.append(f"{repo.name}: {branch} is not one commit of the expected diff")
    return problems


# --- the two sides ------------------------------------------------------------------------------


@dataclass
class SideRun:
    side: str  # "ado" or "all-repos"
    mode: str  # "cold" or "warm"
    round: int
    branch: str
    steps: dict[str, Measured]  # ado: {"batch"}; all-repos: {"clone", "sed"}
    load: float  # 1-minute load average just before it started
    problems: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # ado's, from its store
    git: dict[str, tuple[int, float]] = field(default_factory=dict)  # subcommand → (n, s)

    @property
    def wall_s(self) -> float:
        return sum(m.wall_s for m in self.steps.values())

    @property
    def cpu_s(self) -> float:
        return sum(m.samples.cpu_s() for m in self.steps.values())

    @property
    def peak_rss(self) -> int:
        return max(m.samples.peak()[0].rss for m in self.steps.values())


def traced_env(env: dict[str, str], trace: Path | None) -> dict[str, str]:
    if trace is None:
        return env
    trace.mkdir(parents=True)
    return env | {"GIT_TRACE2_EVENT": str(trace)}


def run_ado(
    args: argparse.Namespace, workdir: Path, mode: str, i: int, expected: str, repos: list[Path]
) -> SideRun:
    name = f"{mode}-{i}"
    state = workdir / f"ado-{name}.db"
    argv = [*ADO, "batch", str(workdir / "repos.txt"), "--name", name, "--cmd", ADO_CMD]
    argv += ["--parallel", str(args.parallel), "--json", "--state", str(state)]
    argv += ["--work-root", str(workdir / f"ado-work-{i}")]  # warm: the cold run's mirrors
    if args.no_ray:
        argv.append("--no-ray")
    trace = workdir / "trace" / f"ado-{name}" if args.trace_git else None
    load = os.getloadavg()[0]
    log(f"ado {mode} (round {i}), load {load:.2f}")
    measured = run_measured(
        argv,
        env=traced_env(bench_env(workdir), trace),
        cwd=workdir,
        stderr_path=workdir / f"ado-{name}.log",
        agent_marker="ls-files",
    )
    run = SideRun("ado", mode, i, f"ado/{name}", {"batch": measured}, load)
    try:
        summary = json.loads(measured.stdout) if measured.stdout.strip() else {}
    except json.JSONDecodeError:
        summary = {}
    if measured.returncode != 0:
        log_path = workdir / f"ado-{name}.log"
        run.problems.append(f"ado batch exited {measured.returncode}; its log:\n{tail(log_path)}")
    if summary.get("counts", {}) != {"changed": len(repos)}:
        run.problems.append(f"task states {summary.get('counts')}; expected all changed")
    run.problems += change_problems(repos, run.branch, expected)
    if summary.get("run_id") and not run.problems:
        try:
            run.phases = ado_phases(state, summary["run_id"], measured)
        except (sqlite3.Error, ValueError) as exc:  # the store's schema is ado's; it may change
            log(f"note: no breakdown of ado's time; reading its store failed: {exc}")
    if trace is not None:
        run.git = git_times(trace)
    return run


def write_allrepos_config(workdir: Path, repos: list[Path], i: int) -> Path:
    listing = workdir / "allrepos-repos.json"
    listing.write_text(json.dumps({repo.name: str(repo) for repo in repos}))
    (workdir / "pylib").mkdir(exist_ok=True)
    (workdir / "pylib" / f"{PUSH_MODULE}.py").write_text(PUSH_PY)
    config = workdir / f"all-repos-{i}.json"
    settings = {
        "output_dir": str(workdir / f"allrepos-out-{i}"),
        "source": "all_repos.source.json_file",
        "source_settings": {"filename": str(listing)},
        "push": PUSH_MODULE,
        "push_settings": {},
    }
    config.write_text(json.dumps(settings, indent=2))
    config.chmod(0o600)  # all-repos refuses a config others can read
    return config


def allrepos_bin(name: str) -> str:
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else (shutil.which(name) or name)


def run_allrepos(
    args: argparse.Namespace, workdir: Path, mode: str, i: int, expected: str, repos: list[Path]
) -> SideRun:
    name = f"{mode}-{i}"
    config = write_allrepos_config(workdir, repos, i)
    env = bench_env(workdir) | {"PYTHONPATH": str(workdir / "pylib")}
    jobs = ["-j", str(args.parallel)]
    commands = {
        "clone": [allrepos_bin("all-repos-clone"), "-C", str(config), *jobs],
        "sed": [
            *[allrepos_bin("all-repos-sed"), "-C", str(config), *jobs],
            *["--branch-name", name, EXPRESSION, GLOB],
        ],
    }
    load = os.getloadavg()[0]
    log(f"all-repos {mode} (round {i}), load {load:.2f}")
    steps, problems = {}, []
    for step, argv in commands.items():
        trace = workdir / "trace" / f"allrepos-{name}-{step}" if args.trace_git else None
        stderr_path = workdir / f"allrepos-{name}-{step}.log"
        steps[step] = measured = run_measured(
            argv,
            env=traced_env(env, trace),
            cwd=workdir,
            stderr_path=stderr_path,
            agent_marker="ls-files",
        )
        (workdir / f"allrepos-{name}-{step}.out").write_text(measured.stdout)
        if measured.returncode != 0:
            problems.append(f"{step} exited {measured.returncode}; its log:\n{tail(stderr_path)}")
        # all-repos reports a repository's failure on stdout and carries on, exit 0
        errored = measured.stdout.count("***Errored") + measured.stdout.count("Error fetching")
        if errored:
            problems.append(f"{step}: {errored} repositories errored (see {stderr_path.name})")
    run = SideRun("all-repos", mode, i, f"all-repos_autofix_{name}", steps, load, problems)
    run.problems += change_problems(repos, run.branch, expected)
    if args.trace_git:
        for step in commands:
            for sub, (n, s) in git_times(workdir / "trace" / f"allrepos-{name}-{step}").items():
                was = run.git.get(sub, (0, 0.0))
                run.git[sub] = (was[0] + n, was[1] + s)
    return run


# --- where the time went ------------------------------------------------------------------------


def ado_phases(state: Path, run_id: str, measured: Measured) -> dict[str, float]:
    """Where ado's wall time went, from its store's task transitions (each stamped when the
    sink wrote it, so up to ~0.1 s late): launch → run planned → first task preparing (Ray
    and its actors) → last task done (the task span) → exit; per task the medians of each
    state's time; and the slots' use over the span (task time / (slots x span))."""
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        (created,) = db.execute(
            "SELECT created_at FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        rows = db.execute(
            "SELECT task_id, state, at FROM task_transitions WHERE run_id = ? ORDER BY seq",
            (run_id,),
        ).fetchall()

    def ts(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    first_at: dict[str, dict[str, float]] = defaultdict(dict)
    for task_id, task_state, at in rows:
        first_at[task_id].setdefault(task_state, ts(at))
    tasks = list(first_at.values())
    if not tasks or any("preparing" not in t or "changed" not in t for t in tasks):
        raise ValueError("a task has no preparing or changed transition")
    launched = measured.started_at
    first = min(t["preparing"] for t in tasks)
    last = max(t["changed"] for t in tasks)
    order = [*ADO_PHASES, "changed"]
    phases: dict[str, float] = {
        "launch_to_run_created_s": ts(created) - launched,
        "run_created_to_first_task_s": first - ts(created),
        "task_span_s": last - first,
        "last_task_to_exit_s": launched + measured.wall_s - last,
    }
    for state_from, state_to in itertools.pairwise(order):
        spans = [t[state_to] - t[state_from] for t in tasks if state_from in t and state_to in t]
        phases[f"{PHASE_NAMES[state_from]}_median_s"] = statistics.median(spans) if spans else 0.0
        phases[f"{PHASE_NAMES[state_from]}_sum_s"] = sum(spans)
    busy = sum(t["changed"] - t["preparing"] for t in tasks)
    phases["task_time_sum_s"] = busy
    return phases


def git_times(trace: Path) -> dict[str, tuple[int, float]]:
    """subcommand → (processes, seconds) from git's trace2 event files in `trace`: the git
    processes the side started itself (not the ones git started in turn)."""
    times: dict[str, tuple[int, float]] = {}
    for path in trace.iterdir():
        argv: list[str] = []
        elapsed = None
        for line in path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "/" in event.get("sid", ""):
                break  # started by another git process: its time is in its parent's
            if event.get("event") == "start":
                argv = event.get("argv", [])
            elif event.get("event") == "atexit":
                elapsed = float(event.get("t_abs", 0.0))
        if argv and elapsed is not None:
            words = argv[1:]
            while len(words) >= 2 and words[0] in ("-c", "-C"):
                words = words[2:]
            sub = words[0] if words else "?"
            was = times.get(sub, (0, 0.0))
            times[sub] = (was[0] + 1, was[1] + elapsed)
    return times


# --- output ------------------------------------------------------------------------------------


def summary(args: argparse.Namespace, runs: list[SideRun]) -> dict[str, Any]:
    def walls(side: str, mode: str) -> list[float]:
        return [r.wall_s for r in runs if r.side == side and r.mode == mode]

    figures: dict[str, Any] = {
        "repos": args.repos,
        "parallel": args.parallel,
        "rounds": args.rounds,
        "ray": not args.no_ray,
        "runs": [
            {
                "side": r.side,
                "mode": r.mode,
                "round": r.round,
                "load": round(r.load, 2),
                "wall_s": round(r.wall_s, 2),
                "steps_wall_s": {k: round(m.wall_s, 2) for k, m in r.steps.items()},
                "cpu_s": round(r.cpu_s, 2),
                "peak_rss_mb": round(r.peak_rss / 2**20),
                "phases": {k: round(v, 3) for k, v in r.phases.items()},
                "git": {k: [n, round(s, 3)] for k, (n, s) in sorted(r.git.items())},
                "ray_workers": ray_workers(r),
                "problems": r.problems,
            }
            for r in runs
        ],
        "target": TARGET,
    }
    for mode in ("cold", "warm"):
        ado, other = (
            statistics.median(walls("ado", mode)),
            statistics.median(walls("all-repos", mode)),
        )
        figures[mode] = {
            "ado_median_s": round(ado, 2),
            "allrepos_median_s": round(other, 2),
            "ratio": round(ado / other, 3),
            "pass": ado / other <= TARGET,
        }
    return figures


def report(args: argparse.Namespace, figures: dict[str, Any], runs: list[SideRun]) -> None:
    mode = "--no-ray" if args.no_ray else "its own local Ray"
    print(
        f"ado-ray vs all-repos: {args.repos} repositories, sed -i {EXPRESSION} on "
        f"git ls-files '{GLOB}', commit, push a branch; --parallel / -j {args.parallel}; "
        f"ado with {mode}\n"
    )
    rows: list[list[object]] = []
    for r in runs:
        steps = " + ".join(f"{k} {m.wall_s:.2f}" for k, m in r.steps.items())
        row = [f"{r.round}", r.mode, r.side, f"{r.wall_s:.2f}", steps, f"{r.cpu_s:.1f}"]
        rows.append([*row, mb(r.peak_rss), f"{r.load:.2f}"])
    headers = ["round", "mode", "side", "wall s", "steps s", "CPU s", "peak RSS MB", "load"]
    print(table(headers, rows))
    print()
    for mode_name in ("cold", "warm"):
        f = figures[mode_name]
        print(
            f"{mode_name}: ado {f['ado_median_s']:.2f} s / all-repos {f['allrepos_median_s']:.2f} s"
            f" (medians) = {f['ratio']:.2f} (target <= {TARGET}: "
            f"{'PASS' if f['pass'] else 'FAIL'})"
        )
    ado_runs = [r for r in runs if r.side == "ado" and r.phases]
    if ado_runs:
        print("\nado's wall time, from its store (per run; per task: medians):")
        headers = ["round", "mode", "to plan", "to 1st task", "task span", "to exit"]
        headers += [f"{PHASE_NAMES[p]}" for p in ADO_PHASES] + ["slots busy"]
        rows.clear()
        for r in ado_runs:
            p = r.phases
            busy = p["task_time_sum_s"] / (args.parallel * p["task_span_s"])
            seconds = [p["launch_to_run_created_s"], p["run_created_to_first_task_s"]]
            seconds += [p["task_span_s"], p["last_task_to_exit_s"]]
            seconds += [p[f"{PHASE_NAMES[s]}_median_s"] for s in ADO_PHASES]
            rows.append([r.round, r.mode, *(f"{v:.2f}" for v in seconds), f"{busy:.0%}"])
        print(table(headers, rows))
    for r in runs:
        if r.side == "ado" and r.round == args.rounds:
            samples = r.steps["batch"].samples
            print(f"\nado's process tree, {r.mode} run {r.round}: peaks per category and CPU")
            print(table(CATEGORY_HEADERS, category_rows(samples, CATEGORY_ORDER)))
            if titles := sorted(ray_workers(r).items()):
                print("Ray workers at most: " + ", ".join(f"{t} x{n}" for t, n in titles))
    traced = [r for r in runs if r.git]
    if traced:
        print("\ngit processes each side started (git's trace2; count / total s):")
        subs = sorted({sub for r in traced for sub in r.git})
        headers = ["git", *(f"{r.side} {r.mode} {r.round}" for r in traced)]
        rows = [
            [sub, *(count_and_seconds(r.git.get(sub, (0, 0.0))) for r in traced)] for sub in subs
        ]
        totals = [sum(n for n, _ in r.git.values()) for r in traced]
        seconds = [sum(s for _, s in r.git.values()) for r in traced]
        all_git = zip(totals, seconds, strict=True)
        rows.append(["all", *(count_and_seconds(pair) for pair in all_git)])
        print(table(headers, rows))


def ray_workers(run: SideRun) -> dict[str, int]:
    """The Ray worker processes of an ado run when there were the most, by title."""
    busiest = run.steps["batch"].samples.peak_workers() if run.side == "ado" else None
    return dict(busiest.worker_titles) if busiest is not None else {}


def count_and_seconds(pair: tuple[int, float]) -> str:
    return f"{pair[0]} / {pair[1]:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("all_repos") is None:
        log("all-repos is not installed; `.venv/bin/pip install -e '.[bench]'` installs it")
        return 2
    with bench_workdir(args.workdir, args.keep) as workdir:
        return bench(args, workdir)


def bench(args: argparse.Namespace, workdir: Path) -> int:
    log(f"making {args.repos} repositories in {workdir}")
    repos, expected = make_repos(workdir / "repos", args.repos)
    (workdir / "repos.txt").write_text("".join(f"{repo}\n" for repo in repos))
    runs: list[SideRun] = []
    for i in range(1, args.rounds + 1):
        sides = [run_ado, run_allrepos] if i % 2 else [run_allrepos, run_ado]
        for mode in ("cold", "warm"):
            for side in sides:
                runs.append(side(args, workdir, mode, i, expected, repos))
                log(f"  {runs[-1].wall_s:.1f} s")
    figures = summary(args, runs)
    problems = [f"{r.side} {r.mode} {r.round}: {p}" for r in runs for p in r.problems]
    for r in runs:
        for step, measured in r.steps.items():
            if measured.leftovers:
                left = measured.leftovers
                log(f"warning: {r.side} {step} left processes running (killed): {left}")
    figures["problems"] = problems
    return finish(args.json, figures, lambda: report(args, figures, runs), problems)


if __name__ == "__main__":
    sys.exit(main())
