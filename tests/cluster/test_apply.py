"""`ado cluster up | down | status` through the real kubernetes client.

A small HTTP server in this module stands in for a Kubernetes API server: it keeps objects
by path, answers server-side apply (PATCH with application/apply-patch+yaml), GET, DELETE
and a pod list with a label selector, in real-format JSON and Status errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from kubernetes import client

from ado_ray.cluster import apply
from ado_ray.cluster.spec import ClusterSpec

ROOT = Path(__file__).resolve().parents[2]


class ApiServer:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, dict[str, list[str]], str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                server.calls.append(
                    (self.command, url.path, query, self.headers.get("Content-Type", ""))
                )
                if self.command == "PATCH":
                    obj = yaml.safe_load(body)
                    server.objects[url.path] = obj
                    return self._reply(200, obj)
                if self.command == "GET" and url.path.endswith("/pods"):
                    wanted = dict(pair.split("=") for pair in query["labelSelector"][0].split(","))
                    items = [
                        o
                        for p, o in server.objects.items()
                        if "/pods/" in p
                        and wanted.items() <= o["metadata"].get("labels", {}).items()
                    ]
                    return self._reply(200, {"kind": "PodList", "apiVersion": "v1", "items": items})
                if url.path not in server.objects:
                    return self._reply(
                        404,
                        {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "status": "Failure",
                            "reason": "NotFound",
                            "code": 404,
                            "message": f"{url.path} not found",
                        },
                    )
                obj = (
                    server.objects[url.path]
                    if self.command == "GET"
                    else server.objects.pop(url.path)
                )
                return self._reply(200, obj)

            do_GET = do_PATCH = do_DELETE = _handle

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def api_server() -> Iterator[ApiServer]:
    server = ApiServer()
    yield server
    server.close()


def api_client(url: str) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = url
    return client.ApiClient(configuration)


@pytest.mark.parametrize("overlay", ["prod", "dev"])
def test_overlay_objects_are_what_kubectl_kustomize_builds(overlay: str) -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    by_kustomize = sorted((d for d in yaml.safe_load_all(built) if d), key=apply.describe)
    ours = sorted(apply.overlay_objects(ClusterSpec(), overlay), key=apply.describe)
    assert [apply.describe(o) for o in ours] == [apply.describe(o) for o in by_kustomize]
    assert ours == by_kustomize


def test_up_status_down_through_the_kubernetes_client(api_server: ApiServer) -> None:
    spec = ClusterSpec()
    found = apply.overlay_objects(spec, "prod")
    api = api_client(api_server.url)
    applied = apply.up(api, found)
    assert len(applied) == len(found) == len(api_server.objects)
    patches = [call for call in api_server.calls if call[0] == "PATCH"]
    assert all(ct == "application/apply-patch+yaml" for *_, ct in patches)
    assert all(q == {"fieldManager": ["ado"], "force": ["true"]} for _, _, q, _ in patches)
    assert patches[0][1] == f"/api/v1/namespaces/{spec.namespace}"  # the namespace first

    worker = f"/api/v1/namespaces/{spec.namespace}/pods/{spec.name}-worker-abcde"
    api_server.objects[worker] = {
        "kind": "Pod",
        "metadata": {
            "name": f"{spec.name}-worker-abcde",
            "labels": {"ray-cluster-name": spec.name, "ray-node-type": "worker"},
        },
        "status": {"phase": "Running"},
    }
    seen = apply.status(api, spec)
    assert seen["head"] is not None and seen["workers"] == [
        {"name": f"{spec.name}-worker-abcde", "phase": "Running"}
    ]

    del api_server.objects[worker]
    deleted = apply.down(api, found)
    assert len(deleted) == len(found) and api_server.objects == {}
    assert deleted[-1] == f"Namespace/{spec.namespace}"
    assert apply.down(api, found) == []  # a 404 is done
    api.close()


def test_a_refused_apply_is_a_clear_error() -> None:
    refusing = ApiServer()

    class Refuse(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            data = json.dumps(
                {"kind": "Status", "code": 403, "message": "roles is forbidden"}
            ).encode()
            self.send_response(403)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    refusing.http.RequestHandlerClass = Refuse
    api = api_client(refusing.url)
    try:
        with pytest.raises(apply.ClusterError, match="HTTP 403: roles is forbidden"):
            apply.up(api, apply.overlay_objects(ClusterSpec(), "prod")[:1])
    finally:
        api.close()
        refusing.close()


def test_cli_up_dry_run_prints_the_objects_and_calls_nothing(api_server: ApiServer) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ado_ray",
            "cluster",
            "up",
            "--overlay",
            "prod",
            "--dry-run",
            "--api-server",
            api_server.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    printed = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert printed == apply.overlay_objects(ClusterSpec(), "prod")
    assert api_server.calls == []
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "ado_ray",
            "cluster",
            "status",
            "--json",
            "--api-server",
            api_server.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(status.stdout)["head"] is None  # nothing applied: no head yet
