"""`ado cluster ...`: render, apply, inspect and remove a cluster; or one on this machine.
`ado dashboard`: where the Ray dashboard is, and how to pass it the token."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ado_ray.cli_options import F, handle_errors, option
from ado_ray.cluster.local import LOCAL_CLUSTER_DIR, LOCAL_HEAD_DIR
from ado_ray.errors import UsageError


@click.group()
def cluster() -> None:
    """Ray on Kubernetes without KubeRay: render the manifests (see deploy/README.md)."""


@cluster.command("render")
@option(
    "--spec",
    "spec_file",
    env="ADO_CLUSTER_SPEC",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A ClusterSpec YAML file [default: the built-in spec].",
)
@option(
    "--out",
    env="ADO_CLUSTER_OUT",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where deploy/ and cluster/ are written.",
)
@option(
    "--check",
    is_flag=True,
    env="ADO_CLUSTER_CHECK",
    help="Write nothing; exit 1 if a file differs from what the spec renders.",
)
@handle_errors
def cluster_render(spec_file: Path | None, out: Path, check: bool) -> None:
    """Write the Kubernetes objects (kustomize) and the Ray autoscaler config for a spec."""
    from ado_ray.cluster.render import render, stale, write
    from ado_ray.cluster.spec import ClusterSpec, load_spec

    rendered = render(load_spec(spec_file) if spec_file else ClusterSpec())
    if check:
        differing = stale(rendered, out)
        for name in differing:
            click.echo(name)
        sys.exit(1 if differing else 0)
    for written in write(rendered, out):
        click.echo(str(written))


def cluster_options(func: F) -> F:
    options = [
        option(
            "--spec",
            "spec_file",
            env="ADO_CLUSTER_SPEC",
            type=click.Path(dir_okay=False, path_type=Path),
            help="A ClusterSpec YAML file [default: the built-in spec].",
        ),
        option(
            "--kubeconfig",
            env="KUBECONFIG",
            help="The kubeconfig [default: ~/.kube/config, or in-cluster].",
        ),
        option("--kube-context", env="ADO_KUBE_CONTEXT", help="The kubeconfig context."),
        option(
            "--api-server",
            env="ADO_KUBE_API_SERVER",
            help="An API server URL to use as is (e.g. `kubectl proxy`'s).",
        ),
    ]
    for decorate in reversed(options):
        func = decorate(func)
    return func


def _cluster(
    spec_file: Path | None, kubeconfig: str | None, kube_context: str | None, api_server: str | None
) -> tuple[Any, Any]:
    from ado_ray.cluster.node_provider import KubernetesProviderConfig
    from ado_ray.cluster.spec import ClusterSpec, load_spec

    spec = load_spec(spec_file) if spec_file else ClusterSpec()
    settings = KubernetesProviderConfig(
        namespace=spec.namespace, kubeconfig=kubeconfig, context=kube_context, api_server=api_server
    )
    return spec, settings


def local_option(func: F) -> F:
    return option(
        "--local",
        is_flag=True,
        env="ADO_CLUSTER_LOCAL",
        help="A Ray cluster on this machine that autoscales with Ray's fake multi-node "
        f"provider (kept in {LOCAL_CLUSTER_DIR}).",
    )(func)


@cluster.command("up")
@option(
    "--overlay",
    env="ADO_CLUSTER_OVERLAY",
    type=click.Choice(["prod", "dev"]),
    default="prod",
    show_default=True,
    help="dev bundles PostgreSQL and Redis.",
)
@option("--dry-run", is_flag=True, env="ADO_DRY_RUN", help="Print the objects; apply nothing.")
@option(
    "--max-workers",
    env="ADO_CLUSTER_MAX_WORKERS",
    type=click.IntRange(1, 8),
    default=2,
    show_default=True,
    help="With --local: worker nodes at most.",
)
@option(
    "--idle-minutes",
    env="ADO_CLUSTER_IDLE_MINUTES",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="With --local: idle time before a worker is removed.",
)
@local_option
@cluster_options
@handle_errors
def cluster_up(
    overlay: str, dry_run: bool, local: bool, max_workers: int, idle_minutes: float, **params: Any
) -> None:
    """Apply the cluster's objects (server-side apply, field manager `ado`), or --local."""
    import yaml

    from ado_ray.cluster import apply
    from ado_ray.cluster.node_provider import api_client_for

    if local:
        import os

        from ado_ray.cluster.dashboard import token_hint
        from ado_ray.cluster.local import start_local_cluster

        started = start_local_cluster(LOCAL_CLUSTER_DIR, max_workers, idle_minutes)
        click.echo(
            f"a local autoscaling Ray cluster runs at {started.address} "
            f"(dashboard {started.dashboard_url})"
        )
        if started.client_env.get("RAY_AUTH_MODE") == "token":
            click.echo(token_hint(os.environ))
        click.echo(
            "runners must ask for CPUs to make it grow; in ado.yaml: ray: {runner_num_cpus: 1}"
        )
        click.echo(
            f"then: ado batch repos.txt --ray-address {started.address} ...; "
            "stop it: ado cluster down --local"
        )
        return
    spec, settings = _cluster(**params)
    found = apply.overlay_objects(spec, overlay)
    if dry_run:
        click.echo(yaml.safe_dump_all(found, sort_keys=False), nl=False)
        return
    for line in apply.up(api_client_for(settings), found):
        click.echo(f"applied {line}")


@cluster.command("down")
@option(
    "--overlay",
    env="ADO_CLUSTER_OVERLAY",
    type=click.Choice(["prod", "dev"]),
    default="prod",
    show_default=True,
)
@local_option
@cluster_options
@handle_errors
def cluster_down(overlay: str, local: bool, **params: Any) -> None:
    """Delete the cluster's objects (worker pods go with the namespace), or --local."""
    from ado_ray.cluster import apply
    from ado_ray.cluster.node_provider import api_client_for

    if local:
        from ado_ray.cluster.local import stop_local_cluster

        stopped = stop_local_cluster(LOCAL_CLUSTER_DIR)
        click.echo("stopped the local cluster" if stopped else "no local cluster was running")
        return
    spec, settings = _cluster(**params)
    for line in apply.down(api_client_for(settings), apply.overlay_objects(spec, overlay)):
        click.echo(f"deleted {line}")


@cluster.command("status")
@option("--json", "as_json", is_flag=True, env="ADO_JSON", help="One JSON object.")
@local_option
@cluster_options
@handle_errors
def cluster_status(as_json: bool, local: bool, **params: Any) -> None:
    """The head's readiness and the worker pods, or the --local cluster's address."""
    from ado_ray.cluster import apply
    from ado_ray.cluster.node_provider import api_client_for

    if local:
        from ado_ray.cluster.local import LocalCluster

        found = LocalCluster.load(LOCAL_CLUSTER_DIR)
        up = found is not None and found.running
        click.echo(
            f"local cluster at {found.address}" if found and up else "no local cluster is running"
        )
        return
    spec, settings = _cluster(**params)
    seen = apply.status(api_client_for(settings), spec)
    if as_json:
        click.echo(json.dumps(seen, indent=2))
        return
    head = seen["head"]
    ready = "absent" if head is None else f"{head['ready']}/{head['wanted']} ready"
    click.echo(f"head: {ready}")
    for worker in seen["workers"]:
        click.echo(f"worker {worker['name']}: {worker['phase']}")


@click.command("dashboard")
@option(
    "--token",
    "print_token",
    is_flag=True,
    env="ADO_DASHBOARD_PRINT_TOKEN",
    help="Print the Ray token, for the dashboard's prompt, and nothing else.",
)
@option(
    "--stop",
    is_flag=True,
    env="ADO_DASHBOARD_STOP",
    help=f"Stop the local Ray instance `ado batch --keep-dashboard` kept up ({LOCAL_HEAD_DIR}).",
)
@option(
    "--dashboard-url",
    env="ADO_RAY_DASHBOARD",
    help="A cluster's dashboard, http://host:8265 [default: ray.dashboard_url, else this "
    "machine's].",
)
@option(
    "--config",
    "config_file",
    env="ADO_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file (default: ./ado.yaml if present).",
)
@option("--context", env="ADO_CONTEXT", help="Deployment context from the config, e.g. k8s.")
@click.pass_context
@handle_errors
def dashboard(ctx: click.Context, print_token: bool, stop: bool, **params: Any) -> None:
    """Print the Ray dashboard's URL (a cluster's, or this machine's) and where its token is.

    The dashboard asks for the token once: paste it into its prompt, and the browser keeps it
    as a cookie for 30 days. Exit 1 if no dashboard answers.
    """
    import os

    from ado_ray import api
    from ado_ray.cli import _sources
    from ado_ray.cluster import dashboard as dashboards
    from ado_ray.cluster.ray_auth import load_token

    if print_token:
        token = load_token(os.environ)
        if token is None:
            raise UsageError(dashboards.token_hint(os.environ))
        click.echo(token)  # asked for: the one place ado shows it
        return
    if stop:
        stopped = dashboards.stop_kept()
        click.echo(
            f"stopped the local Ray instance kept up in {LOCAL_HEAD_DIR} ({stopped.dashboard_url})"
            if stopped
            else f"no local Ray instance is kept up in {LOCAL_HEAD_DIR}"
        )
        return
    url = api.load_config(_sources(ctx, params)).ray.dashboard_url
    answered = 0
    for found in dashboards.find(url):
        answers, mode = dashboards.probe(found.url)
        if not answers:
            if not url:  # a configured one: said below
                click.echo(f"Ray dashboard: {found.url} ({found.what}) does not answer", err=True)
            continue
        answered += 1
        for line in dashboards.describe(found, mode, os.environ):
            click.echo(line)
    if not answered:
        click.echo(dashboards.none_running(url), err=True)
        sys.exit(1)
