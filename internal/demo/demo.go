// Package demo owns `sweeper demo`: a throwaway PostgreSQL (or a database
// the caller names), a realistic workload seeded into the tasker tables,
// failures fed through the real inline handler, the real daemon run for a
// bounded time while a simulated orchestrator re-runs the steps it hands
// back, and a final report of what happened.
//
// The demo plays the orchestrator and its workers, which the sweeper itself
// never does, so the statements for that are its own (internal/demo/queries,
// generated into demosqlc); every state change of a step still goes through
// the production store. The daemon is passed in (Options.RunDaemon), so this
// package does not depend on the command line that wires it.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/migrations"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/demo/demosqlc"
	"github.com/tasker-sweeper/retrysweeper/internal/pgserver"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// MaxTasks is the most tasks one demo seeds.
const MaxTasks = 10_000

// Demo settings that are not options: a schedule and backoffs short enough
// that steps fail, wait and come back several times within a short run.
const (
	schedule       = "@every 1s"
	grace          = 5 * time.Second
	reportTimeout  = 15 * time.Second
	connectTimeout = 15 * time.Second
	backoffMax     = 4 * time.Second
)

// Options configures one demo run. Every field is required except
// DatabaseURL.
type Options struct {
	// DatabaseURL is the database to run in; the demo creates the tasker
	// tables only if they do not exist, and writes its tasks into it. Empty
	// starts a throwaway server, removed when the demo ends.
	DatabaseURL string
	// Duration is how long the daemon runs before the demo stops it.
	Duration time.Duration
	// HTTPAddr is the admin API's listen address, passed on to the daemon.
	HTTPAddr string
	// Tasks is how many tasks to seed (four chained steps each), 1 to MaxTasks.
	Tasks int
	// Out receives the demo's narration and final report.
	Out io.Writer
	// Logger receives the demo's logs; the daemon is given it too.
	Logger *slog.Logger
	// RunDaemon runs the sweeper daemon with cfg until ctx ends (or it fails).
	RunDaemon func(ctx context.Context, cfg DaemonConfig) error
}

// DaemonConfig is the daemon the demo asks Options.RunDaemon to run.
type DaemonConfig struct {
	DatabaseURL string
	// Schedule is the sweeps' cron spec.
	Schedule string
	Sweep    sweeper.Config
	// Handler is the inline handler's configuration: the same one the demo
	// reports its workers' failures with.
	Handler  handling.Config
	HTTPAddr string
	// Grace is how long a shutdown waits for in-flight batches.
	Grace  time.Duration
	Logger *slog.Logger
	// Started must be called with the admin API's address once it listens.
	Started func(addr string)
	// SweepDone must be called after every sweep, scheduled or manual.
	SweepDone func(sweeper.Summary, error)
}

func (o Options) validate() error {
	switch {
	case o.Out == nil || o.Logger == nil || o.RunDaemon == nil:
		return errors.New("configure the demo: Out, Logger and RunDaemon are required")
	case o.Duration <= 0:
		return fmt.Errorf("configure the demo: duration %s must be > 0", o.Duration)
	case o.Tasks < 1 || o.Tasks > MaxTasks:
		return fmt.Errorf("configure the demo: tasks %d must be between 1 and %d", o.Tasks, MaxTasks)
	}
	return nil
}

// Run is one demo: the daemon against a throwaway PostgreSQL (or
// opts.DatabaseURL) with a realistic workload, for opts.Duration, then a
// table of what happened. Cancelling ctx (Ctrl-C) ends it early and is not a
// failure: Run then returns nil, after the report. The throwaway server and
// its data are removed on every path.
func Run(ctx context.Context, opts Options) error {
	if err := opts.validate(); err != nil {
		return err
	}
	d := &demo{opts: opts, logger: opts.Logger}
	err := d.run(ctx)
	if ctx.Err() != nil {
		// Whatever Ctrl-C cut short (usually a cancelled query) is not a
		// failure.
		if err != nil && !errors.Is(err, context.Canceled) {
			d.logger.Debug("interrupted", slog.Any("error", err))
		}
		return nil
	}
	return err
}

// demo is one run.
type demo struct {
	opts   Options
	logger *slog.Logger
	// sweeps counts the sweeps the daemon ran.
	sweeps atomic.Int64
}

func (d *demo) run(ctx context.Context) (err error) {
	url := d.opts.DatabaseURL
	where := "the throwaway database"
	if url == "" {
		d.logger.Info("starting a throwaway PostgreSQL server; it and its data are removed when the demo ends")
		srv, startErr := pgserver.Start(ctx, pgserver.Options{})
		if startErr != nil {
			if ctx.Err() != nil {
				d.logger.Info("demo interrupted while PostgreSQL was starting")
				return ctx.Err()
			}
			// pgserver's error says what is missing (no server binaries: which
			// package to install); the demo adds the way around it.
			return fmt.Errorf("start a throwaway PostgreSQL: %w; or run the demo on an existing database with --database-url", startErr)
		}
		// Runs on every path, Ctrl-C included; a server or data left behind
		// is a failure of the demo.
		defer func() {
			if stopErr := srv.Stop(); stopErr != nil {
				// Logged as well: after Ctrl-C the demo returns nil whatever happened.
				d.logger.Error("stop throwaway PostgreSQL: its data may be left behind", slog.Any("error", stopErr))
				err = errors.Join(err, fmt.Errorf("stop throwaway PostgreSQL: %w", stopErr))
				return
			}
			d.logger.Info("throwaway PostgreSQL stopped and its data removed")
		}()
		url = srv.URL("postgres")
		d.logger.Info("throwaway PostgreSQL ready", slog.Int("port", srv.Port()))
	} else {
		where = "the --database-url database"
		d.logger.Warn("using --database-url: the demo writes its tasks into this database",
			slog.String("namespace", namespace))
	}

	connectCtx, cancelConnect := context.WithTimeout(ctx, connectTimeout)
	pool, err := db.Connect(connectCtx, url)
	cancelConnect()
	if err != nil {
		return fmt.Errorf("open the demo database: %w", err)
	}
	defer pool.Close()
	store := db.NewStore(pool)
	q := queries{q: demosqlc.New(pool)}
	if err := d.migrate(ctx, store, q); err != nil {
		return err
	}

	handlerCfg := handling.DefaultConfig()
	handlerCfg.Backoff.Base = time.Second
	handlerCfg.Backoff.Max = backoffMax
	handler, err := handling.NewService(store, handlerCfg)
	if err != nil {
		return fmt.Errorf("configure the demo's inline handler: %w", err)
	}

	p := newPlan(d.opts.Tasks)
	seeded, err := q.seed(ctx, p)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.opts.Out, "Seeded %d tasks × %d steps into %s (%d steps, %d edges, %d transitions).\n",
		seeded.tasks, len(stepNames), where, seeded.steps, seeded.edges, seeded.transitions)

	w := newWorld(store, q, handler, d.logger, p)
	if err := w.reportSeededFailures(ctx, p); err != nil {
		return err
	}
	d.printDecisions(len(p.failing), w.tally)

	started := time.Now()
	if err := d.runDaemon(ctx, url, handlerCfg, w); err != nil {
		return err
	}
	interrupted := ctx.Err() != nil
	reportCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reportTimeout)
	defer cancel()
	return d.printReport(reportCtx, store, q, w, time.Since(started), interrupted)
}

// migrate creates the tasker tables only where they do not exist yet: a
// database the orchestrator created is never touched beyond the sweeper's
// own objects.
func (d *demo) migrate(ctx context.Context, store *db.Store, q queries) error {
	exists, err := q.taskerSchemaExists(ctx)
	if err != nil {
		return err
	}
	if exists {
		d.logger.Info("tasker schema found: using it as it is")
	}
	for _, set := range migrations.Sets(!exists) {
		res, err := db.Migrate(ctx, store.Pool(), set)
		if err != nil {
			return err
		}
		if len(res.Applied) > 0 {
			d.logger.Info("migrations applied", slog.String("set", set.Dir), slog.Int("count", len(res.Applied)))
		}
	}
	return nil
}

// runDaemon runs the daemon for the configured time while the world re-runs
// the steps it hands back.
func (d *demo) runDaemon(ctx context.Context, url string, handlerCfg handling.Config, w *world) error {
	runCtx, stop := context.WithTimeout(ctx, d.opts.Duration)
	defer stop()
	pickups := min(max(2, d.opts.Tasks/2), 50)
	fmt.Fprintf(d.opts.Out, "Running the sweeper for %s: sweeps %s; every %s the demo orchestrator re-runs up to %d swept steps.\n",
		d.opts.Duration, schedule, feedEvery, pickups)

	feedDone := make(chan struct{})
	go func() {
		defer close(feedDone)
		w.feed(runCtx, pickups)
	}()
	err := d.opts.RunDaemon(runCtx, DaemonConfig{
		DatabaseURL: url,
		Schedule:    schedule,
		Sweep:       sweeper.DefaultConfig(),
		Handler:     handlerCfg,
		HTTPAddr:    d.opts.HTTPAddr,
		Grace:       grace,
		Logger:      d.logger,
		Started: func(addr string) {
			fmt.Fprintf(d.opts.Out, "Admin API on http://%s (try: curl -s http://%s/v1/status)\n", addr, addr)
		},
		SweepDone: func(sweeper.Summary, error) { d.sweeps.Add(1) },
	})
	stop()
	<-feedDone
	return err
}
