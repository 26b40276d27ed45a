"""What the kustomize overlays add to `deploy/base` (rendered by `render.py`).

- `dev`: single-pod PostgreSQL and Redis (data in emptyDirs: lost with the pod), the Secrets
  the head reads (their URLs with a fixed, published development password, and a fixed Ray
  token), and the autoscaler config with `spec.dev`'s smaller, fewer workers. For trying
  ado-ray on a laptop cluster; never for real work.
- `prod`: a PodDisruptionBudget that keeps a node drain from evicting the head (its runs
  would stop), and a ResourceQuota of the cluster's full size (head + `max_workers` workers
  and one spare for a worker being replaced), so no provider bug can grow it past that.
"""

from __future__ import annotations

import hashlib

from ado_ray.cluster.objects import (
    CONTAINER_SECURITY,
    MI,
    Obj,
    config_map,
    ephemeral_bytes,
    labels,
    meta,
    pod_security,
    secret_env,
    sized,
)
from ado_ray.cluster.spec import ClusterSpec

DEV_PASSWORD = "ado-dev-only"  # published in this file: the dev overlay is not for real work
DEV_RAY_TOKEN = hashlib.sha256(DEV_PASSWORD.encode()).hexdigest()  # as long as Ray's tokens
POSTGRES_PORT, REDIS_PORT = 5432, 6379
POSTGRES_UID, REDIS_UID, REDIS_GID = 70, 999, 1000  # the alpine images' users


Overlay = tuple[dict[str, list[Obj]], dict[str, list[Obj]]]  # (resources, patches) by file


def overlays(spec: ClusterSpec, dev_autoscaler: str) -> dict[str, Overlay]:
    """Each overlay's files: `dev_autoscaler` is the autoscaler config with `spec.dev`."""
    return {"dev": dev(spec, dev_autoscaler), "prod": prod(spec)}


def single_pod(spec: ClusterSpec, component: str, container: Obj, uid: int, gid: int) -> Obj:
    mounts = container["volumeMounts"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(spec, f"{spec.name}-{component}", component),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels(spec, component)},
            "template": {
                "metadata": {"labels": labels(spec, component)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security(uid, gid),
                    "containers": [
                        {
                            **container,
                            "securityContext": CONTAINER_SECURITY,
                            "resources": sized("500m", "512Mi", "2Gi"),
                        }
                    ],
                    "volumes": [
                        {"name": mount["name"], "emptyDir": {"sizeLimit": "1Gi"}}
                        for mount in mounts
                    ],
                },
            },
        },
    }


def service(spec: ClusterSpec, component: str, port: int) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(spec, f"{spec.name}-{component}", component),
        "spec": {
            "selector": labels(spec, component),
            "ports": [{"name": component, "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def dev_services(spec: ClusterSpec) -> list[Obj]:
    postgres = {
        "name": "postgres",
        "image": spec.dev.postgres_image,
        "env": [
            {"name": "POSTGRES_USER", "value": "ado"},
            {"name": "POSTGRES_DB", "value": "ado"},
            secret_env("POSTGRES_PASSWORD", spec.state_url.name, "password"),
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
        ],
        "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT}],
        "readinessProbe": {"exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-U", "ado"]}},
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
            {"name": "run", "mountPath": "/var/run/postgresql"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    redis = {
        "name": "redis",
        "image": spec.dev.redis_image,
        # Kubernetes expands $(REDIS_PASSWORD) from the container's environment.
        "command": ["redis-server", "--save", "", "--appendonly", "no"],
        "args": ["--requirepass", "$(REDIS_PASSWORD)"],
        "env": [secret_env("REDIS_PASSWORD", spec.redis_url.name, "password")],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "readinessProbe": {"tcpSocket": {"port": "redis"}},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    head_pods = {"podSelector": {"matchLabels": labels(spec, "ray-head")}}
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(spec, f"{spec.name}-dev-services", "network-policy"),
        "spec": {
            "podSelector": {
                "matchExpressions": [
                    {"key": "app.kubernetes.io/instance", "operator": "In", "values": [spec.name]},
                    {
                        "key": "app.kubernetes.io/component",
                        "operator": "In",
                        "values": ["postgres", "redis"],
                    },
                ]
            },
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [head_pods],
                    "ports": [
                        {"protocol": "TCP", "port": POSTGRES_PORT},
                        {"protocol": "TCP", "port": REDIS_PORT},
                    ],
                }
            ],
        },
    }
    return [
        single_pod(spec, "postgres", postgres, POSTGRES_UID, POSTGRES_UID),
        service(spec, "postgres", POSTGRES_PORT),
        single_pod(spec, "redis", redis, REDIS_UID, REDIS_GID),
        service(spec, "redis", REDIS_PORT),
        policy,
    ]


def secret(spec: ClusterSpec, name: str, data: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(spec, name, "dev-secret"),
        "type": "Opaque",
        "stringData": data,
    }


def dev_secrets(spec: ClusterSpec) -> list[Obj]:
    host = f"{spec.namespace}.svc.cluster.local"
    state = f"postgresql://ado:{DEV_PASSWORD}@{spec.name}-postgres.{host}:{POSTGRES_PORT}/ado"
    redis = f"redis://:{DEV_PASSWORD}@{spec.name}-redis.{host}:{REDIS_PORT}/0"
    secrets = [
        secret(spec, spec.state_url.name, {spec.state_url.key: state, "password": DEV_PASSWORD}),
        secret(spec, spec.redis_url.name, {spec.redis_url.key: redis, "password": DEV_PASSWORD}),
    ]
    if spec.ray_auth_token is not None:
        token = spec.ray_auth_token
        secrets.append(secret(spec, token.name, {token.key: DEV_RAY_TOKEN}))
    return secrets


def dev(spec: ClusterSpec, autoscaler: str) -> Overlay:
    return (
        {"services.yaml": dev_services(spec), "secrets.yaml": dev_secrets(spec)},
        {"autoscaler.yaml": [config_map(spec, autoscaler)]},
    )


def prod(spec: ClusterSpec) -> Overlay:
    selector = labels(spec, "ray-head")
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(spec, f"{spec.name}-head", "ray-head"),
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": selector}},
    }
    workers = spec.max_workers + 1  # one spare: a worker being deleted still counts
    cpu = spec.head.cpu + workers * spec.worker.cpu
    memory = spec.head.bytes("memory") + workers * spec.worker.bytes("memory")
    storage = ephemeral_bytes(spec.head) + workers * ephemeral_bytes(spec.worker)
    amounts = {
        "cpu": str(cpu),
        "memory": f"{memory // MI}Mi",
        "ephemeral-storage": f"{storage // MI}Mi",
    }
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": meta(spec, spec.name, "quota"),
        "spec": {
            "hard": {
                "pods": str(1 + workers),
                **{f"requests.{key}": value for key, value in amounts.items()},
                **{f"limits.{key}": value for key, value in amounts.items()},
            }
        },
    }
    return {"head-disruption-budget.yaml": [budget], "quota.yaml": [quota]}, {}
