package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/pgserver"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// daemon is `sweeper run` started in-process with hooks that report its
// progress on channels.
type daemon struct {
	cancel context.CancelFunc
	exited chan int
	logs   *syncBuffer
	// addr receives the admin API's address once it listens.
	addr chan string
	// ops receives the ops listener's address once it listens.
	ops chan string
	// up is closed by the first health check that reaches the database.
	up chan struct{}
	// sweeps receives every sweep's summary.
	sweeps chan sweeper.Summary
	// metrics receives the daemon's metrics handler.
	metrics chan http.Handler
	// listener receives every change of the park listener's connection.
	listener chan bool
}

func startDaemon(t *testing.T, vars []string, args ...string) *daemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{
		cancel: cancel, exited: make(chan int, 1), logs: &syncBuffer{},
		addr: make(chan string, 1), ops: make(chan string, 1), up: make(chan struct{}), sweeps: make(chan sweeper.Summary, 64),
		metrics: make(chan http.Handler, 1), listener: make(chan bool, 16),
	}
	markUp := sync.OnceFunc(func() { close(d.up) })
	e := env{
		getenv: getenvOf(vars), stdout: io.Discard, stderr: d.logs,
		daemon: daemonHooks{
			started:    func(addr string) { d.addr <- addr },
			opsStarted: func(addr string) { d.ops <- addr },
			sweepDone: func(sum sweeper.Summary, _ error) {
				select {
				case d.sweeps <- sum:
				default: // nobody is looking at that many sweeps
				}
			},
			databaseChecked: func(up bool) {
				if up {
					markUp()
				}
			},
			metrics: func(h http.Handler) { d.metrics <- h },
			listenerUp: func(up bool) {
				select {
				case d.listener <- up:
				default:
				}
			},
		},
	}
	// No ops listener unless the test asks for one: the default port is
	// the same for every daemon.
	go func() { d.exited <- run(ctx, e, append([]string{"run", "--ops-addr="}, args...)) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-d.exited:
		case <-time.After(30 * time.Second):
			t.Error("the daemon did not stop within 30 s of its context")
		}
	})
	return d
}

// stop cancels the daemon's context (what SIGTERM does) and returns its
// exit code.
func (d *daemon) stop(t *testing.T) int {
	t.Helper()
	d.cancel()
	code := receive(t, d.exited, 30*time.Second, "the daemon to exit")
	d.exited <- code // for the cleanup
	return code
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

// The daemon sweeps on its schedule, serves the admin API over the same
// pieces, and exits 0 when its context ends.
func TestRunSweepsOnScheduleAndStopsOnCancel(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	testdb.SeedDue(t, pool, 25)
	d := startDaemon(t, []string{"DATABASE_URL=" + url, "SWEEPER_SCHEDULE=@every 1s"},
		"--http-addr", "127.0.0.1:0", "--batch-size", "10", "--log-format", "json")
	addr := receive(t, d.addr, 10*time.Second, "the admin API")
	receive(t, d.up, 10*time.Second, "the first successful health check")
	status, _ := httpGet(t, "http://"+addr+"/readyz")
	require.Equal(t, http.StatusOK, status)

	moved, batches := 0, 0
	for moved < 25 {
		sum := receive(t, d.sweeps, 20*time.Second, "a scheduled sweep")
		require.False(t, sum.DryRun)
		moved += sum.Transitioned
		batches += sum.Batches
	}
	// At least three batches of 10; how the 25 split between them depends
	// on which sweep (cron or the timer gate) found them and on batches
	// side by side, so the metric is checked against the summaries.
	require.GreaterOrEqual(t, batches, 3)
	require.Equal(t, 25, moved)
	require.Zero(t, countWaiting(t, pool))

	status, body := httpGet(t, "http://"+addr+"/metrics")
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, body, "tasker_sweeper_steps_transitioned_total 25")
	require.Contains(t, body, "tasker_sweeper_database_up 1")
	require.Contains(t, body, fmt.Sprintf(`tasker_sweeper_batches_total{outcome="moved"} %d`, batches))

	require.Equal(t, 0, d.stop(t), d.logs.String())
	logs := d.logs.String()
	require.Contains(t, logs, `"msg":"sweeper running"`)
	require.Contains(t, logs, `"msg":"sweeper stopped"`)
	require.NotContains(t, logs, `"level":"ERROR"`, "a clean run logs no errors")
}

// The daemon starts with its database down, reports not ready, and becomes
// ready on its own within seconds of the database starting.
func TestRunWaitsForDatabaseAndRecovers(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=2", port)
	d := startDaemon(t, []string{"DATABASE_URL=" + url},
		"--http-addr", "127.0.0.1:0", "--schedule", "@every 1s", "--log-format", "json")
	addr := receive(t, d.addr, 10*time.Second, "the admin API")

	status, _ := httpGet(t, "http://"+addr+"/healthz")
	require.Equal(t, http.StatusOK, status)
	status, body := httpGet(t, "http://"+addr+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, status, body)

	srv, err := pgserver.Start(context.Background(), pgserver.Options{Port: port})
	require.NoError(t, err)
	defer func() { require.NoError(t, srv.Stop()) }()
	started := time.Now()
	receive(t, d.up, 10*time.Second, "the first health check to reach the database")
	t.Logf("database reachable %s after it started", time.Since(started).Round(time.Millisecond))
	// Reachable is not ready: the tasker tables are not there yet (once the
	// facts of the database being down, at most a second old, expire).
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(body, "tasker_schema: schema tasker not found") {
		require.True(t, time.Now().Before(deadline), "readiness never named the missing schema: %s", body)
		receive(t, time.After(20*time.Millisecond), time.Second, "the next look")
		status, body = httpGet(t, "http://"+addr+"/readyz")
		require.Equal(t, http.StatusServiceUnavailable, status, body)
	}
	migrated := runCLI(t, []string{"DATABASE_URL=" + url}, "migrate", "--tasker-schema")
	require.Equal(t, 0, migrated.code, migrated.stderr)
	status, body = waitForReadyz(t, "http://"+addr, http.StatusOK, 5*time.Second)
	require.Equal(t, http.StatusOK, status, body)
	t.Logf("ready %s after the database started", time.Since(started).Round(time.Millisecond))
	require.Contains(t, d.logs.String(), "database reachable")
	require.Contains(t, d.logs.String(), "database unreachable at start")

	require.Equal(t, 0, d.stop(t), d.logs.String())
}

// The admin API's listen address taken is a runtime failure, exit 1, after
// which nothing is left running.
func TestRunExits1WhenTheAdminAddressIsTaken(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer func() { _ = l.Close() }()
	res := runCLI(t, []string{"DATABASE_URL=postgres://postgres@127.0.0.1:1/x"}, "run", "--http-addr", l.Addr().String())
	require.Equal(t, 1, res.code, res.stderr)
	require.Contains(t, res.stderr, "sweeper run: listen on "+l.Addr().String())
}

// A sweep whose batch is still blocked when the grace ends is cancelled,
// rolls back, and is reported as interrupted: in the log, in its summary
// and in tasker_sweeper_sweeps_total{outcome="interrupted"}; exit 0.
func TestRunReportsASweepCancelledAtTheGraceAsInterrupted(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	const steps = 300
	testdb.SeedDue(t, pool, steps)
	ctx := context.Background()
	// SHARE on the transitions lets a batch claim (ROW SHARE) and then
	// blocks its move (ROW EXCLUSIVE) mid-transaction.
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `LOCK TABLE tasker.workflow_step_transitions IN SHARE MODE`)
	require.NoError(t, err)

	d := startDaemon(t, []string{"DATABASE_URL=" + url},
		"--http-addr", "127.0.0.1:0", "--schedule", "@every 1s", "--shutdown-grace", "1s",
		"--batch-size", "100", "--log-format", "json")
	metrics := receive(t, d.metrics, 10*time.Second, "the metrics handler")
	deadline := time.Now().Add(20 * time.Second)
	for {
		var blocked int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'
			  AND query LIKE '-- name: SweepMoveToPending %'`).Scan(&blocked))
		if blocked > 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "no batch blocked on the lock within 20 s:\n%s", d.logs)
		receive(t, time.After(20*time.Millisecond), time.Second, "the next look")
	}

	require.Equal(t, 0, d.stop(t), d.logs.String())
	sum := receive(t, d.sweeps, time.Second, "the interrupted sweep's summary")
	require.True(t, sum.Interrupted, "%+v", sum)
	require.Zero(t, sum.Transitioned)
	require.Zero(t, sum.FailedBatches, "a batch cancelled by the shutdown is not a failed batch")
	require.NoError(t, tx.Rollback(ctx))
	require.Equal(t, steps, countWaiting(t, pool), "the cancelled batch rolled back")

	rec := httptest.NewRecorder()
	metrics.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Contains(t, rec.Body.String(), `tasker_sweeper_sweeps_total{outcome="interrupted"} 1`)
	require.Contains(t, rec.Body.String(), `tasker_sweeper_sweeps_total{outcome="failure"} 0`)
	logs := d.logs.String()
	require.Contains(t, logs, `"msg":"sweep interrupted by shutdown`)
	require.Contains(t, logs, `"msg":"sweep batch cancelled by shutdown: rolled back"`)
	require.NotContains(t, logs, `"level":"ERROR"`)
}

// freeListener holds a loopback port until the test ends and returns its
// address.
func freeListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return l.Addr().String()
}
