package cli

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/telemetry"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// wakeConfig is the timer gate's part of `sweeper run`: steps move at their
// due time, with the cron schedule as the safety net.
type wakeConfig struct {
	// atDue turns the timer gate on (off: strictly cron-timed sweeps).
	atDue bool
	// gap is the least time between two timer-driven sweeps.
	gap time.Duration
	// adoptInterval is how often the adoption loop looks for steps other
	// writers parked.
	adoptInterval time.Duration
}

func defaultWakeConfig() wakeConfig {
	return wakeConfig{atDue: true, gap: sweeper.DefaultWakeGap, adoptInterval: sweeper.DefaultAdoptInterval}
}

// wakeFlags registers --wake-at-due, --wake-gap and --adopt-interval.
func wakeFlags(f *flags) *wakeConfig {
	c := defaultWakeConfig()
	f.fs.BoolVar(&c.atDue, "wake-at-due", c.atDue,
		"sweep steps at their due time (a timer armed from the schedule, pulled in by parks other processes announce); "+
			"false: only on the cron schedule")
	f.fs.DurationVar(&c.gap, "wake-gap", c.gap, "least time between two timer-driven sweeps (they coalesce into batches)")
	f.fs.DurationVar(&c.adoptInterval, "adopt-interval", c.adoptInterval,
		"how often to look for steps other writers parked (with --wake-at-due)")
	f.env("wake-at-due", "SWEEPER_WAKE_AT_DUE")
	f.env("wake-gap", "SWEEPER_WAKE_GAP")
	f.env("adopt-interval", "SWEEPER_ADOPT_INTERVAL")
	return &c
}

func (c wakeConfig) check() error {
	if c.gap < time.Millisecond || c.gap > 10*time.Second {
		return usageErrorf("invalid --wake-gap %s: must be between 1ms and 10s", c.gap)
	}
	if c.adoptInterval < 10*time.Millisecond || c.adoptInterval > time.Hour {
		return usageErrorf("invalid --adopt-interval %s: must be between 10ms and 1h", c.adoptInterval)
	}
	return nil
}

// mode is what the start-up log says.
func (c wakeConfig) mode() string {
	if c.atDue {
		return sweeper.WakeModeAtDue
	}
	return sweeper.WakeModeCron
}

// wakeGate is the daemon's wiring of the timer gate: the park listener and
// the adoption loop as its wake sources, with their metrics.
type wakeGate struct {
	cfg      wakeConfig
	listener *db.Listener
	adoption *sweeper.AdoptionLoop
	metrics  *telemetry.Metrics
	logger   *slog.Logger
}

// newWakeGate prepares the gate's pieces; with --wake-at-due=false there
// are none and options is nil.
func newWakeGate(cfg wakeConfig, databaseURL string, sw *sweeper.Sweeper, metrics *telemetry.Metrics,
	logger *slog.Logger, ready func() bool, listenerUp func(bool),
) (*wakeGate, error) {
	w := &wakeGate{cfg: cfg, metrics: metrics, logger: logger}
	if !cfg.atDue {
		return w, nil
	}
	listener, err := db.NewListener(databaseURL, logger, db.ListenerOptions{OnUp: func(up bool) {
		metrics.ListenerUp(up)
		if listenerUp != nil {
			listenerUp(up)
		}
	}})
	if err != nil {
		return nil, usageErrorf("invalid --database-url: %v", err)
	}
	w.listener = listener
	w.adoption = sw.NewAdoptionLoop(sweeper.AdoptionOptions{
		Interval: cfg.adoptInterval, DatabaseReady: ready, OnAdopted: metrics.Adopted,
	})
	return w, nil
}

// options are the scheduler's gate options (nil: cron only).
func (w *wakeGate) options() *sweeper.GateOptions {
	if !w.cfg.atDue {
		return nil
	}
	return &sweeper.GateOptions{
		Gap: w.cfg.gap, Notify: w.listener, Adoption: w.adoption, OnEmptyWake: w.metrics.EmptyWake,
	}
}

// logAttrs describe the mode in the start-up log.
func (w *wakeGate) logAttrs() []slog.Attr {
	attrs := []slog.Attr{slog.String("wake_mode", w.cfg.mode())}
	if w.cfg.atDue {
		attrs = append(attrs, slog.String("wake_gap", w.cfg.gap.String()), slog.String("adopt_interval", w.cfg.adoptInterval.String()),
			slog.String("park_channel", db.ParkedChannel))
	}
	return attrs
}

// start runs the listener and the adoption loop until ctx ends; the
// returned function waits for both. On the scan path (no schedule, so no
// parks announced) the adoption loop stops at once, and the listener with it.
func (w *wakeGate) start(ctx context.Context) (wait func()) {
	var wg sync.WaitGroup
	if w.listener == nil {
		return wg.Wait
	}
	listenCtx, stopListening := context.WithCancel(ctx)
	wg.Go(func() { w.listener.Run(listenCtx) })
	wg.Go(func() {
		defer stopListening()
		if errors.Is(w.adoption.Run(ctx), sweeper.ErrNoSchedule) {
			w.logger.Info("park listener and adoption loop off: the scan path keeps no schedule")
		}
	})
	return wg.Wait
}
