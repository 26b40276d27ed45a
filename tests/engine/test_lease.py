"""The run lease as the driver holds it: renewal, loss, fencing in a real run, and what
`watch`, `runs` and `status` say about a run whose driver is gone.

PostgreSQL outages with two driver processes are in test_faults.py.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from ado_ray import api
from ado_ray.engine.lease import driver_gone, run_lock
from ado_ray.engine.progress import LineProgress
from ado_ray.errors import LeaseLostError, RunLockedError
from ado_ray.models import RunStatus
from ado_ray.store import Lease, RunRecord
from ado_ray.store.sqlite import SQLiteStore
from tests.conftest import GATED, git
from tests.store.conftest import RUN, build_run, create_run

ADO = [sys.executable, "-m", "ado_ray"]


def wait_for(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout}s"
        time.sleep(0.05)


def gated_fleet(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str], count: int
) -> tuple[list[Path], str, Path, Path]:
    """`count` repositories in repos.txt, the gated agent's --cmd, its gate and its log."""
    repos = [make_repo(f"g{i}") for i in range(count)]
    log = tmp_path / "agent-runs.log"
    (tmp_path / "repos.txt").write_text("".join(f"{r} log={log}\n" for r in repos))
    gate = tmp_path / "gate"
    return repos, f"{script('gated', GATED)} {{repo_name}} {gate}", gate, log


def log_lines(log: Path, kind: str) -> list[list[str]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split()[1:] for line in lines if line.startswith(kind + " ")]


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def take_over(path: Path, run_id: str, owner: str) -> None:
    """Another driver takes the run's lease, in one statement, as acquire_run_lock does with
    an expired one (here it need not have expired, so the holder's renewals cannot win)."""
    now = datetime.now(UTC)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE run_locks SET owner = ?, generation = generation + 1, renewed_at = ?,"
            " expires_at = ? WHERE run_id = ?",
            (owner, now.isoformat(), (now + timedelta(minutes=10)).isoformat(), run_id),
        )
    conn.close()


# --- run_lock ----------------------------------------------------------------------------------


def test_the_lease_is_renewed_and_lost_to_a_takeover(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "state.db") as store:
        store.migrate()
        create_run(store)
        with run_lock(store, RUN, ttl_s=1.5) as held:
            first = store.get_run(RUN).lease
            assert first is not None and first.owner == held.owner
            wait_for(lambda: _renewed_at(store) != first.renewed_at, 10, "a renewal")
            assert store.acquire_run_lock(RUN, "driver-b", 60).owner == held.owner
            refused = f"run {RUN} is being driven by {held.owner}"
            with pytest.raises(RunLockedError, match=refused), run_lock(store, RUN):
                pass
            time.sleep(2)  # longer than the TTL: the renewals keep it
            assert held.lost() is None
            take_over(tmp_path / "state.db", RUN, "driver-b")
            wait_for(lambda: held.lost() is not None, 10, "the loss")
            assert f"the lease of run {RUN} was taken over by driver-b" in str(held.lost())
            assert "(generation 2; this driver had 1)" in str(held.lost())
        lease = store.get_run(RUN).lease
        assert lease is not None and lease.owner == "driver-b"  # not released by the loser


def _renewed_at(store: SQLiteStore) -> datetime | None:
    lease = store.get_run(RUN).lease
    return lease.renewed_at if lease else None


def test_a_lease_that_cannot_be_renewed_in_time_is_lost_when_it_runs_out(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SQLiteStore(path, busy_timeout_s=0.1) as store:
        store.migrate()
        create_run(store)
        with run_lock(store, RUN, ttl_s=2) as held:
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")  # no renewal can write
            blocked_at = time.monotonic()
            assert held.lost() is None
            wait_for(lambda: held.lost() is not None, 10, "the loss")
            assert time.monotonic() - blocked_at <= 2 + 0.5  # at most a TTL after the block
            assert f"could not renew the lease of run {RUN} since " in str(held.lost())
            assert "database is locked" in str(held.lost())
            blocker.execute("ROLLBACK")
            blocker.close()
            time.sleep(1)  # the store works again: lost stays lost, and renewal has stopped
            assert held.lost() is not None
        lease = store.get_run(RUN).lease
        assert lease is not None and lease.owner == ""  # nobody took it: released at the end


def test_driver_gone() -> None:
    host = socket.gethostname()
    now = datetime.now(UTC)
    run, _ = build_run(created_at=now)

    def with_lease(owner: str, expired: bool, status: RunStatus = RunStatus.RUNNING) -> RunRecord:
        lease = Lease(
            RUN, owner, 1, now - timedelta(seconds=5), now + timedelta(seconds=25), expired
        )
        return replace(run, status=status, lease=lease)

    alive = f"{host}:{os.getpid()}:abcd1234"
    dead = f"{host}:{_dead_pid()}:abcd1234"
    elsewhere = "other-host:1:abcd1234"
    assert driver_gone(with_lease(alive, False)) is None
    assert driver_gone(with_lease(elsewhere, False)) is None  # can't tell: until it expires
    assert driver_gone(with_lease(elsewhere, True)) == now - timedelta(seconds=5)
    assert driver_gone(with_lease(dead, False)) == now - timedelta(seconds=5)  # at once
    assert driver_gone(with_lease("", True)) is not None  # ended, but the run says running
    assert driver_gone(with_lease(dead, True, RunStatus.INTERRUPTED)) is None
    assert driver_gone(run) is None  # just created: a driver is about to take it
    old = replace(run, created_at=now - timedelta(minutes=5))
    assert driver_gone(old) == old.created_at


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- a driver that loses its lease mid-run -----------------------------------------------------


def test_a_driver_whose_lease_is_taken_over_stops_at_once_and_writes_nothing_more(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> None:
    """In-process driver (--no-ray), SQLite: the test plays the second driver. The first
    stops its agents, starts no more, and the store refuses what it still sends; once the
    second lets go, a resume finishes the run with one commit per repository."""
    repos, cmd, gate, log = gated_fleet(tmp_path, make_repo, script, 4)
    state = tmp_path / "state.db"
    settings = {
        "state": str(state),
        "work_root": str(tmp_path / "work"),
        "parallel": 2,
        "no_ray": True,
        "lease_ttl_s": 1.5,
        "interrupt_grace_s": 60,  # not used: a lost lease stops agents without grace
        "agent": {"cmd": cmd},
        "name": "fenced",
    }
    sources = api.ConfigSources(overrides=settings)
    progress = io.StringIO()
    box: dict[str, Any] = {}

    def drive() -> None:
        try:
            box["result"] = api.start(
                tmp_path / "repos.txt", sources, progress, LineProgress(progress, every_s=1)
            )
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    wait_for(lambda: len(log_lines(log, "start")) == 2, 60, "two agents running")
    with SQLiteStore(state) as store:
        (run,) = store.list_runs()
        assert run.lease is not None and run.lease.owner.startswith(socket.gethostname())
        take_over(state, run.run_id, "driver-b")
        before = dump(state)
        thread.join(60)
        assert not thread.is_alive()
        assert isinstance(box.get("error"), LeaseLostError), box
        message = str(box["error"])
        assert "driver-b" in message and f"ado resume {run.run_id}" in message
        assert "stopping the running agents now" in progress.getvalue()
        assert dump(state) == before  # nothing it sent after the takeover was applied
        assert len(log_lines(log, "start")) == 2 and not log_lines(log, "end")
        wait_for(lambda: not agents(str(tmp_path / "agents")), 30, "the agents' end")

        store.release_run_lock(run.run_id, "driver-b")
    gate.touch()
    result = api.resume(run.run_id, sources, False, io.StringIO())
    assert result.counts == {"changed": 4}
    for repo in repos:
        assert len(git(repo, "rev-list", "main..ado/fenced").split()) == 1, repo


def agents(marker: str) -> list[psutil.Process]:
    """Live processes whose command line mentions `marker` (this test's agent scripts)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(marker in a for a in cmdline):
            found.append(proc)
    return found


# --- a killed driver, seen from watch, runs and status ------------------------------------------


@pytest.mark.e2e
def test_watch_runs_and_status_tell_a_killed_driver_and_how_to_resume(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> None:
    _, cmd, _, log = gated_fleet(tmp_path, make_repo, script, 2)
    env = {**os.environ, "ADO_STATE": str(tmp_path / "state.db")}
    env["ADO_WORK_ROOT"] = str(tmp_path / "work")

    def ado(*args: str, **kw: Any) -> subprocess.Popen[str]:
        streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} | kw
        return subprocess.Popen([*ADO, *args], cwd=tmp_path, env=env, text=True, **streams)

    driver = ado("batch", "repos.txt", "--no-ray", "--cmd", cmd, "--parallel", "1")
    try:
        wait_for(lambda: bool(log_lines(log, "start")), 60, "the agent's start")
        with SQLiteStore(tmp_path / "state.db") as store:
            (run,) = store.list_runs()
        run_id = run.run_id
        watched = tmp_path / "watch.out"
        with watched.open("w") as sink:
            watch = ado("watch", run_id, "--every", "0.2", stdout=sink)
        wait_for(lambda: "· running · 0/2 done" in watched.read_text(), 60, "watch's first line")
        time.sleep(1)  # a live driver: watch follows it, and does not end
        assert watch.poll() is None
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
        _, err = watch.communicate(timeout=30)
        out = watched.read_text()
    finally:
        driver.kill()
        driver.communicate()
        (tmp_path / "gate").touch()  # the orphaned agent ends
    assert watch.returncode == 130, out + err
    assert "· running · 0/2 done" in out
    assert "running (driver gone since " in out
    assert f"continue it with: ado resume {run_id}" in out

    listed = subprocess.run([*ADO, "runs"], cwd=tmp_path, env=env, text=True, capture_output=True)
    assert listed.returncode == 0, listed.stderr
    assert "running (driver gone since " in listed.stdout
    assert f"; ado resume {run_id})" in listed.stdout
    as_json = subprocess.run(
        [*ADO, "runs", "--json"], cwd=tmp_path, env=env, text=True, capture_output=True
    )
    (row,) = json.loads(as_json.stdout)
    assert row["status"] == "running" and row["driver"]["gone_since"]
    status = subprocess.run(
        [*ADO, "status", run_id], cwd=tmp_path, env=env, text=True, capture_output=True
    )
    assert status.returncode == 0, status.stderr
    assert (
        "running (driver gone since " in status.stdout and f"ado resume {run_id}" in status.stdout
    )
