package sweeper

import (
	"context"
	"log/slog"
	"time"
)

// DefaultFullAdoptionInterval is how often RunFullAdoption asks whether a
// full adoption pass is due. The database decides (every 15 minutes, one
// replica at a time), so this only bounds how late a pass starts.
const DefaultFullAdoptionInterval = time.Minute

// FullAdoptionOptions are the optional parts of RunFullAdoption.
type FullAdoptionOptions struct {
	// Interval is the time between checks; zero means
	// DefaultFullAdoptionInterval.
	Interval time.Duration
	// DatabaseReady reports whether the database is reachable; a check
	// while it is not is skipped.
	DatabaseReady func() bool
	// OnPassDone is told the outcome of every check that ran, failed ones
	// included (a check that found no pass due reports a zero Adoption).
	OnPassDone func(Adoption, error)
}

// RunFullAdoption runs the full adoption passes until ctx is cancelled: one
// check at once, then one every Interval. It runs beside the Scheduler, not
// inside a sweep: a pass over a million waiting steps takes seconds and must
// not hold up the steps that are due meanwhile. A pass cancelled by ctx rolls
// back whole and is not reported.
func (s *Sweeper) RunFullAdoption(ctx context.Context, opts FullAdoptionOptions) {
	interval := opts.Interval
	if interval <= 0 {
		interval = DefaultFullAdoptionInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if opts.DatabaseReady == nil || opts.DatabaseReady() {
			res, err := s.AdoptAll(ctx)
			if ctx.Err() != nil {
				return // shutting down: a cancelled pass is not a failure
			}
			if opts.OnPassDone != nil {
				opts.OnPassDone(res, err)
			}
			if err != nil {
				s.logger.Warn("full adoption pass failed; retrying later", slog.Any("error", err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
