"""Session-wide fixtures: one real Ray instance, and real git repositories in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


# An agent for tests that stop a run mid-task: logs "start <repo>" to $ADO_VAR_LOG, waits
# for the gate file (argv[2]), edits the checkout, logs "end <repo>" (argv[1]: the repo).
GATED = """
import os, sys, time
def note(what):
    with open(os.environ["ADO_VAR_LOG"], "a") as f:
        f.write(f"{what} {sys.argv[1]}\\n")
note("start")
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
open("change.txt", "w").write(sys.argv[1])
note("end")
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    ).stdout.strip()


def create_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    """A non-bare repository with one commit on `main`."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in (files or {"README.md": f"# {path.name}\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    def factory(name: str, files: dict[str, str] | None = None) -> Path:
        return create_repo(tmp_path / "repos" / name, files)

    return factory


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str, str], str]:
    """Write a Python agent script; return a --cmd prefix that runs it."""

    def factory(name: str, source: str) -> str:
        path = tmp_path / "agents" / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        return f"{sys.executable} {path}"

    return factory


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """One local Ray instance for the whole session (2 CPUs, a small object store).

    In-process tests use it directly; CLI subprocesses join it with --ray-address.
    """
    import ray

    ray.init(
        num_cpus=2,
        object_store_memory=80 * 1024**2,
        include_dashboard=False,
        namespace="ado-test",
        log_to_driver=False,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
