"""`ado batch` as a Ray job on a cluster: `ray.dashboard_url` set (the `k8s` context does).

On this machine (`submit_batch`, `submit_resume`): everything is checked first, as for a local
run (the config, the repository list, the prompt; bad input exits 2 and submits nothing).
Then a small directory travels with the job as its `working_dir`:

- `repos.txt`: the resolved list, one line per repository (absolute paths for local ones);
- `prompt.txt`: the prompt, if there is one;
- `config.yaml`: the config as resolved here from the file and the context (a valid ado
  config file), and `job.json`: the command, and the environment and flag overrides.

No secret is written to those files: the store and limiter URLs, `agent.env` and the
providers' `modes[].env` values are replaced by `${ADO_JOB_SECRET_<n>}`, and the values travel
in the job's `runtime_env.env_vars`, by design: the job needs them on the cluster, and Ray keeps
a job's runtime environment readable to whoever can reach its dashboard. None of it is printed.

The entrypoint, `python -m ado_ray.cluster.jobs job.json`, runs on the cluster (`main`): with
`ray.address: auto` it joins the cluster it runs on, creates (or resumes) the run in the store
and drives it, printing `ado: run <id> started ...` first. Here, the job id is printed, the
job's logs are streamed back, and the exit code is the driver's own (0, 1, 2 or 130). Ctrl-C
detaches without stopping the job and says how to follow it: `ado status RUN` reads the
store from anywhere.

Ray's token authentication: the dashboard says whether it wants a token
(`/api/authentication_mode`, a public endpoint). If it does, the token is looked up the way
Ray itself does (`RAY_AUTH_TOKEN`, then the file named by `RAY_AUTH_TOKEN_PATH`, then
`~/.ray/auth_token`) and sent as an `Authorization: Bearer` header on this client's requests
only: it is never printed, logged, written, or put in the job's environment (the job
authenticates with the cluster's own token).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from ado_ray import api
from ado_ray.api import ConfigSources
from ado_ray.cluster.ray_auth import auth_headers, one_line, token_refused
from ado_ray.config import Config, build_config, deep_merge
from ado_ray.engine.driver import BatchResult
from ado_ray.engine.progress import LineProgress
from ado_ray.errors import AdoError, ServiceUnavailableError, UsageError, WorkspaceError
from ado_ray.repos import format_repo_line
from ado_ray.store import RunRecord

JOB_SPEC = "job.json"
JOB_CONFIG = "config.yaml"
JOB_REPOS = "repos.txt"
JOB_PROMPT = "prompt.txt"
ENTRYPOINT = f"python -m ado_ray.cluster.jobs {JOB_SPEC}"
SECRET_VAR = "ADO_JOB_SECRET_"
RUN_LINE = re.compile(r"^ado: run ([0-9a-f]{12}) started\b")
SUMMARY_PREFIX = "ado: summary "  # one line of JSON, printed by the job with --json
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DETACHED = 0, 1, 2, 130
# Ray's job client logs request bodies (the runtime env, secrets included) at DEBUG, and
# each upload and websocket close at INFO: only its warnings are shown.
_QUIET_LOGGERS = (
    "ray.dashboard.modules.dashboard_sdk",
    "ray.dashboard.modules.job.sdk",
    "ray._private.runtime_env.packaging",
)


def job_mode(sources: ConfigSources) -> bool:
    """True when the resolved config names a Ray dashboard: `ado batch` runs as a Ray job."""
    return api.load_config(sources).ray.dashboard_url is not None


# --- this machine: check, package, submit, follow ------------------------------------------


def submit_batch(
    repo_list: Path,
    sources: ConfigSources,
    *,
    as_json: bool = False,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """Check everything here, submit `ado batch` as a Ray job, follow it; the exit code."""
    config = _job_config(sources)
    repos, prompt = api.plan(repo_list, config)
    if config.branch:
        from ado_ray.engine.workspace import validate_branch_name

        try:
            validate_branch_name(config.branch)
        except WorkspaceError as exc:
            raise UsageError(str(exc)) from exc
    files = {JOB_REPOS: "".join(f"{format_repo_line(repo)}\n" for repo in repos)}
    if prompt is not None:
        files[JOB_PROMPT] = prompt
    job = {"command": "batch", "repo_list": JOB_REPOS, "source": str(repo_list), "json": as_json}
    local = sum(1 for repo in repos if repo.url.startswith("/"))
    notes = []
    if local:
        notes.append(
            f"note: {local} of {len(repos)} repositories are local paths; the cluster's nodes "
            "must see them at the same paths"
        )
    jobs_overrides = {
        "agent": {"prompt": None, "prompt_file": JOB_PROMPT if prompt is not None else None}
    }
    return _submit_and_follow(
        config, sources, job, files, jobs_overrides, as_json, out, err, notes=notes
    )


def submit_resume(
    run_id: str,
    sources: ConfigSources,
    retry_failed: bool = False,
    *,
    as_json: bool = False,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """`ado batch --resume RUN_ID` as a Ray job: the run keeps its stored settings."""
    config = _job_config(sources)
    job = {"command": "resume", "run_id": run_id, "retry_failed": retry_failed, "json": as_json}
    return _submit_and_follow(config, sources, job, {}, {}, as_json, out, err, run_id=run_id)


def _job_config(sources: ConfigSources) -> Config:
    config = api.load_config(sources)
    if config.ray.dashboard_url is None:
        raise UsageError("no Ray dashboard configured; expected ray.dashboard_url")
    if "://" not in config.state or config.state.startswith("sqlite:"):
        raise UsageError(
            f"state {config.state!r} is a SQLite file, which a Ray job on the cluster cannot "
            "share with you; expected a store URL both can reach (--state postgresql://...)"
        )
    return config


@dataclass
class Package:
    """What travels with the job: files for its working_dir, and its env_vars."""

    files: dict[str, str]
    env_vars: dict[str, str] = field(default_factory=dict)  # secrets only


def build_package(
    sources: ConfigSources,
    job: Mapping[str, Any],
    files: Mapping[str, str],
    job_overrides: Mapping[str, Any],
) -> Package:
    """The job's files, with every secret replaced by a `${ADO_JOB_SECRET_<n>}` reference.

    `config.yaml` holds the file and the context as resolved here (the cluster need not have
    either); `job.json` the environment and flag overrides, which stay above a resumed run's
    stored settings, as they do locally. `ray.address: auto` makes the job join the cluster
    it runs on, and no dashboard URL keeps it from submitting itself again.
    """
    secrets: dict[str, str] = {}
    base = build_config(sources.config_file, {}, context=sources.context).model_dump(mode="json")
    overrides = json.loads(json.dumps(dict(sources.overrides), default=str))
    overrides = deep_merge(
        overrides, {"ray": {"address": "auto", "dashboard_url": None}, **job_overrides}
    )
    config_text = (
        "# generated by `ado batch` for a Ray job; secrets are ${ADO_JOB_SECRET_<n>} references\n"
        + yaml.safe_dump(_hide_secrets(base, secrets, interpolated=True), sort_keys=False)
    )
    spec = {**job, "config": JOB_CONFIG, "overrides": _hide_secrets(overrides, secrets)}
    return Package(
        {**files, JOB_CONFIG: config_text, JOB_SPEC: json.dumps(spec, indent=2)},
        {f"{SECRET_VAR}{index}": value for index, value in enumerate(secrets.values())},
    )


def _is_secret(path: tuple[str, ...]) -> bool:
    if path in {("state",), ("limiter", "url")}:
        return True
    if len(path) == 3 and path[:2] == ("agent", "env"):
        return True
    return len(path) == 6 and path[0] == "providers" and path[2:5:2] == ("modes", "env")


def _hide_secrets(
    value: Any, secrets: dict[str, str], path: tuple[str, ...] = (), interpolated: bool = False
) -> Any:
    """`value` with each secret string replaced by a reference to its env var.

    In the config file (`interpolated`), any string holding `${` goes the same way: the
    file is interpolated again on the cluster, and a substituted value is not.
    """
    if isinstance(value, dict):
        return {
            key: _hide_secrets(item, secrets, (*path, str(key)), interpolated)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _hide_secrets(item, secrets, (*path, str(index)), interpolated)
            for index, item in enumerate(value)
        ]
    if isinstance(value, str) and (_is_secret(path) or (interpolated and "${" in value)):
        reference = "${" + f"{SECRET_VAR}{len(secrets)}" + "}"
        secrets[reference] = value
        return reference
    return value


def _restore_secrets(value: Any, env: Mapping[str, str]) -> Any:
    """The inverse of `_hide_secrets` for `job.json` (the config file is interpolated)."""
    if isinstance(value, dict):
        return {key: _restore_secrets(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_restore_secrets(item, env) for item in value]
    if isinstance(value, str):
        match = re.fullmatch(r"\$\{(" + SECRET_VAR + r"\d+)\}", value)
        if match:
            if match.group(1) not in env:
                raise UsageError(f"{match.group(1)} is missing from the job's environment")
            return env[match.group(1)]
    return value


@dataclass
class Follow:
    """What the job's log stream told us."""

    run_id: str | None = None
    summary: dict[str, Any] | None = None
    partial: str = ""


def _submit_and_follow(
    config: Config,
    sources: ConfigSources,
    job: Mapping[str, Any],
    files: Mapping[str, str],
    job_overrides: Mapping[str, Any],
    as_json: bool,
    out: IO[str] | None,
    err: IO[str] | None,
    run_id: str | None = None,
    notes: list[str] | None = None,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    log = err if as_json else out  # with --json, stdout carries only the final object
    url = config.ray.dashboard_url
    assert url is not None
    package = build_package(sources, job, files, job_overrides)
    client = connect(url)
    job_id = _submit(client, url, package, job)
    print(f"Ray job {job_id} submitted to {url}", file=log, flush=True)
    for note in notes or []:
        print(note, file=err, flush=True)
    follow = Follow(run_id=run_id)
    hint = _Hint(url, job_id, sources.context)
    try:
        asyncio.run(_stream(client, job_id, follow, log, as_json))
        status, code, message = _final_status(client, job_id)
    except KeyboardInterrupt:
        print(hint.detached(follow.run_id), file=err, flush=True)
        return EXIT_DETACHED
    except Exception as exc:  # the stream or the dashboard went away; the job may still run
        print(f"lost the Ray job's log stream ({one_line(exc)})", file=err)
        print(hint.detached(follow.run_id), file=err, flush=True)
        return EXIT_FAILED
    if message and code != EXIT_OK:
        print(f"Ray job {job_id}: {message}", file=err)
    if follow.run_id is None and code != EXIT_OK:
        print("the job ended before it started a run; nothing was changed", file=err)
    print(f"Ray job {job_id}: {status}", file=log, flush=True)
    if as_json:
        data = dict(follow.summary or {"run_id": follow.run_id})
        data.update({"job_id": job_id, "job_status": status, "exit_code": code})
        print(json.dumps(data, indent=2), file=out, flush=True)
    return code


def connect(url: str, env: Mapping[str, str] | None = None) -> Any:
    """A `JobSubmissionClient` for the dashboard at `url`, with the token if it wants one."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    headers = auth_headers(url, os.environ if env is None else env)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with _without_env("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):  # they would win over url
            return JobSubmissionClient(url, headers=headers)
    except AuthenticationError as exc:
        raise UsageError(token_refused(url, exc)) from None
    except (ConnectionError, RuntimeError, OSError) as exc:
        raise ServiceUnavailableError(
            f"the Ray dashboard at {url} did not answer ({one_line(exc)}); nothing was "
            "submitted (is `kubectl port-forward` running?)"
        ) from None


def _submit(client: Any, url: str, package: Package, job: Mapping[str, Any]) -> str:
    from ray.exceptions import AuthenticationError

    with tempfile.TemporaryDirectory(prefix="ado-job-") as tmp:
        for name, text in package.files.items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        try:
            job_id: str = client.submit_job(
                entrypoint=ENTRYPOINT,
                # The secrets travel to the cluster here, by design (see the module's doc).
                runtime_env={"working_dir": tmp, "env_vars": dict(package.env_vars)},
                metadata={"ado": str(job["command"]), "ado_source": str(job.get("source", ""))},
            )
        except AuthenticationError as exc:
            raise UsageError(token_refused(url, exc)) from None
        except (ConnectionError, RuntimeError, OSError) as exc:
            raise ServiceUnavailableError(
                f"the Ray dashboard at {url} refused the job ({one_line(exc)}); nothing was "
                "submitted"
            ) from None
    return job_id


async def _stream(client: Any, job_id: str, follow: Follow, log: IO[str], as_json: bool) -> None:
    """Echo the job's log lines as they come; note the run id and the summary."""
    async for chunk in client.tail_job_logs(job_id):
        *lines, follow.partial = (follow.partial + chunk).split("\n")
        for line in lines:
            _line(line, follow, log, as_json)
    if follow.partial:
        _line(follow.partial, follow, log, as_json)
        follow.partial = ""


def _line(line: str, follow: Follow, log: IO[str], as_json: bool) -> None:
    if line.startswith(SUMMARY_PREFIX):
        with contextlib.suppress(ValueError):
            follow.summary = json.loads(line[len(SUMMARY_PREFIX) :])
            return
    match = RUN_LINE.match(line)
    if match:
        follow.run_id = match.group(1)
    print(line, file=log, flush=True)


def _final_status(client: Any, job_id: str, timeout_s: float = 30.0) -> tuple[str, int, str]:
    """(status, exit code, message) once the job is terminal; the code is the driver's."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(job_id)
        if info.status.is_terminal() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    status = str(info.status.value if hasattr(info.status, "value") else info.status)
    fallback = {"SUCCEEDED": EXIT_OK, "STOPPED": EXIT_DETACHED}.get(status, EXIT_FAILED)
    code = getattr(info, "driver_exit_code", None)
    if code is not None and int(code) >= 0:
        return status, int(code), ""  # the driver's own code; its logs said why
    # no driver exit code: the job failed around the driver (say, its runtime env), or a
    # signal ended it; Ray's message says what happened
    return status, fallback, str(info.message or "")


@dataclass
class _Hint:
    url: str
    job_id: str
    context: str | None

    def detached(self, run_id: str | None) -> str:
        context = f" --context {self.context}" if self.context else ""
        follow = (
            f"  progress: ado{context} status {run_id}\n"
            if run_id
            else f"  the run id will be in its logs; then: ado{context} status RUN_ID\n"
        )
        return (
            f"detached: Ray job {self.job_id} keeps running on the cluster\n"
            + follow
            + f"  logs:     ray job logs --address {self.url} --follow {self.job_id}\n"
            + f"  stop:     ray job stop --address {self.url} {self.job_id}"
            + " (the run stays resumable)"
        )


@contextlib.contextmanager
def _without_env(*names: str) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


# --- on the cluster: the job's entrypoint --------------------------------------------------


class JobProgress(LineProgress):
    """Plain lines, and first `ado: run <id> started ...`, which the submitter looks for."""

    announced = False

    def start(self, run: RunRecord) -> None:
        super().start(run)
        if not self.announced:
            self.announced = True
            self._print(
                f"ado: run {run.run_id} started on {socket.gethostname()} "
                f"({run.name}, branch {run.branch}, {self.total} repositories)"
            )


def run_job(spec_path: Path, env: Mapping[str, str] | None = None) -> int:
    """Run the job described by `job.json` (in the job's working directory); the exit code."""
    env = os.environ if env is None else env
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    as_json = bool(spec.get("json"))
    stream = sys.stderr if as_json else sys.stdout
    try:
        overrides = _restore_secrets(spec.get("overrides") or {}, env)
        sources = ConfigSources(spec_path.parent / spec["config"], overrides, None)
        work_root = api.load_config(sources).work_root
        if not work_root.is_absolute():
            # Not under the job's working_dir, which is new for every job (a resume would
            # not find the workspaces) and which Ray may delete: under the home directory.
            overrides = deep_merge(overrides, {"work_root": str(Path.home() / work_root)})
            sources = ConfigSources(sources.config_file, overrides, None)
        progress = JobProgress(stream)
        if spec["command"] == "batch":
            config = api.load_config(sources)
            repos, prompt = api.plan(spec_path.parent / spec["repo_list"], config)
            api.check_services(config)
            result = api.start_planned(config, repos, spec["source"], prompt, progress)
        elif spec["command"] == "resume":
            result = api.resume(
                spec["run_id"], sources, bool(spec.get("retry_failed")), stream, progress
            )
        else:
            raise UsageError(f"{spec_path}: unknown command {spec['command']!r}")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except AdoError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    _report(result, as_json)
    return result.exit_code


def _report(result: BatchResult, as_json: bool) -> None:
    if as_json:
        print(SUMMARY_PREFIX + json.dumps(result.summary), flush=True)
        return
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    print(f"run {result.run.run_id} ({result.run.name}): {counts}")
    if result.interrupted:
        print(f"interrupted; continue with: ado resume {result.run.run_id}")
    print(f"report: ado report {result.run.run_id}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return run_job(Path(args[0] if args else JOB_SPEC).resolve())


if __name__ == "__main__":
    sys.exit(main())
