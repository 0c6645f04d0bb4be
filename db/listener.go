package db

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// ParkedChannel is the channel the inline handler's park statement
// (FailureApplyScheduled) notifies, with the step's due time as the payload
// (RFC 3339, UTC, microseconds), in the transaction that parks it.
const ParkedChannel = "tasker_sweeper_parked"

// ListenerAppName is appended to the pool's application_name for the
// listening connection, so an operator (or a test) can tell it apart in
// pg_stat_activity.
const ListenerAppName = "-listener"

// Listener LISTENs on ParkedChannel on a connection of its own (not from
// the pool: it sits in WaitForNotification) and reports each due time on
// Wakes, which makes it a sweeper.WakeSource. When the connection drops it
// reconnects with capped backoff; meanwhile the cron schedule and adoption
// keep every step moving. After each (re)connection it sends a zero time:
// notifications sent while it was away are lost, so the timer should look
// at the schedule.
type Listener struct {
	cfg    *pgx.ConnConfig
	logger *slog.Logger
	wakes  chan time.Time
	onUp   func(bool)
	up     atomic.Bool
	// minRetry doubles up to maxRetry while the server is away; idle is how
	// long a silent connection waits before it pings the server.
	minRetry, maxRetry, idle time.Duration
}

// ListenerOptions are the optional parts of a Listener.
type ListenerOptions struct {
	// OnUp is told every change of the connection's state (a gauge).
	OnUp func(up bool)
}

// NewListener prepares a listener for the database at url (the daemon's
// --database-url); Run connects.
func NewListener(url string, logger *slog.Logger, opts ListenerOptions) (*Listener, error) {
	poolCfg, err := PoolConfig(url)
	if err != nil {
		return nil, err
	}
	cfg := poolCfg.ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = poolCfg.ConnConfig.RuntimeParams["application_name"] + ListenerAppName
	onUp := opts.OnUp
	if onUp == nil {
		onUp = func(bool) {}
	}
	return &Listener{
		cfg: cfg, logger: logger, wakes: make(chan time.Time, 1024), onUp: onUp,
		minRetry: 100 * time.Millisecond, maxRetry: 5 * time.Second, idle: 30 * time.Second,
	}, nil
}

// Wakes implements sweeper.WakeSource.
func (l *Listener) Wakes() <-chan time.Time { return l.wakes }

// Up reports whether the listening connection is up.
func (l *Listener) Up() bool { return l.up.Load() }

// Run listens until ctx is cancelled, reconnecting as needed: the first
// retry after 100 ms, doubling up to 5 s. An outage is logged once.
func (l *Listener) Run(ctx context.Context) {
	l.onUp(false)
	delay := l.minRetry
	outage := false
	for {
		err := l.listen(ctx)
		if ctx.Err() != nil {
			break
		}
		if l.up.Swap(false) {
			l.onUp(false)
			delay, outage = l.minRetry, false
		}
		if !outage {
			outage = true
			l.logger.Warn("park listener: connection lost; reconnecting (meanwhile the cron schedule and adoption keep steps moving)",
				slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(delay*2, l.maxRetry)
	}
	if l.up.Swap(false) {
		l.onUp(false)
	}
}

// listen connects, LISTENs and relays notifications until the connection
// fails or ctx ends.
func (l *Listener) listen(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(cctx, l.cfg)
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ParkedChannel}.Sanitize()); err != nil {
		return fmt.Errorf("listen on %s: %w", ParkedChannel, err)
	}
	if !l.up.Swap(true) {
		l.onUp(true)
		l.logger.Info("park listener: listening", slog.String("channel", ParkedChannel))
	}
	l.send(time.Time{}) // whatever was parked while away: look at the schedule
	for {
		wctx, cancel := context.WithTimeout(ctx, l.idle)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			// Silence: make sure the server is still there (a dead peer
			// that sent no reset would otherwise keep us waiting forever).
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("ping: %w", err)
			}
			continue
		case err != nil:
			return fmt.Errorf("wait for notification: %w", err)
		}
		due, err := time.Parse(time.RFC3339Nano, n.Payload)
		if err != nil {
			l.logger.Debug("park listener: unreadable payload", slog.String("payload", n.Payload))
			due = time.Time{}
		}
		l.send(due.UTC())
	}
}

// send never blocks: a full buffer means the timer is far behind, and a
// zero time (look at the schedule) replaces what was dropped.
func (l *Listener) send(due time.Time) {
	select {
	case l.wakes <- due:
		return
	default:
	}
	select {
	case <-l.wakes: // make room for the look
	default:
	}
	select {
	case l.wakes <- time.Time{}:
	default:
	}
}
