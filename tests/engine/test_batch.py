"""End-to-end runs through the Python API: real git repositories, a real Ray instance."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ado_ray import api
from ado_ray.engine.backends import runner_slots
from ado_ray.engine.progress import LineProgress
from ado_ray.models import TaskOutcome
from tests.conftest import git
from tests.processes import gone, token_scope

pytestmark = pytest.mark.integration

WRITE = """
import os, pathlib, sys
pathlib.Path("CHANGED.txt").write_text("changed by the agent for " + sys.argv[1] + "\\n")
print("edited", os.getcwd())
"""


def run(
    tmp_path: Path, repos: list[Path | str], cmd: str, use_ray: bool = True, **overrides: Any
) -> Any:
    repo_list = tmp_path / "repos.txt"
    repo_list.write_text("".join(f"{r}\n" for r in repos))
    settings = {
        "state": str(tmp_path / "state.db"),
        "work_root": str(tmp_path / "work"),
        "parallel": 4,
        "no_ray": not use_ray,
        **overrides,
    }
    settings["agent"] = {"cmd": cmd, **overrides.get("agent", {})}
    return api.start(repo_list, api.ConfigSources(overrides=settings), io.StringIO())


def branch_commits(repo: Path, branch: str) -> list[str]:
    return git(repo, "rev-list", f"main..{branch}").split()


@pytest.mark.parametrize("ray", [True, False], ids=["ray", "no-ray"])
def test_changes_become_one_commit_on_the_run_branch_of_each_repository(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
    ray: bool,
) -> None:
    repos = [make_repo(f"r{i}") for i in range(3)]
    result = run(
        tmp_path, repos, script("write", WRITE) + " {repo_name}", use_ray=ray, name="fix-all"
    )

    assert result.exit_code == 0
    assert result.counts == {"changed": 3}
    for repo in repos:
        commits = branch_commits(repo, "ado/fix-all")
        assert len(commits) == 1
        assert (
            git(repo, "show", "ado/fix-all:CHANGED.txt") == f"changed by the agent for {repo.name}"
        )
        assert (
            git(repo, "log", "-1", "--format=%an|%s", "ado/fix-all")
            == f"ado-ray|fix-all: agent changes in {repo.name}"
        )
        assert (
            git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
        )  # the user's checkout is untouched
    task = result.summary["tasks"][0]
    assert task["state"] == "changed" and task["where"] == f"branch ado/fix-all of {repos[0]}"


def test_no_change_leaves_no_branch(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    repo = make_repo("quiet")
    result = run(tmp_path, [repo], script("noop", "print('nothing to do')"))
    assert result.exit_code == 0
    assert result.counts == {"no_change": 1}
    assert git(repo, "branch", "--list", "ado/*") == ""


def test_agent_failure_is_recorded_with_its_stderr_and_exit_code_1(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    ok, bad = make_repo("ok"), make_repo("bad")
    agent = script(
        "fail",
        "import sys\nif sys.argv[1] == 'bad':\n    sys.exit('cannot fix this one')\n"
        "open('x','w').write('x')",
    )
    result = run(tmp_path, [ok, bad], agent + " {repo_name}")
    assert result.exit_code == 1
    states = {t["name"]: t for t in result.summary["tasks"]}
    assert states["ok"]["state"] == "changed"
    assert states["bad"]["state"] == "failed"
    assert states["bad"]["failure_class"] == "agent"
    assert states["bad"]["error"] == "exit code 1: cannot fix this one"
    assert states["bad"]["attempts"] == 1  # an agent failure is not retried


# The agent and a child of its own; both carry the test's token (argv[1]) to be found by.
HANG = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", sys.argv[1]])
print("working", flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize(
    ("agent_settings", "message"),
    [
        ({"timeout_s": 1.5, "stall_timeout_s": None, "kill_grace_s": 0.5}, "ran longer than 1.5s"),
        ({"timeout_s": 60, "stall_timeout_s": 1.0, "kill_grace_s": 0.5}, "printed nothing for 1s"),
    ],
    ids=["timeout", "stall"],
)
def test_timeout_and_stall_kill_the_agent_and_everything_it_started(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
    agent_settings: dict[str, Any],
    message: str,
) -> None:
    with token_scope() as token:
        cmd = script("hang", HANG) + f" {token}"
        result = run(tmp_path, [make_repo("slow")], cmd, agent=agent_settings)
        task = result.summary["tasks"][0]
        assert (task["state"], task["failure_class"]) == ("failed", "timeout")
        assert message in task["error"]
        assert gone(token)


ENV_DUMP = """
import json, os, sys
json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, open(os.environ["ADO_VAR_OUT"], "w"))
"""


def test_placeholders_variables_and_environment_allow_list(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = make_repo("vars")
    out = tmp_path / "seen.json"
    line = f"{repo} ticket='ABC 1' out={out}"
    monkeypatch.setenv(
        "ADO_TEST_SECRET", "canary-4c1d"
    )  # reaches the in-process runner's environment
    result = run(
        tmp_path,
        [line],
        script("env", ENV_DUMP) + " {ticket} {repo_name} {prompt_file}",
        use_ray=False,
        agent={"prompt": "do it"},
    )
    assert result.exit_code == 0
    seen = json.loads(out.read_text())
    prompt_file = Path(seen["argv"][2])
    assert seen["argv"][:2] == ["ABC 1", "vars"]
    assert prompt_file.read_text() == "do it" and prompt_file.is_relative_to(tmp_path / "work")
    env = seen["env"]
    assert env["ADO_VAR_TICKET"] == "ABC 1" and env["ADO_REPO_NAME"] == "vars"
    assert Path(env["HOME"]).is_relative_to(tmp_path / "work")
    assert "ADO_TEST_SECRET" not in env
    allowed = {"PATH", "LANG", "TZ", "TERM", "TMPDIR", "USER", "LOGNAME", "HOME", "PWD"}
    identity = {
        f"GIT_{who}_{what}" for who in ("AUTHOR", "COMMITTER") for what in ("NAME", "EMAIL")
    }
    assert {k for k in env if not k.startswith(("ADO_", "LC_"))} <= allowed | identity


CONCURRENCY = """
import os, sys, time, fcntl
log = sys.argv[1]
def note(what):
    with open(log, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{what} {time.monotonic()}\\n")
note("start"); time.sleep(0.3); note("end")
open("x", "w").write("x")
"""


def test_parallel_bounds_agents_running_at_once_and_runner_count(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    import ray

    repos = [make_repo(f"p{i}") for i in range(12)]
    log = tmp_path / "concurrency.log"
    runners_seen: set[str] = set()

    class Spy(LineProgress):
        def task_done(self, outcome: TaskOutcome) -> None:
            super().task_done(outcome)
            runners_seen.update(
                a["name"]
                for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("ado-runner")
            )

    repo_list = tmp_path / "repos.txt"
    repo_list.write_text("".join(f"{r}\n" for r in repos))
    settings = {
        "state": str(tmp_path / "s.db"),
        "work_root": str(tmp_path / "w"),
        "parallel": 3,
        "agent": {"cmd": script("c", CONCURRENCY) + f" {log}"},
        "ray": {"slots_per_runner": 2},
    }
    result = api.start(
        repo_list, api.ConfigSources(overrides=settings), io.StringIO(), progress=Spy(io.StringIO())
    )
    assert result.counts == {"changed": 12}
    running = peak = 0
    events = sorted(
        (float(t), kind) for kind, t in (line.split() for line in log.read_text().splitlines())
    )
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak <= 3
    assert len(runners_seen) == 2  # 3 slots over runners of at most 2 → two actors, not three


def test_runner_slots_split_parallel_over_few_runners() -> None:
    assert runner_slots(20, 25) == [20]
    assert runner_slots(100, 25) == [25, 25, 25, 25]
    assert runner_slots(30, 25) == [15, 15]
    assert sum(runner_slots(101, 25)) == 101 and len(runner_slots(101, 25)) == 5


def test_dry_run_commits_in_the_workspace_only(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    repo = make_repo("dry")
    result = run(tmp_path, [repo], script("write", WRITE) + " x", dry_run=True, name="dry")
    task = result.summary["tasks"][0]
    assert task["state"] == "changed" and task["commit"]
    assert git(repo, "branch", "--list", "ado/*") == ""
    workspace = Path(task["workspace"]) / "repo"
    assert "not pushed" in task["where"] and str(workspace) in task["where"]
    assert git(workspace, "rev-parse", "ado/dry") == task["commit"]


def test_resume_of_a_finished_run_runs_nothing_again(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    counter = tmp_path / "runs.log"
    agent = script(
        "count", f"open({str(counter)!r}, 'a').write('run\\n'); open('f', 'w').write('1')"
    )
    first = run(tmp_path, [make_repo("a"), make_repo("b")], agent)
    assert first.counts == {"changed": 2}
    sources = api.ConfigSources(
        overrides={"state": str(tmp_path / "state.db"), "work_root": str(tmp_path / "work")}
    )
    again = api.resume(first.run.run_id, sources, False, io.StringIO())
    assert again.counts == {"changed": 2} and again.exit_code == 0
    assert counter.read_text().count("run") == 2


def test_agent_clone_and_push_keys_are_held_and_waiting_time_is_recorded(
    ray_address: str,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    script: Callable[[str, str], str],
) -> None:
    import ray

    namespace = f"limits-{uuid.uuid4().hex[:6]}"  # a limiter actor of its own
    limits = {
        "command": {"requests": ["2/1s"]},
        "git:local": {"requests": ["100/1h"]},
        "forge:local": {"requests": ["100/1h"]},
    }
    repos = [make_repo(f"l{i}") for i in range(4)]
    result = run(
        tmp_path, repos, script("write", WRITE) + " x", limits=limits, ray={"namespace": namespace}
    )
    try:
        assert result.counts == {"changed": 4}
        sources = api.ConfigSources(
            overrides={"limits": limits, "ray": {"address": ray_address, "namespace": namespace}}
        )
        used = {row["key"]: row["requests"][0]["used"] for row in api.limits(sources)}
        assert used["git:local"] == used["forge:local"] == 4  # one clone and one push each
        assert used["command"] <= 2  # a 1 s window: the first two have left it by now
        waits = sorted(task["limit_wait_s"] for task in result.summary["tasks"])
        assert waits[0] < 0.5 and waits[-1] >= 0.5  # two ran at once, two waited for the window
    finally:
        ray.kill(ray.get_actor("ado-rate-limiter", namespace=namespace))
