"""A local autoscaling Ray cluster on this machine: Ray's autoscaler with its fake provider.

`start_local_cluster` starts a Ray head (`ray start --head --block`, no CPUs of its own) whose
autoscaler uses Ray's fake multi-node provider (`FakeMultiNodeProvider`, through
`provider: type: external`, enabled by `RAY_FAKE_CLUSTER=1`): a "worker node" is one more
raylet on this machine, started when tasks or actors wait for CPUs and stopped after
`idle_minutes` without work. `ado batch --ray-address ADDRESS` with `ray.runner_num_cpus > 0`
then makes it grow and, once idle, shrink, exactly as a cloud cluster would; this is what
`ado cluster up --local` offers, and what tests/cluster/test_autoscaling.py checks.
`start_local_head` starts a plain head (CPUs of its own, no autoscaler) the same way, for
`ado batch --keep-dashboard`: its dashboard stays up after the run (cluster/dashboard.py).

The cluster gets free ports and its own Ray temp directory, so other Ray instances on the
machine are left alone; `stop()` ends only this cluster's processes (its `ray start` process
leads a session of its own, which every process of the cluster belongs to). The state lives
in `WORKDIR/cluster.json`, so another process can stop it (`LocalCluster.load(WORKDIR)`).

Token authentication: the head runs with `RAY_AUTH_MODE` from the environment, else `token`
(a token is generated in ~/.ray/auth_token if none exists). A client joining with an explicit
address must have the same mode in its environment: `LocalCluster.client_env`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ado_ray.errors import AdoError, UsageError

FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
HEAD_NODE_TYPE = "ray.head.default"  # the type the fake provider gives the head node
WORKER_NODE_TYPE = "worker"
OBJECT_STORE_BYTES = 128 * 1024**2  # per node; ado-ray passes little through the object store
STATE_FILE = "cluster.json"
LOG_FILE = "ray-start.log"
CONFIG_FILE = "autoscaler.yaml"
LOCAL_CLUSTER_DIR = Path(".ado/cluster")  # `ado cluster up --local`
LOCAL_HEAD_DIR = Path(".ado/ray")  # `ado batch --keep-dashboard`


# Starts `ray start` (argv[2:]) in a session of its own, output to the file argv[1]; prints
# its pid and exits without waiting for it.
LAUNCHER = """
import subprocess, sys
with open(sys.argv[1], "ab") as log:
    child = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
print(child.pid)
"""


class LocalClusterError(AdoError):
    """The local Ray cluster did not start."""


def autoscaler_config(
    max_workers: int = 2,
    idle_minutes: float = 1.0,
    worker_cpus: int = 2,
    gcs_address: str | None = None,
) -> dict[str, Any]:
    """The autoscaler config (cluster/local-autoscaler.yaml is this with the defaults).

    Without `gcs_address` the fake provider joins its nodes to `<this machine's IP>:6379`.
    """
    provider: dict[str, Any] = {
        "type": "external",
        "module": FAKE_PROVIDER,
        "use_node_id_as_ip": True,  # the fake nodes share one IP: tell them apart by node id
        "disable_node_updaters": True,  # nothing to SSH into: the provider starts each raylet
        "disable_launch_config_check": True,
        "launch_multiple": True,  # create every node the autoscaler asks for at once
    }
    if gcs_address:
        provider["gcs_address"] = gcs_address
    return {
        "cluster_name": "ado-local",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_minutes,
        "provider": provider,
        "head_node_type": HEAD_NODE_TYPE,
        "available_node_types": {
            HEAD_NODE_TYPE: {"resources": {}, "node_config": {}, "max_workers": 0},
            WORKER_NODE_TYPE: {
                "resources": {"CPU": worker_cpus, "object_store_memory": OBJECT_STORE_BYTES},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_workers,
            },
        },
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass
class LocalCluster:
    """A running local cluster; `address` is what `--ray-address` takes."""

    workdir: Path
    address: str  # the GCS address, host:port
    dashboard_url: str
    pid: int  # the `ray start --head --block` process, leader of the cluster's session
    temp_dir: Path  # Ray's temp dir: sessions, logs, sockets
    client_env: dict[str, str] = field(default_factory=dict)  # for drivers that join

    @property
    def logs_dir(self) -> Path:
        return self.temp_dir / "session_latest" / "logs"

    @classmethod
    def load(cls, workdir: Path) -> LocalCluster | None:
        """The cluster recorded in `workdir`, or None if there is none or it has stopped."""
        try:
            data = json.loads((workdir / STATE_FILE).read_text(encoding="utf-8"))
            cluster = cls(
                workdir=workdir,
                address=str(data["address"]),
                dashboard_url=str(data["dashboard_url"]),
                pid=int(data["pid"]),
                temp_dir=Path(data["temp_dir"]),
                client_env={str(k): str(v) for k, v in data["client_env"].items()},
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return cluster if cluster.running else None

    @property
    def running(self) -> bool:
        return _is_our_leader(self.pid, self.temp_dir)

    def stop(self, timeout_s: float = 30.0, keep_logs: bool = False) -> None:
        """End every process of this cluster (head, autoscaler, fake nodes, their workers).

        SIGTERM to `ray start` (it stops the head's processes, its reaper the rest of its
        process group), then to what is left of its session (the fake nodes and Ray's workers
        lead process groups of their own; without the head their raylets would wait a minute
        for it), then SIGKILL.
        """
        # A session id is not reused while a member lives: once `ray start` is known to be
        # ours, so is its session. After a crash of `ray start`, a member naming our temp dir
        # says the same.
        ours = _is_our_leader(self.pid, self.temp_dir)
        if ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            _wait(lambda: process_alive(self.pid), time.monotonic() + timeout_s)
        members = _session_members(self.pid)
        if ours or any(str(self.temp_dir) in _cmdline(pid) for pid in members):
            for sig, grace_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
                for pid in _session_members(self.pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
                _wait(lambda: bool(_session_members(self.pid)), time.monotonic() + grace_s)
        (self.workdir / STATE_FILE).unlink(missing_ok=True)
        if not keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _save(self) -> None:
        data = {
            "address": self.address,
            "dashboard_url": self.dashboard_url,
            "pid": self.pid,
            "temp_dir": str(self.temp_dir),
            "client_env": self.client_env,
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(data, indent=2), encoding="utf-8")


def start_local_cluster(
    workdir: Path,
    max_workers: int = 2,
    idle_minutes: float = 1.0,
    *,
    worker_cpus: int = 2,
    timeout_s: float = 90.0,
) -> LocalCluster:
    """Start a Ray head with no CPUs whose autoscaler adds up to `max_workers` local worker
    nodes of `worker_cpus` CPUs each, and removes each after `idle_minutes` idle.

    Returns once the head answers (GCS and dashboard). Raises `UsageError` for bad
    arguments or a cluster already running from `workdir`, `LocalClusterError` if Ray
    does not come up (the message holds the end of `ray start`'s output).
    """
    if max_workers < 1 or worker_cpus < 1:
        raise UsageError(
            f"max_workers={max_workers}, worker_cpus={worker_cpus}; expected at least 1 each"
        )
    if idle_minutes < 0:
        raise UsageError(f"idle_minutes={idle_minutes}; expected 0 or more")
    workdir = _free_workdir(workdir)
    ports = _free_ports(3)
    config_path = workdir / CONFIG_FILE
    config_path.write_text(
        yaml.safe_dump(
            autoscaler_config(max_workers, idle_minutes, worker_cpus, f"127.0.0.1:{ports[0]}"),
            sort_keys=False,
        ),
        encoding="utf-8",
    )
    return _launch(
        workdir,
        ports,
        [
            "--num-cpus=0",  # runners never fit here: they wait for worker nodes
            f"--autoscaling-config={config_path}",
        ],
        {
            "RAY_FAKE_CLUSTER": "1",  # lets FakeMultiNodeProvider load, and names the head node
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",  # react within a second (Ray's default is 5)
        },
        timeout_s,
    )


def start_local_head(
    workdir: Path, num_cpus: int | None = None, *, timeout_s: float = 90.0
) -> LocalCluster:
    """Start a plain Ray head on this machine (`num_cpus`, default all) with its dashboard,
    which outlives this process: what `ado batch --keep-dashboard` runs on. Raises as
    `start_local_cluster` does."""
    if num_cpus is not None and num_cpus < 1:
        raise UsageError(f"num_cpus={num_cpus}; expected at least 1")
    workdir = _free_workdir(workdir)
    cpus = [] if num_cpus is None else [f"--num-cpus={num_cpus}"]
    return _launch(workdir, _free_ports(3), cpus, {}, timeout_s)


def _free_workdir(workdir: Path) -> Path:
    """`workdir`, absolute and created; refused if a cluster started from it still runs."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    existing = LocalCluster.load(workdir)
    if existing is not None:
        raise UsageError(
            f"a local Ray cluster from {workdir} is already running at {existing.address}; "
            "stop it first"
        )
    return workdir


def _launch(
    workdir: Path,
    ports: list[int],
    head_args: list[str],
    head_env: dict[str, str],
    timeout_s: float,
) -> LocalCluster:
    """`ray start --head --block` on `ports` (GCS, dashboard, Ray client), detached from this
    process, in a temp dir of its own; returns once GCS and dashboard answer."""
    gcs_port, dashboard_port, client_port = ports
    # Unix socket paths must stay under ~107 characters: a short temp dir, not workdir.
    temp_dir = Path(
        tempfile.mkdtemp(prefix="ado-ray-", dir="/tmp" if Path("/tmp").is_dir() else None)
    )
    client_env = {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(client_env)
    env.update(
        head_env,
        RAY_USAGE_STATS_ENABLED="0",
        # On SIGTERM, Ray 2.60 drains the head for up to 30 s, waiting for actors such as
        # the detached rate limiter to leave: nothing here outlives the cluster anyway.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
    )
    if client_env["RAY_AUTH_MODE"] == "token":
        _ensure_token(env)
    argv = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        f"--port={gcs_port}",
        *head_args,
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        "--include-dashboard=true",  # the state API (ray list actors ...) lives there
        "--dashboard-host=127.0.0.1",  # this machine only
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={client_port}",
        "--dashboard-agent-listen-port=0",  # not Ray's fixed default: other instances use it
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    # Through a launcher that exits at once: `ray start` is nobody's child here, so the
    # cluster outlives this process (`ado cluster up --local`) and nothing waits for it.
    launcher = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", LAUNCHER, str(workdir / LOG_FILE), *argv],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if launcher.returncode != 0 or not launcher.stdout.strip().isdigit():
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise LocalClusterError(f"could not start `ray start`: {launcher.stderr.strip()[-2000:]}")
    cluster = LocalCluster(
        workdir=workdir,
        address=f"127.0.0.1:{gcs_port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        pid=int(launcher.stdout),
        temp_dir=temp_dir,
        client_env=client_env,
    )
    try:
        _wait_until_up(cluster.pid, [gcs_port, dashboard_port], timeout_s)
        cluster._save()
    except BaseException as exc:
        cluster.stop(keep_logs=True)
        if isinstance(exc, LocalClusterError):
            tail = (workdir / LOG_FILE).read_text(encoding="utf-8", errors="replace")[-3000:]
            raise LocalClusterError(f"{exc}; `ray start` said:\n{tail}") from None
        raise
    return cluster


def stop_local_cluster(workdir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the cluster started from `workdir`; False if none was running."""
    cluster = LocalCluster.load(workdir.resolve())
    if cluster is None:
        (workdir / STATE_FILE).unlink(missing_ok=True)
        return False
    cluster.stop(timeout_s)
    return True


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _ensure_token(env: dict[str, str]) -> None:
    """Token mode needs a token: generate ~/.ray/auth_token if no source has one."""
    if env.get("RAY_AUTH_TOKEN") or Path(env.get("RAY_AUTH_TOKEN_PATH", "")).is_file():
        return
    if (Path.home() / ".ray" / "auth_token").is_file():
        return
    subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "get-auth-token", "--generate"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # the token itself: never shown
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=60,
    )


def _wait_until_up(pid: int, ports: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = list(ports)
    while waiting:
        if not process_alive(pid):
            raise LocalClusterError("`ray start` exited")
        if time.monotonic() > deadline:
            raise LocalClusterError(f"Ray did not answer on ports {waiting} in {timeout_s:.0f} s")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            if sock.connect_ex(("127.0.0.1", waiting[0])) == 0:
                waiting.pop(0)
                continue
        time.sleep(0.2)


def _wait(busy: Callable[[], bool], deadline: float) -> None:
    while busy() and time.monotonic() < deadline:
        time.sleep(0.1)


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def process_alive(pid: int) -> bool:
    fields = _stat(pid)
    if fields is not None:
        return fields[0] not in {"Z", "X"}
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path("/proc").is_dir()  # with /proc, no stat file means no process


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _is_our_leader(pid: int, temp_dir: Path) -> bool:
    """`pid` is still this cluster's `ray start` (not a recycled pid)."""
    if not process_alive(pid):
        return False
    if not Path("/proc").is_dir():
        return True  # nothing to check it against: trust the state file
    return f"--temp-dir={temp_dir}" in _cmdline(pid).split("\0")


def _session_members(session: int) -> list[int]:
    """Live processes of the session `session` but its leader (Linux: /proc; elsewhere none,
    and Ray's own teardown has to do)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == session:
            continue
        fields = _stat(int(entry.name))
        if fields is not None and fields[0] not in {"Z", "X"} and fields[3] == str(session):
            members.append(int(entry.name))
    return members
