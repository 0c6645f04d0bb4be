package db

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"retrysweeper/db/dbsqlc"
	"retrysweeper/statemachine"
	"retrysweeper/sweeper"
)

var _ sweeper.Store = (*Store)(nil)

// MoveDueBatch implements sweeper.Store: claim (FOR UPDATE SKIP LOCKED) and
// move in one transaction, two statements whatever the batch size.
func (s *Store) MoveDueBatch(ctx context.Context, b sweeper.Batch) (sweeper.BatchResult, error) {
	var res sweeper.BatchResult
	meta, err := statemachine.Metadata(statemachine.RetryEvent(), time.Now(), map[string]any{
		"actor":    "tasker-sweeper/sweep",
		"why":      retryWhy(b),
		"sweep_id": b.SweepID.String(),
		"batch":    b.Number,
		"forced":   b.Force,
	})
	if err != nil {
		return res, fmt.Errorf("build metadata: %w", err)
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		claimed, err := q.SweepClaimDue(ctx, dbsqlc.SweepClaimDueParams{
			OnlyStep: b.OnlyStep, Force: b.Force, BatchLimit: int32(b.Limit),
		})
		if err != nil {
			return fmt.Errorf("claim due steps: %w", translate(err))
		}
		res.Claimed = len(claimed)
		if len(claimed) == 0 {
			return nil
		}
		ids := make([]uuid.UUID, len(claimed))
		dues := make([]time.Time, len(claimed))
		dueOf := make(map[uuid.UUID]time.Time, len(claimed))
		for i, c := range claimed {
			ids[i], dues[i] = c.WorkflowStepUUID, c.DueAt
			dueOf[c.WorkflowStepUUID] = c.DueAt
		}
		moved, err := q.SweepMoveToPending(ctx, dbsqlc.SweepMoveToPendingParams{
			StepUuids: ids, DueAts: dues, Metadata: meta,
		})
		if err != nil {
			return fmt.Errorf("move steps to pending: %w", translate(err))
		}
		res.Moved = make([]sweeper.Moved, len(moved))
		tasks := make([]uuid.UUID, 0, len(moved))
		seen := make(map[uuid.UUID]bool, len(moved))
		for i, m := range moved {
			res.Moved[i] = sweeper.Moved{
				StepUUID: m.WorkflowStepUUID, TaskUUID: m.TaskUUID, DueAt: dueOf[m.WorkflowStepUUID], MovedAt: m.MovedAt,
			}
			if !seen[m.TaskUUID] {
				seen[m.TaskUUID] = true
				tasks = append(tasks, m.TaskUUID)
			}
		}
		if b.NotifyChannel == "" || len(tasks) == 0 {
			return nil
		}
		for _, payload := range notifyPayloads(b.SweepID, tasks) {
			if err := q.SweepNotify(ctx, dbsqlc.SweepNotifyParams{Channel: b.NotifyChannel, Payload: payload}); err != nil {
				return fmt.Errorf("notify %s: %w", b.NotifyChannel, translate(err))
			}
		}
		return nil
	})
	if err != nil {
		return sweeper.BatchResult{}, fmt.Errorf("batch %d: %w", b.Number, err)
	}
	return res, nil
}

func retryWhy(b sweeper.Batch) string {
	switch {
	case b.Force:
		return "forced retry: backoff released early by an operator"
	case b.OnlyStep != nil:
		return "manual retry: backoff expired"
	default:
		return "backoff expired"
	}
}

// maxNotifyPayload keeps each notification under PostgreSQL's 8000-byte
// payload limit, with room to spare.
const maxNotifyPayload = 7900

type notifyPayload struct {
	SweepID   string   `json:"sweep_id"`
	TaskUUIDs []string `json:"task_uuids"`
}

// notifyPayloads splits the task ids into as many JSON payloads as needed,
// each under maxNotifyPayload bytes.
func notifyPayloads(sweepID uuid.UUID, tasks []uuid.UUID) []string {
	const perID = 39 // a quoted uuid and a comma
	overhead := len(`{"sweep_id":"","task_uuids":[]}`) + 36
	perPayload := (maxNotifyPayload - overhead) / perID
	var out []string
	for start := 0; start < len(tasks); start += perPayload {
		end := min(start+perPayload, len(tasks))
		p := notifyPayload{SweepID: sweepID.String(), TaskUUIDs: make([]string, 0, end-start)}
		for _, t := range tasks[start:end] {
			p.TaskUUIDs = append(p.TaskUUIDs, t.String())
		}
		raw, _ := json.Marshal(p) // strings only: cannot fail
		out = append(out, string(raw))
	}
	return out
}

// CountDue implements sweeper.Store.
func (s *Store) CountDue(ctx context.Context) (sweeper.Counts, error) {
	row, err := s.q.SweepCountDue(ctx)
	if err != nil {
		return sweeper.Counts{}, fmt.Errorf("count due steps: %w", translate(err))
	}
	return sweeper.Counts{Due: row.Due, Stranded: row.Stranded, NotYetDue: row.NotYetDue, NextDueAt: row.NextDueAt}, nil
}

// StrandedSample implements sweeper.Store.
func (s *Store) StrandedSample(ctx context.Context, limit int) ([]sweeper.StrandedStep, error) {
	rows, err := s.q.SweepStrandedSample(ctx, int32(limit))
	if err != nil {
		return nil, fmt.Errorf("list stranded steps: %w", translate(err))
	}
	out := make([]sweeper.StrandedStep, len(rows))
	for i, r := range rows {
		out[i] = sweeper.StrandedStep{
			StepUUID: r.WorkflowStepUUID, TaskUUID: r.TaskUUID, Attempts: r.Attempts, MaxAttempts: r.MaxAttempts, Retryable: r.Retryable,
		}
	}
	return out, nil
}
