-- name: StepGet :one
-- A step with its current state (no transition rows means pending) and the
-- database clock, which every due-time decision is measured against.
SELECT
    ws.workflow_step_uuid,
    ws.task_uuid,
    ws.named_step_uuid,
    coalesce(ns.name, 'unknown_step')::varchar AS step_name,
    ws.retryable,
    ws.max_attempts,
    ws.in_process,
    ws.processed,
    ws.attempts,
    ws.last_attempted_at,
    ws.backoff_request_seconds,
    ws.created_at,
    ws.updated_at,
    coalesce(cur.to_state, 'pending')::varchar AS current_state,
    coalesce(cur.sort_key, 0)::integer AS current_sort_key,
    now()::timestamp AS db_now
FROM tasker.workflow_steps ws
LEFT JOIN tasker.named_steps ns ON ns.named_step_uuid = ws.named_step_uuid
LEFT JOIN tasker.workflow_step_transitions cur
    ON cur.workflow_step_uuid = ws.workflow_step_uuid AND cur.most_recent
WHERE ws.workflow_step_uuid = @workflow_step_uuid;

-- name: TransitionWrite :one
-- Compare-and-swap transition: retire the current row only if its state is
-- still @from_state, then append the new most_recent row with sort_key max+1.
-- A step with no rows is pending, so from_state 'pending' also matches "no
-- current row". No row is returned when the state no longer matches; a
-- concurrent writer that slips past the CAS hits the unique most_recent index.
WITH retired AS (
    UPDATE tasker.workflow_step_transitions
    SET most_recent = false, updated_at = now()
    WHERE workflow_step_uuid = @workflow_step_uuid
      AND most_recent
      AND to_state = @from_state::varchar
    RETURNING workflow_step_uuid
)
INSERT INTO tasker.workflow_step_transitions (
    workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at
)
SELECT
    @workflow_step_uuid,
    @to_state::varchar,
    @from_state::varchar,
    @metadata::jsonb,
    (SELECT coalesce(max(t.sort_key), 0) + 1
     FROM tasker.workflow_step_transitions t
     WHERE t.workflow_step_uuid = @workflow_step_uuid),
    true,
    now(),
    now()
WHERE EXISTS (SELECT 1 FROM retired)
   OR (@from_state::varchar = 'pending' AND NOT EXISTS (
        SELECT 1 FROM tasker.workflow_step_transitions t
        WHERE t.workflow_step_uuid = @workflow_step_uuid AND t.most_recent))
RETURNING workflow_step_transition_uuid, sort_key, created_at;

-- name: StepRecordFailure :one
-- The step-row half of the inline handler's transaction: optionally the
-- backoff (with last_attempted_at = now(), so the step is due at
-- now() + backoff in database time), optionally releasing in_process.
UPDATE tasker.workflow_steps
SET backoff_request_seconds = CASE WHEN @set_backoff::boolean
                                   THEN sqlc.narg(backoff_request_seconds)::integer
                                   ELSE backoff_request_seconds END,
    last_attempted_at = CASE WHEN @set_backoff::boolean THEN now()::timestamp ELSE last_attempted_at END,
    in_process = CASE WHEN @release::boolean THEN false ELSE in_process END,
    updated_at = now()
WHERE workflow_step_uuid = @workflow_step_uuid
RETURNING last_attempted_at, backoff_request_seconds;
