"""Forge settings (`forges:`) and what publishing does (`publish:`).

```yaml
forges:                       # keyed by host[:port] exactly as in repository URLs
  github.com: {type: github, token_env: GITHUB_TOKEN}          # built in
  gitlab.com: {type: gitlab, token_env: GITLAB_TOKEN}          # built in
  git.example.com:8443: {type: gitea, api_url: "https://git.example.com:8443/api/v1",
                         token_env: GITEA_TOKEN}
publish:
  pr: true                    # --pr: open or update a pull request per changed repository
  draft: true
  conflict: skip              # skip | replace | append (when the branch or a PR exists)
  labels: [deps]
  title: "{run_name}: {prompt_line}"
```

Tokens are named, never written here: `token_env` is the environment variable the driver
reads the token from (`ForgeSettings.token`, the one place that reads it).
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

FORGE_TYPES = ("github", "gitlab", "gitea")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?")


class ForgeSettings(BaseModel):
    """One forge host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    api_url: str | None = None  # default per type (see `api_base`)
    token_env: str

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in FORGE_TYPES:
            raise ValueError(
                f"unknown forge type {value!r}; expected one of {', '.join(FORGE_TYPES)}"
            )
        return value

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an environment variable name; expected the *name* of the "
                "variable that holds the token, e.g. GITHUB_TOKEN"
            )
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.rstrip("/")
        if not re.match(r"https?://[^/\s@]+(/\S*)?$", value):
            raise ValueError(
                f"{value!r} is not an API base URL; expected http(s)://host[:port]/path "
                "without credentials, e.g. https://git.example.com/api/v1"
            )
        return value

    def token(self, env: Mapping[str, str] | None = None) -> SecretStr | None:
        """The token from `$token_env` (None when unset or empty), kept out of reprs."""
        value = (os.environ if env is None else env).get(self.token_env)
        return SecretStr(value) if value else None

    def api_base(self, host: str) -> str:
        """The REST base URL: the explicit `api_url`, else the type's default for `host`."""
        if self.api_url:
            return self.api_url
        if self.type == "github":
            return "https://api.github.com" if host == "github.com" else f"https://{host}/api/v3"
        return f"https://{host}/api/v4" if self.type == "gitlab" else f"https://{host}/api/v1"


BUILTIN_FORGES: dict[str, ForgeSettings] = {
    "github.com": ForgeSettings(type="github", token_env="GITHUB_TOKEN"),
    "gitlab.com": ForgeSettings(type="gitlab", token_env="GITLAB_TOKEN"),
}


def check_hosts(value: dict[str, ForgeSettings]) -> dict[str, ForgeSettings]:
    """Validate the keys of `forges:` and put the built-in hosts under the file's own."""
    for host in value:
        if not _HOST.fullmatch(host):
            raise ValueError(
                f"forges: {host!r} is not a host; expected host or host:port as it appears in "
                "repository URLs, e.g. github.com or git.example.com:8443"
            )
    return {**BUILTIN_FORGES, **{host.lower(): s for host, s in value.items()}}


class Conflict(enum.StrEnum):
    """What to do when the run's branch, or an open PR from it, already exists."""

    SKIP = "skip"  # run no agent there: the task is skipped with the reason
    REPLACE = "replace"  # force-with-lease the branch to the new commit, update the PR
    APPEND = "append"  # start from the existing branch and add the new commit on top


DEFAULT_TITLE = "{run_name}: {prompt_line}"
DEFAULT_BODY = """{prompt_line}

Changed by ado-ray run `{run_name}` in `{repo_name}` on branch `{branch}`.

```
{diffstat}
```
{summary}"""
TEMPLATE_FIELDS = (
    "run_name",
    "run_id",
    "repo_name",
    "branch",
    "prompt_line",
    "diffstat",
    "summary",
)


class PublishSettings(BaseModel):
    """What happens to a changed repository after its commit (`publish:`)."""

    model_config = ConfigDict(extra="forbid")

    pr: bool = False  # open (or update) a pull request after the push
    draft: bool = False
    conflict: Conflict = Conflict.SKIP
    fork: bool = False  # push to the token user's fork when the repository refuses a push
    labels: list[str] = Field(default_factory=list)
    reviewers: list[str] = Field(default_factory=list)
    team_reviewers: list[str] = Field(default_factory=list)
    assignees: list[str] = Field(default_factory=list)
    title: str = DEFAULT_TITLE
    body: str | None = None  # a template; None: DEFAULT_BODY (or body_file)
    body_file: Path | None = None
    bundle_max_mb: float = Field(default=50.0, gt=0)  # commits kept in the store up to this

    @field_validator("title", "body")
    @classmethod
    def _known_fields(cls, value: str | None) -> str | None:
        if value is not None:
            check_template(value)
        return value

    @model_validator(mode="after")
    def _one_body(self) -> PublishSettings:
        if self.body is not None and self.body_file is not None:
            raise ValueError("give publish.body (--pr-body) or publish.body_file, not both")
        return self


_FIELD = re.compile(r"\{([^{}]*)\}")


def check_template(template: str) -> None:
    """Raise ValueError naming the first unknown `{field}` (and the closest known one)."""
    import difflib

    for name in _FIELD.findall(template.replace("{{", "").replace("}}", "")):
        if name not in TEMPLATE_FIELDS:
            close = difflib.get_close_matches(name, TEMPLATE_FIELDS, n=1)
            hint = f"; did you mean {{{close[0]}}}?" if close else ""
            raise ValueError(
                f"unknown placeholder {{{name}}} in {template!r}{hint} "
                f"(known: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)})"
            )
