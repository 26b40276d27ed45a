-- Queries of PostgresStore, one per `-- name:` section, loaded once by postgres.py.
--
-- Parameters are psycopg's named placeholders, %(name)s, each cast to its type where the
-- server could not tell it; a literal percent sign would be written %%. Times come from
-- the server (now(): the start of the transaction), except run and task creation times,
-- which the caller gives (TIMESTAMPTZ, never naive). Lists are arrays (text[]).
-- Text is ordered with COLLATE "C" (byte order), as SQLite orders it, whatever the
-- database's collation.

-- name: configure_session
-- lock_timeout (text, '10000ms'): how long a statement waits for another session's lock.
-- Run on each new pooled connection. Times are then shown, and returned, in UTC.
SELECT set_config('lock_timeout', %(lock_timeout)s, false), set_config('TimeZone', 'UTC', false);

-- name: migrate_lock
-- Serializes migrate() across processes and machines: held until the transaction ends.
-- The key is the ASCII of 'ado-ray1', as a bigint.
SELECT pg_advisory_xact_lock(7018141478282508593);

-- name: create_schema_version
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL
);

-- name: applied_versions
SELECT version FROM schema_version ORDER BY version;

-- name: record_version
-- version
INSERT INTO schema_version (version, applied_at) VALUES (%(version)s, now());

-- name: insert_run
INSERT INTO runs (run_id, name, created_at, status, branch, config, repo_list)
VALUES (
    %(run_id)s, %(name)s, %(created_at)s, %(status)s, %(branch)s, %(config)s::jsonb,
    %(repo_list)s
);

-- name: insert_task
INSERT INTO tasks (
    task_id, run_id, seq, repo_key, repo, state, attempt, base_sha, branch, commit_sha,
    failure_class, error, workspace, lease_owner, created_at, updated_at
) VALUES (
    %(task_id)s, %(run_id)s, %(seq)s, %(repo_key)s, %(repo)s::jsonb, %(state)s, %(attempt)s,
    %(base_sha)s, %(branch)s, %(commit_sha)s, %(failure_class)s, %(error)s, %(workspace)s,
    %(lease_owner)s, %(created_at)s, %(updated_at)s
);

-- name: get_run
-- run_id
SELECT * FROM runs WHERE run_id = %(run_id)s;

-- name: find_runs_by_prefix
-- prefix, taken literally (no LIKE wildcards); two rows tell "unique" from "ambiguous".
SELECT * FROM runs
WHERE starts_with(run_id, %(prefix)s)
ORDER BY run_id COLLATE "C"
LIMIT 2;

-- name: list_runs
-- limit; newest first (run_no, the insertion order, breaks ties). Index runs_created_at.
SELECT * FROM runs ORDER BY created_at DESC, run_no DESC LIMIT %(limit)s;

-- name: count_tasks
-- run_ids (text[]); one row per run and state present. Index tasks_run_state.
SELECT run_id, state, count(*) AS n
FROM tasks
WHERE run_id = ANY(%(run_ids)s::text[])
GROUP BY run_id, state;

-- name: set_run_status
-- run_id, status
UPDATE runs SET status = %(status)s WHERE run_id = %(run_id)s;

-- name: list_tasks
-- run_id
SELECT * FROM tasks WHERE run_id = %(run_id)s ORDER BY seq, task_id COLLATE "C";

-- name: requeue_tasks
-- run_id, states (text[]). A requeued task has no runner, so no lease.
-- Rows are locked in task_id order, as apply() locks them, so the two cannot deadlock.
WITH doomed AS (
    SELECT task_id FROM tasks
    WHERE run_id = %(run_id)s AND state = ANY(%(states)s::text[])
    ORDER BY task_id
    FOR NO KEY UPDATE
)
UPDATE tasks
SET state = 'queued', lease_owner = NULL, updated_at = now()
FROM doomed
WHERE tasks.task_id = doomed.task_id;

-- name: lock_tasks
-- task_ids (text[]): the tasks a batch of events names. Returns those that exist (with
-- their run) and locks them, in task_id order, until the batch commits: none can be
-- deleted half-way, and two writers of the same tasks queue instead of deadlocking.
SELECT task_id, run_id FROM tasks
WHERE task_id = ANY(%(task_ids)s::text[])
ORDER BY task_id
FOR NO KEY UPDATE;

-- name: apply_task_update
-- The one-event forms of apply_task_updates, upsert_checkpoints, upsert_sessions and
-- upsert_usages (below) and upsert_bundle: apply() uses upsert_bundle only, the baseline of
-- bench/sink.py all of them; tests check that both forms leave the same rows.
-- task_id, state, every TaskUpdate column (NULL keeps the current value),
-- clear_failure (failure_class and error are reset before the new values apply),
-- terminal (the state is terminal, so lease_owner is cleared).
-- The WHERE clause skips an update that would change nothing, so replaying an event
-- leaves the row exactly as it was, updated_at included.
UPDATE tasks
SET state = %(state)s,
    attempt = coalesce(%(attempt)s::integer, attempt),
    base_sha = coalesce(%(base_sha)s::text, base_sha),
    branch = coalesce(%(branch)s::text, branch),
    commit_sha = coalesce(%(commit_sha)s::text, commit_sha),
    failure_class = coalesce(
        %(failure_class)s::text, CASE WHEN %(clear_failure)s::boolean THEN NULL ELSE failure_class END
    ),
    error = coalesce(%(error)s::text, CASE WHEN %(clear_failure)s::boolean THEN NULL ELSE error END),
    workspace = coalesce(%(workspace)s::text, workspace),
    lease_owner = CASE
        WHEN %(terminal)s::boolean THEN NULL ELSE coalesce(%(lease_owner)s::text, lease_owner)
    END,
    updated_at = now()
WHERE task_id = %(task_id)s
  AND (state, attempt, base_sha, branch, commit_sha, failure_class, error, workspace, lease_owner)
      IS DISTINCT FROM (
          %(state)s::text,
          coalesce(%(attempt)s::integer, attempt),
          coalesce(%(base_sha)s::text, base_sha),
          coalesce(%(branch)s::text, branch),
          coalesce(%(commit_sha)s::text, commit_sha),
          coalesce(
              %(failure_class)s::text,
              CASE WHEN %(clear_failure)s::boolean THEN NULL ELSE failure_class END
          ),
          coalesce(%(error)s::text, CASE WHEN %(clear_failure)s::boolean THEN NULL ELSE error END),
          coalesce(%(workspace)s::text, workspace),
          CASE WHEN %(terminal)s::boolean THEN NULL ELSE coalesce(%(lease_owner)s::text, lease_owner) END
      );

-- name: upsert_checkpoint
-- task_id, step, data (JSON text). A replay overwrites data and keeps created_at.
INSERT INTO checkpoints (task_id, step, data, created_at)
VALUES (%(task_id)s, %(step)s, %(data)s::jsonb, now())
ON CONFLICT (task_id, step) DO UPDATE SET data = excluded.data;

-- name: upsert_session
-- task_id, attempt, the SessionEvent fields (usage as JSON text).
INSERT INTO sessions (
    task_id, attempt, agent, session_id, exit_code, duration_s, log_path, usage, outcome,
    created_at
) VALUES (
    %(task_id)s, %(attempt)s, %(agent)s, %(session_id)s, %(exit_code)s, %(duration_s)s,
    %(log_path)s, %(usage)s::jsonb, %(outcome)s, now()
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
-- task_id, attempt, key, input_tokens, output_tokens, cost_usd.
INSERT INTO usage_records (
    task_id, attempt, key, input_tokens, output_tokens, cost_usd, created_at
) VALUES (
    %(task_id)s, %(attempt)s, %(key)s, %(input_tokens)s, %(output_tokens)s, %(cost_usd)s, now()
)
ON CONFLICT (task_id, attempt, key) DO UPDATE SET
    input_tokens = excluded.input_tokens,
    output_tokens = excluded.output_tokens,
    cost_usd = excluded.cost_usd;

-- name: upsert_bundle
-- task_id, commit_sha, size (bytes), data (bytea). A different bundle replaces the row,
-- created_at included; a replay of the same one (WHERE) changes nothing.
INSERT INTO bundles (task_id, commit_sha, size, data, created_at)
VALUES (%(task_id)s, %(commit_sha)s, %(size)s, %(data)s::bytea, now())
ON CONFLICT (task_id) DO UPDATE SET
    commit_sha = excluded.commit_sha,
    size = excluded.size,
    data = excluded.data,
    created_at = excluded.created_at
WHERE (bundles.commit_sha, bundles.data) IS DISTINCT FROM (excluded.commit_sha, excluded.data);

-- name: upsert_session_state
-- task_id, attempt, session_id, size (bytes), data (bytea). Replaces the attempt's row,
-- created_at included; a replay of the same one (WHERE) changes nothing.
INSERT INTO session_states (task_id, attempt, session_id, size, data, created_at)
VALUES (%(task_id)s, %(attempt)s, %(session_id)s, %(size)s, %(data)s::bytea, now())
ON CONFLICT (task_id, attempt) DO UPDATE SET
    session_id = excluded.session_id,
    size = excluded.size,
    data = excluded.data,
    created_at = excluded.created_at
WHERE (session_states.session_id, session_states.data)
    IS DISTINCT FROM (excluded.session_id, excluded.data);

-- name: apply_task_updates
-- updates (a JSON array of objects, each task at most once: task_id, state, every
-- TaskUpdate column (null keeps the current value), clear_failure, terminal; as in
-- apply_task_update). One round of a batch (records.plan_batch); the rows are locked
-- already (lock_tasks). Skips a row that would not change, as apply_task_update does.
WITH e AS (
    SELECT * FROM jsonb_to_recordset(%(updates)s::jsonb) AS e (
        task_id text, state text, attempt integer, base_sha text, branch text,
        commit_sha text, failure_class text, error text, workspace text, lease_owner text,
        clear_failure boolean, terminal boolean
    )
), new AS (
    SELECT
        t.task_id,
        e.state,
        coalesce(e.attempt, t.attempt) AS attempt,
        coalesce(e.base_sha, t.base_sha) AS base_sha,
        coalesce(e.branch, t.branch) AS branch,
        coalesce(e.commit_sha, t.commit_sha) AS commit_sha,
        coalesce(e.failure_class, CASE WHEN e.clear_failure THEN NULL ELSE t.failure_class END)
            AS failure_class,
        coalesce(e.error, CASE WHEN e.clear_failure THEN NULL ELSE t.error END) AS error,
        coalesce(e.workspace, t.workspace) AS workspace,
        CASE WHEN e.terminal THEN NULL ELSE coalesce(e.lease_owner, t.lease_owner) END
            AS lease_owner
    FROM e JOIN tasks AS t ON t.task_id = e.task_id
    WHERE (t.state, t.attempt, t.base_sha, t.branch, t.commit_sha, t.failure_class, t.error,
           t.workspace, t.lease_owner)
        IS DISTINCT FROM (
            e.state,
            coalesce(e.attempt, t.attempt),
            coalesce(e.base_sha, t.base_sha),
            coalesce(e.branch, t.branch),
            coalesce(e.commit_sha, t.commit_sha),
            coalesce(e.failure_class, CASE WHEN e.clear_failure THEN NULL ELSE t.failure_class END),
            coalesce(e.error, CASE WHEN e.clear_failure THEN NULL ELSE t.error END),
            coalesce(e.workspace, t.workspace),
            CASE WHEN e.terminal THEN NULL ELSE coalesce(e.lease_owner, t.lease_owner) END
        )
)
UPDATE tasks
SET state = new.state,
    attempt = new.attempt,
    base_sha = new.base_sha,
    branch = new.branch,
    commit_sha = new.commit_sha,
    failure_class = new.failure_class,
    error = new.error,
    workspace = new.workspace,
    lease_owner = new.lease_owner,
    updated_at = now()
FROM new
WHERE tasks.task_id = new.task_id;

-- name: upsert_checkpoints
-- checkpoints (a JSON array of objects task_id, step, data; each (task_id, step) at most
-- once): upsert_checkpoint for many.
INSERT INTO checkpoints (task_id, step, data, created_at)
SELECT task_id, step, data, now()
FROM jsonb_to_recordset(%(checkpoints)s::jsonb) AS e (task_id text, step text, data jsonb)
ON CONFLICT (task_id, step) DO UPDATE SET data = excluded.data;

-- name: upsert_sessions
-- sessions (a JSON array of SessionEvent objects; each (task_id, attempt) at most once):
-- upsert_session for many.
INSERT INTO sessions (
    task_id, attempt, agent, session_id, exit_code, duration_s, log_path, usage, outcome,
    created_at
)
SELECT task_id, attempt, agent, session_id, exit_code, duration_s, log_path, usage, outcome,
       now()
FROM jsonb_to_recordset(%(sessions)s::jsonb) AS e (
    task_id text, attempt integer, agent text, session_id text, exit_code integer,
    duration_s double precision, log_path text, usage jsonb, outcome text
)
ON CONFLICT (task_id, attempt) DO UPDATE SET
    agent = excluded.agent,
    session_id = excluded.session_id,
    exit_code = excluded.exit_code,
    duration_s = excluded.duration_s,
    log_path = excluded.log_path,
    usage = excluded.usage,
    outcome = excluded.outcome;

-- name: upsert_usages
-- usage (a JSON array of UsageEvent objects; each (task_id, attempt, key) at most once):
-- upsert_usage for many.
INSERT INTO usage_records (
    task_id, attempt, key, input_tokens, output_tokens, cost_usd, created_at
)
SELECT task_id, attempt, key, input_tokens, output_tokens, cost_usd, now()
FROM jsonb_to_recordset(%(usage)s::jsonb) AS e (
    task_id text, attempt integer, key text, input_tokens bigint, output_tokens bigint,
    cost_usd double precision
)
ON CONFLICT (task_id, attempt, key) DO UPDATE SET
    input_tokens = excluded.input_tokens,
    output_tokens = excluded.output_tokens,
    cost_usd = excluded.cost_usd;

-- name: transitions
-- run_id; every change of state of the run's tasks, in the order they were written.
SELECT task_id, state, attempt, runner, at FROM task_transitions
WHERE run_id = %(run_id)s ORDER BY seq;

-- name: bundle
-- task_id
SELECT commit_sha, data FROM bundles WHERE task_id = %(task_id)s;

-- name: session_state
-- task_id; the latest attempt's stored session files.
SELECT attempt, session_id, data FROM session_states
WHERE task_id = %(task_id)s ORDER BY attempt DESC LIMIT 1;

-- name: acquire_run_lock
-- run_id, owner, ttl_s (seconds). Inserts the lease (generation 1), or takes it over when
-- it is already this owner's (renewal: same generation) or has expired by the server's
-- clock (another holder: generation + 1); otherwise leaves it alone and returns no row (the
-- conflicting row is locked all the same, so the caller reads it with run_leases in the
-- same transaction). An unknown run fails the foreign key. (SET expressions see the row as
-- it was before the update.)
INSERT INTO run_locks (run_id, owner, expires_at, generation, renewed_at)
VALUES (
    %(run_id)s, %(owner)s, now() + make_interval(secs => %(ttl_s)s::double precision), 1, now()
)
ON CONFLICT (run_id) DO UPDATE SET
    generation = CASE
        WHEN run_locks.owner = excluded.owner THEN run_locks.generation
        ELSE run_locks.generation + 1
    END,
    owner = excluded.owner,
    expires_at = excluded.expires_at,
    renewed_at = excluded.renewed_at
WHERE run_locks.owner = excluded.owner OR run_locks.expires_at <= now()
RETURNING run_id, owner, generation, renewed_at, expires_at, expires_at <= now() AS expired;

-- name: run_leases
-- run_ids (text[]); one row per run that has a lease row, `expired` by the server's clock.
SELECT run_id, owner, generation, renewed_at, expires_at, expires_at <= now() AS expired
FROM run_locks
WHERE run_id = ANY(%(run_ids)s::text[]);

-- name: fence_lease
-- run_id. The lease row a fenced write checks, locked FOR SHARE until the write commits:
-- a takeover (acquire_run_lock, release_run_lock) waits for the write, and a write that
-- comes while a takeover is in progress waits for it and then reads the new generation.
-- Taken before any other lock of the write (tasks, runs), in every fenced write.
SELECT run_id, owner, generation, renewed_at, expires_at, expires_at <= now() AS expired
FROM run_locks
WHERE run_id = %(run_id)s
FOR SHARE;

-- name: release_run_lock
-- run_id, owner. Ends the owner's lease: the row stays, with owner '', expired, and the
-- next generation, so writes fenced with the old one are refused from now on. Someone
-- else's lease is left alone.
UPDATE run_locks SET owner = '', generation = generation + 1, expires_at = now()
WHERE run_id = %(run_id)s AND owner = %(owner)s AND owner <> '';

-- name: break_run_lock
-- run_id. As release_run_lock, whoever the owner.
UPDATE run_locks SET owner = '', generation = generation + 1, expires_at = now()
WHERE run_id = %(run_id)s AND owner <> '';

-- --- bulk reads of a run's tasks (a page at a time: memory flat in the run's size) -------

-- name: task_page
-- run_id, after_seq, limit, unfinished (only tasks in no terminal state): the run's tasks
-- after `after_seq` in list order. Index tasks_run_seq (0006).
SELECT * FROM tasks
WHERE run_id = %(run_id)s AND seq > %(after_seq)s
  AND (NOT %(unfinished)s::boolean
       OR state NOT IN ('changed', 'no_change', 'failed', 'skipped', 'cancelled'))
ORDER BY seq
LIMIT %(limit)s;

-- name: tasks_in_states
-- run_id, states (text[]), limit; in list order. Index tasks_run_state.
SELECT * FROM tasks
WHERE run_id = %(run_id)s AND state = ANY(%(states)s::text[])
ORDER BY seq
LIMIT %(limit)s;

-- name: recent_tasks
-- run_id, limit; finished tasks, the latest first. Index tasks_run_updated (0006).
SELECT * FROM tasks
WHERE run_id = %(run_id)s
  AND state IN ('changed', 'no_change', 'failed', 'skipped', 'cancelled')
ORDER BY updated_at DESC, seq DESC
LIMIT %(limit)s;

-- name: get_task
-- task_id
SELECT * FROM tasks WHERE task_id = %(task_id)s;

-- name: checkpoints_of
-- task_ids (text[])
SELECT task_id, step, data FROM checkpoints WHERE task_id = ANY(%(task_ids)s::text[]);

-- name: sessions_of
-- task_ids (text[]); each task's in attempt order.
SELECT * FROM sessions
WHERE task_id = ANY(%(task_ids)s::text[])
ORDER BY task_id COLLATE "C", attempt;

-- name: transitions_of
-- task_ids (text[]); in the order they were written.
SELECT task_id, state, attempt, runner, at FROM task_transitions
WHERE task_id = ANY(%(task_ids)s::text[])
ORDER BY seq;

-- name: run_cost
-- run_id; what the run's agent sessions cost, in USD.
SELECT coalesce(sum(coalesce((s.usage ->> 'cost_usd')::double precision, 0.0)), 0.0) AS cost
FROM sessions AS s JOIN tasks AS t ON t.task_id = s.task_id
WHERE t.run_id = %(run_id)s;
