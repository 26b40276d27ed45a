-- ado-ray state store, SQLite schema version 2: each task's commit, kept as a git bundle.
--
-- Applied by SQLiteStore.migrate() after 0001_init.sql, in the same way. The bundle holds
-- base..commit (the commit and the objects it adds to its base), so publish, `ado publish`
-- of a dry run and a resume on another node can rebuild the commit from a fresh clone of
-- the base. One row per task: a new commit replaces the old one (upsert_bundle).

CREATE TABLE bundles (
    task_id TEXT PRIMARY KEY REFERENCES tasks (task_id) ON DELETE CASCADE,
    commit_sha TEXT NOT NULL,      -- the commit the bundle's one ref points at
    size INTEGER NOT NULL,         -- length of data in bytes, readable without reading data
    data BLOB NOT NULL,            -- the bundle file, as `git bundle create` wrote it
    created_at TEXT NOT NULL,      -- when this bundle (this commit_sha and data) was stored
    CHECK (size = length(data))
);
