"""ado-ray: run AI coding agents over many git repositories in parallel, on Ray."""

__version__ = "0.1.0"
