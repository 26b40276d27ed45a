"""Agent adapter fixtures: the real CLIs (installed by `make agents` into .agents/) and
recorded real outputs (samples/, copied from ../shared/agent-samples)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = Path(__file__).resolve().parent / "samples"


def cli_path(name: str) -> Path:
    """The pinned CLI `name` (claude, codex, gemini); a clear failure if it is missing."""
    path = ROOT / ".agents" / "node_modules" / ".bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing; run `make agents` (installs the pinned agent CLIs)")
    return path


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()
