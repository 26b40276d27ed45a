"""`deploy/monitoring/`: what Prometheus and Grafana need to watch an ado-ray cluster.

Every Ray node (the head and each worker pod) serves its metrics, ado's `ray_ado_*` among
Ray's own, on the container port `metrics` (`objects.METRICS_PORT`, `ray start
--metrics-export-port`). This kustomization holds:

- a `PodMonitor` (the Prometheus Operator's `monitoring.coreos.com/v1`) that scrapes that
  port on every pod of the cluster (label `ray-cluster-name`), head and workers alike,
  with the pod's Ray node kind as the label `ray_node_kind`;
- a NetworkPolicy that lets pods of the monitoring namespace (`MONITORING_NAMESPACE`)
  reach that port and no other: the base denies all ingress from outside the cluster's
  Ray pods, and the metrics endpoint itself asks for no token;
- the Grafana dashboard (`grafana.py`) as a JSON file, and generated from it a ConfigMap
  labelled for Grafana's dashboard sidecar (`grafana_dashboard: "1"`).

It is not part of `base/`: a PodMonitor can only be applied where the operator's CRDs are,
and the overlays must apply anywhere. `kubectl apply -k deploy/monitoring` after one.
"""

from __future__ import annotations

from ado_ray.cluster.objects import METRICS_PORT, TAG_CLUSTER, TAG_KIND, Obj, meta
from ado_ray.cluster.spec import ClusterSpec

MONITORING_NAMESPACE = "monitoring"  # where Prometheus runs (kube-prometheus-stack's default)
DASHBOARD_FILE = "grafana-dashboard.json"
SIDECAR_LABEL = {"grafana_dashboard": "1"}  # what Grafana's dashboard sidecar looks for
SCRAPE_INTERVAL = "15s"


def pod_monitor(spec: ClusterSpec) -> Obj:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": meta(spec, spec.name, "monitoring"),
        "spec": {
            "selector": {"matchLabels": {TAG_CLUSTER: spec.name}},
            "namespaceSelector": {"matchNames": [spec.namespace]},
            "podMetricsEndpoints": [
                {
                    "port": "metrics",
                    "path": "/metrics",
                    "interval": SCRAPE_INTERVAL,
                    "relabelings": [
                        {
                            "action": "replace",
                            "sourceLabels": [f"__meta_kubernetes_pod_label_{_label(TAG_KIND)}"],
                            "targetLabel": "ray_node_kind",
                        }
                    ],
                }
            ],
        },
    }


def _label(name: str) -> str:
    """A pod label's name as Prometheus' service discovery spells it."""
    return "".join(c if c.isalnum() else "_" for c in name)


def network_policy(spec: ClusterSpec) -> Obj:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(spec, f"{spec.name}-metrics", "network-policy"),
        "spec": {
            "podSelector": {"matchLabels": {TAG_CLUSTER: spec.name}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
                }
            ],
        },
    }


def documents(spec: ClusterSpec) -> dict[str, list[Obj]]:
    """The YAML files' objects, by file name."""
    return {"pod-monitor.yaml": [pod_monitor(spec)], "network-policy.yaml": [network_policy(spec)]}


def kustomization(spec: ClusterSpec) -> Obj:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(documents(spec)),
        "configMapGenerator": [
            {
                "name": f"{spec.name}-grafana-dashboard",
                "namespace": spec.namespace,
                "files": [DASHBOARD_FILE],
                "options": {
                    "disableNameSuffixHash": True,  # Grafana's sidecar finds it by label
                    "labels": {**SIDECAR_LABEL, "app.kubernetes.io/name": "ado-ray"},
                },
            }
        ],
    }
