"""`ado diff RUN_ID [REPO]`: a run's commits as patches, from the bundles in the store.

Each commit is kept in the store as a git bundle whose prerequisite is the task's base
commit (`engine/workspace.py` `create_bundle`), so a diff needs the base's objects and the
bundle, not the workspace or the node that ran the task: a temporary bare repository
borrows them from a clone-cache mirror here, or fetches the base from the repository
itself (only that commit, where the server allows it), then takes the bundle. A commit
over `publish.bundle_max_mb` has no bundle: its workspace is used where it is still here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ado_ray import api
from ado_ray.api import ConfigSources
from ado_ray.config import Config
from ado_ray.engine import workspace as ws
from ado_ray.engine.publish import repo_host
from ado_ray.errors import WorkspaceError
from ado_ray.forge.http import GIT_USERNAMES
from ado_ray.models import Step
from ado_ray.store import Store, TaskRecord
from ado_ray.views import find_task

COMMIT_REF = "refs/ado/commit"


class Unavailable(Exception):
    """The commit cannot be shown here; the message says why."""


def show(
    run_id: str,
    repo: str | None,
    sources: ConfigSources,
    out: IO[str],
    note: Callable[[str], None],
    stat: bool = False,
    color: bool = False,
) -> int:
    """Write each commit of the run (or of `repo`) to `out` under a header line naming its
    repository; `note` gets the tasks without a commit, and the commits that cannot be
    shown. 1 if one could not be, else 0."""
    config = api.load_config(sources)
    with api.run_store(config, run_id) as store:
        run = store.get_run(run_id)
        tasks = store.list_tasks(run.run_id)
        chosen = [find_task(run, tasks, repo)] if repo is not None else tasks
        code = 0
        for task in chosen:
            if not task.commit_sha:
                why = f": {task.error}" if task.error else ""
                note(f"{task.repo.name}: no commit ({task.state.value}{why})")
                continue
            try:
                text = commit_diff(store, config, task, stat, color)
            except Unavailable as exc:
                note(f"{task.repo.name}: {exc}")
                code = 1
                continue
            out.write(header(task) + text)
            out.flush()
        return code


def header(task: TaskRecord) -> str:
    """`# billing /src/billing ado/fix 0a1b2c3d4e..3f2a1bc0d4`: a line git apply skips."""
    base = (task.base_sha or "?")[:10]
    return (
        f"# {task.repo.name} {task.repo.url} {task.branch} {base}..{(task.commit_sha or '')[:10]}\n"
    )


def commit_diff(store: Store, config: Config, task: TaskRecord, stat: bool, color: bool) -> str:
    """The task's commit against its base: the patch, or with `stat` git's --stat."""
    commit = task.commit_sha
    assert commit is not None
    base = task.base_sha or (store.checkpoints(task.task_id).get(Step.PREPARED) or {}).get(
        "base_sha"
    )
    if not base:
        raise Unavailable(f"commit {commit[:12]} has no base commit in the store")
    problems = []
    stored = store.bundle(task.task_id)
    if stored is not None and stored[0] == commit:
        try:
            return _bundle_diff(config, task, base, stored[1], stat, color)
        except (Unavailable, WorkspaceError) as exc:
            problems.append(f"from the stored bundle: {exc}")
    else:
        size = (store.checkpoints(task.task_id).get(Step.COMMITTED) or {}).get("bundle_bytes")
        problems.append(
            "the store holds no bundle of it"
            + ("" if size else " (it was over publish.bundle_max_mb)")
        )
    checkout = Path(task.workspace) / "repo" if task.workspace else None
    if checkout is not None and checkout.is_dir() and ws.has_commit(checkout, commit):
        with tempfile.TemporaryDirectory(prefix="ado-diff-") as tmp:
            try:
                return _diff(checkout, base, commit, stat, color, Path(tmp) / "out")
            except WorkspaceError as exc:
                problems.append(f"in the workspace {checkout}: {exc}")
    else:
        problems.append(f"its workspace {checkout or '(none recorded)'} is not on this machine")
    raise Unavailable(
        f"commit {commit[:12]} cannot be shown here: {'; '.join(problems)}; look at branch "
        f"{task.branch} where it was pushed, or run `ado diff` on the node that ran it"
    )


def _bundle_diff(
    config: Config, task: TaskRecord, base: str, bundle: bytes, stat: bool, color: bool
) -> str:
    """The diff of the bundle's commit, in a temporary bare repository."""
    commit = task.commit_sha
    assert commit is not None
    with tempfile.TemporaryDirectory(prefix="ado-diff-") as tmp:
        repo = Path(tmp) / "repo.git"
        ws.git(["init", "--bare", "--quiet", str(repo)], Path(tmp))
        _take_base(repo, config, task, base)
        path = Path(tmp) / "commit.bundle"
        path.write_bytes(bundle)
        ws.git(["fetch", "--quiet", "--no-tags", str(path), f"{ws.BUNDLE_REF}:{COMMIT_REF}"], repo)
        return _diff(repo, base, commit, stat, color, Path(tmp) / "out")


def _take_base(repo: Path, config: Config, task: TaskRecord, base: str) -> None:
    """Make the base commit's objects available in `repo`: borrowed from a clone-cache
    mirror here, else fetched from the repository (only that commit if the server lets
    us, else its branches and tags)."""
    roots = [config.work_root.resolve()]
    parents = Path(task.workspace).parents if task.workspace else []
    if len(parents) > 2:  # <work_root>/runs/<run>/<task>
        roots.insert(0, parents[2])
    for root in roots:
        mirror = ws.mirror_path(root / "cache", task.repo.url)
        if mirror.is_dir() and ws.has_commit(mirror, base):
            alternates = repo / "objects" / "info" / "alternates"
            alternates.write_text(f"{mirror / 'objects'}\n", encoding="utf-8")
            return
    url, env = task.repo.url, _git_env(config, task)
    timeout = ws.NETWORK_TIMEOUT_S
    try:
        ws.git(
            ["fetch", "--quiet", "--no-tags", "--depth", "1", "--", url, base],
            repo,
            env=env,
            timeout=timeout,
        )
    except WorkspaceError:  # a server that will not serve a commit by its id
        refs = ["+refs/heads/*:refs/source/heads/*", "+refs/tags/*:refs/source/tags/*"]
        ws.git(["fetch", "--quiet", "--no-tags", "--", url, *refs], repo, env=env, timeout=timeout)
    if not ws.has_commit(repo, base):
        raise Unavailable(
            f"the base commit {base[:12]} is no longer in {url} (and no clone-cache mirror "
            "here has it), so the stored commit cannot be unpacked"
        )


def _git_env(config: Config, task: TaskRecord) -> dict[str, str]:
    """The forge token of the repository's host, for git (as the runners use it)."""
    host = repo_host(task.repo)
    forge = config.forges.get(host) if host else None
    token = forge.token() if forge else None
    if forge is None or token is None:
        return {}
    return ws.auth_env(task.repo.url, GIT_USERNAMES[forge.type], token.get_secret_value())


def _diff(repo: Path, base: str, commit: str, stat: bool, color: bool, output: Path) -> str:
    form = "--stat" if stat else "--patch"
    colors = "--color=always" if color else "--no-color"
    args = ["diff", colors, "--no-ext-diff", "--find-renames", form, f"--output={output}"]
    ws.git([*args, base, commit, "--"], repo)
    return output.read_text(encoding="utf-8", errors="replace")
