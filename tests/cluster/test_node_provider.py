"""The Kubernetes node provider, through the real `kubernetes` client, against `FakeKube`.

`FakeKube` (tests/cluster/fake_k8s.py) stands in for the Kubernetes API server: a local HTTP
server that answers the pods (and services) endpoints with real-format Kubernetes JSON and
errors. Nothing is mocked on the client side: each call goes through the `kubernetes`
package's own serialization, HTTP and deserialization, configured by `api_server:`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from ray.autoscaler._private.autoscaler import NonTerminatedNodes
from ray.autoscaler._private.event_summarizer import EventSummarizer
from ray.autoscaler._private.node_launcher import BaseNodeLauncher
from ray.autoscaler._private.node_provider_availability_tracker import (
    NodeProviderAvailabilityTracker,
)
from ray.autoscaler._private.providers import _get_node_provider
from ray.autoscaler._private.util import ConcurrentCounter
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_LAUNCH_REQUEST,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_USER_NODE_TYPE,
)
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig, IConfigReader
from ray.autoscaler.v2.instance_manager.node_provider import NodeProviderAdapter

from ado_ray.cluster import node_provider as np_module
from ado_ray.cluster.node_provider import (
    CONFLICT_ATTEMPTS,
    TAG_ANNOTATION_PREFIX,
    KubernetesNodeProvider,
    is_label_value,
    split_tags,
)
from ado_ray.errors import ConfigError
from tests.cluster.fake_k8s import FakeKube

NS = "ado"
CLUSTER = "demo"
MODULE = "ado_ray.cluster.node_provider.KubernetesNodeProvider"
LONG = "x" * 64  # one character more than a label value may hold
WORKER_TAGS = {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: "cpu"}


def pod_template(**metadata: Any) -> dict[str, Any]:
    """A worker's `node_config`: a Pod manifest with a sidecar before the `ray` container."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"labels": {"app": "ado-ray"}, "generateName": "ignored-", **metadata},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "proxy", "image": "envoyproxy/envoy:v1.31"},
                {
                    "name": "ray",
                    "image": "rayproject/ray:2.60.0",
                    "command": ["ray", "start", "--address=ado-ray-head:6379", "--block"],
                    "env": [{"name": "RAY_CLOUD_INSTANCE_ID", "value": "stale"}, {"name": "A"}],
                },
            ],
        },
    }


def provider_config(fake: FakeKube, **extra: Any) -> dict[str, Any]:
    return {"type": "external", "module": MODULE, "namespace": NS, "api_server": fake.url, **extra}


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    server = FakeKube().start()
    yield server
    server.stop()


@pytest.fixture
def provider(fake: FakeKube) -> Iterator[KubernetesNodeProvider]:
    made = KubernetesNodeProvider(provider_config(fake), CLUSTER)
    yield made
    made.core.api_client.close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(np_module, "CONFLICT_BACKOFF_S", 0.001)


def stored(fake: FakeKube, name: str) -> dict[str, Any]:
    return fake.pods[NS, name]


def env_of(pod: dict[str, Any], container: str) -> dict[str, str | None]:
    (found,) = [c for c in pod["spec"]["containers"] if c["name"] == container]
    return {item["name"]: item.get("value") for item in found.get("env", [])}


def add_pod(fake: FakeKube, name: str, *, phase: str = "Pending", **meta: Any) -> None:
    labels = {TAG_RAY_CLUSTER_NAME: CLUSTER, **WORKER_TAGS}
    fake.add_pod(
        NS,
        {
            "metadata": {"name": name, "labels": labels, **meta},
            "spec": {"containers": [{"name": "ray", "image": "rayproject/ray"}]},
            "status": {"phase": phase},
        },
    )


# -- create and list ---------------------------------------------------------------------


def test_created_workers_are_listed_with_their_tags(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    created = provider.create_node(pod_template(), WORKER_TAGS, 3)

    assert len(created) == 3
    assert all(re.fullmatch(r"demo-worker-[a-z0-9]{5}", name) for name in created)
    assert sorted(provider.non_terminated_nodes({})) == sorted(created)
    for name in created:
        assert provider.node_tags(name) == {
            **WORKER_TAGS,
            TAG_RAY_CLUSTER_NAME: CLUSTER,
            "app": "ado-ray",
        }
        assert stored(fake, name)["metadata"]["labels"][TAG_RAY_USER_NODE_TYPE] == "cpu"
        assert not provider.is_running(name)  # Pending
        assert not provider.is_terminated(name)
    # A fresh provider (an autoscaler restart) sees the same, from the server alone.
    again = KubernetesNodeProvider(provider_config(fake), CLUSTER)
    assert sorted(again.non_terminated_nodes({})) == sorted(created)
    assert again.node_tags(next(iter(created)))[TAG_RAY_USER_NODE_TYPE] == "cpu"
    again.core.api_client.close()


def test_created_pod_is_the_template_plus_name_labels_and_instance_id(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    template = pod_template(annotations={"note": "kept"})
    (name,) = provider.create_node(template, WORKER_TAGS, 1)

    pod = stored(fake, name)
    assert pod["metadata"]["namespace"] == NS
    assert "generateName" not in pod["metadata"]
    assert pod["metadata"]["annotations"] == {"note": "kept"}
    assert pod["metadata"]["labels"]["app"] == "ado-ray"
    assert pod["spec"]["restartPolicy"] == "Never"
    # The ray container, not the sidecar listed first, says which pod it runs in.
    assert env_of(pod, "ray") == {
        "A": None,
        "RAY_CLOUD_INSTANCE_ID": name,
        "RAY_NODE_TYPE_NAME": "cpu",
    }
    assert env_of(pod, "proxy") == {}
    assert template == pod_template(annotations={"note": "kept"})  # not modified in place


def test_first_container_gets_the_instance_id_without_a_ray_container(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    template = pod_template()
    template["spec"]["containers"] = template["spec"]["containers"][:1]
    (name,) = provider.create_node(template, {TAG_RAY_NODE_KIND: NODE_KIND_WORKER}, 1)

    assert env_of(stored(fake, name), "proxy") == {"RAY_CLOUD_INSTANCE_ID": name}


def test_configured_labels_go_on_every_worker(fake: FakeKube) -> None:
    provider = KubernetesNodeProvider(provider_config(fake, labels={"team": "infra"}), CLUSTER)
    (name,) = provider.create_node(pod_template(), WORKER_TAGS, 1)

    assert stored(fake, name)["metadata"]["labels"]["team"] == "infra"
    provider.core.api_client.close()


def test_name_collision_is_retried_under_a_new_name(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    fake.fail_next("POST", 409)
    (name,) = provider.create_node(pod_template(), WORKER_TAGS, 1)

    posted = [r.body["metadata"]["name"] for r in fake.requests if r.method == "POST"]
    assert len(posted) == 2
    assert posted[1] == name
    assert list(fake.pods) == [(NS, name)]


def test_label_selector_filters_by_tags_and_cluster(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    cpu = provider.create_node(pod_template(), WORKER_TAGS, 2)
    gpu = provider.create_node(pod_template(), {**WORKER_TAGS, TAG_RAY_USER_NODE_TYPE: "gpu"}, 1)
    other = KubernetesNodeProvider(provider_config(fake), "other")
    theirs = other.create_node(pod_template(), WORKER_TAGS, 1)

    assert sorted(provider.non_terminated_nodes({TAG_RAY_USER_NODE_TYPE: "cpu"})) == sorted(cpu)
    assert provider.non_terminated_nodes({TAG_RAY_USER_NODE_TYPE: "gpu"}) == list(gpu)
    assert provider.non_terminated_nodes({TAG_RAY_USER_NODE_TYPE: "tpu"}) == []
    assert sorted(provider.non_terminated_nodes({})) == sorted([*cpu, *gpu])
    assert other.non_terminated_nodes({}) == list(theirs)
    # The filtering is the server's: the selector went out with the request.
    last = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/pods")][-1]
    assert last.query["labelSelector"] == [f"{TAG_RAY_CLUSTER_NAME}=other"]
    other.core.api_client.close()


# -- tags --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fits"),
    [
        ("a" * 63, True),
        ("", True),
        ("ab-c_d.e", True),
        (LONG, False),
        ("-a", False),
        ("a b", False),
    ],
)
def test_label_value_rules(value: str, fits: bool) -> None:
    assert is_label_value(value) is fits


def test_a_prefixed_key_cannot_overflow() -> None:
    with pytest.raises(ValueError, match="prefix"):
        split_tags({"example.com/key": LONG})


def test_a_value_too_long_for_a_label_round_trips_through_an_annotation(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    tags = {**WORKER_TAGS, TAG_RAY_NODE_NAME: LONG, "note": "has spaces/slash"}
    (name,) = provider.create_node(pod_template(), tags, 1)

    meta = stored(fake, name)["metadata"]
    assert TAG_RAY_NODE_NAME not in meta["labels"]
    assert meta["annotations"][TAG_ANNOTATION_PREFIX + TAG_RAY_NODE_NAME] == LONG
    assert meta["annotations"][TAG_ANNOTATION_PREFIX + "note"] == "has spaces/slash"
    assert provider.node_tags(name)[TAG_RAY_NODE_NAME] == LONG
    # Filters on such a value are applied here, not in the label selector.
    assert provider.non_terminated_nodes({TAG_RAY_NODE_NAME: LONG}) == [name]
    assert provider.non_terminated_nodes({TAG_RAY_NODE_NAME: LONG + "y"}) == []

    # A value that fits again moves back to the labels; the annotation goes.
    provider.set_node_tags(name, {TAG_RAY_NODE_NAME: "short"})
    meta = stored(fake, name)["metadata"]
    assert meta["labels"][TAG_RAY_NODE_NAME] == "short"
    assert TAG_ANNOTATION_PREFIX + TAG_RAY_NODE_NAME not in meta["annotations"]
    assert provider.node_tags(name)[TAG_RAY_NODE_NAME] == "short"
    # And back again.
    provider.set_node_tags(name, {TAG_RAY_NODE_NAME: LONG})
    assert TAG_RAY_NODE_NAME not in stored(fake, name)["metadata"]["labels"]
    assert provider.node_tags(name)[TAG_RAY_NODE_NAME] == LONG


def test_the_fake_server_rejects_a_label_too_long(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    """What makes the overflow necessary: the API server answers 422 to such a label."""
    (name,) = provider.create_node(pod_template(), WORKER_TAGS, 1)
    patch = {"metadata": {"labels": {TAG_RAY_NODE_NAME: LONG}}}
    with pytest.raises(ApiException) as caught:
        provider.core.patch_namespaced_pod(name, NS, patch)
    assert caught.value.status == 422


def test_set_node_tags_patches_labels_and_retries_a_conflict(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    (name,) = provider.create_node(pod_template(), WORKER_TAGS, 1)
    fake.fail_next("PATCH", 409)

    provider.set_node_tags(name, {"ray-node-status": "up-to-date"})

    patches = [r for r in fake.requests if r.method == "PATCH"]
    assert len(patches) == 2
    assert patches[-1].content_type == "application/strategic-merge-patch+json"
    assert stored(fake, name)["metadata"]["labels"]["ray-node-status"] == "up-to-date"
    assert provider.node_tags(name)["ray-node-status"] == "up-to-date"
    assert provider.node_tags(name)[TAG_RAY_USER_NODE_TYPE] == "cpu"  # untouched


def test_a_conflict_that_persists_is_raised(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    (name,) = provider.create_node(pod_template(), WORKER_TAGS, 1)
    fake.fail_next("PATCH", 409, times=CONFLICT_ATTEMPTS)

    with pytest.raises(ApiException) as caught:
        provider.set_node_tags(name, {"ray-node-status": "up-to-date"})
    assert caught.value.status == 409
    assert len([r for r in fake.requests if r.method == "PATCH"]) == CONFLICT_ATTEMPTS


# -- state -------------------------------------------------------------------------------


def test_pods_being_deleted_or_finished_are_not_listed(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    add_pod(fake, "demo-worker-pend1")
    add_pod(fake, "demo-worker-runs1", phase="Running")
    add_pod(fake, "demo-worker-unkn1", phase="Unknown")
    add_pod(fake, "demo-worker-fail1", phase="Failed")
    add_pod(fake, "demo-worker-done1", phase="Succeeded")
    add_pod(fake, "demo-worker-gone1", phase="Running", deletionTimestamp="2025-01-01T00:00:00Z")

    live = {"demo-worker-pend1", "demo-worker-runs1", "demo-worker-unkn1"}
    assert set(provider.non_terminated_nodes({})) == live
    for name in ("demo-worker-fail1", "demo-worker-done1", "demo-worker-gone1"):
        assert provider.is_terminated(name)
        assert not provider.is_running(name)
    assert [provider.is_running(name) for name in sorted(live)] == [False, True, False]


def test_is_running_and_ip_follow_the_pod(provider: KubernetesNodeProvider, fake: FakeKube) -> None:
    (name,) = provider.create_node(pod_template(), WORKER_TAGS, 1)
    provider.non_terminated_nodes({})
    assert not provider.is_running(name)
    assert provider.internal_ip(name) == ""

    fake.schedule(NS, name, pod_ip="10.244.1.7")
    # The cached pod has no IP yet, so it is read again.
    assert provider.internal_ip(name) == "10.244.1.7"
    assert provider.external_ip(name) == "10.244.1.7"
    provider.non_terminated_nodes({})
    assert provider.is_running(name)
    assert provider.get_node_id("10.244.1.7", use_internal_ip=True) == name


def test_a_pod_unknown_to_the_server_is_terminated(provider: KubernetesNodeProvider) -> None:
    assert provider.is_terminated("demo-worker-never")
    assert not provider.is_running("demo-worker-never")
    assert provider.node_tags("demo-worker-never") == {}


# -- terminate ---------------------------------------------------------------------------


def test_terminated_pods_are_gone(provider: KubernetesNodeProvider, fake: FakeKube) -> None:
    first, second, third = provider.create_node(pod_template(), WORKER_TAGS, 3)
    provider.terminate_nodes([first, second])

    assert provider.non_terminated_nodes({}) == [third]
    assert provider.is_terminated(first)
    assert list(fake.pods) == [(NS, third)]


def test_a_running_pod_terminates_gracefully(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    (name,) = provider.create_node(pod_template(), WORKER_TAGS, 1)
    fake.schedule(NS, name, pod_ip="10.244.1.8")
    provider.terminate_node(name)

    assert stored(fake, name)["metadata"]["deletionTimestamp"]  # still shutting down
    assert provider.non_terminated_nodes({}) == []
    assert provider.is_terminated(name)
    provider.terminate_node(name)  # again, while it shuts down
    fake.finish_deletions()
    assert provider.is_terminated(name)


def test_terminating_a_missing_pod_is_not_an_error(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    provider.terminate_node("demo-worker-never")
    provider.terminate_nodes(["demo-worker-never", "demo-worker-nope2"])

    assert [r.method for r in fake.requests] == ["DELETE"] * 3


def test_other_delete_errors_are_raised(provider: KubernetesNodeProvider, fake: FakeKube) -> None:
    (name,) = provider.create_node(pod_template(), WORKER_TAGS, 1)
    fake.fail_next("DELETE", 500)

    with pytest.raises(ApiException) as caught:
        provider.terminate_node(name)
    assert caught.value.status == 500
    assert provider.non_terminated_nodes({}) == [name]


# -- head service --------------------------------------------------------------------------


def test_workers_are_owned_by_the_head_service(fake: FakeKube) -> None:
    service = fake.add_service(NS, "ado-ray-head")
    provider = KubernetesNodeProvider(provider_config(fake, head_service="ado-ray-head"), CLUSTER)
    first, second = provider.create_node(pod_template(), WORKER_TAGS, 2)

    for name in (first, second):
        (owner,) = stored(fake, name)["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "v1",
            "kind": "Service",
            "name": "ado-ray-head",
            "uid": service["metadata"]["uid"],
        }
    reads = [r for r in fake.requests if r.path.endswith("/services/ado-ray-head")]
    assert len(reads) == 1  # read once
    provider.core.api_client.close()


def test_a_missing_head_service_is_a_config_error(fake: FakeKube) -> None:
    provider = KubernetesNodeProvider(provider_config(fake, head_service="ado-ray-head"), CLUSTER)
    with pytest.raises(ConfigError, match="no Service 'ado-ray-head' in namespace 'ado'"):
        provider.create_node(pod_template(), WORKER_TAGS, 1)
    assert fake.pods == {}
    provider.core.api_client.close()


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "cluster", "message"),
    [
        ({"namespace": "Bad_NS"}, CLUSTER, "is not a DNS label"),
        ({"labels": {"app": LONG}}, CLUSTER, "not a valid label value"),
        ({"labels": {"-app": "x"}}, CLUSTER, "is not a Kubernetes label key"),
        ({}, "Demo_Cluster", "cannot name pods"),
        ({}, "c" * 51, "cannot name pods"),
    ],
)
def test_bad_config_is_reported(
    fake: FakeKube, extra: dict[str, Any], cluster: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        KubernetesNodeProvider(provider_config(fake, **extra), cluster)


def test_node_config_must_be_a_pod(provider: KubernetesNodeProvider, fake: FakeKube) -> None:
    with pytest.raises(ConfigError, match="'cpu' is not a Pod manifest"):
        provider.create_node({"kind": "Deployment", "spec": {}}, WORKER_TAGS, 1)
    with pytest.raises(ConfigError, match="is not a Pod manifest"):
        provider.create_node({"InstanceType": "m5.large"}, WORKER_TAGS, 1)
    template = pod_template()
    template["spec"]["containerz"] = []
    with pytest.raises(ConfigError, match=r"'cpu': spec\.containerz: Extra inputs are not"):
        provider.create_node(template, WORKER_TAGS, 1)
    assert fake.requests == []


def test_a_missing_kubeconfig_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config = {"type": "external", "module": MODULE, "kubeconfig": str(tmp_path / "nope")}
    with pytest.raises(ConfigError, match="cannot configure the Kubernetes client"):
        KubernetesNodeProvider(config, CLUSTER)


# -- as Ray's autoscaler uses it -------------------------------------------------------------


def test_ray_loads_it_as_an_external_provider(fake: FakeKube) -> None:
    config = provider_config(fake, disable_node_updaters=True)
    loaded = _get_node_provider(config, CLUSTER, use_cache=False)

    assert type(loaded) is KubernetesNodeProvider
    assert loaded.namespace == NS
    assert loaded.cluster_name == CLUSTER
    assert loaded.non_terminated_nodes({}) == []
    loaded.core.api_client.close()


def autoscaler_config(fake: FakeKube) -> dict[str, Any]:
    """The least autoscaler config that Ray's `prepare_config` and schema accept."""
    template = pod_template()
    return {
        "cluster_name": CLUSTER,
        "max_workers": 4,
        "idle_timeout_minutes": 1,
        "upscaling_speed": 1.0,
        "provider": provider_config(fake, disable_node_updaters=True),
        "auth": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "head_node_type": "head",
        "available_node_types": {
            "head": {"node_config": template, "resources": {"CPU": 0}, "max_workers": 0},
            "cpu": {"node_config": template, "resources": {"CPU": 1}, "max_workers": 4},
        },
    }


def test_autoscaler_v1_launches_and_classifies_workers(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    config = autoscaler_config(fake)
    add_pod(
        fake,
        "demo-head-x1",
        phase="Running",
        labels={
            TAG_RAY_CLUSTER_NAME: CLUSTER,
            TAG_RAY_NODE_KIND: "head",
            TAG_RAY_USER_NODE_TYPE: "head",
        },
    )
    pending = ConcurrentCounter()
    pending.inc("cpu", 2)
    launcher = BaseNodeLauncher(
        provider=provider,
        pending=pending,
        event_summarizer=EventSummarizer(),
        node_provider_availability_tracker=NodeProviderAvailabilityTracker(),
        node_types=config["available_node_types"],
    )
    launcher.launch_node(config, 2, "cpu")

    nodes = NonTerminatedNodes(provider)
    assert nodes.head_id == "demo-head-x1"
    assert len(nodes.worker_ids) == 2
    for name in nodes.worker_ids:
        tags = provider.node_tags(name)
        assert tags[TAG_RAY_USER_NODE_TYPE] == "cpu"
        assert tags[TAG_RAY_NODE_NAME] == f"ray-{CLUSTER}-worker"
        assert env_of(stored(fake, name), "ray")["RAY_CLOUD_INSTANCE_ID"] == name


class _Reader(IConfigReader):
    def __init__(self, config: AutoscalingConfig) -> None:
        self.config = config

    def get_cached_autoscaling_config(self) -> AutoscalingConfig:
        return self.config

    def refresh_cached_autoscaling_config(self) -> None:
        pass


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_autoscaler_v2_sees_launched_pods_as_cloud_instances(
    provider: KubernetesNodeProvider, fake: FakeKube
) -> None:
    config = AutoscalingConfig(autoscaler_config(fake), skip_content_hash=True)
    adapter = NodeProviderAdapter(provider, _Reader(config))

    adapter.launch({"cpu": 2}, request_id="req-1")
    wait_for(lambda: len(adapter.get_non_terminated()) == 2)
    instances = adapter.get_non_terminated()
    assert adapter.poll_errors() == []
    for instance_id, instance in instances.items():
        assert instance.node_type == "cpu"
        assert instance.request_id == "req-1"
        assert not instance.is_running
        # v2 pairs the raylet with this instance by the env var the pod starts Ray with.
        assert env_of(stored(fake, instance_id), "ray")["RAY_CLOUD_INSTANCE_ID"] == instance_id
        assert stored(fake, instance_id)["metadata"]["labels"][TAG_RAY_LAUNCH_REQUEST] == "req-1"

    adapter.terminate(list(instances), request_id="req-2")
    wait_for(lambda: adapter.get_non_terminated() == {})
    assert adapter.poll_errors() == []
