-- ado-ray state store, PostgreSQL schema version 4: when each task changed state, and where.
--
-- Applied by PostgresStore.migrate() after the earlier versions, in the same way. The table,
-- its trigger and their meaning are those of sql/sqlite/0004_task_transitions.sql; here `at`
-- is a TIMESTAMPTZ (the now() of the writing transaction) and the trigger calls a function.

CREATE TABLE task_transitions (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    run_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    runner TEXT,
    at TIMESTAMPTZ NOT NULL
);

CREATE INDEX task_transitions_run ON task_transitions (run_id, seq);
CREATE INDEX task_transitions_task ON task_transitions (task_id);  -- the cascade's lookups

CREATE FUNCTION ado_record_task_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_transitions (task_id, run_id, state, attempt, runner, at)
    VALUES (
        NEW.task_id, NEW.run_id, NEW.state, NEW.attempt,
        coalesce(NEW.lease_owner, OLD.lease_owner), NEW.updated_at
    );
    RETURN NULL;
END
$$;

CREATE TRIGGER task_transitions_record AFTER UPDATE OF state ON tasks
FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state)
EXECUTE FUNCTION ado_record_task_transition();
