"""Ray's start-up beside the driver's (issue 11): `ray.init` runs in a thread of its own
while the driver plans, a run attached to a running Ray leaves it running, and a Ray that
does not start leaves nothing written.

The attached runs join the session's Ray instance (`--ray-address`); the one that must
fail to start Ray gets a RAY_TMPDIR that is a file, so Ray fails at once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ado_ray.config import Config
from ado_ray.engine.backends import RayThread
from ado_ray.trace import ENV as TRACE_ENV

ADO = [sys.executable, "-m", "ado_ray"]
# The marks of a run, in the order the driver reaches them (ado_ray/trace.py).
ORDER = ["cli parsed", "config resolved", "ray.init done", "run stored", "runner ready"]
ORDER += ["task back", "results printed", "exit"]


def ado(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ADO, *args],
        cwd=tmp_path,
        env={
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("ADO_", "RAY_ADDRESS", "RAY_TMPDIR"))
            },
            "ADO_STATE": str(tmp_path / "state.db"),
            "ADO_WORK_ROOT": str(tmp_path / "work"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=180,
    )


def runs(tmp_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(tmp_path / "state.db") as db:
        return db.execute("select run_id, status from runs").fetchall()


def marks(stderr: str) -> list[str]:
    """The trace's marks, in order, a task's named by kind."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("ado-trace "):
            what = line.split(" ", 4)[4]
            if what.startswith("task "):
                what = "task back" if what.endswith(" back") else "task handed"
            found.append(what)
    return found


@pytest.mark.integration
def test_a_ray_thread_leaves_a_ray_it_did_not_start_running(ray_address: str) -> None:
    import ray

    thread = RayThread()
    thread.begin(Config())
    started = thread.result()
    assert started is not None and not started.started  # this process was connected
    thread.join()
    assert ray.is_initialized()
    assert ray.get(ray.put("still up"), timeout=30) == "still up"


def test_no_ray_begins_no_thread() -> None:
    thread = RayThread()
    thread.begin(Config(no_ray=True))
    assert thread.result() is None and not thread.connected
    thread.join()  # nothing to wait for


@pytest.mark.e2e
def test_an_attached_run_prints_one_json_object_traces_its_start_and_leaves_ray_up(
    ray_address: str, tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    import ray

    (tmp_path / "repos.txt").write_text(f"{make_repo('one')}\n")
    proc = ado(
        tmp_path,
        *("batch", "repos.txt", "--cmd", "true", "--json", "--ray-address", ray_address),
        **{TRACE_ENV: "1"},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # stdout is the one object, nothing else
    assert out["counts"] == {"no_change": 1}
    seen = marks(proc.stderr)
    assert [m for m in seen if m in ORDER] == ORDER, seen
    assert seen.index("ray.init begun") < seen.index("planned")  # Ray came up meanwhile
    assert "SIGTERM handler is not set" not in proc.stderr  # Ray's warning off the main thread
    # The cluster it joined runs on; the run's own actors are gone with it.
    assert ray.get(ray.put(1), timeout=30) == 1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get_actor(f"ado-runner-{out['run_id']}-0", namespace="ado")
        except ValueError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the run's runner actor outlived its driver")

    quiet = ado(tmp_path, "batch", "repos.txt", "--cmd", "true", "--ray-address", ray_address)
    assert quiet.returncode == 0 and "ado-trace" not in quiet.stdout + quiet.stderr


@pytest.mark.e2e
def test_a_ray_that_does_not_start_exits_2_and_writes_nothing(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    (tmp_path / "repos.txt").write_text(f"{make_repo('one')}\n")
    (tmp_path / "not-a-dir").write_text("")
    broken = {"RAY_TMPDIR": str(tmp_path / "not-a-dir")}
    proc = ado(tmp_path, "batch", "repos.txt", "--cmd", "true", **broken)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: could not start the local Ray instance: NotADirectoryError" in proc.stderr
    assert "nothing was started or written" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert runs(tmp_path) == []  # the store was opened and migrated meanwhile, no run in it

    # A resume that cannot start Ray leaves the run as it was, too.
    done = ado(tmp_path, "batch", "repos.txt", "--cmd", "true", "--no-ray")
    assert done.returncode == 0, done.stderr
    [(run_id, status)] = runs(tmp_path)
    again = ado(tmp_path, "resume", run_id, "--retry-failed", **broken)
    assert again.returncode == 2 and "could not start the local Ray" in again.stderr
    assert runs(tmp_path) == [(run_id, status)]
