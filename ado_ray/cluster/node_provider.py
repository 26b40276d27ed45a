"""Ray autoscaler node provider that runs each Ray worker as a Kubernetes pod, without KubeRay.

Ray's autoscaler (v1 or v2) runs in the head pod and loads this class from the `provider:`
section of its config; the keys below are ours, the rest are Ray's:

```yaml
provider:
  type: external
  module: ado_ray.cluster.node_provider.KubernetesNodeProvider
  namespace: ado                # default: the service account's namespace, else "default"
  head_service: ado-ray-head    # optional: worker pods are owned by (deleted with) this Service
  labels: {app: ado-ray}        # optional: added to every worker pod
  api_server: http://127.0.0.1:8001  # optional: this URL, no credentials (kubectl proxy, tests)
  kubeconfig: ~/.kube/config    # optional, outside a cluster; with `context:`
  disable_node_updaters: true   # Ray's key: the pods start Ray themselves, nothing to SSH into
available_node_types:
  worker: {node_config: {apiVersion: v1, kind: Pod, metadata: {...}, spec: {...}}, ...}
```

A worker is a pod made from its type's `node_config` (a Pod manifest), named
`<cluster>-worker-<random>` (the node id), labelled `ray-cluster-name=<cluster>` and Ray's
tags. Its `ray` container (else its first) gets `RAY_CLOUD_INSTANCE_ID=<pod name>`, which is
how autoscaler v2 pairs a raylet with its pod, and `RAY_NODE_TYPE_NAME=<node type>`.

Tags are labels; a value that is not a valid label value (63 characters of `[A-Za-z0-9._-]`)
goes to the annotation `tags.ado-ray.io/<key>` instead and is read back from there. Pods being
deleted or finished (Failed, Succeeded) are terminated. Deleting a pod that is gone is success;
a 409 Conflict is retried a few times.
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import string
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client import ApiException
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import TAG_RAY_CLUSTER_NAME, TAG_RAY_USER_NODE_TYPE

from ado_ray.errors import ConfigError

T = TypeVar("T")

TAG_ANNOTATION_PREFIX = "tags.ado-ray.io/"
RAY_CONTAINER = "ray"  # the container that runs Ray, if the pod has several
CONFLICT_ATTEMPTS = 5
CONFLICT_BACKOFF_S = 0.05  # doubled after each conflict
FINISHED_PHASES = frozenset({"Failed", "Succeeded"})
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"  # up to 63 characters
LABEL_VALUE = re.compile(rf"({_NAME})?")
LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def is_label_value(value: str) -> bool:
    return LABEL_VALUE.fullmatch(value) is not None


def check_label_key(key: str) -> str:
    if not LABEL_KEY.fullmatch(key):
        raise ValueError(
            f"{key!r} is not a Kubernetes label key; expected [prefix/]name, the name up to "
            "63 characters of [A-Za-z0-9._-], starting and ending with a letter or digit"
        )
    return key


class KubernetesProviderConfig(BaseModel):
    """Our keys of the autoscaler's `provider:` section; Ray's own keys are ignored here."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    namespace: str | None = None
    head_service: str | None = None
    labels: dict[str, str] = {}
    api_server: str | None = None
    kubeconfig: str | None = None
    context: str | None = None

    @field_validator("namespace", "head_service")
    @classmethod
    def _dns_label(cls, value: str | None) -> str | None:
        if value is not None and not DNS_LABEL.fullmatch(value):
            raise ValueError(f"{value!r} is not a DNS label; expected e.g. 'ado-ray'")
        return value

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            check_label_key(key)
            if not is_label_value(label):
                raise ValueError(f"label {key}={label!r}: not a valid label value")
        return value


def describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def name_of(pod: client.V1Pod) -> str:
    return pod.metadata.name if pod.metadata and pod.metadata.name else ""


def ip_of(pod: client.V1Pod | None) -> str:
    return (pod.status.pod_ip or "") if pod is not None and pod.status else ""


def phase_of(pod: client.V1Pod) -> str | None:
    return pod.status.phase if pod.status else None


def is_live(pod: client.V1Pod) -> bool:
    """Not being deleted and not finished."""
    deleting = pod.metadata is not None and pod.metadata.deletion_timestamp is not None
    return not deleting and phase_of(pod) not in FINISHED_PHASES


def tags_of(pod: client.V1Pod) -> dict[str, str]:
    """A pod's tags: its labels, plus the tags that overflowed into annotations."""
    meta = pod.metadata or client.V1ObjectMeta()
    tags = dict(meta.labels or {})
    for key, value in (meta.annotations or {}).items():
        if key.startswith(TAG_ANNOTATION_PREFIX):
            tags[key.removeprefix(TAG_ANNOTATION_PREFIX)] = value
    return tags


def split_tags(tags: dict[str, str]) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """(labels, annotations) that store `tags`; None marks the copy to remove (in a patch)."""
    labels: dict[str, str | None] = {}
    annotations: dict[str, str | None] = {}
    for key, value in tags.items():
        fits = is_label_value(value)
        if "/" in check_label_key(key) and not fits:
            raise ValueError(
                f"tag {key}={value!r}: not a valid label value, and a key with a prefix cannot "
                "overflow into an annotation; use a key without '/'"
            )
        labels[key] = value if fits else None
        if "/" not in key:
            annotations[TAG_ANNOTATION_PREFIX + key] = None if fits else value
    return labels, annotations


def retry_conflicts(call: Callable[[], T]) -> T:
    """`call()`, again after a short wait when the API server answers 409 Conflict."""
    attempt = 0
    while True:
        try:
            return call()
        except ApiException as exc:
            attempt += 1
            if exc.status != 409 or attempt >= CONFLICT_ATTEMPTS:
                raise
            time.sleep(CONFLICT_BACKOFF_S * 2 ** (attempt - 1))


def api_client_for(settings: KubernetesProviderConfig) -> client.ApiClient:
    """`api_server` if given, else the pod's service account, else the kubeconfig."""
    configuration = client.Configuration()
    try:
        if settings.api_server:
            configuration.host = settings.api_server
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                settings.kubeconfig, settings.context, client_configuration=configuration
            )
    except config.ConfigException as exc:
        raise ConfigError(
            f"cannot configure the Kubernetes client: {exc}; expected to run in a pod with a "
            "service account, or a kubeconfig (provider.kubeconfig / $KUBECONFIG)"
        ) from exc
    return client.ApiClient(configuration)


class KubernetesNodeProvider(NodeProvider):
    """Ray nodes as pods in one namespace; node ids are pod names. Thread-safe."""

    def __init__(
        self,
        provider_config: dict[str, Any],
        cluster_name: str,
        *,
        api_client: client.ApiClient | None = None,
    ) -> None:
        super().__init__(provider_config, cluster_name)
        try:
            self.settings = KubernetesProviderConfig.model_validate(provider_config)
        except ValidationError as exc:
            raise ConfigError(f"provider: {describe(exc)}") from exc
        if len(cluster_name) > 50 or not DNS_LABEL.fullmatch(cluster_name):
            raise ConfigError(
                f"cluster_name {cluster_name!r} cannot name pods; expected up to 50 characters "
                "of [a-z0-9-], starting and ending with a letter or digit"
            )
        self.namespace = self.settings.namespace or (
            SA_NAMESPACE_FILE.read_text().strip() if SA_NAMESPACE_FILE.exists() else "default"
        )
        self.core = client.CoreV1Api(api_client or api_client_for(self.settings))
        self._lock = threading.Lock()
        self._pods: dict[str, client.V1Pod | None] = {}  # last state seen; None: gone
        self._owner: dict[str, Any] | None = None

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        selector = {check_label_key(k): v for k, v in tag_filters.items() if is_label_value(v)}
        selector[TAG_RAY_CLUSTER_NAME] = self.cluster_name
        by_annotation = {k: v for k, v in tag_filters.items() if not is_label_value(v)}
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=",".join(f"{k}={v}" for k, v in selector.items())
        ).items
        with self._lock:
            if not tag_filters:
                self._pods.clear()
            self._pods.update({name_of(pod): pod for pod in pods})
        return [
            name_of(pod)
            for pod in pods
            if is_live(pod) and by_annotation.items() <= tags_of(pod).items()
        ]

    def is_running(self, node_id: str) -> bool:
        pod = self._pod(node_id)
        return pod is not None and is_live(pod) and phase_of(pod) == "Running"

    def is_terminated(self, node_id: str) -> bool:
        pod = self._pod(node_id)
        return pod is None or not is_live(pod)

    def node_tags(self, node_id: str) -> dict[str, str]:
        pod = self._pod(node_id)
        return tags_of(pod) if pod is not None else {}

    def internal_ip(self, node_id: str) -> str:
        # A cached pod without an IP may be older than its IP: ask the server again.
        return ip_of(self._pod(node_id)) or ip_of(self._pod(node_id, fresh=True))

    def external_ip(self, node_id: str) -> str:
        return self.internal_ip(node_id)  # pods have no address outside the cluster network

    def _pod(self, name: str, *, fresh: bool = False) -> client.V1Pod | None:
        """The cached pod, else (or if `fresh`) the API server's; None if it is gone."""
        with self._lock:
            if not fresh and name in self._pods:
                return self._pods[name]
        try:
            pod = self.core.read_namespaced_pod(name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            pod = None
        with self._lock:
            self._pods[name] = pod
        return pod

    def create_node(
        self, node_config: dict[str, Any], tags: dict[str, str], count: int
    ) -> dict[str, Any]:
        created = {}
        for _ in range(count):
            pod = retry_conflicts(lambda: self._create_pod(node_config, tags))
            created[name_of(pod)] = pod
        with self._lock:
            self._pods.update(created)
        return created

    def _create_pod(self, template: dict[str, Any], tags: dict[str, str]) -> client.V1Pod:
        """One pod from `template`, under a fresh random name (409 if it is taken)."""
        manifest = copy.deepcopy(template)
        node_type = tags.get(TAG_RAY_USER_NODE_TYPE)
        if manifest.get("kind", "Pod") != "Pod" or not manifest.get("spec", {}).get("containers"):
            raise ConfigError(
                f"node_config of type {node_type!r} is not a Pod manifest; expected "
                "{apiVersion: v1, kind: Pod, spec: {containers: [...]}}"
            )
        suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        name = f"{self.cluster_name}-worker-{suffix}"
        labels, annotations = split_tags({**tags, TAG_RAY_CLUSTER_NAME: self.cluster_name})
        metadata = manifest.setdefault("metadata", {})
        metadata.pop("generateName", None)
        metadata.update(name=name, namespace=self.namespace)
        extra = {"labels": {**self.settings.labels, **labels}, "annotations": annotations}
        for key, add in extra.items():
            metadata[key] = {
                **(metadata.get(key) or {}),
                **{k: v for k, v in add.items() if v is not None},
            }
        if self.settings.head_service:
            metadata["ownerReferences"] = [*metadata.get("ownerReferences", []), self._owner_ref()]
        containers = manifest["spec"]["containers"]
        ray = next((c for c in containers if c.get("name") == RAY_CONTAINER), containers[0])
        env = {"RAY_CLOUD_INSTANCE_ID": name, "RAY_NODE_TYPE_NAME": node_type}
        ray["env"] = [e for e in ray.get("env") or [] if e.get("name") not in env]
        ray["env"] += [{"name": k, "value": v} for k, v in env.items() if v is not None]
        try:
            body = client.V1Pod.model_validate(manifest)
        except ValidationError as exc:
            raise ConfigError(f"node_config of type {node_type!r}: {describe(exc)}") from exc
        return self.core.create_namespaced_pod(self.namespace, body)

    def _owner_ref(self) -> dict[str, Any]:
        """The head Service as the owner: deleting it garbage-collects the workers."""
        service = self.settings.head_service or ""
        if self._owner is None:
            try:
                found = self.core.read_namespaced_service(service, self.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                raise ConfigError(
                    f"provider.head_service: no Service {service!r} in namespace "
                    f"{self.namespace!r}; create it first, or leave head_service out"
                ) from exc
            uid = found.metadata.uid if found.metadata else None
            self._owner = {"apiVersion": "v1", "kind": "Service", "name": service, "uid": uid}
        return self._owner

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        labels, annotations = split_tags(tags)
        patch = {"metadata": {"labels": labels, "annotations": annotations}}
        pod = retry_conflicts(
            lambda: self.core.patch_namespaced_pod(node_id, self.namespace, patch)
        )
        with self._lock:
            self._pods[node_id] = pod

    def terminate_node(self, node_id: str) -> None:
        try:
            retry_conflicts(lambda: self.core.delete_namespaced_pod(node_id, self.namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise
        with self._lock:
            self._pods.pop(node_id, None)
