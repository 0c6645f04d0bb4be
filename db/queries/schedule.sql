-- Queries on the sweeper-owned retry schedule (db/migrations/sweeper). They
-- are used only when those objects exist; see Store.Path.

-- name: SchedulePresent :one
-- Whether the sweeper-owned objects are installed in this database.
SELECT (to_regclass('tasker_sweeper.retry_schedule') IS NOT NULL
        AND to_regclass('tasker.tasker_sweeper_waiting_unscheduled') IS NOT NULL)::boolean AS present;

-- name: ScheduleClaimDue :many
-- SweepClaimDue driven by the schedule: candidates come from the due_at
-- index in due order, so the cost follows the number of due steps, not the
-- size of the tables. The full due rule is re-checked against the tasker
-- tables (the schedule is only a hint), and the schedule row, the step row
-- and its current transition are locked, skipping rows others hold.
-- The candidates are picked first, by the due_at index alone, so the plan
-- stays a handful of index probes per step even when the schedule's
-- statistics are stale (a burst of adopted rows looks like an empty table).
WITH candidates AS MATERIALIZED (
    SELECT s.workflow_step_uuid, s.due_at
    FROM tasker_sweeper.retry_schedule s
    WHERE s.due_at <= now()
    ORDER BY s.due_at
    LIMIT @batch_limit
    FOR UPDATE OF s SKIP LOCKED
)
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
FROM candidates s
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = s.workflow_step_uuid
JOIN tasker.workflow_step_transitions cur
    ON cur.workflow_step_uuid = s.workflow_step_uuid AND cur.most_recent
WHERE cur.to_state = 'waiting_for_retry'
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
ORDER BY s.due_at
FOR UPDATE OF ws, cur SKIP LOCKED;

-- name: ScheduleForget :exec
-- Drops the schedule rows of steps a batch moved to pending.
DELETE FROM tasker_sweeper.retry_schedule WHERE workflow_step_uuid = ANY(@step_uuids::uuid[]);

-- name: FailureApplyScheduled :one
-- The inline handler's whole write on the schedule path, as one statement (so
-- one implicit transaction and one round trip): lock the step row, retire
-- its current transition if it is still @from_state (the compare-and-swap),
-- and only then write the backoff columns, append the new most_recent
-- transition with sort_key max+1, and, when the step is parked in
-- waiting_for_retry, put it on the schedule at last_attempted_at + backoff.
-- A step with no transition rows is pending, so from_state 'pending' also
-- matches "no current row". The locks are taken in the order of the
-- multi-statement version (step row, then transition row).
-- No row: the step does not exist. written = false: the state no longer
-- matched and nothing was written. A concurrent writer that slips past
-- the CAS hits the unique most_recent index and the statement fails whole.
WITH locked AS (
    SELECT ws.workflow_step_uuid
    FROM tasker.workflow_steps ws
    WHERE ws.workflow_step_uuid = @workflow_step_uuid
    FOR UPDATE
), retired AS (
    UPDATE tasker.workflow_step_transitions t
    SET most_recent = false, updated_at = now()
    FROM locked
    WHERE t.workflow_step_uuid = locked.workflow_step_uuid
      AND t.most_recent
      AND t.to_state = @from_state::varchar
    RETURNING t.workflow_step_uuid
), step AS (
    UPDATE tasker.workflow_steps ws
    SET backoff_request_seconds = CASE WHEN @set_backoff::boolean
                                       THEN sqlc.narg(backoff_request_seconds)::integer
                                       ELSE ws.backoff_request_seconds END,
        last_attempted_at = CASE WHEN @set_backoff::boolean THEN now()::timestamp ELSE ws.last_attempted_at END,
        in_process = false,
        updated_at = now()
    FROM locked
    WHERE ws.workflow_step_uuid = locked.workflow_step_uuid
      AND (EXISTS (SELECT 1 FROM retired)
           OR (@from_state::varchar = 'pending' AND NOT EXISTS (
                SELECT 1 FROM tasker.workflow_step_transitions t
                WHERE t.workflow_step_uuid = locked.workflow_step_uuid AND t.most_recent)))
    RETURNING ws.workflow_step_uuid, ws.last_attempted_at, ws.backoff_request_seconds
), appended AS (
    INSERT INTO tasker.workflow_step_transitions (
        workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at
    )
    SELECT
        step.workflow_step_uuid,
        @to_state::varchar,
        @from_state::varchar,
        -- A parked step's transition says it is scheduled, which keeps it
        -- out of adoption's index (tasker_sweeper_waiting_unscheduled).
        CASE WHEN @to_state::varchar = 'waiting_for_retry'
             THEN @metadata::jsonb || '{"sweeper_scheduled": true}'::jsonb
             ELSE @metadata::jsonb END,
        (SELECT coalesce(max(t.sort_key), 0) + 1
         FROM tasker.workflow_step_transitions t
         WHERE t.workflow_step_uuid = step.workflow_step_uuid),
        true,
        now(),
        now()
    FROM step
    RETURNING sort_key
), parked AS (
    INSERT INTO tasker_sweeper.retry_schedule (workflow_step_uuid, due_at, stranded, updated_at)
    SELECT step.workflow_step_uuid,
           step.last_attempted_at + step.backoff_request_seconds * interval '1 second',
           false,
           now()
    FROM step
    WHERE @to_state::varchar = 'waiting_for_retry'
      AND step.last_attempted_at IS NOT NULL
      AND step.backoff_request_seconds IS NOT NULL
    ON CONFLICT (workflow_step_uuid)
    DO UPDATE SET due_at = excluded.due_at, stranded = false, updated_at = now()
)
SELECT
    (SELECT step.last_attempted_at FROM step) AS last_attempted_at,
    EXISTS (SELECT 1 FROM appended) AS written
FROM locked;

-- name: ScheduleReschedule :one
-- After a sweep, the schedule rows whose due time has passed but which the
-- sweep did not move are re-evaluated so the next sweeps do not scan them
-- again: rows of steps no longer waiting are dropped; steps whose real due
-- time is later (their backoff changed) move to it; steps that are due but
-- blocked (parents, processed, in process) or not retry-eligible (stranded)
-- are looked at again after @recheck_seconds. Rows that are movable right now
-- are neither changed nor locked: a concurrent sweeper's claim must never
-- skip them because this statement holds them. A row the inline handler
-- rewrote since it was read (it re-parked the step) is left alone: the
-- decision was made on the step as it was.
WITH candidates AS (
    SELECT
        s.workflow_step_uuid,
        s.updated_at AS seen_updated_at,
        cur.to_state,
        (coalesce(ws.attempts, 0) = 0
         OR (ws.retryable AND coalesce(ws.attempts, 0) < coalesce(ws.max_attempts, 3))) AS eligible,
        (NOT ws.processed AND NOT ws.in_process AND NOT EXISTS (
            SELECT 1
            FROM tasker.workflow_step_edges edge
            LEFT JOIN tasker.workflow_step_transitions parent
                ON parent.workflow_step_uuid = edge.from_step_uuid AND parent.most_recent
            WHERE edge.to_step_uuid = ws.workflow_step_uuid
              AND coalesce(parent.to_state, 'pending') NOT IN ('complete', 'resolved_manually'))) AS unblocked,
        coalesce(
            ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second',
            (SELECT max(e.created_at) FROM tasker.workflow_step_transitions e
             WHERE e.workflow_step_uuid = ws.workflow_step_uuid AND e.to_state = 'error')
            + least(power(2, least(coalesce(ws.attempts, 1), 6)) * interval '1 second', interval '60 seconds'),
            cur.created_at
        ) AS real_due
    FROM tasker_sweeper.retry_schedule s
    LEFT JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = s.workflow_step_uuid
    LEFT JOIN tasker.workflow_step_transitions cur
        ON cur.workflow_step_uuid = s.workflow_step_uuid AND cur.most_recent
    WHERE s.due_at <= now()
    ORDER BY s.due_at
    LIMIT @batch_limit
), dropped AS (
    DELETE FROM tasker_sweeper.retry_schedule s
    USING candidates c
    WHERE s.workflow_step_uuid = c.workflow_step_uuid
      AND c.to_state IS DISTINCT FROM 'waiting_for_retry'
      AND s.due_at <= now()
      AND s.updated_at = c.seen_updated_at
    RETURNING 1
), deferred AS (
    UPDATE tasker_sweeper.retry_schedule s
    SET due_at = CASE WHEN c.real_due > now() AND c.eligible THEN c.real_due
                      ELSE now() + make_interval(secs => sqlc.arg(recheck_seconds)::integer) END,
        stranded = NOT c.eligible,
        updated_at = now()
    FROM candidates c
    WHERE s.workflow_step_uuid = c.workflow_step_uuid
      AND c.to_state = 'waiting_for_retry'
      AND NOT (c.eligible AND c.unblocked AND c.real_due <= now())
      AND s.due_at <= now()
      AND s.updated_at = c.seen_updated_at
    RETURNING 1
)
SELECT
    (SELECT count(*) FROM candidates)::bigint AS examined,
    (SELECT count(*) FROM dropped)::bigint AS dropped,
    (SELECT count(*) FROM deferred)::bigint AS deferred;

-- name: ScheduleAdopt :one
-- Adopts waiting_for_retry steps that other writers parked (the
-- orchestrator's own error handling, steps parked before the sweeper was
-- installed): every current waiting row created at or after @since that has
-- no schedule row gets one, at its real due time. The partial index
-- tasker_sweeper_waiting_unscheduled makes this proportional to the window;
-- rows the inline handler scheduled itself are not in it.
WITH adopted AS (
    INSERT INTO tasker_sweeper.retry_schedule (workflow_step_uuid, due_at, stranded, updated_at)
    SELECT
        cur.workflow_step_uuid,
        coalesce(
            ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second',
            (SELECT max(e.created_at) FROM tasker.workflow_step_transitions e
             WHERE e.workflow_step_uuid = ws.workflow_step_uuid AND e.to_state = 'error')
            + least(power(2, least(coalesce(ws.attempts, 1), 6)) * interval '1 second', interval '60 seconds'),
            cur.created_at
        ),
        NOT (coalesce(ws.attempts, 0) = 0
             OR (ws.retryable AND coalesce(ws.attempts, 0) < coalesce(ws.max_attempts, 3))),
        now()
    FROM tasker.workflow_step_transitions cur
    JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = cur.workflow_step_uuid
    WHERE cur.most_recent
      AND cur.to_state = 'waiting_for_retry'
      AND (cur.metadata ->> 'sweeper_scheduled') IS NULL
      AND cur.created_at >= @since::timestamp
    -- Steps already scheduled are skipped by the primary key, one index
    -- probe each. (A NOT EXISTS here let the planner, trusting the empty
    -- table's statistics, rescan the growing schedule for every row.)
    ON CONFLICT (workflow_step_uuid) DO NOTHING
    RETURNING 1
)
SELECT count(*)::bigint AS adopted, now()::timestamp AS scanned_at FROM adopted;

-- name: AdoptionState :one
-- Where adoption has got to (a plain read: incremental passes need no lock).
SELECT watermark, last_full_pass, now()::timestamp AS db_now
FROM tasker_sweeper.adoption WHERE id = 1;

-- name: AdoptionLock :one
-- The same, locked so replicas take turns at the full pass: no row means
-- another replica is running one right now.
SELECT watermark, last_full_pass, now()::timestamp AS db_now
FROM tasker_sweeper.adoption WHERE id = 1
FOR UPDATE SKIP LOCKED;

-- name: AdoptionAdvance :exec
-- Moves the watermark forward (never back). Skipped while another
-- transaction holds the row (a replica's full pass, which advances it
-- itself): an incremental pass never waits behind one.
UPDATE tasker_sweeper.adoption
SET watermark = greatest(coalesce(watermark, @watermark::timestamp), @watermark::timestamp),
    last_full_pass = CASE WHEN @full_pass::boolean THEN @watermark::timestamp ELSE last_full_pass END
WHERE id = (SELECT a.id FROM tasker_sweeper.adoption a WHERE a.id = 1 FOR UPDATE SKIP LOCKED);

-- name: ScheduleOverdue :one
-- Whether any schedule row's time has come: when none has, a sweep has
-- nothing to claim or re-evaluate. One probe of the due_at index.
SELECT EXISTS (SELECT 1 FROM tasker_sweeper.retry_schedule WHERE due_at <= now()) AS overdue;

-- name: ScheduleStranded :one
-- Stranded steps as of their last evaluation, from the schedule's partial index.
SELECT count(*)::bigint AS stranded_steps FROM tasker_sweeper.retry_schedule WHERE stranded;

-- name: ScheduleStrandedSample :many
SELECT ws.workflow_step_uuid, ws.task_uuid, ws.attempts, ws.max_attempts, ws.retryable
FROM tasker_sweeper.retry_schedule s
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = s.workflow_step_uuid
WHERE s.stranded
ORDER BY s.updated_at
LIMIT @sample_limit;
