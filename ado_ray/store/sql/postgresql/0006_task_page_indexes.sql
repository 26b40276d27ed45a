-- ado-ray state store, PostgreSQL schema version 6: an index for the latest outcomes of a
-- run.
--
-- Applied by PostgresStore.migrate() after the earlier versions, in the same way; it
-- depends on nothing after 0004. The progress display and `ado watch` read a run's latest
-- outcomes (recent_tasks: ORDER BY updated_at DESC LIMIT n) about once a second; without
-- it each read sorts every task of the run. (Pages in list order use tasks_run_seq, which
-- 0001_init.sql made; SQLite gets it in its 0006.)

CREATE INDEX tasks_run_updated ON tasks (run_id, updated_at);
