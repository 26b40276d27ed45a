"""Routes from config (subscription first, failover across providers) and per-attempt usage."""

from __future__ import annotations

from pathlib import Path

import pytest

from ado_ray.agents.base import AgentResult
from ado_ray.agents.routing import Route, routes
from ado_ray.config import Config, Price, build_config
from ado_ray.engine.agent_run import Session, account
from ado_ray.errors import UsageError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "providers.yaml"  # the issue's
ENV = {
    "ANTHROPIC_API_KEY": "sk-ant-canary",
    "OPENAI_API_KEY": "sk-openai-canary",
    "GEMINI_API_KEY": "g-canary",
}


def config(agent: str = "claude", **overrides: object) -> Config:
    return build_config(EXAMPLE, {"agent": {"name": agent}, **overrides}, env=ENV)


def test_the_issue_example_routes_subscription_first_then_api_then_other_providers(
    tmp_path: Path,
) -> None:
    found = routes(config())
    assert [r.key for r in found] == [
        "claude:subscription",
        "claude:api",
        "codex:api",
        "gemini:api",
    ]
    assert (
        found[0].model == "claude-sonnet-4-5"
        and found[1].env["ANTHROPIC_API_KEY"] == "sk-ant-canary"
    )
    assert found[3].base_url == "http://127.0.0.1:8767"
    assert [r.key for r in routes(config("codex"))] == [
        "codex:api",
        "claude:subscription",
        "claude:api",
        "gemini:api",
    ]


def test_without_fallback_a_task_keeps_to_the_first_mode(tmp_path: Path) -> None:
    assert [r.key for r in routes(config(fallback=False))] == ["claude:subscription"]


def test_an_adapter_named_directly_is_one_route_keyed_by_its_name(tmp_path: Path) -> None:
    (only,) = routes(
        build_config(None, {"agent": {"name": "command", "cmd": "true"}}, env={}, cwd=tmp_path)
    )
    assert (only.key, only.agent, only.cmd) == ("command", "command", "true")
    with pytest.raises(UsageError, match="unknown agent 'nope'; expected a provider or an adapter"):
        routes(build_config(None, {"agent": {"name": "nope"}}, env={}, cwd=tmp_path))


def test_mode_secrets_are_masked_and_kept_out_of_repr(tmp_path: Path) -> None:
    cfg = config()
    shown = str(cfg.masked())
    assert "canary" not in shown and "***" in shown
    assert "canary" not in repr(routes(cfg))


ROUTE = Route(provider="claude", mode="api", agent="claude", priority=2, model="m")


def test_claude_style_session_cost_totals_become_per_attempt_costs() -> None:
    first = AgentResult(
        ok=True,
        exit_code=0,
        session_id="s1",
        input_tokens=100,
        output_tokens=10,
        cost_usd=0.30,
        cost_is_session_total=True,
    )
    usage, totals = account(first, ROUTE, {}, None)
    assert (usage["cost_usd"], usage["input_tokens"], usage["cost_source"]) == (0.3, 100, "cli")
    resumed = AgentResult(
        ok=True,
        exit_code=0,
        session_id="s1",
        input_tokens=50,
        output_tokens=5,
        cost_usd=0.45,
        cost_is_session_total=True,
    )
    usage, _ = account(resumed, ROUTE, {}, Session("claude", "s1", totals))
    assert usage["cost_usd"] == pytest.approx(0.15) and usage["input_tokens"] == 50


def test_codex_style_token_totals_are_diffed_and_priced() -> None:
    prices = {"m": Price(input=2.0, output=10.0)}
    first = AgentResult(
        ok=True,
        exit_code=0,
        session_id="t1",
        input_tokens=1000,
        output_tokens=100,
        tokens_are_session_totals=True,
    )
    usage, totals = account(first, ROUTE, prices, None)
    assert (
        usage["cost_usd"] == pytest.approx((1000 * 2 + 100 * 10) / 1e6)
        and usage["cost_source"] == "prices"
    )
    second = AgentResult(
        ok=True,
        exit_code=0,
        session_id="t1",
        input_tokens=1500,
        output_tokens=180,
        tokens_are_session_totals=True,
    )
    usage, _ = account(second, ROUTE, prices, Session("claude", "t1", totals))
    assert (usage["input_tokens"], usage["output_tokens"]) == (500, 80)
    unpriced, _ = account(second, Route("x", "api", "codex", 1, model="unknown"), prices, None)
    assert (unpriced["cost_usd"], unpriced["cost_source"]) == (0.0, "unknown")
