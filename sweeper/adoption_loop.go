package sweeper

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// DefaultAdoptInterval is how often the adoption loop looks for steps other
// writers parked. One look is a probe of a partial index over the waiting
// rows the schedule may be missing: well under a millisecond.
const DefaultAdoptInterval = time.Second

// AdoptionOptions are the optional parts of an AdoptionLoop.
type AdoptionOptions struct {
	// Interval is the time between passes; zero means DefaultAdoptInterval.
	Interval time.Duration
	// DatabaseReady reports whether the database is reachable; a pass
	// while it is not is skipped.
	DatabaseReady func() bool
	// OnAdopted is told how many steps each pass adopted (when it adopted
	// any).
	OnAdopted func(n int)
}

// AdoptionLoop runs the store's adoption on its own short interval, beside
// the sweeps, so that a step another writer parks (the orchestrator's own
// error handling) is on the schedule, and the timer gate armed for it, well
// before it is due. It is a WakeSource: each pass that adopted something
// reports the earliest due time among what it adopted.
type AdoptionLoop struct {
	sw    *Sweeper
	opts  AdoptionOptions
	wakes chan time.Time
}

// NewAdoptionLoop builds an adoption loop over the sweeper's store.
func (s *Sweeper) NewAdoptionLoop(opts AdoptionOptions) *AdoptionLoop {
	if opts.Interval <= 0 {
		opts.Interval = DefaultAdoptInterval
	}
	return &AdoptionLoop{sw: s, opts: opts, wakes: make(chan time.Time, 16)}
}

// Wakes implements WakeSource.
func (a *AdoptionLoop) Wakes() <-chan time.Time { return a.wakes }

// Run adopts until ctx is cancelled (nil): one pass at once, then one
// every Interval. On the scan path (no schedule) it returns ErrNoSchedule as
// soon as it knows. A failed pass is logged once per failure streak and
// tried again at the next interval.
func (a *AdoptionLoop) Run(ctx context.Context) error {
	ds, ok := a.sw.store.(DueStore)
	if !ok {
		return ErrNoSchedule
	}
	tick := time.NewTicker(a.opts.Interval)
	defer tick.Stop()
	failing := false
	for {
		if a.opts.DatabaseReady == nil || a.opts.DatabaseReady() {
			var res Adoption
			// The scan path has nothing to adopt: say so before anything
			// else. On the schedule path a pause stops adoption too.
			path, err := a.sw.store.Path(ctx)
			if err == nil && path == PathScan {
				return ErrNoSchedule
			}
			paused := false
			if err == nil {
				paused, err = a.sw.checkPause(ctx)
			}
			if err == nil && !paused {
				res, err = ds.Adopt(ctx)
			}
			switch {
			case errors.Is(err, ErrNoSchedule):
				return ErrNoSchedule
			case ctx.Err() != nil:
				return nil
			case err != nil:
				if !failing {
					a.sw.logger.Warn("adoption pass failed; the sweeps adopt too, and this loop retries", slog.Any("error", err))
				}
				failing = true
			default:
				failing = false
				a.report(res)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (a *AdoptionLoop) report(res Adoption) {
	if res.Reconciled != nil {
		a.sw.logReconciliation(*res.Reconciled)
		a.send(time.Time{}) // the schedule was rebuilt: look at it
	}
	if res.Adopted == 0 {
		return
	}
	if a.opts.OnAdopted != nil {
		a.opts.OnAdopted(res.Adopted)
	}
	a.sw.logger.Debug("adopted steps parked by other writers", slog.Int("adopted", res.Adopted),
		slog.Time("earliest_due", res.EarliestDue))
	if res.Reconciled == nil {
		a.send(res.EarliestDue)
	}
}

// send never blocks: a full buffer is replaced by a zero time (look now).
func (a *AdoptionLoop) send(due time.Time) {
	select {
	case a.wakes <- due:
		return
	default:
	}
	select {
	case <-a.wakes:
	default:
	}
	select {
	case a.wakes <- time.Time{}:
	default:
	}
}
