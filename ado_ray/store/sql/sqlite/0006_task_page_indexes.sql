-- ado-ray state store, SQLite schema version 6: indexes for reading a run's tasks a page
-- at a time.
--
-- Applied by SQLiteStore.migrate() after the earlier versions, in the same way; it depends
-- on nothing after 0004. The driver hands out a run's tasks, and reports read them, in
-- pages of list order (task_page: run_id, seq > last seen, LIMIT n), so that memory stays
-- flat in the run's size; the progress display and `ado watch` read the latest outcomes
-- (recent_tasks: ORDER BY updated_at DESC LIMIT n). Without these, each page sorts every
-- task of the run.

CREATE INDEX tasks_run_seq ON tasks (run_id, seq);
CREATE INDEX tasks_run_updated ON tasks (run_id, updated_at);
