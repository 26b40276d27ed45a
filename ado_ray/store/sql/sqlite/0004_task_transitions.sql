-- ado-ray state store, SQLite schema version 4: when each task changed state, and where.
--
-- Applied by SQLiteStore.migrate() after the earlier versions, in the same way. The tasks
-- row keeps only a task's latest state and time (updated_at), which is too little for a
-- timeline of the run; this table keeps every change of state, written by a trigger on
-- tasks, so no write path of the store changes. One row per real change: an update that
-- keeps the state (a replay, a new base_sha) writes none.
--
-- `at` is the updated_at of the change (the time the sink wrote it), `attempt` the task's
-- attempt after it (a retry's `preparing` still shows the previous attempt: the attempt
-- goes up with `running`), `runner` the runner that held the task: its lease_owner, or
-- the one it had just before a terminal state cleared it. `seq` orders changes that share
-- a time (one batch of events). Reports derive each task's phases from these rows
-- (ado_ray/report_timeline.py); runs recorded before this version have none.

CREATE TABLE task_transitions (
    seq INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    run_id TEXT NOT NULL,          -- the task's run, so that a report reads one index range
    state TEXT NOT NULL,           -- the new state
    attempt INTEGER NOT NULL,
    runner TEXT,
    at TEXT NOT NULL
);

CREATE INDEX task_transitions_run ON task_transitions (run_id, seq);
CREATE INDEX task_transitions_task ON task_transitions (task_id);  -- the cascade's lookups

CREATE TRIGGER task_transitions_record AFTER UPDATE OF state ON tasks
WHEN NEW.state IS NOT OLD.state
BEGIN
    INSERT INTO task_transitions (task_id, run_id, state, attempt, runner, at)
    VALUES (
        NEW.task_id, NEW.run_id, NEW.state, NEW.attempt,
        coalesce(NEW.lease_owner, OLD.lease_owner), NEW.updated_at
    );
END;
