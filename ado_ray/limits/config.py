"""Limiter configuration: which backend holds the limits, and the limits table.

```yaml
limiter:
  backend: redis                  # memory (default) | redis
  url: ${ADO_REDIS_URL}
limits:
  claude:subscription: {requests: ["200/5h"], concurrency: 4}
  command: {concurrency: 20}
  git:github.com: {requests: ["5/1s"]}
```

A key names a budget (`<agent>` or `<agent>:<mode>`, `git:<host>`); `route` finds the budget
a key counts against: its own, else its nearest configured parent's
(`claude:subscription` → `claude`), else none (no limit).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ado_ray.errors import ConfigError
from ado_ray.limits.base import LimitSpec, check_key
from ado_ray.redact import mask_url

NEEDS_URL = frozenset({"redis"})  # backends that connect to a server
NO_LIMITS = LimitSpec()


class LimiterSettings(BaseModel):
    """Where the shared limits live (`limiter:` in the config). The url may hold a
    password: it is left out of `repr`; use `describe()` in messages."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str = "memory"
    url: str | None = Field(default=None, repr=False)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from ado_ray.limits import BACKENDS  # the registry imports this module

        if value not in BACKENDS:
            raise ValueError(
                f"unknown limiter backend {value!r}; expected one of: {', '.join(sorted(BACKENDS))}"
            )
        return value

    @model_validator(mode="after")
    def _url_if_needed(self) -> LimiterSettings:
        if self.backend in NEEDS_URL and not self.url:
            raise ValueError(
                f"the {self.backend} limiter needs a url; expected e.g. "
                "url: redis://localhost:6379/0"
            )
        return self

    def describe(self) -> str:
        """`memory`, or `redis at redis://:***@host:6379/0`: safe to print."""
        if self.url is None:
            return self.backend
        return f"{self.backend} at {mask_url(self.url)}"


def _parse_table(value: Any) -> Any:
    """Validate each key and spec here, so that an error names the key it is about."""
    if not isinstance(value, dict):
        return value  # pydantic reports the wrong type
    table: dict[str, LimitSpec] = {}
    for key, spec in value.items():
        if not isinstance(key, str):
            raise ValueError(f"{key!r}: a limit key is a string, e.g. 'claude:subscription'")
        try:
            check_key(key)
            table[key] = spec if isinstance(spec, LimitSpec) else LimitSpec.model_validate(spec)
        except ConfigError as exc:
            raise ValueError(f"{key}: {exc}") from exc
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ValueError(f"{key}: {problems}") from exc
    return table


def _sorted(table: dict[str, LimitSpec]) -> dict[str, LimitSpec]:
    return dict(sorted(table.items()))


# The limits table: limit key -> LimitSpec. Use as a field type: `limits: LimitTable = {}`.
LimitTable = Annotated[dict[str, LimitSpec], BeforeValidator(_parse_table), AfterValidator(_sorted)]


def default_key(agent_name: str, mode: str | None = None) -> str:
    """The limit key an agent's calls count against: `claude`, or `claude:subscription`
    when the agent runs in a mode with its own budget (subscription, api, ...)."""
    return check_key(agent_name if not mode else f"{agent_name}:{mode}")


def route(table: dict[str, LimitSpec], key: str) -> tuple[str, LimitSpec]:
    """The budget that `key` counts against: its own entry if the table has one, else its
    nearest configured parent's (`claude` for `claude:subscription`, shared by every mode
    of claude that has no entry of its own), else `key` itself with no limit."""
    check_key(key)
    candidate = key
    while candidate not in table:
        candidate, sep, _ = candidate.rpartition(":")
        if not sep:
            return key, NO_LIMITS
    return candidate, table[candidate]
