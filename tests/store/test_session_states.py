"""Stored agent session files (schema version 5), on every backend: written with the
attempt's session row through `apply` (fenced like every write), read back as the latest
attempt's, and added to a store an older ado-ray made."""

from __future__ import annotations

import pytest

from ado_ray.errors import LeaseLostError, StoreError
from ado_ray.models import Event, SessionEvent, SessionStateEvent
from ado_ray.store import Store, open_store
from ado_ray.store.postgres import batch_statements
from ado_ray.store.sqlfiles import load_migrations
from tests.store.conftest import RUN, Raw, create_run, only_migrations, open_raw


def interrupted(task_id: str, attempt: int, session_id: str) -> SessionEvent:
    usage = {"provider": "claude", "mode": "api"}
    return SessionEvent(task_id, attempt, "claude", session_id, None, 1.0, "a.log", usage, "x")


def test_the_latest_attempts_state_is_read_back(store: Store, raw: Raw) -> None:
    t0, t1, _ = create_run(store)
    assert store.session_state(t0) is None
    store.apply([interrupted(t0, 1, "s1"), SessionStateEvent(t0, 1, "s1", b"\x1f\x8bfirst")])
    store.apply([interrupted(t0, 2, "s2"), SessionStateEvent(t0, 2, "s2", b"\x00second\xff")])
    store.apply([SessionStateEvent(t1, 1, "other", b"t1")])
    assert store.session_state(t0) == ("s2", b"\x00second\xff")
    assert store.session_state(t1) == ("other", b"t1")
    rows = {(r["task_id"], r["attempt"]): r for r in raw.rows("session_states")}
    assert rows[t0, 1]["size"] == len(b"\x1f\x8bfirst")
    replayed = dict(rows[t0, 2])
    store.apply([SessionStateEvent(t0, 2, "s2", b"\x00second\xff")])  # a replay: no change
    again = {(r["task_id"], r["attempt"]): r for r in raw.rows("session_states")}
    assert again[t0, 2] == replayed
    store.apply([SessionStateEvent(t0, 2, "s2", b"replaced")])  # same attempt: replaced
    assert store.session_state(t0) == ("s2", b"replaced")
    assert len(raw.rows("session_states")) == 3
    raw.delete_run(RUN)  # the task's rows go with it
    assert raw.rows("session_states") == []


def test_a_state_is_fenced_like_every_write(store: Store) -> None:
    (t0,) = create_run(store, n_tasks=1)
    (other,) = create_run(store, "run-0002", 1)
    old = store.acquire_run_lock(RUN, "driver-a", 60).fence
    store.break_run_lock(RUN)  # generation + 1: driver-a's writes are refused from now on
    with pytest.raises(LeaseLostError):
        store.apply([SessionStateEvent(t0, 1, "s", b"late")], fence=old)
    fence = store.acquire_run_lock(RUN, "driver-b", 60).fence
    with pytest.raises(StoreError, match="belongs to run run-0002"):
        store.apply([SessionStateEvent(other, 1, "s", b"stray")], fence=fence)
    with pytest.raises(StoreError, match="no-such-task"):
        store.apply([SessionStateEvent("no-such-task", 1, "s", b"x")])
    assert store.session_state(t0) is None and store.session_state(other) is None
    store.apply([SessionStateEvent(t0, 1, "s", b"ok")], fence=fence)
    assert store.session_state(t0) == ("s", b"ok")


def test_postgres_writes_states_in_the_batch_after_the_sessions() -> None:
    events: list[Event] = [SessionStateEvent("t", 1, "s", b"a"), interrupted("t", 1, "s")]
    names = [name for name, _ in batch_statements(events)]
    assert names.index("upsert_sessions") < names.index("upsert_session_state")


def test_migrate_adds_session_states_to_a_version_4_store(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store (a database file for SQLite) made by an ado-ray that knew versions 1-4 gets
    version 5, keeping its data."""
    v4_only = only_migrations(monkeypatch, 4)
    assert [v for v, _, _ in v4_only["sqlite"]] == [1, 2, 3, 4]
    old = open_store(store_url)
    try:
        old.migrate()
        (t0,) = create_run(old, n_tasks=1)
        old.apply([interrupted(t0, 1, "s1")])
        with pytest.raises(StoreError, match="session_states"):
            old.session_state(t0)
    finally:
        old.close()
    monkeypatch.undo()
    new = open_store(store_url)
    try:
        new.migrate()
        assert [s.session_id for s in new.sessions(t0)] == ["s1"]
        assert new.session_state(t0) is None
        new.apply([SessionStateEvent(t0, 1, "s1", b"state")])
        assert new.session_state(t0) == ("s1", b"state")
    finally:
        new.close()
    raw = open_raw(store_url)
    try:
        versions = [row["version"] for row in raw.rows("schema_version")]
    finally:
        raw.close()
    assert versions[:5] == [1, 2, 3, 4, 5]
    assert versions == [v for v, _, _ in load_migrations("sqlite")]
