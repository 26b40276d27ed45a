"""Which files make up each agent's session, and how they travel: `session_files` on the
layouts the real CLIs write (measured with the pinned versions, see each adapter), `pack`
(never a login, never through a symlink) and `restore` (nothing outside the task's files:
no absolute or `..` names, links or devices)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from ado_ray.agents import make_agent
from ado_ray.agents.base import CREDENTIAL_NAMES, AgentContext
from ado_ray.config import AgentSettings, build_config
from ado_ray.engine import session_state
from ado_ray.errors import ConfigError, SessionStateError
from ado_ray.models import RepoSpec

SID = "95445075-e282-4f0c-b487-86b8ef3eafc3"
TID = "01a237fa-e4db-7b91-adba-fab4caacaf6c"
GID = "2e0c0d39-4e07-4519-b007-c844cdce1c62"
AID = "4f1c2a9be07d5c31"
LOGINS = {
    "home/.claude/.credentials.json": '{"claudeAiOauth": "secret"}',
    "home/.claude/.claude.json": '{"oauthAccount": "secret"}',
    "home/.codex/auth.json": '{"tokens": "secret"}',
    "home/.gemini/oauth_creds.json": '{"refresh_token": "secret"}',
    "home/.gemini/google_accounts.json": '{"active": "secret"}',
}
# Each agent's task directory after a session, as the pinned CLIs left it (abridged), and
# the files of the session `session_files` must name.
LAYOUTS: dict[str, tuple[str, dict[str, str], list[str]]] = {
    "claude": (
        SID,
        {
            f"home/.claude/projects/-w-run-t1-repo/{SID}.jsonl": '{"type":"user"}\n',
            f"home/.claude/projects/-w-run-t1-repo/{SID}/subagents/agent-a1.jsonl": "{}\n",
            "home/.claude/projects/-w-run-t1-repo/0ther-5e55-1on.jsonl": "{}\n",
            "home/.claude/projects/-w-run-t1-repo/memory/notes.md": "x",
            "home/.claude/backups/.claude.json.backup.1796235473186": "{}",
        },
        [
            f"home/.claude/projects/-w-run-t1-repo/{SID}/subagents/agent-a1.jsonl",
            f"home/.claude/projects/-w-run-t1-repo/{SID}.jsonl",
        ],
    ),
    "codex": (
        TID,
        {
            f"home/.codex/sessions/2026/12/02/rollout-2026-12-02T18-18-17-{TID}.jsonl": "{}\n",
            "home/.codex/sessions/2026/12/01/rollout-2026-12-01T09-00-00-0ther.jsonl": "{}\n",
            "home/.codex/config.toml": "model = 'x'\n",
            "home/.codex/state_5.sqlite": "sqlite",
            "home/.codex/installation_id": "id",
        },
        [f"home/.codex/sessions/2026/12/02/rollout-2026-12-02T18-18-17-{TID}.jsonl"],
    ),
    "gemini": (
        GID,
        {
            f"home/.gemini/tmp/repo/chats/session-2026-12-02T18-18-{GID[:8]}.jsonl": "{}\n",
            f"home/.gemini/tmp/repo/chats/session-2026-12-02T18-19-{GID[:8]}.jsonl": "{}\n",
            "home/.gemini/tmp/repo/chats/session-2026-12-02T17-00-0ther000.jsonl": "{}\n",
            "home/.gemini/tmp/repo/.project_root": "/w/run/t1/repo",
            "home/.gemini/projects.json": "{}",
            "home/.gemini/settings.json": "{}",
        },
        [
            f"home/.gemini/tmp/repo/chats/session-2026-12-02T18-18-{GID[:8]}.jsonl",
            f"home/.gemini/tmp/repo/chats/session-2026-12-02T18-19-{GID[:8]}.jsonl",
        ],
    ),
    "aider": (
        AID,
        {
            f"aider/{AID}.chat.md": "# aider chat started\n\n#### create hello.txt\n",
            "aider/0ther.chat.md": "#### other\n",
            "aider/input.history": "create hello.txt\n",
            "aider/model-settings.yml": "[]\n",
        },
        [f"aider/{AID}.chat.md"],
    ),
    "command": ("unused", {}, []),
}


def task_dir(root: Path, files: dict[str, str]) -> AgentContext:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "home").mkdir(parents=True, exist_ok=True)
    (root / "repo").mkdir(exist_ok=True)
    return AgentContext(
        run_id="run",
        task_id="t1",
        repo=RepoSpec(url="/src/r", key="/src/r", name="r"),
        repo_path=root / "repo",
        task_dir=root,
        home=root / "home",
        prompt_file=None,
    )


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_a_session_is_its_own_files_and_travels_without_logins(tmp_path: Path, name: str) -> None:
    session_id, files, expected = LAYOUTS[name]
    ctx = task_dir(tmp_path / "node-a", {**files, **LOGINS})
    agent = make_agent(AgentSettings(name=name, cmd="true" if name == "command" else None))
    found = agent.session_files(ctx, session_id)
    assert [p.as_posix() for p in found] == expected
    assert not [p for p in found if p.name in CREDENTIAL_NAMES]
    assert agent.session_files(ctx, "../../etc") == []  # not a session id: no files
    data = session_state.pack(ctx.task_dir, found, cap_bytes=2**20)
    if not expected:
        assert data is None
        return
    assert data is not None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == sorted(expected)
    node_b = task_dir(tmp_path / "node-b", {})
    assert [p.as_posix() for p in session_state.restore(node_b.task_dir, data)] == expected
    for name_ in expected:
        assert (node_b.task_dir / name_).read_text() == files[name_]
        assert (node_b.task_dir / name_).stat().st_mode & 0o777 == 0o600
    assert agent.session_files(node_b, session_id) == found  # what --resume looks for


def test_pack_never_takes_a_login_or_a_symlink(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the runner's secret")
    ctx = task_dir(tmp_path / "task", {**LOGINS, "home/.claude/projects/p/ok.jsonl": "ok"})
    projects = ctx.home / ".claude" / "projects"
    (projects / "p" / "link.jsonl").symlink_to(secret)  # a file that is a link
    (projects / "q").symlink_to(secret.parent)  # a directory on the way that is a link
    listed = [Path(name) for name in LOGINS] + [
        Path("home/.claude/projects/p/link.jsonl"),
        Path("home/.claude/projects/q/secret.txt"),
        Path("/etc/hostname"),
        Path("home/../../secret.txt"),
        Path("repo/README.md"),
        Path("home/.claude/projects/p/ok.jsonl"),
    ]
    (ctx.repo_path / "README.md").write_text("checkout")
    data = session_state.pack(ctx.task_dir, listed, cap_bytes=2**20)
    assert data is not None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert tar.getnames() == ["home/.claude/projects/p/ok.jsonl"]
    assert session_state.pack(ctx.task_dir, listed[:-1], cap_bytes=2**20) is None


def test_pack_over_the_cap_raises(tmp_path: Path) -> None:
    ctx = task_dir(tmp_path / "task", {})
    transcript = ctx.home / "t.jsonl"
    transcript.write_bytes(os.urandom(300_000))  # incompressible
    with pytest.raises(session_state.OverCapError, match="MB packed"):
        session_state.pack(ctx.task_dir, [Path("home/t.jsonl")], cap_bytes=100_000)
    assert session_state.pack(ctx.task_dir, [Path("home/t.jsonl")], cap_bytes=400_000)


def blob(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, content in members:
            info.size = len(content) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (member("/etc/cron.d/evil"), "outside the task's directory"),
        (member("home/../../../evil"), "outside the task's directory"),
        (member("../evil"), "outside the task's directory"),
        (member("home/.claude/x.jsonl", tarfile.SYMTYPE, "/etc/shadow"), "not a regular file"),
        (member("home/.claude/y.jsonl", tarfile.LNKTYPE, "home/ok.jsonl"), "not a regular file"),
        (member("home/dev", tarfile.CHRTYPE), "not a regular file"),
        (member("home/fifo", tarfile.FIFOTYPE), "not a regular file"),
        (member("home/.claude", tarfile.DIRTYPE), "not a regular file"),
        (member("repo/.git/hooks/pre-commit"), "which no session owns"),
        (member("logs/attempt-1.route"), "which no session owns"),
        (member("home/.codex/auth.json"), "which no session owns"),
    ],
)
def test_restore_refuses_a_blob_that_pack_does_not_make(
    tmp_path: Path, bad: tarfile.TarInfo, says: str
) -> None:
    ctx = task_dir(tmp_path / "task", {})
    data = blob((member("home/ok.jsonl"), b"ok"), (bad, b"payload"))
    with pytest.raises(SessionStateError, match=says):
        session_state.restore(ctx.task_dir, data)
    assert not (ctx.home / "ok.jsonl").exists()  # nothing of it was written
    assert not (tmp_path / "evil").exists() and not list(ctx.repo_path.rglob("*"))


def test_restore_follows_no_symlink_already_there(tmp_path: Path) -> None:
    ctx = task_dir(tmp_path / "task", {})
    outside = tmp_path / "outside"
    outside.mkdir()
    (ctx.home / ".claude").symlink_to(outside)
    with pytest.raises(SessionStateError, match="in the way"):
        session_state.restore(ctx.task_dir, blob((member("home/.claude/p/s.jsonl"), b"x")))
    assert list(outside.iterdir()) == []
    with pytest.raises(SessionStateError, match="cannot be read"):
        session_state.restore(ctx.task_dir, b"not a tar.gz")


def test_the_cap_is_a_config_key(tmp_path: Path) -> None:
    assert AgentSettings().session_state_max_mb == 20
    (tmp_path / "ado.yaml").write_text("agent: {session_state_max_mb: -1}\n")
    with pytest.raises(ConfigError, match=r"agent\.session_state_max_mb") as info:
        build_config(tmp_path / "ado.yaml", env={})
    assert "greater than or equal to 0" in str(info.value)
    (tmp_path / "ado.yaml").write_text("agent: {session_state_max_mb: 0}\n")
    assert build_config(tmp_path / "ado.yaml", env={}).agent.session_state_max_mb == 0
