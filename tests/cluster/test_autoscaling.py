"""Autoscaling end to end on this machine: Ray's autoscaler with its fake multi-node provider.

The test starts its own head (ado_ray/cluster/local.py: no CPUs, up to two 1-CPU worker
nodes, 15 s idle timeout), runs `ado batch` against it in a subprocess (the session's Ray
instance, initialised in this process, cannot be left for another cluster) and reads the
cluster's state API from another subprocess: the runner actors and every task ran on worker
nodes the autoscaler added, and those nodes are gone once idle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ado_ray.cluster import local
from ado_ray.cluster.local import LocalCluster, autoscaler_config, start_local_cluster
from tests.conftest import create_repo, git

ROOT = Path(__file__).resolve().parents[2]
IDLE_MINUTES = 0.25  # 15 s; the autoscaler takes minutes as a float
REPOS = 4

AGENT = """
import pathlib, sys, time
pathlib.Path("CHANGED.txt").write_text("changed for " + sys.argv[1] + "\\n")
time.sleep(1.5)  # long enough for Ray to report the task's node before the runner ends
"""

# Run in a subprocess joined to the test's cluster: what ran where, then wait for the shrink.
INSPECT = """
import json, sys, time
from ray.util.state import list_actors, list_nodes, list_tasks

address, run_id, names, wait_s = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]

def nodes():
    return [
        {"id": n.node_id, "head": n.is_head_node, "state": n.state,
         "start_ms": n.start_time_ms, "end_ms": n.end_time_ms}
        for n in list_nodes(address=address, limit=1000)
    ]

runners = {
    a.name: a.node_id
    for a in list_actors(address=address, filters=[("class_name", "=", "AgentRunner")], limit=1000)
    if a.name.startswith(f"ado-runner-{run_id}-")
}
tasks = {}
deadline = time.monotonic() + 20
while time.monotonic() < deadline:  # task events reach the GCS within a second or so
    tasks = {
        t.name: t.node_id
        for t in list_tasks(address=address, filters=[("type", "=", "ACTOR_TASK")], limit=10000)
        if t.name in {f"ado:{n}" for n in names} and t.node_id
    }
    if len(tasks) == len(names):
        break
    time.sleep(1)
after_batch = nodes()
start = time.monotonic()
final = after_batch
while time.monotonic() - start < float(wait_s):
    final = nodes()
    if [n for n in final if n["state"] == "ALIVE" and not n["head"]] == []:
        break
    time.sleep(1)
print(json.dumps({"runners": runners, "tasks": tasks, "after_batch": after_batch,
                  "final": final, "shrink_s": round(time.monotonic() - start, 1)}))
"""


def test_the_yaml_in_cluster_is_the_config_local_clusters_use() -> None:
    text = (ROOT / "cluster" / "local-autoscaler.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(text) == autoscaler_config()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    begin = time.monotonic()
    started = start_local_cluster(
        tmp_path / "cluster", max_workers=2, idle_minutes=IDLE_MINUTES, worker_cpus=1
    )
    print(f"cluster up in {time.monotonic() - begin:.1f} s at {started.address}")
    try:
        yield started
    finally:
        monitor = started.logs_dir / "monitor.log"
        if monitor.is_file():  # kept next to the test's files for a failure's post-mortem
            (tmp_path / "monitor.log").write_bytes(monitor.read_bytes())
        begin = time.monotonic()
        started.stop()
        print(f"cluster stopped in {time.monotonic() - begin:.1f} s")
    assert not started.running
    assert local._session_members(started.pid) == []  # nothing of the cluster is left
    assert not started.temp_dir.exists()


def client_env(cluster: LocalCluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **cluster.client_env, "RAY_USAGE_STATS_ENABLED": "0"}


def monitor_tail(cluster: LocalCluster) -> str:
    """The autoscaler's recent decisions, for an assertion's message."""
    path = cluster.logs_dir / "monitor.log"
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join(line for line in lines[-400:] if "StandardAutoscaler" in line)[-4000:]


@pytest.mark.integration
def test_a_batch_whose_runners_need_cpus_grows_the_cluster_which_shrinks_when_idle(
    tmp_path: Path, cluster: LocalCluster
) -> None:
    names = [f"r{i}" for i in range(REPOS)]
    repos = [create_repo(tmp_path / "repos" / name) for name in names]
    (tmp_path / "repos.txt").write_text("".join(f"{r}\n" for r in repos))
    (tmp_path / "agent.py").write_text(AGENT)
    # Two runners of two slots, one CPU each: nothing fits on the head (0 CPUs).
    (tmp_path / "ado.yaml").write_text(
        yaml.safe_dump(
            {"ray": {"runner_num_cpus": 1, "slots_per_runner": 2, "namespace": "ado-autoscale"}}
        )
    )
    env = client_env(cluster)

    started = time.monotonic()
    batch = subprocess.run(
        [
            sys.executable, "-m", "ado_ray", "batch", str(tmp_path / "repos.txt"),
            "--config", str(tmp_path / "ado.yaml"),
            "--ray-address", cluster.address,
            "--parallel", "4",
            "--name", "grow",
            "--state", str(tmp_path / "state.db"),
            "--work-root", str(tmp_path / "work"),
            "--cmd", f"{sys.executable} {tmp_path / 'agent.py'} {{repo_name}}",
            "--json",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    batch_s = time.monotonic() - started
    assert batch.returncode == 0, batch.stderr[-3000:] + monitor_tail(cluster)
    summary = json.loads(batch.stdout)
    assert summary["counts"] == {"changed": REPOS}
    for repo in repos:
        assert git(repo, "show", "ado/grow:CHANGED.txt") == f"changed for {repo.name}"

    inspect = subprocess.run(
        [sys.executable, "-c", INSPECT, cluster.address, summary["run_id"], ",".join(names),
         str(IDLE_MINUTES * 60 + 45)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert inspect.returncode == 0, inspect.stderr[-3000:]
    seen = json.loads(inspect.stdout)
    print(json.dumps({"batch_s": round(batch_s, 1), **seen}, indent=1))  # shown with -s

    head = [n["id"] for n in seen["after_batch"] if n["head"]]
    workers = {n["id"] for n in seen["after_batch"] if not n["head"]}
    assert len(head) == 1
    # Grew: two worker nodes joined (more may have come and gone), one per runner.
    assert len(workers) >= 2, monitor_tail(cluster)
    runner_nodes = set(seen["runners"].values())
    assert len(seen["runners"]) == 2 and len(runner_nodes) == 2
    assert runner_nodes <= workers and head[0] not in runner_nodes
    # Every task ran on one of those worker nodes.
    assert set(seen["tasks"]) == {f"ado:{n}" for n in names}
    assert set(seen["tasks"].values()) <= runner_nodes
    # Shrank: once idle, only the head is left.
    alive = [n["id"] for n in seen["final"] if n["state"] == "ALIVE"]
    assert alive == head, monitor_tail(cluster)
    assert {n["id"] for n in seen["final"] if n["state"] == "DEAD"} >= runner_nodes
