"""The `ado` command. Each command parses, builds the config, calls one function, exits.

Exit codes: 0 every task changed or had no change, 1 a task failed, 2 bad usage or input
(nothing started or written), 130 interrupted (the run is resumable).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click
from click.core import ParameterSource

from ado_ray.cli_forge import LIST_PARAMS, PUBLISH_KEYS, prs, publish_options, repos
from ado_ray.cli_options import (
    F,
    check_globals_apply,
    handle_errors,
    inherit_globals,
    option,
    store_options,
)
from ado_ray.cluster.commands import cluster, dashboard
from ado_ray.errors import UsageError
from ado_ray.trace import mark

# click parameter → dotted config key; only parameters the user set (flag or ADO_* env) count.
CONFIG_KEYS = {
    "state": "state",
    "work_root": "work_root",
    "parallel": "parallel",
    "agent": "agent.name",
    "cmd": "agent.cmd",
    "prompt": "agent.prompt",
    "prompt_file": "agent.prompt_file",
    "env_allow": "agent.env_allow",
    "timeout": "agent.timeout_s",
    "stall_timeout": "agent.stall_timeout_s",
    "name": "name",
    "branch": "branch",
    "dry_run": "dry_run",
    "keep_workspaces": "keep_workspaces",
    "no_ray": "no_ray",
    "ray_address": "ray.address",
    "dashboard_url": "ray.dashboard_url",
    "dashboard": "ray.dashboard",
    "keep_dashboard": "ray.keep_dashboard",
    "max_attempts": "max_attempts",
    "grace": "interrupt_grace_s",
    "fallback": "fallback",
    "max_cost": "max_cost_usd",
    "max_cost_per_task": "max_cost_per_task_usd",
    **PUBLISH_KEYS,
}


def run_options(func: F) -> F:
    options = [
        option(
            "--parallel",
            "-p",
            "-j",
            env="ADO_PARALLEL",
            type=click.IntRange(1, 10_000),
            help="Agents running at once [default: 4].",
        ),
        option(
            "--timeout",
            env="ADO_TIMEOUT",
            type=click.FloatRange(min=0, min_open=True),
            help="Hard limit per agent run, seconds [default: 1800].",
        ),
        option(
            "--stall-timeout",
            env="ADO_STALL_TIMEOUT",
            type=click.FloatRange(min=0),
            help="Kill an agent silent this long, seconds; 0 disables [default: 600].",
        ),
        option(
            "--grace",
            env="ADO_GRACE",
            type=click.FloatRange(min=0),
            help="On Ctrl-C, seconds running agents get to finish [default: 20].",
        ),
        option(
            "--work-root",
            env="ADO_WORK_ROOT",
            type=click.Path(file_okay=False, path_type=Path),
            help="Clone cache and workspaces [default: .ado/work].",
        ),
        option(
            "--no-ray",
            is_flag=True,
            default=None,
            env="ADO_NO_RAY",
            help="Run tasks in this process (for debugging).",
        ),
        option(
            "--ray-address",
            env="ADO_RAY_ADDRESS",
            help="Join this Ray cluster instead of starting a local one.",
        ),
        option(
            "--dashboard/--no-dashboard",
            default=None,
            env="ADO_DASHBOARD",
            help="Start the Ray dashboard with the run's local Ray instance; prints its URL.",
        ),
        option(
            "--keep-ray",
            "--keep-dashboard",
            "keep_dashboard",
            is_flag=True,
            default=None,
            env=["ADO_KEEP_RAY", "ADO_KEEP_DASHBOARD"],
            help="Run on a local Ray instance that stays up after the run, with its dashboard "
            "(ray.keep_dashboard): the first run starts it, the next ones join it at once "
            "instead of starting Ray; `ado dashboard --stop` ends it.",
        ),
        option(
            "--json",
            "as_json",
            is_flag=True,
            env="ADO_JSON",
            help="Print one JSON object at the end; progress goes to stderr.",
        ),
    ]
    for decorate in reversed(options):
        func = decorate(func)
    return store_options(func)


def _sources(ctx: click.Context, params: dict[str, Any]) -> Any:
    """The command's config sources; only parameters the user set (flag or env) count."""
    from ado_ray.api import ConfigSources

    params = dict(params)
    inherited = inherit_globals(ctx, params)  # `ado --context k8s status RUN`
    data: dict[str, Any] = {}
    for param, key in CONFIG_KEYS.items():
        if param not in params:
            continue
        if param not in inherited and ctx.get_parameter_source(param) not in (
            ParameterSource.COMMANDLINE,
            ParameterSource.ENVIRONMENT,
        ):
            continue
        value = params[param]
        if param == "stall_timeout" and value == 0:
            value = None
        if param == "env_allow":
            value = [name for item in value for name in item.split(",") if name]
        if param in LIST_PARAMS:
            if not value:
                continue
            value = [name for item in value for name in item.split(",") if name]
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return ConfigSources(params.get("config_file"), data, params.get("context"))


class RunFinished(SystemExit):
    """A run's command is done: results printed, its Ray shut down (exit code: `code`)."""


class AdoGroup(click.Group):
    """The `ado` process. After a run's command (`RunFinished`) it exits at once with
    `os._exit`, once the output is flushed: everything is closed by then, and what is left
    is the interpreter's own teardown, which after Ray costs 0.5-1 s here. Only this
    entry point does so; click's test runner calls `main.main()`, which is left as it is."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.main(*args, **kwargs)
        except RunFinished as done:
            import logging

            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            mark("exit")
            os._exit(done.code if isinstance(done.code, int) else 1)


@click.group(
    cls=AdoGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="ado-ray")
@store_options
@click.pass_context
def main(ctx: click.Context, **_: Any) -> None:
    """Run an AI coding agent over many git repositories in parallel, on Ray.

    --config, --state and --context may come before the command (`ado --context k8s
    status RUN`) or after it; after it, they win.
    """
    check_globals_apply(ctx)


main.add_command(cluster)
main.add_command(dashboard)
main.add_command(prs)
main.add_command(repos)


@main.command()
@click.argument("repo_list", type=click.Path(dir_okay=False, path_type=Path), required=False)
@option("--agent", "-a", env="ADO_AGENT", help="Agent adapter [default: command].")
@option(
    "--cmd",
    env="ADO_CMD",
    help="The command agent's argv template, e.g. 'python fix.py {repo_path}'.",
)
@option("--prompt", env="ADO_PROMPT", help="Prompt text, written to {prompt_file} in each task.")
@option(
    "--prompt-file",
    env="ADO_PROMPT_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the prompt from this file.",
)
@option(
    "--env-allow",
    env="ADO_ENV_ALLOW",
    multiple=True,
    help="Environment variables the agent may see (names or globs; repeatable, comma-separated).",
)
@option("--name", "-n", env="ADO_NAME", help="Run name [default: a short slug].")
@option(
    "--branch", "-b", env="ADO_BRANCH", help="Branch for the changes [default: ado/<run-name>]."
)
@option(
    "--dry-run",
    is_flag=True,
    default=None,
    env="ADO_DRY_RUN",
    help="Commit in the workspaces only; push nothing.",
)
@option(
    "--keep-workspaces",
    is_flag=True,
    default=None,
    env="ADO_KEEP_WORKSPACES",
    help="Keep every finished task's checkout (default: only failed ones and dry-run commits).",
)
@option(
    "--max-attempts",
    env="ADO_MAX_ATTEMPTS",
    type=click.IntRange(1, 100),
    help="Attempts for retryable failures [default: 2].",
)
@option(
    "--fallback/--no-fallback",
    default=None,
    env="ADO_FALLBACK",
    help="On a provider limit, move to the next mode (default) or wait for the reset.",
)
@option(
    "--max-cost",
    env="ADO_MAX_COST",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop starting agents once the run has cost this many USD.",
)
@option(
    "--max-cost-per-task",
    env="ADO_MAX_COST_PER_TASK",
    type=click.FloatRange(min=0, min_open=True),
    help="No new agent run for a task that has cost this many USD.",
)
@option(
    "--dashboard-url",
    env="ADO_RAY_DASHBOARD",
    help="Submit the run as a Ray job to the cluster whose dashboard this is (http://host:8265).",
)
@option("--plan", is_flag=True, env="ADO_PLAN", help="Print the resolved repository list and exit.")
@option(
    "--resume",
    "resume_id",
    env="ADO_RESUME",
    help="Continue this run instead of starting one (REPO_LIST, if given, must be its own).",
)
@option(
    "--retry-failed",
    is_flag=True,
    env="ADO_RETRY_FAILED",
    help="With --resume: run failed tasks again.",
)
@publish_options
@run_options
@click.pass_context
@handle_errors
def batch(
    ctx: click.Context,
    repo_list: Path | None,
    resume_id: str | None,
    plan: bool,
    retry_failed: bool,
    as_json: bool,
    **params: Any,
) -> None:
    """Run the agent in every repository of REPO_LIST (one per line; see the README)."""
    mark("cli parsed")
    from ado_ray import api
    from ado_ray.cluster import jobs

    sources = _sources(ctx, params)
    if resume_id:
        if repo_list is not None:  # allowed when it is the run's own list
            api.check_resume_list(repo_list, resume_id, sources)
        if jobs.job_mode(sources):  # a Ray dashboard is configured: run as a Ray job there
            sys.exit(jobs.submit_resume(resume_id, sources, retry_failed, as_json=as_json))
        with _run_output(as_json) as (out, ray):
            stream = _progress_stream(as_json)
            result = api.resume(resume_id, sources, retry_failed, stream, ray=ray)
            _finish(result, as_json, out)
    else:
        if repo_list is None:
            raise UsageError("missing REPO_LIST; expected a file with one repository per line")
        if plan:
            click.echo(api.plan_text(repo_list, sources), nl=False)
            return
        if jobs.job_mode(sources):
            sys.exit(jobs.submit_batch(repo_list, sources, as_json=as_json))
        with _run_output(as_json) as (out, ray):
            result = api.start(repo_list, sources, _progress_stream(as_json), ray=ray)
            _finish(result, as_json, out)


@main.command()
@click.argument("run_id")
@publish_options
@run_options
@click.pass_context
@handle_errors
def publish(ctx: click.Context, run_id: str, as_json: bool, **params: Any) -> None:
    """Push RUN_ID's commits (e.g. a --dry-run's) and, with --pr, open their PRs; no agent runs."""
    from ado_ray import api

    with _run_output(as_json) as (out, ray):
        result = api.publish(run_id, _sources(ctx, params), _progress_stream(as_json), ray=ray)
        _finish(result, as_json, out)


@main.command()
@click.argument("run_id")
@option("--retry-failed", is_flag=True, env="ADO_RETRY_FAILED", help="Run failed tasks again.")
@publish_options
@run_options
@click.pass_context
@handle_errors
def resume(
    ctx: click.Context,
    run_id: str,
    retry_failed: bool,
    as_json: bool,
    **params: Any,
) -> None:
    """Continue RUN_ID from each task's last checkpoint (same as batch --resume)."""
    from ado_ray import api

    with _run_output(as_json) as (out, ray):
        sources, stream = _sources(ctx, params), _progress_stream(as_json)
        result = api.resume(run_id, sources, retry_failed, stream, ray=ray)
        _finish(result, as_json, out)


@main.command()
@option(
    "--limit",
    env="ADO_LIMIT",
    type=click.IntRange(1),
    default=50,
    show_default=True,
    help="How many runs.",
)
@option("--json", "as_json", is_flag=True, env="ADO_JSON", help="A JSON array, newest first.")
@store_options
@click.pass_context
@handle_errors
def runs(ctx: click.Context, limit: int, as_json: bool, **params: Any) -> None:
    """List runs, newest first."""
    from ado_ray import api

    rows = api.list_runs(_sources(ctx, params), limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        counts = ", ".join(f"{k} {v}" for k, v in row["counts"].items())
        when = row["created_at"][:19]
        status = api.status_text(row)
        click.echo(f"{row['run_id']}  {when}  {status:<11} {row['name']:<24} {counts}")


@main.command()
@click.argument("run_id")
@option("--json", "as_json", is_flag=True, env="ADO_JSON", help="The run as one JSON object.")
@store_options
@click.pass_context
@handle_errors
def status(ctx: click.Context, run_id: str, as_json: bool, **params: Any) -> None:
    """Counts per state and a table of the run's repositories (at most 100: the failed
    ones first; `--json` and `ado report` have every one)."""
    from ado_ray import api

    if as_json:
        api.write_status_json(run_id, _sources(ctx, params), sys.stdout)
        return
    _print_status(api.status(run_id, _sources(ctx, params)))


@main.command()
@click.argument("run_id")
@option(
    "--format",
    "fmt",
    env="ADO_REPORT_FORMAT",
    type=click.Choice(["md", "json", "junit", "html"]),
    default="md",
    show_default=True,
)
@option(
    "--output",
    "-o",
    env="ADO_REPORT_OUTPUT",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here instead of stdout.",
)
@store_options
@click.pass_context
@handle_errors
def report(ctx: click.Context, run_id: str, fmt: str, output: Path | None, **params: Any) -> None:
    """Write the run's report as Markdown, JSON, JUnit XML or one self-contained HTML page
    (charts included: open it offline, e.g. `--format html -o run.html`)."""
    from ado_ray import api

    sources = _sources(ctx, params)
    if output is None:
        api.write_report(run_id, sources, fmt, sys.stdout)
        return
    with open(output, "w", encoding="utf-8") as out:
        api.write_report(run_id, sources, fmt, out)


@main.command("watch")
@click.argument("run_id")
@option(
    "--every",
    env="ADO_WATCH_EVERY",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between looks at the store.",
)
@option(
    "--recent",
    env="ADO_WATCH_RECENT",
    type=click.IntRange(0, 100),
    default=8,
    show_default=True,
    help="How many of the latest outcomes to show.",
)
@store_options
@click.pass_context
@handle_errors
def watch_command(
    ctx: click.Context, run_id: str, every: float, recent: int, **params: Any
) -> None:
    """Follow RUN_ID in the store until it ends (from any machine that reaches the store):
    counts, repositories in flight, elapsed time and ETA, the latest outcomes."""
    from ado_ray import watch

    sys.exit(watch.watch(run_id, _sources(ctx, params), every_s=every, recent=recent))


@main.command("logs")
@click.argument("run_id")
@click.argument("repo")
@option(
    "--attempt",
    env="ADO_LOGS_ATTEMPT",
    type=click.IntRange(1),
    help="This agent attempt's log [default: the last].",
)
@option("--stderr", is_flag=True, env="ADO_LOGS_STDERR", help="The agent's stderr, not stdout.")
@option(
    "--follow",
    "-f",
    is_flag=True,
    env="ADO_LOGS_FOLLOW",
    help="Keep printing what the agent writes until the task ends.",
)
@store_options
@click.pass_context
@handle_errors
def logs_command(
    ctx: click.Context,
    run_id: str,
    repo: str,
    attempt: int | None,
    stderr: bool,
    follow: bool,
    **params: Any,
) -> None:
    """Print an agent's log for REPO of RUN_ID (REPO: its name, key, or a unique part)."""
    from ado_ray import logs

    out = sys.stdout.buffer  # the log's bytes as they are
    sys.exit(logs.show(run_id, repo, _sources(ctx, params), out, _note, attempt, stderr, follow))


@main.command("diff")
@click.argument("run_id")
@click.argument("repo", required=False)
@option("--stat", is_flag=True, env="ADO_DIFF_STAT", help="Only git's --stat of each commit.")
@store_options
@click.pass_context
@handle_errors
def diff_command(
    ctx: click.Context, run_id: str, repo: str | None, stat: bool, **params: Any
) -> None:
    """Print RUN_ID's commits as patches (of REPO only, if given), from the store: no
    workspace needed. Tasks without a commit are listed on stderr."""
    from ado_ray import diffs

    color = sys.stdout.isatty()
    sys.exit(diffs.show(run_id, repo, _sources(ctx, params), sys.stdout, _note, stat, color))


@main.command("limits")
@option("--json", "as_json", is_flag=True, env="ADO_JSON", help="A JSON array, one object per key.")
@option(
    "--ray-address", env="ADO_RAY_ADDRESS", help="Read the in-memory limiter of this Ray cluster."
)
@store_options
@click.pass_context
@handle_errors
def limits_command(ctx: click.Context, as_json: bool, **params: Any) -> None:
    """Every limit key: configuration, current use, cooldown and leases."""
    from ado_ray import api

    rows = api.limits(_sources(ctx, params))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no limits configured (see `limits:` in the README)")
    for row in rows:
        parts = [
            f"{w['used']}/{w['limit']} per {w['window'].split('/')[1]}" for w in row["requests"]
        ]
        if row["tokens"]:
            parts.append(f"tokens {row['tokens']['used']}/{row['tokens']['limit']}")
        if row["concurrency"]:
            parts.append(f"holders {row['concurrency']['active']}/{row['concurrency']['limit']}")
        if row["cooldown_until"]:
            parts.append(
                f"cooldown until {datetime.fromtimestamp(row['cooldown_until'], UTC):%H:%M:%S} UTC"
            )
        if row["waiting"]:
            parts.append(f"{row['waiting']} waiting")
        click.echo(f"{row['key']:<28} " + (", ".join(parts) or "no limit"))


@main.command("gc")
@option(
    "--older-than",
    env="ADO_GC_OLDER_THAN",
    default="30d",
    show_default=True,
    help="Remove the directories of runs created longer ago than this (not running ones).",
)
@option(
    "--mirrors-unused",
    env="ADO_GC_MIRRORS_UNUSED",
    default="14d",
    show_default=True,
    help="Remove clone-cache mirrors unused this long that no kept checkout borrows.",
)
@option("--dry-run", is_flag=True, env="ADO_GC_DRY_RUN", help="Say what would go; remove nothing.")
@option("--json", "as_json", is_flag=True, env="ADO_JSON", help="One JSON object.")
@option(
    "--work-root",
    env="ADO_WORK_ROOT",
    type=click.Path(file_okay=False, path_type=Path),
    help="Clone cache and workspaces [default: .ado/work].",
)
@store_options
@click.pass_context
@handle_errors
def gc_command(
    ctx: click.Context,
    older_than: str,
    mirrors_unused: str,
    dry_run: bool,
    as_json: bool,
    **params: Any,
) -> None:
    """Free the disk of old runs (checkouts, logs) and of unused mirrors; the store keeps
    every run's records and commits."""
    from ado_ray import api

    result = api.gc(_sources(ctx, params), older_than, mirrors_unused, dry_run)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    for item in result["removed"]:
        size = f"{item['bytes'] / 2**20:9.1f} MB"
        click.echo(f"{verb} {item['kind']:<6} {size}  {item['path']}  ({item['why']})")
    click.echo(
        f"{verb} {len(result['removed'])} item(s), {result['bytes'] / 2**20:.1f} MB; kept "
        f"{result['kept_runs']} run(s) younger than {older_than} or running"
        + (
            f", and {result['unknown_runs']} this store does not know"
            if result["unknown_runs"]
            else ""
        )
    )


@main.group()
def config() -> None:
    """Show or check configuration."""


@config.command("show")
@option("--json", "as_json", is_flag=True, env="ADO_JSON", help="JSON instead of YAML.")
@store_options
@click.pass_context
@handle_errors
def config_show(ctx: click.Context, as_json: bool, **params: Any) -> None:
    """Print the resolved config (file < context < environment < flags), secrets masked."""
    import yaml

    from ado_ray import api

    data = api.load_config(_sources(ctx, params)).masked()
    click.echo(
        json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False), nl=False
    )


@config.command("validate")
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@option("--context", env="ADO_CONTEXT", help="Also resolve this context.")
@click.pass_context
@handle_errors
def config_validate(ctx: click.Context, config_file: Path, context: str | None) -> None:
    """Check CONFIG_FILE: exit 0 if valid, else 2 with every problem."""
    from ado_ray import api

    params = {"context": context}
    inherit_globals(ctx, params)  # `ado --context k8s config validate FILE`
    context = params["context"]
    api.load_config(api.ConfigSources(config_file, {}, context))
    click.echo(f"{config_file}: valid" + (f" (context {context})" if context else ""))


@main.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_command(shell: str) -> None:
    """Print the shell completion script for SHELL, e.g. in ~/.bashrc:
    `eval "$(ado completion bash)"` (zsh likewise; fish: `ado completion fish | source`)."""
    from click.shell_completion import get_completion_class

    script = get_completion_class(shell)
    assert script is not None  # click ships all three
    click.echo(script(main, {}, "ado", "_ADO_COMPLETE").source())


def _print_status(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from ado_ray import api
    from ado_ray.report_timeline import fmt_clock, fmt_duration

    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    status = api.status_text(summary)
    hidden = summary["total"] - len(summary["tasks"])
    caption = (
        f"… and {hidden} more (the failed ones are shown first): ado status "
        f"{summary['run_id']} --json, or ado report {summary['run_id']}"
        if hidden
        else None
    )
    table = Table(
        title=f"{summary['name']} ({summary['run_id']}) · {status} · {counts}", caption=caption
    )
    day = summary["created_at"][:10]
    columns = ("repository", "state", "attempts", "duration", f"finished ({day})", "diffstat")
    for column in (*columns, "commit", "where / error · log"):
        table.add_column(column)
    for task in summary["tasks"]:
        detail = (
            f"{task['failure_class']}: {task['error']}" if task["error"] else task["where"] or ""
        )
        if task["log_path"]:
            detail += ("\n" if detail else "") + f"log: {task['log_path']}"
        table.add_row(
            task["name"],
            task["state"],
            str(task["attempts"]),
            fmt_duration(task["duration_s"]),
            fmt_clock(task["finished_at"], day),
            task["diffstat"] or "",
            (task["commit"] or "")[:10],
            detail,
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


def _note(message: str) -> None:
    click.echo(message, err=True)


def _progress_stream(as_json: bool) -> Any:
    return sys.stderr if as_json else sys.stdout


@contextlib.contextmanager
def _json_stdout(as_json: bool) -> Iterator[IO[str]]:
    """Where `_finish` writes. With --json, stdout holds the one JSON object and nothing
    else: during the run file descriptor 1 points at stderr, so whatever Ray (or anything)
    prints there, from any thread (say, `(raylet) A worker died ...`), lands on stderr, and
    the object goes to the real stdout. (Not under click's test runner: no fd 1 there.)"""
    try:
        redirect = as_json and sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: a test runner
        redirect = False
    if not redirect:
        yield sys.stdout
        return
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    try:
        yield out
    finally:
        out.flush()
        sys.stdout.flush()
        os.dup2(out.fileno(), 1)
        out.close()


@contextlib.contextmanager
def _run_output(as_json: bool) -> Iterator[tuple[IO[str], Any]]:
    """`_json_stdout`, and the run's Ray (api.py begins it once the config is known).
    Ray shuts down in its own thread while the results are printed; at the end, once they
    are out, this waits for it, so the process leaves no Ray process behind."""
    from ado_ray.engine.backends import RayThread

    ray = RayThread()
    with _json_stdout(as_json) as out:
        finished = False
        try:
            yield out, ray
        except RunFinished:
            finished = True
            raise
        finally:
            out.flush()
            if finished and ray.attached:  # `AdoGroup` exits while Ray disconnects
                ray.stop()
            else:
                ray.join()


def _finish(result: Any, as_json: bool, out: IO[str]) -> None:
    if as_json:
        if result.write_json is not None:  # a task at a time
            result.write_json(out)
        else:
            click.echo(json.dumps(result.summary, indent=2), file=out)
    else:
        counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
        click.echo(f"run {result.run.run_id} ({result.run.name}): {counts}")
        if result.interrupted:
            click.echo(f"interrupted; continue with: ado resume {result.run.run_id}")
        click.echo(f"report: ado report {result.run.run_id}")
    mark("results printed")
    raise RunFinished(result.exit_code)
