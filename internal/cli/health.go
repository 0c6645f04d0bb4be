package cli

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// dbHealth watches the database so the daemon can stay up while it is down:
// /readyz answers 503, scheduled ticks are skipped, and the checks back off
// (capped) until it answers again. What it logs is outageLog's to decide.
type dbHealth struct {
	ping   func(context.Context) error
	logger *slog.Logger
	outage *outageLog
	up     atomic.Bool
	// onCheck receives every check's verdict (metrics, hooks).
	onCheck func(up bool)
	// every is the check interval while up; retries start at minRetry and
	// double up to maxRetry while down.
	every, minRetry, maxRetry time.Duration
}

func newDBHealth(ping func(context.Context) error, logger *slog.Logger, onCheck func(up bool)) *dbHealth {
	return &dbHealth{
		ping: ping, logger: logger, outage: newOutageLog(logger), onCheck: onCheck,
		every: 5 * time.Second, minRetry: 250 * time.Millisecond, maxRetry: 2 * time.Second,
	}
}

// Ready reports the last check's verdict.
func (h *dbHealth) Ready() bool { return h.up.Load() }

// check pings once and records the result; the outage log says what
// changed, with the cause.
func (h *dbHealth) check(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	err := h.ping(cctx)
	up := err == nil
	h.up.Store(up)
	if ctx.Err() == nil { // a check cut short by the shutdown says nothing
		h.outage.record(err)
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
	for {
		up := h.check(ctx)
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
