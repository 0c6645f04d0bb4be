package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tasker-sweeper/retrysweeper/db/dbsqlc"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

var _ sweeper.Store = (*Store)(nil)

// Path implements sweeper.Store: the schedule when the sweeper-owned objects
// are installed, the full scan otherwise. The answer is cached once known;
// installing the objects takes effect when the process restarts.
func (s *Store) Path(ctx context.Context) (sweeper.Path, error) {
	if p := s.path.Load(); p != nil {
		return *p, nil
	}
	present, err := s.q.SchedulePresent(ctx)
	if err != nil {
		return "", fmt.Errorf("look for the sweeper-owned objects: %w", translate(err))
	}
	p := sweeper.PathScan
	if present {
		p = sweeper.PathSchedule
	}
	s.path.Store(&p)
	return p, nil
}

// claim is one claimed step, whichever query claimed it.
type claim struct {
	step, task uuid.UUID
	dueAt      time.Time
}

// MoveDueBatch implements sweeper.Store: claim (FOR UPDATE SKIP LOCKED) and
// move in one transaction, a fixed number of statements whatever the batch
// size.
func (s *Store) MoveDueBatch(ctx context.Context, b sweeper.Batch) (sweeper.BatchResult, error) {
	path, err := s.Path(ctx)
	if err != nil {
		return sweeper.BatchResult{}, err
	}
	meta, err := statemachine.Metadata(statemachine.RetryEvent(), time.Now(), map[string]any{
		"actor":    "tasker-sweeper/sweep",
		"why":      retryWhy(b),
		"sweep_id": b.SweepID.String(),
		"batch":    b.Number,
		"forced":   b.Force,
	})
	if err != nil {
		return sweeper.BatchResult{}, fmt.Errorf("build metadata: %w", err)
	}
	var res sweeper.BatchResult
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		claimed, err := claimBatch(ctx, q, path, b)
		if err != nil {
			return fmt.Errorf("claim due steps: %w", translate(err))
		}
		res.Claimed = len(claimed)
		if len(claimed) == 0 {
			return nil
		}
		res.Moved, err = moveClaimed(ctx, q, claimed, meta)
		if err != nil {
			return err
		}
		if path == sweeper.PathSchedule {
			ids := make([]uuid.UUID, len(res.Moved))
			for i, m := range res.Moved {
				ids[i] = m.StepUUID
			}
			if err := q.ScheduleForget(ctx, ids); err != nil {
				return fmt.Errorf("drop moved steps from the schedule: %w", translate(err))
			}
		}
		return notify(ctx, q, b, res.Moved)
	})
	if err != nil {
		return sweeper.BatchResult{}, fmt.Errorf("batch %d: %w", b.Number, err)
	}
	return res, nil
}

func claimBatch(ctx context.Context, q *dbsqlc.Queries, path sweeper.Path, b sweeper.Batch) ([]claim, error) {
	switch {
	case b.OnlyStep != nil:
		return claims(q.StepClaimForRetry(ctx, dbsqlc.StepClaimForRetryParams{WorkflowStepUUID: *b.OnlyStep, Force: b.Force}))
	case path == sweeper.PathSchedule:
		return claims(q.ScheduleClaimDue(ctx, int32(b.Limit)))
	default:
		return claims(q.SweepClaimDue(ctx, int32(b.Limit)))
	}
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
	rows, err := q.SweepMoveToPending(ctx, dbsqlc.SweepMoveToPendingParams{StepUuids: ids, DueAts: dues, Metadata: meta})
	if err != nil {
		return nil, fmt.Errorf("move steps to pending: %w", translate(err))
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
			return fmt.Errorf("notify %s: %w", b.NotifyChannel, translate(err))
		}
	}
	return nil
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

// CountDue implements sweeper.Store. It always evaluates the due rule over
// the tasker tables, whatever the path: it is the reference a dry run and
// `sweeper status` report, and it writes nothing.
func (s *Store) CountDue(ctx context.Context) (sweeper.Counts, error) {
	row, err := s.q.SweepCountDue(ctx)
	if err != nil {
		return sweeper.Counts{}, fmt.Errorf("count due steps: %w", translate(err))
	}
	return sweeper.Counts{Due: row.Due, Stranded: row.Stranded, NotYetDue: row.NotYetDue, NextDueAt: row.NextDueAt}, nil
}

// Stranded implements sweeper.Store. On the schedule path it reads the
// schedule's stranded flags (as of each row's last evaluation), which costs
// in proportion to the stranded steps; on the scan path it evaluates every
// waiting step.
func (s *Store) Stranded(ctx context.Context, sample int) (int64, []sweeper.StrandedStep, error) {
	path, err := s.Path(ctx)
	if err != nil {
		return 0, nil, err
	}
	if path == sweeper.PathSchedule {
		count, err := s.q.ScheduleStranded(ctx)
		if err != nil {
			return 0, nil, fmt.Errorf("count stranded steps: %w", translate(err))
		}
		if count == 0 {
			return 0, nil, nil
		}
		steps, err := s.strandedSample(ctx, path, sample)
		return count, steps, err
	}
	steps, err := s.strandedSample(ctx, path, sample)
	if err != nil || len(steps) == 0 {
		return 0, nil, err
	}
	counts, err := s.CountDue(ctx)
	if err != nil {
		return 0, nil, err
	}
	return counts.Stranded, steps, nil
}

// StrandedSample lists up to limit stranded steps (for `sweeper status`).
func (s *Store) StrandedSample(ctx context.Context, limit int) ([]sweeper.StrandedStep, error) {
	path, err := s.Path(ctx)
	if err != nil {
		return nil, err
	}
	return s.strandedSample(ctx, path, limit)
}

func (s *Store) strandedSample(ctx context.Context, path sweeper.Path, limit int) ([]sweeper.StrandedStep, error) {
	var steps []sweeper.StrandedStep
	if path == sweeper.PathSchedule {
		rows, err := s.q.ScheduleStrandedSample(ctx, int32(limit))
		if err != nil {
			return nil, fmt.Errorf("list stranded steps: %w", translate(err))
		}
		steps = strandedSteps(rows)
	} else {
		rows, err := s.q.SweepStrandedSample(ctx, int32(limit))
		if err != nil {
			return nil, fmt.Errorf("list stranded steps: %w", translate(err))
		}
		steps = strandedSteps(rows)
	}
	return steps, nil
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
		steps[i] = sweeper.StrandedStep{StepUUID: r.WorkflowStepUUID, TaskUUID: r.TaskUUID,
			Attempts: r.Attempts, MaxAttempts: r.MaxAttempts, Retryable: r.Retryable}
	}
	return steps
}

// Adoption tuning. The margin covers writers whose transaction started
// (and stamped created_at) before the previous pass but committed after it;
// the periodic full pass catches anything slower than that. The watermark
// is written only when a pass adopted something or it is advanceEvery old:
// an idle sweep then reads and writes nothing else (no commit to flush),
// while the window an incremental pass re-reads stays under a minute and a
// quarter.
const (
	adoptionMargin       = time.Minute
	adoptionAdvanceEvery = 10 * time.Second
	adoptionFullInterval = 15 * time.Minute
)

// Adopt implements sweeper.Store: steps other writers parked in
// waiting_for_retry since the watermark (minus a margin) get schedule rows.
// Replicas may run it at once: the insert skips scheduled steps and the
// watermark only moves forward. The first pass ever is a full one.
func (s *Store) Adopt(ctx context.Context) (sweeper.Adoption, error) {
	var res sweeper.Adoption
	state, ok, err := s.adoptionState(ctx)
	if err != nil || !ok {
		return res, err
	}
	if state.Watermark == nil {
		return s.AdoptAll(ctx)
	}
	row, err := s.q.ScheduleAdopt(ctx, state.Watermark.Add(-adoptionMargin))
	if err != nil {
		return res, fmt.Errorf("adopt waiting steps: %w", translate(err))
	}
	res.Adopted = int(row.Adopted)
	if res.Adopted == 0 && row.ScannedAt.Sub(*state.Watermark) < adoptionAdvanceEvery {
		return res, nil
	}
	err = s.q.AdoptionAdvance(ctx, dbsqlc.AdoptionAdvanceParams{Watermark: row.ScannedAt})
	if err != nil {
		return res, fmt.Errorf("advance adoption watermark: %w", translate(err))
	}
	return res, nil
}

// AdoptAll implements sweeper.Store: when the last full pass is
// adoptionFullInterval old (or there never was one), every waiting step
// without a schedule row gets one. One replica at a time: the others skip.
func (s *Store) AdoptAll(ctx context.Context) (sweeper.Adoption, error) {
	var res sweeper.Adoption
	// A plain read first, so the common "not due" answer takes no lock.
	state, ok, err := s.adoptionState(ctx)
	if err != nil || !ok {
		return res, err
	}
	if state.Watermark != nil && !fullPassDue(state.LastFullPass, state.DbNow) {
		return res, nil
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		state, err := q.AdoptionLock(ctx)
		if errors.Is(err, pgx.ErrNoRows) {
			res.Skipped = true // another replica is running a full pass
			return nil
		}
		if err != nil {
			return translate(err)
		}
		if state.Watermark != nil && !fullPassDue(state.LastFullPass, state.DbNow) {
			return nil // another replica just finished one
		}
		res.Full = true
		row, err := q.ScheduleAdopt(ctx, time.Time{}) // the zero time: every waiting step
		if err != nil {
			return translate(err)
		}
		res.Adopted = int(row.Adopted)
		return translate(q.AdoptionAdvance(ctx, dbsqlc.AdoptionAdvanceParams{Watermark: row.ScannedAt, FullPass: true}))
	})
	if err != nil {
		return sweeper.Adoption{}, fmt.Errorf("adopt every waiting step: %w", err)
	}
	return res, nil
}

// adoptionState reads where adoption has got to, without a lock; ok is
// false on the scan path, which has no schedule to adopt into.
func (s *Store) adoptionState(ctx context.Context) (state dbsqlc.AdoptionStateRow, ok bool, err error) {
	if path, err := s.Path(ctx); err != nil || path != sweeper.PathSchedule {
		return state, false, err
	}
	state, err = s.q.AdoptionState(ctx)
	if err != nil {
		return state, false, fmt.Errorf("read adoption state: %w", translate(err))
	}
	return state, true, nil
}

func fullPassDue(last *time.Time, now time.Time) bool {
	return last == nil || now.Sub(*last) >= adoptionFullInterval
}

// MaybeDue implements sweeper.Store: on the schedule path, whether any
// schedule row's time has come; the scan path cannot tell without the scan.
func (s *Store) MaybeDue(ctx context.Context) (bool, error) {
	path, err := s.Path(ctx)
	if err != nil || path != sweeper.PathSchedule {
		return true, err
	}
	overdue, err := s.q.ScheduleOverdue(ctx)
	if err != nil {
		return false, fmt.Errorf("look for overdue schedule rows: %w", translate(err))
	}
	return overdue, nil
}

// rescheduleBatch bounds one reschedule statement; recheckAfter is how long
// a blocked or stranded step waits before the schedule looks at it again.
const (
	rescheduleBatch = 1000
	recheckAfter    = 30 * time.Second
)

// Reschedule implements sweeper.Store: schedule rows whose time has come but
// that no sweep moved are dropped (step no longer waiting) or pushed to
// their real due time or a later re-check, so idle sweeps stay cheap.
func (s *Store) Reschedule(ctx context.Context) (sweeper.Rescheduled, error) {
	var res sweeper.Rescheduled
	if path, err := s.Path(ctx); err != nil || path != sweeper.PathSchedule {
		return res, err
	}
	for {
		row, err := s.q.ScheduleReschedule(ctx, dbsqlc.ScheduleRescheduleParams{
			BatchLimit: rescheduleBatch, RecheckSeconds: int32(recheckAfter / time.Second),
		})
		if err != nil {
			return res, fmt.Errorf("reschedule: %w", translate(err))
		}
		res.Dropped += int(row.Dropped)
		res.Deferred += int(row.Deferred)
		// Stop at the end of the overdue rows, or when a page changed
		// nothing (all movable: the next sweep moves them).
		if row.Examined < rescheduleBatch || row.Dropped+row.Deferred == 0 {
			return res, nil
		}
	}
}
