-- Queries of `sweeper demo` (package internal/demo), generated into
-- internal/demo/demosqlc. The demo plays the orchestrator and its workers
-- (seeding tasks, claiming and finishing attempts), which is not the
-- sweeper's job, so these live apart from the production store's queries and
-- write into tables the sweeper's grants do not cover. Every state change of
-- a step still goes through the production store's WriteTransition, so the
-- compare-and-swap rules are the production ones.

-- name: TaskerSchemaExists :one
-- Whether the tasker tables exist already (an orchestrator's database, or a
-- previous demo): then the demo must not create them.
SELECT (to_regclass('tasker.workflow_steps') IS NOT NULL)::boolean AS schema_exists;

-- name: DemoSeed :one
-- The demo workload in one statement: a namespace, a named task, the named
-- steps, the tasks, their steps, the a->b->c->d edges and each step's
-- transition history. The Go side decides the layout (which step of which
-- task is where); this statement only writes it, set-based, from arrays
-- zipped by unnest. Existing namespace, named task and named step rows with
-- the same names are reused, never modified. Foreign keys are checked at the
-- end of the statement, so rows may reference rows inserted beside them.
WITH task_list AS (
    -- Set-returning functions in a select list advance in lockstep: n is the
    -- task's 1-based position in @task_uuids.
    SELECT unnest(@task_uuids::uuid[]) AS task_uuid, generate_subscripts(@task_uuids::uuid[], 1) AS n
), steps_in AS (
    SELECT
        unnest(@step_uuids::uuid[]) AS step_uuid,
        unnest(@step_tasks::uuid[]) AS task_uuid,
        unnest(@step_names::text[]) AS name,
        unnest(@step_positions::integer[]) AS pos,
        unnest(@step_states::text[]) AS state,
        unnest(@step_attempts::integer[]) AS attempts,
        unnest(@step_retryable::boolean[]) AS retryable,
        unnest(@step_ended_ago::integer[]) AS ended_ago
), new_namespace AS (
    INSERT INTO tasker.task_namespaces (name, description, created_at, updated_at)
    VALUES (@namespace::varchar, 'workload seeded by sweeper demo', now(), now())
    ON CONFLICT DO NOTHING
    RETURNING task_namespace_uuid
), namespace AS (
    SELECT task_namespace_uuid FROM new_namespace
    UNION ALL
    SELECT task_namespace_uuid FROM tasker.task_namespaces WHERE name = @namespace::varchar
), new_named_task AS (
    INSERT INTO tasker.named_tasks (task_namespace_uuid, name, description, configuration, created_at, updated_at)
    SELECT task_namespace_uuid, @task_name::varchar, 'an order: validate, charge, reserve, confirm',
           @configuration::jsonb, now(), now()
    FROM namespace
    ON CONFLICT DO NOTHING
    RETURNING named_task_uuid
), named_task AS (
    SELECT named_task_uuid FROM new_named_task
    UNION ALL
    SELECT nt.named_task_uuid
    FROM tasker.named_tasks nt JOIN namespace USING (task_namespace_uuid)
    WHERE nt.name = @task_name::varchar AND nt.version = '0.1.0'
), wanted_steps AS (
    SELECT DISTINCT name FROM steps_in
), new_named_steps AS (
    INSERT INTO tasker.named_steps (name, description, created_at, updated_at)
    SELECT name, 'step of the sweeper demo workload', now(), now() FROM wanted_steps
    ON CONFLICT DO NOTHING
    RETURNING named_step_uuid, name
), named_steps AS (
    SELECT named_step_uuid, name FROM new_named_steps
    UNION ALL
    SELECT named_step_uuid, name FROM tasker.named_steps WHERE name IN (SELECT name FROM wanted_steps)
), tasks AS (
    INSERT INTO tasker.tasks (
        task_uuid, named_task_uuid, requested_at, identity_hash, initiator, source_system, reason,
        context, created_at, updated_at, correlation_id
    )
    SELECT t.task_uuid, nt.named_task_uuid, now() - interval '5 minutes', 'sweeper-demo:' || t.task_uuid,
           'sweeper demo', 'sweeper-demo', 'demo workload',
           jsonb_build_object('order_id', 100000 + t.n), now() - interval '5 minutes', now(), gen_random_uuid()
    FROM task_list t CROSS JOIN (SELECT named_task_uuid FROM named_task LIMIT 1) nt
    RETURNING task_uuid
), steps AS (
    INSERT INTO tasker.workflow_steps (
        workflow_step_uuid, task_uuid, named_step_uuid, retryable, in_process, processed, processed_at,
        attempts, last_attempted_at, inputs, created_at, updated_at
    )
    SELECT s.step_uuid, s.task_uuid, ns.named_step_uuid, s.retryable,
           s.state = 'enqueued_as_error_for_orchestration',
           s.state = 'complete',
           CASE WHEN s.state = 'complete' THEN now() - make_interval(secs => s.ended_ago) END,
           nullif(s.attempts, 0),
           CASE WHEN s.attempts > 0 THEN now() - make_interval(secs => s.ended_ago + 10) END,
           jsonb_build_object('order_id', 100000 + t.n),
           now() - interval '5 minutes', now()
    FROM steps_in s
    JOIN named_steps ns ON ns.name = s.name
    JOIN task_list t ON t.task_uuid = s.task_uuid
    RETURNING workflow_step_uuid
), edges AS (
    INSERT INTO tasker.workflow_step_edges (from_step_uuid, to_step_uuid, name, created_at, updated_at)
    SELECT parent.step_uuid, child.step_uuid, 'provides', now() - interval '5 minutes', now() - interval '5 minutes'
    FROM steps_in parent
    JOIN steps_in child ON child.task_uuid = parent.task_uuid AND child.pos = parent.pos + 1
    RETURNING workflow_step_edge_uuid
), history AS (
    -- The path the orchestrator and a worker write to reach each seeded
    -- state; a step left pending has no rows at all (no rows means pending).
    -- A UNION ALL rather than VALUES with a column list, which sqlc cannot
    -- resolve.
    SELECT 'complete'::text AS target, 1 AS seq, 'pending'::text AS to_state, NULL::text AS event
    UNION ALL SELECT 'complete', 2, 'enqueued', '{"type":"Enqueue"}'
    UNION ALL SELECT 'complete', 3, 'in_progress', '{"type":"Start"}'
    UNION ALL SELECT 'complete', 4, 'enqueued_for_orchestration', '{"type":"EnqueueForOrchestration"}'
    UNION ALL SELECT 'complete', 5, 'complete', '{"type":"Complete"}'
    UNION ALL SELECT 'enqueued_as_error_for_orchestration', 1, 'pending', NULL
    UNION ALL SELECT 'enqueued_as_error_for_orchestration', 2, 'enqueued', '{"type":"Enqueue"}'
    UNION ALL SELECT 'enqueued_as_error_for_orchestration', 3, 'in_progress', '{"type":"Start"}'
    UNION ALL SELECT 'enqueued_as_error_for_orchestration', 4, 'enqueued_as_error_for_orchestration',
                     '{"type":"EnqueueAsErrorForOrchestration"}'
), history_rows AS (
    SELECT s.step_uuid, h.seq, h.to_state, h.event,
           lag(h.to_state) OVER w AS from_state,
           h.seq = count(*) OVER (PARTITION BY s.step_uuid) AS most_recent,
           -- Ten seconds between hops, the last one ended_ago seconds ago.
           now() - make_interval(secs => s.ended_ago + 10 * (count(*) OVER (PARTITION BY s.step_uuid) - h.seq)) AS happened_at
    FROM steps_in s
    JOIN history h ON h.target = s.state
    WINDOW w AS (PARTITION BY s.step_uuid ORDER BY h.seq)
), transitions AS (
    INSERT INTO tasker.workflow_step_transitions (
        workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at
    )
    SELECT step_uuid, to_state, from_state,
           jsonb_build_object(
               'timestamp', to_char(happened_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               'actor', 'sweeper-demo/seed')
           || CASE WHEN event IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('event', event) END,
           seq, most_recent, happened_at, happened_at
    FROM history_rows
    RETURNING workflow_step_transition_uuid
)
SELECT (SELECT count(*) FROM tasks)::bigint AS tasks,
       (SELECT count(*) FROM steps)::bigint AS steps,
       (SELECT count(*) FROM edges)::bigint AS edges,
       (SELECT count(*) FROM transitions)::bigint AS transitions;

-- name: StepStartAttempt :execrows
-- A worker claims the step: the attempt it is about to make counts at once,
-- which is what the inline handler expects of attempts (they include the
-- attempt that failed).
UPDATE tasker.workflow_steps
SET attempts = coalesce(attempts, 0) + 1,
    in_process = true,
    last_attempted_at = now(),
    updated_at = now()
WHERE workflow_step_uuid = @workflow_step_uuid;

-- name: StepFinishAttempt :execrows
-- A worker's attempt succeeded: the step is processed and released.
UPDATE tasker.workflow_steps
SET in_process = false,
    processed = true,
    processed_at = now(),
    results = '{"ok": true}'::jsonb,
    updated_at = now()
WHERE workflow_step_uuid = @workflow_step_uuid;

-- name: StepListSweptBack :many
-- The steps of @task_uuids the sweep has moved back to pending and nobody
-- has picked up yet, oldest first: what the orchestrator would run next.
SELECT ws.workflow_step_uuid
FROM tasker.workflow_steps ws
JOIN tasker.workflow_step_transitions cur
    ON cur.workflow_step_uuid = ws.workflow_step_uuid AND cur.most_recent
WHERE ws.task_uuid = ANY(@task_uuids::uuid[])
  AND cur.to_state = 'pending'
  AND cur.from_state = 'waiting_for_retry'
ORDER BY cur.created_at, ws.workflow_step_uuid
LIMIT @pickup_limit;

-- name: StepCountSweptBack :one
-- How many steps of @task_uuids the sweep handed back and nobody has re-run
-- yet; the other pending steps are waiting for their parents to complete.
SELECT count(*)::bigint AS steps
FROM tasker.workflow_steps ws
JOIN tasker.workflow_step_transitions cur
    ON cur.workflow_step_uuid = ws.workflow_step_uuid AND cur.most_recent
WHERE ws.task_uuid = ANY(@task_uuids::uuid[])
  AND cur.to_state = 'pending'
  AND cur.from_state = 'waiting_for_retry';

-- name: TransitionCountSweepMoves :one
-- How often the sweep moved the steps of @task_uuids back to pending, and
-- how many distinct steps that was. The actor is the one the production
-- sweep writes into its transitions' metadata (db.Store.MoveDueBatch).
SELECT count(*)::bigint AS moves, count(DISTINCT t.workflow_step_uuid)::bigint AS steps
FROM tasker.workflow_step_transitions t
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = t.workflow_step_uuid
WHERE ws.task_uuid = ANY(@task_uuids::uuid[])
  AND t.metadata->>'actor' = 'tasker-sweeper/sweep';

-- name: TransitionRetryPolicies :many
-- The retries the inline handler parked among the steps of @task_uuids, by
-- step and by the policy that chose the delay (the provenance the handler
-- writes into the waiting_for_retry transition), with the delays' range.
SELECT
    ns.name::text AS step_name,
    coalesce(t.metadata->'retry_policy'->>'source', '')::text AS source,
    coalesce(t.metadata->'retry_policy'->>'strategy', '')::text AS strategy,
    count(*)::bigint AS parked,
    coalesce(min((t.metadata->>'backoff_seconds')::integer), 0)::integer AS min_seconds,
    coalesce(max((t.metadata->>'backoff_seconds')::integer), 0)::integer AS max_seconds
FROM tasker.workflow_step_transitions t
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = t.workflow_step_uuid
JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid
WHERE ws.task_uuid = ANY(@task_uuids::uuid[])
  AND t.to_state = 'waiting_for_retry'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;
