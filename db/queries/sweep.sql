-- name: SweepClaimDue :many
-- Claims up to @batch_limit due steps (SPEC §7) and locks both the step row
-- and its current transition row, skipping rows another sweeper or the
-- orchestrator holds, so concurrent claimers get disjoint batches and the
-- locks are on real table rows. A step is due exactly when tasker's readiness
-- rule would call it ready and it is in waiting_for_retry:
--   not processed, not in_process; every parent complete or resolved_manually
--   (over the whole task, not a filtered set); retry-eligible; and its next
--   retry time, if any, is not after now().
-- The rule is repeated in StepClaimForRetry, SweepCountDue, StepDueStatus and
-- the schedule queries, each in the shape it needs; the scan path must work
-- with no objects of ours in the database, so it cannot live in a function.
-- sweeper/sweep_test.go checks every copy against an independent rendering
-- of tasker's readiness SQL, on both paths: change them together.
SELECT
    ws.workflow_step_uuid,
    ws.task_uuid,
    coalesce(
        ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second',
        (SELECT max(e.created_at) FROM tasker.workflow_step_transitions e
         WHERE e.workflow_step_uuid = ws.workflow_step_uuid AND e.to_state = 'error')
        + least(power(2, least(coalesce(ws.attempts, 1), 6)) * interval '1 second', interval '60 seconds'),
        cur.created_at
    ) AS due_at
FROM tasker.workflow_step_transitions cur
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = cur.workflow_step_uuid
WHERE cur.most_recent
  AND cur.to_state = 'waiting_for_retry'
  AND NOT ws.processed
  AND NOT ws.in_process
  AND (coalesce(ws.attempts, 0) = 0
       OR (ws.retryable AND coalesce(ws.attempts, 0) < coalesce(ws.max_attempts, 3)))
  -- Written as a LIMIT 1 subquery, not NOT EXISTS: PostgreSQL never turns
  -- it into an anti-join, so each candidate probes its own edges by index
  -- instead of every claim hashing every edge in the database.
  AND NOT coalesce((
        SELECT true
        FROM tasker.workflow_step_edges edge
        LEFT JOIN tasker.workflow_step_transitions parent
            ON parent.workflow_step_uuid = edge.from_step_uuid AND parent.most_recent
        WHERE edge.to_step_uuid = ws.workflow_step_uuid
          AND coalesce(parent.to_state, 'pending') NOT IN ('complete', 'resolved_manually')
        LIMIT 1), false)
  AND coalesce(
        ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second',
        (SELECT max(e.created_at) FROM tasker.workflow_step_transitions e
         WHERE e.workflow_step_uuid = ws.workflow_step_uuid AND e.to_state = 'error')
        + least(power(2, least(coalesce(ws.attempts, 1), 6)) * interval '1 second', interval '60 seconds'),
        cur.created_at
      ) <= now()
LIMIT @batch_limit
FOR UPDATE OF ws, cur SKIP LOCKED;

-- name: StepClaimForRetry :many
-- SweepClaimDue for one step (the admin API's retry): the same rule and
-- locks, looked up by primary key; @force skips only the due-time condition.
SELECT
    ws.workflow_step_uuid,
    ws.task_uuid,
    coalesce(
        ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second',
        (SELECT max(e.created_at) FROM tasker.workflow_step_transitions e
         WHERE e.workflow_step_uuid = ws.workflow_step_uuid AND e.to_state = 'error')
        + least(power(2, least(coalesce(ws.attempts, 1), 6)) * interval '1 second', interval '60 seconds'),
        cur.created_at
    ) AS due_at
FROM tasker.workflow_step_transitions cur
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = cur.workflow_step_uuid
WHERE cur.most_recent
  AND cur.to_state = 'waiting_for_retry'
  AND ws.workflow_step_uuid = @workflow_step_uuid
  AND NOT ws.processed
  AND NOT ws.in_process
  AND (coalesce(ws.attempts, 0) = 0
       OR (ws.retryable AND coalesce(ws.attempts, 0) < coalesce(ws.max_attempts, 3)))
  -- Written as a LIMIT 1 subquery, not NOT EXISTS: PostgreSQL never turns
  -- it into an anti-join, so each candidate probes its own edges by index
  -- instead of every claim hashing every edge in the database.
  AND NOT coalesce((
        SELECT true
        FROM tasker.workflow_step_edges edge
        LEFT JOIN tasker.workflow_step_transitions parent
            ON parent.workflow_step_uuid = edge.from_step_uuid AND parent.most_recent
        WHERE edge.to_step_uuid = ws.workflow_step_uuid
          AND coalesce(parent.to_state, 'pending') NOT IN ('complete', 'resolved_manually')
        LIMIT 1), false)
  AND (@force::boolean OR coalesce(
        ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second',
        (SELECT max(e.created_at) FROM tasker.workflow_step_transitions e
         WHERE e.workflow_step_uuid = ws.workflow_step_uuid AND e.to_state = 'error')
        + least(power(2, least(coalesce(ws.attempts, 1), 6)) * interval '1 second', interval '60 seconds'),
        cur.created_at
      ) <= now())
FOR UPDATE OF ws, cur SKIP LOCKED;


-- name: SweepMoveToPending :many
-- Moves claimed steps waiting_for_retry -> pending in one statement: retire
-- each current row only if it is still waiting_for_retry (compare-and-swap),
-- append the pending row with sort_key max+1, touch updated_at. attempts and
-- the backoff columns stay as they are: clearing the backoff would re-arm the
-- readiness rule's error-time fallback and hide the step for up to a minute.
-- A step whose current row changed, or that another writer appended to,
-- simply does not come back: a lost race, not an error.
WITH claimed AS (
    -- Set-returning functions in a select list advance in lockstep: a zip.
    SELECT unnest(@step_uuids::uuid[]) AS step_uuid, unnest(@due_ats::timestamp[]) AS due_at
), retired AS (
    -- "= ANY(array)" keeps this an index scan by step whatever the planner
    -- guesses about the batch's size.
    UPDATE tasker.workflow_step_transitions t
    SET most_recent = false, updated_at = now()
    WHERE t.workflow_step_uuid = ANY(@step_uuids::uuid[])
      AND t.most_recent
      AND t.to_state = 'waiting_for_retry'
    RETURNING t.workflow_step_uuid
), inserted AS (
    INSERT INTO tasker.workflow_step_transitions (
        workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at
    )
    SELECT
        r.workflow_step_uuid,
        'pending',
        'waiting_for_retry',
        @metadata::jsonb || jsonb_build_object('due_at', to_char(c.due_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
        (SELECT max(x.sort_key) + 1 FROM tasker.workflow_step_transitions x
         WHERE x.workflow_step_uuid = r.workflow_step_uuid),
        true,
        now(),
        now()
    FROM retired r
    JOIN claimed c ON c.step_uuid = r.workflow_step_uuid
    ON CONFLICT (workflow_step_uuid, most_recent) WHERE most_recent DO NOTHING
    RETURNING workflow_step_uuid
)
UPDATE tasker.workflow_steps ws
SET updated_at = now()
WHERE ws.workflow_step_uuid = ANY(ARRAY(SELECT i.workflow_step_uuid FROM inserted i))
RETURNING ws.workflow_step_uuid, ws.task_uuid, now()::timestamp AS moved_at;

-- name: SweepNotify :exec
-- Delivered on commit, so listeners only hear about moves that happened.
SELECT pg_notify(@channel::text, @payload::text);

-- name: SweepCountDue :one
-- What a sweep would move right now (the dry run), with the same predicate
-- as SweepClaimDue, plus the steps that will never move on their own.
SELECT
    count(*) FILTER (WHERE eligible AND deps_ok AND NOT processed AND NOT in_process
                     AND due_at <= now())::bigint AS due,
    count(*) FILTER (WHERE NOT eligible)::bigint AS stranded,
    count(*) FILTER (WHERE eligible AND deps_ok AND NOT processed AND NOT in_process
                     AND due_at > now())::bigint AS not_yet_due,
    -- Meaningful only when not_yet_due > 0.
    coalesce(min(due_at) FILTER (WHERE eligible AND deps_ok AND NOT processed AND NOT in_process
                                 AND due_at > now()), now())::timestamp AS next_due_at
FROM (
    SELECT
        ws.processed,
        ws.in_process,
        (coalesce(ws.attempts, 0) = 0
         OR (ws.retryable AND coalesce(ws.attempts, 0) < coalesce(ws.max_attempts, 3))) AS eligible,
        NOT EXISTS (
            SELECT 1
            FROM tasker.workflow_step_edges edge
            LEFT JOIN tasker.workflow_step_transitions parent
                ON parent.workflow_step_uuid = edge.from_step_uuid AND parent.most_recent
            WHERE edge.to_step_uuid = ws.workflow_step_uuid
              AND coalesce(parent.to_state, 'pending') NOT IN ('complete', 'resolved_manually')) AS deps_ok,
        coalesce(
            ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second',
            (SELECT max(e.created_at) FROM tasker.workflow_step_transitions e
             WHERE e.workflow_step_uuid = ws.workflow_step_uuid AND e.to_state = 'error')
            + least(power(2, least(coalesce(ws.attempts, 1), 6)) * interval '1 second', interval '60 seconds'),
            cur.created_at
        ) AS due_at
    FROM tasker.workflow_step_transitions cur
    JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = cur.workflow_step_uuid
    WHERE cur.most_recent AND cur.to_state = 'waiting_for_retry'
) waiting;

-- name: SweepStrandedSample :many
-- A few stranded steps (waiting_for_retry but not retry-eligible), for logs
-- and the status command: nothing will ever move them without an operator.
SELECT ws.workflow_step_uuid, ws.task_uuid, ws.attempts, ws.max_attempts, ws.retryable
FROM tasker.workflow_step_transitions cur
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = cur.workflow_step_uuid
WHERE cur.most_recent AND cur.to_state = 'waiting_for_retry'
  AND NOT (coalesce(ws.attempts, 0) = 0
           OR (ws.retryable AND coalesce(ws.attempts, 0) < coalesce(ws.max_attempts, 3)))
ORDER BY ws.updated_at
LIMIT @sample_limit;

-- name: StepDueStatus :one
-- Every condition of the due rule for one step, so an operator can see why
-- it is or is not due.
SELECT
    coalesce(cur.to_state, 'pending')::varchar AS current_state,
    ws.processed,
    ws.in_process,
    (coalesce(ws.attempts, 0) = 0
     OR (ws.retryable AND coalesce(ws.attempts, 0) < coalesce(ws.max_attempts, 3)))::boolean AS retry_eligible,
    (SELECT count(*) FROM tasker.workflow_step_edges edge
     LEFT JOIN tasker.workflow_step_transitions parent
         ON parent.workflow_step_uuid = edge.from_step_uuid AND parent.most_recent
     WHERE edge.to_step_uuid = ws.workflow_step_uuid
       AND coalesce(parent.to_state, 'pending') NOT IN ('complete', 'resolved_manually'))::integer AS unmet_parents,
    coalesce(
        ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second',
        (SELECT max(e.created_at) FROM tasker.workflow_step_transitions e
         WHERE e.workflow_step_uuid = ws.workflow_step_uuid AND e.to_state = 'error')
        + least(power(2, least(coalesce(ws.attempts, 1), 6)) * interval '1 second', interval '60 seconds'),
        cur.created_at,
        ws.created_at
    ) AS due_at,
    (ws.backoff_request_seconds IS NOT NULL AND ws.last_attempted_at IS NOT NULL)::boolean AS due_from_backoff,
    ws.attempts,
    ws.max_attempts,
    ws.retryable,
    now()::timestamp AS db_now
FROM tasker.workflow_steps ws
LEFT JOIN tasker.workflow_step_transitions cur
    ON cur.workflow_step_uuid = ws.workflow_step_uuid AND cur.most_recent
WHERE ws.workflow_step_uuid = @workflow_step_uuid;

-- name: StepCountsByState :many
-- Steps per current state (no transition rows means pending).
SELECT coalesce(cur.to_state, 'pending')::varchar AS state, count(*)::bigint AS steps
FROM tasker.workflow_steps ws
LEFT JOIN tasker.workflow_step_transitions cur
    ON cur.workflow_step_uuid = ws.workflow_step_uuid AND cur.most_recent
GROUP BY 1
ORDER BY 1;
