"""`deploy/monitoring/`: the Grafana dashboard and the PodMonitor, generated from one source.

The dashboard is checked against the metric definitions it is built from (that Prometheus
really has those series is tests/test_metrics.py's part); the kustomization is rendered
by the real `kubectl kustomize` (offline) and checked against the pods it must scrape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ado_ray import metrics
from ado_ray.cluster import grafana, monitoring, objects
from ado_ray.cluster.render import render
from ado_ray.cluster.spec import ClusterSpec
from tests.cluster.test_render import (
    DEFAULT,
    ROOT,
    Obj,
    admits,
    allowed_sources,
    autoscaler,
    kustomize,
    ray_start_options,
    validate,
    worker_pod,
)

DASHBOARD = ROOT / "deploy" / "monitoring" / monitoring.DASHBOARD_FILE


@pytest.fixture(scope="module")
def monitoring_objects() -> dict[str, Obj]:
    """`kubectl kustomize deploy/monitoring`, by kind (one object of each)."""
    docs = kustomize(ROOT / "deploy" / "monitoring")
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs)
    return by_kind


def expressions(dashboard: Obj) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


# -- the dashboard ---------------------------------------------------------------------------


def test_the_checked_in_dashboard_is_what_grafana_py_renders() -> None:
    assert DASHBOARD.read_text(encoding="utf-8") == grafana.dashboard_json()
    assert DEFAULT.files[f"deploy/monitoring/{monitoring.DASHBOARD_FILE}"] == DASHBOARD.read_text()
    dashboard = json.loads(DASHBOARD.read_text())
    assert grafana.NOTE in dashboard["description"]
    assert dashboard["uid"] == grafana.UID


def test_every_metric_has_a_panel_and_every_query_names_a_real_series() -> None:
    exprs = expressions(grafana.dashboard())
    asked = {name for expr in exprs for name in re.findall(r"\bray_[a-z_]+", expr)}
    assert asked <= set(metrics.exported_names())
    for metric in metrics.METRICS:
        assert any(name.startswith(metric.exported) for name in asked), metric.name
    for expr in exprs:
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), expr
        # Counters and histograms only through rate/increase; a gauge as it is.
        for name in re.findall(r"\bray_[a-z_]+", expr):
            gauge = name == metrics.TASKS.exported
            assert gauge or re.search(rf"(rate|increase)\({name}[{{\[]", expr), expr


def test_label_names_in_queries_are_the_metrics_labels() -> None:
    by_name = {name: m for m in metrics.METRICS for name in metrics.exported_names([m])}
    for expr in expressions(grafana.dashboard()):
        used = {
            label.strip()
            for group in re.findall(r"by \(([^)]*)\)", expr)
            for label in group.split(",")
            if label.strip()
        }
        used |= set(re.findall(r"([a-z_]+)=~?\"", expr))
        names = re.findall(r"\bray_[a-z_]+", expr)
        labels = {label for name in names for label in by_name[name].labels}
        assert used <= labels | {"le"}, expr


def test_panels_tile_the_grid_with_unique_ids_and_the_datasource_variable() -> None:
    dashboard = grafana.dashboard()
    panels = dashboard["panels"]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    cells = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not area & cells, p["title"]
        cells |= area
        assert p["datasource"] == grafana.DATASOURCE
        assert all(t["datasource"] == grafana.DATASOURCE for t in p["targets"])
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "run"]


# -- the kustomization -----------------------------------------------------------------------


def test_monitoring_kustomizes_offline_to_a_pod_monitor_a_policy_and_the_dashboard(
    monitoring_objects: dict[str, Obj],
) -> None:
    assert set(monitoring_objects) == {"PodMonitor", "NetworkPolicy", "ConfigMap"}
    config_map = monitoring_objects["ConfigMap"]
    validate(config_map)
    validate(monitoring_objects["NetworkPolicy"])
    assert config_map["data"] == {monitoring.DASHBOARD_FILE: DASHBOARD.read_text()}
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "ado"
    monitor = monitoring_objects["PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "ado"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ado"]}


def test_the_pod_monitor_scrapes_the_metrics_port_of_the_head_and_every_worker(
    monitoring_objects: dict[str, Obj],
) -> None:
    monitor = monitoring_objects["PodMonitor"]["spec"]
    selector = monitor["selector"]["matchLabels"]
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    head = objects.head(ClusterSpec())[0]["spec"]["template"]
    worker = worker_pod(autoscaler())
    for pod in (head, worker):
        # The worker's labels are its template's plus Ray's tags (the node provider's).
        assert selector.items() <= pod["metadata"]["labels"].items()
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        assert ports[endpoint["port"]] == objects.METRICS_PORT
        options = ray_start_options(container["command"])
        assert options["metrics_export_port"] == objects.METRICS_PORT
    (relabel,) = endpoint["relabelings"]
    assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_ray_node_type"]


def test_only_the_monitoring_namespace_reaches_the_metrics_port_and_only_it(
    monitoring_objects: dict[str, Obj],
) -> None:
    policy = monitoring_objects["NetworkPolicy"]
    head = objects.head(ClusterSpec())[0]["spec"]["template"]["metadata"]["labels"]
    for pod in (head, worker_pod(autoscaler())["metadata"]["labels"]):
        rules = allowed_sources([policy], pod)
        assert rules is not None
        (rule,) = rules
        # Every pod of that namespace, nothing else (no pod selector, no addresses), and
        # on the metrics port only.
        assert rule["from"] == [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": monitoring.MONITORING_NAMESPACE}
                }
            }
        ]
        assert rule["ports"] == [{"protocol": "TCP", "port": objects.METRICS_PORT}]
        assert not admits(rules, None, objects.GCS_PORT)
    assert allowed_sources([policy], {"app": "something-else"}) is None


def test_the_monitoring_objects_follow_the_spec(tmp_path: Path) -> None:
    spec = ClusterSpec(name="batch", namespace="agents")
    files = render(spec).files
    monitor = monitoring.pod_monitor(spec)
    assert monitor["metadata"] == {**monitor["metadata"], "name": "batch", "namespace": "agents"}
    assert monitor["spec"]["selector"] == {"matchLabels": {objects.TAG_CLUSTER: "batch"}}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["agents"]}
    assert "name: batch-grafana-dashboard" in files["deploy/monitoring/kustomization.yaml"]
    assert "namespace: agents" in files["deploy/monitoring/kustomization.yaml"]
