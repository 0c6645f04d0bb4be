package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"retrysweeper/db/dbsqlc"
	"retrysweeper/handling"
	"retrysweeper/statemachine"
	"retrysweeper/sweeper"
)

var _ handling.Store = (*Store)(nil)

// StepForFailure implements handling.Store.
func (s *Store) StepForFailure(ctx context.Context, step uuid.UUID) (handling.Step, error) {
	rec, err := s.GetStep(ctx, step)
	if err != nil {
		return handling.Step{}, err
	}
	return handling.Step{
		StepUUID:              rec.StepUUID,
		TaskUUID:              rec.TaskUUID,
		Name:                  rec.Name,
		State:                 rec.State,
		Retryable:             rec.Retryable,
		MaxAttempts:           rec.MaxAttempts,
		Attempts:              rec.Attempts,
		LastAttemptedAt:       rec.LastAttemptedAt,
		BackoffRequestSeconds: rec.BackoffRequestSeconds,
		DBNow:                 rec.DBNow,
	}, nil
}

// ApplyFailure implements handling.Store: the step columns and the
// transition are written in one transaction, so a crash or a lost race
// leaves neither the backoff nor the transition behind.
func (s *Store) ApplyFailure(ctx context.Context, w handling.FailureWrite) (handling.Applied, error) {
	var applied handling.Applied
	// Known before the transaction starts: looking it up inside would need a
	// second connection while this one is held.
	path, err := s.Path(ctx)
	if err != nil {
		return applied, err
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		row, err := q.StepRecordFailure(ctx, dbsqlc.StepRecordFailureParams{
			SetBackoff:            w.BackoffSeconds != nil,
			BackoffRequestSeconds: w.BackoffSeconds,
			Release:               w.Event != nil,
			WorkflowStepUUID:      w.StepUUID,
		})
		if errors.Is(err, pgx.ErrNoRows) {
			return statemachine.ErrStepNotFound
		}
		if err != nil {
			return translate(err)
		}
		if w.BackoffSeconds != nil && row.LastAttemptedAt != nil {
			next := row.LastAttemptedAt.Add(time.Duration(*w.BackoffSeconds) * time.Second)
			applied.NextRetryAt = &next
		}
		if w.Event == nil {
			return nil
		}
		if _, err := writeTransition(ctx, q, Transition{
			StepUUID: w.StepUUID, From: w.From, Event: *w.Event, Provenance: w.Provenance,
		}); err != nil {
			return err
		}
		if path != sweeper.PathSchedule {
			return nil
		}
		return schedule(ctx, q, w, applied.NextRetryAt)
	})
	if err != nil {
		return handling.Applied{}, fmt.Errorf("apply failure to step %s: %w", w.StepUUID, err)
	}
	return applied, nil
}

// schedule puts a step the handler just parked in waiting_for_retry on the
// sweeper's schedule, in the same transaction.
func schedule(ctx context.Context, q *dbsqlc.Queries, w handling.FailureWrite, dueAt *time.Time) error {
	if w.Event == nil || w.Event.Type != statemachine.EventWaitForRetry || dueAt == nil {
		return nil
	}
	if err := q.SchedulePark(ctx, dbsqlc.ScheduleParkParams{WorkflowStepUUID: w.StepUUID, DueAt: *dueAt}); err != nil {
		return fmt.Errorf("schedule the retry: %w", translate(err))
	}
	return nil
}
