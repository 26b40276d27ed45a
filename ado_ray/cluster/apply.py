"""`ado cluster up | down | status`: the rendered objects, through the kubernetes client.

`up` applies every object of an overlay with server-side apply (field manager `ado`,
conflicts forced: these objects are ado's); `down` deletes them in reverse order (a 404
is done); `status` reads the head Deployment and the worker pods. The objects are the
same ones `ado cluster render` writes to `deploy/`: the base plus the overlay's own
objects, with its patches merged in. `--dry-run` prints them and calls nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from kubernetes import client

from ado_ray.cluster import objects, overlays, render
from ado_ray.cluster.objects import Obj
from ado_ray.cluster.spec import ClusterSpec
from ado_ray.config import deep_merge
from ado_ray.errors import AdoError, UsageError

FIELD_MANAGER = "ado"
# kind -> (API prefix, plural, namespaced): the kinds `render` makes.
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "ResourceQuota": ("/api/v1", "resourcequotas", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "StatefulSet": ("/apis/apps/v1", "statefulsets", True),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets", True),
}


class ClusterError(AdoError):
    """The Kubernetes API refused a request."""


def overlay_objects(spec: ClusterSpec, overlay: str) -> list[Obj]:
    """The objects `kubectl kustomize deploy/overlays/<overlay>` gives, without kubectl."""
    dev_autoscaler = render.autoscaler_yaml(spec, spec.dev.worker, spec.dev.max_workers)
    choices = overlays.overlays(spec, dev_autoscaler)
    if overlay not in choices:
        raise UsageError(
            f"unknown overlay '{overlay}'; expected one of: {', '.join(sorted(choices))}"
        )
    resources, patches = choices[overlay]
    found = [doc for docs in render.base_documents(spec).values() for doc in docs]
    found += [doc for docs in resources.values() for doc in docs]
    for patch in (doc for docs in patches.values() for doc in docs):
        for i, doc in enumerate(found):
            if (doc["kind"], doc["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"]):
                found[i] = deep_merge(doc, patch)
    return found


def object_path(obj: Obj) -> str:
    try:
        prefix, plural, namespaced = KINDS[obj["kind"]]
    except KeyError:
        raise UsageError(f"ado cluster cannot apply a {obj['kind']}") from None
    name = obj["metadata"]["name"]
    if namespaced:
        return f"{prefix}/namespaces/{obj['metadata']['namespace']}/{plural}/{name}"
    return f"{prefix}/{plural}/{name}"


def describe(obj: Obj) -> str:
    namespace = obj["metadata"].get("namespace")
    return f"{obj['kind']}/{obj['metadata']['name']}" + (f" in {namespace}" if namespace else "")


def _call(api: client.ApiClient, method: str, path: str, body: Any = None, **query: str) -> Any:
    headers = {"Accept": "application/json"}
    if method == "PATCH":
        headers["Content-Type"] = "application/apply-patch+yaml"  # JSON is YAML
    request = api.param_serialize(
        method,
        path,
        query_params=list(query.items()),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request)
    response.read()
    text = response.data.decode("utf-8", "replace") if response.data else ""
    if response.status == 404 and method in ("DELETE", "GET"):
        return None
    if response.status >= 400:
        try:
            message = json.loads(text).get("message", text)
        except ValueError:
            message = text
        raise ClusterError(f"{method} {path}: HTTP {response.status}: {message}")
    return json.loads(text) if text else {}


def up(api: client.ApiClient, found: Iterable[Obj]) -> list[str]:
    """Server-side apply each object; what was applied."""
    applied = []
    for obj in found:
        _call(api, "PATCH", object_path(obj), obj, fieldManager=FIELD_MANAGER, force="true")
        applied.append(describe(obj))
    return applied


def down(api: client.ApiClient, found: list[Obj]) -> list[str]:
    """Delete each object, last first (the namespace last); what was there to delete."""
    deleted = []
    for obj in reversed(found):
        if _call(api, "DELETE", object_path(obj), propagationPolicy="Foreground") is not None:
            deleted.append(describe(obj))
    return deleted


def status(api: client.ApiClient, spec: ClusterSpec) -> dict[str, Any]:
    """The head Deployment's readiness and the worker pods with their phases."""
    head = objects.head(spec)[0]
    deployment = _call(api, "GET", object_path(head))
    pods = _call(
        api,
        "GET",
        f"/api/v1/namespaces/{spec.namespace}/pods",
        labelSelector=f"ray-cluster-name={spec.name},ray-node-type=worker",
    )
    head_status = (deployment or {}).get("status", {})
    return {
        "namespace": spec.namespace,
        "head": None
        if deployment is None
        else {
            "name": head["metadata"]["name"],
            "ready": head_status.get("readyReplicas", 0),
            "wanted": (deployment.get("spec") or {}).get("replicas", 1),
        },
        "workers": [
            {"name": pod["metadata"]["name"], "phase": (pod.get("status") or {}).get("phase")}
            for pod in (pods or {}).get("items", [])
        ],
    }
