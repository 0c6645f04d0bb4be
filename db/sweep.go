package db

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tasker-sweeper/retrysweeper/db/internal/dbsqlc"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// claim is one claimed step, whichever query claimed it.
type claim struct {
	step, task uuid.UUID
	dueAt      time.Time
}

// moveDueBatch implements sweeper.Store's MoveDueBatch for either path:
// claim (FOR UPDATE SKIP LOCKED) and move in one transaction, a fixed
// number of statements whatever the batch size.
func (s *base) moveDueBatch(ctx context.Context, p pathStore, b sweeper.Batch) (sweeper.BatchResult, error) {
	prov := map[string]any{
		"actor":    "tasker-sweeper/sweep",
		"why":      retryReason(b),
		"sweep_id": b.SweepID.String(),
		"batch":    b.Number,
		"forced":   b.Force,
	}
	for k, v := range b.Provenance {
		// An operator's retry: who asked and why replace the sweep's.
		if k == "why" && v == "" {
			continue
		}
		prov[k] = v
	}
	meta, err := statemachine.Metadata(statemachine.RetryEvent(), time.Now(), prov)
	if err != nil {
		return sweeper.BatchResult{}, fmt.Errorf("build metadata: %w", err)
	}
	var res sweeper.BatchResult
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		var claimed []claim
		var err error
		if b.OnlyStep != nil {
			claimed, err = claims(q.StepClaimForRetry(ctx, dbsqlc.StepClaimForRetryParams{
				Now: s.now(), WorkflowStepUUID: *b.OnlyStep, Force: b.Force,
			}))
		} else {
			claimed, res.WindowFull, err = p.claim(ctx, q, b)
		}
		if err != nil {
			return fmt.Errorf("claim due steps: %w", asSentinel(err))
		}
		res.Claimed = len(claimed)
		if len(claimed) == 0 {
			return nil
		}
		res.Moved, err = moveClaimed(ctx, q, claimed, meta)
		if err != nil {
			return err
		}
		if err := p.afterMove(ctx, q, res.Moved); err != nil {
			return err
		}
		return notify(ctx, q, b, res.Moved)
	})
	if err != nil {
		return sweeper.BatchResult{}, fmt.Errorf("batch %d: %w", b.Number, err)
	}
	return res, nil
}

// claimRow is the shape every claim query returns.
type claimRow = struct {
	WorkflowStepUUID uuid.UUID
	TaskUUID         uuid.UUID
	DueAt            time.Time
}

func claims[R ~claimRow](rows []R, err error) ([]claim, error) {
	out := make([]claim, len(rows))
	for i, row := range rows {
		r := claimRow(row)
		out[i] = claim{r.WorkflowStepUUID, r.TaskUUID, r.DueAt}
	}
	return out, err
}

// moveClaimed moves the claimed steps to pending in one statement; a step
// another writer changed meanwhile is simply not among the moved.
func moveClaimed(ctx context.Context, q *dbsqlc.Queries, claimed []claim, meta []byte) ([]sweeper.Moved, error) {
	ids := make([]uuid.UUID, len(claimed))
	dues := make([]time.Time, len(claimed))
	dueOf := make(map[uuid.UUID]time.Time, len(claimed))
	for i, c := range claimed {
		ids[i], dues[i] = c.step, c.dueAt
		dueOf[c.step] = c.dueAt
	}
	rows, err := q.SweepMoveToPending(ctx, dbsqlc.SweepMoveToPendingParams{StepUUIDs: ids, DueAts: dues, Metadata: meta})
	if err != nil {
		return nil, fmt.Errorf("move steps to pending: %w", asSentinel(err))
	}
	moved := make([]sweeper.Moved, len(rows))
	for i, m := range rows {
		moved[i] = sweeper.Moved{StepUUID: m.WorkflowStepUUID, TaskUUID: m.TaskUUID, DueAt: dueOf[m.WorkflowStepUUID], MovedAt: m.MovedAt}
	}
	return moved, nil
}

// notify tells the batch's channel, if any, which tasks have steps pending
// again; PostgreSQL delivers it only if the transaction commits.
func notify(ctx context.Context, q *dbsqlc.Queries, b sweeper.Batch, moved []sweeper.Moved) error {
	if b.NotifyChannel == "" || len(moved) == 0 {
		return nil
	}
	tasks := make([]uuid.UUID, 0, len(moved))
	seen := make(map[uuid.UUID]bool, len(moved))
	for _, m := range moved {
		if !seen[m.TaskUUID] {
			seen[m.TaskUUID] = true
			tasks = append(tasks, m.TaskUUID)
		}
	}
	for _, payload := range notifyPayloads(b.SweepID, tasks) {
		if err := q.SweepNotify(ctx, dbsqlc.SweepNotifyParams{Channel: b.NotifyChannel, Payload: payload}); err != nil {
			return fmt.Errorf("notify %s: %w", b.NotifyChannel, asSentinel(err))
		}
	}
	return nil
}

func retryReason(b sweeper.Batch) string {
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

// CountDue implements sweeper.Store. It always evaluates the due rule over
// the tasker tables, whatever the path: it is the reference a dry run and
// `sweeper status` report, and it writes nothing.
func (s *base) CountDue(ctx context.Context) (sweeper.DueCounts, error) {
	row, err := s.q.SweepCountDue(ctx, s.now())
	if err != nil {
		return sweeper.DueCounts{}, fmt.Errorf("count due steps: %w", asSentinel(err))
	}
	return sweeper.DueCounts{Due: row.Due, Stranded: row.Stranded, NotYetDue: row.NotYetDue, NextDueAt: row.NextDueAt}, nil
}
