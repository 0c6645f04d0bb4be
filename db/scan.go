package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tasker-sweeper/retrysweeper/db/internal/dbsqlc"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// scanStore is the scan path: the sweeper-owned objects are not installed,
// so every sweep evaluates the due rule over every waiting step. Correct on
// any tasker database; slower on large tables.
type scanStore struct{ *base }

func (*scanStore) path() sweeper.Path { return sweeper.PathScan }

func (s *scanStore) claim(ctx context.Context, q *dbsqlc.Queries, b sweeper.Batch) ([]claim, error) {
	return claims(q.SweepClaimDue(ctx, dbsqlc.SweepClaimDueParams{Now: s.now(), BatchLimit: int32(b.Limit)}))
}

func (*scanStore) afterMove(context.Context, *dbsqlc.Queries, []sweeper.Moved) error { return nil }

// prepare has nothing to do: the claims find what is due.
func (*scanStore) prepare(context.Context) (sweeper.Preparation, error) {
	return sweeper.Preparation{}, nil
}

func (s *scanStore) countDueLeft(ctx context.Context) (int64, error) {
	n, err := s.q.SweepCountDueLeft(ctx, s.now())
	if err != nil {
		return 0, fmt.Errorf("count due steps left: %w", asSentinel(err))
	}
	return n, nil
}

func (s *scanStore) stranded(ctx context.Context, sample int) (int64, []sweeper.StrandedStep, error) {
	steps, err := s.strandedSample(ctx, sample)
	if err != nil || len(steps) == 0 {
		return 0, nil, err
	}
	counts, err := s.CountDue(ctx)
	if err != nil {
		return 0, nil, err
	}
	return counts.Stranded, steps, nil
}

func (s *scanStore) strandedSample(ctx context.Context, limit int) ([]sweeper.StrandedStep, error) {
	rows, err := s.q.SweepStrandedSample(ctx, int32(limit))
	if err != nil {
		return nil, fmt.Errorf("list stranded steps: %w", asSentinel(err))
	}
	return strandedSteps(rows), nil
}

func (s *scanStore) backlog(ctx context.Context) (sweeper.Backlog, error) {
	row, err := s.q.SweepBacklog(ctx, s.now())
	if err != nil {
		return sweeper.Backlog{}, fmt.Errorf("count the backlog: %w", asSentinel(err))
	}
	return sweeper.Backlog{Waiting: row.Waiting, Due: row.Due, OldestDueAt: row.OldestDueAt, DBNow: row.DbNow}, nil
}

func (*scanStore) reconcile(context.Context, time.Duration) (sweeper.Reconciliation, error) {
	return sweeper.Reconciliation{}, sweeper.ErrNoSchedule
}

// applyFailure writes the step columns and the transition in one
// transaction (there is no schedule to write).
func (s *scanStore) applyFailure(ctx context.Context, w handling.FailureWrite) (handling.FailureWritten, error) {
	return s.applyFailureTx(ctx, w)
}

// applyFailureTx writes the step columns and, when there is one, the
// transition in one transaction: the scan path, and legacy mode (no
// transition) on either path.
func (s *base) applyFailureTx(ctx context.Context, w handling.FailureWrite) (handling.FailureWritten, error) {
	var written handling.FailureWritten
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		writtenAt, err := q.StepRecordFailure(ctx, dbsqlc.StepRecordFailureParams{
			SetBackoff:            w.BackoffSeconds != nil,
			BackoffRequestSeconds: w.BackoffSeconds,
			Release:               w.Event != nil,
			WorkflowStepUUID:      w.StepUUID,
		})
		if errors.Is(err, pgx.ErrNoRows) {
			return statemachine.ErrStepNotFound
		}
		if err != nil {
			return asSentinel(err)
		}
		written.NextRetryAt = nextRetryAt(w, writtenAt)
		if w.Event == nil {
			return nil
		}
		_, err = writeTransition(ctx, q, Transition{
			StepUUID: w.StepUUID, From: w.From, Event: *w.Event, Provenance: w.Provenance,
		})
		return err
	})
	return written, err
}

// nextRetryAt is when a step with a freshly written backoff becomes due:
// the backoff was written with last_attempted_at = writtenAt.
func nextRetryAt(w handling.FailureWrite, writtenAt time.Time) *time.Time {
	if w.BackoffSeconds == nil {
		return nil
	}
	next := writtenAt.Add(time.Duration(*w.BackoffSeconds) * time.Second)
	return &next
}

// strandedRow is the shape both stranded-sample queries return.
type strandedRow = struct {
	WorkflowStepUUID uuid.UUID
	TaskUUID         uuid.UUID
	Attempts         *int32
	MaxAttempts      *int32
	Retryable        bool
}

func strandedSteps[R ~strandedRow](rows []R) []sweeper.StrandedStep {
	steps := make([]sweeper.StrandedStep, len(rows))
	for i, row := range rows {
		r := strandedRow(row)
		steps[i] = sweeper.StrandedStep{
			StepUUID: r.WorkflowStepUUID, TaskUUID: r.TaskUUID,
			Attempts: r.Attempts, MaxAttempts: r.MaxAttempts, Retryable: r.Retryable,
		}
	}
	return steps
}
