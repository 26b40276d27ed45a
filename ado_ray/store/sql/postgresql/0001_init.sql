-- ado-ray state store, PostgreSQL schema version 1.
--
-- Applied once by PostgresStore.migrate(), in one transaction that first takes the advisory
-- lock `migrate_lock` (queries.sql), and recorded in schema_version. The tables and their
-- meaning are those of sql/sqlite/0001_init.sql; here times are TIMESTAMPTZ and JSON
-- columns are JSONB.

CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    status TEXT NOT NULL,
    branch TEXT NOT NULL,
    config JSONB NOT NULL,         -- the resolved config, secrets masked
    repo_list TEXT NOT NULL,       -- path of the repository list
    run_no BIGINT GENERATED ALWAYS AS IDENTITY  -- insertion order: breaks created_at ties
);

-- `ado runs`: newest first
CREATE INDEX runs_created_at ON runs (created_at, run_no);

CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,          -- position in the repository list
    repo_key TEXT NOT NULL,
    repo JSONB NOT NULL,           -- RepoSpec {url, key, name, ref, vars, line}
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    base_sha TEXT,
    branch TEXT,
    commit_sha TEXT,
    failure_class TEXT,
    error TEXT,
    workspace TEXT,
    lease_owner TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (run_id, repo_key)
);

-- counts per state (`ado runs`, `ado status`), requeue on resume
CREATE INDEX tasks_run_state ON tasks (run_id, state);
-- list_tasks in repository-list order
CREATE INDEX tasks_run_seq ON tasks (run_id, seq);

CREATE TABLE sessions (
    task_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    agent TEXT NOT NULL,
    session_id TEXT,
    exit_code INTEGER,
    duration_s DOUBLE PRECISION NOT NULL,
    log_path TEXT NOT NULL,
    usage JSONB NOT NULL,
    outcome TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE usage_records (
    task_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    key TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, attempt, key)
);

CREATE TABLE checkpoints (
    task_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    step TEXT NOT NULL,
    data JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, step)
);

CREATE TABLE run_locks (
    run_id TEXT PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
    owner TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
