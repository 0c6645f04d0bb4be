package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tasker-sweeper/retrysweeper/db/dbsqlc"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
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

// ApplyFailure implements handling.Store: the step columns, the transition
// and (on the schedule path) the schedule row are written atomically, so a
// crash or a lost race leaves none of them behind.
func (s *Store) ApplyFailure(ctx context.Context, w handling.FailureWrite) (handling.Applied, error) {
	path, err := s.Path(ctx)
	if err != nil {
		return handling.Applied{}, err
	}
	var applied handling.Applied
	if w.Event != nil && path == sweeper.PathSchedule {
		applied, err = s.applyFailureScheduled(ctx, w)
	} else {
		applied, err = s.applyFailureTx(ctx, w)
	}
	if err != nil {
		return handling.Applied{}, fmt.Errorf("apply failure to step %s: %w", w.StepUUID, err)
	}
	return applied, nil
}

// applyFailureScheduled is the hot path: one statement, one round trip.
func (s *Store) applyFailureScheduled(ctx context.Context, w handling.FailureWrite) (handling.Applied, error) {
	to, meta, err := Transition{StepUUID: w.StepUUID, From: w.From, Event: *w.Event, Provenance: w.Provenance}.target()
	if err != nil {
		return handling.Applied{}, err
	}
	row, err := s.q.FailureApplyScheduled(ctx, dbsqlc.FailureApplyScheduledParams{
		WorkflowStepUUID:      w.StepUUID,
		FromState:             string(w.From),
		SetBackoff:            w.BackoffSeconds != nil,
		BackoffRequestSeconds: w.BackoffSeconds,
		ToState:               string(to),
		Metadata:              meta,
	})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return handling.Applied{}, statemachine.ErrStepNotFound
	case err != nil:
		return handling.Applied{}, translate(err)
	case !row.Written:
		return handling.Applied{}, fmt.Errorf("transition from %s: state changed: %w", w.From, statemachine.ErrLostRace)
	}
	return handling.Applied{NextRetryAt: nextRetryAt(w, row.LastAttemptedAt)}, nil
}

// applyFailureTx writes the step columns and, when there is one, the
// transition in one transaction: the scan path (no schedule to write) and
// legacy mode (no transition).
func (s *Store) applyFailureTx(ctx context.Context, w handling.FailureWrite) (handling.Applied, error) {
	var applied handling.Applied
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
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
		applied.NextRetryAt = nextRetryAt(w, row.LastAttemptedAt)
		if w.Event == nil {
			return nil
		}
		_, err = writeTransition(ctx, q, Transition{
			StepUUID: w.StepUUID, From: w.From, Event: *w.Event, Provenance: w.Provenance,
		})
		return err
	})
	return applied, err
}

// nextRetryAt is when a step with a freshly written backoff becomes due.
func nextRetryAt(w handling.FailureWrite, lastAttemptedAt *time.Time) *time.Time {
	if w.BackoffSeconds == nil || lastAttemptedAt == nil {
		return nil
	}
	next := lastAttemptedAt.Add(time.Duration(*w.BackoffSeconds) * time.Second)
	return &next
}
