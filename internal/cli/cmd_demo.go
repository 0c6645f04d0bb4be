package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/migrations"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/pgserver"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// demoConfig is `sweeper demo`'s validated flags.
type demoConfig struct {
	databaseURL string
	duration    time.Duration
	httpAddr    string
	tasks       int
}

// Demo settings that are not flags: a schedule and backoffs short enough
// that steps fail, wait and come back several times within a short run.
const (
	demoSchedule   = "@every 1s"
	demoGrace      = 5 * time.Second
	demoMaxTasks   = 10_000
	reportTimeout  = 15 * time.Second
	demoBackoffMax = 4 * time.Second
)

// runDemo is `sweeper demo`: the daemon against a throwaway PostgreSQL with
// a realistic workload, for a bounded time, then a table of what happened.
// With --database-url it uses that database instead (creating the tasker
// tables only if they do not exist). Ctrl-C ends it early, exit 0; the
// throwaway server and its data are removed on every path.
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
	cfg := demoConfig{databaseURL: *dbURL, duration: *duration, httpAddr: *httpAddr, tasks: *tasks}
	if cfg.databaseURL != "" {
		if err := checkDatabaseURL(cfg.databaseURL); err != nil {
			return err
		}
	}
	if cfg.duration <= 0 {
		return usageErrorf("invalid --duration %s: must be > 0", cfg.duration)
	}
	if cfg.tasks < 1 || cfg.tasks > demoMaxTasks {
		return usageErrorf("invalid --tasks %d: must be between 1 and %d", cfg.tasks, demoMaxTasks)
	}
	if err := checkAdminAddr(cfg.httpAddr, ""); err != nil {
		return err
	}
	base, err := logCfg.logger(e.stderr)
	if err != nil {
		return err
	}
	d := &demo{cfg: cfg, out: e.stdout, logger: base}

	err = d.run(ctx)
	if ctx.Err() != nil {
		// Ctrl-C is a normal way to end the demo; whatever it cut short
		// (usually a cancelled query) is not a failure.
		if err != nil && !errors.Is(err, context.Canceled) {
			d.logger.Debug("interrupted", slog.Any("error", err))
		}
		return nil
	}
	return err
}

// demo is one run of `sweeper demo`.
type demo struct {
	cfg    demoConfig
	out    io.Writer
	logger *slog.Logger
	// sweeps counts the sweeps the daemon ran.
	sweeps atomic.Int64
}

func (d *demo) run(ctx context.Context) (err error) {
	url := d.cfg.databaseURL
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
				// Logged as well: after Ctrl-C the demo exits 0 whatever happened.
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
			slog.String("namespace", demoNamespace))
	}

	store, err := openStore(ctx, url)
	if err != nil {
		return err
	}
	defer store.Pool().Close()
	if err := d.migrate(ctx, store); err != nil {
		return err
	}

	handlerCfg := handling.DefaultConfig()
	handlerCfg.Backoff.Base = time.Second
	handlerCfg.Backoff.Max = demoBackoffMax
	if err := handlerCfg.Validate(); err != nil {
		return fmt.Errorf("demo handler configuration: %w", err)
	}

	plan := newDemoPlan(d.cfg.tasks)
	seeded, err := plan.seed(ctx, store)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "Seeded %d tasks × %d steps into %s (%d steps, %d edges, %d transitions).\n",
		seeded.Tasks, len(demoStepNames), where, seeded.Steps, seeded.Edges, seeded.Transitions)

	handler, err := handling.NewService(store, handlerCfg)
	if err != nil {
		return fmt.Errorf("demo handler configuration: %w", err)
	}
	world := newDemoWorld(store, handler, d.logger, plan)
	if err := world.reportSeededFailures(ctx, plan); err != nil {
		return err
	}
	d.printDecisions(len(plan.failing), world.tally)

	started := time.Now()
	if err := d.runDaemon(ctx, url, handlerCfg, world); err != nil {
		return err
	}
	interrupted := ctx.Err() != nil
	reportCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reportTimeout)
	defer cancel()
	return d.printReport(reportCtx, store, world, time.Since(started), interrupted)
}

// migrate creates the tasker tables only where they do not exist yet: a
// database the orchestrator created is never touched beyond the sweeper's
// own objects.
func (d *demo) migrate(ctx context.Context, store *db.Store) error {
	exists, err := store.TaskerSchemaExists(ctx)
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

// runDaemon runs the real daemon for the configured time while the world
// re-runs the steps it hands back.
func (d *demo) runDaemon(ctx context.Context, url string, handlerCfg handling.Config, world *demoWorld) error {
	runCtx, stop := context.WithTimeout(ctx, d.cfg.duration)
	defer stop()
	pickups := min(max(2, d.cfg.tasks/2), 50)
	fmt.Fprintf(d.out, "Running the sweeper for %s: sweeps %s; every %s the demo orchestrator re-runs up to %d swept steps.\n",
		d.cfg.duration, demoSchedule, feedEvery, pickups)

	feedDone := make(chan struct{})
	go func() {
		defer close(feedDone)
		world.feed(runCtx, pickups)
	}()
	err := serveDaemon(runCtx, daemonConfig{
		databaseURL: url,
		schedule:    demoSchedule,
		sweep:       sweeper.DefaultConfig(),
		handler:     handlerCfg,
		httpAddr:    d.cfg.httpAddr,
		grace:       demoGrace,
	}, d.logger, daemonHooks{
		started: func(addr string) {
			fmt.Fprintf(d.out, "Admin API on http://%s (try: curl -s http://%s/v1/status)\n", addr, addr)
		},
		sweepDone: func(sweeper.Summary, error) { d.sweeps.Add(1) },
	})
	stop()
	<-feedDone
	return err
}

// printDecisions is the line per handler action after the seeded failures.
func (d *demo) printDecisions(failures int, tally *decisionTally) {
	fmt.Fprintf(d.out, "Reported %d failures to the inline handler:\n", failures)
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	actions, counts, _ := tally.snapshot()
	for _, a := range actions {
		if counts[a].total == 0 {
			continue
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\n", a, counts[a].total, counts[a].categories())
	}
	_ = tw.Flush()
}

// printReport is the final status table.
func (d *demo) printReport(ctx context.Context, store *db.Store, world *demoWorld, ran time.Duration, interrupted bool) error {
	states, err := store.StepCountsByState(ctx)
	if err != nil {
		return err
	}
	moves, err := store.DemoSweepMoves(ctx, world.tasks)
	if err != nil {
		return err
	}
	sweptBackPending, err := store.DemoSweptBackPending(ctx, world.tasks)
	if err != nil {
		return err
	}
	due, err := store.CountDue(ctx)
	if err != nil {
		return err
	}
	actions, decisions, succeeded := world.tally.snapshot()

	var t reportTable
	stateLabel := "STEP STATE"
	if d.cfg.databaseURL != "" {
		stateLabel = "STEP STATE (every step in the database)"
	}
	t.section(stateLabel, "STEPS")
	var total int64
	for _, st := range statemachine.States() {
		note := ""
		if st == statemachine.Pending {
			note = fmt.Sprintf("%d swept back, not yet re-run; the rest wait for their parents", sweptBackPending)
		}
		t.row(string(st), states[st], note)
		total += states[st]
	}
	t.row("total", total, "")
	t.section("INLINE HANDLER ACTION", "FAILURES")
	for _, a := range actions {
		t.row(string(a), int64(decisions[a].total), decisions[a].categories())
	}
	t.section("SWEEPER", "")
	t.row("sweeps run", d.sweeps.Load(), "schedule "+demoSchedule)
	t.row("steps swept back to pending", moves.Moves, fmt.Sprintf("%d distinct steps", moves.Steps))
	t.row("retries that then succeeded", int64(succeeded), "run by the demo orchestrator")
	t.row("stranded (waiting, not retry-eligible)", due.Stranded, "")
	t.row("due now, not yet swept", due.Due, "")

	how := "ran"
	if interrupted {
		how = "interrupted after"
	}
	fmt.Fprintf(d.out, "\nWhat happened (%s %s, %d tasks):\n\n", how, ran.Round(100*time.Millisecond), d.cfg.tasks)
	return t.write(d.out)
}

// reportTable is a text table with left-aligned labels and right-aligned
// counts, the sections sharing one set of columns.
type reportTable struct {
	rows [][3]string
}

func (t *reportTable) section(label, unit string) {
	if len(t.rows) > 0 {
		t.rows = append(t.rows, [3]string{})
	}
	t.rows = append(t.rows, [3]string{label, unit, ""})
}

func (t *reportTable) row(label string, n int64, note string) {
	t.rows = append(t.rows, [3]string{label, strconv.FormatInt(n, 10), note})
}

func (t *reportTable) write(w io.Writer) error {
	width := 0
	for _, r := range t.rows {
		width = max(width, len(r[1]))
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 3, ' ', 0)
	for _, r := range t.rows {
		// Every line has the tabs, blank ones too, so all sections align.
		fmt.Fprintf(tw, "%s\t%*s\t%s\n", r[0], width, r[1], r[2])
	}
	_ = tw.Flush() // writes to a bytes.Buffer cannot fail
	var out strings.Builder
	for line := range strings.Lines(buf.String()) {
		out.WriteString(strings.TrimRight(line, " \n") + "\n")
	}
	if _, err := io.WriteString(w, out.String()); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// actionCount is how often the handler took one action, by error category.
type actionCount struct {
	total      int
	byCategory map[handling.Category]int
}

// categories lists the categories behind an action, most frequent first.
func (c actionCount) categories() string {
	cats := slices.Collect(maps.Keys(c.byCategory))
	slices.SortFunc(cats, func(a, b handling.Category) int {
		if d := c.byCategory[b] - c.byCategory[a]; d != 0 {
			return d
		}
		return strings.Compare(string(a), string(b))
	})
	parts := make([]string, len(cats))
	for i, cat := range cats {
		parts[i] = fmt.Sprintf("%s %d", cat, c.byCategory[cat])
	}
	return strings.Join(parts, ", ")
}
