"""A state file that is not a store, or holds what ado-ray cannot read, through the real CLI:
exit 2 with one message naming the file (and the table and row where known), never a
traceback; and commands that only read create no state file where there is none."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ado_ray.store.sqlite import SQLiteStore
from tests.store.conftest import RUN, create_run

pytestmark = pytest.mark.e2e
ADO = [sys.executable, "-m", "ado_ray"]
READERS = [["runs"], ["status", RUN], ["report", RUN], ["watch", RUN], ["resume", RUN]]


def ado(tmp_path: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ADO_STATE": str(state), "ADO_WORK_ROOT": str(tmp_path / "work")}
    return subprocess.run(
        [*ADO, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def refused(proc: subprocess.CompletedProcess[str], *wanted: str) -> None:
    """Exit 2, one `error:` line holding every `wanted` text, and no traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for text in wanted:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.fixture
def repos_txt(tmp_path: Path) -> Path:
    """A repository list that `batch` accepts (its checks pass before the store's)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (tmp_path / "repos.txt").write_text(f"{repo}\n")
    return tmp_path / "repos.txt"


def test_a_file_that_is_not_a_database(tmp_path: Path, repos_txt: Path) -> None:
    state = tmp_path / "state.db"
    junk = b"this is not a database\n" * 300
    state.write_bytes(junk)
    for args in [*READERS, ["batch", str(repos_txt), "--cmd", "true", "--no-ray"]]:
        proc = ado(tmp_path, state, *args)
        refused(proc, f"{state} is not an ado-ray state store", "file is not a database")
        assert "start the server" not in proc.stderr, args
    assert state.read_bytes() == junk
    assert not (tmp_path / "work").exists()


def test_a_damaged_database(tmp_path: Path) -> None:
    """A real store whose pages after the first are overwritten: the schema is there, the
    tables are not."""
    state = tmp_path / "state.db"
    with SQLiteStore(state) as store:
        store.migrate()
        create_run(store, n_tasks=200)
    with sqlite3.connect(state) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    data = bytearray(state.read_bytes())
    assert len(data) > 8 * 4096
    data[4096:] = bytes((i * 37 + 11) % 256 for i in range(len(data) - 4096))
    state.write_bytes(bytes(data))
    for args in [["runs"], ["status", RUN]]:
        refused(ado(tmp_path, state, *args), f"{state} is not an ado-ray state store, or is")


def test_an_empty_file_is_not_taken_for_an_empty_store(tmp_path: Path, repos_txt: Path) -> None:
    state = tmp_path / "state.db"
    state.touch()
    for args in [["runs"], ["status", RUN], ["batch", str(repos_txt), "--cmd", "true", "--no-ray"]]:
        refused(ado(tmp_path, state, *args), f"{state} is empty (0 bytes)", "delete it")
    assert state.stat().st_size == 0
    assert not (tmp_path / "work").exists()


def _store_with(tmp_path: Path, *statements: str) -> Path:
    state = tmp_path / "state.db"
    with SQLiteStore(state) as store:
        store.migrate()
        create_run(store)
    with sqlite3.connect(state) as conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()
    return state


def test_a_task_row_with_an_unknown_state(tmp_path: Path) -> None:
    state = _store_with(tmp_path, f"UPDATE tasks SET state = 'bogus' WHERE task_id = '{RUN}/t1'")
    for args in [["status", RUN], ["report", RUN], ["watch", RUN]]:
        refused(
            ado(tmp_path, state, *args),
            f"{state}: table tasks, row task_id='{RUN}/t1': column state holds 'bogus'",
            "expected one of queued, preparing",
        )
    listed = ado(tmp_path, state, "runs")  # counts states as they are
    assert listed.returncode == 0 and "bogus 1" in listed.stdout, listed.stderr


def test_a_run_row_with_bad_json(tmp_path: Path) -> None:
    state = _store_with(tmp_path, f"UPDATE runs SET config = '{{not json' WHERE run_id = '{RUN}'")
    for args in [["runs"], ["status", RUN], ["resume", RUN]]:
        refused(
            ado(tmp_path, state, *args),
            f"{state}: table runs, row run_id='{RUN}': column config holds '{{not json', "
            "which is not JSON",
        )


def test_a_checkpoint_row_with_an_unknown_step(tmp_path: Path) -> None:
    state = _store_with(
        tmp_path,
        f"UPDATE tasks SET commit_sha = 'abc' WHERE task_id = '{RUN}/t0'",  # status reads it
        "INSERT INTO checkpoints VALUES "
        f"('{RUN}/t0', 'teleported', '{{}}', '2025-01-31T12:00:00.000000+00:00')",
    )
    refused(
        ado(tmp_path, state, "status", RUN),
        f"table checkpoints, row task_id='{RUN}/t0', step='teleported': column step holds",
    )


def test_commands_that_only_read_create_no_state_file(tmp_path: Path) -> None:
    state = tmp_path / "nowhere" / "state.db"
    listed = ado(tmp_path, state, "runs")
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "", "")
    assert ado(tmp_path, state, "runs", "--json").stdout.strip() == "[]"
    for args in READERS[1:]:
        refused(ado(tmp_path, state, *args), f"no run '{RUN}': there is no state store at {state}")
    assert not (tmp_path / "nowhere").exists()
