"""`session_files` against the real Gemini CLI and Aider (pinned, in .agents/): a session
packed from one task directory and restored into another one, at another path with an
empty HOME (another node), is continued there by `--resume` / `--restore-chat-history`.
(Claude Code and Codex: tests/engine/test_session_state.py, end to end.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ado_ray.agents.aider import AiderAgent
from ado_ray.agents.gemini import GeminiAgent
from ado_ray.config import AgentSettings
from ado_ray.engine import session_state
from tests.agents import test_aider_cli as aider_cli
from tests.agents import test_gemini_cli as gemini_cli
from tests.stubs.gemini import GeminiStub
from tests.stubs.openai import OpenAIStub

pytestmark = pytest.mark.integration


def test_a_gemini_session_continues_from_its_restored_chat_files(tmp_path: Path) -> None:
    with GeminiStub() as stub:
        first_ctx = gemini_cli.task(tmp_path / "node-a", base_url=stub.url)
        first = gemini_cli.run(first_ctx)
        assert first.ok and first.session_id, first.message
        agent = GeminiAgent(AgentSettings(name="gemini"), user_home=tmp_path / "no-user-home")
        files = agent.session_files(first_ctx, first.session_id)
        data = session_state.pack(first_ctx.task_dir, files, cap_bytes=2**20)
        assert data is not None
        ctx = gemini_cli.task(
            tmp_path / "node-b",
            prompt="second turn: just reply",
            base_url=stub.url,
            resume_session=first.session_id,
        )
        assert "--resume" not in agent.invocation(ctx).argv  # nothing here yet
        session_state.restore(ctx.task_dir, data)
        second, _, _ = asyncio.run(gemini_cli.drive(ctx, attempt=2))
        history = stub.requests[-1].body["contents"]
    assert second.ok, second.message
    assert second.session_id == first.session_id
    assert any("functionCall" in part for content in history for part in content["parts"])
    assert history[-1]["parts"][-1]["text"] == "second turn: just reply"


def test_an_aider_chat_continues_from_its_restored_history(tmp_path: Path) -> None:
    agent = AiderAgent(AgentSettings(name="aider", cmd=str(aider_cli.aider_path())))
    with OpenAIStub() as stub:
        first_ctx = aider_cli.task_context(tmp_path / "node-a", stub)
        first = aider_cli.run(agent, first_ctx).result
        assert first.ok and first.session_id, first.message
        files = agent.session_files(first_ctx, first.session_id)
        assert [p.as_posix() for p in files] == [f"aider/{first.session_id}.chat.md"]
        data = session_state.pack(first_ctx.task_dir, files, cap_bytes=2**20)
        assert data is not None
        ctx = aider_cli.task_context(tmp_path / "node-b", stub, resume_session=first.session_id)
        session_state.restore(ctx.task_dir, data)
        ctx.prompt_file.write_text("now say ok")  # type: ignore[union-attr]
        done = aider_cli.run(agent, ctx)
        history = json.dumps(stub.requests[-1].body["messages"])
    assert done.result.ok, done.result.message
    assert "--restore-chat-history" in done.argv
    assert done.result.session_id == first.session_id
    assert "create hello.txt containing hi" in history and "now say ok" in history
