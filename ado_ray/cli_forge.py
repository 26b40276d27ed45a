"""`ado` commands and options for forges: publish flags, `ado publish`, `ado prs`, `ado repos`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ado_ray.cli_options import F, handle_errors, option, store_options

# click parameter → dotted config key (see cli.CONFIG_KEYS)
PUBLISH_KEYS = {
    "pr": "publish.pr",
    "draft": "publish.draft",
    "conflict": "publish.conflict",
    "fork": "publish.fork",
    "labels": "publish.labels",
    "reviewers": "publish.reviewers",
    "team_reviewers": "publish.team_reviewers",
    "assignees": "publish.assignees",
    "pr_title": "publish.title",
    "pr_body": "publish.body",
    "pr_body_file": "publish.body_file",
}
LIST_PARAMS = frozenset({"labels", "reviewers", "team_reviewers", "assignees"})


def publish_options(func: F) -> F:
    """Flags that say what becomes of each changed repository."""
    options = [
        option(
            "--pr/--no-pr",
            default=None,
            env="ADO_PR",
            help="Open (or update) a pull request per changed repository.",
        ),
        option("--draft", is_flag=True, default=None, env="ADO_DRAFT", help="Open PRs as drafts."),
        option(
            "--conflict",
            env="ADO_CONFLICT",
            type=click.Choice(["skip", "replace", "append"]),
            help="When the branch or a PR from it exists: skip the repository (default, no "
            "agent runs), replace the branch (force-with-lease) or append a commit to it.",
        ),
        option(
            "--fork",
            is_flag=True,
            default=None,
            env="ADO_FORK",
            help="Push to the token user's fork where the repository refuses the push.",
        ),
        option("--label", "labels", multiple=True, env="ADO_LABELS", help="PR label (repeatable)."),
        option("--reviewer", "reviewers", multiple=True, env="ADO_REVIEWERS", help="PR reviewer."),
        option(
            "--team-reviewer",
            "team_reviewers",
            multiple=True,
            env="ADO_TEAM_REVIEWERS",
            help="PR team reviewer (GitHub, Gitea).",
        ),
        option("--assignee", "assignees", multiple=True, env="ADO_ASSIGNEES", help="PR assignee."),
        option(
            "--pr-title",
            env="ADO_PR_TITLE",
            help="Title template: {run_name} {run_id} {repo_name} {branch} {prompt_line}.",
        ),
        option(
            "--pr-body",
            env="ADO_PR_BODY",
            help="Body template: the title's fields, {diffstat} and {summary}.",
        ),
        option(
            "--pr-body-file",
            env="ADO_PR_BODY_FILE",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Read the body template from this file.",
        ),
    ]
    for decorate in reversed(options):
        func = decorate(func)
    return func


class DefaultGroup(click.Group):
    """A group whose first argument, if not a subcommand, goes to `default` (`ado prs RUN`)."""

    default = "show"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


def _sources(ctx: click.Context, params: dict[str, Any]) -> Any:
    from ado_ray.cli import _sources as sources

    return sources(ctx, params)


@click.group(cls=DefaultGroup)
def prs() -> None:
    """The pull requests of a run: `ado prs RUN_ID`, `ado prs merge|close RUN_ID`."""


def _print_rows(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    if not rows:
        click.echo("no pull requests in this run (publish with --pr, or `ado publish RUN --pr`)")


def _exit_for(rows: list[dict[str, Any]]) -> None:
    sys.exit(1 if any(row["result"] == "failed" for row in rows) else 0)


@prs.command("show")
@click.argument("run_id")
@option("--json", "as_json", is_flag=True, env="ADO_JSON", help="A JSON array, one per PR.")
@store_options
@click.pass_context
@handle_errors
def prs_show(ctx: click.Context, run_id: str, as_json: bool, **params: Any) -> None:
    """One row per repository: PR URL, state, checks, review, mergeable."""
    from ado_ray import api_forge

    rows = api_forge.pr_statuses(run_id, _sources(ctx, params))
    columns = ["repo", "url", "state", "checks", "review", "mergeable", "reason"]
    _print_rows(rows, as_json, columns)
    _exit_for(rows)


@prs.command("merge")
@click.argument("run_id")
@option(
    "--method",
    env="ADO_MERGE_METHOD",
    type=click.Choice(["merge", "squash", "rebase"]),
    default="squash",
    show_default=True,
    help="Merge method; where a repository forbids it, the next one it allows.",
)
@option(
    "--require-checks",
    is_flag=True,
    env="ADO_REQUIRE_CHECKS",
    help="Merge only PRs whose checks all passed.",
)
@option("--json", "as_json", is_flag=True, env="ADO_JSON", help="A JSON array, one per PR.")
@store_options
@click.pass_context
@handle_errors
def prs_merge(
    ctx: click.Context, run_id: str, method: str, require_checks: bool, as_json: bool, **params: Any
) -> None:
    """Merge the run's open PRs (exit 1 if any merge failed)."""
    from ado_ray import api_forge

    rows = api_forge.merge_prs(run_id, _sources(ctx, params), method, require_checks)
    _print_rows(rows, as_json, ["repo", "url", "result", "method", "reason"])
    _exit_for(rows)


@prs.command("close")
@click.argument("run_id")
@option("--comment", env="ADO_CLOSE_COMMENT", help="Comment on each PR before closing it.")
@option("--delete-branch", is_flag=True, env="ADO_DELETE_BRANCH", help="Also delete the branches.")
@option("--json", "as_json", is_flag=True, env="ADO_JSON", help="A JSON array, one per PR.")
@store_options
@click.pass_context
@handle_errors
def prs_close(
    ctx: click.Context,
    run_id: str,
    comment: str | None,
    delete_branch: bool,
    as_json: bool,
    **params: Any,
) -> None:
    """Close the run's open PRs."""
    from ado_ray import api_forge

    rows = api_forge.close_prs(run_id, _sources(ctx, params), comment, delete_branch)
    _print_rows(rows, as_json, ["repo", "url", "result", "reason"])
    _exit_for(rows)


def _repos_command(kind: str, where_options: list[Any]) -> click.Command:
    @click.pass_context
    @handle_errors
    def command(ctx: click.Context, **params: Any) -> None:
        from ado_ray import api_forge
        from ado_ray.forge.base import Discovery, RepoFilter

        where = Discovery(
            org=params.pop("org", None),
            group=params.pop("group", None),
            user=params.pop("user", None),
            search=params.pop("search", None),
            include_subgroups=params.pop("include_subgroups", False),
        )
        flt = RepoFilter(
            topics=tuple(params.pop("topics")),
            language=params.pop("language"),
            skip_archived=params.pop("skip_archived"),
            skip_forks=params.pop("skip_forks"),
            visibility=params.pop("visibility"),
        )
        as_json = params.pop("as_json")
        found = api_forge.find_repos(
            kind,
            params.pop("host"),
            where,
            flt,
            _sources(ctx, params),
            pin_default_branch=params.pop("pin_default_branch"),
            ssh=params.pop("ssh"),
        )
        if as_json:
            click.echo(json.dumps([record for _, record in found], indent=2))
        else:
            click.echo("".join(f"{line}\n" for line, _ in found), nl=False)

    common = [
        option("--host", env="ADO_FORGE_HOST", help="The forge's host[:port] in `forges:`."),
        option("--topic", "topics", multiple=True, env="ADO_TOPICS", help="Has this topic."),
        option("--language", env="ADO_LANGUAGE", help="Main language (case-insensitive)."),
        option(
            "--skip-archived", is_flag=True, env="ADO_SKIP_ARCHIVED", help="Leave out archived."
        ),
        option("--skip-forks", is_flag=True, env="ADO_SKIP_FORKS", help="Leave out forks."),
        option(
            "--visibility",
            env="ADO_VISIBILITY",
            type=click.Choice(["public", "private", "internal"]),
            help="Only this visibility.",
        ),
        option(
            "--pin-default-branch",
            is_flag=True,
            env="ADO_PIN_DEFAULT_BRANCH",
            help="Write URL@default_branch.",
        ),
        option("--ssh", is_flag=True, env="ADO_SSH", help="SSH clone URLs instead of https."),
        option("--json", "as_json", is_flag=True, env="ADO_JSON", help="Full records as JSON."),
    ]
    for decorate in reversed([*where_options, *common]):
        command = decorate(command)
    command = store_options(command)
    return click.command(kind, help=f"Print a repos.txt of {kind} repositories.")(command)


@click.group()
def repos() -> None:
    """List a forge's repositories as repos.txt lines (`ado repos github --org acme`)."""


_ORG = option("--org", env="ADO_ORG", help="An organisation's repositories.")
_USER = option("--user", env="ADO_USER", help="A user's repositories.")
_SEARCH = option("--search", env="ADO_SEARCH", help="A search query.")
repos.add_command(_repos_command("github", [_ORG, _USER, _SEARCH]))
repos.add_command(
    _repos_command(
        "gitlab",
        [
            option("--group", env="ADO_GROUP", help="A group's projects (full path)."),
            option(
                "--include-subgroups",
                is_flag=True,
                env="ADO_INCLUDE_SUBGROUPS",
                help="Also its subgroups' projects.",
            ),
            _USER,
        ],
    )
)
repos.add_command(_repos_command("gitea", [_ORG, _USER, _SEARCH]))
