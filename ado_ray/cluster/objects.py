"""The Kubernetes objects of an ado-ray cluster, built from its `ClusterSpec`.

The head (a one-replica Deployment running `ray start --head` with the autoscaler, and its
Service), RBAC for the node provider, the network policies, and the worker Pod that the
autoscaler's node provider creates for each worker (the worker type's `node_config`). Every
pod runs as a non-root user with a read-only root filesystem (emptyDirs for /tmp, the work
volume and /dev/shm), no capabilities, the RuntimeDefault seccomp profile, and requests equal
to its limits.
"""

from __future__ import annotations

from typing import Any

from ado_ray.cluster.spec import ClusterSpec, NodeSpec

Obj = dict[str, Any]

GCS_PORT, DASHBOARD_PORT, CLIENT_PORT = 6379, 8265, 10001
METRICS_PORT = 8080  # every node's Ray metrics agent (Prometheus text), head and workers
CONFIG_DIR, CONFIG_KEY = "/etc/ado-ray", "autoscaler.yaml"
# The work volume: HOME and the working directory, so ado's default work root (`.ado/work`,
# relative to the working directory or, in a Ray job, to HOME) is on it, at the same absolute
# path on the head and every worker.
WORK_DIR = "/var/lib/ado"
HEAD_TYPE, WORKER_TYPE = "head", "worker"  # Ray node type names
RAY_CONTAINER = "ray"  # the container the node provider sets Ray's variables in
# Ray's autoscaler tags (ray.autoscaler.tags), as labels of the head pod so that the node
# provider reports it as the head; the provider puts the same tags on the workers it creates.
TAG_CLUSTER, TAG_KIND = "ray-cluster-name", "ray-node-type"  # sic: the kind
TAG_TYPE, TAG_STATUS = "ray-user-node-type", "ray-node-status"
MI = 2**20
SHM_SLACK_MIB = 64  # /dev/shm beyond the object store: Ray checks it has room for it all


def labels(spec: ClusterSpec, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "ado-ray",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": component,
    }


def meta(spec: ClusterSpec, name: str, component: str) -> Obj:
    return {"name": name, "namespace": spec.namespace, "labels": labels(spec, component)}


def head_host(spec: ClusterSpec) -> str:
    return f"{spec.name}-head.{spec.namespace}.svc.cluster.local"


# -- pods ---------------------------------------------------------------------------------


def pod_security(uid: int, gid: int | None = None) -> Obj:
    gid = uid if gid is None else gid
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


CONTAINER_SECURITY: Obj = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


def sized(cpu: str, memory: str, storage: str) -> Obj:
    """Requests equal to limits: the Guaranteed QoS class."""
    amounts = {"cpu": cpu, "memory": memory, "ephemeral-storage": storage}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def ephemeral_bytes(node: NodeSpec) -> int:
    """The pod's local disk: its emptyDirs on disk, and 1 GiB for its logs."""
    return node.bytes("work") + node.bytes("tmp") + 2**30


def node_resources(node: NodeSpec) -> Obj:
    memory, storage = node.bytes("memory") // MI, ephemeral_bytes(node) // MI
    return sized(str(node.cpu), f"{memory}Mi", f"{storage}Mi")


def node_volumes(node: NodeSpec) -> tuple[list[Obj], list[Obj]]:
    """(volumes, mounts): /tmp, the work root and /dev/shm; the root filesystem is read-only."""
    shm_mib = node.bytes("object_store") // MI + SHM_SLACK_MIB
    volumes = [
        {"name": "tmp", "emptyDir": {"sizeLimit": node.tmp}},
        {"name": "work", "emptyDir": {"sizeLimit": node.work}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_mib}Mi"}},
    ]
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "work", "mountPath": WORK_DIR},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    return volumes, mounts


def secret_env(name: str, secret: str, key: str) -> Obj:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def ray_env(spec: ClusterSpec) -> list[Obj]:
    env: list[Obj] = [
        {"name": "HOME", "value": WORK_DIR},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]
    if spec.ray_auth_token is not None:
        env.append({"name": "RAY_AUTH_MODE", "value": "token"})
        env.append(secret_env("RAY_AUTH_TOKEN", spec.ray_auth_token.name, spec.ray_auth_token.key))
    return env


def ray_memory(node: NodeSpec) -> int:
    """Ray's `memory` resource: the pod's memory less the object store."""
    return node.bytes("memory") - node.bytes("object_store")


def ray_sizes(node: NodeSpec) -> list[str]:
    return [f"--memory={ray_memory(node)}", f"--object-store-memory={node.bytes('object_store')}"]


def head_command(spec: ClusterSpec) -> list[str]:
    return [
        "ray",
        "start",
        "--head",
        "--block",
        f"--port={GCS_PORT}",
        "--include-dashboard=true",
        "--dashboard-host=0.0.0.0",
        f"--dashboard-port={DASHBOARD_PORT}",
        f"--ray-client-server-port={CLIENT_PORT}",
        "--num-cpus=0",  # runners and tasks go to the workers; ado's own actors ask for none
        *ray_sizes(spec.head),
        f"--metrics-export-port={METRICS_PORT}",
        f"--autoscaling-config={CONFIG_DIR}/{CONFIG_KEY}",
        "--disable-usage-stats",
    ]


def worker_resources(spec: ClusterSpec, node: NodeSpec) -> dict[str, int]:
    """Ray's CPUs on a worker are runner places, not cores: a runner actor asks for one
    (`ray.runner_num_cpus: 1`), so a worker holds `runners_per_worker` runners, and a runner
    that does not fit makes the autoscaler add a worker."""
    return {"CPU": spec.runners_per_worker, "memory": ray_memory(node)}


def worker_command(spec: ClusterSpec, node: NodeSpec) -> list[str]:
    return [
        "ray",
        "start",
        f"--address={head_host(spec)}:{GCS_PORT}",
        "--block",
        f"--num-cpus={spec.runners_per_worker}",
        *ray_sizes(node),
        f"--metrics-export-port={METRICS_PORT}",
        "--disable-usage-stats",
    ]


def worker_pod(spec: ClusterSpec, node: NodeSpec) -> Obj:
    """The worker type's `node_config`: the Pod the node provider creates for each worker."""
    volumes, mounts = node_volumes(node)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        # The provider adds Ray's tags; the cluster's name is here too for the network policy.
        "metadata": {"labels": {**labels(spec, "ray-worker"), TAG_CLUSTER: spec.name}},
        "spec": {
            "serviceAccountName": f"{spec.name}-worker",
            "automountServiceAccountToken": False,  # workers never call the API server
            "enableServiceLinks": False,
            "restartPolicy": "Never",  # a worker whose Ray stopped is replaced, not restarted
            "terminationGracePeriodSeconds": 30,
            "securityContext": pod_security(spec.uid),
            "containers": [
                {
                    "name": RAY_CONTAINER,
                    "image": spec.image,
                    "imagePullPolicy": spec.image_pull_policy,
                    "command": worker_command(spec, node),
                    "workingDir": WORK_DIR,
                    "env": ray_env(spec),
                    "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
                    "resources": node_resources(node),
                    "securityContext": CONTAINER_SECURITY,
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }


def config_map(spec: ClusterSpec, text: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(spec, f"{spec.name}-autoscaler", "ray-head"),
        "data": {CONFIG_KEY: text},
    }


# -- base -----------------------------------------------------------------------------------


def namespace(spec: ClusterSpec) -> Obj:
    enforce = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": spec.namespace, "labels": {**labels(spec, "namespace"), **enforce}},
    }


def rbac(spec: ClusterSpec) -> list[Obj]:
    """The head's service account may manage pods in its namespace, and nothing else."""
    head, worker = f"{spec.name}-head", f"{spec.name}-worker"
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta(spec, head, "ray-head"),
            "automountServiceAccountToken": False,  # mounted by the head pod only
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta(spec, worker, "ray-worker"),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta(spec, f"{spec.name}-autoscaler", "ray-head"),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "verbs": ["get", "list", "watch", "create", "delete", "patch"],
                },
                {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["get"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta(spec, f"{spec.name}-autoscaler", "ray-head"),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": f"{spec.name}-autoscaler",
            },
            "subjects": [{"kind": "ServiceAccount", "name": head, "namespace": spec.namespace}],
        },
    ]


def head_labels(spec: ClusterSpec) -> dict[str, str]:
    """The head pod's labels: ours, and Ray's tags that make the provider report it."""
    return {
        **labels(spec, "ray-head"),
        TAG_CLUSTER: spec.name,
        TAG_KIND: "head",
        TAG_TYPE: HEAD_TYPE,
        TAG_STATUS: "up-to-date",
    }


def head_env(spec: ClusterSpec) -> list[Obj]:
    """The `kubernetes` context of ado's config, its secrets by reference."""
    return [
        *ray_env(spec),
        {"name": "ADO_CONTEXT", "value": "kubernetes"},
        {"name": "ADO_RAY_ADDRESS", "value": "auto"},
        secret_env("ADO_STATE_URL", spec.state_url.name, spec.state_url.key),
        secret_env("ADO_REDIS_URL", spec.redis_url.name, spec.redis_url.key),
    ]


def head(spec: ClusterSpec) -> list[Obj]:
    volumes, mounts = node_volumes(spec.head)
    # Optional: the agents' credentials (ANTHROPIC_API_KEY=...), read by ado's config.
    envfrom = (
        {"envFrom": [{"secretRef": {"name": spec.agent_env_secret, "optional": True}}]}
        if spec.agent_env_secret
        else {}
    )
    container: Obj = {
        "name": RAY_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": head_command(spec),
        "workingDir": WORK_DIR,
        "env": head_env(spec),
        **envfrom,
        "ports": [
            {"name": "gcs", "containerPort": GCS_PORT},
            {"name": "dashboard", "containerPort": DASHBOARD_PORT},
            {"name": "client", "containerPort": CLIENT_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/api/gcs_healthz", "port": "dashboard"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "resources": node_resources(spec.head),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [*mounts, {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
    }
    selector = labels(spec, "ray-head")
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(spec, f"{spec.name}-head", "ray-head"),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # never two heads of one cluster at once
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": head_labels(spec)},
                "spec": {
                    "serviceAccountName": f"{spec.name}-head",
                    "automountServiceAccountToken": True,  # the node provider's API access
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": pod_security(spec.uid),
                    "containers": [container],
                    "volumes": [
                        *volumes,
                        {"name": "config", "configMap": {"name": f"{spec.name}-autoscaler"}},
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(spec, f"{spec.name}-head", "ray-head"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
                for name, port in (
                    ("gcs", GCS_PORT),
                    ("dashboard", DASHBOARD_PORT),
                    ("client", CLIENT_PORT),
                )
            ],
        },
    }
    return [deployment, service]


def network_policies(spec: ClusterSpec) -> list[Obj]:
    """No ingress in the namespace but between the cluster's Ray pods (head and workers,
    which Ray needs on many ports), and the dashboard from `dashboard_cidrs` if any."""
    ray_pods = {"matchLabels": {TAG_CLUSTER: spec.name}}
    policies: list[Obj] = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta(spec, f"{spec.name}-deny-ingress", "network-policy"),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta(spec, f"{spec.name}-ray", "network-policy"),
            "spec": {
                "podSelector": ray_pods,
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": ray_pods}]}],
            },
        },
    ]
    if spec.dashboard_cidrs:
        policies.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": meta(spec, f"{spec.name}-dashboard", "network-policy"),
                "spec": {
                    "podSelector": {"matchLabels": {TAG_CLUSTER: spec.name, TAG_KIND: "head"}},
                    "policyTypes": ["Ingress"],
                    "ingress": [
                        {
                            "from": [{"ipBlock": {"cidr": cidr}} for cidr in spec.dashboard_cidrs],
                            "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}],
                        }
                    ],
                },
            }
        )
    return policies
