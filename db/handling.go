package db

import (
	"context"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/handling"
)

// StepForFailure implements handling.Store.
func (s *base) StepForFailure(ctx context.Context, step uuid.UUID) (handling.Step, error) {
	rec, err := s.GetStep(ctx, step)
	if err != nil {
		return handling.Step{}, err
	}
	return handling.Step{
		StepUUID:        rec.StepUUID,
		TaskUUID:        rec.TaskUUID,
		Name:            rec.Name,
		State:           rec.State,
		Retryable:       rec.Retryable,
		MaxAttempts:     rec.MaxAttempts,
		Attempts:        rec.Attempts,
		LastAttemptedAt: rec.LastAttemptedAt,
		DBNow:           rec.DBNow,
	}, nil
}
