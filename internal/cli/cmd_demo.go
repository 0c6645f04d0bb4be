package cli

import (
	"context"
	"time"

	"github.com/tasker-sweeper/retrysweeper/internal/demo"
)

// runDemo is `sweeper demo`: its flags, then internal/demo with the real
// daemon. --database-url deliberately has no $DATABASE_URL fallback: a demo
// never writes into a database just because the environment points at one.
func runDemo(ctx context.Context, e env, args []string) error {
	f := newFlags("demo", e)
	dbURL := f.fs.String("database-url", "",
		"PostgreSQL connection URL to run the demo in; empty starts a throwaway server (the demo writes its own tasks into this database). "+
			"Deliberately no $DATABASE_URL fallback: a demo never writes into a database just because the environment points at one")
	duration := f.fs.Duration("duration", 12*time.Second, "how long the daemon runs before the demo stops it")
	httpAddr := f.fs.String("http-addr", "127.0.0.1:0", "admin API listen address (port 0: any free port)")
	tasks := f.fs.Int("tasks", 20, "how many demo tasks to seed, four chained steps each")
	logCfg := logFlags(f)
	if err := f.parse(args); err != nil {
		return err
	}
	if *dbURL != "" {
		if err := checkDatabaseURL(*dbURL); err != nil {
			return err
		}
	}
	if *duration <= 0 {
		return usageErrorf("invalid --duration %s: must be > 0", *duration)
	}
	if *tasks < 1 || *tasks > demo.MaxTasks {
		return usageErrorf("invalid --tasks %d: must be between 1 and %d", *tasks, demo.MaxTasks)
	}
	if err := checkAdminAddr(*httpAddr, ""); err != nil {
		return err
	}
	logger, err := logCfg.logger(e.stderr)
	if err != nil {
		return err
	}
	return demo.Run(ctx, demo.Options{
		DatabaseURL: *dbURL,
		Duration:    *duration,
		HTTPAddr:    *httpAddr,
		Tasks:       *tasks,
		Out:         e.stdout,
		Logger:      logger,
		RunDaemon:   runDemoDaemon,
	})
}

// runDemoDaemon is the daemon `sweeper run` serves, configured by the demo.
func runDemoDaemon(ctx context.Context, c demo.DaemonConfig) error {
	return serveDaemon(ctx, daemonConfig{
		databaseURL: c.DatabaseURL,
		schedule:    c.Schedule,
		sweep:       c.Sweep,
		handler:     c.Handler,
		httpAddr:    c.HTTPAddr,
		grace:       c.Grace,
		wake:        defaultWakeConfig(),
	}, c.Logger, daemonHooks{started: c.Started, sweepDone: c.SweepDone})
}
