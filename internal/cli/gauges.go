package cli

import (
	"context"
	"log/slog"
	"time"

	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// Backlog gauge tuning: refreshed at most every defaultGaugeEvery, and no
// sooner than gaugeBackoff times the last count took, so a slow count (the
// scan path evaluates every waiting step: seconds at a million) costs the
// database at most about a tenth of one connection's time. One count runs at
// a time, bounded by gaugeTimeout.
const (
	defaultGaugeEvery = 15 * time.Second
	gaugeBackoff      = 10
	gaugeTimeout      = 30 * time.Second
)

// gaugeLoop keeps the gauges that need the database fresh, off the sweep's
// path: the backlog (waiting, due, oldest due age) at most every `every`
// (or gaugeBackoff times the last count's duration, if longer) while the
// database answers, and the readiness verdict every `every` whatever the
// database says, so the ready gauge is right without probes.
type gaugeLoop struct {
	every   time.Duration
	backlog func(context.Context) (sweeper.Backlog, error)
	set     func(sweeper.Backlog)
	// dbUp is the health checks' verdict; up receives a value after each
	// successful check, so the first refresh follows the first answer.
	dbUp   func() bool
	up     <-chan struct{}
	ready  func(context.Context)
	logger *slog.Logger
	// now is the clock the interval is measured with; nil: time.Now.
	now func() time.Time
}

func (g *gaugeLoop) run(ctx context.Context) {
	now := g.now
	if now == nil {
		now = time.Now
	}
	var last time.Time         // when the last backlog count started
	var lastTook time.Duration // how long it took
	failing := false
	timer := time.NewTimer(g.every)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.up:
		case <-timer.C:
			timer.Reset(g.every)
			g.ready(ctx)
		}
		if !g.dbUp() || (!last.IsZero() && now().Sub(last) < max(g.every, gaugeBackoff*lastTook)) {
			continue
		}
		last = now()
		cctx, cancel := context.WithTimeout(ctx, gaugeTimeout)
		b, err := g.backlog(cctx)
		cancel()
		lastTook = now().Sub(last)
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				g.logger.Warn("backlog gauges not refreshed; keeping the last values", slog.Any("error", err))
			}
			failing = true
		default:
			if failing {
				g.logger.Info("backlog gauges refreshed again")
			}
			failing = false
			g.set(b)
		}
	}
}
