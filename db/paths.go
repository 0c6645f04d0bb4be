package db

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/db/internal/dbsqlc"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// pathStore is what differs between the two sweep paths.
type pathStore interface {
	path() sweeper.Path
	// claim locks up to b.Limit due steps; windowFull says a short batch
	// did not see every candidate (see sweeper.BatchResult.WindowFull).
	claim(ctx context.Context, q *dbsqlc.Queries, b sweeper.Batch) (claimed []claim, windowFull bool, err error)
	// afterMove runs in the batch's transaction once the moved steps are
	// pending (the schedule path drops their rows).
	afterMove(ctx context.Context, q *dbsqlc.Queries, moved []sweeper.Moved) error
	// The queue operations' path-specific parts (queue.go): which listing
	// serves a state, and what follows a manual change or a grant in its
	// transaction (the schedule path keeps its rows in step).
	listing(state sweeper.ListState) listing
	afterManualChange(ctx context.Context, q *dbsqlc.Queries, step uuid.UUID, to statemachine.State) error
	afterGrant(ctx context.Context, q *dbsqlc.Queries, step uuid.UUID) error
	prepare(ctx context.Context) (sweeper.Preparation, error)
	countDueLeft(ctx context.Context) (int64, error)
	stranded(ctx context.Context, sample int) (int64, []sweeper.StrandedStep, error)
	strandedSample(ctx context.Context, limit int) ([]sweeper.StrandedStep, error)
	applyFailure(ctx context.Context, w handling.FailureWrite) (handling.FailureWritten, error)
	reconcile(ctx context.Context, olderThan time.Duration) (sweeper.Reconciliation, error)
	// The timer gate's and the adoption loop's needs (wake.go).
	probeDue(ctx context.Context, req sweeper.ProbeRequest) (sweeper.DueProbe, sweeper.Lease, error)
	reevaluateOnly(ctx context.Context) (sweeper.Preparation, error)
	adoptOnly(ctx context.Context) (sweeper.Adoption, error)
	backlog(ctx context.Context) (sweeper.Backlog, error)
}

var (
	_ sweeper.Store      = (*Store)(nil)
	_ sweeper.Reconciler = (*Store)(nil)
	_ handling.Store     = (*Store)(nil)
	_ pathStore          = (*scanStore)(nil)
	_ pathStore          = (*scheduleStore)(nil)
)

// choose returns the path store, looking for the sweeper-owned objects the
// first time the database answers. Installing them takes effect when the
// process restarts.
func (s *Store) choose(ctx context.Context) (pathStore, error) {
	if p := s.chosen.Load(); p != nil {
		return *p, nil
	}
	present, err := s.q.SchedulePresent(ctx)
	if err != nil {
		return nil, fmt.Errorf("look for the sweeper-owned objects: %w", asSentinel(err))
	}
	var p pathStore = &scanStore{base: &s.base}
	if present {
		p = &scheduleStore{base: &s.base}
	}
	s.chosen.CompareAndSwap(nil, &p)
	return *s.chosen.Load(), nil
}

// Path implements sweeper.Store.
func (s *Store) Path(ctx context.Context) (sweeper.Path, error) {
	p, err := s.choose(ctx)
	if err != nil {
		return "", err
	}
	return p.path(), nil
}

// Prepare implements sweeper.Store.
func (s *Store) Prepare(ctx context.Context) (sweeper.Preparation, error) {
	p, err := s.choose(ctx)
	if err != nil {
		return sweeper.Preparation{}, err
	}
	return p.prepare(ctx)
}

// MoveDueBatch implements sweeper.Store.
func (s *Store) MoveDueBatch(ctx context.Context, b sweeper.Batch) (sweeper.BatchResult, error) {
	p, err := s.choose(ctx)
	if err != nil {
		return sweeper.BatchResult{}, err
	}
	return s.moveDueBatch(ctx, p, b)
}

// CountDueLeft implements sweeper.Store.
func (s *Store) CountDueLeft(ctx context.Context) (int64, error) {
	p, err := s.choose(ctx)
	if err != nil {
		return 0, err
	}
	return p.countDueLeft(ctx)
}

// Stranded implements sweeper.Store.
func (s *Store) Stranded(ctx context.Context, sample int) (int64, []sweeper.StrandedStep, error) {
	p, err := s.choose(ctx)
	if err != nil {
		return 0, nil, err
	}
	return p.stranded(ctx, sample)
}

// StrandedSample lists up to limit stranded steps (for `sweeper status`).
func (s *Store) StrandedSample(ctx context.Context, limit int) ([]sweeper.StrandedStep, error) {
	p, err := s.choose(ctx)
	if err != nil {
		return nil, err
	}
	return p.strandedSample(ctx, limit)
}

// Reconcile implements sweeper.Reconciler; sweeper.ErrNoSchedule on the
// scan path.
func (s *Store) Reconcile(ctx context.Context, olderThan time.Duration) (sweeper.Reconciliation, error) {
	p, err := s.choose(ctx)
	if err != nil {
		return sweeper.Reconciliation{}, err
	}
	return p.reconcile(ctx, olderThan)
}

// ApplyFailure implements handling.Store: the step columns, the transition
// and (on the schedule path) the schedule row are written atomically, so a
// crash or a lost race leaves none of them behind.
func (s *Store) ApplyFailure(ctx context.Context, w handling.FailureWrite) (handling.FailureWritten, error) {
	p, err := s.choose(ctx)
	if err != nil {
		return handling.FailureWritten{}, err
	}
	written, err := p.applyFailure(ctx, w)
	if err != nil {
		return handling.FailureWritten{}, fmt.Errorf("apply failure to step %s: %w", w.StepUUID, err)
	}
	return written, nil
}

// Backlog counts the waiting and due steps and finds the oldest due one,
// for the gauges (see backlog.sql.tmpl for what each path reads).
func (s *Store) Backlog(ctx context.Context) (sweeper.Backlog, error) {
	p, err := s.choose(ctx)
	if err != nil {
		return sweeper.Backlog{}, err
	}
	return p.backlog(ctx)
}
