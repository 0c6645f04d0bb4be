package sweeper

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// Reconcile loop defaults: a pass at least every DefaultReconcileInterval
// (one replica at a time; the database keeps the time of the last one), and
// a check whether one is due every DefaultReconcileCheck.
const (
	DefaultReconcileInterval = 5 * time.Minute
	DefaultReconcileCheck    = time.Minute
)

// ReconcileOptions are the optional parts of RunReconcile.
type ReconcileOptions struct {
	// Interval is how old the last pass (by any replica) may get; zero
	// means DefaultReconcileInterval.
	Interval time.Duration
	// Check is the time between checks; zero means DefaultReconcileCheck,
	// or Interval when that is shorter.
	Check time.Duration
	// DatabaseReady reports whether the database is reachable; a check
	// while it is not is skipped.
	DatabaseReady func() bool
	// OnPassDone is told the outcome of every check that ran, failed ones
	// included (a check that found no pass due reports a zero
	// Reconciliation).
	OnPassDone func(Reconciliation, error)
}

// RunReconcile runs reconcile passes until ctx is cancelled: one check at
// once, then one every Check. It runs beside the Scheduler, not inside a
// sweep: a pass over a million waiting steps takes seconds and must not hold
// up the steps that are due meanwhile. A pass cancelled by ctx rolls back
// whole and is not reported. On the scan path (no schedule) it returns at
// once.
func (s *Sweeper) RunReconcile(ctx context.Context, opts ReconcileOptions) {
	interval := opts.Interval
	if interval <= 0 {
		interval = DefaultReconcileInterval
	}
	check := opts.Check
	if check <= 0 {
		check = min(DefaultReconcileCheck, interval)
	}
	tick := time.NewTicker(check)
	defer tick.Stop()
	for {
		if opts.DatabaseReady == nil || opts.DatabaseReady() {
			res, err := s.Reconcile(ctx, interval)
			if errors.Is(err, ErrNoSchedule) || ctx.Err() != nil {
				return // nothing to reconcile, or shutting down: a cancelled pass is not a failure
			}
			if opts.OnPassDone != nil {
				opts.OnPassDone(res, err)
			}
			if err != nil {
				s.logger.Warn("reconcile pass failed; retrying later", slog.Any("error", err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
