-- ado-ray state store, SQLite schema version 1.
--
-- Applied once by SQLiteStore.migrate() inside a BEGIN IMMEDIATE transaction and recorded
-- in schema_version. Times are ISO-8601 UTC text ('2025-01-31T12:00:00.000000+00:00'),
-- so they sort as text. JSON columns hold text written by json.dumps.

CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL,
    branch TEXT NOT NULL,
    config TEXT NOT NULL,          -- JSON: the resolved config, secrets masked
    repo_list TEXT NOT NULL        -- path of the repository list
);

CREATE INDEX runs_created_at ON runs (created_at);

CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,          -- position in the repository list
    repo_key TEXT NOT NULL,
    repo TEXT NOT NULL,            -- JSON: RepoSpec {url, key, name, ref, vars, line}
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    base_sha TEXT,
    branch TEXT,
    commit_sha TEXT,
    failure_class TEXT,
    error TEXT,
    workspace TEXT,
    lease_owner TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (run_id, repo_key)
);

CREATE INDEX tasks_run_state ON tasks (run_id, state);

CREATE TABLE sessions (
    task_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    agent TEXT NOT NULL,
    session_id TEXT,
    exit_code INTEGER,
    duration_s REAL NOT NULL,
    log_path TEXT NOT NULL,
    usage TEXT NOT NULL,           -- JSON
    outcome TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE usage_records (
    task_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    key TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (task_id, attempt, key)
);

CREATE TABLE checkpoints (
    task_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    step TEXT NOT NULL,
    data TEXT NOT NULL,            -- JSON
    created_at TEXT NOT NULL,
    PRIMARY KEY (task_id, step)
);

CREATE TABLE run_locks (
    run_id TEXT PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
    owner TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
