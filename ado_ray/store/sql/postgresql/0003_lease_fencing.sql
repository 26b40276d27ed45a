-- ado-ray state store, PostgreSQL schema version 3: the run lease's generation (fencing token).
--
-- Applied by PostgresStore.migrate() after 0002_bundles.sql, in the same way. The columns
-- and their meaning are those of sql/sqlite/0003_lease_fencing.sql; here renewed_at is a
-- TIMESTAMPTZ. A write under a fence reads the lease row FOR SHARE in its own transaction,
-- so a takeover waits for that write to commit, and a write waits for a takeover in progress
-- (and is then refused).

ALTER TABLE run_locks
    ADD COLUMN generation BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN renewed_at TIMESTAMPTZ;
