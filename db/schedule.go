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

// scheduleStore is the schedule path: the sweeper-owned retry schedule
// holds one row per parked step, keyed by due time, so a sweep's cost
// follows the due steps. The schedule is a cache of the tasker tables:
// claims re-check the full due rule, adoption brings in steps other writers
// parked, and the reconcile pass corrects whatever drifted (docs/schedule.md).
type scheduleStore struct{ *base }

func (*scheduleStore) path() sweeper.Path { return sweeper.PathSchedule }

func (s *scheduleStore) claim(ctx context.Context, q *dbsqlc.Queries, b sweeper.Batch) ([]claim, bool, error) {
	window := max(b.Window, b.Limit)
	got, err := claims(q.ScheduleClaimDue(ctx, dbsqlc.ScheduleClaimDueParams{
		Now: s.now(), WindowLimit: int32(window), BatchLimit: int32(b.Limit),
	}))
	if err != nil || len(got) == b.Limit {
		return got, false, err
	}
	// Short: was every candidate seen, or was the window full of rows this
	// batch could not take?
	full, err := q.ScheduleWindowFull(ctx, dbsqlc.ScheduleWindowFullParams{Now: s.now(), WindowLimit: int64(window)})
	return got, full, err
}

// afterMove drops the moved steps' schedule rows in the batch's transaction.
func (*scheduleStore) afterMove(ctx context.Context, q *dbsqlc.Queries, moved []sweeper.Moved) error {
	ids := make([]uuid.UUID, len(moved))
	for i, m := range moved {
		ids[i] = m.StepUUID
	}
	if err := q.ScheduleForget(ctx, ids); err != nil {
		return fmt.Errorf("drop moved steps from the schedule: %w", asSentinel(err))
	}
	return nil
}

// Adoption and re-evaluation tuning. The margin covers writers whose clock
// runs behind the database's; the watermark also never passes the start of
// an open transaction the role can see (late commits), but at most
// adoptionMaxPin behind the pass: a transaction open longer than that is the
// reconcile pass's to catch. The watermark is written only when a pass
// adopted something or it is adoptionAdvanceEvery old, so an idle sweep
// writes nothing.
const (
	defaultAdoptionMargin = time.Minute
	adoptionMaxPin        = 10 * time.Minute
	adoptionAdvanceEvery  = 10 * time.Second
	rescheduleBatch       = 1000
	// recheckAfter is how long a blocked or stranded step waits before the
	// re-evaluation looks at it again.
	recheckAfter = 30 * time.Second
)

// prepare adopts what other writers parked since the last pass, stops
// early when no schedule row's time has come, and re-evaluates the overdue
// rows that cannot move, so the batches' candidates, taken in due order, are
// movable ones.
func (s *scheduleStore) prepare(ctx context.Context) (sweeper.Preparation, error) {
	var p sweeper.Preparation
	adoption, err := s.adopt(ctx)
	if err != nil {
		return p, err
	}
	p.Adopted, p.Reconciled = adoption.Adopted, adoption.Reconciled
	overdue, err := s.q.ScheduleOverdue(ctx, s.now())
	if err != nil {
		return p, fmt.Errorf("look for overdue schedule rows: %w", asSentinel(err))
	}
	if !overdue {
		p.NothingDue = true
		return p, nil
	}
	return p, s.reevaluate(ctx, &p)
}

// reevaluate re-evaluates the overdue rows that cannot move, a page at a
// time, adding to p's counts.
func (s *scheduleStore) reevaluate(ctx context.Context, p *sweeper.Preparation) error {
	for {
		row, err := s.q.ScheduleReschedule(ctx, dbsqlc.ScheduleRescheduleParams{
			Now: s.now(), BatchLimit: rescheduleBatch, RecheckSeconds: int32(recheckAfter / time.Second),
		})
		if err != nil {
			return fmt.Errorf("re-evaluate overdue schedule rows: %w", asSentinel(err))
		}
		p.Dropped += int(row.Dropped)
		p.Deferred += int(row.Deferred)
		// Stop at the end of the overdue rows, or when a page changed
		// nothing (all movable: the batches move them).
		if row.Examined < rescheduleBatch || row.Dropped+row.Deferred == 0 {
			return nil
		}
	}
}

// adopt schedules waiting steps other writers parked since the watermark
// (minus the margin). Replicas may run it at once: the insert skips
// scheduled steps and the watermark only moves forward. The first pass on a
// database reconciles instead.
func (s *scheduleStore) adopt(ctx context.Context) (sweeper.Adoption, error) {
	row, err := s.q.ScheduleAdopt(ctx, dbsqlc.ScheduleAdoptParams{Now: s.now(), MarginSeconds: s.adoptionMargin.Seconds()})
	if err != nil {
		return sweeper.Adoption{}, fmt.Errorf("adopt waiting steps: %w", asSentinel(err))
	}
	if row.WatermarkMissing {
		// No pass has completed on this database: the schedule holds only
		// what the inline handler wrote. Run the first one, or wait for the
		// replica running it, before the sweep trusts the schedule.
		res, err := s.reconcilePass(ctx, 0, true)
		if err != nil {
			return sweeper.Adoption{}, err
		}
		if !res.Ran {
			return sweeper.Adoption{}, nil // another replica's first pass finished meanwhile
		}
		return sweeper.Adoption{Adopted: int(res.Missing), Reconciled: &res}, nil
	}
	res := sweeper.Adoption{Adopted: int(row.Adopted), EarliestDue: row.EarliestDue}
	next := nextWatermark(row.ScannedAt, row.OldestXactStart)
	if row.Adopted == 0 && next.Sub(row.Watermark) < adoptionAdvanceEvery {
		return res, nil
	}
	if err := s.q.AdoptionAdvance(ctx, dbsqlc.AdoptionAdvanceParams{Watermark: next}); err != nil {
		return sweeper.Adoption{}, fmt.Errorf("advance adoption watermark: %w", asSentinel(err))
	}
	return res, nil
}

// nextWatermark is how far a pass that ran at scannedAt may move the
// watermark: not past the oldest open transaction, which may still commit
// waiting rows stamped with its start, unless that one has been open longer
// than adoptionMaxPin.
func nextWatermark(scannedAt, oldestXactStart time.Time) time.Time {
	next := scannedAt
	if oldestXactStart.Before(next) {
		next = oldestXactStart
	}
	if floor := scannedAt.Add(-adoptionMaxPin); next.Before(floor) {
		next = floor
	}
	return next
}

// reconcile makes the schedule match the tasker tables (see
// ScheduleReconcile), if the last pass is at least olderThan old, one replica
// at a time: the others skip.
func (s *scheduleStore) reconcile(ctx context.Context, olderThan time.Duration) (sweeper.Reconciliation, error) {
	return s.reconcilePass(ctx, olderThan, false)
}

// reconcilePass is reconcile; with first it is the first pass on a database
// (the adoption watermark was never set): it waits for a replica's pass in
// flight instead of skipping, and runs only if that one did not complete.
func (s *scheduleStore) reconcilePass(ctx context.Context, olderThan time.Duration, first bool) (sweeper.Reconciliation, error) {
	var res sweeper.Reconciliation
	if olderThan > 0 {
		// A plain read first, so the common "not due" answer takes no lock.
		state, err := s.q.AdoptionState(ctx)
		if err != nil {
			return res, fmt.Errorf("read reconcile state: %w", asSentinel(err))
		}
		if !reconcileDue(state.LastFullPass, state.DbNow, olderThan) {
			return res, nil
		}
	}
	start := time.Now()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		if first {
			state, err := q.AdoptionLockWait(ctx)
			if err != nil {
				return asSentinel(err)
			}
			if state.Watermark != nil {
				return nil // the replica we waited for completed the first pass
			}
		} else {
			state, err := q.AdoptionLock(ctx)
			if errors.Is(err, pgx.ErrNoRows) {
				res.Skipped = true // another replica is reconciling right now
				return nil
			}
			if err != nil {
				return asSentinel(err)
			}
			if olderThan > 0 && !reconcileDue(state.LastFullPass, state.DbNow, olderThan) {
				return nil // another replica just finished one
			}
		}
		row, err := q.ScheduleReconcile(ctx, s.now())
		if err != nil {
			return asSentinel(err)
		}
		res = sweeper.Reconciliation{
			Ran: true, Waiting: row.Waiting, Missing: row.Missing, Orphaned: row.Orphaned,
			RetimedEarlier: row.RetimedEarlier, RetimedLater: row.RetimedLater, Restranded: row.Restranded,
		}
		return asSentinel(q.AdoptionAdvance(ctx, dbsqlc.AdoptionAdvanceParams{
			Watermark: nextWatermark(row.ReconciledAt, row.OldestXactStart), FullPass: true,
		}))
	})
	if err != nil {
		return sweeper.Reconciliation{}, fmt.Errorf("reconcile the schedule: %w", err)
	}
	res.Duration = time.Since(start)
	res.DurationMS = float64(res.Duration.Microseconds()) / 1000
	return res, nil
}

func reconcileDue(last *time.Time, now time.Time, olderThan time.Duration) bool {
	return last == nil || now.Sub(*last) >= olderThan
}

// BacklogDueLimit is where the schedule path stops counting due steps: a
// larger backlog reads as this many (the count's cost stays bounded when
// sweeps have stalled, which is when the gauge matters).
const BacklogDueLimit = 100_000

func (s *scheduleStore) backlog(ctx context.Context) (sweeper.Backlog, error) {
	row, err := s.q.ScheduleBacklog(ctx, dbsqlc.ScheduleBacklogParams{Now: s.now(), DueLimit: BacklogDueLimit})
	if err != nil {
		return sweeper.Backlog{}, fmt.Errorf("count the backlog: %w", asSentinel(err))
	}
	return sweeper.Backlog{Waiting: row.Waiting, Due: row.Due, OldestDueAt: row.OldestDueAt, DBNow: row.DbNow}, nil
}

func (s *scheduleStore) countDueLeft(ctx context.Context) (int64, error) {
	n, err := s.q.ScheduleCountDueLeft(ctx, s.now())
	if err != nil {
		return 0, fmt.Errorf("count due steps left: %w", asSentinel(err))
	}
	return n, nil
}

// stranded reads the schedule's stranded flags (as of each row's last
// evaluation), which costs in proportion to the stranded steps.
func (s *scheduleStore) stranded(ctx context.Context, sample int) (int64, []sweeper.StrandedStep, error) {
	count, err := s.q.ScheduleStranded(ctx)
	if err != nil {
		return 0, nil, fmt.Errorf("count stranded steps: %w", asSentinel(err))
	}
	if count == 0 {
		return 0, nil, nil
	}
	steps, err := s.strandedSample(ctx, sample)
	return count, steps, err
}

func (s *scheduleStore) strandedSample(ctx context.Context, limit int) ([]sweeper.StrandedStep, error) {
	rows, err := s.q.ScheduleStrandedSample(ctx, int32(limit))
	if err != nil {
		return nil, fmt.Errorf("list stranded steps: %w", asSentinel(err))
	}
	return strandedSteps(rows), nil
}

// applyFailure is the handler's hot path: one statement, one round trip,
// that also schedules a parked step. Legacy mode (no transition) writes the
// backoff only, in a transaction.
func (s *scheduleStore) applyFailure(ctx context.Context, w handling.FailureWrite) (handling.FailureWritten, error) {
	if w.Event == nil {
		return s.applyFailureTx(ctx, w)
	}
	to, meta, err := Transition{StepUUID: w.StepUUID, From: w.From, Event: *w.Event, Provenance: w.Provenance}.target()
	if err != nil {
		return handling.FailureWritten{}, err
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
		return handling.FailureWritten{}, statemachine.ErrStepNotFound
	case err != nil:
		return handling.FailureWritten{}, asSentinel(err)
	case !row.Written:
		return handling.FailureWritten{}, fmt.Errorf("transition from %s: state changed: %w", w.From, statemachine.ErrLostRace)
	}
	return handling.FailureWritten{NextRetryAt: nextRetryAt(w, row.WrittenAt)}, nil
}
