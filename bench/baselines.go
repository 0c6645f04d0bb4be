package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// dueStepsSQL selects due steps with exactly the sweep's due rule (tasker's
// readiness rule restricted to waiting_for_retry steps), as
// db/queries/sweep.sql (SweepClaimDue) states it, in the same form (the
// parent check as a LIMIT 1 subquery, which the planner runs per candidate
// by index): in waiting_for_retry, not processed, not in process, every
// parent complete or resolved_manually, retry-eligible, next retry time not
// after now(). Keep it in step with SweepClaimDue: the limit is only the
// limit if it is planned as well as the sweep. The baselines append their
// LIMIT and FOR UPDATE … SKIP LOCKED.
const dueStepsSQL = `
SELECT
    ws.workflow_step_uuid,
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
      ) <= now()`

// limitMoveSQL is the limit baseline: one set-based statement that claims
// up to $1 due steps (SKIP LOCKED), retires their current rows with a
// compare-and-swap on waiting_for_retry, appends the pending rows (sort_key
// max+1, the Retry event and provenance metadata $2 plus the due time) and
// touches updated_at: the same move, parity-exact, as the project's sweep.
const limitMoveSQL = `
WITH claimed AS (` + dueStepsSQL + `
    LIMIT $1
    FOR UPDATE OF ws, cur SKIP LOCKED
), retired AS (
    UPDATE tasker.workflow_step_transitions t
    SET most_recent = false, updated_at = now()
    FROM claimed c
    WHERE t.workflow_step_uuid = c.workflow_step_uuid
      AND t.most_recent
      AND t.to_state = 'waiting_for_retry'
    RETURNING t.workflow_step_uuid, c.due_at
), inserted AS (
    INSERT INTO tasker.workflow_step_transitions
        (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
    SELECT r.workflow_step_uuid, 'pending', 'waiting_for_retry',
           $2::jsonb || jsonb_build_object('due_at', to_char(r.due_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
           (SELECT max(x.sort_key) + 1 FROM tasker.workflow_step_transitions x
            WHERE x.workflow_step_uuid = r.workflow_step_uuid),
           true, now(), now()
    FROM retired r
    RETURNING workflow_step_uuid
), touched AS (
    UPDATE tasker.workflow_steps ws
    SET updated_at = now()
    FROM inserted i
    WHERE ws.workflow_step_uuid = i.workflow_step_uuid
    RETURNING 1
)
SELECT count(*) FROM touched`

// The naive baseline's statements: one due step per transaction.
const (
	naiveClaimSQL  = dueStepsSQL + "\nLIMIT 1\nFOR UPDATE OF ws, cur SKIP LOCKED"
	naiveRetireSQL = `
UPDATE tasker.workflow_step_transitions SET most_recent = false, updated_at = now()
WHERE workflow_step_uuid = $1 AND most_recent AND to_state = 'waiting_for_retry'`
	naiveInsertSQL = `
INSERT INTO tasker.workflow_step_transitions
    (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
VALUES ($1, 'pending', 'waiting_for_retry',
        $2::jsonb || jsonb_build_object('due_at', to_char($3::timestamp, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
        (SELECT max(x.sort_key) + 1 FROM tasker.workflow_step_transitions x WHERE x.workflow_step_uuid = $1),
        true, now(), now())`
	naiveTouchSQL = `UPDATE tasker.workflow_steps SET updated_at = now() WHERE workflow_step_uuid = $1`
)

// retryMetadata is the metadata of a pending row written by a baseline,
// shaped like the sweeper's (event, timestamp, provenance).
func retryMetadata(actor string, sweepID uuid.UUID, batch int) ([]byte, error) {
	return statemachine.Metadata(statemachine.RetryEvent(), time.Now(), map[string]any{
		"actor":    actor,
		"why":      "backoff expired",
		"sweep_id": sweepID.String(),
		"batch":    batch,
		"forced":   false,
	})
}

// baselineRun is the outcome of one baseline run.
type baselineRun struct {
	moved   int
	elapsed time.Duration
	capped  bool
}

func (r baselineRun) perSecond() float64 { return float64(r.moved) / r.elapsed.Seconds() }

// runLimit loops limitMoveSQL in batches on one connection, autocommit,
// until a batch moves nothing.
func (b *bench) runLimit(ctx context.Context, database string) (baselineRun, error) {
	conn, err := b.connectOne(ctx, database)
	if err != nil {
		return baselineRun{}, err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	sweepID := uuid.New()
	var res baselineRun
	start := time.Now()
	for batch := 1; ; batch++ {
		meta, err := retryMetadata("bench/limit", sweepID, batch)
		if err != nil {
			return res, err
		}
		var moved int
		if err := conn.QueryRow(ctx, limitMoveSQL, b.sz.limitBatch, meta).Scan(&moved); err != nil {
			return res, fmt.Errorf("limit batch %d: %w", batch, err)
		}
		res.moved += moved
		if moved == 0 {
			break
		}
	}
	res.elapsed = time.Since(start)
	return res, nil
}

// runNaive moves due steps one transaction per step (claim one with SKIP
// LOCKED, retire, insert, touch, commit) on naiveWorkers connections,
// stopping when nothing is due or after naiveCap.
func (b *bench) runNaive(ctx context.Context, database string) (baselineRun, error) {
	conns := make([]*pgx.Conn, b.sz.naiveWorkers)
	for i := range conns {
		c, err := b.connectOne(ctx, database)
		if err != nil {
			return baselineRun{}, err
		}
		conns[i] = c
		defer func() { _ = c.Close(context.WithoutCancel(ctx)) }()
	}
	sweepID := uuid.New()
	var (
		moved    atomic.Int64
		capped   atomic.Bool
		wg       sync.WaitGroup
		errMu    sync.Mutex
		firstErr error
	)
	start := time.Now()
	deadline := start.Add(b.sz.naiveCap)
	for w, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 1; ctx.Err() == nil; n++ {
				if time.Now().After(deadline) {
					capped.Store(true)
					return
				}
				ok, err := naiveMoveOne(ctx, conn, sweepID, w*1_000_000+n)
				if err != nil {
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					return
				}
				if !ok {
					return
				}
				moved.Add(1)
			}
		}()
	}
	wg.Wait()
	res := baselineRun{moved: int(moved.Load()), elapsed: time.Since(start), capped: capped.Load()}
	if firstErr != nil {
		return res, firstErr
	}
	return res, ctx.Err()
}

// errNothingDue ends a naive worker's transaction when no step is due.
var errNothingDue = errors.New("nothing due")

// naiveMoveOne moves one due step in its own transaction; false when none
// was due.
func naiveMoveOne(ctx context.Context, conn *pgx.Conn, sweepID uuid.UUID, n int) (bool, error) {
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var step uuid.UUID
		var dueAt time.Time
		err := tx.QueryRow(ctx, naiveClaimSQL).Scan(&step, &dueAt)
		if errors.Is(err, pgx.ErrNoRows) {
			return errNothingDue
		}
		if err != nil {
			return fmt.Errorf("naive claim: %w", err)
		}
		tag, err := tx.Exec(ctx, naiveRetireSQL, step)
		if err != nil {
			return fmt.Errorf("naive retire: %w", err)
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("naive retire of %s: %d rows", step, tag.RowsAffected())
		}
		meta, err := retryMetadata("bench/naive", sweepID, n)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, naiveInsertSQL, step, meta, dueAt); err != nil {
			return fmt.Errorf("naive insert: %w", err)
		}
		if _, err := tx.Exec(ctx, naiveTouchSQL, step); err != nil {
			return fmt.Errorf("naive touch: %w", err)
		}
		return nil
	})
	if errors.Is(err, errNothingDue) {
		return false, nil
	}
	return err == nil, err
}
