"""The cluster's rendered files: in sync with the checked-in ones, valid against the official
Kubernetes schemas (kubernetes-validate, pinned version) and Ray's autoscaler schema, and
holding the security properties the deployment promises. The overlays are rendered by the real
`kubectl kustomize` (offline), and the autoscaler config drives the real node provider
against the stand-in API server."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ado_ray.cluster import objects, overlays
from ado_ray.cluster.render import HEADER, PROVIDER_MODULE, render, stale, write
from ado_ray.cluster.spec import ClusterSpec, NodeSpec, load_spec, quantity_bytes
from ado_ray.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.32.0"  # the oldest Kubernetes the manifests are checked against (strict)
DEFAULT = render(ClusterSpec())
Obj = dict[str, Any]


def kustomize(folder: Path) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH; install it (Debian: kubectl) to render the overlays")
    out = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def overlay_objects() -> dict[str, list[Obj]]:
    """`kubectl kustomize` of the checked-in overlays (offline)."""
    return {name: kustomize(ROOT / "deploy" / "overlays" / name) for name in ("dev", "prod")}


def autoscaler(text: str | None = None) -> Obj:
    config: Obj = yaml.safe_load(text or DEFAULT.files["cluster/k8s.yaml"])
    return config


def worker_pod(config: Obj | None = None) -> Obj:
    pod: Obj = (config or autoscaler())["available_node_types"][objects.WORKER_TYPE]["node_config"]
    return pod


def pod_specs(docs: list[Obj]) -> Iterator[tuple[str, Obj]]:
    """(where, pod spec) of every workload in `docs` and of the worker pods it configures."""
    for doc in docs:
        if doc["kind"] == "Deployment":
            yield f"Deployment/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        if doc["kind"] == "ConfigMap" and objects.CONFIG_KEY in doc.get("data", {}):
            config = autoscaler(doc["data"][objects.CONFIG_KEY])
            yield f"ConfigMap/{doc['metadata']['name']} worker", worker_pod(config)["spec"]


# -- one source of truth -------------------------------------------------------------------


def test_checked_in_files_are_what_render_makes_of_the_default_spec() -> None:
    assert stale(DEFAULT, ROOT) == [], "run `ado cluster render` and commit the result"


def test_stale_names_changed_missing_and_leftover_files(tmp_path: Path) -> None:
    write(DEFAULT, tmp_path)
    assert stale(DEFAULT, tmp_path) == []
    (tmp_path / "deploy/base/rbac.yaml").write_text("edited by hand\n")
    (tmp_path / "cluster/k8s.yaml").unlink()
    (tmp_path / "deploy/overlays/dev/old.yaml").write_text("{}\n")
    (tmp_path / "cluster/other-cluster.yaml").write_text("{}\n")  # not ours: left alone
    assert stale(DEFAULT, tmp_path) == [
        "cluster/k8s.yaml",
        "deploy/base/rbac.yaml",
        "deploy/overlays/dev/old.yaml",
    ]


def test_every_file_says_it_is_generated_and_is_plain_yaml() -> None:
    for text in (t for p, t in DEFAULT.files.items() if p.endswith(".yaml")):  # JSON: test_grafana
        assert text.startswith(HEADER)
        assert not re.search(r"[&*]id\d", text)  # no YAML anchors or aliases


def test_the_configmap_holds_cluster_k8s_yaml_exactly() -> None:
    (config_map,) = [doc for doc in DEFAULT.objects("deploy/base") if doc["kind"] == "ConfigMap"]
    assert config_map["data"][objects.CONFIG_KEY] == DEFAULT.files["cluster/k8s.yaml"]


def test_render_is_deterministic() -> None:
    assert render(ClusterSpec()).files == DEFAULT.files


# -- Kubernetes schemas ----------------------------------------------------------------------


def validate(doc: Obj) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata'].get('name')}: {where}: {exc.message}")


def test_the_pinned_schemas_ship_with_kubernetes_validate() -> None:
    from kubernetes_validate import utils

    assert K8S_VERSION.rsplit(".", 1)[0] in {v.rsplit(".", 1)[0] for v in utils.all_versions()}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spek": {}}
    with pytest.raises(kubernetes_validate.ValidationError):  # strict: unknown fields fail
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_object_of_an_overlay_validates(
    overlay_objects: dict[str, list[Obj]], overlay: str
) -> None:
    docs = overlay_objects[overlay]
    assert docs
    for doc in docs:
        validate(doc)
    for where, spec in pod_specs(docs):  # the worker pod inside the autoscaler config too
        validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": where}, "spec": spec})


def test_base_objects_validate() -> None:
    for doc in DEFAULT.objects("deploy/base"):
        validate(doc)
    validate({**worker_pod(), "metadata": {"name": "ado-ray-worker-abcde"}})


def test_the_overlays_hold_the_base_and_their_own_objects(
    overlay_objects: dict[str, list[Obj]],
) -> None:
    kinds = {name: sorted(d["kind"] for d in docs) for name, docs in overlay_objects.items()}
    base = ["ConfigMap", "Deployment", "Namespace", "NetworkPolicy", "NetworkPolicy"]
    base += ["Role", "RoleBinding", "Service", "ServiceAccount", "ServiceAccount"]
    assert kinds["prod"] == sorted([*base, "PodDisruptionBudget", "ResourceQuota"])
    dev = ["Deployment", "Service"] * 2 + ["NetworkPolicy"] + ["Secret"] * 3
    assert kinds["dev"] == sorted([*base, *dev])


def test_dev_patches_the_autoscaler_config_with_its_smaller_workers(
    overlay_objects: dict[str, list[Obj]],
) -> None:
    spec = ClusterSpec()
    by_overlay = {
        name: autoscaler(
            next(d for d in docs if d["kind"] == "ConfigMap")["data"][objects.CONFIG_KEY]
        )
        for name, docs in overlay_objects.items()
    }
    assert by_overlay["prod"] == autoscaler()
    dev = by_overlay["dev"]
    assert dev["max_workers"] == spec.dev.max_workers < spec.max_workers
    limits = worker_pod(dev)["spec"]["containers"][0]["resources"]["limits"]
    assert quantity_bytes(limits["memory"]) == spec.dev.worker.bytes("memory")


# -- security --------------------------------------------------------------------------------


def all_pod_specs(overlay_objects: dict[str, list[Obj]]) -> list[tuple[str, Obj]]:
    found = [
        (f"{o}: {where}", spec) for o, d in overlay_objects.items() for where, spec in pod_specs(d)
    ]
    assert len(found) == 2 + 4  # prod: head, worker; dev: head, worker, postgres, redis
    return found


def test_every_pod_is_non_root_read_only_without_capabilities(
    overlay_objects: dict[str, list[Obj]],
) -> None:
    for where, spec in all_pod_specs(overlay_objects):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, where
        for container in spec["containers"] + spec.get("initContainers", []):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security.get("privileged") is not True, where


def test_every_container_has_requests_equal_to_limits(
    overlay_objects: dict[str, list[Obj]],
) -> None:
    for where, spec in all_pod_specs(overlay_objects):
        for container in spec["containers"]:
            resources = container["resources"]
            assert set(resources["limits"]) == {"cpu", "memory", "ephemeral-storage"}, where
            assert resources["requests"] == resources["limits"], where


def test_writable_paths_are_emptydirs(overlay_objects: dict[str, list[Obj]]) -> None:
    for where, spec in all_pod_specs(overlay_objects):
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            for mount in container["volumeMounts"]:
                volume = volumes[mount["name"]]
                assert "emptyDir" in volume or mount.get("readOnly") is True, (where, mount)
                if "emptyDir" in volume:
                    assert volume["emptyDir"]["sizeLimit"], (where, mount)
    for where, spec in all_pod_specs(overlay_objects):
        if "postgres" in where or "redis" in where:
            continue
        mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert {"/tmp", objects.WORK_DIR, "/dev/shm"} <= mounts, where
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["HOME"] == spec["containers"][0]["workingDir"] == objects.WORK_DIR


def test_rbac_is_one_namespaced_role_with_exactly_the_providers_verbs(
    overlay_objects: dict[str, list[Obj]],
) -> None:
    for docs in overlay_objects.values():
        kinds = [d["kind"] for d in docs]
        assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
        (role,) = [d for d in docs if d["kind"] == "Role"]
        assert role["metadata"]["namespace"] == "ado"
        rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r["verbs"] for r in role["rules"]}
        assert rules == {
            (("",), ("pods",)): ["get", "list", "watch", "create", "delete", "patch"],
            (("",), ("pods/status",)): ["get"],
        }
        (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        head = next(
            d for d in docs if d["metadata"]["name"] == "ado-ray-head" and d["kind"] == "Deployment"
        )
        head_sa = head["spec"]["template"]["spec"]["serviceAccountName"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": head_sa, "namespace": "ado"}
        ]
        assert head["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    worker = worker_pod()["spec"]
    assert worker["serviceAccountName"] != head_sa
    assert worker["automountServiceAccountToken"] is False  # workers have no API access


def matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and In/NotIn/Exists/DoesNotExist)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def allowed_sources(policies: list[Obj], pod_labels: dict[str, str]) -> list[Obj] | None:
    """The ingress peers (with ports) the policies let into a pod; None if none selects it."""
    selecting = [p for p in policies if matches(p["spec"]["podSelector"], pod_labels)]
    if not selecting:
        return None
    return [rule for p in selecting for rule in p["spec"].get("ingress", [])]


def admits(rules: list[Obj], peer_labels: dict[str, str] | None, port: int) -> bool:
    """Whether a pod with `peer_labels` (None: something outside the cluster) may connect."""
    for rule in rules:
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        for peer in rule.get("from", [{}]):
            if "ipBlock" in peer and peer_labels is None:
                return True
            selector = peer.get("podSelector")
            if selector is not None and peer_labels is not None and matches(selector, peer_labels):
                return True
    return False


def pod_labels(docs: list[Obj]) -> dict[str, dict[str, str]]:
    labels = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    # What the node provider puts on a worker: the template's labels plus Ray's tags.
    labels["worker"] = {
        **worker_pod()["metadata"]["labels"],
        objects.TAG_CLUSTER: "ado-ray",
        objects.TAG_KIND: "worker",
        objects.TAG_TYPE: objects.WORKER_TYPE,
    }
    return labels


def test_network_policy_lets_head_and_workers_in_and_nothing_else(
    overlay_objects: dict[str, list[Obj]],
) -> None:
    for overlay, docs in overlay_objects.items():
        policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
        assert all(p["spec"]["policyTypes"] == ["Ingress"] for p in policies)
        labels = pod_labels(docs)
        head, worker = labels["ado-ray-head"], labels["worker"]
        stranger = {"app": "something-else"}
        for target in (head, worker):
            rules = allowed_sources(policies, target)
            assert rules is not None
            for port in (objects.GCS_PORT, objects.DASHBOARD_PORT, objects.CLIENT_PORT, 12345):
                assert admits(rules, head, port) and admits(rules, worker, port)
                assert not admits(rules, stranger, port)
                assert not admits(rules, None, port), f"{overlay}: open to the outside"
        # Anything else in the namespace: denied by default.
        assert allowed_sources(policies, stranger) == []
        for name in ("ado-ray-postgres", "ado-ray-redis"):
            if name in labels:
                rules = allowed_sources(policies, labels[name])
                assert rules is not None
                port = 5432 if "postgres" in name else 6379
                assert admits(rules, head, port) and not admits(rules, worker, port)


def test_the_dashboard_stays_inside_unless_asked() -> None:
    base = DEFAULT.objects("deploy/base")
    (service,) = [d for d in base if d["kind"] == "Service"]
    assert service["spec"]["type"] == "ClusterIP"
    assert {p["port"] for p in service["spec"]["ports"]} == {6379, 8265, 10001}
    assert not [d for d in base if d["kind"] == "Ingress"]
    spec = ClusterSpec(dashboard_cidrs=["10.20.0.0/16"])
    policies = objects.network_policies(spec)
    head = objects.head(spec)[0]["spec"]["template"]["metadata"]["labels"]
    rules = allowed_sources(policies, head)
    assert rules is not None
    assert admits(rules, None, objects.DASHBOARD_PORT)
    assert not admits(rules, None, objects.GCS_PORT)
    assert not admits(rules, None, objects.CLIENT_PORT)


def test_secrets_are_references_in_base_and_prod(overlay_objects: dict[str, list[Obj]]) -> None:
    assert "Secret" not in {d["kind"] for d in overlay_objects["prod"]}
    head = next(d for d in DEFAULT.objects("deploy/base") if d["kind"] == "Deployment")
    env = {e["name"]: e for e in head["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ADO_STATE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "ado-state", "key": "url"}
    }
    assert env["ADO_REDIS_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "ado-redis", "key": "url"}
    }
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "ado-ray-auth"
    assert env["ADO_CONTEXT"]["value"] == "kubernetes"
    for text in (t for p, t in DEFAULT.files.items() if "overlays/dev" not in p):
        assert "postgresql://" not in text and "redis://" not in text
        assert overlays.DEV_PASSWORD not in text


def test_dev_secrets_match_what_the_head_and_services_read(
    overlay_objects: dict[str, list[Obj]],
) -> None:
    docs = overlay_objects["dev"]
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for _, spec in pod_specs(docs)
        for c in spec["containers"]
        for e in c.get("env", [])
        if "valueFrom" in e
    ]
    assert refs and all(ref["key"] in secrets[ref["name"]] for ref in refs)
    assert secrets["ado-state"]["url"].startswith("postgresql://ado:")
    assert "@ado-ray-postgres.ado.svc.cluster.local:5432/" in secrets["ado-state"]["url"]
    assert "@ado-ray-redis.ado.svc.cluster.local:6379/" in secrets["ado-redis"]["url"]
    assert len(secrets["ado-ray-auth"]["token"]) == 64


# -- Ray -------------------------------------------------------------------------------------


def test_the_autoscaler_config_passes_rays_schema_and_preparation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = autoscaler()
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    with caplog.at_level(logging.ERROR):
        prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    for key in ("cluster_name", "max_workers", "idle_timeout_minutes", "head_node_type"):
        assert prepared[key] == config[key]
    assert config["provider"]["type"] == "external"
    assert config["provider"]["module"] == PROVIDER_MODULE
    assert config["provider"]["disable_node_updaters"] is True
    types = prepared["available_node_types"]
    assert set(types) == {objects.HEAD_TYPE, objects.WORKER_TYPE}
    for node_type in types.values():
        assert {"resources", "min_workers", "max_workers", "node_config"} <= node_type.keys()
    assert types[objects.HEAD_TYPE]["max_workers"] == 0


def test_the_schema_check_can_fail() -> None:
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    config = autoscaler()
    config["available_node_types"]["worker"]["resources"]["CPU"] = 1.5  # Ray wants integers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)


def test_the_provider_module_is_the_node_provider() -> None:
    from ray.autoscaler._private.providers import _get_node_provider_cls

    from ado_ray.cluster.node_provider import KubernetesNodeProvider

    assert _get_node_provider_cls(autoscaler()["provider"]) is KubernetesNodeProvider


def test_tag_names_are_rays() -> None:
    from ray.autoscaler import tags

    assert objects.TAG_CLUSTER == tags.TAG_RAY_CLUSTER_NAME
    assert objects.TAG_KIND == tags.TAG_RAY_NODE_KIND
    assert objects.TAG_TYPE == tags.TAG_RAY_USER_NODE_TYPE
    assert objects.TAG_STATUS == tags.TAG_RAY_NODE_STATUS
    assert tags.NODE_KIND_HEAD == "head" and tags.STATUS_UP_TO_DATE == "up-to-date"


def ray_start_options(command: list[str]) -> dict[str, Any]:
    """Parse a pod's `ray start ...` with Ray's own command-line definition."""
    from ray.scripts.scripts import start

    assert command[:2] == ["ray", "start"]
    ctx = start.make_context("start", command[2:])
    return dict(ctx.params)


def test_pod_commands_are_valid_ray_start_commands() -> None:
    spec = ClusterSpec()
    head_pod = objects.head(spec)[0]["spec"]["template"]["spec"]
    head = ray_start_options(head_pod["containers"][0]["command"])
    assert head["head"] and head["block"] and head["num_cpus"] == 0
    assert head["port"] == objects.GCS_PORT
    assert head["dashboard_port"] == objects.DASHBOARD_PORT
    assert head["ray_client_server_port"] == objects.CLIENT_PORT
    assert head["autoscaling_config"] == f"{objects.CONFIG_DIR}/{objects.CONFIG_KEY}"
    mounts = {m["mountPath"]: m["name"] for m in head_pod["containers"][0]["volumeMounts"]}
    assert mounts[objects.CONFIG_DIR] == "config"

    config = autoscaler()
    worker = ray_start_options(worker_pod(config)["spec"]["containers"][0]["command"])
    assert worker["address"] == f"ado-ray-head.ado.svc.cluster.local:{objects.GCS_PORT}"
    assert worker["block"] and not worker["head"]
    resources = config["available_node_types"][objects.WORKER_TYPE]["resources"]
    assert resources == {"CPU": worker["num_cpus"], "memory": worker["memory"]}
    assert worker["num_cpus"] == spec.runners_per_worker
    pod_memory = quantity_bytes(
        worker_pod(config)["spec"]["containers"][0]["resources"]["limits"]["memory"]
    )
    assert worker["memory"] + worker["object_store_memory"] == pod_memory
    dshm = next(v for v in worker_pod(config)["spec"]["volumes"] if v["name"] == "dshm")
    shm = quantity_bytes(dshm["emptyDir"]["sizeLimit"])
    assert worker["object_store_memory"] < shm <= worker["object_store_memory"] + 64 * 2**20


def test_the_node_provider_sees_the_head_and_creates_a_valid_worker() -> None:
    """The rendered provider section and worker node_config, through the real provider and
    `kubernetes` client, against the stand-in API server."""
    from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

    from ado_ray.cluster.node_provider import KubernetesNodeProvider
    from tests.cluster.fake_k8s import FakeKube

    config = autoscaler()
    spec = ClusterSpec()
    head = objects.head(spec)[0]["spec"]["template"]
    fake = FakeKube().start()
    try:
        fake.add_pod(
            "ado",
            {"metadata": {**head["metadata"], "name": "ado-ray-head-5d9f-x"}, "spec": head["spec"]},
        )
        provider = KubernetesNodeProvider(
            {**config["provider"], "api_server": fake.url}, config["cluster_name"]
        )
        tags = {TAG_RAY_NODE_KIND: "worker", TAG_RAY_USER_NODE_TYPE: objects.WORKER_TYPE}
        created = provider.create_node(worker_pod(config), tags, 1)
        (name,) = created
        nodes = provider.non_terminated_nodes({})
        kinds = {node: provider.node_tags(node)[TAG_RAY_NODE_KIND] for node in nodes}
        assert kinds == {"ado-ray-head-5d9f-x": "head", name: "worker"}
        pod = fake.pods["ado", name]
        validate({k: v for k, v in pod.items() if k != "status"})
    finally:
        fake.stop()


# -- the spec ----------------------------------------------------------------------------------


def test_quantities() -> None:
    assert quantity_bytes("4Gi") == 4 * 2**30
    assert quantity_bytes("512M") == 512 * 10**6
    assert quantity_bytes("1000") == 1000
    for bad in ("1.5Gi", "0Gi", "4GB", "-1Mi", ""):
        with pytest.raises(ValueError, match="memory quantity"):
            quantity_bytes(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("min_workers: 5\nmax_workers: 2\n", "min_workers 5 is more than max_workers 2"),
        ("worker: {cpu: 2, memory: 1Gi, object_store: 1Gi}\n", "more than half of memory"),
        ("dashboard_cidrs: [everywhere]\n", "'everywhere' is not a network"),
        ("namespace: Ado_NS\n", "namespace"),
        ("head: {cpu: 2, memory: 4 GB}\n", "is not a memory quantity"),
        ("replicas: 3\n", "replicas: Extra inputs are not permitted"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_a_bad_spec_file_says_where_and_what(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_a_spec_file_changes_what_is_rendered(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "name: batch\nnamespace: agents\nimage: registry.example/ado-ray@sha256:"
        + "a" * 64
        + "\nmax_workers: 8\nworker: {cpu: 4, memory: 12Gi}\nray_auth_token: null\n"
    )
    spec = load_spec(path)
    files = render(spec).files
    config = autoscaler(files["cluster/k8s.yaml"])
    assert config["cluster_name"] == "batch" and config["max_workers"] == 8
    assert config["provider"]["namespace"] == "agents"
    pod = worker_pod(config)["spec"]["containers"][0]
    assert pod["image"] == spec.image
    assert "--address=batch-head.agents.svc.cluster.local:6379" in pod["command"]
    assert not any(e["name"].startswith("RAY_AUTH") for e in pod["env"])
    docs = render(spec).objects("deploy/base")
    assert {d["metadata"].get("namespace", d["metadata"]["name"]) for d in docs} == {"agents"}
    for doc in docs:
        validate(doc)


def test_an_empty_spec_file_is_the_default(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("")
    assert load_spec(path) == ClusterSpec()
    assert NodeSpec(cpu=1, memory="1Gi").bytes("object_store") == 256 * 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.e2e
def test_the_head_command_starts_rays_autoscaler_which_creates_a_worker_pod() -> None:
    """The rendered head command (token auth on, as in the pod) with the rendered autoscaler
    config, the provider pointed at the stand-in API server (plus min_workers: 1, so the
    autoscaler has a reason to add a worker): Ray's real autoscaler loads the config and the
    node provider, finds the head pod by its labels, and creates a worker pod."""
    from tests.cluster.fake_k8s import FakeKube

    spec = ClusterSpec()
    config = autoscaler()
    fake = FakeKube().start()
    temp = Path(tempfile.mkdtemp(prefix="ado-head-", dir="/tmp"))  # short: Ray's socket paths
    process = None
    try:
        template = objects.head(spec)[0]["spec"]["template"]
        head_pod = {
            "metadata": {**template["metadata"], "name": "head-0"},
            "spec": template["spec"],
        }
        fake.add_pod("ado", head_pod)
        fake.schedule("ado", "head-0", pod_ip="127.0.0.1")
        config["provider"]["api_server"] = fake.url
        config["available_node_types"][objects.WORKER_TYPE]["min_workers"] = 1
        (temp / "autoscaler.yaml").write_text(yaml.safe_dump(config))
        dashboard = free_port()
        ports = {  # the rendered ports may be taken on this machine: free ones instead
            "--port": free_port(),
            "--dashboard-port": dashboard,
            "--ray-client-server-port": free_port(),
            "--autoscaling-config": temp / "autoscaler.yaml",
        }
        command = [
            word for word in objects.head_command(spec) if word.partition("=")[0] not in ports
        ]
        extra = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port"]
        extra += ["--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port"]
        extra += ["--object-manager-port"]
        command += [f"{flag}={value}" for flag, value in ports.items()]
        command += [f"{flag}={free_port()}" for flag in extra] + [f"--temp-dir={temp / 'ray'}"]
        command[0] = str(Path(sys.executable).parent / "ray")
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t" * 64}
        env.pop("RAY_ADDRESS", None)
        with (temp / "head.log").open("w") as log:
            process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 120
        workers: list[str] = []
        while not workers and time.monotonic() < deadline and process.poll() is None:
            time.sleep(1)
            workers = [name for (_, name) in list(fake.pods) if name != "head-0"]
        logs = (temp / "head.log").read_text()
        for path in (temp / "ray").glob("session_latest/logs/monitor.*"):
            logs += path.read_text()
        assert workers, f"no worker pod; the head's and autoscaler's logs:\n{logs[-4000:]}"
        pod = fake.pods["ado", workers[0]]
        assert pod["metadata"]["labels"]["ray-user-node-type"] == objects.WORKER_TYPE
        assert (
            pod["spec"]["containers"][0]["command"]
            == worker_pod(config)["spec"]["containers"][0]["command"]
        )
        health = urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/gcs_healthz", timeout=10)
        assert health.read() == b"success"  # the readiness probe's endpoint, without a token
    finally:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        fake.stop()
        shutil.rmtree(temp, ignore_errors=True)
