"""CLI rough edges (issue 10), through the real command line.

`ado` runs in-process (click's `CliRunner` on `ado_ray.cli:main`) for checks that stop
before anything runs, and in subprocesses (`python -m ado_ray --no-ray`) for real runs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from ado_ray.cli import main
from tests.conftest import git

ADO = [sys.executable, "-m", "ado_ray"]


def invoke(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """`ado ARGS` in-process, in `tmp_path`, with the store and work root there."""
    base = {"ADO_STATE": str(tmp_path / "state.db"), "ADO_WORK_ROOT": str(tmp_path / "work")}
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        return CliRunner().invoke(main, list(args), env={**base, **(env or {})})
    finally:
        os.chdir(cwd)


def ado(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ADO, *args],
        cwd=tmp_path,
        env={
            **os.environ,
            "ADO_STATE": str(tmp_path / "state.db"),
            "ADO_WORK_ROOT": str(tmp_path / "work"),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=180,
    )


def nothing_written(tmp_path: Path) -> bool:
    return not (tmp_path / "state.db").exists() and not (tmp_path / "work").exists()


def remote_list(tmp_path: Path, count: int, extra: Callable[[int], str] = lambda i: "") -> Path:
    """A list of remote repositories (parsed, never contacted: every test here stops at the
    plan)."""
    path = tmp_path / "repos.txt"
    path.write_text("".join(f"https://example.com/o/r{i} {extra(i)}\n" for i in range(count)))
    return path


# --- 1. `ado --context k8s status RUN`: global --config/--state/--context ---------------------


def test_global_context_is_passed_down(tmp_path: Path) -> None:
    result = invoke(tmp_path, "--context", "nope", "runs")
    assert result.exit_code == 2
    assert "unknown context 'nope'; expected one of: kubernetes, local" in result.output
    k8s = invoke(tmp_path, "--context", "k8s", "status", "abc")
    assert k8s.exit_code == 2 and "${ADO_STATE_URL} is not set" in k8s.output


def test_global_state_is_passed_down_and_the_commands_own_flag_wins(tmp_path: Path) -> None:
    env = {"ADO_STATE": str(tmp_path / "from-env.db")}
    result = invoke(tmp_path, "--state", "global.db", "status", "abc", env=env)
    assert result.exit_code == 2 and f"{tmp_path / 'global.db'}" in result.output  # beats env
    own = invoke(tmp_path, "--state", "global.db", "status", "abc", "--state", "own.db", env=env)
    assert own.exit_code == 2 and f"{tmp_path / 'own.db'}" in own.output
    assert "global.db" not in own.output
    neither = invoke(tmp_path, "status", "abc", env=env)
    assert "from-env.db" in neither.output


def test_global_config_is_passed_down(tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text("parallel: 7\n")
    shown = invoke(tmp_path, "--config", "other.yaml", "config", "show", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["parallel"] == 7
    (tmp_path / "ado.yaml").write_text("contexts: {big: {parallel: 9}}\n")
    valid = invoke(tmp_path, "--context", "big", "config", "validate", "ado.yaml")
    assert valid.exit_code == 0 and "(context big)" in valid.output


def test_a_global_option_a_command_cannot_use_is_refused(tmp_path: Path) -> None:
    result = invoke(tmp_path, "--state", "x.db", "cluster", "render")
    assert result.exit_code == 2
    assert "--state does not apply to `ado cluster`" in result.output


# --- 2. a wrong placeholder: one message, the nearest names ------------------------------------


def test_an_unknown_placeholder_is_one_message_with_the_nearest_names(tmp_path: Path) -> None:
    remote_list(tmp_path, 1000, lambda i: f"ticket=T-{i}")
    result = invoke(tmp_path, "batch", "repos.txt", "--plan", "--cmd", "echo {repo}")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines[:5]
    message = lines[0]
    assert message.startswith("error: --cmd: unknown placeholder {repo};")
    assert "did you mean {repo_path} or {repo_name}?" in message
    for valid in ("{repo_path}", "{repo_name}", "{prompt_file}", "{run_id}", "{ticket}"):
        assert valid in message
    assert "repos.txt:1:" in message  # where a variable of one's own would go
    near_variable = invoke(tmp_path, "batch", "repos.txt", "--plan", "--cmd", "echo {tikcet}")
    assert near_variable.exit_code == 2 and "did you mean {ticket}?" in near_variable.output
    assert nothing_written(tmp_path)


def test_a_variable_some_lines_lack_names_those_lines_at_most_twenty(tmp_path: Path) -> None:
    remote_list(tmp_path, 30, lambda i: f"ticket=T-{i}" if i % 6 == 0 else "")
    result = invoke(tmp_path, "batch", "repos.txt", "--plan", "--cmd", "echo {ticket}")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[0] == (
        "error: repos.txt:2: https://example.com/o/r1 has no ticket; expected ticket=VALUE "
        "on its line, as --cmd uses {ticket}"
    )
    assert len(lines) == 21 and lines[-1] == "... and 5 more lines of repos.txt"
    assert nothing_written(tmp_path)


# --- 3. the program is resolved at plan time -------------------------------------------------


def test_a_missing_program_is_refused_at_plan_time(tmp_path: Path) -> None:
    remote_list(tmp_path, 2)
    missing = invoke(tmp_path, "batch", "repos.txt", "--plan", "--cmd", "./fix.sh {repo_name}")
    assert missing.exit_code == 2
    assert f"'./fix.sh' is {tmp_path / 'fix.sh'}, and it does not exist" in missing.output
    assert "runs inside each checkout" in missing.output
    assert "{repo_path}/fix.sh for a program inside each repository" in missing.output
    (tmp_path / "fix.sh").write_text("#!/bin/sh\n")
    not_executable = invoke(tmp_path, "batch", "repos.txt", "--plan", "--cmd", "./fix.sh")
    assert not_executable.exit_code == 2 and "it is not executable" in not_executable.output
    bare = invoke(tmp_path, "batch", "repos.txt", "--plan", "--cmd", "ado-no-such-program x")
    assert bare.exit_code == 2
    assert "the program 'ado-no-such-program' is not on the agents' PATH" in bare.output
    here = invoke(tmp_path, "batch", "repos.txt", "--plan", "--cmd", "fix.sh")
    assert here.exit_code == 2 and "or ./fix.sh for the file here" in here.output
    absolute = invoke(tmp_path, "batch", "repos.txt", "--plan", "--cmd", "/no/such/fix")
    assert absolute.exit_code == 2 and "/no/such/fix: it does not exist" in absolute.output
    assert nothing_written(tmp_path)


def test_programs_that_are_there_or_per_repository_pass_the_plan(tmp_path: Path) -> None:
    remote_list(tmp_path, 2)
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "fix").write_text("#!/bin/sh\n")
    (tmp_path / "tools" / "fix").chmod(0o755)
    for cmd in ("tools/fix", "./tools/fix {repo_name}", "git status", "{repo_path}/gradlew"):
        result = invoke(tmp_path, "batch", "repos.txt", "--plan", "--cmd", cmd)
        assert result.exit_code == 0, (cmd, result.output)


def test_a_relative_program_for_a_ray_job_is_refused(tmp_path: Path) -> None:
    remote_list(tmp_path, 1)
    result = invoke(
        tmp_path,
        "batch",
        "repos.txt",
        "--cmd",
        "./fix.sh",
        "--dashboard-url",
        "http://127.0.0.1:9",
        "--state",
        "postgresql://ado@127.0.0.1:9/ado",
    )
    assert result.exit_code == 2
    assert "'./fix.sh' is a relative path, and the agents run on the cluster" in result.output


@pytest.mark.e2e
def test_a_relative_program_runs_from_where_ado_started_with_short_flags(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    repos = [make_repo("one"), make_repo("two")]
    (tmp_path / "repos.txt").write_text("".join(f"{repo}\n" for repo in repos))
    (tmp_path / "fix.sh").write_text('#!/bin/sh\necho "fixed $1" > FIXED\n')
    (tmp_path / "fix.sh").chmod(0o755)
    run = ado(
        tmp_path, "batch", "repos.txt", "--no-ray", "-n", "short", "-b", "fix/x", "-j", "1",
        "--json", "--cmd", "./fix.sh {repo_name}",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["name"] == "short"
    assert {task["state"] for task in summary["tasks"]} == {"changed"}
    assert git(repos[0], "show", "fix/x:FIXED") == "fixed one"
    with sqlite3.connect(tmp_path / "state.db") as conn:
        (config,) = conn.execute("SELECT config FROM runs").fetchone()
    stored = json.loads(config)
    assert stored["agent"]["cmd"] == f"{tmp_path / 'fix.sh'} '{{repo_name}}'"
    assert stored["parallel"] == 1


# --- 4. unknown config keys ------------------------------------------------------------------


def test_unknown_config_keys_say_file_line_and_the_nearest_key(tmp_path: Path) -> None:
    (tmp_path / "ado.yaml").write_text(
        "parallel: 3\nagent:\n  cmd: echo\n  tiemout_s: 5\nparalel: 4\n"
        "contexts:\n  big:\n    ray: {adress: auto}\n"
    )
    result = invoke(tmp_path, "config", "validate", "ado.yaml", "--context", "big")
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "error: ado.yaml:4: unknown key `agent.tiemout_s`; did you mean `timeout_s`?",
        "ado.yaml:5: unknown key `paralel`; did you mean `parallel`?",
        "ado.yaml:8: unknown key `ray.adress`; did you mean `address`?",
    ]
    assert "Extra inputs" not in result.output


# --- 5. `ado batch repos.txt --resume RUN_ID` ------------------------------------------------


@pytest.mark.e2e
def test_batch_with_the_runs_own_list_resumes_and_another_list_is_refused(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> None:
    repos = [make_repo(name) for name in ("a", "b", "c")]
    (tmp_path / "repos.txt").write_text("".join(f"{repo}\n" for repo in repos))
    fail_b = script("fail_b", "import os, sys\nsys.exit(os.environ['ADO_REPO_NAME'] == 'b')\n")
    first = ado(tmp_path, "batch", "repos.txt", "--no-ray", "--json", "--cmd", fail_b)
    assert first.returncode == 1, first.stderr
    run_id = json.loads(first.stdout)["run_id"]

    other = make_repo("d")
    (tmp_path / "other.txt").write_text(f"{repos[0]}@main\n{repos[1]} k=v\n{other}\n")
    refused = ado(tmp_path, "batch", "other.txt", "--resume", run_id, "--no-ray")
    assert refused.returncode == 2
    assert f"1 repository in other.txt is not in run {run_id}: other.txt:3 {other}" in (
        refused.stderr
    )
    assert f"1 of the run's is not in other.txt: {repos[2]} (repos.txt:3)" in refused.stderr
    assert "2 repositories have another ref or other variables in other.txt" in refused.stderr
    assert f"`ado resume {run_id}` continues the run without one" in refused.stderr

    # The run's own list, spelled differently (relative paths, file:// URLs): accepted.
    (tmp_path / "same.txt").write_text(
        f"repos/a\nfile://{repos[1]}\n{os.path.relpath(repos[2], tmp_path)}\n"
    )
    ok = script("ok", "")
    resumed = ado(
        tmp_path, "batch", "same.txt", "--resume", run_id, "--retry-failed", "--no-ray",
        "--json", "--cmd", ok,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["run_id"] == run_id


# --- 6. a --name whose branch exists: no agent runs ------------------------------------------


@pytest.mark.e2e
def test_a_name_whose_branch_exists_runs_no_agent(
    tmp_path: Path, make_repo: Callable[..., Path], script: Callable[[str, str], str]
) -> None:
    repos = [make_repo(name) for name in ("x", "y")]
    (tmp_path / "repos.txt").write_text("".join(f"{repo}\n" for repo in repos))
    log = tmp_path / "agent.log"
    agent = script(
        "count",
        "import os, pathlib\n"
        f"open({str(log)!r}, 'a').write(os.environ['ADO_REPO_NAME'] + '\\n')\n"
        "pathlib.Path('NEW').write_text('x')\n",
    )
    args = ("batch", "repos.txt", "--no-ray", "--json", "--name", "again", "--cmd", agent)
    first = ado(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    assert sorted(log.read_text().split()) == ["x", "y"]
    second = ado(tmp_path, *args)
    tasks = json.loads(second.stdout)["tasks"]
    assert {task["state"] for task in tasks} == {"skipped"}
    assert all("branch ado/again exists" in task["error"] for task in tasks), tasks
    assert all("no agent started" in task["error"] for task in tasks)
    assert sorted(log.read_text().split()) == ["x", "y"]  # no agent ran the second time


# --- 7. shell completion and short flags -----------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_script(tmp_path: Path, shell: str) -> None:
    result = invoke(tmp_path, "completion", shell)
    assert result.exit_code == 0, result.output
    assert f"_ADO_COMPLETE={shell}_" in result.output or f"{shell}_source" in result.output
    assert invoke(tmp_path, "completion", "tcsh").exit_code == 2


def test_the_completion_script_completes_commands_and_options() -> None:
    env = {"_ADO_COMPLETE": "bash_complete", "COMP_WORDS": "ado bat", "COMP_CWORD": "1"}
    commands = CliRunner().invoke(main, [], env=env, prog_name="ado")
    assert "plain,batch" in commands.output.splitlines()
    env |= {"COMP_WORDS": "ado batch --bra", "COMP_CWORD": "2"}
    options = CliRunner().invoke(main, [], env=env, prog_name="ado")
    assert "plain,--branch" in options.output.splitlines()


def _commands(group: click.Group, path: str = "ado") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = [(path, group)]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, f"{path} {name}")
        else:
            found.append((f"{path} {name}", command))
    return found


def test_short_flags_exist_and_no_command_has_one_twice() -> None:
    for path, command in _commands(main):
        flags = [
            flag
            for param in command.get_params(click.Context(command))
            for flag in (*param.opts, *param.secondary_opts)
        ]
        assert len(flags) == len(set(flags)), (path, sorted(f for f in flags if flags.count(f) > 1))
    batch = {param.name: param.opts for param in main.commands["batch"].params}
    assert "-n" in batch["name"] and "-b" in batch["branch"] and "-j" in batch["parallel"]
