package cli

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// What the logs say and how often: the daemon's start-up line, the
// database outage lines, and the quieter logger of one-shot commands.

// startupPathTimeout bounds the start-up line's look at the sweep path:
// a database that is down must not hold up the daemon.
const startupPathTimeout = 2 * time.Second

// pathFinder says which sweep path the store uses (*db.Store).
type pathFinder interface {
	Path(ctx context.Context) (sweeper.Path, error)
}

// startupAttrs are the fields of `sweeper run`'s start-up line: the
// effective configuration, the first thing an operator checks. The database
// is named by host, name and user: never the password, never the URL. The
// admin token is only said to be set or not. The sweep path is asked of the
// store (briefly); when the database does not answer yet it is "unknown",
// and the first sweep logs it once it is known. Durations are duration
// strings. extra is appended as is (the build's version, the ops listener's
// address).
func startupAttrs(ctx context.Context, cfg daemonConfig, conn *pgconn.Config, store pathFinder,
	httpAddr string, extra ...slog.Attr,
) []slog.Attr {
	path := "unknown (the database does not answer yet; the first sweep logs it)"
	pctx, cancel := context.WithTimeout(ctx, startupPathTimeout)
	if p, err := store.Path(pctx); err == nil {
		path = string(p)
	}
	cancel()
	attrs := []slog.Attr{
		slog.String("db_host", net.JoinHostPort(conn.Host, strconv.Itoa(int(conn.Port)))),
		slog.String("db_name", conn.Database),
		slog.String("db_user", conn.User),
		slog.String("sweep_path", path),
		slog.String("schedule", cfg.schedule),
	}
	if sched, err := sweeper.ParseSchedule(cfg.schedule); err == nil {
		if next := sched.Next(time.Now()); !next.IsZero() {
			attrs = append(attrs, slog.Time("next_sweep_at", next.UTC()))
		}
	}
	attrs = append(attrs,
		slog.Int("batch_size", cfg.sweep.BatchSize),
		slog.Int("workers", cfg.sweep.Workers),
		slog.String("batch_timeout", cfg.sweep.BatchTimeout.String()),
		slog.String("notify_channel", cfg.sweep.NotifyChannel),
		slog.String("http_addr", httpAddr),
		slog.Bool("admin_token_set", cfg.adminToken != ""),
		slog.String("reconcile_interval", cfg.reconcileInterval.String()),
		slog.String("shutdown_grace", cfg.grace.String()),
		slog.Bool("use_error_classification", cfg.handler.UseErrorClassification),
		slog.Bool("use_waiting_for_retry_state", cfg.handler.UseWaitingForRetryState),
		slog.String("backoff_base", cfg.handler.Backoff.Base.String()),
		slog.String("backoff_max", cfg.handler.Backoff.Max.String()),
		slog.Float64("backoff_multiplier", cfg.handler.Backoff.Multiplier),
		slog.Bool("backoff_jitter", cfg.handler.Backoff.Jitter),
	)
	// The build's version and the ops listener's address come in extra.
	return append(attrs, extra...)
}

// outageRepeat is how often a database outage that lasts is logged again.
const outageRepeat = 5 * time.Minute

// outageLog decides what the health checks say about the database: the
// first failed check with its cause, again every outageRepeat while the
// outage lasts (with how long and how many checks), and the recovery.
type outageLog struct {
	logger *slog.Logger
	now    func() time.Time

	mu       sync.Mutex
	checked  bool      // a check has been recorded
	up       bool      // the last check's verdict
	since    time.Time // when the outage began
	loggedAt time.Time // when it was last logged
	failures int       // failed checks in this outage
}

func newOutageLog(logger *slog.Logger) *outageLog {
	return &outageLog{logger: logger, now: time.Now}
}

// record takes one check's outcome (err nil: the database answered).
func (o *outageLog) record(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	first := !o.checked
	o.checked = true
	if err == nil {
		switch {
		case first:
			o.logger.Info("database reachable")
		case !o.up:
			o.logger.Info("database reachable again; sweeps resume",
				slog.String("down_for", now.Sub(o.since).Round(time.Second).String()),
				slog.Int("failed_checks", o.failures))
		}
		o.up, o.failures = true, 0
		return
	}
	o.failures++
	switch {
	case first:
		o.since, o.loggedAt = now, now
		o.logger.Warn("database unreachable at start; sweeps paused, retrying with backoff", slog.Any("error", err))
	case o.up:
		o.since, o.loggedAt = now, now
		o.logger.Warn("database unreachable; sweeps paused until it answers", slog.Any("error", err))
	case now.Sub(o.loggedAt) >= outageRepeat:
		o.loggedAt = now
		o.logger.Warn("database still unreachable; sweeps paused",
			slog.String("down_for", now.Sub(o.since).Round(time.Second).String()),
			slog.Int("failed_checks", o.failures), slog.Any("error", err))
	}
	o.up = false
}

// quietInfo is the log handler of one-shot commands, which print their
// result on stdout: their info records (the sweep path, a sweep's summary)
// become debug records, so the default level shows only what is wrong.
type quietInfo struct{ slog.Handler }

func (h quietInfo) Enabled(ctx context.Context, level slog.Level) bool {
	return h.Handler.Enabled(ctx, demote(level))
}

func (h quietInfo) Handle(ctx context.Context, r slog.Record) error {
	r.Level = demote(r.Level)
	return h.Handler.Handle(ctx, r)
}

func (h quietInfo) WithAttrs(attrs []slog.Attr) slog.Handler {
	return quietInfo{h.Handler.WithAttrs(attrs)}
}

func (h quietInfo) WithGroup(name string) slog.Handler { return quietInfo{h.Handler.WithGroup(name)} }

func demote(level slog.Level) slog.Level {
	if level == slog.LevelInfo {
		return slog.LevelDebug
	}
	return level
}

// pauseAttrs says, for the start-up line, whether the replicas' pause
// switch is on (and who paused, why, since when); nothing when the
// database does not answer yet.
func pauseAttrs(ctx context.Context, store sweeper.PauseReader) []slog.Attr {
	pctx, cancel := context.WithTimeout(ctx, startupPathTimeout)
	defer cancel()
	p, err := store.PauseState(pctx)
	if err != nil {
		return []slog.Attr{slog.String("paused", "unknown (the database does not answer yet)")}
	}
	attrs := []slog.Attr{slog.Bool("paused", p.Paused)}
	if p.Paused {
		attrs = append(attrs, slog.String("paused_by", p.By), slog.String("pause_reason", p.Reason))
		if p.Since != nil {
			attrs = append(attrs, slog.Time("paused_since", *p.Since))
		}
	}
	return attrs
}
