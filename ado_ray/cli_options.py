"""Shared pieces of the `ado` command line: options with their ADO_* variables, error exits."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ado_ray.errors import AdoError, UsageError

F = TypeVar("F", bound=Callable[..., Any])


def option(*names: str, env: str | list[str], **kwargs: Any) -> Callable[[F], F]:
    return click.option(*names, envvar=env, show_envvar=True, **kwargs)


def handle_errors(func: F) -> F:
    """User mistakes exit 2 with the message; other ado-ray errors exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UsageError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except AdoError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def store_options(func: F) -> F:
    func = option(
        "--config",
        "config_file",
        env="ADO_CONFIG",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Config file (default: ./ado.yaml if present).",
    )(func)
    func = option(
        "--state",
        env=["ADO_STATE", "ADO_STATE_URL"],
        help="State store: a SQLite path or a store URL [default: .ado/state.db].",
    )(func)
    func = option(
        "--context",
        env="ADO_CONTEXT",
        help="Deployment context from the config: local, kubernetes (k8s), or your own.",
    )(func)
    return func
