// Package testdb gives each test its own migrated PostgreSQL database.
//
// With TEST_DATABASE_URL set, databases are created on that server. Without
// it, the first test to ask starts a private throwaway server (pgserver) for
// the test binary, deliberately running in a non-UTC time zone so code that
// forgets to force UTC fails here rather than in production. Each test gets a
// clone of a template database that was migrated once (pgtestdb).
package testdb

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver pgtestdb connects with
	"github.com/peterldowns/pgtestdb"
	"github.com/peterldowns/pgtestdb/migrators/common"
	"go.uber.org/goleak"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/migrations"
	"github.com/tasker-sweeper/retrysweeper/internal/pgserver"
)

// ServerTimeZone is the zone the private test server runs in.
const ServerTimeZone = "America/New_York"

var (
	startOnce sync.Once
	server    *pgserver.Server
	baseConf  pgtestdb.Config
	startErr  error
)

// Main runs the tests of a package, runs the after functions, stops the
// private server and fails the run if goroutines leaked. Call it from
// TestMain.
func Main(m *testing.M, after ...func()) {
	code := m.Run()
	for _, f := range after {
		f()
	}
	if server != nil {
		if err := server.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "testdb: stop server:", err)
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "testdb: leaked goroutines:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// Server returns the connection settings of the test server, starting the
// private one on first use.
func Server(t testing.TB) pgtestdb.Config {
	t.Helper()
	startOnce.Do(func() {
		if raw := os.Getenv("TEST_DATABASE_URL"); raw != "" {
			baseConf, startErr = configFromURL(raw)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		server, startErr = pgserver.Start(ctx, pgserver.Options{
			Settings: map[string]string{"timezone": ServerTimeZone, "log_timezone": ServerTimeZone},
		})
		if startErr != nil {
			return
		}
		baseConf = pgtestdb.Config{
			DriverName: "pgx",
			Host:       "127.0.0.1",
			Port:       fmt.Sprint(server.Port()),
			User:       "postgres",
			Database:   "postgres",
			Options:    "sslmode=disable",
		}
	})
	if startErr != nil {
		t.Fatalf("test database server: %v", startErr)
	}
	return baseConf
}

// Objects says which migration sets a test database gets.
type Objects int

const (
	// WithSweeperObjects is the production shape: the tasker subset plus the
	// sweeper-owned schedule and index (the schedule sweep path).
	WithSweeperObjects Objects = iota
	// TaskerOnly is a database without the sweeper-owned objects (the scan
	// sweep path).
	TaskerOnly
)

// String names the variant, for subtest names.
func (o Objects) String() string {
	if o == TaskerOnly {
		return "scan path (tasker tables only)"
	}
	return "schedule path (sweeper-owned objects)"
}

// BothPaths runs test as a parallel subtest on each variant: with the
// sweeper-owned objects (the schedule path) and without (the scan path).
func BothPaths(t *testing.T, test func(t *testing.T, objects Objects)) {
	t.Helper()
	for _, objects := range []Objects{WithSweeperObjects, TaskerOnly} {
		t.Run(objects.String(), func(t *testing.T) {
			t.Parallel()
			test(t, objects)
		})
	}
}

// Migrator builds a template database with the given migration sets, the
// way `sweeper migrate` applies them (db.MigrateDB).
func Migrator(objects Objects) pgtestdb.Migrator {
	sets := []migrations.Set{migrations.TaskerSubset}
	if objects == WithSweeperObjects {
		sets = append(sets, migrations.SweeperObjects)
	}
	return setsMigrator(sets)
}

// setsMigrator applies several migration sets in order, each with its own
// version table, as `sweeper migrate` does.
type setsMigrator []migrations.Set

// Hash covers every set's files and version table, so a template is rebuilt
// when either changes.
func (m setsMigrator) Hash() (string, error) {
	hash := common.NewRecursiveHash()
	for _, set := range m {
		hash.Add([]byte(set.VersionTable))
		if err := hash.AddDirs(migrations.FS, "*.sql", set.Dir); err != nil {
			return "", err
		}
	}
	return hash.String(), nil
}

func (m setsMigrator) Migrate(ctx context.Context, sqlDB *sql.DB, _ pgtestdb.Config) error {
	for _, set := range m {
		if _, err := db.MigrateDB(ctx, sqlDB, set); err != nil {
			return err
		}
	}
	return nil
}

// NewURL creates a fresh database with the sweeper-owned objects for t,
// dropped when t passes, and returns its connection URL.
func NewURL(t testing.TB) string {
	t.Helper()
	return NewURLWith(t, WithSweeperObjects)
}

// NewURLWith is NewURL for a chosen set of objects.
func NewURLWith(t testing.TB, objects Objects) string {
	t.Helper()
	conf := pgtestdb.Custom(t, Server(t), Migrator(objects))
	return conf.URL()
}

// NewEmptyURL creates a fresh database with no schema at all, for tests of
// the migrations themselves.
func NewEmptyURL(t testing.TB) string {
	t.Helper()
	conf := pgtestdb.Custom(t, Server(t), pgtestdb.NoopMigrator{})
	return conf.URL()
}

// New creates a fresh migrated database for t and returns a pool on it built
// by db.Connect (sessions forced to UTC), closed when t ends.
func New(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, _ := NewWithURL(t)
	return pool
}

// NewWithURL is New that also returns the database's URL, for tests that
// hand it to a separate process.
func NewWithURL(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	return NewWithURLFor(t, WithSweeperObjects)
}

// NewFor is New for a chosen set of objects.
func NewFor(t testing.TB, objects Objects) *pgxpool.Pool {
	t.Helper()
	pool, _ := NewWithURLFor(t, objects)
	return pool
}

// NewWithURLFor is NewWithURL for a chosen set of objects.
func NewWithURLFor(t testing.TB, objects Objects) (*pgxpool.Pool, string) {
	t.Helper()
	url := NewURLWith(t, objects)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := db.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to test database: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool, url
}

func configFromURL(raw string) (pgtestdb.Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return pgtestdb.Config{}, fmt.Errorf("parse TEST_DATABASE_URL: %w", err)
	}
	password, _ := u.User.Password()
	database := u.Path
	if len(database) > 0 && database[0] == '/' {
		database = database[1:]
	}
	if database == "" {
		database = "postgres"
	}
	return pgtestdb.Config{
		DriverName: "pgx",
		Host:       u.Hostname(),
		Port:       u.Port(),
		User:       u.User.Username(),
		Password:   password,
		Database:   database,
		Options:    u.RawQuery,
	}, nil
}
