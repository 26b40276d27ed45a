"""Agent adapters. `AGENTS` maps a short name to its class; `make_agent` builds one."""

from __future__ import annotations

import importlib

from ado_ray.agents.base import Agent, AgentContext, AgentResult, Invocation
from ado_ray.config import AgentSettings
from ado_ray.errors import UsageError

AGENTS: dict[str, str] = {
    "command": "ado_ray.agents.command:CommandAgent",
    "claude": "ado_ray.agents.claude:ClaudeAgent",
    "codex": "ado_ray.agents.codex:CodexAgent",
    "gemini": "ado_ray.agents.gemini:GeminiAgent",
    "aider": "ado_ray.agents.aider:AiderAgent",
}


def make_agent(settings: AgentSettings) -> Agent:
    try:
        dotted = AGENTS[settings.name]
    except KeyError:
        raise UsageError(
            f"unknown agent '{settings.name}'; expected one of: {', '.join(sorted(AGENTS))}"
        ) from None
    module, _, cls = dotted.partition(":")
    agent: Agent = getattr(importlib.import_module(module), cls)(settings)
    return agent


__all__ = ["AGENTS", "Agent", "AgentContext", "AgentResult", "Invocation", "make_agent"]
