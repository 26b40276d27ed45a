"""Helpers shared by the benchmarks: sample repositories, a process tree's memory, tables.

`run_measured` starts a command and samples, every `interval_s`, the memory and CPU times
of its whole process tree: the process, all its descendants, and any process that left
the tree (was re-parented) but looks like Ray's and carries the run's tag in its
environment (other people's Ray instances on the machine do not). Each process is put in
one category (`classify`) so a benchmark can sum the ones it cares about; RSS counts pages
shared between processes once per process, so PSS and USS are summed too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ADO = [sys.executable, "-m", "ado_ray"]
MB = 1024 * 1024
TAG_VAR = "ADO_BENCH_PROCESS_TAG"  # marks every process a measured command starts
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
}
TEMPLATE_FILES = {
    "README.md": "# sample\n\nA repository for the ado-ray benchmarks.\n",
    "src/app.py": "def main() -> int:\n    return 0\n",
    "src/util.py": "VALUE = 1\n",
    "docs/notes.txt": "nothing to see\n",
}
RAY_CATEGORIES = ("gcs_server", "raylet", "ray worker", "ray other")
AGENT_CATEGORIES = ("agent", "agent child")
RAY_AGENT_TITLES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # per node; not workers


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        type=Path,
        help="an empty or new directory for everything (kept); default: a temporary one",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def check_workdir(parser: argparse.ArgumentParser, workdir: Path | None) -> None:
    if workdir is not None and workdir.exists() and any(workdir.iterdir()):
        parser.error(f"--workdir {workdir} is not empty; expected an empty or new directory")


@contextlib.contextmanager
def bench_workdir(given: Path | None, keep: bool) -> Iterator[Path]:
    """`given` (created if need be, always kept), or a new temporary directory that is
    removed at the end unless `keep`."""
    workdir = given or Path(tempfile.mkdtemp(prefix="ado-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield workdir.resolve()
    finally:
        if given is None and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir.resolve()}")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_env(workdir: Path) -> dict[str, str]:
    """This environment without ado and Ray settings that would change what is measured
    (ADO_*, RAY_ADDRESS), with Ray's files kept under `workdir` and usage stats off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADO_") and k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=str(workdir / "ray"), **GIT_ENV)
    return env


# --- repositories --------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def template_repo(root: Path) -> Path:
    """`root/.template`: a repository of `TEMPLATE_FILES` with one commit on `main`."""
    template = root / ".template"
    for rel, text in TEMPLATE_FILES.items():
        (template / rel).parent.mkdir(parents=True, exist_ok=True)
        (template / rel).write_text(text)
    git(template, "init", "-q", "-b", "main")
    git(template, "add", "-A")
    git(template, "commit", "-q", "-m", "initial")
    return template


def make_repos(root: Path, count: int, prefix: str = "repo") -> list[Path]:
    """`count` non-bare repositories with one commit on `main`: one built, the rest copied."""
    template = template_repo(root)
    repos = [root / f"{prefix}-{i:04d}" for i in range(count)]
    for repo in repos:
        shutil.copytree(template, repo, symlinks=True)
    shutil.rmtree(template)
    return repos


def make_bare_repos(root: Path, count: int, prefix: str = "repo") -> tuple[list[Path], str]:
    """`count` bare repositories with one commit on `main`, fast enough for thousands: one
    is built and packed, the others are a handful of small files each and a hard link to
    its pack (so never push into them). Returns them and the commit's SHA."""
    template = template_repo(root)
    sha = git(template, "rev-parse", "HEAD")
    git(template, "repack", "-a", "-d", "-q")
    packs = sorted((template / ".git" / "objects" / "pack").iterdir())
    config = "[core]\n\trepositoryformatversion = 0\n\tbare = true\n"
    repos = [root / f"{prefix}-{i:04d}.git" for i in range(count)]
    for repo in repos:
        for sub in ("objects/pack", "objects/info", "refs/heads", "refs/tags"):
            (repo / sub).mkdir(parents=True)
        (repo / "HEAD").write_text("ref: refs/heads/main\n")
        (repo / "config").write_text(config)
        (repo / "packed-refs").write_text(f"{sha} refs/heads/main\n")
        for pack in packs:
            os.link(pack, repo / "objects" / "pack" / pack.name)
    shutil.rmtree(template)
    return repos, sha


def write_repo_list(path: Path, repos: Iterable[Path]) -> Path:
    path.write_text("".join(f"{repo}\n" for repo in repos))
    return path


def write_agent(path: Path, sleep_s: float) -> Path:
    """The agent both sides run, in the repository's checkout: sleep, then edit one file."""
    path.write_text(f"#!/bin/sh\nsleep {sleep_s:g}\necho x >> CHANGED.txt\n")
    return path


def branch_problems(repos: Sequence[Path], branch: str, base: str = "main") -> list[str]:
    """What is wrong with `branch` in each repository: it must be one commit on `base` that
    changes only CHANGED.txt. An empty list means every repository is right."""
    problems = []
    for repo in repos:
        done = subprocess.run(
            [
                "git",
                "log",
                "--format=tformat:commit",
                "--name-only",
                f"{base}..refs/heads/{branch}",
            ],
            cwd=repo,
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [line for line in done.stdout.splitlines() if line]
        if done.returncode != 0:
            problems.append(f"{repo.name}: no branch {branch}")
        elif lines != ["commit", "CHANGED.txt"]:
            found = " ".join(lines)
            problems.append(f"{repo.name}: {branch} has {found!r}; expected one CHANGED.txt commit")
    return problems


# --- the process tree's memory and CPU -----------------------------------------------------


@dataclass
class Usage:
    count: int = 0
    rss: int = 0
    pss: int = 0
    uss: int = 0

    def add(self, other: Usage) -> None:
        self.count += other.count
        self.rss += other.rss
        self.pss += other.pss
        self.uss += other.uss


@dataclass
class Sample:
    at_s: float
    by_category: dict[str, Usage]
    worker_titles: Counter[str]

    def total(self, categories: Iterable[str] | None = None) -> Usage:
        total = Usage()
        for name, usage in self.by_category.items():
            if categories is None or name in categories:
                total.add(usage)
        return total


@dataclass
class CpuSeen:
    """A process's CPU times (user + system) at the last sample that saw it."""

    pid: int
    ppid: int
    category: str
    created: float
    seen_at: float
    own: float
    children: float  # of its children that it has waited for


@dataclass
class Samples:
    items: list[Sample] = field(default_factory=list)
    sampler_cpu_s: float = 0.0
    cpu: dict[tuple[int, float], CpuSeen] = field(default_factory=dict)  # (pid, created) →

    def cpu_s(self, categories: Iterable[str] | None = None) -> float:
        return sum(self.cpu_split(categories))

    def cpu_split(self, categories: Iterable[str] | None = None) -> tuple[float, float]:
        """An estimate of the CPU time (user + system) the tree used, as (the processes' own,
        their waited-for children's): each process's own time when last seen, and the time
        of the children it waited for (which covers the short-lived ones no sample saw) less
        what those children had when last seen themselves, so nothing counts twice. Ray's
        raylet reaps without accounting (its children's time stays 0), hence the floor at 0.
        Work done after a process's last sample (at most `interval_s` of it) is missed.
        Children's time counts in their parent's category."""
        reaped: dict[tuple[int, float], float] = {}
        for seen in self.cpu.values():
            parent = self._parent(seen)
            if parent is not None and seen.seen_at < parent.seen_at:
                key = (parent.pid, parent.created)
                reaped[key] = reaped.get(key, 0.0) + seen.own + seen.children
        own = children = 0.0
        for key, seen in self.cpu.items():
            if categories is None or seen.category in categories:
                own += seen.own
                children += max(0.0, seen.children - reaped.get(key, 0.0))
        return own, children

    def _parent(self, child: CpuSeen) -> CpuSeen | None:
        candidates = [
            seen
            for seen in self.cpu.values()
            if seen.pid == child.ppid and seen.created <= child.created
        ]
        return max(candidates, key=lambda seen: seen.created, default=None)

    def peak(self, categories: Iterable[str] | None = None) -> tuple[Usage, float]:
        """The highest value of each figure summed over `categories` (None: all), and when
        the RSS peak happened. Figures peak separately, so they may come from other samples."""
        wanted = None if categories is None else set(categories)
        peak, at_s = Usage(), 0.0
        for sample in self.items:
            total = sample.total(wanted)
            if total.rss > peak.rss:
                at_s = sample.at_s
            peak = Usage(*(max(a, b) for a, b in zip(_fields(peak), _fields(total), strict=True)))
        return peak, at_s

    def mean_interval_s(self) -> float:
        """The mean time between samples: more than asked for when sampling is slow."""
        if len(self.items) < 2:
            return 0.0
        return (self.items[-1].at_s - self.items[0].at_s) / (len(self.items) - 1)

    def peak_workers(self) -> Sample | None:
        """The last sample with the most Ray worker processes (by then they have titles)."""
        best = None
        for sample in self.items:
            count = sample.by_category.get("ray worker", Usage()).count
            if best is None or count >= best.by_category.get("ray worker", Usage()).count:
                best = sample
        return best


def _fields(usage: Usage) -> tuple[int, int, int, int]:
    return usage.count, usage.rss, usage.pss, usage.uss


def classify(name: str, cmdline: Sequence[str], agent_marker: str) -> str:
    """The category of a process, from its name and command line."""
    first = cmdline[0] if cmdline else name
    text = " ".join(cmdline)
    if name == "gcs_server" or os.path.basename(first) == "gcs_server":
        return "gcs_server"
    if name == "raylet" or os.path.basename(first) == "raylet":
        return "raylet"
    if first in RAY_AGENT_TITLES:
        return "ray other"
    if first.startswith("ray::") or "default_worker.py" in text:
        return "ray worker"
    if "/ray/" in text or first.startswith("ray_"):
        return "ray other"  # dashboard and runtime-env agents, log monitor, ...
    if "ado_ray/engine" in text and "sandbox" in text:
        return "agent init"  # ado's init per agent (engine/sandbox.py) and its `unshare`
    if agent_marker in text:
        return "agent"
    if name.startswith("git") or text.startswith("/bin/sh -c git-"):
        return "git"  # git, its helpers, and the shells a local push or fetch starts
    return "other"


class TreeSampler:
    """Samples the memory and CPU times of `root`'s process tree in a background thread."""

    def __init__(self, root: int, tag: str, agent_marker: str, interval_s: float = 0.25) -> None:
        self.root, self.tag, self.agent_marker = root, tag, agent_marker
        self.interval_s = interval_s
        self.samples = Samples()
        self._t0 = time.monotonic()
        self._since = time.time() - 1.0
        self._adopted: dict[tuple[int, float], bool] = {}  # (pid, create time) → ours?
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> Samples:
        self._stop.set()
        self._thread.join()
        return self.samples

    def _loop(self) -> None:
        while not self._stop.is_set():
            cpu = time.thread_time()
            self.samples.items.append(self.sample())
            self.samples.sampler_cpu_s += time.thread_time() - cpu
            self._stop.wait(self.interval_s)

    def _ours(self, proc: psutil.Process, created: float) -> bool:
        """A process outside the tree counts if it looks like Ray's and carries our tag."""
        key = (proc.pid, created)
        if key not in self._adopted:
            try:
                looks_ray = classify(proc.name(), proc.cmdline(), "\0") in RAY_CATEGORIES
                self._adopted[key] = looks_ray and proc.environ().get(TAG_VAR) == self.tag
            except psutil.Error:
                self._adopted[key] = False
        return self._adopted[key]

    def members(self) -> dict[int, str]:
        """pid → category for the tree and adopted processes, found in one pass over /proc."""
        children: dict[int, list[int]] = {}
        procs: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["ppid", "create_time"]):
            procs[proc.pid] = proc
            children.setdefault(proc.info["ppid"] or 0, []).append(proc.pid)
        found: dict[int, str] = {}
        self._walk([(self.root, "driver")], procs, children, found)
        adopted = [
            (pid, "")
            for pid, proc in procs.items()
            if pid not in found
            and (proc.info["create_time"] or 0) >= self._since
            and self._ours(proc, proc.info["create_time"])
        ]
        self._walk(adopted, procs, children, found)
        return found

    def _walk(
        self,
        stack: list[tuple[int, str]],
        procs: dict[int, psutil.Process],
        children: dict[int, list[int]],
        found: dict[int, str],
    ) -> None:
        """Add the processes of `stack` and their descendants to `found` with a category
        (given, or from `classify`); what an agent starts counts as the agent's."""
        while stack:
            pid, category = stack.pop()
            if pid in found or pid not in procs:
                continue
            if not category:
                proc = procs[pid]
                with contextlib.suppress(psutil.Error):
                    try:
                        cmdline = proc.cmdline()
                    except psutil.ZombieProcess:
                        cmdline = []  # exited, not yet reaped: only its name is left
                    category = classify(proc.name(), cmdline, self.agent_marker)
            found[pid] = category or "other"
            inherited = "agent child" if found[pid] in AGENT_CATEGORIES else ""
            stack += [(child, inherited) for child in children.get(pid, [])]

    def sample(self) -> Sample:
        by_category: dict[str, Usage] = {}
        titles: Counter[str] = Counter()
        for pid, category in self.members().items():
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    times, created = proc.cpu_times(), proc.create_time()
                    self.samples.cpu[(pid, created)] = CpuSeen(
                        pid,
                        proc.ppid(),
                        category,
                        created,
                        time.monotonic() - self._t0,
                        times.user + times.system,
                        times.children_user + times.children_system,
                    )
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        continue  # its CPU times are final; it holds no memory
                    info = proc.memory_full_info()
                    if category == "ray worker":
                        # "ray::Sink.submit" while it runs a method: keep the class
                        title = (proc.cmdline() or ["?"])[0].split(" ")[0].split(".")[0]
                        if title.startswith("ray::ado:"):  # a task ado named after its repo
                            title = "ray::AgentRunner"
                        titles[title if title.startswith("ray::") else "(starting)"] += 1
            except psutil.Error:
                continue  # it ended between the listing and now
            usage = Usage(1, info.rss, getattr(info, "pss", info.rss), getattr(info, "uss", 0))
            by_category.setdefault(category, Usage()).add(usage)
        return Sample(time.monotonic() - self._t0, by_category, titles)


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Processes still alive that a measured command started (its tag is in their env)."""
    left = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(TAG_VAR) == tag:
                left.append(proc)
    return left


@dataclass
class Measured:
    returncode: int
    started_at: float  # time.time() at launch, to compare with timestamps in ado's store
    wall_s: float
    stdout: str
    samples: Samples
    leftovers: list[str]  # processes the command left running (killed after measuring)


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    stderr_path: Path,
    agent_marker: str,
    stdin_path: Path | None = None,
    interval_s: float = 0.25,
) -> Measured:
    """Run `argv` to its end, timing it and sampling its process tree's memory and CPU."""
    tag = uuid.uuid4().hex
    with contextlib.ExitStack() as stack:
        stderr = stack.enter_context(open(stderr_path, "wb"))
        stdin = stack.enter_context(open(stdin_path, "rb")) if stdin_path else subprocess.DEVNULL
        started_at, start = time.time(), time.monotonic()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**env, TAG_VAR: tag},
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        sampler = TreeSampler(proc.pid, tag, agent_marker, interval_s).start()
        stdout, _ = proc.communicate()
        wall_s = time.monotonic() - start
        samples = sampler.stop()
    time.sleep(1.0)  # give a clean shutdown's last processes time to exit
    leftovers = []
    for left in tagged_processes(tag):
        with contextlib.suppress(psutil.Error):
            leftovers.append(f"{left.pid} {' '.join(left.cmdline())[:80]}")
            left.kill()
    return Measured(proc.returncode, started_at, wall_s, stdout, samples, leftovers)


@dataclass
class AdoRun:
    name: str
    measured: Measured
    summary: dict[str, Any]  # `ado batch --json` output ({} if it printed none)
    problems: list[str]  # empty: every task changed and every branch is right


def run_ado_batch(
    workdir: Path,
    repo_list: Path,
    repos: Sequence[Path],
    *,
    name: str,
    cmd: str,
    parallel: int,
    agent_marker: str,
    expect: str = "changed",
) -> AdoRun:
    """`ado batch` with its own state and work root under `workdir`, measured and checked:
    every task must end in state `expect`, and if that is "changed", every repository must
    have branch ado/<name> with one commit of CHANGED.txt."""
    argv = [*ADO, "batch", str(repo_list), "--name", name, "--cmd", cmd]
    argv += ["--parallel", str(parallel), "--json"]
    argv += ["--state", str(workdir / f"{name}.db"), "--work-root", str(workdir / name)]
    stderr_path = workdir / f"{name}.log"
    measured = run_measured(
        argv,
        env=bench_env(workdir),
        cwd=workdir,
        stderr_path=stderr_path,
        agent_marker=agent_marker,
    )
    try:
        summary = json.loads(measured.stdout) if measured.stdout.strip() else {}
    except json.JSONDecodeError:
        summary = {}
    problems = []
    if measured.returncode != 0:
        problems.append(f"ado batch exited {measured.returncode}; its log:\n{tail(stderr_path)}")
    counts = summary.get("counts", {})
    if counts != {expect: len(repos)}:
        problems.append(f"task states {counts}; expected {{{expect!r}: {len(repos)}}}")
    if expect == "changed":
        problems += branch_problems(repos, f"ado/{name}")
    return AdoRun(name, measured, summary, problems)


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(f"    {line}" for line in text[-lines:])


# --- output --------------------------------------------------------------------------------


def mb(value: int) -> str:
    return f"{value / MB:.0f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """An aligned text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def category_rows(samples: Samples, categories: Iterable[str]) -> list[list[object]]:
    """One row per category seen: peak count, peak RSS / PSS / USS in MB, CPU seconds of its
    processes and of the children they waited for (git run by a Ray worker, for one)."""
    rows: list[list[object]] = []
    for category in categories:
        peak, _ = samples.peak([category])
        if peak.count:
            own, children = samples.cpu_split([category])
            row = [category, peak.count, mb(peak.rss), mb(peak.pss), mb(peak.uss)]
            rows.append([*row, f"{own:.1f}", f"{children:.1f}"])
    return rows


CATEGORY_HEADERS = [
    "category",
    "processes",
    "RSS MB",
    "PSS MB",
    "USS MB",
    "CPU s",
    "children's CPU s",
]
CATEGORY_ORDER = (
    "driver",
    "gcs_server",
    "raylet",
    "ray worker",
    "ray other",
    "agent init",
    "agent",
    "agent child",
    "git",
    "other",
)


def finish(
    as_json: bool, figures: dict[str, Any], report: Callable[[], None], problems: Sequence[str]
) -> int:
    """Print the figures (one JSON object, or `report`'s tables), then whether the timed
    work went wrong: the exit code, 1 if it did (a missed target is not an error)."""
    if as_json:
        print(json.dumps(figures, indent=2))
    else:
        report()
    if problems:
        log("\nTHE WORK FAILED, so these figures do not count:\n" + "\n".join(problems[:20]))
        return 1
    return 0
