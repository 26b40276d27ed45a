"""Routes: the (provider, access mode) pairs a task may run on, in the order it tries them.

`--agent NAME` names a provider from `providers:` or an adapter directly. A provider's
modes come first, by priority; with `fallback` (the default) every other provider's
modes follow, by priority, so `claude` can fail over to `codex`. Without it a task keeps
to the provider's first mode and waits for its reset. An adapter named
directly is one route with its own name as limit key (`command`, `claude`).

A mode's limit key is `<provider>:<mode>` (`claude:subscription`); a provider's implicit
single mode, `default`, uses the provider's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ado_ray.agents import AGENTS
from ado_ray.config import Config, ProviderSettings
from ado_ray.errors import UsageError

DEFAULT_MODE = "default"


@dataclass(frozen=True)
class Route:
    provider: str
    mode: str
    agent: str  # the adapter
    priority: int
    model: str | None = None
    base_url: str | None = None
    max_turns: int | None = None
    cmd: str | None = None  # the CLI's executable, or the command agent's template
    env: dict[str, str] = field(default_factory=dict, repr=False)  # secrets

    @property
    def key(self) -> str:
        """The limit key this route's agent runs count against."""
        return self.provider if self.mode == DEFAULT_MODE else f"{self.provider}:{self.mode}"

    @property
    def label(self) -> str:
        return self.key if self.mode == DEFAULT_MODE else f"{self.provider} ({self.mode})"


def provider_routes(name: str, provider: ProviderSettings) -> list[Route]:
    if provider.agent not in AGENTS:
        raise UsageError(
            f"provider '{name}' names the adapter '{provider.agent}'; "
            f"expected one of: {', '.join(sorted(AGENTS))}"
        )
    return sorted(
        (
            Route(
                provider=name,
                mode=mode.name,
                agent=provider.agent,
                priority=mode.priority,
                model=mode.model or provider.model,
                base_url=mode.base_url,
                max_turns=provider.max_turns,
                cmd=provider.cmd,
                env=dict(mode.env),
            )
            for mode in provider.modes
        ),
        key=lambda route: route.priority,
    )


def routes(config: Config) -> list[Route]:
    """The routes of `config.agent.name`, first choice first (see the module docstring)."""
    name = config.agent.name
    if name in config.providers:
        own = provider_routes(name, config.providers[name])
        if not config.fallback:
            return own[:1]  # wait for the first mode's reset rather than move on
        others = [
            route
            for other, provider in config.providers.items()
            if other != name
            for route in provider_routes(other, provider)
        ]
        return own + sorted(others, key=lambda route: route.priority)
    if name in AGENTS:
        return [
            Route(provider=name, mode=DEFAULT_MODE, agent=name, priority=1, cmd=config.agent.cmd)
        ]
    choices = sorted({*AGENTS, *config.providers})
    raise UsageError(
        f"unknown agent '{name}'; expected a provider or an adapter: {', '.join(choices)}"
    )
