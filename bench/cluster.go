package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/migrations"
	"github.com/tasker-sweeper/retrysweeper/internal/pgserver"
)

// bench is one invocation: its options, sizes, server, sweeper binary and
// collected results.
type bench struct {
	opts    options
	sz      sizes
	log     *progress
	res     *results
	machine machineInfo

	srv     *pgserver.Server
	admin   *pgxpool.Pool // the postgres database: CREATE/DROP DATABASE
	sweeper string        // path of the sweeper binary
	cloneN  int
	// templates already built, by name.
	templates map[string]bool
	// idleSteps are the step ids of the idle template.
	idleSteps []uuid.UUID
	// pgss: the server loads pg_stat_statements (tracking nothing unless a
	// database asks, see countStatementsIn).
	pgss bool
}

// serverSettings are production-like: durable commits (pgserver.Durable
// turns fsync, synchronous_commit and full_page_writes on), a realistic
// buffer cache, and enough WAL headroom that seeding does not checkpoint
// every few seconds. Autovacuum stays on, as in production.
var serverSettings = map[string]string{
	"shared_buffers":       "1GB",
	"max_wal_size":         "8GB",
	"checkpoint_timeout":   "15min",
	"effective_cache_size": "8GB",
}

func (b *bench) execute(ctx context.Context) error {
	b.templates = map[string]bool{}
	if err := b.checkDisk(); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "sweeper-bench-")
	if err != nil {
		return fmt.Errorf("create temp dir: %w", err)
	}
	defer func() { _ = os.RemoveAll(tmp) }()

	b.sweeper = b.opts.sweeper
	if b.sweeper == "" {
		b.sweeper = filepath.Join(tmp, "sweeper")
		if err := b.buildSweeper(ctx, b.sweeper); err != nil {
			return err
		}
	}

	b.log.printf("starting a durable PostgreSQL in %s", b.opts.parent)
	settings := maps.Clone(serverSettings)
	if b.pgss = statementsLibrary(); b.pgss {
		// Loaded for the lag scenario's statement counts; tracking is off
		// except in the databases that ask for it.
		settings["shared_preload_libraries"] = "pg_stat_statements"
		settings["pg_stat_statements.track"] = "none"
	}
	srv, err := pgserver.Start(ctx, pgserver.Options{Durable: true, Parent: b.opts.parent, Settings: settings})
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	b.srv = srv
	defer func() {
		if b.admin != nil {
			b.admin.Close()
		}
		b.log.printf("stopping PostgreSQL and removing its data directory")
		if err := srv.Stop(); err != nil {
			b.log.printf("stop postgres: %v", err)
		}
	}()
	admin, err := db.Connect(ctx, srv.URL("postgres"))
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	b.admin = admin
	if b.pgss {
		if _, err := admin.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
			return fmt.Errorf("create pg_stat_statements: %w", err)
		}
	}
	if err := b.describeMachine(ctx); err != nil {
		return err
	}
	b.log.printf("PostgreSQL %s on port %d; scale %g, %d run(s) per scenario; scenarios: %s",
		b.machine.pgVersion, srv.Port(), b.opts.scale, b.opts.runs, strings.Join(b.opts.scenarios, ", "))

	for _, name := range b.opts.scenarios {
		start := time.Now()
		b.log.printf("== scenario %s", name)
		var err error
		switch name {
		case "backlog":
			err = b.backlog(ctx)
		case "idle":
			err = b.idle(ctx)
		case "reconcile":
			err = b.reconcile(ctx)
		case "lag":
			err = b.lag(ctx)
		case "memory":
			err = b.memory(ctx)
		case "handler":
			err = b.handler(ctx)
		case "orchestrator":
			err = b.orchestrator(ctx)
		}
		if err != nil {
			return fmt.Errorf("scenario %s: %w", name, err)
		}
		b.log.printf("== scenario %s done in %.1fs", name, time.Since(start).Seconds())
	}
	if b.opts.hold {
		b.log.printf("holding the server: psql '%s' (templates: clone them with CREATE DATABASE x TEMPLATE <name>); Ctrl-C to stop",
			b.url("postgres"))
		<-ctx.Done()
	}
	return nil
}

// statementsLibrary reports whether the server's library directory has
// pg_stat_statements (a contrib module).
func statementsLibrary() bool {
	out, err := exec.Command("pg_config", "--pkglibdir").Output()
	return err == nil && isFile(filepath.Join(strings.TrimSpace(string(out)), "pg_stat_statements.so"))
}

// checkDisk refuses to start when the data directory's file system is
// tmpfs (not production-like) or clearly too small for the templates and
// their clones.
func (b *bench) checkDisk() error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(b.opts.parent, &st); err != nil {
		return fmt.Errorf("inspect %s: %w", b.opts.parent, err)
	}
	const tmpfsMagic = 0x01021994
	if st.Type == tmpfsMagic {
		return fmt.Errorf("%s is tmpfs: the benchmark needs its data on disk (use -data-parent)", b.opts.parent)
	}
	free := float64(st.Bavail) * float64(st.Bsize) / (1 << 30)
	// At full scale the templates take about 13 GiB (idle and idle_base
	// 4.7 GiB each, memory 2.7 GiB, the rest under 1 GiB), the live clones
	// up to 9.4 GiB (the orchestrator scenario's pair) and the WAL up to
	// max_wal_size (8 GiB).
	need := max(2, 35*b.opts.scale)
	if free < need {
		return fmt.Errorf("%s has %.1f GiB free; this scale needs about %.0f GiB", b.opts.parent, free, need)
	}
	return nil
}

// buildSweeper builds ./cmd/sweeper of the module the harness runs in.
func (b *bench) buildSweeper(ctx context.Context, out string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, goTool(), "build", "-o", out, "./cmd/sweeper")
	cmd.Dir = root
	if raw, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the sweeper: %w: %s", err, raw)
	}
	b.log.printf("built the sweeper binary in %.1fs", time.Since(start).Seconds())
	return nil
}

// goTool is the go command: $GOROOT/bin/go when `go run` or make set
// GOROOT, else whatever "go" is on the PATH.
func goTool() string {
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); isFile(p) {
			return p
		}
	}
	return "go"
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// moduleRoot walks up from the working directory to the go.mod of the
// github.com/tasker-sweeper/retrysweeper module.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		raw, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(raw)), "module github.com/tasker-sweeper/retrysweeper") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run the benchmark from inside the github.com/tasker-sweeper/retrysweeper module (or pass -sweeper)")
		}
		dir = parent
	}
}

// machineInfo describes where the numbers were taken.
type machineInfo struct {
	cpus      int
	cpuModel  string
	memGiB    float64
	pgVersion string
	settings  map[string]string
}

func (b *bench) describeMachine(ctx context.Context) error {
	b.machine.cpus = runtime.NumCPU()
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(raw), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				b.machine.cpuModel = strings.TrimSpace(v)
				break
			}
		}
	}
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err == nil {
		b.machine.memGiB = float64(si.Totalram) * float64(si.Unit) / (1 << 30)
	}
	if err := b.admin.QueryRow(ctx, "SHOW server_version").Scan(&b.machine.pgVersion); err != nil {
		return fmt.Errorf("read server version: %w", err)
	}
	b.machine.settings = map[string]string{}
	for _, name := range []string{
		"fsync", "synchronous_commit", "full_page_writes", "wal_sync_method",
		"shared_buffers", "max_wal_size", "autovacuum",
	} {
		var v string
		if err := b.admin.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
			return fmt.Errorf("read setting %s: %w", name, err)
		}
		b.machine.settings[name] = v
	}
	if b.machine.settings["fsync"] != "on" || b.machine.settings["synchronous_commit"] != "on" {
		return fmt.Errorf("server is not durable (fsync=%s, synchronous_commit=%s)",
			b.machine.settings["fsync"], b.machine.settings["synchronous_commit"])
	}
	return nil
}

// url is the connection URL of a database on the benchmark server.
func (b *bench) url(database string) string { return b.srv.URL(database) }

// connect opens a small pool (UTC sessions, like the sweeper's) to database.
func (b *bench) connect(ctx context.Context, database string) (*pgxpool.Pool, error) {
	cfg, err := db.PoolConfig(b.url(database))
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "sweeper-bench"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool to %s: %w", database, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to %s: %w", database, err)
	}
	return pool, nil
}

// connectOne opens a single connection (UTC session) to database.
func (b *bench) connectOne(ctx context.Context, database string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(b.url(database))
	if err != nil {
		return nil, fmt.Errorf("parse url: %w", err)
	}
	cfg.RuntimeParams["timezone"] = "UTC"
	cfg.RuntimeParams["application_name"] = "sweeper-bench"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", database, err)
	}
	return conn, nil
}

// templateKind says whether a template carries the sweeper-owned objects.
type templateKind int

const (
	// taskerOnly is the tasker schema subset and the seeded data: a database
	// as the orchestrator alone would have it.
	taskerOnly templateKind = iota
	// withSweeper adds every sweeper-owned migration set on top, applied
	// after the data is there, as on an orchestrator database that gets the
	// sidecar later.
	withSweeper
)

// templateSpec describes a template database.
type templateSpec struct {
	name string
	// keepBase also keeps name+"_base": the same data without the
	// sweeper-owned objects.
	keepBase bool
	// seed bulk-loads the data into a database that has the tasker subset.
	seed func(ctx context.Context, pool *pgxpool.Pool) error
	// park, when set, runs after the sidecar's first sweep (see
	// buildTemplate), as ordinary writes: the orchestrator parking steps in
	// waiting_for_retry since the sweeper last looked.
	park func(ctx context.Context, pool *pgxpool.Pool) error
}

// buildTemplate creates a template: the tasker subset, the seeded data,
// then (in name, not name_base) every sweeper-owned migration set applied
// on top, as on an orchestrator database that gets the sidecar later, and
// one `sweeper once` so the template is a database the sidecar has been
// running against rather than one it has never seen. Then spec.park (on
// both variants). Templates are vacuumed (frozen, analysed) and closed to
// connections, so clones start clean.
func (b *bench) buildTemplate(ctx context.Context, spec templateSpec) error {
	if b.templates[spec.name] {
		return nil
	}
	start := time.Now()
	seedDB := spec.name
	if spec.keepBase {
		seedDB = spec.name + "_base"
	}
	if _, err := b.admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{seedDB}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", seedDB, err)
	}
	err := b.withPool(ctx, seedDB, func(pool *pgxpool.Pool) error {
		if _, err := db.Migrate(ctx, pool, migrations.TaskerSubset); err != nil {
			return fmt.Errorf("migrate the tasker subset on %s: %w", seedDB, err)
		}
		if err := spec.seed(ctx, pool); err != nil {
			return fmt.Errorf("seed %s: %w", seedDB, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if spec.keepBase {
		// Vacuumed (frozen) once before the copy, so both variants start
		// from the same clean pages and their own vacuums are incremental.
		if err := b.withPool(ctx, seedDB, func(pool *pgxpool.Pool) error { return vacuum(ctx, pool) }); err != nil {
			return err
		}
		if err := b.createClone(ctx, spec.name, seedDB); err != nil {
			return err
		}
		if err := b.finishTemplate(ctx, seedDB, taskerOnly, spec.park); err != nil {
			return err
		}
	}
	if err := b.finishTemplate(ctx, spec.name, withSweeper, spec.park); err != nil {
		return err
	}
	size, err := b.databaseSize(ctx, spec.name)
	if err != nil {
		return err
	}
	b.log.printf("template %s ready: %s in %.1fs", spec.name, size, time.Since(start).Seconds())
	b.templates[spec.name] = true
	return nil
}

// finishTemplate installs the sweeper-owned objects and runs the sidecar's
// first sweep (withSweeper only), parks steps, vacuums and seals.
func (b *bench) finishTemplate(ctx context.Context, name string, kind templateKind, park func(context.Context, *pgxpool.Pool) error) error {
	err := b.withPool(ctx, name, func(pool *pgxpool.Pool) error {
		if kind == withSweeper {
			if err := applySweeperSets(ctx, pool); err != nil {
				return err
			}
			res, err := b.runOnce(ctx, name, b.sz.firstSweepLimit)
			switch {
			case sweeperTrouble(err):
				b.log.printf("  %s: the sidecar's first sweep failed (%v); the template stays as the sweeper left it", name, err)
				b.res.note("template %s: the sidecar's first sweep (over data it had never seen) failed: %v", name, err)
			case err != nil:
				return fmt.Errorf("first sweep of %s: %w", name, err)
			case res.summary.Transitioned != 0:
				return fmt.Errorf("first sweep of %s moved %d steps; nothing should be due yet", name, res.summary.Transitioned)
			default:
				b.log.printf("  %s: the sidecar's first sweep took %.0f ms (%s)", name, res.summary.DurationMS, res.summary.describe())
			}
		}
		if park != nil {
			start := time.Now()
			if err := park(ctx, pool); err != nil {
				return fmt.Errorf("park steps in %s: %w", name, err)
			}
			b.log.printf("  %s: parked the due steps in %.1fs", name, time.Since(start).Seconds())
		} else if kind == taskerOnly {
			return nil // vacuumed before it was copied, unchanged since
		}
		return vacuum(ctx, pool)
	})
	if err != nil {
		return err
	}
	return b.sealTemplate(ctx, name)
}

// withPool runs fn with a pool to database and closes it after.
func (b *bench) withPool(ctx context.Context, database string, fn func(*pgxpool.Pool) error) error {
	pool, err := b.connect(ctx, database)
	if err != nil {
		return err
	}
	defer pool.Close()
	return fn(pool)
}

// applySweeperSets applies every sweeper-owned migration set: what
// `sweeper migrate` adds on top of a tasker database.
func applySweeperSets(ctx context.Context, pool *pgxpool.Pool) error {
	for _, set := range migrations.Sets(false) {
		if _, err := db.Migrate(ctx, pool, set); err != nil {
			return fmt.Errorf("apply sweeper-owned set %s: %w", set.Dir, err)
		}
	}
	return nil
}

// sweeperSetNames names the sweeper-owned sets, for the report.
func sweeperSetNames() []string {
	var names []string
	for _, set := range migrations.Sets(false) {
		names = append(names, set.Dir)
	}
	return names
}

func vacuum(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, "VACUUM (FREEZE, ANALYZE)"); err != nil {
		return fmt.Errorf("vacuum: %w", err)
	}
	return nil
}

// sealTemplate marks a database as a template nobody connects to, so
// autovacuum leaves it alone and clones never wait for it.
func (b *bench) sealTemplate(ctx context.Context, name string) error {
	_, err := b.admin.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
	if err != nil {
		return fmt.Errorf("seal template %s: %w", name, err)
	}
	return nil
}

func (b *bench) createClone(ctx context.Context, name, template string) error {
	_, err := b.admin.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s STRATEGY FILE_COPY",
		pgx.Identifier{name}.Sanitize(), pgx.Identifier{template}.Sanitize()))
	if err != nil {
		return fmt.Errorf("clone %s from %s: %w", name, template, err)
	}
	return nil
}

// clone creates a fresh copy of template for one run and returns its name
// and a function that drops it.
func (b *bench) clone(ctx context.Context, template string) (string, func(), error) {
	b.cloneN++
	name := fmt.Sprintf("run_%d", b.cloneN)
	start := time.Now()
	if err := b.createClone(ctx, name, template); err != nil {
		return "", nil, err
	}
	b.log.printf("  cloned %s -> %s in %.1fs", template, name, time.Since(start).Seconds())
	drop := func() {
		// A fresh context: the drop must also run after an interrupt (the
		// server is removed anyway then, so errors are only logged).
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if _, err := b.admin.Exec(dctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil && ctx.Err() == nil {
			b.log.printf("drop %s: %v", name, err)
		}
	}
	return name, drop, nil
}

func (b *bench) databaseSize(ctx context.Context, name string) (string, error) {
	var size string
	if err := b.admin.QueryRow(ctx, "SELECT pg_size_pretty(pg_database_size($1))", name).Scan(&size); err != nil {
		return "", fmt.Errorf("size of %s: %w", name, err)
	}
	return size, nil
}
