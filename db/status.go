package db

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tasker-sweeper/retrysweeper/db/internal/dbsqlc"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// StepDue is every condition of the due rule for one step. The sweeper
// package owns the type (and the rule's explanation, StepDue.Due), so the
// admin API can read it without depending on this package.
type StepDue = sweeper.StepDue

// StepDueStatus evaluates the due rule for one step;
// statemachine.ErrStepNotFound when it does not exist.
func (s *base) StepDueStatus(ctx context.Context, step uuid.UUID) (StepDue, error) {
	row, err := s.q.StepDueStatus(ctx, dbsqlc.StepDueStatusParams{Now: s.now(), WorkflowStepUUID: step})
	if errors.Is(err, pgx.ErrNoRows) {
		return StepDue{}, fmt.Errorf("step %s: %w", step, statemachine.ErrStepNotFound)
	}
	if err != nil {
		return StepDue{}, fmt.Errorf("step %s due status: %w", step, asSentinel(err))
	}
	state, err := statemachine.ParseState(row.CurrentState)
	if err != nil {
		return StepDue{}, fmt.Errorf("step %s: %w", step, err)
	}
	return StepDue{
		StepUUID:          step,
		State:             state,
		Processed:         row.Processed,
		InProcess:         row.InProcess,
		RetryEligible:     row.RetryEligible,
		Retryable:         row.Retryable,
		Attempts:          row.Attempts,
		MaxAttempts:       row.MaxAttempts,
		UnmetParents:      int(row.UnmetParents),
		IsDue:             row.Due,
		RetryTimeReached:  row.RetryTimeReached,
		MovableButForTime: row.MovableButForTime,
		NeverDue:          row.NeverDue,
		DueAt:             row.DueAt,
		DueFromBackoff:    row.DueFromBackoff,
		DBNow:             row.DbNow,
	}, nil
}

// StepCountsByState counts steps per current state; every state is present.
func (s *base) StepCountsByState(ctx context.Context) (map[statemachine.State]int64, error) {
	rows, err := s.q.StepCountsByState(ctx)
	if err != nil {
		return nil, fmt.Errorf("count steps by state: %w", asSentinel(err))
	}
	counts := make(map[statemachine.State]int64, len(statemachine.States()))
	for _, st := range statemachine.States() {
		counts[st] = 0
	}
	for _, r := range rows {
		counts[statemachine.State(r.State)] = r.Steps
	}
	return counts, nil
}

// Ping checks the database answers, for readiness.
func (s *base) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping database: %w", err)
	}
	return nil
}
