"""Validate the stand-ins' replies against the forges' published response descriptions.

GitHub: the official OpenAPI description from the npm package `@octokit/openapi`, pinned
in `.ci/forge-schemas.sh` and installed into `.agents/openapi/` (run the script; `make test`
does). The stand-in serves under `/api/v3` like GitHub Enterprise Server, so the GHES
description is used. The document is OpenAPI 3.0: it is converted once per process into
JSON Schema (`nullable: true` becomes "or null"), and a reply's schema is found by method +
path template + status code, with `$ref`s resolved inside the document.

GitLab and Gitea publish no such package: `schemas/gitlab.json` and `schemas/gitea.json`
are this project's own JSON Schemas, written from GitLab's API docs and Gitea's swagger
description, laid out as `paths/{template}/{method}/{status}` → schema, plus `definitions`.

An error status that a description leaves out (401, 403, 404, 409, 422, 429, 5xx; GitHub
documents 401 on few operations though every one can answer it) is checked against the
forge's generic error shape. Any other undocumented status is itself a violation.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from jsonschema import Draft7Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

OCTOKIT_OPENAPI_VERSION = "23.0.2"
GITHUB_DESCRIPTION = "ghes-3.19.json"
ROOT = Path(__file__).resolve().parents[3]
GITHUB_SPEC = ROOT / ".agents/openapi/node_modules/@octokit/openapi/generated" / GITHUB_DESCRIPTION
OWN_SCHEMAS = Path(__file__).with_name("schemas")
GENERIC_ERRORS = frozenset({400, 401, 403, 404, 405, 409, 422, 429, 500, 502, 503})
MAX_ERRORS_PER_REPLY = 5

Lookup = Callable[[str, str, int], tuple[str | None, str | None]]


class SchemaUnavailable(RuntimeError):
    """The GitHub OpenAPI description is not installed; run `bash .ci/forge-schemas.sh`."""


def _formats() -> FormatChecker:
    checker = FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
            raise ValueError(f"{value!r} is not an RFC 3339 date-time")
        datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True

    @checker.checks("uri", raises=ValueError)
    def uri(value: object) -> bool:
        if isinstance(value, str) and not urlsplit(value).scheme:
            raise ValueError(f"{value!r} is not an absolute URI")
        return True

    return checker


def pointer(*parts: str) -> str:
    """A JSON pointer from raw keys (escaping `~` and `/`)."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


class ResponseSchemas:
    """Checks (method, path template, status, body) against one forge's description."""

    def __init__(self, name: str, document: dict[str, Any], lookup: Lookup) -> None:
        self.name = name
        self._uri = f"urn:ado-ray:forge-schema:{name}"
        resource = Resource.from_contents(document, default_specification=DRAFT7)
        self._registry: Registry[Any] = Registry().with_resource(self._uri, resource)
        self._lookup = lookup
        self._validators: dict[str, Draft7Validator] = {}
        self._formats = _formats()
        self._lock = threading.Lock()

    def check(self, method: str, template: str, status: int, body: Any) -> list[str]:
        """Violations, each as one line naming the operation and the failing place."""
        where = f"{self.name} {method} {template} -> {status}"
        found, problem = self._lookup(method, template, status)
        if problem:
            return [f"{where}: {problem}"]
        if found is None:
            return []  # documented without a body
        with self._lock:
            validator = self._validators.get(found)
            if validator is None:
                ref = {"$ref": f"{self._uri}#{quote(found, safe='/~')}"}
                validator = Draft7Validator(
                    ref, registry=self._registry, format_checker=self._formats
                )
                self._validators[found] = validator
            errors = list(validator.iter_errors(body))
        return [
            f"{where}: at {e.json_path}: {_short(e.message)}" for e in errors[:MAX_ERRORS_PER_REPLY]
        ]


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _nullable_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 → JSON Schema: a schema with `nullable: true` also accepts null."""
    if isinstance(node, list):
        return [_nullable_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_jsonschema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [{"type": "null"}, out]}
    return out


@functools.cache
def github_schemas() -> ResponseSchemas:
    """GitHub's description (cached per process); raises SchemaUnavailable if missing."""
    if not GITHUB_SPEC.exists():
        raise SchemaUnavailable(
            f"{GITHUB_SPEC} not found; run `bash .ci/forge-schemas.sh` to install "
            f"@octokit/openapi@{OCTOKIT_OPENAPI_VERSION}"
        )
    raw = json.loads(GITHUB_SPEC.read_text())
    doc = {"paths": raw["paths"], "components": _nullable_to_jsonschema(raw["components"])}
    doc["paths"] = _nullable_to_jsonschema(doc["paths"])
    return ResponseSchemas(f"github({GITHUB_DESCRIPTION})", doc, _github_lookup(doc))


def _github_lookup(doc: dict[str, Any]) -> Lookup:
    def lookup(method: str, template: str, status: int) -> tuple[str | None, str | None]:
        operation = doc["paths"].get(template, {}).get(method.lower())
        if operation is None:
            return None, "operation is not in GitHub's OpenAPI description"
        responses = operation["responses"]
        key = str(status) if str(status) in responses else "default"
        response = responses.get(key)
        if response is None:
            if status in GENERIC_ERRORS:
                return pointer("components", "schemas", "basic-error"), None
            return None, f"status {status} is not documented (documented: {sorted(responses)})"
        base = pointer("paths", template, method.lower(), "responses", key)
        if "$ref" in response:  # "#/components/responses/not_found"
            base = response["$ref"][1:]
            response = doc["components"]["responses"][base.rsplit("/", 1)[1]]
        if "application/json" not in response.get("content", {}):
            return None, None
        return base + pointer("content", "application/json", "schema"), None

    return lookup


@functools.cache
def own_schemas(kind: str) -> ResponseSchemas:
    """This project's own schemas for `gitlab` or `gitea`."""
    doc = json.loads((OWN_SCHEMAS / f"{kind}.json").read_text())

    def lookup(method: str, template: str, status: int) -> tuple[str | None, str | None]:
        operation = doc["paths"].get(template, {}).get(method.lower())
        if operation is None:
            return None, f"operation is not described in schemas/{kind}.json"
        if str(status) in operation:
            if operation[str(status)] is None:
                return None, None
            return pointer("paths", template, method.lower(), str(status)), None
        if status in GENERIC_ERRORS:
            return pointer("definitions", "error"), None
        return None, f"status {status} is not documented (documented: {sorted(operation)})"

    return ResponseSchemas(f"{kind}(schemas/{kind}.json)", doc, lookup)


def require_github_schemas() -> ResponseSchemas:
    """For fixtures: the schemas, or a skip (outside CI) / failure (CI) saying how to fix."""
    try:
        return github_schemas()
    except SchemaUnavailable as exc:
        import pytest

        if os.environ.get("CI"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
