package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/migrations"
	"github.com/tasker-sweeper/retrysweeper/internal/pgserver"
)

// harnessApp is the application_name of the suite's own sessions, so they
// are never mistaken for the sweeper's ('tasker-sweeper').
const harnessApp = "sweeper-chaos"

// sweeperApp is the application_name the sweeper gives its sessions.
const sweeperApp = "tasker-sweeper"

// serverZone is deliberately not UTC: code that forgets to force UTC fails.
const serverZone = "America/New_York"

// taskerTemplate is a database with the tasker subset only; every scenario
// database is cloned from it.
const taskerTemplate = "chaos_tasker_template"

// cluster is one private PostgreSQL server (internal/pgserver) that the
// suite can also stop and start again, as `pg_ctl restart` does: pg_ctl
// stops it, then the postmaster is started again with the options it
// recorded in postmaster.opts, as a child of this process so it dies with
// the suite.
type cluster struct {
	srv     *pgserver.Server
	admin   *pgxpool.Pool // the postgres database: CREATE/DROP DATABASE
	dataDir string
	binDir  string
	args    []string // the postmaster's arguments, from postmaster.opts
	cred    *syscall.Credential
	logDir  string

	// postmaster is the server process this suite started after a stop
	// (nil while the original pgserver process runs, or none runs).
	postmaster *exec.Cmd
	pmExited   chan struct{}
	restarts   int
	template   bool
}

func startCluster(ctx context.Context, logDir string) (*cluster, error) {
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	srv, err := pgserver.Start(sctx, pgserver.Options{
		Settings: map[string]string{"timezone": serverZone, "log_timezone": serverZone},
	})
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	c := &cluster{srv: srv, logDir: logDir}
	if err := c.init(sctx); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func (c *cluster) init(ctx context.Context) error {
	admin, err := connect(ctx, c.srv.URL("postgres"), harnessApp)
	if err != nil {
		return err
	}
	c.admin = admin
	if err := admin.QueryRow(ctx, "SHOW data_directory").Scan(&c.dataDir); err != nil {
		return fmt.Errorf("read data_directory: %w", err)
	}
	raw, err := os.ReadFile(filepath.Join(c.dataDir, "postmaster.opts"))
	if err != nil {
		return fmt.Errorf("read postmaster.opts: %w", err)
	}
	bin, args, err := parsePostmasterOpts(string(raw))
	if err != nil {
		return err
	}
	c.binDir, c.args = filepath.Dir(bin), args
	c.cred, err = serverCredential()
	return err
}

// quotedArg is one double-quoted argument of postmaster.opts.
var quotedArg = regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`)

// parsePostmasterOpts splits the postmaster's recorded command line: the
// binary, then each argument in double quotes.
func parsePostmasterOpts(raw string) (string, []string, error) {
	raw = strings.TrimSpace(raw)
	bin, rest, ok := strings.Cut(raw, " ")
	if !ok || !strings.HasSuffix(bin, "postgres") {
		return "", nil, fmt.Errorf("unexpected postmaster.opts: %q", raw)
	}
	var args []string
	for _, m := range quotedArg.FindAllStringSubmatch(rest, -1) {
		args = append(args, strings.ReplaceAll(m[1], `\"`, `"`))
	}
	if len(args) == 0 {
		return "", nil, fmt.Errorf("no arguments in postmaster.opts: %q", raw)
	}
	return bin, args, nil
}

// serverCredential is the user the server runs as: the current one, or
// `postgres` when running as root (PostgreSQL refuses root).
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("look up the postgres user: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse the uid of postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse the gid of postgres: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// url is the superuser URL of a database on this server.
func (c *cluster) url(database string) string { return c.srv.URL(database) }

// stopServer runs `pg_ctl stop -m mode` (fast or immediate) and waits for
// the postmaster to be gone.
func (c *cluster) stopServer(ctx context.Context, mode string) error {
	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, filepath.Join(c.binDir, "pg_ctl"), "stop", "-D", c.dataDir, "-m", mode, "-w", "-t", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl stop -m %s: %w: %s", mode, err, strings.TrimSpace(string(out)))
	}
	if c.postmaster != nil {
		select {
		case <-c.pmExited:
		case <-cctx.Done():
			return fmt.Errorf("postmaster still running after pg_ctl stop: %w", cctx.Err())
		}
		c.postmaster = nil
	}
	return nil
}

// startServer starts the postmaster again with its recorded options and
// waits until it accepts connections.
func (c *cluster) startServer(ctx context.Context) error {
	c.restarts++
	logFile, err := os.Create(filepath.Join(c.logDir, fmt.Sprintf("postgres-restart-%d.log", c.restarts)))
	if err != nil {
		return fmt.Errorf("create server log: %w", err)
	}
	defer func() { _ = logFile.Close() }()
	cmd := exec.Command(filepath.Join(c.binDir, "postgres"), c.args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	c.postmaster, c.pmExited = cmd, exited
	deadline := time.Now().Add(90 * time.Second) // crash recovery after -m immediate included
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(pctx, c.url("postgres"))
		if err == nil {
			_ = conn.Close(pctx)
			cancel()
			c.admin.Reset() // its connections died with the old server
			return nil
		}
		cancel()
		select {
		case <-exited:
			log, _ := os.ReadFile(logFile.Name())
			return fmt.Errorf("postgres exited during start: %s", lastLines(string(log), 5))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres not accepting connections 90s after start: %w", err)
		}
	}
}

// close stops whatever server runs and removes the data directory.
func (c *cluster) close() {
	if c.admin != nil {
		c.admin.Close()
	}
	if c.postmaster != nil {
		_ = c.postmaster.Process.Signal(syscall.SIGINT)
		select {
		case <-c.pmExited:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-c.postmaster.Process.Pid, syscall.SIGKILL)
			<-c.pmExited
		}
		c.postmaster = nil
	}
	if err := c.srv.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "chaos: stop postgres: %v\n", err)
	}
}

// database is one scenario's database, on one sweep path.
type database struct {
	name string
	url  string
	path string // "schedule" or "scan"
	pool *pgxpool.Pool
}

// ensureTemplate creates the tasker-only template once.
func (c *cluster) ensureTemplate(ctx context.Context) error {
	if c.template {
		return nil
	}
	if _, err := c.admin.Exec(ctx, "CREATE DATABASE "+taskerTemplate); err != nil {
		return fmt.Errorf("create the template: %w", err)
	}
	pool, err := connect(ctx, c.url(taskerTemplate), harnessApp)
	if err != nil {
		return err
	}
	if _, err := db.Migrate(ctx, pool, migrations.TaskerSubset); err != nil {
		pool.Close()
		return fmt.Errorf("migrate the tasker subset: %w", err)
	}
	if _, err := pool.Exec(ctx, seedCatalogSQL); err != nil {
		pool.Close()
		return fmt.Errorf("seed the catalog: %w", err)
	}
	pool.Close()
	if _, err := c.admin.Exec(ctx, "ALTER DATABASE "+taskerTemplate+" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"); err != nil {
		return fmt.Errorf("seal the template: %w", err)
	}
	c.template = true
	return nil
}

// createDB clones the tasker-only template. The scan path stays that way (a
// database as the orchestrator alone has it); the schedule path then gets
// the sweeper-owned objects from the binary's own `sweeper migrate`.
func (c *cluster) createDB(ctx context.Context, s *suite, name, path string) (*database, error) {
	if err := c.ensureTemplate(ctx); err != nil {
		return nil, err
	}
	_, err := c.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	if err != nil {
		return nil, fmt.Errorf("drop old %s: %w", name, err)
	}
	if _, err := c.admin.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s",
		pgx.Identifier{name}.Sanitize(), taskerTemplate)); err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	d := &database{name: name, url: c.url(name), path: path}
	if path == pathSchedule {
		if res := s.sweeperCmd(ctx, d, 2*time.Minute, "migrate"); res.err != nil || res.code != 0 {
			return nil, fmt.Errorf("sweeper migrate: %s", res.describe())
		}
	}
	d.pool, err = connect(ctx, d.url, harnessApp)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// dropDB removes a scenario's database.
func (c *cluster) dropDB(d *database) {
	if d == nil {
		return
	}
	d.pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, _ = c.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{d.name}.Sanitize()+" WITH (FORCE)")
}

// connect opens a pool with the sweeper's own settings (UTC sessions) and
// the given application_name.
func connect(ctx context.Context, url, app string) (*pgxpool.Pool, error) {
	cfg, err := db.PoolConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	return pool, nil
}

// connectOne opens one UTC session with the given application_name.
func connectOne(ctx context.Context, url, app string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse url: %w", err)
	}
	cfg.RuntimeParams["timezone"] = "UTC"
	cfg.RuntimeParams["application_name"] = app
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// errAbandoned marks a scenario cut short by Ctrl-C.
var errAbandoned = errors.New("interrupted")
