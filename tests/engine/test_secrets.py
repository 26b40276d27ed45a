"""Planted canary credentials: they reach the agent only by name, and nowhere else."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ado_ray import api, reports
from ado_ray.engine.progress import LineProgress

pytestmark = pytest.mark.integration

CANARY = "canary-7f3a9c1e-do-not-leak"
DRIVER_ONLY = "canary-driver-env-2b8d"

# Proves it received the token without printing it: writes its digest.
AGENT = """
import hashlib, os, sys
token = os.environ.get("TOOL_TOKEN", "")
open(sys.argv[1], "w").write(hashlib.sha256(token.encode()).hexdigest())
print("driver secret visible:", "DRIVER_SECRET" in os.environ)
open("changed.txt", "w").write("x")
"""


def test_credentials_reach_the_agent_by_name_and_appear_nowhere_else(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOOL_TOKEN_SOURCE", CANARY)
    monkeypatch.setenv("DRIVER_SECRET", DRIVER_ONLY)  # in the driver's environment only
    digest_file = tmp_path / "digest"
    (tmp_path / "ado.yaml").write_text(
        "providers:\n"
        "  tool:\n"
        "    agent: command\n"
        f"    cmd: {json.dumps(script('agent', AGENT) + f' {digest_file}')}\n"
        "    modes: [{name: api, env: {TOOL_TOKEN: '${TOOL_TOKEN_SOURCE}'}}]\n"
    )
    repo_list = tmp_path / "repos.txt"
    repo_list.write_text(f"{make_repo('secret')}\n")
    out = io.StringIO()
    sources = api.ConfigSources(
        tmp_path / "ado.yaml",
        {
            "agent": {"name": "tool"},
            "state": str(tmp_path / "state.db"),
            "work_root": str(tmp_path / "work"),
            "no_ray": True,
        },
    )
    result = api.start(repo_list, sources, out, LineProgress(out))
    assert result.counts == {"changed": 1}
    assert digest_file.read_text() == hashlib.sha256(CANARY.encode()).hexdigest()  # delivered

    places = {"progress": out.getvalue(), "summary": json.dumps(result.summary)}
    for fmt, render in reports.FORMATS.items():
        places[f"report {fmt}"] = render(result.summary)
    for path in tmp_path.rglob("*"):
        if path.is_file() and ".git" not in path.parts and path.name != "ado.yaml":
            places[str(path)] = path.read_bytes().decode("utf-8", "replace")
    shown = subprocess.run(
        [sys.executable, "-m", "ado_ray", "config", "show", "--config", str(tmp_path / "ado.yaml")],
        capture_output=True,
        text=True,
        env={**os.environ},
        check=True,
    )
    places["config show"] = shown.stdout + shown.stderr
    leaks = [where for where, text in places.items() if CANARY in text or DRIVER_ONLY in text]
    assert leaks == []
    logs = "".join(p.read_text() for p in (tmp_path / "work").rglob("attempt-*.stdout.log"))
    assert "driver secret visible: False" in logs  # not on the allow-list: never passed on
    assert any(p.name == "state.db" for p in tmp_path.iterdir())  # the store was scanned
