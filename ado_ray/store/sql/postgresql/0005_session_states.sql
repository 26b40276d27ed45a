-- ado-ray state store, PostgreSQL schema version 5: the files of interrupted agent sessions.
--
-- Applied by PostgresStore.migrate() after the earlier versions, in the same way. The table
-- and its meaning are those of sql/sqlite/0005_session_states.sql; here data is BYTEA.

CREATE TABLE session_states (
    task_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    size BIGINT NOT NULL,
    data BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, attempt),
    CHECK (size = octet_length(data))
);

-- gzip'd already: store it out of line, without trying to compress it again.
ALTER TABLE session_states ALTER COLUMN data SET STORAGE EXTERNAL;
