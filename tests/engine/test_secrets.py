"""Planted canary credentials: they reach the agent only by name, and nowhere else; a
sandboxed agent cannot read them from another process either."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from ado_ray import api, reports
from ado_ray.engine.process import run_supervised
from ado_ray.engine.progress import LineProgress
from ado_ray.engine.sandbox import probe

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


# --- what an agent can see of other processes ----------------------------------------------

# Looks for `needle` in every environment it can read in /proc (its parent's first, then up
# the chain of parents as far as /proc shows them) and writes down whose it found it in.
SCANNER = """
import os, sys
out, needle = sys.argv[1], sys.argv[2].encode()
def stat(pid):
    return open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()
def has(pid):
    try:
        return needle in open(f"/proc/{pid}/environ", "rb").read()
    except OSError:
        return False
found = [f"parent {os.getppid()}"] if has(os.getppid()) else []
pid = os.getppid()
while pid > 1:
    try:
        pid = int(stat(pid)[1])
    except OSError:
        break
    if has(pid):
        found.append(f"ancestor {pid}")
found += [f"process {p}" for p in os.listdir("/proc") if p.isdigit() and has(p)]
open(out, "w").write("\\n".join(found))
open("changed.txt", "w").write("x")
"""


def canary_run(
    tmp_path: Path, script: Callable[[str, str], str], repo: Path, sandbox: str, *flags: str
) -> list[str]:
    """A driver with canary secrets in its environment (as a real one has its tokens) runs
    the scanner in `repo`; whose environments the agent found a canary in."""
    needle = f"canary-{uuid.uuid4().hex}"
    secrets = {name: f"{needle}-{name}" for name in ("GITHUB_TOKEN", "ANTHROPIC_API_KEY")}
    secrets["AWS_SECRET_ACCESS_KEY"] = f"{needle}-aws"
    found = tmp_path / "found"
    (tmp_path / "ado.yaml").write_text(f"agent: {{sandbox: {sandbox}}}\n")
    (tmp_path / "repos.txt").write_text(f"{repo}\n")
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "ado_ray", "batch", str(tmp_path / "repos.txt"), "--dry-run", *flags),
            *("--config", str(tmp_path / "ado.yaml"), "--state", str(tmp_path / "state.db")),
            *("--work-root", str(tmp_path / "work")),
            *("--cmd", f"{script('scanner', SCANNER)} {found} {needle}"),
        ],
        cwd=tmp_path,
        env={**os.environ, **secrets},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return found.read_text().splitlines()


@pytest.mark.e2e
@pytest.mark.skipif(not probe().prefix, reason=f"no sandbox here: {probe().reason}")
@pytest.mark.parametrize("ray", [False, True], ids=["no-ray", "ray"])
def test_a_sandboxed_agent_finds_no_secret_of_the_driver_or_runner_in_proc(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
    ray: bool,
) -> None:
    flags = ("--ray-address", ray_address) if ray else ("--no-ray",)
    assert canary_run(tmp_path, script, make_repo("canary"), "auto", *flags) == []


@pytest.mark.e2e
def test_an_unsandboxed_agent_does_find_them(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> None:
    """`agent.sandbox: none`: the driver's environment is in reach (the test above can fail)."""
    found = canary_run(tmp_path, script, make_repo("canary"), "none", "--no-ray")
    assert any(line.startswith("ancestor") for line in found), found


ESCAPE = """
import os, subprocess
umount = subprocess.run(["umount", "/proc"], capture_output=True).returncode
try:
    os.close(os.open("/proc/sys/kernel/core_pattern", os.O_WRONLY))  # opens, writes nothing
    core_pattern = "writable"
except OSError as exc:
    core_pattern = exc.strerror
print(umount, core_pattern, len([p for p in os.listdir("/proc") if p.isdigit()]), sep="|")
"""


@pytest.mark.skipif(not probe().prefix or os.geteuid() != 0, reason="needs root and a sandbox")
def test_a_root_agent_cannot_uncover_the_hosts_proc(tmp_path: Path) -> None:
    """Under the agent's /proc lies the host's: it must not be able to unmount it, nor to
    set a core dump helper (which would run outside, as root)."""
    result = asyncio.run(
        run_supervised(
            [sys.executable, "-c", ESCAPE],
            cwd=tmp_path,
            env=dict(os.environ),
            stdout_path=tmp_path / "out.log",
            stderr_path=tmp_path / "err.log",
            timeout_s=60,
            stall_timeout_s=None,
            sandbox="pid",
        )
    )
    assert result.returncode == 0, (tmp_path / "err.log").read_text()
    umount, core_pattern, visible = (tmp_path / "out.log").read_text().strip().split("|")
    assert umount != "0"  # "must be superuser": CAP_SYS_ADMIN is gone
    assert core_pattern == "Read-only file system"
    assert visible == "2"  # the init and the agent: still its own /proc
