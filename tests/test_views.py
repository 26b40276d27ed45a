"""Where a user reads results: `ado logs`, `ado diff`, `ado watch` and `ado batch`'s own
progress, through the real CLI on real runs (`--no-ray` over real git repositories)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from ado_ray import api, watch
from ado_ray.cli import main
from ado_ray.engine import panel
from ado_ray.engine.progress import POLL_S, LineProgress, LiveProgress
from ado_ray.engine.sandbox import CappedLog
from ado_ray.logs import MARKER, LogTail
from ado_ray.models import TaskState
from tests.conftest import create_repo

ADO = [sys.executable, "-m", "ado_ray"]

# Counts its attempts per repository (in the directory given), says so on stdout and
# stderr; `beta` fails its first attempt (class agent), `gamma` floods its capped log,
# `delta` changes nothing, the others edit their checkout.
AGENT = """
import pathlib, sys
name, counts = sys.argv[1], pathlib.Path(sys.argv[2])
counter = counts / name
attempt = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(attempt))
print(f"{name} attempt {attempt} says hello", flush=True)
print(f"{name} attempt {attempt} complains", file=sys.stderr, flush=True)
if name == "beta" and attempt == 1:
    sys.exit(3)
if name == "gamma":
    for i in range(400):
        print(f"gamma line {i:04d} " + "x" * 40)
if name != "delta":
    pathlib.Path("CHANGED.txt").write_text(f"changed by {name}\\n")
    pathlib.Path("README.md").rename("README.txt")
"""
NAMES = ["alpha-service", "alpha-web", "beta", "gamma", "delta"]
LOG_CAP_MB = 0.005  # 5 kB: gamma's 21 kB are cut


def cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)


def make_run(
    root: Path, repos: list[Path], cmd: str, progress: Any = None, **overrides: Any
) -> tuple[str, dict[str, str], Any]:
    """A `--no-ray` run over `repos`: its id, the environment for `ado`, its result."""
    repo_list = root / "repos.txt"
    repo_list.write_text("".join(f"{repo}\n" for repo in repos))
    settings = {
        "state": str(root / "state.db"),
        "work_root": str(root / "work"),
        "parallel": 2,
        "no_ray": True,
        "name": "views",
        **overrides,
    }
    settings["agent"] = {"cmd": cmd, **overrides.get("agent", {})}
    out = io.StringIO()
    result = api.start(repo_list, api.ConfigSources(overrides=settings), out, progress)
    env = {"ADO_STATE": settings["state"], "ADO_WORK_ROOT": settings["work_root"]}
    return result.run.run_id, env, result


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, str], Path]]:
    """Five repositories; beta failed once (agent) and passed on `resume --retry-failed`."""
    root = tmp_path_factory.mktemp("views")
    repos = [create_repo(root / "repos" / name) for name in NAMES]
    agent = root / "agent.py"
    agent.write_text(AGENT)
    counts = root / "counts"
    counts.mkdir()
    cmd = f"{sys.executable} {agent} {{repo_name}} {counts}"
    agent_settings = {"log_cap_mb": LOG_CAP_MB}
    run_id, env, first = make_run(root, repos, cmd, max_attempts=1, agent=agent_settings)
    assert first.counts == {"changed": 3, "failed": 1, "no_change": 1}
    resumed = cli(env, "resume", run_id, "--retry-failed", "--no-ray")
    assert resumed.exit_code == 0, resumed.output
    yield run_id, env, root


# --- ado logs -------------------------------------------------------------------------------


def test_logs_show_the_last_attempt_or_the_one_asked_for(
    finished: tuple[str, dict[str, str], Path],
) -> None:
    run_id, env, _ = finished
    last = cli(env, "logs", run_id, "beta")
    assert last.exit_code == 0, last.stderr
    assert last.stdout == "beta attempt 2 says hello\n"
    first = cli(env, "logs", run_id, "beta", "--attempt", "1")
    assert first.exit_code == 0 and first.stdout == "beta attempt 1 says hello\n"
    err = cli(env, "logs", run_id, "beta", "--attempt", "1", "--stderr")
    assert err.exit_code == 0 and err.stdout == "beta attempt 1 complains\n"
    missing = cli(env, "logs", run_id, "beta", "--attempt", "3")
    assert missing.exit_code == 2
    assert (
        "beta in run" in missing.stderr and "no attempt 3; expected one of: 1, 2" in missing.stderr
    )


def test_logs_find_a_repository_by_a_unique_part_and_list_candidates_when_ambiguous(
    finished: tuple[str, dict[str, str], Path],
) -> None:
    run_id, env, root = finished
    by_part = cli(env, "logs", run_id, "web")  # a substring of alpha-web only
    assert by_part.exit_code == 0 and by_part.stdout == "alpha-web attempt 1 says hello\n"
    by_url = cli(env, "logs", run_id[:6], str(root / "repos" / "alpha-service"))
    assert by_url.stdout == "alpha-service attempt 1 says hello\n"
    ambiguous = cli(env, "logs", run_id, "alpha")
    assert ambiguous.exit_code == 2 and ambiguous.stdout == ""
    assert "'alpha' matches 2 repositories" in ambiguous.stderr
    assert "alpha-service (" in ambiguous.stderr and "alpha-web (" in ambiguous.stderr
    unknown = cli(env, "logs", run_id, "zeta")
    assert unknown.exit_code == 2
    assert "expected one of its 5: alpha-service, alpha-web, beta, gamma, delta" in unknown.stderr


def test_a_capped_log_is_printed_as_it_is(finished: tuple[str, dict[str, str], Path]) -> None:
    run_id, env, _ = finished
    shown = CliRunner(env=env).invoke(main, ["logs", run_id, "gamma"])
    summary = api.summary(run_id, api.ConfigSources(overrides={"state": env["ADO_STATE"]}))
    (gamma,) = [task for task in summary["tasks"] if task["name"] == "gamma"]
    log = Path(gamma["sessions"][-1]["log"])
    assert shown.exit_code == 0
    assert shown.stdout_bytes == log.read_bytes()
    assert len(shown.stdout_bytes) < 1.5 * LOG_CAP_MB * 2**20
    found = MARKER.search(shown.stdout_bytes)
    assert found is not None and int(found.group(1)) > 10_000
    assert shown.stdout_bytes.startswith(b"gamma attempt 1 says hello\ngamma line 0000 ")
    assert shown.stdout_bytes.endswith(b"gamma line 0399 " + b"x" * 40 + b"\n")


def test_logs_of_a_task_that_ran_elsewhere_say_where_they_are(
    finished: tuple[str, dict[str, str], Path],
) -> None:
    run_id, env, root = finished
    elsewhere = {**env, "ADO_WORK_ROOT": str(root / "other")}  # the path is what the store says
    work = root / "work"
    moved = root / "work-away"
    work.rename(moved)  # as seen from a machine without that node's disk
    try:
        shown = cli(elsewhere, "logs", run_id, "alpha-web", "--stderr")
    finally:
        moved.rename(work)
    assert shown.exit_code == 1
    assert "the stderr log of attempt 1 of alpha-web is" in shown.stderr
    assert str(work / "runs" / run_id) in shown.stderr and "attempt-1.stderr.log" in shown.stderr
    assert "not on this machine" in shown.stderr and "ado-runner-local" in shown.stderr


def test_a_task_without_a_change_has_its_log_too(
    finished: tuple[str, dict[str, str], Path],
) -> None:
    run_id, env, _ = finished
    shown = cli(env, "logs", run_id, "delta", "--stderr")
    assert shown.exit_code == 0 and shown.stdout == "delta attempt 1 complains\n"


# --- ado diff -------------------------------------------------------------------------------


def expected_diff(repo: Path, *form: str) -> str:
    """What git itself says of the run's branch in the repository (its output unstripped)."""
    args = ["git", "diff", "--no-color", "--find-renames", *form, "main", "ado/views"]
    return subprocess.run(args, cwd=repo, check=True, capture_output=True, text=True).stdout


def test_diff_is_git_diff_of_the_branch_and_lists_tasks_without_a_commit(
    finished: tuple[str, dict[str, str], Path],
) -> None:
    run_id, env, root = finished
    repos = root / "repos"
    one = cli(env, "diff", run_id, "alpha-web")
    assert one.exit_code == 0, one.stderr
    head, _, patch = one.stdout.partition("\n")
    assert head.startswith(f"# alpha-web {repos / 'alpha-web'} ado/views ")
    assert patch == expected_diff(repos / "alpha-web")
    assert "rename from README.md" in patch and "+changed by alpha-web" in patch
    stat = cli(env, "diff", run_id, "alpha-web", "--stat")
    assert stat.stdout.partition("\n")[2] == expected_diff(repos / "alpha-web", "--stat")

    every = cli(env, "diff", run_id)
    assert every.exit_code == 0, every.stderr
    headers = [line.split()[1] for line in every.stdout.splitlines() if line.startswith("# ")]
    assert headers == ["alpha-service", "alpha-web", "beta", "gamma"]
    for name in headers:
        assert expected_diff(repos / name) in every.stdout
    assert every.stderr == "delta: no commit (no_change)\n"


def test_diff_needs_neither_the_workspace_nor_the_clone_cache(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> None:
    repo = make_repo("solo", {"a.txt": "one\n", "b.txt": "two\n"})
    edit = "import pathlib; pathlib.Path('a.txt').write_text('uno\\n'); pathlib.Path('c').touch()"
    run_id, env, result = make_run(tmp_path, [repo], script("edit", edit))
    assert result.counts == {"changed": 1}
    shutil.rmtree(tmp_path / "work")  # the workspaces, the logs and the clone cache
    shown = cli(env, "diff", run_id, "solo")
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.partition("\n")[2] == expected_diff(repo)
    stat = cli(env, "diff", run_id, "--stat")
    assert stat.stdout.partition("\n")[2] == expected_diff(repo, "--stat")


def test_a_commit_over_the_bundle_cap_comes_from_its_workspace_while_there_is_one(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> None:
    repo = make_repo("big")
    write = "import pathlib; pathlib.Path('big.txt').write_text('line\\n' * 1000)"
    run_id, env, result = make_run(
        tmp_path, [repo], script("big", write), dry_run=True, publish={"bundle_max_mb": 1e-6}
    )
    assert result.counts == {"changed": 1}
    shown = cli(env, "diff", run_id, "big", "--stat")
    assert shown.exit_code == 0, shown.stderr
    assert "big.txt | 1000 +" in shown.stdout
    shutil.rmtree(tmp_path / "work")
    gone = cli(env, "diff", run_id, "big")
    assert gone.exit_code == 1 and gone.stdout == ""
    assert "big: commit " in gone.stderr
    assert "no bundle of it (it was over publish.bundle_max_mb)" in gone.stderr
    assert "is not on this machine" in gone.stderr


# --- ado watch ------------------------------------------------------------------------------


def test_watch_of_a_finished_run_prints_its_final_state_and_exits_0(
    finished: tuple[str, dict[str, str], Path],
) -> None:
    run_id, env, _ = finished
    shown = cli(env, "watch", run_id)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0] == f"views ({run_id}) · finished · 5/5 done · changed 4, no_change 1"
    assert lines[1:] == [
        f"  no_change {name}" if name == "delta" else line
        for name, line in zip(NAMES, lines[1:], strict=True)
    ]
    for name, line in zip(NAMES, lines[1:], strict=True):
        if name != "delta":
            assert re.fullmatch(rf"  changed   {name} [0-9a-f]{{10}} on ado/views", line), line

    out = io.StringIO()
    sources = api.ConfigSources(overrides={"state": env["ADO_STATE"]})
    assert watch.watch(run_id, sources, out, live=True) == 0
    text = out.getvalue()
    assert f"ado views ({run_id}) · finished · 5/5 done · elapsed " in text
    for name in NAMES:
        assert re.search(rf"│ {re.escape(name)} +│ (changed|no_change) ", text), text


# A slow agent: a line every 0.1 s until the gate file appears, then an edit.
TICKING = """
import os, pathlib, sys, time
i = 0
while not os.path.exists(sys.argv[2]):
    print(f"{sys.argv[1]} tick {i}", flush=True)
    i += 1
    time.sleep(0.1)
print(f"{sys.argv[1]} done", flush=True)
pathlib.Path("done.txt").write_text("done\\n")
"""


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


@pytest.mark.e2e
def test_watch_and_logs_follow_a_run_in_progress_until_it_ends(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> None:
    repos = [make_repo(name) for name in ("north", "south")]
    (tmp_path / "repos.txt").write_text("".join(f"{r}\n" for r in repos))
    gate = tmp_path / "gate"
    env = {**os.environ, "ADO_STATE": str(tmp_path / "s.db"), "ADO_WORK_ROOT": str(tmp_path / "w")}
    cmd = f"{script('ticking', TICKING)} {{repo_name}} {gate}"

    def ado(*args: str, out: Any = subprocess.PIPE) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*ADO, *args], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.PIPE
        )

    batch = ado("batch", "repos.txt", "--no-ray", "--name", "slow", "-j", "2", "--cmd", cmd)
    procs = [batch]
    try:
        state = tmp_path / "s.db"
        wait_for(state.exists, "the state store")
        store_sources = api.ConfigSources(overrides={"state": str(state)})
        wait_for(lambda: bool(api.list_runs(store_sources)), "the run")
        run_id = api.list_runs(store_sources)[0]["run_id"]
        watched = tmp_path / "watch.out"
        with watched.open("wb") as sink:
            watcher = ado("watch", run_id, "--every", "0.2", out=sink)
        procs.append(watcher)
        follower = ado("logs", run_id, "nor", "--follow")
        procs.append(follower)
        wait_for(lambda: "in flight: " in watched.read_text(), "watch's in-flight line")
        wait_for(
            lambda: (
                re.search(
                    r"in flight: (north|south) running \S+, (north|south) running",
                    watched.read_text(),
                )
                is not None
            ),
            "both repositories running in watch",
        )
        assert watcher.poll() is None and follower.poll() is None  # both follow the run
        gate.touch()
        out, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        _, watch_err = watcher.communicate(timeout=60)
        assert watcher.returncode == 0, watch_err
        batch.communicate(timeout=60)
        assert batch.returncode == 0
    finally:
        gate.touch()
        for proc in procs:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
    lines = out.decode().splitlines()
    assert lines[0] == "north tick 0" and lines[-1] == "north done"
    assert lines[1:-1] == [f"north tick {i}" for i in range(1, len(lines) - 1)]
    text = watched.read_text()
    first = text.splitlines()[0]
    assert first.startswith(f"slow ({run_id}) · running · 0/2 done · ")
    assert f"slow ({run_id}) · finished · 2/2 done · changed 2" in text
    for name in ("north", "south"):
        assert re.search(rf"^  changed   {name} [0-9a-f]{{10}} on ado/slow", text, re.M), text


# --- progress of ado batch ------------------------------------------------------------------

SUMMARY = re.compile(r"^(\d+)/(\d+) done · elapsed \S+(?:, eta \S+)? · (.+)$")
QUICK = (
    "import pathlib, sys, time; time.sleep(float(sys.argv[1])); pathlib.Path('f').write_text('x')"
)


def parse_counts(text: str) -> dict[str, int]:
    return {state: int(n) for state, n in (part.split() for part in text.split(", "))}


def test_line_progress_counts_add_up_and_a_table_ends_it(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> None:
    repos = [make_repo(f"p{i}") for i in range(5)]
    out = io.StringIO()
    progress = LineProgress(out, every_s=0)  # a summary at every look at the store
    cmd = script("quick", QUICK) + " 1.0"
    run_id, _, result = make_run(tmp_path, repos, cmd, progress, dry_run=True)
    assert result.counts == {"changed": 5}
    lines = out.getvalue().splitlines()
    finished = [line for line in lines if line.startswith("[")]
    assert [line.split("]")[0] for line in finished] == [f"[{i}/5" for i in range(1, 6)]
    assert all(
        re.match(r"\[\d/5\] changed   p\d [0-9a-f]{10} on ado/views \(not pushed\)$", line)
        for line in finished
    )
    summaries = [SUMMARY.match(line) for line in lines]
    seen = [m for m in summaries if m]
    assert len(seen) >= 3, lines
    for found in seen:
        done, total, counts = int(found[1]), int(found[2]), parse_counts(found[3])
        assert total == 5 and sum(counts.values()) == 5, found[0]
        assert done == sum(n for s, n in counts.items() if TaskState(s).terminal), found[0]
        assert counts.get("running", 0) <= 2  # --parallel 2: agents running, never more
    assert seen[-1][0].startswith("5/5 done") and seen[-1][3] == "changed 5"
    assert any("running" in m[3] for m in seen)  # the store's phases, seen while running
    table = "\n".join(lines[lines.index(seen[-1][0]) + 1 :])
    assert f"views ({run_id}) · changed 5" in table
    for i in range(5):
        assert re.search(
            rf"│ p{i} +│ changed +│ 1 +│ \d+s +│ [0-9a-f]{{10}} │ ado/views, not pushed", table
        )


class RecordingLive(LiveProgress):
    """The live panel rendered to text at every refresh, as a terminal would show it."""

    def __init__(self, stream: io.StringIO) -> None:
        super().__init__(stream, Console(file=stream, width=100))
        self.panels: list[str] = []
        self.handed: list[int] = []  # tasks handed to the runners at each refresh

    def refresh(self) -> None:
        super().refresh()
        if self.live_on:
            shot = Console(file=io.StringIO(), width=100)
            shot.print(self._render())
            self.panels.append(shot.file.getvalue())  # type: ignore[attr-defined]
            self.handed.append(len(self.inflight))


def check_panel(text: str, total: int) -> dict[str, int]:
    """The panel's counts; they add up, and the repositories in flight are those counted."""
    head, counts_line, *rest = text.splitlines()
    found = re.search(r"· (\d+)/(\d+) done · elapsed \S+", head)
    assert found and int(found[2]) == total, head
    counts = {s: int(n) for s, n in re.findall(r"([a-z_]+) (\d+)", counts_line)}
    assert sum(counts.values()) == total, text
    assert int(found[1]) == sum(n for s, n in counts.items() if TaskState(s).terminal), text
    active = sum(counts.get(s.value, 0) for s in panel.ACTIVE)
    flying = [
        line for line in rest if re.match(r"  (preparing|running|collecting|publishing) ", line)
    ]
    assert len(flying) == active, text
    return counts


def test_live_panel_counts_add_up_and_the_run_ends_with_a_table(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> None:
    repos = [make_repo(f"q{i}") for i in range(4)]
    out = io.StringIO()
    progress = RecordingLive(out)
    # Agents longer than the panel's store poll (progress.POLL_S), so each one's running
    # phase spans a poll: a shorter one can finish between two and never be seen running.
    cmd = script("quick", QUICK) + f" {POLL_S + 0.5}"
    run_id, _, result = make_run(tmp_path, repos, cmd, progress)
    assert result.counts == {"changed": 4}
    counts = [check_panel(text, 4) for text in progress.panels]
    assert any(c.get("running") for c in counts) and counts[-1].get("changed", 0) >= 3
    assert any("in flight (2):" in text for text in progress.panels)
    text = out.getvalue()
    finished = re.findall(r"^\[(\d)/4\] changed   q\d [0-9a-f]{10} on ado/views$", text, re.M)
    assert finished == ["1", "2", "3", "4"]
    assert f"ado views ({run_id}) · finished · 4/4 done · elapsed " in text
    for i in range(4):
        assert re.search(rf"│ q{i} +│ changed +│ 1 ", text)


@pytest.mark.integration
def test_on_ray_running_counts_agents_not_tasks_waiting_at_a_runner(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    repos = [make_repo(f"w{i}") for i in range(4)]
    progress = RecordingLive(io.StringIO())
    cmd = script("quick", QUICK) + " 1.0"
    _, _, result = make_run(tmp_path, repos, cmd, progress, parallel=1, no_ray=False)
    assert result.counts == {"changed": 4}
    assert max(progress.handed) > 1  # the driver hands out more than --parallel ...
    for text in progress.panels:  # ... but one agent runs, and the panel says so
        counts = check_panel(text, 4)
        assert sum(counts.get(s.value, 0) for s in panel.ACTIVE) <= 1, text


def test_eta_spreads_the_mean_duration_over_the_parallelism() -> None:
    assert panel.estimate([], [1.0], 3, 2) is None
    assert panel.estimate([10.0], [], 4, 2) == 20.0
    assert panel.estimate([10.0, 20.0], [5.0, 30.0], 2, 2) == pytest.approx((10 + 0 + 30) / 2)
    assert panel.estimate([10.0], [2.0], 0, 4) == 8.0  # the last one in flight


# --- following a capped log -----------------------------------------------------------------


def stream_lines(count: int) -> list[bytes]:
    return [f"line {i:05d} {'y' * (i % 37)}\n".encode() for i in range(count)]


@pytest.mark.parametrize("every", [1, 25, 10_000])
def test_following_a_log_the_runner_cuts_back_loses_no_byte_unannounced(
    tmp_path: Path, every: int
) -> None:
    """Read after every write, every 25th, or only at the end: the stream comes out whole
    where it was read in time, and each gap is one marker saying how many bytes."""
    path = tmp_path / "attempt-1.stdout.log"
    lines = stream_lines(3000)
    stream = b"".join(lines)
    cap = 4000
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    tail, got = LogTail(path, cap), []
    try:
        log = CappedLog(fd, cap)
        for i, line in enumerate(lines):
            log.write(line)
            if i % every == 0:
                got.append(tail.read())
        log.close()
    finally:
        os.close(fd)
    got.append(tail.read())
    shown = b"".join(got)
    assert tail.read() == b""
    if every == 1:
        assert shown == stream
    if every == 10_000:
        assert shown == path.read_bytes()
    seen = 0
    for at, piece in enumerate(re.split(MARKER.pattern, shown)):
        if at % 2 == 0:  # text of the stream, where it was
            assert stream[seen : seen + len(piece)] == piece
            seen += len(piece)
        else:  # a marker: that many bytes skipped
            seen += int(piece)
    assert seen == len(stream)
    assert len(path.read_bytes()) <= 1.5 * cap + 100
