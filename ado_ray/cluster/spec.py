"""`ClusterSpec`: the one description of an ado-ray cluster on Kubernetes.

`render.py` turns it into the Kubernetes objects, the kustomize tree in `deploy/` and the
Ray autoscaler config in `cluster/k8s.yaml`; the checked-in files are the default spec's.
A spec file (`ado cluster render --spec FILE`) is YAML with these keys, each optional:

```yaml
name: ado-ray                 # object names' prefix and Ray's cluster_name
namespace: ado
image: ado-ray:0.1.0          # head and workers run the same image (same Ray version)
head: {cpu: 2, memory: 4Gi, object_store: 256Mi, work: 10Gi, tmp: 4Gi}
worker: {cpu: 3, memory: 10Gi, object_store: 256Mi, work: 20Gi, tmp: 4Gi}
runners_per_worker: 1         # runner actors (ray.slots_per_runner agents each) per worker pod
min_workers: 0
max_workers: 10
idle_timeout_minutes: 5
state_url: {name: ado-state, key: url}       # Secret holding the PostgreSQL URL
redis_url: {name: ado-redis, key: url}       # Secret holding the Redis URL
ray_auth_token: {name: ado-ray-auth, key: token}   # null: Ray without token auth
agent_env_secret: ado-agent-env              # optional Secret: every key an env var of the head
dashboard_cidrs: []           # networks allowed to reach the dashboard (port-forward always works)
dev: {max_workers: 2, worker: {cpu: 1, memory: 3Gi, work: 5Gi}}   # overlays/dev only
```
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ado_ray import __version__
from ado_ray.errors import ConfigError

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
_QUANTITY = re.compile(rf"([1-9][0-9]*)({'|'.join(_UNITS)})?")


def quantity_bytes(value: str) -> int:
    """Bytes in a Kubernetes memory quantity written as a whole number ('10Gi', '512M')."""
    match = _QUANTITY.fullmatch(value)
    if match is None:
        raise ValueError(
            f"'{value}' is not a memory quantity; expected a whole number with an optional "
            f"unit ({', '.join(_UNITS)}), e.g. 4Gi"
        )
    return int(match.group(1)) * _UNITS.get(match.group(2) or "", 1)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Model):
    """One key of a Kubernetes Secret, read into an environment variable (`secretKeyRef`)."""

    name: str = Field(pattern=rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$", max_length=253)
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)


class NodeSpec(_Model):
    """One pod's size. Requests equal limits (Guaranteed QoS); Ray is told the same figures."""

    cpu: int = Field(ge=1)  # cores: the pod's request and limit (git and the agents' tools)
    memory: str  # the pod's request and limit, /dev/shm (the object store) included
    object_store: str = "256Mi"  # Ray's object store, a memory-backed emptyDir at /dev/shm
    work: str = "10Gi"  # emptyDir for the work root (clone cache and checkouts)
    tmp: str = "4Gi"  # emptyDir for /tmp (Ray's session directory: logs, sockets, spill)

    @field_validator("memory", "object_store", "work", "tmp")
    @classmethod
    def _quantity(cls, value: str) -> str:
        quantity_bytes(value)
        return value

    @model_validator(mode="after")
    def _object_store_fits(self) -> NodeSpec:
        if quantity_bytes(self.object_store) * 2 > quantity_bytes(self.memory):
            raise ValueError(
                f"object_store {self.object_store} is more than half of memory {self.memory}; "
                "the object store lives in the pod's memory: lower it or raise memory"
            )
        return self

    def bytes(self, field: Literal["memory", "object_store", "work", "tmp"]) -> int:
        return quantity_bytes(getattr(self, field))


class DevSpec(_Model):
    """What `deploy/overlays/dev` changes: bundled single-pod PostgreSQL and Redis (their
    URLs, with a fixed development password, in Secrets it creates) and smaller workers."""

    postgres_image: str = "postgres:17-alpine"
    redis_image: str = "redis:7.4-alpine"
    worker: NodeSpec = NodeSpec(cpu=1, memory="3Gi", work="5Gi", tmp="2Gi")
    max_workers: int = Field(default=2, ge=1)


class ClusterSpec(_Model):
    """An ado-ray cluster: Ray head Deployment, autoscaled worker pods, RBAC, network policy."""

    name: str = Field(default="ado-ray", pattern=rf"^{_DNS_LABEL}$", max_length=40)
    namespace: str = Field(default="ado", pattern=rf"^{_DNS_LABEL}$", max_length=63)
    image: str = f"ado-ray:{__version__}"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    uid: int = Field(default=1000, ge=1)  # the image's non-root user (and group)
    head: NodeSpec = NodeSpec(cpu=2, memory="4Gi", work="10Gi")
    worker: NodeSpec = NodeSpec(cpu=3, memory="10Gi", work="20Gi")
    # Ray's CPU count on a worker: runner actors ask for `ray.runner_num_cpus` (1 in the
    # `kubernetes` context) each, so this many runners fit on one worker pod.
    runners_per_worker: int = Field(default=1, ge=1)
    min_workers: int = Field(default=0, ge=0)
    max_workers: int = Field(default=10, ge=1)
    idle_timeout_minutes: float = Field(default=5.0, gt=0)
    upscaling_speed: float = Field(default=1.0, gt=0)
    state_url: SecretRef = SecretRef(name="ado-state", key="url")
    redis_url: SecretRef = SecretRef(name="ado-redis", key="url")
    ray_auth_token: SecretRef | None = SecretRef(name="ado-ray-auth", key="token")
    agent_env_secret: str | None = Field(default="ado-agent-env", pattern=rf"^{_DNS_LABEL}$")
    dashboard_cidrs: list[str] = Field(default_factory=list)
    dev: DevSpec = DevSpec()

    @field_validator("dashboard_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr)
            except ValueError as exc:
                raise ValueError(f"'{cidr}' is not a network; expected e.g. 10.0.0.0/8") from exc
        return value

    @model_validator(mode="after")
    def _workers(self) -> ClusterSpec:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"min_workers {self.min_workers} is more than max_workers {self.max_workers}"
            )
        return self


def load_spec(path: Path) -> ClusterSpec:
    """The spec in a YAML file (missing keys take the defaults)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the cluster spec ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); expected a mapping") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: found a {type(data).__name__}; expected a mapping of keys")
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
