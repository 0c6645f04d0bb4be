package cli

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// dbHealth watches the database so the daemon can stay up while it is down:
// /readyz answers 503, scheduled ticks are skipped, and the checks back off
// (capped) until it answers again. It logs only when the state changes.
type dbHealth struct {
	ping   func(context.Context) error
	logger *slog.Logger
	up     atomic.Bool
	// onCheck receives every check's verdict (metrics, hooks).
	onCheck func(up bool)
	// every is the check interval while up; retries start at minRetry and
	// double up to maxRetry while down.
	every, minRetry, maxRetry time.Duration
}

func newDBHealth(ping func(context.Context) error, logger *slog.Logger, onCheck func(up bool)) *dbHealth {
	return &dbHealth{
		ping: ping, logger: logger, onCheck: onCheck,
		every: 5 * time.Second, minRetry: 250 * time.Millisecond, maxRetry: 2 * time.Second,
	}
}

// Ready reports the last check's verdict.
func (h *dbHealth) Ready() bool { return h.up.Load() }

// check pings once and records the result, logging a change of state.
func (h *dbHealth) check(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	err := h.ping(cctx)
	up := err == nil
	was := h.up.Swap(up)
	switch {
	case up && !was:
		h.logger.Info("database reachable")
	case !up && was:
		h.logger.Warn("database unreachable; sweeps paused until it answers", slog.Any("error", err))
	}
	if h.onCheck != nil {
		h.onCheck(up)
	}
	return up
}

// run checks until ctx ends: every `every` while up, with capped
// exponential backoff while down.
func (h *dbHealth) run(ctx context.Context) {
	delay := h.minRetry
	first := true
	for {
		up := h.check(ctx)
		if first && !up {
			h.logger.Warn("database unreachable at start; retrying with backoff")
		}
		first = false
		wait := h.every
		if up {
			delay = h.minRetry
		} else {
			wait, delay = delay, min(delay*2, h.maxRetry)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
