-- ado-ray state store, SQLite schema version 3: the run lease's generation (fencing token).
--
-- Applied by SQLiteStore.migrate() after 0002_bundles.sql, in the same way. A run's lease
-- row is no longer deleted when its driver stops: it keeps its generation, which goes up at
-- every change of holder (a takeover, a release). A driver's writes carry the generation it
-- was given (a fence) and are applied only while the row still has it, checked in the
-- write's own transaction: a driver that lost its lease cannot change the run any more.
-- A released lease has owner '' and has expired; renewed_at is when the holder last took or
-- renewed it (NULL in rows written before this version).

ALTER TABLE run_locks ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE run_locks ADD COLUMN renewed_at TEXT;
