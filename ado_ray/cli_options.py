"""Shared pieces of the `ado` command line: options with their ADO_* variables, error exits."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from ado_ray.errors import AdoError, LeaseLostError, UsageError

F = TypeVar("F", bound=Callable[..., Any])


def option(*names: str, env: str | list[str], **kwargs: Any) -> Callable[[F], F]:
    return click.option(*names, envvar=env, show_envvar=True, **kwargs)


def handle_errors(func: F) -> F:
    """User mistakes exit 2 with the message; a lost run lease 130 (resumable, as after
    Ctrl-C); other ado-ray errors exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UsageError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except LeaseLostError as exc:  # the run stopped, resumable: as after Ctrl-C
            click.echo(f"error: {exc}", err=True)
            sys.exit(130)
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


# `ado --context k8s status RUN`: the group's own --config/--state/--context (store_options)
# stand in for the command's where that one was not given on its command line.
GLOBAL_PARAMS = {"config_file": "--config", "state": "--state", "context": "--context"}


def inherit_globals(ctx: click.Context, params: dict[str, Any]) -> set[str]:
    """Put the `ado --OPTION` values into `params` where the command's own flag was not
    given (its flag wins; a global flag beats an `ADO_*` variable); the names taken."""
    root, taken = ctx.find_root(), set()
    for name in GLOBAL_PARAMS:
        if root is ctx or name not in params:
            continue
        if root.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        if ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            params[name] = root.params[name]
            taken.add(name)
    return taken


def check_globals_apply(ctx: click.Context) -> None:
    """In the group's callback: a global option the invoked command cannot use is a usage
    error (exit 2), not silently ignored."""
    if ctx.invoked_subcommand is None or not isinstance(ctx.command, click.Group):
        return
    command = ctx.command.get_command(ctx, ctx.invoked_subcommand)
    for name, flag in GLOBAL_PARAMS.items():
        given = ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        if given and command is not None and not _takes(command, name):
            raise click.UsageError(
                f"{flag} does not apply to `ado {ctx.invoked_subcommand}`; expected it with "
                f"a command that reads the config or the store (`ado {flag} X status RUN`)",
                ctx,
            )


def _takes(command: click.Command, name: str) -> bool:
    if isinstance(command, click.Group):
        return any(_takes(sub, name) for sub in command.commands.values())
    return any(param.name == name for param in command.params)
