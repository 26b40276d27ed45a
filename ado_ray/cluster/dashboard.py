"""The Ray dashboard of a run: where it is, what to tell the user about it, keeping one up.

Ray 2.60 turns token authentication on for a cluster it starts, and its dashboard opens on
an "Authentication Token Required" prompt. The token pasted there goes to
`POST /api/authenticate` (as `Authorization: Bearer …`), which answers with an HttpOnly
cookie, `ray-authentication-token`, kept 30 days for the host (every port of 127.0.0.1
alike: one paste serves each local instance that uses the same token). The dashboard takes
no token in its URL. So ado prints the URL and where the token lives (`token_hint`), never
the token; `ado dashboard --token` prints it when asked.

Where a dashboard is found (`find`): the cluster's `ray.dashboard_url` if one is configured;
else on this machine, relative to the working directory: the one a running
`ado batch --dashboard` noted (`.ado/ray/run-dashboard.json`, `note_run`), the instance
`--keep-dashboard` keeps (`.ado/ray`, `keep_local_head`), and the `ado cluster up --local`
cluster (`.ado/cluster`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ado_ray.cluster.local import (
    LOCAL_CLUSTER_DIR,
    LOCAL_HEAD_DIR,
    LocalCluster,
    process_alive,
    start_local_head,
    stop_local_cluster,
)
from ado_ray.cluster.ray_auth import auth_mode, token_source
from ado_ray.errors import ServiceUnavailableError

RUN_FILE = "run-dashboard.json"
STOP_KEPT = "ado dashboard --stop"
PORT_FORWARD = "kubectl -n ado port-forward svc/ado-ray-head 8265:8265"


@dataclass(frozen=True)
class Dashboard:
    url: str
    what: str  # whose it is, for the first line
    stop: str | None = None  # how to end it, for one that outlives a run
    logs: Path | None = None  # Ray's session logs, for a local instance


def token_hint(env: Mapping[str, str]) -> str:
    """Where the token is, and how to get it into the browser; never the token itself."""
    source = token_source(env)
    if source is None:
        return (
            "token: none found here (expected RAY_AUTH_TOKEN, a file named by "
            "RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token; `ray get-auth-token` on the head)"
        )
    return (
        f"token: in {source}; paste it into the dashboard's prompt once "
        "(`ado dashboard --token` prints it)"
    )


def describe(dashboard: Dashboard, mode: str | None, env: Mapping[str, str]) -> list[str]:
    """The lines that tell the user about `dashboard`, whose authentication mode is `mode`."""
    lines = [f"Ray dashboard: {dashboard.url} ({dashboard.what})"]
    if mode not in (None, "disabled"):
        lines.append(token_hint(env))
    if dashboard.logs is not None:
        lines.append(f"Ray logs: {dashboard.logs}")
    if dashboard.stop:
        lines.append(f"it stays up after runs; stop it: {dashboard.stop}")
    return lines


def run_notes(url: str, kept: LocalCluster | None = None, started: bool = False) -> list[str]:
    """What `ado batch` says about the dashboard at `url`: its own instance's, or that of
    the instance `kept` up (`started` by this run, or joined)."""
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if kept is None:
        what = "this run's local Ray: it closes when the run ends; --keep-dashboard keeps it"
        return describe(Dashboard(url, what), mode, os.environ)
    what = "local Ray kept up, started now" if started else "local Ray kept up, joined"
    kept_up = Dashboard(url, what, STOP_KEPT, kept.logs_dir)
    return describe(kept_up, kept.client_env.get("RAY_AUTH_MODE", mode), os.environ)


def note_run(url: str, workdir: Path = LOCAL_HEAD_DIR) -> None:
    """Note the dashboard of the local instance this process started, for `ado dashboard`
    in another terminal; a directory that cannot be written just goes without."""
    with contextlib.suppress(OSError):
        workdir.mkdir(parents=True, exist_ok=True)
        data = {"url": url, "pid": os.getpid()}
        (workdir / RUN_FILE).write_text(json.dumps(data), encoding="utf-8")


def keep_local_head(
    num_cpus: int | None, workdir: Path = LOCAL_HEAD_DIR
) -> tuple[LocalCluster, bool]:
    """The local instance `--keep-dashboard` runs on, started if none runs; True if started."""
    found = LocalCluster.load(workdir.resolve())
    if found is not None:
        return found, False
    return start_local_head(workdir, num_cpus), True


def stop_kept(workdir: Path = LOCAL_HEAD_DIR) -> LocalCluster | None:
    """Stop the kept local instance; the one stopped, or None if none was running."""
    found = LocalCluster.load(workdir.resolve())
    return found if found is not None and stop_local_cluster(workdir) else None


def find(dashboard_url: str | None, cwd: Path | None = None) -> list[Dashboard]:
    """The configured cluster's dashboard, or every local one noted under `cwd`/.ado."""
    if dashboard_url:
        return [Dashboard(dashboard_url, "the cluster's, ray.dashboard_url")]
    cwd = cwd or Path.cwd()
    found = []
    noted = _noted_run(cwd / LOCAL_HEAD_DIR / RUN_FILE)
    if noted is not None:
        found.append(Dashboard(noted, "a running ado batch --dashboard"))
    kept = LocalCluster.load(cwd / LOCAL_HEAD_DIR)
    if kept is not None:
        found.append(Dashboard(kept.dashboard_url, "local Ray kept up", STOP_KEPT, kept.logs_dir))
    local = LocalCluster.load(cwd / LOCAL_CLUSTER_DIR)
    if local is not None:
        stop = "ado cluster down --local"
        found.append(Dashboard(local.dashboard_url, "local cluster", stop, local.logs_dir))
    return found


def probe(url: str) -> tuple[bool, str | None]:
    """(answers, authentication mode) of the dashboard at `url`."""
    try:
        return True, auth_mode(url)
    except ServiceUnavailableError:
        return False, None


def none_running(dashboard_url: str | None) -> str:
    if dashboard_url:
        return (
            f"the Ray dashboard at {dashboard_url} (ray.dashboard_url) does not answer; on "
            f"Kubernetes, is `{PORT_FORWARD}` running?"
        )
    return (
        "no Ray dashboard is running from this directory. `ado batch ... --dashboard` shows "
        "one during the run, `--keep-dashboard` keeps it up afterwards; a cluster's: "
        f"`{PORT_FORWARD}`, then `ado dashboard --dashboard-url http://127.0.0.1:8265`"
    )


def _noted_run(path: Path) -> str | None:
    """The URL a live `ado batch --dashboard` noted; a note of a process gone is removed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        url, pid = str(data["url"]), int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if process_alive(pid):
        return url
    path.unlink(missing_ok=True)
    return None
