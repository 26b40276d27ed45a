"""The Ray dashboard of a run (issue 10).

`ado batch --dashboard` prints the dashboard's URL and where the token is, never the token,
and Ray's "Token authentication is enabled" warning is gone. `ado batch --keep-dashboard`
runs on a local instance of its own (free ports, its own temp dir) that stays up after the
run; `ado dashboard` finds it; headless Chromium opens it on Ray's token prompt, gets in with
the token typed there, and lists the run's runner and sink actors; `ado dashboard --stop`
ends it (and the module's teardown, should a test fail first).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ado_ray.cli import main
from ado_ray.cluster.dashboard import Dashboard, describe, token_hint
from ado_ray.cluster.local import LOCAL_HEAD_DIR, LocalCluster
from ado_ray.cluster.ray_auth import token_source
from tests.browser import browser
from tests.conftest import create_repo
from tests.processes import kill_all_with

ADO = [sys.executable, "-m", "ado_ray"]
REPOS = ["alpha", "beta", "gamma"]
AGENT = """
import pathlib, sys, time
release = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else None
deadline = time.monotonic() + 300
while release is not None and not release.exists() and time.monotonic() < deadline:
    time.sleep(0.2)
time.sleep(1)
pathlib.Path("CHANGED.txt").write_text("changed for " + sys.argv[1] + "\\n")
"""
RAY_WARNING = "Token authentication is enabled for this Ray cluster"


def run_env(token: str, **extra: str) -> dict[str, str]:
    """This environment without Ray's or ado's settings (a Ray of the test session sets
    RAY_AUTH_MODE here), with the token the instance will want."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ADO_", "RAY_ADDRESS", "RAY_AUTH_", "RAY_TMPDIR"))
    }
    return {**env, "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0", **extra}


def make_batch(root: Path) -> list[str]:
    lines = [str(create_repo(root / "repos" / name)) for name in REPOS]
    (root / "repos.txt").write_text("\n".join(lines) + "\n")
    (root / "ado.yaml").write_text("ray:\n  num_cpus: 1\n")
    (root / "agent.py").write_text(AGENT)
    return make_args()


def make_args() -> list[str]:
    return ["batch", "repos.txt", "--dry-run", "--parallel", "2"]


def run_id(stdout: str) -> str:
    found = re.search(r"^run ([0-9a-f]+) \(", stdout, re.M)
    assert found, stdout
    return found.group(1)


def dashboard_url(stdout: str) -> str:
    found = re.search(r"^Ray dashboard: (http://127\.0\.0\.1:\d+) ", stdout, re.M)
    assert found, stdout
    return found.group(1)


def ado(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ADO, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def api(url: str, path: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url + path, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


# --- hints, without Ray ---------------------------------------------------------------------


def test_the_hint_names_where_the_token_is_never_the_token(tmp_path: Path) -> None:
    token = secrets.token_hex(32)
    named = tmp_path / "token"
    named.write_text(token)
    assert token_source({"RAY_AUTH_TOKEN": token}, home=tmp_path) == "RAY_AUTH_TOKEN"
    assert token_source({"RAY_AUTH_TOKEN_PATH": str(named)}, home=tmp_path) == (
        f"{named} (RAY_AUTH_TOKEN_PATH)"
    )
    assert token_source({}, home=tmp_path) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(token + "\n")
    assert token_source({}, home=tmp_path) == str(tmp_path / ".ray" / "auth_token")

    hint = token_hint({"RAY_AUTH_TOKEN": token})
    assert token not in hint and "RAY_AUTH_TOKEN" in hint and "ado dashboard --token" in hint
    kept = Dashboard("http://127.0.0.1:1", "local Ray kept up", "ado dashboard --stop")
    lines = describe(kept, "token", {"RAY_AUTH_TOKEN": token})
    assert lines[0] == "Ray dashboard: http://127.0.0.1:1 (local Ray kept up)"
    assert lines[-1] == "it stays up after runs; stop it: ado dashboard --stop"
    assert not any(token in line for line in lines)
    assert len(describe(kept, "disabled", {})) == 2  # no token to pass: no hint


def test_ado_dashboard_says_how_to_get_one_when_none_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    token = secrets.token_hex(32)
    env = {"RAY_AUTH_TOKEN": token, "RAY_AUTH_TOKEN_PATH": "", "ADO_RAY_DASHBOARD": ""}

    nothing = runner.invoke(main, ["dashboard"], env=env)
    assert nothing.exit_code == 1, nothing.output
    assert "no Ray dashboard is running from this directory" in nothing.output
    assert "--keep-dashboard" in nothing.output
    assert "port-forward svc/ado-ray-head" in nothing.output

    closed = f"http://127.0.0.1:{free_port()}"
    cluster = runner.invoke(main, ["dashboard", "--dashboard-url", closed], env=env)
    assert cluster.exit_code == 1, cluster.output
    assert f"the Ray dashboard at {closed} (ray.dashboard_url) does not answer" in cluster.output

    shown = runner.invoke(main, ["dashboard", "--token"], env=env)
    assert (shown.exit_code, shown.output) == (0, token + "\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    none = runner.invoke(main, ["dashboard", "--token"], env={**env, "RAY_AUTH_TOKEN": ""})
    assert none.exit_code == 2 and "none found here" in none.output

    stop = runner.invoke(main, ["dashboard", "--stop"], env=env)
    assert stop.output == f"no local Ray instance is kept up in {LOCAL_HEAD_DIR}\n"


def test_keep_dashboard_with_an_address_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ado.yaml").write_text("ray: {keep_dashboard: true}\n")
    proc = ado(tmp_path, run_env("x"), "batch", "repos.txt", "--ray-address", "127.0.0.1:1")
    assert proc.returncode == 2, proc.stderr
    assert "ray.keep_dashboard keeps a local Ray instance up" in proc.stderr


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- a run's own dashboard ------------------------------------------------------------------


@pytest.mark.e2e
def test_a_run_with_dashboard_prints_its_url_and_where_the_token_is(tmp_path: Path) -> None:
    """Its URL comes first, `ado dashboard` in another terminal finds it while the run goes
    on, and neither the token nor Ray's token warning is printed."""
    token, release = secrets.token_hex(32), tmp_path / "release"
    args = make_batch(tmp_path)
    # a Ray temp dir of its own (short: socket paths), so no other local Ray is joined
    ray_tmp = tempfile.mkdtemp(prefix="adodash-", dir="/tmp")
    env = run_env(token, RAY_TMPDIR=ray_tmp)
    cmd = f"{sys.executable} {tmp_path / 'agent.py'} {{repo_name}} {release}"
    out, err = (tmp_path / "out.txt").open("w+"), (tmp_path / "err.txt").open("w+")
    proc = subprocess.Popen(
        [*ADO, *args, "--dashboard", "--cmd", cmd], cwd=tmp_path, env=env, stdout=out, stderr=err
    )

    def printed() -> str:
        return (tmp_path / "out.txt").read_text() + (tmp_path / "err.txt").read_text()

    try:
        deadline = time.monotonic() + 300
        while "Ray dashboard: " not in (tmp_path / "out.txt").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, printed()
            time.sleep(0.5)
        url = dashboard_url((tmp_path / "out.txt").read_text())
        found = ado(tmp_path, env, "dashboard")
        assert found.returncode == 0, found.stderr
        assert f"Ray dashboard: {url} (a running ado batch --dashboard)" in found.stdout
        assert api(url, "/api/authentication_mode", None) == {"authentication_mode": "token"}
        release.touch()
        assert proc.wait(timeout=600) == 0, printed()
    finally:
        if proc.poll() is None:  # failed: stop the run, then whatever of its Ray is left
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(120)
            kill_all_with(ray_tmp)  # its processes, and only those, carry RAY_TMPDIR
            proc.wait(60)
        out.close()
        err.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    stdout, stderr = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    lines = stdout.splitlines()
    assert lines[0].startswith(f"Ray dashboard: {url} (this run's local Ray: it closes when")
    assert lines[1].startswith("token: in RAY_AUTH_TOKEN; paste it into the dashboard's prompt")
    assert "changed 3" in stdout
    assert RAY_WARNING not in stderr and "RAY_AUTH_MODE" not in stderr
    assert token not in stdout + stderr


# --- a dashboard kept up, in a browser ------------------------------------------------------


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`ado batch --keep-dashboard` done; the instance it left up is stopped at the end."""
    root = tmp_path_factory.mktemp("kept")
    token = secrets.token_hex(32)
    env = run_env(token)
    cmd = f"{sys.executable} {root / 'agent.py'} {{repo_name}}"
    try:
        proc = subprocess.run(
            [*ADO, *make_batch(root), "--keep-dashboard", "--cmd", cmd],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield {
            "root": root,
            "env": env,
            "token": token,
            "stdout": proc.stdout,
            "stderr": proc.stderr,
            "url": dashboard_url(proc.stdout),
            "run_id": run_id(proc.stdout),
        }
    finally:
        left = LocalCluster.load(root / LOCAL_HEAD_DIR)
        if left is not None:  # only this module's instance
            left.stop()


@pytest.mark.e2e
def test_the_run_says_its_dashboard_stays_up_and_how_to_stop_it(kept: dict[str, Any]) -> None:
    lines = kept["stdout"].splitlines()
    assert lines[0] == f"Ray dashboard: {kept['url']} (local Ray kept up, started now)"
    assert lines[1].startswith("token: in RAY_AUTH_TOKEN; paste it into the dashboard's prompt")
    assert re.fullmatch(r"Ray logs: /tmp/ado-ray-\w+/session_latest/logs", lines[2])
    assert lines[3] == "it stays up after runs; stop it: ado dashboard --stop"
    assert "changed 3" in kept["stdout"]
    assert kept["token"] not in kept["stdout"] + kept["stderr"]
    assert RAY_WARNING not in kept["stderr"]

    found = ado(kept["root"], kept["env"], "dashboard")
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[0] == f"Ray dashboard: {kept['url']} (local Ray kept up)"
    assert kept["token"] not in found.stdout


@pytest.mark.e2e
def test_the_dashboard_api_wants_the_token_and_names_actors_and_tasks(
    kept: dict[str, Any],
) -> None:
    url, token, run = kept["url"], kept["token"], kept["run_id"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        api(url, "/api/v0/actors", None)
    refused.value.close()  # its socket
    assert refused.value.code == 401
    actors = api(url, "/api/v0/actors?limit=1000", token)["data"]["result"]["result"]
    names = {a["name"]: a["class_name"] for a in actors}
    assert names[f"ado-runner-{run}-0"] == "AgentRunner"
    assert names[f"ado-sink-{run}"] == "Sink"
    deadline = time.monotonic() + 60
    while True:  # task events reach the GCS within a second or so
        tasks = api(url, "/api/v0/tasks?limit=10000", token)["data"]["result"]["result"]
        if {f"ado:{n}" for n in REPOS} <= {t["name"] for t in tasks}:
            break
        assert time.monotonic() < deadline, sorted(t["name"] for t in tasks)
        time.sleep(1)


@pytest.mark.e2e
def test_chromium_gets_in_with_the_token_and_lists_the_runs_actors(
    kept: dict[str, Any], tmp_path: Path
) -> None:
    url, run = kept["url"], kept["run_id"]
    runner, sink = f"ado-runner-{run}-0", f"ado-sink-{run}"
    with browser(tmp_path / "profile") as page:
        page.call("Page.navigate", url=f"{url}/#/actors")
        page.wait_for(lambda text: "Authentication Token Required" in text)
        page.screenshot(tmp_path / "prompt.png")
        page.type_into("input[type=password]", kept["token"])  # as a user pastes it
        page.press("Enter", 13)
        text = page.wait_for(
            lambda text: sink in text and runner in text and "Authentication Token" not in text
        )
        time.sleep(1)  # the table's last cells
        png = page.screenshot(tmp_path / "actors.png")
        cookies = page.call("Network.getCookies", urls=[url])["cookies"]
    assert "AgentRunner" in text and "Sink" in text
    assert [(c["name"], c["httpOnly"]) for c in cookies] == [("ray-authentication-token", True)]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000  # drawn, not blank
    if keep := os.environ.get("ADO_DASHBOARD_SCREENSHOT"):  # a directory to look at them in
        for name in ("prompt.png", "actors.png"):
            shutil.copy(tmp_path / name, Path(keep) / name)


@pytest.mark.e2e
def test_a_second_run_with_keep_ray_joins_the_kept_instance_and_leaves_it_up(
    kept: dict[str, Any],
) -> None:
    """`--keep-ray` (the clearer name of `--keep-dashboard`) reuses the instance the first
    run left up: no Ray starts, the same head answers after the run, and the run's own
    actors are gone with it (the detached limiter stays: it serves the next run)."""
    before = LocalCluster.load(kept["root"] / LOCAL_HEAD_DIR)
    assert before is not None and before.running
    cmd = f"{sys.executable} {kept['root'] / 'agent.py'} {{repo_name}}"
    again = ado(kept["root"], kept["env"], *make_args(), "--keep-ray", "--cmd", cmd)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[0] == (
        f"Ray dashboard: {kept['url']} (local Ray kept up, joined)"
    )
    second = run_id(again.stdout)
    after = LocalCluster.load(kept["root"] / LOCAL_HEAD_DIR)
    assert after is not None and after.running and after.pid == before.pid
    deadline = time.monotonic() + 60
    while True:  # the run's actors end with its driver; the GCS says so within seconds
        actors = api(kept["url"], "/api/v0/actors?limit=1000", kept["token"])
        alive = {
            a["name"]
            for a in actors["data"]["result"]["result"]
            if a["state"] == "ALIVE" and second in a["name"]
        }
        if not alive:
            break
        assert time.monotonic() < deadline, alive
        time.sleep(1)


@pytest.mark.e2e
def test_ado_dashboard_stop_ends_the_kept_instance(kept: dict[str, Any]) -> None:
    cluster = LocalCluster.load(kept["root"] / LOCAL_HEAD_DIR)
    assert cluster is not None and cluster.running
    stop = ado(kept["root"], kept["env"], "dashboard", "--stop")
    said = f"stopped the local Ray instance kept up in {LOCAL_HEAD_DIR} ({kept['url']})\n"
    assert stop.stdout == said, stop.stderr
    assert not cluster.running and not cluster.temp_dir.exists()
    after = ado(kept["root"], kept["env"], "dashboard")
    assert after.returncode == 1 and "no Ray dashboard is running" in after.stderr
