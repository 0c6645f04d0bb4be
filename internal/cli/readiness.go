package cli

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tasker-sweeper/retrysweeper/internal/preflight"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// Readiness tuning: a probe's facts are at most factsMaxAge old (so /readyz
// turns 503 within about a second of the database going down, and a probe
// storm costs one preflight a second), and one preflight may take
// preflightTimeout.
const (
	factsMaxAge      = time.Second
	preflightTimeout = 3 * time.Second
)

// readiness answers /readyz (and feeds the ready gauge): the preflight's
// facts, gathered at most once per maxAge however many probes ask
// (concurrent ones share one gathering), evaluated with the live record of
// the recent sweeps.
type readiness struct {
	gather  func(context.Context) preflight.Facts
	opts    func() preflight.Options
	maxAge  time.Duration
	timeout time.Duration
	// onReport receives every verdict (the ready gauge).
	onReport func(preflight.Report)

	mu     sync.Mutex
	facts  preflight.Facts
	at     time.Time // when facts were gathered; zero: never
	flight chan struct{}
}

// Report implements admin.Preflight.
func (r *readiness) Report(ctx context.Context) preflight.Report {
	facts, at := r.currentFacts(ctx)
	rep := preflight.Evaluate(facts, r.opts())
	rep.CheckedAt = at.UTC()
	if r.onReport != nil {
		r.onReport(rep)
	}
	return rep
}

// currentFacts returns facts at most maxAge old, gathering them when
// needed. A caller that gives up waiting gets a failed probe of its own;
// the gathering goes on for the others.
func (r *readiness) currentFacts(ctx context.Context) (preflight.Facts, time.Time) {
	r.mu.Lock()
	if !r.at.IsZero() && time.Since(r.at) < r.maxAge {
		f, at := r.facts, r.at
		r.mu.Unlock()
		return f, at
	}
	flight := r.flight
	if flight == nil {
		flight = make(chan struct{})
		r.flight = flight
		go func() {
			gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout)
			defer cancel()
			f := r.gather(gctx)
			r.mu.Lock()
			r.facts, r.at, r.flight = f, time.Now(), nil
			r.mu.Unlock()
			close(flight)
		}()
	}
	r.mu.Unlock()
	select {
	case <-flight:
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.facts, r.at
	case <-ctx.Done():
		return preflight.Facts{Err: ctx.Err()}, time.Now()
	}
}

// sweepRecorder keeps the record the sweeps check reads: real sweeps only
// (a dry run writes nothing), and an interrupted sweep is neither a success
// nor a failure.
type sweepRecorder struct {
	mu  sync.Mutex
	rec preflight.SweepRecord
}

func (s *sweepRecorder) sweepDone(sum sweeper.Summary, err error) {
	if sum.DryRun || sum.Interrupted || errors.Is(err, sweeper.ErrInterrupted) || errors.Is(err, context.Canceled) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rec.Sweeps++
	if err == nil {
		s.rec.ConsecutiveFailures, s.rec.LastError = 0, ""
		return
	}
	s.rec.ConsecutiveFailures++
	s.rec.LastError = err.Error()
}

func (s *sweepRecorder) record() *preflight.SweepRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.rec
	return &rec
}
