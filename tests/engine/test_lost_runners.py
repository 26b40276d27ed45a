"""Runs that lose a runner or a whole node mid-run, with real processes killed by SIGKILL.

A lost runner costs only the agent attempts that were running on it: its tasks go back to
the queue and finish on another runner, and tasks that had not started use no attempt.
The node test starts a Ray cluster of its own (a head and one worker node on free ports),
so the session's Ray, and every other Ray on this machine, is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import GATED, git
from tests.servers import free_port
from tests.test_cli import db_rows, spawn

pytestmark = pytest.mark.e2e
RAY = str(Path(sys.executable).parent / "ray")


def gated_fleet(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str], count: int
) -> tuple[list[Path], str, Path]:
    """`count` repositories, the --cmd of the gated agent, and its gate file (closed)."""
    repos = [make_repo(f"r{i}") for i in range(count)]
    log = tmp_path / "agent-runs.log"
    (tmp_path / "repos.txt").write_text("".join(f"{r} log={log}\n" for r in repos))
    gate = tmp_path / "gate"
    return repos, f"{script('gated', GATED)} {{repo_name}} {gate}", gate


def starts(tmp_path: Path) -> list[str]:
    log = tmp_path / "agent-runs.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split()[1] for line in lines if line.startswith("start ")]


def wait_for(
    predicate: Callable[[], bool], driver: subprocess.Popen[str], timeout: float = 120
) -> None:
    """Poll `predicate`; fail with the driver's output if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if driver.poll() is not None or time.monotonic() > deadline:
            if driver.poll() is None:
                driver.kill()
            out, err = driver.communicate()
            raise AssertionError(
                f"condition not reached (driver: {driver.returncode})\n{out}\n{err}"
            )
        time.sleep(0.1)


def agents(script_path: str) -> dict[str, psutil.Process]:
    """This test's agent processes (their command line holds `script_path`), by repo name."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if script_path in argv and argv.index(script_path) + 1 < len(argv):
            found[argv[argv.index(script_path) + 1]] = proc
    return found


def runner_of(agent: psutil.Process) -> psutil.Process:
    """The Ray worker (`ray::...`) the agent runs under: its runner actor."""
    for parent in agent.parents():
        with contextlib.suppress(psutil.Error):
            if " ".join(parent.cmdline()).startswith("ray::"):
                return parent
    raise AssertionError(f"agent {agent.pid} has no Ray worker among its parents")


def finish(driver: subprocess.Popen[str], timeout: float = 240) -> tuple[str, str]:
    try:
        return driver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        out, err = driver.communicate()
        raise AssertionError(f"the driver did not finish:\n{out}\n{err}") from None


def test_a_killed_runner_costs_only_its_running_attempts_and_json_stays_clean(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    repos, cmd, gate = gated_fleet(tmp_path, make_repo, script, 8)
    (tmp_path / "ado.yaml").write_text("ray:\n  slots_per_runner: 2\n")
    # 4 slots over two runners of 2; 6 tasks in flight: each runner has one waiting for a slot.
    driver = spawn(
        tmp_path,
        "batch",
        "repos.txt",
        "--json",
        "--parallel",
        "4",
        "--max-attempts",
        "2",
        "--name",
        "lost",
        "--ray-address",
        ray_address,
        "--cmd",
        cmd,
    )
    try:
        wait_for(lambda: len(starts(tmp_path)) == 4, driver)
        script_path = cmd.split()[1]
        running = agents(script_path)
        victim = runner_of(next(iter(running.values())))
        on_victim = {name for name, proc in running.items() if runner_of(proc).pid == victim.pid}
        assert len(on_victim) == 2, running
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        gate.touch()
    finally:
        out, err = finish(driver)
    assert driver.returncode == 0, out + err
    summary = json.loads(out)  # nothing but the JSON object, whatever Ray printed:
    assert "A worker died" in err  # Ray's line about the killed runner went to stderr
    assert summary["counts"] == {"changed": 8}, err
    assert "lost: ActorDiedError; its tasks go back to the queue" in err
    for repo in repos:
        assert len(git(repo, "rev-list", "main..ado/lost").split()) == 1, repo
        assert git(repo, "show", "ado/lost:change.txt") == repo.name
    attempts = {
        Path(key).name: n for key, n in db_rows(tmp_path, "select repo_key, attempt from tasks")
    }
    # An agent killed with its runner spent one attempt; every other task, one in all.
    assert attempts == {r.name: 2 if r.name in on_victim else 1 for r in repos}
    assert sorted(starts(tmp_path)) == sorted([r.name for r in repos] + list(on_victim))


# --- a whole node lost ----------------------------------------------------------------------


class LocalCluster:
    """A Ray head (1 CPU) and one worker node (1 CPU) on this machine, on free ports, with a
    temp dir of their own; the GCS declares a silent node dead within about two seconds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp_dir = tempfile.mkdtemp(prefix="ado-lost-")  # short: unix socket paths
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ADO_"))}
        self.env.update(
            RAY_AUTH_MODE="disabled",
            RAY_USAGE_STATS_ENABLED="0",
            RAY_health_check_initial_delay_ms="0",
            RAY_health_check_period_ms="500",
            RAY_health_check_timeout_ms="500",
            RAY_health_check_failure_threshold="3",
        )
        self.head: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def _start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        ports = {
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
        }
        command = [
            RAY, "start", "--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
            "--object-store-memory", str(80 * 1024**2), "--temp-dir", self.temp_dir,
            "--disable-usage-stats", *args,
            *(str(part) for pair in ports.items() for part in pair),
        ]  # fmt: skip
        with (self.root / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                start_new_session=True,
            )  # fmt: skip

    def start(self, timeout: float = 120) -> LocalCluster:
        self.head = self._start(
            "head", "--head", f"--port={self.port}", "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
        )  # fmt: skip
        self.worker = self._start("worker", f"--address={self.address}")  # retries until up
        probe = (
            "import sys, time, ray\n"
            "ray.init(address=sys.argv[1])\n"
            "while sum(n['Alive'] for n in ray.nodes()) < 2:\n"
            "    time.sleep(0.2)\n"
        )
        try:
            subprocess.run(
                [sys.executable, "-c", probe, self.address],
                env=self.env,
                capture_output=True,
                timeout=timeout,
                check=True,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            raise RuntimeError(f"the two Ray nodes did not come up; see {self.root}") from exc
        return self

    def worker_processes(self) -> list[psutil.Process]:
        """The worker node: `ray start`, its raylet, the raylet's workers and their agents."""
        assert self.worker is not None
        root = psutil.Process(self.worker.pid)
        return [root, *root.children(recursive=True)]

    def kill_worker_node(self) -> None:
        procs = self.worker_processes()
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(procs, timeout=30)

    def stop(self) -> None:
        """Our processes only: each `ray start` leads a session of its own."""
        procs = []
        for leader in (self.worker, self.head):
            if leader is None:
                continue
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(leader.pid)
                procs += [root, *root.children(recursive=True)]
            procs += [
                p for p in psutil.process_iter() if _session(p) == leader.pid and p not in procs
            ]
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(procs, timeout=30)
        for leader in (self.worker, self.head):
            if leader is not None:
                leader.wait(timeout=30)
        subprocess.run(["rm", "-rf", self.temp_dir], check=False)


def _session(proc: psutil.Process) -> int | None:
    try:
        return os.getsid(proc.pid)
    except OSError:
        return None


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("two-nodes"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def test_the_work_of_a_lost_node_is_rescheduled_on_the_head(
    two_nodes: LocalCluster,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    repos, cmd, gate = gated_fleet(tmp_path, make_repo, script, 4)
    # Two runners of one slot that need a CPU each: one on the head, one on the worker node.
    (tmp_path / "ado.yaml").write_text("ray:\n  slots_per_runner: 1\n  runner_num_cpus: 1\n")
    env = {**two_nodes.env, "ADO_STATE": str(tmp_path / "state.db")}
    env["ADO_WORK_ROOT"] = str(tmp_path / "work")
    driver = subprocess.Popen(
        [sys.executable, "-m", "ado_ray", "batch", "repos.txt", "--parallel", "2",
         "--name", "node", "--ray-address", two_nodes.address, "--cmd", cmd],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(starts(tmp_path)) == 2, driver)
        on_worker = {
            name
            for name, proc in agents(cmd.split()[1]).items()
            if proc.pid in {p.pid for p in two_nodes.worker_processes()}
        }
        assert len(on_worker) == 1, "expected one agent on the worker node"
        two_nodes.kill_worker_node()
        gate.touch()
        out, err = finish(driver)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out + err
    # A node's loss reaches the driver as the actor's death or, first, as its being unreachable.
    assert re.search(r"lost: Actor(Died|Unavailable)Error; its tasks go back to the queue", out)
    for repo in repos:
        assert len(git(repo, "rev-list", "main..ado/node").split()) == 1, repo
        assert git(repo, "show", "ado/node:change.txt") == repo.name
    attempts = {
        Path(key).name: n for key, n in db_rows(tmp_path, "select repo_key, attempt from tasks")
    }
    assert attempts == {r.name: 2 if r.name in on_worker else 1 for r in repos}
