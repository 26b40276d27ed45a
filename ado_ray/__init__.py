"""ado-ray: run AI coding agents over many git repositories in parallel, on Ray.

The notebook API (`Batch`, `load_runs`, `load_tasks`) is imported on first use, so
`import ado_ray` stays cheap and free of side effects.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Batch", "load_runs", "load_tasks"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ado_ray import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'ado_ray' has no attribute {name!r}")
