"""Runs that lose their servers: real Redis and PostgreSQL, stopped and started mid-run.

Each test gets a private Ray namespace, so the detached `ado-rate-limiter` actor it
creates (with its own backend settings) is not the one other tests use.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ado_ray import api
from ado_ray.engine.progress import LineProgress
from tests.conftest import git
from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration

# Appends "start|end <monotonic>" to a shared log under a lock, then edits the checkout.
AGENT = """
import fcntl, os, sys, time
def note(what):
    with open(os.environ["ADO_VAR_LOG"], "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{what} {time.time()}\\n")
note("start")
time.sleep(float(sys.argv[1]))
open("fixed.txt", "w").write("fixed")
note("end")
"""


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("fault-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path_factory.mktemp("fault-pg")) as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    pg_server.start()  # a test may have left it stopped
    name = f"faults_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.url(name)


def fleet(
    tmp_path: Path, make_repo: Callable[..., Path], count: int, prefix: str = "f"
) -> tuple[Path, Path]:
    log = tmp_path / f"{prefix}-agent.log"
    repo_list = tmp_path / f"{prefix}-repos.txt"
    repo_list.write_text("".join(f"{make_repo(f'{prefix}{i}')} log={log}\n" for i in range(count)))
    return repo_list, log


def events(log: Path) -> list[tuple[float, str]]:
    return sorted(
        (float(t), kind) for kind, t in (line.split() for line in log.read_text().splitlines())
    )


def peak_overlap(log: Path) -> int:
    running = peak = 0
    for _, kind in events(log):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    return peak


def in_background(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = target()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_redis_stopped_mid_run_admits_nothing_and_the_run_completes(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
    redis_server: RedisServer,
) -> None:
    repo_list, log = fleet(tmp_path, make_repo, 8)
    progress = io.StringIO()
    settings = {
        "state": str(tmp_path / "state.db"),
        "work_root": str(tmp_path / "work"),
        "parallel": 4,
        "agent": {"cmd": script("agent", AGENT) + " 0.3"},
        "limiter": {"backend": "redis", "url": redis_server.url},
        "limits": {"command": {"requests": ["3/1s"], "concurrency": 2}},
        "ray": {"namespace": f"faults-{uuid.uuid4().hex[:6]}"},
    }
    sources = api.ConfigSources(overrides=settings)
    thread, box = in_background(
        lambda: api.start(repo_list, sources, progress, LineProgress(progress, every_s=1))
    )
    wait_for(lambda: log.exists() and len(events(log)) >= 2)
    redis_server.stop()
    stopped_at = time.time()
    time.sleep(3)
    restarted_at = time.time()
    redis_server.start()
    thread.join(120)
    assert "error" not in box, box.get("error")
    result = box["result"]

    assert result.counts == {"changed": 8}
    starts = [t for t, kind in events(log) if kind == "start"]
    assert peak_overlap(log) <= 2
    # At most 3 starts in any 1 s window (0.15 s of slack for process start-up jitter).
    assert all(starts[i + 3] - starts[i] >= 0.85 for i in range(len(starts) - 3)), starts
    # Fail closed: nothing admitted while Redis was down (0.5 s for grants already in flight).
    assert not [t for t in starts if stopped_at + 0.5 < t < restarted_at], (
        stopped_at,
        restarted_at,
        starts,
    )
    assert "the limiter is unreachable since" in progress.getvalue()
    assert "the limiter answers again" in progress.getvalue()


def test_postgres_restarted_mid_run_loses_no_event(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
    pg_server: PostgresServer,
    pg_url: str,
) -> None:
    repo_list, log = fleet(tmp_path, make_repo, 8)
    progress = io.StringIO()
    settings = {
        "state": pg_url,
        "work_root": str(tmp_path / "work"),
        "parallel": 3,
        "agent": {"cmd": script("agent", AGENT) + " 0.4"},
        "ray": {"namespace": f"faults-{uuid.uuid4().hex[:6]}"},
    }
    sources = api.ConfigSources(overrides=settings)
    thread, box = in_background(
        lambda: api.start(repo_list, sources, progress, LineProgress(progress, every_s=1))
    )
    wait_for(lambda: log.exists() and sum(kind == "end" for _, kind in events(log)) >= 2)
    pg_server.stop()
    time.sleep(2.5)
    pg_server.start()
    thread.join(120)
    assert "error" not in box, box.get("error")
    assert box["result"].counts == {"changed": 8}
    assert "the store is unreachable since" in progress.getvalue()

    with psycopg.connect(pg_url) as conn:
        steps = conn.execute(
            "SELECT task_id, array_agg(step ORDER BY step) FROM checkpoints GROUP BY task_id"
        ).fetchall()
        sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()
    assert len(steps) == 8
    assert all(
        sorted(s) == ["agent_done", "committed", "prepared", "published", "pushed"]
        for _, s in steps
    )
    assert sessions == (8,)


def test_both_servers_down_at_start_exit_2_and_nothing_written(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    (tmp_path / "repos.txt").write_text(f"{make_repo('down')}\n")
    (tmp_path / "ado.yaml").write_text(
        'limiter: {backend: redis, url: "redis://:hunter2@127.0.0.1:1/0"}\n'
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ado_ray",
            "batch",
            "repos.txt",
            "--cmd",
            "true",
            "--no-ray",
            "--state",
            "postgresql://ado:hunter2@127.0.0.1:1/ado",
            "--work-root",
            "work",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (
        "state store:" in proc.stderr
        and "limiter: redis at redis://:***@127.0.0.1:1/0" in proc.stderr
    )
    assert "nothing was started" in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout
    assert not (tmp_path / "work").exists()


def test_two_drivers_share_one_store_and_one_set_of_limits(
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
    redis_server: RedisServer,
    pg_url: str,
) -> None:
    """Two `ado batch` processes (in-process runners, so Redis is all they share for limits)."""
    redis_server.start()
    log = tmp_path / "shared-agent.log"
    lists = []
    for prefix in ("a", "b"):
        repo_list = tmp_path / f"{prefix}.txt"
        repo_list.write_text("".join(f"{make_repo(f'{prefix}{i}')} log={log}\n" for i in range(4)))
        lists.append(repo_list)
    (tmp_path / "ado.yaml").write_text(
        f"state: {pg_url}\nlimiter: {{backend: redis, url: '{redis_server.url}'}}\n"
        "limits: {command: {concurrency: 2}}\n"
    )
    env = {**os.environ, "ADO_WORK_ROOT": str(tmp_path / "work")}
    cmd = script("agent", AGENT) + " 0.5"
    drivers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ado_ray",
                "batch",
                str(repo_list),
                "--no-ray",
                "--parallel",
                "3",
                "--cmd",
                cmd,
                "--json",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for repo_list in lists
    ]
    outputs = [driver.communicate(timeout=120) for driver in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outputs
    assert peak_overlap(log) <= 2  # six slots between them, two leases in Redis
    assert sum(kind == "start" for _, kind in events(log)) == 8
    listed = subprocess.run(
        [sys.executable, "-m", "ado_ray", "runs", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"changed": 4' in listed.stdout and listed.stdout.count('"run_id"') == 2
    for repo in ("a0", "b3"):
        assert git(tmp_path / "repos" / repo, "branch", "--list", "ado/*").strip()


def test_a_store_outage_beyond_the_limit_stops_the_run_and_it_resumes(
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
    pg_server: PostgresServer,
    pg_url: str,
) -> None:
    """The driver is a real `ado batch` process: it stops, says why, exits; `ado resume`
    (a new process) finishes the run once PostgreSQL is back."""
    repo_list, log = fleet(tmp_path, make_repo, 6, prefix="o")
    (tmp_path / "ado.yaml").write_text(
        f"state: {pg_url}\nparallel: 2\nno_ray: true\nstore_outage_limit_s: 2\n"
        f"interrupt_grace_s: 0\nwork_root: {tmp_path / 'work'}\n"
    )
    command = [sys.executable, "-m", "ado_ray"]
    driver = subprocess.Popen(
        [*command, "batch", str(repo_list), "--cmd", script("agent", AGENT) + " 0.5"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: log.exists() and sum(kind == "end" for _, kind in events(log)) >= 1)
    pg_server.stop()
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 1, out + err
    assert "unreachable for more than 2s, so the run stopped" in err and "ado resume" in err
    assert "the store is unreachable since" in out

    pg_server.start()
    with psycopg.connect(pg_url) as conn:
        (run_id,) = conn.execute("SELECT run_id FROM runs").fetchone() or ("",)
    resumed = subprocess.run(
        [*command, "resume", run_id, "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["counts"] == {"changed": 6}


# Logs "start|end <driver> <repo> <time>". Under driver A it takes argv[2] seconds; under
# driver B it waits for the gate file argv[3], so the test can hold B's run still.
TAKEOVER_AGENT = """
import fcntl, os, sys, time
who = os.environ.get("DRIVER", "?")
def note(what):
    with open(os.environ["ADO_VAR_LOG"], "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{what} {who} {sys.argv[1]} {time.time()}\\n")
note("start")
if who == "A":
    time.sleep(float(sys.argv[2]))
while who != "A" and not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
open("fixed.txt", "w").write("fixed")
note("end")
"""


def takeover_log(log: Path) -> list[tuple[str, str, str, float]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [(kind, who, repo, float(t)) for kind, who, repo, t in (line.split() for line in lines)]


def pg_rows(url: str) -> dict[str, Any]:
    """Every table's rows, and of the lease only its holder and generation (renewals move
    its times)."""
    with psycopg.connect(url) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename NOT IN ('run_locks', 'schema_version') ORDER BY tablename"
            )
        ]
        rows: dict[str, Any] = {
            table: sorted(map(repr, conn.execute(f"SELECT * FROM {table}").fetchall()))
            for table in tables
        }
        lease = "SELECT run_id, owner, generation FROM run_locks"
        rows["run_locks"] = conn.execute(lease).fetchall()
    return rows


def test_a_driver_that_loses_its_lease_in_an_outage_stops_and_its_late_writes_are_refused(
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
    pg_server: PostgresServer,
    pg_url: str,
) -> None:
    """Two `ado` processes on one PostgreSQL run. The store goes away for longer than the
    lease TTL: driver A notices it cannot renew, starts nothing more and stops its agents,
    while its unwritten events wait for the store. A is then paused (SIGSTOP: a frozen VM,
    a long GC pause) and the store comes back; driver B (`ado resume`) takes the run over.
    When A wakes up, its late writes are refused by the store: no row changes. B finishes
    the run, and every repository has exactly one commit."""
    repo_list, log = fleet(tmp_path, make_repo, 6, prefix="l")
    gate = tmp_path / "gate"
    (tmp_path / "ado.yaml").write_text(
        f"state: {pg_url}\nparallel: 2\nno_ray: true\nlease_ttl_s: 3\nstore_outage_limit_s: 120\n"
        f"work_root: {tmp_path / 'work'}\nname: lease\n"
    )
    cmd = f"{script('agent', TAKEOVER_AGENT)} {{repo_name}} 1.0 {gate}"
    command = [sys.executable, "-m", "ado_ray"]
    a_out, a_err = tmp_path / "a.out", tmp_path / "a.err"
    with a_out.open("w") as out, a_err.open("w") as err:
        driver_a = subprocess.Popen(
            [*command, "batch", str(repo_list), "--cmd", cmd, "--env-allow", "DRIVER"],
            cwd=tmp_path,
            env={**os.environ, "DRIVER": "A"},
            stdout=out,
            stderr=err,
        )
    driver_b: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: sum(e[0] == "end" for e in takeover_log(log)) >= 2, 120)
        with psycopg.connect(pg_url) as conn:
            (run_id, a_owner) = conn.execute("SELECT run_id, owner FROM run_locks").fetchone() or ()
        pg_server.stop()
        wait_for(lambda: "could not renew the lease of run" in a_out.read_text(), 60)
        noticed = time.time()
        driver_a.send_signal(signal.SIGSTOP)
        pg_server.start()

        driver_b = subprocess.Popen(
            [*command, "resume", run_id, "--json"],
            cwd=tmp_path,
            env={**os.environ, "DRIVER": "B"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: sum(e[:2] == ("start", "B") for e in takeover_log(log)) == 2, 120)
        (b_owner, generation) = pg_rows(pg_url)["run_locks"][0][1:]
        assert b_owner != a_owner and generation == 2
        before = pg_rows(pg_url)
        deadline = time.monotonic() + 60
        while True:  # B's last writes before its agents wait are in
            time.sleep(1)
            now = pg_rows(pg_url)
            if now == before:
                break
            assert time.monotonic() < deadline, "B's writes did not settle"
            before = now

        resumed_at = time.time()
        driver_a.send_signal(signal.SIGCONT)
        assert driver_a.wait(90) == 130, a_out.read_text() + a_err.read_text()
        assert pg_rows(pg_url) == before  # A's late writes were refused, every one
    finally:
        if driver_a.poll() is None:
            driver_a.send_signal(signal.SIGCONT)
            driver_a.kill()
            driver_a.wait()
        gate.touch()
    assert driver_b is not None
    b_out, b_err = driver_b.communicate(timeout=120)
    assert driver_b.returncode == 0, b_out + b_err

    a_said = a_out.read_text() + a_err.read_text()
    assert "starting nothing more, stopping the running agents now" in a_said
    assert "refused a batch of" in a_said and f"held by {b_owner}" in a_said
    assert f"ado resume {run_id}" in a_said
    a_starts = [t for kind, who, _, t in takeover_log(log) if (kind, who) == ("start", "A")]
    assert a_starts and max(a_starts) < resumed_at  # nothing started once it woke up
    assert max(a_starts) < noticed + 1  # nor after it noticed (1 s: an agent's start-up)
    assert json.loads(b_out)["counts"] == {"changed": 6}
    for i in range(6):
        assert len(git(tmp_path / "repos" / f"l{i}", "rev-list", "main..ado/lease").split()) == 1
