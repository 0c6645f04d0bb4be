package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/pgserver"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

func decodeSummary(t *testing.T, out string) map[string]any {
	t.Helper()
	var sum map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &sum), "stdout: %q", out)
	for _, key := range []string{"transitioned", "stranded", "lost_races", "batches", "duration_ms", "dry_run", "sweep_id"} {
		require.Contains(t, sum, key)
	}
	return sum
}

func TestOnceDryRunThenSweep(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	testdb.SeedDue(t, pool, 50)
	env := []string{"DATABASE_URL=" + url}

	dry := runBinary(t, env, "once", "--dry-run", "--json")
	require.Equal(t, 0, dry.code, dry.stderr)
	drySum := decodeSummary(t, dry.stdout)
	require.Equal(t, true, drySum["dry_run"])
	require.EqualValues(t, 50, drySum["transitioned"])
	require.Equal(t, 50, countWaiting(t, pool), "a dry run writes nothing")

	real := runBinary(t, env, "once", "--json", "--batch-size", "7")
	require.Equal(t, 0, real.code, real.stderr)
	sum := decodeSummary(t, real.stdout)
	require.EqualValues(t, 50, sum["transitioned"], "the dry run reported what the sweep moved")
	require.EqualValues(t, 8, sum["batches"])
	require.Equal(t, 0, countWaiting(t, pool))

	nothing := runBinary(t, env, "once")
	require.Equal(t, 0, nothing.code, "nothing due is still success")
	require.Contains(t, nothing.stdout, "0 step(s) moved to pending")
}

func countWaiting(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM tasker.workflow_step_transitions
		WHERE most_recent AND to_state = 'waiting_for_retry'`).Scan(&n))
	return n
}

// Four sweeper processes started together on 20,000 due steps: every step
// moves exactly once.
func TestFourProcessesSweepEachStepOnce(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	const steps = 20000
	testdb.SeedDue(t, pool, steps)

	var wg sync.WaitGroup
	results := make([]cmdResult, 4)
	start := make(chan struct{})
	for i := range results {
		wg.Go(func() {
			<-start
			results[i] = runBinary(t, []string{"DATABASE_URL=" + url},
				"once", "--json", "--batch-size", "250", "--workers", "2", "--log-level", "warn")
		})
	}
	close(start)
	wg.Wait()
	total := 0
	for _, r := range results {
		require.Equal(t, 0, r.code, r.stderr)
		total += int(decodeSummary(t, r.stdout)["transitioned"].(float64))
	}
	require.Equal(t, steps, total)
	assertConsistent(t, pool, steps)
	require.Equal(t, 0, countWaiting(t, pool))
}

// assertConsistent checks every seeded step is either untouched (5 rows,
// waiting) or moved once (6 rows, pending from waiting), with exactly one
// most_recent row: never a half state.
func assertConsistent(t *testing.T, pool *pgxpool.Pool, steps int) (moved int) {
	t.Helper()
	var bad, total int
	require.NoError(t, pool.QueryRow(context.Background(), `
WITH per_step AS (
    SELECT ws.workflow_step_uuid,
           count(t.*) AS rows,
           count(*) FILTER (WHERE t.most_recent) AS current,
           max(t.to_state) FILTER (WHERE t.most_recent) AS state,
           count(*) FILTER (WHERE t.to_state = 'pending' AND t.from_state = 'waiting_for_retry') AS retries
    FROM tasker.workflow_steps ws
    JOIN tasker.workflow_step_transitions t ON t.workflow_step_uuid = ws.workflow_step_uuid
    GROUP BY 1
)
SELECT count(*) FILTER (WHERE NOT (
           (rows = 5 AND current = 1 AND state = 'waiting_for_retry' AND retries = 0)
        OR (rows = 6 AND current = 1 AND state = 'pending' AND retries = 1))),
       count(*) FILTER (WHERE state = 'pending'),
       count(*)
FROM per_step`).Scan(&bad, &moved, &total))
	require.Zero(t, bad, "steps in a half state")
	require.Equal(t, steps, total)
	return moved
}

func TestRunRejectsBadConfiguration(t *testing.T) {
	t.Parallel()
	url := "postgres://u:secret@127.0.0.1:1/db"
	cases := []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"run", "--schedule", "every five seconds"}, nil, "--schedule"},
		{[]string{"run"}, []string{"SWEEPER_SCHEDULE=* * *"}, "--schedule"},
		{[]string{"run", "--batch-size", "0"}, nil, "--batch-size"},
		{[]string{"run"}, []string{"SWEEPER_BATCH_SIZE=zero"}, "--batch-size"},
		{[]string{"run", "--workers", "0"}, nil, "--workers"},
		{[]string{"run", "--http-addr", "0.0.0.0:9999"}, nil, "--admin-token"},
		{[]string{"run", "--http-addr", "nonsense"}, nil, "--http-addr"},
		{[]string{"run", "--log-level", "loud"}, nil, "--log-level"},
		{[]string{"once", "--batch-size", "-3"}, nil, "--batch-size"},
		{[]string{"run", "--database-url", "postgres://u:secret@host:port/db"}, nil, "--database-url"},
		{[]string{"run", "--database-url", "::not a url::"}, nil, "--database-url"},
	}
	for _, tc := range cases {
		env := append([]string{"DATABASE_URL=" + url}, tc.env...)
		res := runBinary(t, env, tc.args...)
		require.Equal(t, 2, res.code, "%v: %s", tc.args, res.stderr)
		lines := strings.Split(strings.TrimSpace(res.stderr), "\n")
		require.Len(t, lines, 1, "%v: one clear line, got %q", tc.args, res.stderr)
		require.Contains(t, lines[0], tc.want, tc.args)
		require.NotContains(t, res.stderr, "secret", "never print a database password")
	}
	require.NoError(t, checkAdminAddr("0.0.0.0:9090", "token"), "off loopback is fine with a token")
	require.NoError(t, checkAdminAddr("localhost:9090", ""))
	require.NoError(t, checkAdminAddr("[::1]:9090", ""))
}

// startDaemon runs `sweeper run` in the background and returns it with a
// channel of its exit code.
func startDaemon(t *testing.T, env []string, args ...string) (*exec.Cmd, <-chan int, *lineBuffer) {
	t.Helper()
	cmd := exec.Command(sweeperBin, append([]string{"run"}, args...)...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, env...)
	logs := &lineBuffer{}
	cmd.Stderr = logs
	require.NoError(t, cmd.Start())
	exited := make(chan int, 1)
	go func() {
		err := cmd.Wait()
		code := 0
		if err != nil {
			code = -1
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			}
		}
		exited <- code
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
	})
	return cmd, exited, logs
}

type lineBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *lineBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lineBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// waitFor polls cond every 50 ms until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func httpStatus(url string) int {
	client := http.Client{Timeout: time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// The daemon starts with its database down, reports not ready, and becomes
// ready on its own within seconds of the database starting.
func TestRunWaitsForDatabaseAndRecovers(t *testing.T) {
	t.Parallel()
	dbPort := freeAddr(t)[len("127.0.0.1:"):]
	httpAddr := freeAddr(t)
	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%s/postgres?sslmode=disable&connect_timeout=2", dbPort)
	cmd, exited, logs := startDaemon(t, []string{"DATABASE_URL=" + url},
		"--http-addr", httpAddr, "--schedule", "@every 1s", "--log-format", "json")

	waitFor(t, 10*time.Second, "the admin API", func() bool { return httpStatus("http://"+httpAddr+"/healthz") == 200 })
	require.Equal(t, http.StatusServiceUnavailable, httpStatus("http://"+httpAddr+"/readyz"))

	var port int
	_, err := fmt.Sscan(dbPort, &port)
	require.NoError(t, err)
	srv, err := pgserver.Start(context.Background(), pgserver.Options{Port: port})
	require.NoError(t, err)
	defer func() { require.NoError(t, srv.Stop()) }()
	started := time.Now()
	waitFor(t, 10*time.Second, "readiness after the database started", func() bool {
		return httpStatus("http://"+httpAddr+"/readyz") == 200
	})
	t.Logf("ready %s after the database started", time.Since(started).Round(time.Millisecond))
	require.Contains(t, logs.String(), "database reachable")

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, <-exited, logs.String())
}

// SIGTERM in the middle of a large sweep: the daemon exits 0 and every step
// is either moved or untouched.
func TestSigtermDuringSweepLeavesNoHalfStates(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	const steps = 30000
	testdb.SeedDue(t, pool, steps)
	cmd, exited, logs := startDaemon(t, []string{"DATABASE_URL=" + url},
		"--http-addr", freeAddr(t), "--schedule", "@every 1s", "--batch-size", "50", "--workers", "2", "--log-format", "json")

	waitFor(t, 20*time.Second, "the first batches to commit", func() bool {
		return countWaiting(t, pool) < steps
	})
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, <-exited, logs.String())

	moved := assertConsistent(t, pool, steps)
	t.Logf("moved %d of %d before shutdown", moved, steps)
	require.Positive(t, moved)
	require.Contains(t, logs.String(), "sweeper stopped")
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	for sc.Scan() {
		require.NotContains(t, sc.Text(), `"level":"ERROR"`, "a clean shutdown logs no errors")
	}
}

// `sweeper migrate` installs the sweeper-owned objects on a database whose
// tasker tables exist (as the orchestrator's would), idempotently, and the
// sweep switches from the scan path to the schedule path.
func TestMigrateInstallsSweeperObjects(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURLFor(t, testdb.TaskerOnly)
	testdb.SeedDue(t, pool, 20)
	env := []string{"DATABASE_URL=" + url}

	var before int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM information_schema.columns
		WHERE table_schema = 'tasker'`).Scan(&before))

	scan := runBinary(t, env, "once", "--dry-run", "--json")
	require.Equal(t, 0, scan.code, scan.stderr)
	require.Equal(t, "scan", decodeSummary(t, scan.stdout)["path"])
	require.Contains(t, scan.stderr, "sweeper-owned objects missing")

	// The inline handler parks a step while there is no schedule to put it on.
	parked := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, parked, statemachine.EnqueuedAsErrorForOrchestration, 0)
	testdb.SetColumns(t, pool, parked, testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)})
	fail := runBinary(t, env, "fail", "--step", parked.String(), "--message", "connection reset", "--retry-after", "120")
	require.Equal(t, 0, fail.code, fail.stderr)
	require.Contains(t, fail.stdout, "TransitionedToWaitingForRetry")

	first := runBinary(t, env, "migrate")
	require.Equal(t, 0, first.code, first.stderr)
	require.Contains(t, first.stdout, "sweeper: applied")
	again := runBinary(t, env, "migrate")
	require.Equal(t, 0, again.code, again.stderr)
	require.Contains(t, again.stdout, "sweeper: up to date")

	var after int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM information_schema.columns
		WHERE table_schema = 'tasker'`).Scan(&after))
	require.Equal(t, before, after, "the tasker tables' columns are untouched")

	sweep := runBinary(t, env, "once", "--json")
	require.Equal(t, 0, sweep.code, sweep.stderr)
	sum := decodeSummary(t, sweep.stdout)
	require.Equal(t, "schedule", sum["path"])
	require.EqualValues(t, 21, sum["adopted"], "steps parked before the install are adopted, the handler's too")
	require.EqualValues(t, 20, sum["transitioned"], "all but the handler's, whose Retry-After is 2 minutes")
	var due time.Time
	require.NoError(t, pool.QueryRow(context.Background(),
		`SELECT due_at FROM tasker_sweeper.retry_schedule WHERE workflow_step_uuid = $1`, parked).Scan(&due))
	require.WithinDuration(t, time.Now().UTC().Add(2*time.Minute), due, 30*time.Second)
}
