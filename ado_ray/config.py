"""Configuration: pydantic models, the YAML file, `${ENV}` interpolation and flag overrides.

Precedence, lowest first: built-in defaults < YAML file (`ado.yaml` in the working directory,
or `--config`) < the selected context < `ADO_*` environment variables < command-line flags.
The CLI turns the last two into a nested dict of overrides (`build_config(..., overrides=)`);
everything is validated once, here. This is the only module that reads the environment for
settings.

A context is a named overlay of config keys, chosen with `--context NAME` / `ADO_CONTEXT`.
Two are built in (`local`, `kubernetes` alias `k8s`); a file's `contexts:` may redefine
them or add more.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ado_ray.config_errors import did_you_mean, format_validation_error, key_lines
from ado_ray.errors import ConfigError
from ado_ray.forge.config import BUILTIN_FORGES, ForgeSettings, PublishSettings, check_hosts
from ado_ray.limits.config import LimiterSettings, LimitTable
from ado_ray.redact import mask_url

DEFAULT_CONFIG_FILE = "ado.yaml"
BUILTIN_CONTEXTS: dict[str, dict[str, Any]] = {
    "local": {},  # the embedded defaults: SQLite in .ado/, in-memory limits, local Ray
    "kubernetes": {
        "state": "${ADO_STATE_URL}",
        "limiter": {"backend": "redis", "url": "${ADO_REDIS_URL}"},
        "ray": {
            "address": "${ADO_RAY_ADDRESS:-auto}",
            # a runner asks for a CPU: pending runners are what makes the autoscaler add pods
            "runner_num_cpus": 1,
            # e.g. after `kubectl port-forward svc/<head> 8265`: `ado batch` runs as a Ray job
            "dashboard_url": "${ADO_RAY_DASHBOARD:-http://127.0.0.1:8265}",
        },
    },
}
CONTEXT_ALIASES = {"k8s": "kubernetes"}
DEFAULT_ENV_ALLOW = ["PATH", "LANG", "LC_*", "TZ", "TERM", "TMPDIR", "USER", "LOGNAME"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSettings(_Model):
    """How the agent runs in each repository."""

    name: str = "command"
    cmd: str | None = None  # the `command` agent's argv template (shlex-split, never a shell)
    prompt: str | None = None
    prompt_file: Path | None = None
    env_allow: list[str] = Field(default_factory=lambda: list(DEFAULT_ENV_ALLOW))
    env: dict[str, str] = Field(default_factory=dict)  # fixed extra variables for the agent
    timeout_s: float = Field(default=1800.0, gt=0)
    stall_timeout_s: float | None = Field(default=600.0, gt=0)
    kill_grace_s: float = Field(default=10.0, ge=0)
    # auto: a PID namespace with its own /proc where the host allows one (else a warning);
    # pid: one, or the task fails; none: no sandbox (see engine/sandbox.py)
    sandbox: Literal["auto", "pid", "none"] = "auto"
    log_cap_mb: float | None = Field(default=10.0, gt=0)  # per log file and attempt; None: all
    # An interrupted agent's session files (its transcript), kept in the store up to this
    # (packed) so that a resume on any node continues the session; 0: never kept.
    session_state_max_mb: float = Field(default=20.0, ge=0)


_SLUG = r"[a-z0-9][a-z0-9_-]{0,31}"


class ModeSettings(_Model):
    """One access mode of a provider (a subscription, an API key, a gateway)."""

    name: str = Field(pattern=_SLUG)
    priority: int = 1  # lower runs first, across every provider
    env: dict[str, str] = Field(default_factory=dict)  # secrets: masked wherever shown
    base_url: str | None = None  # the CLI's endpoint in this mode
    model: str | None = None  # overrides the provider's model


class ProviderSettings(_Model):
    """A provider: one adapter and its access modes. Its limit keys are `<provider>:<mode>`."""

    agent: str  # the adapter (see ado_ray/agents: claude, codex, gemini, command)
    model: str | None = None
    max_turns: int | None = Field(default=None, ge=1)
    cmd: str | None = None  # the CLI's executable (default: the adapter's name on PATH)
    modes: list[ModeSettings] = Field(default_factory=lambda: [ModeSettings(name="default")])


class Price(_Model):
    """US dollars per million tokens, for a model whose CLI reports no cost."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache: float = Field(default=0.0, ge=0)


class GitSettings(_Model):
    author_name: str = "ado-ray"
    author_email: str = "ado-ray@localhost"
    message: str = "{run_name}: agent changes in {repo_name}"
    max_file_mb: float | None = Field(default=10.0, gt=0)  # per added or changed file; None: any

    def identity_env(self) -> dict[str, str]:
        """The run's git identity as git's variables: agents that commit need one (their
        commits are squashed into the runner's one anyway)."""
        env = {f"GIT_{who}_NAME": self.author_name for who in ("AUTHOR", "COMMITTER")}
        return env | {f"GIT_{who}_EMAIL": self.author_email for who in ("AUTHOR", "COMMITTER")}


class RaySettings(_Model):
    address: str | None = None  # None: start (or join) a local Ray instance
    namespace: str = "ado"
    num_cpus: int | None = None  # only for a local instance
    dashboard: bool = False  # only for a local instance: start the Ray dashboard too
    # Run on a local instance that outlives the run (started if none runs, in .ado/ray), so
    # its dashboard's timeline and logs stay to look at; `ado dashboard --stop` ends it.
    keep_dashboard: bool = False
    slots_per_runner: int = Field(default=25, ge=1)  # agents one runner actor supervises
    runner_num_cpus: float = Field(default=0.0, ge=0)
    # A cluster's Ray dashboard (http://host:8265): `ado batch` then submits itself there as a
    # Ray job (ado_ray/cluster/jobs.py) instead of driving the run from this machine.
    dashboard_url: str | None = None

    @field_validator("dashboard_url")
    @classmethod
    def _dashboard_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # an empty `${ADO_RAY_DASHBOARD:-}` turns job submission off
        value = value.strip().rstrip("/")
        if not re.match(r"https?://[^/\s]+", value):
            raise ValueError(
                f"'{value}' is not a Ray dashboard URL; expected http(s)://host:port, "
                "e.g. http://127.0.0.1:8265"
            )
        if "@" in value.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(
                "a user or password in the Ray dashboard URL is refused (it would be shown "
                "and stored); the Ray token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                "~/.ray/auth_token"
            )
        return value

    @model_validator(mode="after")
    def _keep_dashboard(self) -> RaySettings:
        if self.keep_dashboard and self.address:
            raise ValueError(
                f"ray.keep_dashboard keeps a local Ray instance up, and ray.address is "
                f"'{self.address}'; expected one of them (a cluster's dashboard stays up "
                "anyway: `ado dashboard` shows it)"
            )
        return self


class Config(_Model):
    state: str = ".ado/state.db"  # a SQLite path, or a store URL
    work_root: Path = Path(".ado/work")
    parallel: int = Field(default=4, ge=1, le=10_000)
    name: str | None = None
    branch: str | None = None
    dry_run: bool = False
    keep_workspaces: bool = False  # keep every finished task's checkout and agent home
    no_ray: bool = False
    max_attempts: int = Field(default=2, ge=1)  # for retryable failure classes
    interrupt_grace_s: float = Field(default=20.0, ge=0)
    store_outage_limit_s: float = Field(default=300.0, gt=0)  # then the run stops, resumable
    # the run's lease: renewed every third of this; a driver that cannot renew it in time stops
    lease_ttl_s: float = Field(default=30.0, ge=1)
    limit_wait_timeout_s: float | None = Field(default=None, gt=0)  # None: wait for limits
    agent: AgentSettings = Field(default_factory=AgentSettings)
    git: GitSettings = Field(default_factory=GitSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    limiter: LimiterSettings = Field(default_factory=LimiterSettings)
    limits: LimitTable = Field(default_factory=dict)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    prices: dict[str, Price] = Field(default_factory=dict)  # model name -> price
    fallback: bool = True  # on a limit, move to the next mode (False: wait for the reset)
    max_cost_usd: float | None = Field(default=None, gt=0)  # per run, across the cluster
    max_cost_per_task_usd: float | None = Field(default=None, gt=0)
    forges: dict[str, ForgeSettings] = Field(default_factory=lambda: dict(BUILTIN_FORGES))
    publish: PublishSettings = Field(default_factory=PublishSettings)

    @field_validator("forges")
    @classmethod
    def _forge_hosts(cls, value: dict[str, ForgeSettings]) -> dict[str, ForgeSettings]:
        return check_hosts(value)

    @field_validator("providers")
    @classmethod
    def _provider_names(cls, value: dict[str, ProviderSettings]) -> dict[str, ProviderSettings]:
        for name, provider in value.items():
            if not re.fullmatch(_SLUG, name):
                raise ValueError(f"'{name}' is not a provider name; expected {_SLUG}")
            names = [mode.name for mode in provider.modes]
            if len(set(names)) != len(names):
                raise ValueError(f"{name}: two modes share a name: {names}")
        return value

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
            raise ValueError(
                f"'{value}' is not a run name; expected letters, digits, '.', '_' or '-' "
                "(at most 64, starting with a letter or digit)"
            )
        return value

    def masked(self) -> dict[str, Any]:
        """The config as stored with a run and shown to users: no secret values.

        Secrets are referenced by the name of an environment variable; `agent.env`
        values are the only literal values a user may put here, so they are masked.
        """
        data = self.model_dump(mode="json")
        data["agent"]["env"] = {key: "***" for key in data["agent"]["env"]}
        for provider in data["providers"].values():
            for mode in provider["modes"]:
                mode["env"] = {key: "***" for key in mode["env"]}
        data["state"] = mask_url(self.state)
        if self.limiter.url:
            data["limiter"]["url"] = mask_url(self.limiter.url)
        return data


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of a YAML document."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{where or 'config'}: ${{{name}}} is not set; expected the variable in the "
                f"environment, or a default as ${{{name}:-value}}"
            )

        return _INTERPOLATION.sub(substitute, value)
    if isinstance(value, dict):
        return {
            k: interpolate(v, env, f"{where}.{k}" if where else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: found a {type(value).__name__}; expected a mapping")
    return value


def load_yaml(path: Path) -> dict[str, Any]:
    """The file's top-level mapping, not yet interpolated."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({exc}); expected a mapping") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: found a {type(data).__name__}; expected a mapping of keys")
    return data


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    context: str | None = None,
) -> Config:
    """Defaults < YAML < context < overrides (environment and flags, merged by the CLI)."""
    env = os.environ if env is None else env
    source = "defaults"
    raw: dict[str, Any] = {}
    if config_file is None:
        candidate = (cwd or Path.cwd()) / DEFAULT_CONFIG_FILE
        config_file = candidate if candidate.is_file() else None
    if config_file is not None:
        raw = load_yaml(config_file)
        source = str(config_file)
    contexts = {
        **BUILTIN_CONTEXTS,
        **_mapping(raw.pop("contexts", None) or {}, f"{source}: contexts"),
    }
    data = interpolate(raw, env, "")
    if context is not None:
        name = CONTEXT_ALIASES.get(context, context)
        if name not in contexts:
            hint = did_you_mean(context, sorted(contexts), quote="'")
            raise ConfigError(
                f"unknown context '{context}'{hint or ';'} expected one of: "
                + ", ".join(sorted(contexts))
            )
        overlay = _mapping(contexts[name], f"{source}: contexts.{name}")
        data = deep_merge(data, interpolate(overlay, env, f"context {name}"))
    data = deep_merge(data, overrides or {})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = key_lines(config_file.read_text(encoding="utf-8")) if config_file else {}
        chosen = CONTEXT_ALIASES.get(context, context) if context is not None else None
        prefixes = [(), *([("contexts", chosen)] if chosen is not None else [])]
        raise ConfigError(
            format_validation_error(
                exc, Config, source, lines, prefixes, ["contexts"], overrides or {}
            )
        ) from exc
