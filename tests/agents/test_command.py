"""The command agent's template: argv words, placeholders, and `{name!q}` for shells."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ado_ray.agents.base import AgentContext
from ado_ray.agents.command import CommandAgent, expand, split_template
from ado_ray.config import AgentSettings
from ado_ray.errors import UsageError
from ado_ray.models import RepoSpec

HOSTILE = 'x\'; touch pwned; echo "$(id)" `id` ${HOME} \\ *'


def invocation(cmd: str, tmp_path: Path, **variables: str) -> list[str]:
    agent = CommandAgent(AgentSettings(cmd=cmd))
    repo = RepoSpec(url="https://h/o/n", key="h/o/n", name="n", vars=variables, line=1)
    agent.check_repos([repo], "repos.txt")
    ctx = AgentContext(
        run_id="r1",
        task_id="r1-00001",
        repo=repo,
        repo_path=tmp_path / "my repo;x",
        task_dir=tmp_path,
        home=tmp_path / "home",
        prompt_file=None,
    )
    return agent.invocation(ctx).argv


def test_plain_placeholders_are_whole_argv_words(tmp_path: Path) -> None:
    argv = invocation("fix --ticket={t} {repo_name} {repo_path} {{literal}}", tmp_path, t=HOSTILE)
    assert argv == ["fix", f"--ticket={HOSTILE}", "n", str(tmp_path / "my repo;x"), "{literal}"]


def test_q_quotes_for_a_shell_and_the_shell_gets_the_value_back(tmp_path: Path) -> None:
    argv = invocation("sh -c 'printf %s {t!q}; printf /%s {repo_path!q}'", tmp_path, t=HOSTILE)
    assert argv[:2] == ["sh", "-c"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout == f"{HOSTILE}/{tmp_path / 'my repo;x'}"
    assert not (tmp_path / "pwned").exists()


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"])))
def test_q_round_trips_through_shlex(value: str) -> None:
    assert shlex.split(expand("echo {v!q}", {"v": value})) == ["echo", value]


def test_format_specs_apply_before_quoting() -> None:
    values = {"t": "a;b c d", "w": "9"}
    assert expand("{t!q:.5}|{t:>{w}}|{t!s}", values) == "'a;b c'|  a;b c d|a;b c d"


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        ("sh -c 'echo {t!r}'", "'{t!r}' has an unknown conversion !r; expected {t} or {t!q}"),
        ("echo {t:{w!a}}", "'{w!a}' has an unknown conversion !a; expected {w} or {w!q}"),
        ("echo {t:d}", "'{t:d}': Unknown format code 'd' for object of type 'str'; expected"),
        ("echo {t", "expected '}' before end of string; write literal braces as"),
    ],
)
def test_bad_templates_are_usage_errors(cmd: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        split_template(cmd)
    assert message in str(info.value)
