package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/admin"
	"github.com/tasker-sweeper/retrysweeper/internal/buildinfo"
	"github.com/tasker-sweeper/retrysweeper/internal/preflight"
	"github.com/tasker-sweeper/retrysweeper/internal/telemetry"
	"github.com/tasker-sweeper/retrysweeper/internal/webui"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// daemonConfig is everything `sweeper run` (and `sweeper demo`) needs.
type daemonConfig struct {
	databaseURL string
	schedule    string
	sweep       sweeper.Config
	handler     handling.Config
	httpAddr    string
	adminToken  string
	// adminTokenName names the token's holder in the audit of manual changes.
	adminTokenName string
	// opsAddr serves only the probes and /metrics, with no token; empty:
	// no ops listener.
	opsAddr string
	// gaugeEvery is how often the backlog gauges are refreshed (zero:
	// defaultGaugeEvery).
	gaugeEvery time.Duration
	grace      time.Duration
	// reconcileInterval is how old the last reconcile pass may get.
	reconcileInterval time.Duration
	// wake is the timer gate's configuration (wake.go).
	wake wakeConfig
}

// sweepFlags registers the sweep's flags (shared by run and once).
func sweepFlags(f *flags) *sweeper.Config {
	c := sweeper.DefaultConfig()
	f.fs.IntVar(&c.BatchSize, "batch-size", c.BatchSize, "most steps one batch transaction moves")
	f.fs.IntVar(&c.Workers, "workers", c.Workers, "batch transactions run at once")
	f.fs.DurationVar(&c.BatchTimeout, "batch-timeout", c.BatchTimeout, "longest one batch transaction may take")
	f.fs.StringVar(&c.NotifyChannel, "notify-channel", "", "pg_notify channel told the task ids of moved steps (empty: none)")
	f.env("batch-size", "SWEEPER_BATCH_SIZE")
	f.env("workers", "SWEEPER_WORKERS")
	f.env("batch-timeout", "SWEEPER_BATCH_TIMEOUT")
	f.env("notify-channel", "SWEEPER_NOTIFY_CHANNEL")
	return &c
}

// reconcileFlag registers --reconcile-interval (run and once).
func reconcileFlag(f *flags) *time.Duration {
	d := f.fs.Duration("reconcile-interval", sweeper.DefaultReconcileInterval,
		"how old the last reconcile pass (by any replica) may get before this process runs one")
	f.env("reconcile-interval", "SWEEPER_RECONCILE_INTERVAL")
	return d
}

func checkReconcileInterval(d time.Duration) error {
	if d < time.Second || d > 24*time.Hour {
		return usageErrorf("invalid --reconcile-interval %s: must be between 1s and 24h", d)
	}
	return nil
}

// daemonFlags registers run's flags and returns a function that validates
// them into a daemonConfig.
func daemonFlags(f *flags) func() (daemonConfig, error) {
	dbURL := databaseFlag(f)
	sweepCfg := sweepFlags(f)
	handlerCfg := handlerFlags(f)
	schedule := f.fs.String("schedule", "@every 5s", "cron spec for sweeps: 5 fields, 6 with seconds, or @every/@hourly")
	httpAddr := f.fs.String("http-addr", "127.0.0.1:9090", "admin API listen address")
	token := f.fs.String("admin-token", "", "bearer token for the admin API's POST endpoints (required off loopback)")
	tokenName := f.fs.String("admin-token-name", "", "who holds the admin token, recorded with every manual change made through the API")
	opsAddr := f.fs.String("ops-addr", ":9464",
		"ops listener: only /metrics, /healthz and /readyz, no token (empty: none)")
	grace := f.fs.Duration("shutdown-grace", 30*time.Second,
		"how long a shutdown waits for in-flight batches before cancelling them (they roll back whole)")
	reconcile := reconcileFlag(f)
	wake := wakeFlags(f)
	f.env("schedule", "SWEEPER_SCHEDULE")
	f.env("http-addr", "SWEEPER_HTTP_ADDR")
	f.env("admin-token", "SWEEPER_ADMIN_TOKEN")
	f.env("admin-token-name", "SWEEPER_ADMIN_TOKEN_NAME")
	f.env("ops-addr", "SWEEPER_OPS_ADDR")
	f.env("shutdown-grace", "SWEEPER_SHUTDOWN_GRACE")
	return func() (daemonConfig, error) {
		cfg := daemonConfig{
			databaseURL: *dbURL, schedule: *schedule, sweep: *sweepCfg, handler: *handlerCfg,
			httpAddr: *httpAddr, adminToken: *token, adminTokenName: *tokenName, opsAddr: *opsAddr, grace: *grace, reconcileInterval: *reconcile,
			wake: *wake,
		}
		if err := checkReconcileInterval(cfg.reconcileInterval); err != nil {
			return cfg, err
		}
		if err := cfg.wake.check(); err != nil {
			return cfg, err
		}
		if err := checkDatabaseURL(cfg.databaseURL); err != nil {
			return cfg, err
		}
		if _, err := sweeper.ParseSchedule(cfg.schedule); err != nil {
			return cfg, usageErrorf("invalid --schedule: %v", err)
		}
		if err := checkSweepConfig(&cfg.sweep); err != nil {
			return cfg, err
		}
		if err := checkHandlerConfig(&cfg.handler); err != nil {
			return cfg, err
		}
		if err := checkAdminAddr(cfg.httpAddr, cfg.adminToken); err != nil {
			return cfg, err
		}
		if err := checkOpsAddr(cfg.opsAddr, cfg.httpAddr); err != nil {
			return cfg, err
		}
		if cfg.grace < 0 {
			return cfg, usageErrorf("invalid --shutdown-grace %s: must be >= 0", cfg.grace)
		}
		return cfg, nil
	}
}

// checkAdminAddr checks the admin API's address is host:port with a numeric
// port (0 picks a free one, logged at start), and refuses an admin API
// reachable off this host without a token: it can move and fail steps.
func checkAdminAddr(addr, token string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return usageErrorf("invalid --http-addr %q: want host:port", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n > 65535 {
		return usageErrorf("invalid --http-addr %q: the port must be a number from 0 to 65535 (0: any free port)", addr)
	}
	if token != "" {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return usageErrorf("refusing --http-addr %q without --admin-token: the admin API may only listen off loopback with a token", addr)
	}
	return nil
}

// checkOpsAddr checks the ops listener's address: empty (none) or
// host:port with a numeric port, not the admin API's.
func checkOpsAddr(addr, httpAddr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return usageErrorf("invalid --ops-addr %q: want host:port, or empty for no ops listener", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n > 65535 {
		return usageErrorf("invalid --ops-addr %q: the port must be a number from 0 to 65535 (0: any free port)", addr)
	}
	if addr == httpAddr && port != "0" {
		return usageErrorf("invalid --ops-addr %q: it is --http-addr's address; give each listener its own", addr)
	}
	return nil
}

// runDaemon is `sweeper run`.
func runDaemon(ctx context.Context, e env, args []string) error {
	f := newFlags("run", e)
	build := daemonFlags(f)
	logCfg := logFlags(f)
	if err := f.parse(args); err != nil {
		return err
	}
	cfg, err := build()
	if err != nil {
		return err
	}
	logger, err := logCfg.logger(e.stderr)
	if err != nil {
		return err
	}
	return serveDaemon(ctx, cfg, logger, e.daemon)
}

// abortWait bounds how long a shutdown waits for cancelled batches to
// return, so the process exits within its grace period plus about a second.
const abortWait = 800 * time.Millisecond

// daemonHooks let a caller of serveDaemon (the demo, tests) observe it.
// Every field is optional.
type daemonHooks struct {
	// started receives the admin API's address once it listens.
	started func(addr string)
	// opsStarted receives the ops listener's address once it listens.
	opsStarted func(addr string)
	// sweepDone runs after every sweep, scheduled or manual.
	sweepDone func(sweeper.Summary, error)
	// databaseChecked receives every health check's verdict.
	databaseChecked func(up bool)
	// metrics receives the metrics handler (what GET /metrics serves),
	// which stays readable after the daemon stopped.
	metrics func(http.Handler)
	// listenerUp receives every change of the park listener's connection.
	listenerUp func(up bool)
}

// serveDaemon runs the daemon until ctx is cancelled: admin API, database
// health checks, scheduled sweeps and full adoption passes. It starts even
// when the database is down. On shutdown it stops the API and the schedule,
// then gives in-flight batches cfg.grace to commit.
func serveDaemon(ctx context.Context, cfg daemonConfig, logger *slog.Logger, hooks daemonHooks) error {
	poolCfg, err := db.PoolConfig(cfg.databaseURL)
	if err != nil {
		return usageErrorf("invalid --database-url: %v", err)
	}
	// Enough connections for every sweep worker plus the admin API.
	poolCfg.MaxConns = max(poolCfg.MaxConns, int32(cfg.sweep.Workers+4))
	pool, err := pgxpool.NewWithConfig(context.WithoutCancel(ctx), poolCfg) // lazy: no connection yet
	if err != nil {
		return fmt.Errorf("open pool: %w", err)
	}
	defer pool.Close()

	store := db.NewStore(pool)
	metrics := telemetry.New()
	if hooks.metrics != nil {
		hooks.metrics(metrics.Handler())
	}
	dbUp := make(chan struct{}, 1)
	health := newDBHealth(store.Ping, logger, func(up bool) {
		metrics.DatabaseChecked(up)
		if up {
			select {
			case dbUp <- struct{}{}:
			default:
			}
		}
		if hooks.databaseChecked != nil {
			hooks.databaseChecked(up)
		}
	})
	known, err := db.KnownSweeperVersion()
	if err != nil {
		return err
	}
	sweeps := &sweepRecorder{}
	ready := &readiness{
		gather: store.Preflight,
		opts: func() preflight.Options {
			return preflight.Options{KnownVersion: known, RunningPath: string(store.ChosenPath()), Sweeps: sweeps.record()}
		},
		maxAge: factsMaxAge, timeout: preflightTimeout,
		onReport: func(r preflight.Report) { metrics.ReadinessChecked(r.Ready) },
	}
	sweepHooks := metrics.SweepHooks()
	recordSweep := sweepHooks.SweepDone
	sweepLog := admin.NewSweepLog(0)
	sweepHooks.SweepDone = func(sum sweeper.Summary, err error) {
		recordSweep(sum, err)
		sweeps.sweepDone(sum, err)
		sweepLog.SweepDone(sum, err)
		if hooks.sweepDone != nil {
			hooks.sweepDone(sum, err)
		}
	}
	sw, err := sweeper.New(store, cfg.sweep, logger, sweepHooks)
	if err != nil {
		return configError(err)
	}
	gate, err := newWakeGate(cfg.wake, cfg.databaseURL, sw, metrics, logger, health.Ready, hooks.listenerUp)
	if err != nil {
		return err
	}
	sched, err := sweeper.NewScheduler(sw, cfg.schedule, logger, sweeper.SchedulerOptions{
		DatabaseReady: health.Ready, OnSkippedTick: metrics.SkippedTick,
		OnWake: metrics.Wake, Gate: gate.options(),
	})
	if err != nil {
		return usageErrorf("invalid --schedule: %v", err)
	}
	handler, err := handling.NewService(store, cfg.handler, handlerOptions(metrics, logger)...)
	if err != nil {
		return configError(err)
	}

	listener, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.httpAddr, err)
	}
	servers := []*admin.Server{admin.NewServer(admin.New(admin.Deps{
		Sweeps:     sched,
		Steps:      sw,
		Failures:   metrics.CountDecisions(handler),
		StepStatus: store,
		Status:     store,
		Readiness:  health,
		Preflight:  ready,
		WakeMode:   sched.WakeMode,
		Queue:      sweeper.NewOperator(store, sw, logger),
		Metrics:    metrics.Handler(),
		SweepLog:   sweepLog,
		Page:       webui.New(webui.Options{TokenRequired: cfg.adminToken != "", Logger: logger}).Routes,
		Token:      cfg.adminToken,
		TokenName:  cfg.adminTokenName,
		Logger:     logger,
	}), admin.DefaultLimits(), logger)}
	listeners := []net.Listener{listener}
	opsAddr := ""
	if cfg.opsAddr != "" {
		opsListener, err := net.Listen("tcp", cfg.opsAddr)
		if err != nil {
			_ = listener.Close()
			return fmt.Errorf("listen on %s (--ops-addr): %w", cfg.opsAddr, err)
		}
		listeners = append(listeners, opsListener)
		servers = append(servers, admin.NewServer(admin.NewOps(admin.OpsDeps{
			Readiness: health, Preflight: ready, Metrics: metrics.Handler(), Logger: logger,
		}), admin.DefaultLimits(), logger))
		opsAddr = opsListener.Addr().String()
	}
	serveErr := make(chan error, len(servers))
	for i, srv := range servers {
		go func() { serveErr <- srv.Serve(listeners[i]) }()
	}
	// The one start-up line: the effective configuration.
	logger.LogAttrs(ctx, slog.LevelInfo, "sweeper running",
		startupAttrs(ctx, cfg, &poolCfg.ConnConfig.Config, store, listener.Addr().String(),
			append([]slog.Attr{slog.String("version", buildinfo.Get().Version), slog.String("ops_addr", opsAddr)},
				append(gate.logAttrs(), pauseAttrs(ctx, store)...)...)...)...)
	if hooks.started != nil {
		hooks.started(listener.Addr().String())
	}
	if hooks.opsStarted != nil && opsAddr != "" {
		hooks.opsStarted(opsAddr)
	}

	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	reloadDone := watchPolicyReloads(runCtx, handler, metrics, logger)
	defer func() { stopRun(); <-reloadDone }()
	healthDone := make(chan struct{})
	go func() { defer close(healthDone); health.run(runCtx) }()
	schedDone := make(chan struct{})
	go func() { defer close(schedDone); sched.Run(runCtx) }()
	gateWait := gate.start(runCtx)
	reconcileDone := make(chan struct{})
	go func() {
		defer close(reconcileDone)
		sw.RunReconcile(runCtx, sweeper.ReconcileOptions{
			Interval: cfg.reconcileInterval, DatabaseReady: health.Ready, OnPassDone: metrics.ReconcilePass,
		})
	}()
	gaugesDone := make(chan struct{})
	go func() {
		defer close(gaugesDone)
		every := cfg.gaugeEvery
		if every <= 0 {
			every = defaultGaugeEvery
		}
		(&gaugeLoop{
			every: every, backlog: store.Backlog, set: metrics.BacklogCounted, dbUp: health.Ready, up: dbUp,
			ready: func(ctx context.Context) { ready.Report(ctx) }, logger: logger,
		}).run(runCtx)
	}()

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down: no new sweeps; waiting for in-flight batches", slog.String("grace", cfg.grace.String()))
	case err := <-serveErr:
		runErr = fmt.Errorf("serve HTTP: %w", err)
	}
	stopRun()

	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.grace)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Warn("HTTP server shutdown", slog.Any("error", err))
		}
	}
	select {
	case <-schedDone:
	case <-shutdownCtx.Done():
		// Past the grace: cancel the batches in flight. Each is one
		// transaction, so it rolls back whole; the steps wait for the next
		// sweep (any replica's).
		logger.Warn("grace period over with a sweep still running: cancelling its batches (they roll back)",
			slog.String("grace", cfg.grace.String()))
		sw.AbortBatches()
		select {
		case <-schedDone:
		case <-time.After(abortWait):
			logger.Warn("batches still running after their cancellation; exiting anyway")
		}
	}
	<-healthDone
	<-gaugesDone
	<-reconcileDone // a pass in flight is cancelled: it rolls back whole
	gateWait()
	logger.Info("sweeper stopped")
	return runErr
}
