-- ado-ray state store, SQLite schema version 5: the files of interrupted agent sessions.
--
-- Applied by SQLiteStore.migrate() after the earlier versions, in the same way. An agent
-- CLI keeps its session (Claude Code's transcript, Codex's rollout, ...) in files of the
-- task's own HOME on the node that ran it; `--resume SESSION` needs them. When an attempt
-- is interrupted, the runner stores those files here (a gzip'd tar of paths relative to
-- the task's directory, engine/session_state.py; up to agent.session_state_max_mb), so a
-- resume on another node restores them before it starts the agent. One row per attempt,
-- like sessions; resume reads the latest (session_state). Never credentials.

CREATE TABLE session_states (
    task_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,      -- the agent attempt (sessions.attempt) that left them
    session_id TEXT NOT NULL,      -- the agent's own session id, as in sessions
    size INTEGER NOT NULL,         -- length of data in bytes, readable without reading data
    data BLOB NOT NULL,            -- tar.gz of the session's files
    created_at TEXT NOT NULL,
    PRIMARY KEY (task_id, attempt),
    CHECK (size = length(data))
);
