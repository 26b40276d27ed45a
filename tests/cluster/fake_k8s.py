"""A stand-in for the Kubernetes API server: the core/v1 endpoints the node provider uses.

It serves, on a free port of 127.0.0.1 and in real Kubernetes JSON (Pod objects with
metadata/spec/status, `PodList`, `Status` objects for errors), what the official `kubernetes`
client calls:

    GET    /api/v1/namespaces/{ns}/pods?labelSelector=...   list (equality selectors, `k`, `!k`)
    POST   /api/v1/namespaces/{ns}/pods                      create: 201, 409 AlreadyExists
    GET    /api/v1/namespaces/{ns}/pods/{name}               read: 200, 404 NotFound
    PATCH  /api/v1/namespaces/{ns}/pods/{name}               strategic merge / JSON merge patch
    DELETE /api/v1/namespaces/{ns}/pods/{name}               200 with the pod, 404 NotFound
    GET    /api/v1/namespaces/{ns}/services/{name}           read a Service

Like the real server it checks label keys and values and annotation keys (422 Invalid),
deletes an unscheduled pod at once and a scheduled one gracefully (it stays, with
`deletionTimestamp` set, until `finish_deletions()`), and a patch's `null` removes a key.
Strategic merge is applied as a JSON merge patch: enough for the metadata maps patched here.
Tests add faults with `fail_next(method, status)` and read every request in `requests`.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ado_ray.cluster.node_provider import check_label_key, is_label_value

Json = dict[str, Any]

PODS = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+))?")
SERVICE = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/services/(?P<name>[^/]+)")
MERGE_PATCHES = ("application/strategic-merge-patch+json", "application/merge-patch+json")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
REASONS = {
    400: "BadRequest",
    404: "NotFound",
    409: "Conflict",
    415: "UnsupportedMediaType",
    422: "Invalid",
    500: "InternalError",
}


class ApiError(Exception):
    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason or REASONS[code]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def check_metadata(meta: Json) -> None:
    """The checks the API server makes on labels and annotations (422 Invalid)."""
    try:
        for key, value in (meta.get("labels") or {}).items():
            check_label_key(key)
            if not is_label_value(value):
                raise ValueError(f"metadata.labels: Invalid value: {value!r}")
        for key in meta.get("annotations") or {}:
            check_label_key(key)
    except ValueError as exc:
        raise ApiError(422, f'Pod "{meta.get("name")}" is invalid: {exc}') from exc


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for requirement in filter(None, (part.strip() for part in selector.split(","))):
        if "(" in requirement or " in " in requirement or " notin " in requirement:
            raise ApiError(400, f"set-based selector {requirement!r} is not served here")
        if "!=" in requirement:
            key, value = requirement.split("!=", 1)
            ok = labels.get(key) != value
        elif "=" in requirement:
            key, value = requirement.replace("==", "=").split("=", 1)
            ok = labels.get(key) == value
        elif requirement.startswith("!"):
            key = requirement[1:]
            ok = key not in labels
        else:
            key = requirement
            ok = key in labels
        try:
            check_label_key(key)
        except ValueError as exc:
            raise ApiError(400, f"unable to parse requirement: {exc}") from exc
        if not ok:
            return False
    return True


class FakeKube:
    """The server and its state: pods and services by (namespace, name)."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], Json] = {}
        self.services: dict[tuple[str, str], Json] = {}
        self.requests: list[Request] = []
        self._faults: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._version = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.01,), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeKube:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # -- what tests do to the cluster -----------------------------------------------------

    def fail_next(self, method: str, status: int, times: int = 1) -> None:
        """Answer the next `times` requests of `method` with a `Status` of code `status`."""
        with self._lock:
            self._faults.setdefault(method, []).extend([status] * times)

    def add_pod(self, namespace: str, pod: Json) -> Json:
        with self._lock:
            return self._store(namespace, pod)

    def add_service(self, namespace: str, name: str) -> Json:
        service = {
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": self._new_meta(namespace, {"name": name}),
            "spec": {"type": "ClusterIP", "ports": [{"name": "gcs", "port": 6379}]},
        }
        with self._lock:
            self.services[namespace, name] = service
        return service

    def schedule(self, namespace: str, name: str, *, pod_ip: str, phase: str = "Running") -> None:
        """What the scheduler and kubelet do: a node, an IP, a phase."""
        with self._lock:
            pod = self.pods[namespace, name]
            pod["spec"]["nodeName"] = "node-1"
            pod["status"].update(phase=phase, podIP=pod_ip, podIPs=[{"ip": pod_ip}])
            pod["status"].update(hostIP="10.0.0.1", startTime=now())
            self._bump(pod)

    def finish_deletions(self) -> None:
        """The kubelet confirms every graceful deletion: the pods go away."""
        with self._lock:
            for key, pod in list(self.pods.items()):
                if pod["metadata"].get("deletionTimestamp"):
                    del self.pods[key]

    # -- the API ----------------------------------------------------------------------------

    def handle(self, method: str, url: str, content_type: str | None, raw: bytes) -> Json:
        parts = urlsplit(url)
        body = json.loads(raw) if raw else None
        with self._lock:
            self.requests.append(
                Request(method, parts.path, parse_qs(parts.query), content_type, body)
            )
            faults = self._faults.get(method)
            if faults:
                code = faults.pop(0)
                raise ApiError(code, f"injected {code} for {method} {parts.path}")
            if (match := SERVICE.fullmatch(parts.path)) and method == "GET":
                return self._get(self.services, "services", match["ns"], match["name"])
            match = PODS.fullmatch(parts.path)
            if match is None:
                raise ApiError(404, f"the server could not find the requested resource {url}")
            ns, name = match["ns"], match["name"]
            if name is None and method == "GET":
                selector = parse_qs(parts.query).get("labelSelector", [""])[0]
                return self._list(ns, selector)
            if name is None and method == "POST":
                return self._create(ns, body)
            if name is not None and method == "GET":
                return self._get(self.pods, "pods", ns, name)
            if name is not None and method == "PATCH":
                return self._patch(ns, name, content_type, body)
            if name is not None and method == "DELETE":
                return self._delete(ns, name)
        raise ApiError(404, f"the server could not find the requested resource {url}")

    def _list(self, ns: str, selector: str) -> Json:
        items = [
            pod
            for (pod_ns, _), pod in self.pods.items()
            if pod_ns == ns and selector_matches(selector, pod["metadata"].get("labels") or {})
        ]
        # Items of a list carry neither kind nor apiVersion, as from the real server.
        items = [{k: v for k, v in pod.items() if k not in ("kind", "apiVersion")} for pod in items]
        meta = {"resourceVersion": str(self._version)}
        return {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items}

    def _create(self, ns: str, pod: Json) -> Json:
        meta = pod.get("metadata") or {}
        if meta.get("namespace", ns) != ns:
            raise ApiError(
                400,
                "the namespace of the provided object does not match the namespace sent on the "
                "request",
            )
        name = meta.get("name") or ""
        if len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
            raise ApiError(422, f"Pod {name!r} is invalid: metadata.name: Invalid value")
        if (ns, name) in self.pods:
            raise ApiError(409, f'pods "{name}" already exists', "AlreadyExists")
        check_metadata(meta)
        return self._store(ns, pod)

    def _get(self, table: dict[tuple[str, str], Json], kind: str, ns: str, name: str) -> Json:
        if (ns, name) not in table:
            raise ApiError(404, f'{kind} "{name}" not found')
        return table[ns, name]

    def _patch(self, ns: str, name: str, content_type: str | None, patch: Any) -> Json:
        if content_type not in MERGE_PATCHES:
            raise ApiError(415, f"the body of the request was in an unknown format: {content_type}")
        pod = self._get(self.pods, "pods", ns, name)
        meta = merge_patch(pod["metadata"], (patch or {}).get("metadata", {}))
        check_metadata(meta)
        pod["metadata"] = meta
        return self._bump(pod)

    def _delete(self, ns: str, name: str) -> Json:
        pod = self._get(self.pods, "pods", ns, name)
        if not pod["spec"].get("nodeName"):
            return self.pods.pop((ns, name))  # never scheduled: nothing to stop
        if not pod["metadata"].get("deletionTimestamp"):
            pod["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=30)
            self._bump(pod)
        return pod

    def _store(self, ns: str, pod: Json) -> Json:
        stored: Json = json.loads(json.dumps(pod))
        stored.update(kind="Pod", apiVersion="v1")
        stored["metadata"] = self._new_meta(ns, stored.get("metadata") or {})
        stored.setdefault("spec", {}).setdefault("restartPolicy", "Always")
        stored["status"] = {
            "phase": "Pending",
            "qosClass": "BestEffort",
            **stored.get("status", {}),
        }
        self.pods[ns, stored["metadata"]["name"]] = stored
        return stored

    def _new_meta(self, ns: str, meta: Json) -> Json:
        self._version += 1
        return {
            **meta,
            "namespace": ns,
            "uid": str(uuid.uuid4()),
            "resourceVersion": str(self._version),
            "creationTimestamp": now(),
        }

    def _bump(self, pod: Json) -> Json:
        self._version += 1
        pod["metadata"]["resourceVersion"] = str(self._version)
        return pod

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    code = 201 if self.command == "POST" else 200
                    answer = fake.handle(self.command, self.path, self.headers["Content-Type"], raw)
                except ApiError as exc:
                    code, answer = exc.code, status_object(exc)
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def status_object(error: ApiError) -> Json:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": error.message,
        "reason": error.reason,
        "code": error.code,
        "details": {},
    }
