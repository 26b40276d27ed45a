-- Queries of SQLiteStore, one per `-- name:` section, loaded once by sqlite.py.
--
-- Parameters are named (:name). Times (:now, :created_at, :expires_at) are ISO-8601 UTC
-- text as written by sqlite.py, so comparing them as text compares the instants.
-- Booleans are 0/1. Lists are JSON arrays, read with json_each.

-- name: create_schema_version
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL
);

-- name: applied_versions
SELECT version FROM schema_version ORDER BY version;

-- name: record_version
-- :version, :now
INSERT INTO schema_version (version, applied_at) VALUES (:version, :now);

-- name: insert_run
INSERT INTO runs (run_id, name, created_at, status, branch, config, repo_list)
VALUES (:run_id, :name, :created_at, :status, :branch, :config, :repo_list);

-- name: insert_task
INSERT INTO tasks (
    task_id, run_id, seq, repo_key, repo, state, attempt, base_sha, branch, commit_sha,
    failure_class, error, workspace, lease_owner, created_at, updated_at
) VALUES (
    :task_id, :run_id, :seq, :repo_key, :repo, :state, :attempt, :base_sha, :branch,
    :commit_sha, :failure_class, :error, :workspace, :lease_owner, :created_at, :updated_at
);

-- name: get_run
-- :run_id
SELECT * FROM runs WHERE run_id = :run_id;

-- name: find_runs_by_prefix
-- :prefix; two rows are enough to tell "unique" from "ambiguous".
SELECT * FROM runs
WHERE substr(run_id, 1, length(:prefix)) = :prefix
ORDER BY run_id
LIMIT 2;

-- name: list_runs
-- :limit; newest first (rowid breaks ties between runs created in the same microsecond).
SELECT * FROM runs ORDER BY created_at DESC, rowid DESC LIMIT :limit;

-- name: count_tasks
-- :run_ids (JSON array); one row per run and state present.
SELECT run_id, state, count(*) AS n
FROM tasks
WHERE run_id IN (SELECT value FROM json_each(:run_ids))
GROUP BY run_id, state;

-- name: set_run_status
-- :run_id, :status
UPDATE runs SET status = :status WHERE run_id = :run_id;

-- name: list_tasks
-- :run_id
SELECT * FROM tasks WHERE run_id = :run_id ORDER BY seq, task_id;

-- name: requeue_tasks
-- :run_id, :states (JSON array), :now. A requeued task has no runner, so no lease.
UPDATE tasks
SET state = 'queued', lease_owner = NULL, updated_at = :now
WHERE run_id = :run_id AND state IN (SELECT value FROM json_each(:states));

-- name: apply_task_update
-- :task_id, :state, :now, every TaskUpdate column (NULL keeps the current value),
-- :clear_failure (0/1: failure_class and error are reset before the new values apply),
-- :terminal (0/1: the state is terminal, so lease_owner is cleared).
-- The WHERE clause skips an update that would change nothing, so replaying an event
-- leaves the row exactly as it was, updated_at included. Zero rows changed therefore
-- means "no such task" or "nothing to change"; task_exists tells them apart.
UPDATE tasks
SET state = :state,
    attempt = coalesce(:attempt, attempt),
    base_sha = coalesce(:base_sha, base_sha),
    branch = coalesce(:branch, branch),
    commit_sha = coalesce(:commit_sha, commit_sha),
    failure_class = coalesce(:failure_class, CASE WHEN :clear_failure THEN NULL ELSE failure_class END),
    error = coalesce(:error, CASE WHEN :clear_failure THEN NULL ELSE error END),
    workspace = coalesce(:workspace, workspace),
    lease_owner = CASE WHEN :terminal THEN NULL ELSE coalesce(:lease_owner, lease_owner) END,
    updated_at = :now
WHERE task_id = :task_id
  AND (state, attempt, base_sha, branch, commit_sha, failure_class, error, workspace, lease_owner)
      IS NOT (
          :state,
          coalesce(:attempt, attempt),
          coalesce(:base_sha, base_sha),
          coalesce(:branch, branch),
          coalesce(:commit_sha, commit_sha),
          coalesce(:failure_class, CASE WHEN :clear_failure THEN NULL ELSE failure_class END),
          coalesce(:error, CASE WHEN :clear_failure THEN NULL ELSE error END),
          coalesce(:workspace, workspace),
          CASE WHEN :terminal THEN NULL ELSE coalesce(:lease_owner, lease_owner) END
      );

-- name: task_exists
-- :task_id
SELECT 1 FROM tasks WHERE task_id = :task_id;

-- name: upsert_checkpoint
-- :task_id, :step, :data (JSON), :now. A replay overwrites data and keeps created_at.
INSERT INTO checkpoints (task_id, step, data, created_at)
VALUES (:task_id, :step, :data, :now)
ON CONFLICT (task_id, step) DO UPDATE SET data = excluded.data;

-- name: upsert_session
-- :task_id, :attempt, the SessionEvent fields (:usage as JSON), :now.
INSERT INTO sessions (
    task_id, attempt, agent, session_id, exit_code, duration_s, log_path, usage, outcome,
    created_at
) VALUES (
    :task_id, :attempt, :agent, :session_id, :exit_code, :duration_s, :log_path, :usage,
    :outcome, :now
)
ON CONFLICT (task_id, attempt) DO UPDATE SET
    agent = excluded.agent,
    session_id = excluded.session_id,
    exit_code = excluded.exit_code,
    duration_s = excluded.duration_s,
    log_path = excluded.log_path,
    usage = excluded.usage,
    outcome = excluded.outcome;

-- name: upsert_usage
-- :task_id, :attempt, :key, :input_tokens, :output_tokens, :cost_usd, :now.
INSERT INTO usage_records (
    task_id, attempt, key, input_tokens, output_tokens, cost_usd, created_at
) VALUES (
    :task_id, :attempt, :key, :input_tokens, :output_tokens, :cost_usd, :now
)
ON CONFLICT (task_id, attempt, key) DO UPDATE SET
    input_tokens = excluded.input_tokens,
    output_tokens = excluded.output_tokens,
    cost_usd = excluded.cost_usd;

-- name: upsert_bundle
-- :task_id, :commit_sha, :size (bytes), :data (BLOB), :now. A different bundle replaces
-- the row, created_at included; a replay of the same one (WHERE) changes nothing.
INSERT INTO bundles (task_id, commit_sha, size, data, created_at)
VALUES (:task_id, :commit_sha, :size, :data, :now)
ON CONFLICT (task_id) DO UPDATE SET
    commit_sha = excluded.commit_sha,
    size = excluded.size,
    data = excluded.data,
    created_at = excluded.created_at
WHERE (bundles.commit_sha, bundles.data) IS NOT (excluded.commit_sha, excluded.data);

-- name: upsert_session_state
-- :task_id, :attempt, :session_id, :size (bytes), :data (BLOB), :now. Replaces the
-- attempt's row, created_at included; a replay of the same one (WHERE) changes nothing.
INSERT INTO session_states (task_id, attempt, session_id, size, data, created_at)
VALUES (:task_id, :attempt, :session_id, :size, :data, :now)
ON CONFLICT (task_id, attempt) DO UPDATE SET
    session_id = excluded.session_id,
    size = excluded.size,
    data = excluded.data,
    created_at = excluded.created_at
WHERE (session_states.session_id, session_states.data)
    IS NOT (excluded.session_id, excluded.data);

-- name: transitions
-- :run_id; every change of state of the run's tasks, in the order they were written.
SELECT task_id, state, attempt, runner, at FROM task_transitions
WHERE run_id = :run_id ORDER BY seq;

-- name: bundle
-- :task_id
SELECT commit_sha, data FROM bundles WHERE task_id = :task_id;

-- name: session_state
-- :task_id; the latest attempt's stored session files.
SELECT attempt, session_id, data FROM session_states
WHERE task_id = :task_id ORDER BY attempt DESC LIMIT 1;

-- name: acquire_run_lock
-- :run_id, :owner, :expires_at, :now. Inserts the lease (generation 1), or takes it over when
-- it is already this owner's (renewal: same generation) or has expired (another holder:
-- generation + 1); otherwise leaves it alone. The caller then reads it with run_leases, in
-- the same transaction. (SET expressions see the row as it was before the update.)
INSERT INTO run_locks (run_id, owner, expires_at, generation, renewed_at)
VALUES (:run_id, :owner, :expires_at, 1, :now)
ON CONFLICT (run_id) DO UPDATE SET
    generation = CASE
        WHEN run_locks.owner = excluded.owner THEN run_locks.generation
        ELSE run_locks.generation + 1
    END,
    owner = excluded.owner,
    expires_at = excluded.expires_at,
    renewed_at = excluded.renewed_at
WHERE run_locks.owner = excluded.owner OR run_locks.expires_at <= :now;

-- name: run_leases
-- :run_ids (JSON array), :now; one row per run that has a lease row. `expired` is 0/1.
SELECT run_id, owner, generation, renewed_at, expires_at, expires_at <= :now AS expired
FROM run_locks
WHERE run_id IN (SELECT value FROM json_each(:run_ids));

-- name: foreign_tasks
-- :task_ids (JSON array), :run_id: one task of the list that belongs to another run, if any.
SELECT task_id, run_id FROM tasks
WHERE task_id IN (SELECT value FROM json_each(:task_ids)) AND run_id != :run_id
LIMIT 1;

-- name: release_run_lock
-- :run_id, :owner, :now. Ends the owner's lease: the row stays, with owner '', expired, and
-- the next generation, so writes fenced with the old one are refused from now on.
-- Someone else's lease is left alone.
UPDATE run_locks SET owner = '', generation = generation + 1, expires_at = :now
WHERE run_id = :run_id AND owner = :owner AND owner != '';

-- name: break_run_lock
-- :run_id, :now. As release_run_lock, whoever the owner.
UPDATE run_locks SET owner = '', generation = generation + 1, expires_at = :now
WHERE run_id = :run_id AND owner != '';

-- --- bulk reads of a run's tasks (a page at a time: memory flat in the run's size) -------

-- name: task_page
-- :run_id, :after_seq, :limit, :unfinished (0/1: only tasks in no terminal state), the
-- run's tasks after `after_seq` in list order. Index tasks_run_seq (0006).
SELECT * FROM tasks INDEXED BY tasks_run_seq
WHERE run_id = :run_id AND seq > :after_seq
  AND (NOT :unfinished
       OR state NOT IN ('changed', 'no_change', 'failed', 'skipped', 'cancelled'))
ORDER BY seq
LIMIT :limit;

-- name: tasks_in_states
-- :run_id, :states (JSON array), :limit; in list order. Index tasks_run_state (named: by
-- tasks_run_seq SQLite would scan every task of the run when few are in those states).
SELECT * FROM tasks INDEXED BY tasks_run_state
WHERE run_id = :run_id AND state IN (SELECT value FROM json_each(:states))
ORDER BY seq
LIMIT :limit;

-- name: recent_tasks
-- :run_id, :limit; finished tasks, the latest first. Index tasks_run_updated (0006).
SELECT * FROM tasks INDEXED BY tasks_run_updated
WHERE run_id = :run_id
  AND state IN ('changed', 'no_change', 'failed', 'skipped', 'cancelled')
ORDER BY updated_at DESC, seq DESC
LIMIT :limit;

-- name: get_task
-- :task_id
SELECT * FROM tasks WHERE task_id = :task_id;

-- name: checkpoints_of
-- :task_ids (JSON array)
SELECT task_id, step, data FROM checkpoints
WHERE task_id IN (SELECT value FROM json_each(:task_ids));

-- name: sessions_of
-- :task_ids (JSON array); each task's in attempt order.
SELECT * FROM sessions
WHERE task_id IN (SELECT value FROM json_each(:task_ids))
ORDER BY task_id, attempt;

-- name: transitions_of
-- :task_ids (JSON array); in the order they were written.
SELECT task_id, state, attempt, runner, at FROM task_transitions
WHERE task_id IN (SELECT value FROM json_each(:task_ids))
ORDER BY seq;

-- name: run_cost
-- :run_id; what the run's agent sessions cost, in USD.
SELECT coalesce(sum(coalesce(json_extract(s.usage, '$.cost_usd'), 0.0)), 0.0) AS cost
FROM sessions AS s JOIN tasks AS t ON t.task_id = s.task_id
WHERE t.run_id = :run_id;
