"""Hostile repository lists and placeholders, through the real `ado` CLI (issue 9).

Credentials in URLs and injection-shaped targets are input errors: exit 2, `file:line`,
what was expected, the secret never echoed and nothing stored. Placeholders reach a shell
only when the user writes `sh -c`, and `{name!q}` is the safe form there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import create_repo

pytestmark = pytest.mark.e2e
SECRET = "ghp_s3cretTOKEN0123456789"
DRY = ("--no-ray", "--dry-run")
NO_CREDENTIALS = (
    "expected no credentials in the URL; put the token in the forge's token_env or a git "
    "credential helper, not in the URL"
)


def ado(tmp_path: Path, *args: str, work: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ADO_STATE": str(tmp_path / "state.db"),
        "ADO_WORK_ROOT": str(work or tmp_path / "work"),
    }
    return subprocess.run(
        [sys.executable, "-m", "ado_ray", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def stored_tasks(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "state.db") as conn:
        return [json.loads(row[0])["url"] for row in conn.execute("SELECT repo FROM tasks")]


CREDENTIALS = [
    # line, its message after "repos.txt:N: "
    (f"https://{SECRET}@example.com/o/x.git",
     f"'https://***@example.com/o/x.git' has a user or token before '@'; {NO_CREDENTIALS}"),
    (f"https://oauth2:{SECRET}@example.com/o/a",
     f"'https://***@example.com/o/a' contains a password; {NO_CREDENTIALS}"),
    (f"http://{SECRET}:x-oauth-basic@example.com/o/b",
     f"'http://***@example.com/o/b' contains a password; {NO_CREDENTIALS}"),
    (f"ssh://git:{SECRET}@example.com/o/c",
     f"'ssh://git:***@example.com/o/c' contains a password; {NO_CREDENTIALS}"),
    (f"https://example.com/o/d?private_token={SECRET}",
     f"'https://example.com/o/d?***' has a query string or fragment; {NO_CREDENTIALS}"),
    (f"https://{SECRET}@example.com/o/e@bad..ref",
     "'https://***@example.com/o/e@bad..ref' has '..' or '//' in the ref 'bad..ref'; expected"),
    (f"'https://{SECRET}@example.com/o/f", "\"'https://***@example.com/o/f\" cannot be split"),
]  # fmt: skip


def test_credentials_in_urls_exit_2_masked_and_never_stored(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    good = make_repo("good")
    (tmp_path / "ok.txt").write_text(f"{good}\n")
    first = ado(tmp_path, "batch", "ok.txt", "--cmd", "true", "--no-ray", "--dry-run")
    assert first.returncode == 0, first.stderr
    lines = [f"{good}", *(line for line, _ in CREDENTIALS)]
    (tmp_path / "repos.txt").write_text("# fleet\n" + "\n".join(lines) + "\n")
    for args in (["--plan"], ["--no-ray"], ["--no-ray", "--dry-run"]):
        proc = ado(tmp_path, "batch", "repos.txt", "--cmd", "true", *args)
        assert proc.returncode == 2, proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
        errors = [line.removeprefix("error: ") for line in proc.stderr.splitlines()]
        for number, (_, message) in enumerate(CREDENTIALS, start=3):
            assert any(line.startswith(f"repos.txt:{number}: {message}") for line in errors)
    assert SECRET.encode() not in (tmp_path / "state.db").read_bytes()
    assert stored_tasks(tmp_path) == [str(good)]  # the first run's task, nothing new


def test_an_ssh_user_name_is_not_a_credential(tmp_path: Path) -> None:
    (tmp_path / "repos.txt").write_text("git@example.com:o/n.git\nssh://deploy@example.com/o/m\n")
    proc = ado(tmp_path, "batch", "repos.txt", "--plan", "--cmd", "true")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["git@example.com:o/n.git", "ssh://deploy@example.com/o/m"]


INJECTIONS = [
    # line, what its message says was found
    ("'ssh://-oProxyCommand=touch pwned/x'", "has a user, host or path starting with '-'"),
    ("ssh://-oProxyCommand=touch%20pwned/x", "has a user, host or path starting with '-'"),
    ("ssh://-oProxyCommand=touch@host/x", "has a user, host or path starting with '-'"),
    ("-oProxyCommand=touch:x/y", "has a user, host or path starting with '-'"),
    ("git@-host:o/n", "has a user, host or path starting with '-'"),
    ("git@host:-o/n", "has a user, host or path starting with '-'"),
    ("'ext::sh -c touch% pwned'", "is git's transport::address form"),
    ("ext::sh", "is git's transport::address form"),
    ("fd::3", "is git's transport::address form"),
    ("fd::3/x", "is git's transport::address form"),
    ("missing/repo", "does not exist"),
    ("not-a-repo", "is not a git repository"),
    ("empty-dot-git", "is not a git repository"),
]


def test_injection_shaped_targets_are_input_errors_before_anything_runs(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    good = make_repo("good")
    (tmp_path / "not-a-repo").mkdir()
    (tmp_path / "empty-dot-git" / ".git").mkdir(parents=True)
    lines = [f"{good}", *(f"{line}  # a comment" for line, _ in INJECTIONS)]
    (tmp_path / "repos.txt").write_text("\n".join(lines) + "\n")
    for args in (["--plan"], ["--no-ray"]):
        proc = ado(tmp_path, "batch", "repos.txt", "--cmd", "touch pwned-by-agent", *args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        errors = [line.removeprefix("error: ") for line in proc.stderr.splitlines()]
        assert len(errors) == len(INJECTIONS)
        for number, ((_, found), line) in enumerate(zip(INJECTIONS, errors, strict=True), 2):
            assert line.startswith(f"repos.txt:{number}: ") and f" {found}" in line
            assert "; expected " in line
    assert not (tmp_path / "state.db").exists()
    assert not (tmp_path / "work").exists()
    assert not list(tmp_path.rglob("pwned*"))


def test_placeholders_in_sh_c_are_safe_with_q_and_in_argv_as_they_are(tmp_path: Path) -> None:
    """A repository at `x;touch pwned`, a variable and a work root with shell syntax in them."""
    repo = create_repo(tmp_path / "x;touch pwned")
    work = tmp_path / "work;touch pwned-by-path"
    (tmp_path / "repos.txt").write_text(f"'{repo}' t='y;touch pwned-by-var'\n")
    quoted = "sh -c 'printf \"%s\\n\" {repo_name!q} {t!q} {repo_path!q} > ../quoted.txt'"
    proc = ado(tmp_path, "batch", "repos.txt", "--cmd", quoted, *DRY, work=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [task_dir] = work.glob("runs/*/*")
    checkout = task_dir / "repo"  # removed by now: nothing changed in it
    assert (checkout.parent / "quoted.txt").read_text().splitlines() == [
        "x-touch-pwned",
        "y;touch pwned-by-var",
        str(checkout),
    ]
    argv = "printf '%s\\n' {repo_name} {t} {repo_path}"
    proc = ado(tmp_path, "batch", "repos.txt", "--cmd", argv, *DRY, "--name", "argv", work=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = [log.read_text() for log in work.glob("runs/*/*/logs/attempt-1.stdout.log")]
    [lines] = [text.splitlines() for text in printed if text]
    assert lines[:2] == ["x-touch-pwned", "y;touch pwned-by-var"]
    assert Path(lines[2]).name == "repo" and ";touch pwned-by-path" in lines[2]
    assert not list(tmp_path.rglob("pwned*"))
    # The control: the plain form inside sh -c is parsed by that shell, which is why !q exists.
    plain = "sh -c 'echo {t}'"
    proc = ado(tmp_path, "batch", "repos.txt", "--cmd", plain, *DRY, "--name", "plain", work=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [path.name for path in tmp_path.rglob("pwned*")] == ["pwned-by-var"]


def test_unknown_conversions_are_usage_errors(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    (tmp_path / "repos.txt").write_text(f"{make_repo('r')}\n")
    proc = ado(tmp_path, "batch", "repos.txt", "--plan", "--cmd", "sh -c 'echo {repo_name!r}'")
    assert proc.returncode == 2
    assert "'{repo_name!r}' has an unknown conversion !r; expected {repo_name} or" in proc.stderr
    assert not (tmp_path / "state.db").exists()
