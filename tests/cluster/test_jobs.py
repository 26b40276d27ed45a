"""`ado batch` as a Ray job (`--context k8s`): against a real Ray head started with
`ray start --head` (dashboard and token authentication on), a private PostgreSQL and Redis.

The head is this test module's own: its own ports, temporary directory, HOME and token, and it
is stopped by its process ids (never `ray stop`, which stops every Ray of the user). Its jobs
run with this venv's Python (`python` on the head's PATH) and reach the test's repositories
at the same local paths, so pushes work as they would from a cluster to a forge.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import yaml

from ado_ray import api, watch
from ado_ray.api import ConfigSources
from ado_ray.cluster import jobs, ray_auth
from ado_ray.config import build_config
from ado_ray.engine.driver import new_run
from ado_ray.errors import UsageError
from ado_ray.models import RunStatus
from ado_ray.repos import parse_repo_text
from tests.conftest import create_repo, git
from tests.servers import PostgresServer, RedisServer, free_port

ADO = [sys.executable, "-m", "ado_ray"]
VENV_BIN = Path(sys.executable).parent

# Writes "<repo> <ticket> <prompt>" to fixed.txt, after ADO_VAR_SLEEP seconds.
AGENT = """
import os, sys, time
time.sleep(float(os.environ.get("ADO_VAR_SLEEP", "0")))
prompt = open(os.environ["ADO_PROMPT_FILE"]).read()
open("fixed.txt", "w").write(f"{sys.argv[1]} {sys.argv[2]} {prompt}\\n")
"""


# --- fixtures: a private Ray head, PostgreSQL and Redis -------------------------------------


class RayHead:
    """`ray start --head --block` on free ports, in its own temp dir, with token auth on."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ado-head-"))  # short: unix socket paths
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.token_path = root / "auth_token"
        self.token = secrets.token_hex(32)
        self.token_path.write_text(self.token)
        self.dashboard_port = free_port()
        self.log_path = root / "head.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = 90.0) -> RayHead:
        env = {
            key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "ADO_"))
        }
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            HOME=str(self.home),  # the jobs' work roots go under ~/.ado/work
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            RAY_USAGE_STATS_ENABLED="0",
        )
        ports = {
            "--port": free_port(),
            "--dashboard-port": self.dashboard_port,
            "--ray-client-server-port": free_port(),
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
        }
        command = [
            str(VENV_BIN / "ray"), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1",
            "--dashboard-host", "127.0.0.1",
            "--include-dashboard", "true",
            "--temp-dir", str(self.temp_dir),
            "--num-cpus", "2",
            "--object-store-memory", str(100 * 1024**2),
            "--disable-usage-stats",
            *(str(part) for pair in ports.items() for part in pair),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited:\n{self.log_tail()}")
            if self._jobs_api_answers():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray dashboard did not answer in {timeout}s:\n{self.log_tail()}")

    def _jobs_api_answers(self) -> bool:
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to the head's process tree (ours only), SIGKILL to what is left."""
        if self.proc is None:
            return
        try:
            root = psutil.Process(self.proc.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for proc in tree:  # `ray start` itself would drain for 30 s on SIGTERM
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill() if proc is tree[0] else proc.terminate()
        _, alive = psutil.wait_procs(tree, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)
        self.proc.wait(timeout=10)
        self.proc = None
        subprocess.run(["rm", "-rf", str(self.temp_dir)], check=False)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    head = RayHead(tmp_path_factory.mktemp("ray-head"))
    try:
        yield head.start()
    finally:
        head.stop()


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path_factory.mktemp("jobs-pg")) as server:
        yield server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("jobs-redis")) as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    name = f"jobs_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.url(name)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any RAY_* or ADO_* variable (a test sets its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ADO_"))}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", **extra}


def k8s_env(head: RayHead, pg_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return clean_env(
        ADO_STATE_URL=pg_url,
        ADO_REDIS_URL=redis_url,
        ADO_RAY_ADDRESS="auto",  # the k8s context names it; a job joins its own cluster
        ADO_RAY_DASHBOARD=head.dashboard_url,
        RAY_AUTH_TOKEN_PATH=str(head.token_path),
        **extra,
    )


def fleet(tmp_path: Path, count: int, sleep: float = 0.0) -> Path:
    lines = []
    for i in range(count):
        repo = create_repo(tmp_path / "repos" / f"svc{i}")
        lines.append(f"{repo} ticket=T-{i} sleep={sleep}\n")
    repo_list = tmp_path / "repos.txt"
    repo_list.write_text("".join(lines))
    return repo_list


def agent_cmd(tmp_path: Path) -> str:
    path = tmp_path / "agent.py"
    path.write_text(AGENT)
    return f"{sys.executable} {path} {{repo_name}} {{ticket}}"


def status_elsewhere(tmp_path: Path, run_id: str, pg_url: str) -> dict[str, Any]:
    """`ado status RUN --json` from another directory, with nothing but the store URL."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    proc = subprocess.run(
        [*ADO, "status", run_id, "--json", "--state", pg_url],
        cwd=elsewhere,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.e2e
def test_k8s_batch_runs_as_a_ray_job_and_status_reads_it_from_anywhere(
    tmp_path: Path, ray_head: RayHead, pg_url: str, redis_server: RedisServer
) -> None:
    repo_list = fleet(tmp_path, 3)
    env = k8s_env(ray_head, pg_url, redis_server.url)
    started = time.monotonic()
    proc = subprocess.run(
        [*ADO, "batch", "--context", "k8s", str(repo_list), "--cmd", agent_cmd(tmp_path),
         "--prompt", "bump the pins", "--name", "k8s-e2e", "--parallel", "3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert ray_head.token not in output
    job_id = next(
        line.split()[2] for line in proc.stdout.splitlines() if line.startswith("Ray job ")
    )
    assert job_id.startswith("raysubmit_")
    run_id = next(
        match.group(1) for line in proc.stdout.splitlines() if (match := jobs.RUN_LINE.match(line))
    )
    assert f"Ray job {job_id}: SUCCEEDED" in proc.stdout
    assert "[3/3] changed" in proc.stdout  # the driver's progress, streamed back

    summary = status_elsewhere(tmp_path, run_id, pg_url)
    assert summary["status"] == "finished"
    assert summary["counts"] == {"changed": 3}
    for i in range(3):
        repo = tmp_path / "repos" / f"svc{i}"
        assert git(repo, "show", "ado/k8s-e2e:fixed.txt") == f"svc{i} T-{i} bump the pins"
    # the job's work root is under the head's HOME, not its throwaway working_dir
    assert (ray_head.home / ".ado" / "work").is_dir()
    print(f"k8s batch of 3 repositories as a Ray job: {elapsed:.1f}s end to end")

    # `--resume` travels the same way; with --json, stdout is one object
    proc = subprocess.run(
        [*ADO, "batch", "--context", "k8s", "--resume", run_id, "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert (data["run_id"], data["counts"], data["job_status"]) == (
        run_id,
        {"changed": 3},
        "SUCCEEDED",
    )
    assert data["job_id"].startswith("raysubmit_") and data["job_id"] != job_id
    assert ray_head.token not in proc.stdout + proc.stderr


@pytest.mark.integration
@pytest.mark.e2e
def test_ctrl_c_detaches_and_the_job_finishes_the_run(
    tmp_path: Path, ray_head: RayHead, pg_url: str, redis_server: RedisServer
) -> None:
    repo_list = fleet(tmp_path, 2, sleep=4)
    lines: list[str] = []
    seen = threading.Event()
    err_path = tmp_path / "stderr.log"
    with (
        err_path.open("w") as err,
        subprocess.Popen(
            [*ADO, "batch", "--context", "k8s", str(repo_list), "--cmd", agent_cmd(tmp_path),
             "--prompt", "slow", "--name", "k8s-detach"],
            cwd=tmp_path, env=k8s_env(ray_head, pg_url, redis_server.url),
            stdout=subprocess.PIPE, stderr=err, text=True,
        ) as proc,
    ):  # fmt: skip

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if jobs.RUN_LINE.match(line):
                    seen.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert seen.wait(120), "".join(lines) + err_path.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == jobs.EXIT_DETACHED
        reader.join(timeout=10)
    stderr = err_path.read_text()
    run_id = next(m.group(1) for line in lines if (m := jobs.RUN_LINE.match(line)))
    assert "detached: Ray job raysubmit_" in stderr
    assert f"ado --context k8s status {run_id}" in stderr
    assert ray_head.token not in stderr + "".join(lines)

    deadline = time.monotonic() + 120
    while (summary := status_elsewhere(tmp_path, run_id, pg_url))["status"] == "running":
        assert time.monotonic() < deadline, summary
        time.sleep(1)
    assert (summary["status"], summary["counts"]) == ("finished", {"changed": 2})


@pytest.mark.integration
@pytest.mark.e2e
def test_the_exit_code_is_the_jobs_driver_s(
    tmp_path: Path, ray_head: RayHead, pg_url: str, redis_server: RedisServer
) -> None:
    repo_list = fleet(tmp_path, 1)
    proc = subprocess.run(
        [*ADO, "batch", "--context", "k8s", str(repo_list), "--cmd", "false", "--name", "fails"],
        cwd=tmp_path, env=k8s_env(ray_head, pg_url, redis_server.url),
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[1/1] failed" in proc.stdout and "Ray job raysubmit_" in proc.stdout
    assert proc.stdout.rstrip().endswith(": FAILED")


@pytest.mark.integration
@pytest.mark.e2e
def test_a_wrong_or_missing_token_submits_nothing(
    tmp_path: Path, ray_head: RayHead, pg_url: str, redis_server: RedisServer
) -> None:
    repo_list = fleet(tmp_path, 1)
    base = k8s_env(ray_head, pg_url, redis_server.url)
    del base["RAY_AUTH_TOKEN_PATH"]
    cases = {
        "wrong": {**base, "RAY_AUTH_TOKEN": "not-the-token"},
        "missing": {**base, "HOME": str(tmp_path)},  # no ~/.ray/auth_token there
    }
    for case, env in cases.items():
        proc = subprocess.run(
            [*ADO, "batch", "--context", "k8s", str(repo_list), "--cmd", agent_cmd(tmp_path)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
        assert "nothing was submitted" in proc.stderr or "none was found" in proc.stderr
        assert "Ray job" not in proc.stdout
    request = urllib.request.Request(
        f"{ray_head.dashboard_url}/api/jobs/",
        headers={"Authorization": f"Bearer {ray_head.token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        submitted = json.loads(response.read())
    assert not any(job.get("metadata", {}).get("ado_source") == str(repo_list) for job in submitted)


# --- this machine only: checks before submission, packaging, the token ----------------------


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ADO, *args],
        cwd=tmp_path,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_input_exits_2_before_contacting_the_dashboard(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: any contact would fail
    bad = tmp_path / "bad.txt"
    bad.write_text("/no/such/repo\n")
    proc = run_cli(tmp_path, "batch", str(bad), "--cmd", "true", "--state", "postgresql://x/y",
                   "--dashboard-url", closed)  # fmt: skip
    assert proc.returncode == 2
    assert "bad.txt:1:" in proc.stderr and "did not answer" not in proc.stderr

    good = tmp_path / "good.txt"
    good.write_text(f"{create_repo(tmp_path / 'r')}\n")
    proc = run_cli(tmp_path, "batch", str(good), "--cmd", "true", "--dashboard-url", closed)
    assert proc.returncode == 2
    assert "is a SQLite file" in proc.stderr

    proc = run_cli(tmp_path, "batch", str(good), "--cmd", "true", "--prompt", "x",
                   "--prompt-file", "p.txt", "--state", "postgresql://x/y",
                   "--dashboard-url", closed)  # fmt: skip
    assert proc.returncode == 2 and "not both" in proc.stderr

    proc = run_cli(tmp_path, "batch", str(good), "--cmd", "true", "--state", "postgresql://x/y",
                   ADO_RAY_DASHBOARD=closed)  # fmt: skip
    assert proc.returncode == 2
    assert "did not answer" in proc.stderr and "nothing was submitted" in proc.stderr

    proc = run_cli(tmp_path, "batch", str(good), "--cmd", "true", "--state", "postgresql://x/y",
                   "--dashboard-url", "http://user:pw@host:8265")  # fmt: skip
    assert proc.returncode == 2 and "refused" in proc.stderr and "pw" not in proc.stderr


def test_the_package_holds_no_secret_and_rebuilds_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "ado.yaml").write_text(
        yaml.safe_dump(
            {
                "limiter": {"backend": "redis", "url": "redis://:redis-pw@cache:6379/0"},
                "agent": {"env": {"API_KEY": "agent-secret"}, "cmd": "echo ${HOME_LIKE}"},
                "providers": {
                    "claude": {
                        "agent": "claude",
                        "modes": [{"name": "api", "env": {"K": "mode-pw"}}],
                    }
                },
                "parallel": 7,
            }
        )
    )
    overrides = {"state": "postgresql://ado:db-pw@db/ado", "name": "pkg", "work_root": Path("w")}
    sources = ConfigSources(tmp_path / "ado.yaml", overrides, None)
    original = build_config(tmp_path / "ado.yaml", overrides, env={"HOME_LIKE": "$" + "{X}"})
    job = {"command": "batch", "repo_list": jobs.JOB_REPOS, "source": "r.txt", "json": False}
    os.environ["HOME_LIKE"] = "$" + "{X}"  # a value that looks like a reference survives
    try:
        package = jobs.build_package(sources, job, {jobs.JOB_REPOS: "x\n"}, {})
    finally:
        del os.environ["HOME_LIKE"]
    text = "".join(package.files.values())
    for secret in ("db-pw", "redis-pw", "agent-secret", "mode-pw"):
        assert secret not in text
        assert any(secret in value for value in package.env_vars.values())
    assert set(package.files) == {jobs.JOB_REPOS, jobs.JOB_CONFIG, jobs.JOB_SPEC}
    assert all(name.startswith(jobs.SECRET_VAR) for name in package.env_vars)

    # on the cluster: the files and the env vars give back the same config
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    for name, content in package.files.items():
        (job_dir / name).write_text(content)
    spec = json.loads((job_dir / jobs.JOB_SPEC).read_text())
    restored = jobs._restore_secrets(spec["overrides"], package.env_vars)
    rebuilt = build_config(job_dir / spec["config"], restored, env=package.env_vars)
    assert rebuilt.ray.address == "auto" and rebuilt.ray.dashboard_url is None
    assert rebuilt.model_dump(exclude={"ray"}) == original.model_dump(exclude={"ray"})


def test_the_token_is_found_where_ray_looks_for_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    assert ray_auth.load_token({}, home=home) is None
    (home / ".ray" / "auth_token").write_text("from-home\n")
    assert ray_auth.load_token({}, home=home) == "from-home"
    named = tmp_path / "token"
    named.write_text("from-path")
    assert ray_auth.load_token({"RAY_AUTH_TOKEN_PATH": str(named)}, home=home) == "from-path"
    env = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(named)}
    assert ray_auth.load_token(env, home=home) == "from-env"
    with pytest.raises(UsageError, match="cannot read the token"):
        ray_auth.load_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}, home=home)


def test_watch_prints_changes_until_the_run_ends(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    sources = ConfigSources(None, {"state": state}, None)
    config = api.load_config(sources)
    repo = create_repo(tmp_path / "r1")
    with api.opened_store(config) as store:
        run = new_run(store, config, parse_repo_text(f"{repo}\n", "list", tmp_path), "list", None)

    polls = []

    def sleep(_: float) -> None:
        polls.append(1)
        if len(polls) == 2:
            with api.opened_store(config) as store:
                store.set_run_status(run.run_id, RunStatus.FINISHED)

    out = io.StringIO()
    code = watch.watch(run.run_id, sources, out, every_s=0, sleep=sleep)
    lines = out.getvalue().splitlines()
    assert code == jobs.EXIT_FAILED  # finished with a task that never ran
    assert len(lines) == 2  # unchanged polls print nothing
    assert "· running · 0/1 done · queued 1" in lines[0]
    assert "· finished ·" in lines[1]
