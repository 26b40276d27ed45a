-- ado-ray state store, PostgreSQL schema version 2: each task's commit, kept as a git bundle.
--
-- Applied by PostgresStore.migrate() after 0001_init.sql, in the same way. The table and
-- its meaning are those of sql/sqlite/0002_bundles.sql; here data is BYTEA.

CREATE TABLE bundles (
    task_id TEXT PRIMARY KEY REFERENCES tasks (task_id) ON DELETE CASCADE,
    commit_sha TEXT NOT NULL,
    size BIGINT NOT NULL,
    data BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    CHECK (size = octet_length(data))
);

-- A bundle's pack is zlib-compressed already: store it out of line, without trying again.
ALTER TABLE bundles ALTER COLUMN data SET STORAGE EXTERNAL;
