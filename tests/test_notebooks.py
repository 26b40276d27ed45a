"""The notebooks in notebooks/ run top to bottom and show what they claim."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
pytestmark = pytest.mark.e2e


def test_quickstart_runs_a_batch_and_loads_it_into_pandas(
    ray_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_address)  # the kernel joins the session's Ray instance
    notebook = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    NotebookClient(
        notebook,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    ).execute()

    def text(index: int) -> str:
        return "".join(
            o.get("data", {}).get("text/plain", "") + o.get("text", "")
            for o in notebook.cells[index].outputs
        )

    assert text(2) == "['alpha', 'beta', 'gamma']"
    assert text(3).endswith("{'changed': 3}")
    assert text(4).count("changed") == 3
    assert "notebook-demo" in text(5)
