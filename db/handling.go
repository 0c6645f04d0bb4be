package db

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tasker-sweeper/retrysweeper/handling"
)

// StepForFailure implements handling.Store.
func (s *base) StepForFailure(ctx context.Context, step uuid.UUID) (handling.Step, error) {
	rec, err := s.GetStep(ctx, step)
	if err != nil {
		return handling.Step{}, err
	}
	st := handling.Step{
		StepUUID:        rec.StepUUID,
		TaskUUID:        rec.TaskUUID,
		Name:            rec.Name,
		State:           rec.State,
		Retryable:       rec.Retryable,
		MaxAttempts:     rec.MaxAttempts,
		Attempts:        rec.Attempts,
		LastAttemptedAt: rec.LastAttemptedAt,
		DBNow:           rec.DBNow,
		TaskName:        rec.TaskName,
		TaskNamespace:   rec.TaskNamespace,
	}
	if rec.NamedTaskUUID != nil && rec.TemplateUpdatedAt != nil {
		st.NamedTaskUUID = *rec.NamedTaskUUID
		st.TemplateUpdatedAt = *rec.TemplateUpdatedAt
	}
	return st, nil
}

// TaskTemplate implements handling.TemplateStore: one primary-key read, made
// only when the step's read shows a template version the handler has not
// cached.
func (s *base) TaskTemplate(ctx context.Context, namedTask uuid.UUID) (handling.TemplateRecord, error) {
	row, err := s.q.TaskTemplateGet(ctx, namedTask)
	if errors.Is(err, pgx.ErrNoRows) {
		return handling.TemplateRecord{}, fmt.Errorf("task template %s: %w", namedTask, handling.ErrTemplateNotFound)
	}
	if err != nil {
		return handling.TemplateRecord{}, fmt.Errorf("read task template %s: %w", namedTask, asSentinel(err))
	}
	rec := handling.TemplateRecord{Name: row.Name, Namespace: row.Namespace, UpdatedAt: row.UpdatedAt}
	if row.Configuration != "" {
		rec.Configuration = []byte(row.Configuration)
	}
	return rec, nil
}
