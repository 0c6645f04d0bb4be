package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
)

// These tests run the built binary as an operator would: what only a real
// process shows (signals, os.Exit codes, several processes at once). The
// commands themselves are tested in-process in internal/cli.

// sweeperBin is the sweeper binary built once for these tests.
var sweeperBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sweeper-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sweeperBin = filepath.Join(dir, "sweeper")
	build := exec.Command("go", "build", "-o", sweeperBin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build sweeper:", err)
		os.Exit(1)
	}
	testdb.Main(m, func() { _ = os.RemoveAll(dir) })
}

type cmdResult struct {
	code   int
	stdout string
	stderr string
}

// runBinary runs the built sweeper with only the given environment.
func runBinary(t *testing.T, env []string, args ...string) cmdResult {
	t.Helper()
	cmd := exec.CommandContext(context.Background(), sweeperBin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			t.Fatalf("run sweeper %v: %v", args, err)
		}
		code = exitErr.ExitCode()
	}
	return cmdResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// Every exit code reaches the process.
func TestProcessExitCodes(t *testing.T) {
	t.Parallel()
	_, url := testdb.NewWithURL(t)
	unreachable := "DATABASE_URL=postgres://postgres@127.0.0.1:1/x?connect_timeout=2"
	for _, tc := range []struct {
		env  []string
		args []string
		code int
	}{
		{nil, []string{"help"}, 0},
		{[]string{"DATABASE_URL=" + url}, []string{"once"}, 0},
		{[]string{unreachable}, []string{"once"}, 1},
		{nil, []string{}, 2},
		{[]string{"DATABASE_URL=" + url}, []string{"once", "--workers", "0"}, 2},
		{[]string{"DATABASE_URL=" + url}, []string{"fail", "--step", uuid.NewString(), "--message", "boom"}, 3},
	} {
		res := runBinary(t, tc.env, tc.args...)
		require.Equal(t, tc.code, res.code, "%v: %s", tc.args, res.stderr)
	}
}

// lineBuffer collects a process's log and tells waiters when a text shows up.
type lineBuffer struct {
	mu      sync.Mutex
	buf     strings.Builder
	waiters map[string]chan struct{}
}

func (l *lineBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.buf.Write(p)
	for text, ch := range l.waiters {
		if strings.Contains(l.buf.String(), text) {
			close(ch)
			delete(l.waiters, text)
		}
	}
	return n, err
}

func (l *lineBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// seen is closed once text is in the log.
func (l *lineBuffer) seen(text string) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch := make(chan struct{})
	if strings.Contains(l.buf.String(), text) {
		close(ch)
		return ch
	}
	if l.waiters == nil {
		l.waiters = map[string]chan struct{}{}
	}
	l.waiters[text] = ch
	return ch
}

// startDaemon runs `sweeper run` in the background and returns it with a
// channel of its exit code.
func startDaemon(t *testing.T, env []string, args ...string) (*exec.Cmd, <-chan int, *lineBuffer) {
	t.Helper()
	// No ops listener unless the test asks for one: the default port is the
	// same for every daemon.
	cmd := exec.Command(sweeperBin, append([]string{"run", "--ops-addr="}, args...)...)
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

func waitOrFail(t *testing.T, ch <-chan struct{}, timeout time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(timeout):
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

func exitCode(t *testing.T, exited <-chan int, logs *lineBuffer) int {
	t.Helper()
	select {
	case code := <-exited:
		return code
	case <-time.After(30 * time.Second):
		t.Fatalf("the daemon did not exit within 30 s:\n%s", logs)
		return -1
	}
}

// Both stop signals end the daemon cleanly, exit 0, even with the database
// down.
func TestSignalsStopTheDaemon(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			cmd, exited, logs := startDaemon(t, []string{"DATABASE_URL=postgres://postgres@127.0.0.1:1/x?connect_timeout=1"},
				"--http-addr", "127.0.0.1:0", "--log-format", "json")
			waitOrFail(t, logs.seen(`"msg":"sweeper running"`), 10*time.Second, "the daemon to start")
			require.NoError(t, cmd.Process.Signal(sig))
			require.Equal(t, 0, exitCode(t, exited, logs), logs.String())
			require.Contains(t, logs.String(), `"msg":"sweeper stopped"`)
		})
	}
}

func countWaiting(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM tasker.workflow_step_transitions
		WHERE most_recent AND to_state = 'waiting_for_retry'`).Scan(&n))
	return n
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

// SIGTERM in the middle of a large sweep: the daemon exits 0 and every step
// is either moved or untouched.
func TestSigtermDuringSweepLeavesNoHalfStates(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	const steps = 30000
	testdb.SeedDue(t, pool, steps)
	cmd, exited, logs := startDaemon(t, []string{"DATABASE_URL=" + url},
		"--http-addr", "127.0.0.1:0", "--schedule", "@every 1s", "--batch-size", "50", "--workers", "2", "--log-format", "json")

	// Nothing in the log marks a committed batch, so watch the table.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(20 * time.Second)
	for countWaiting(t, pool) == steps {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("no batch committed within 20 s:\n%s", logs)
		}
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, exitCode(t, exited, logs), logs.String())

	moved := assertConsistent(t, pool, steps)
	t.Logf("moved %d of %d before shutdown", moved, steps)
	require.Positive(t, moved)
	require.Contains(t, logs.String(), "sweeper stopped")
	require.NotContains(t, logs.String(), `"level":"ERROR"`, "a clean shutdown logs no errors")
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
		var sum struct {
			Transitioned int `json:"transitioned"`
		}
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &sum), r.stdout)
		total += sum.Transitioned
	}
	require.Equal(t, steps, total)
	assertConsistent(t, pool, steps)
	require.Zero(t, countWaiting(t, pool))
}

// holdTransitionsLock takes SHARE on tasker.workflow_step_transitions in a
// transaction of its own, released by the returned function (and at the
// end of the test). A batch claims its steps (FOR UPDATE SKIP LOCKED takes
// ROW SHARE, which SHARE allows) and then waits on this lock in the middle
// of its transaction: the move writes the transitions (ROW EXCLUSIVE). A
// row lock would not do: the claims skip locked rows instead of waiting.
func holdTransitionsLock(t *testing.T, pool *pgxpool.Pool) (release func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `LOCK TABLE tasker.workflow_step_transitions IN SHARE MODE`)
	require.NoError(t, err)
	release = sync.OnceFunc(func() { require.NoError(t, tx.Rollback(ctx)) })
	t.Cleanup(release)
	return release
}

// waitForBlockedMove waits until a backend of another session waits on a
// lock in a batch's move statement.
func waitForBlockedMove(t *testing.T, pool *pgxpool.Pool, logs *lineBuffer) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(20 * time.Second)
	for {
		var blocked int
		require.NoError(t, pool.QueryRow(context.Background(), `
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND wait_event_type = 'Lock' AND query LIKE '-- name: SweepMoveToPending %'`).Scan(&blocked))
		if blocked > 0 {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("no batch blocked on the lock within 20 s:\n%s", logs)
		}
	}
}

// --shutdown-grace is honoured: a batch blocked mid-transaction when
// SIGTERM arrives is cancelled when the grace ends and rolls back whole;
// the daemon exits 0 within the grace plus a second, logs the sweep as
// interrupted, and no step is half-moved.
func TestShutdownGraceCancelsBlockedBatches(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	const steps = 2000
	testdb.SeedDue(t, pool, steps)
	release := holdTransitionsLock(t, pool)
	const grace = 3 * time.Second
	cmd, exited, logs := startDaemon(t, []string{"DATABASE_URL=" + url},
		"--http-addr", "127.0.0.1:0", "--schedule", "@every 1s", "--shutdown-grace", grace.String(),
		"--batch-size", "100", "--workers", "2", "--log-format", "json")
	waitForBlockedMove(t, pool, logs)

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	signalled := time.Now()
	code := exitCode(t, exited, logs)
	took := time.Since(signalled)
	require.Equal(t, 0, code, logs.String())
	require.Less(t, took, grace+time.Second, "exit within the grace plus a second")
	require.GreaterOrEqual(t, took, grace, "the blocked batch got its grace")
	release()

	require.Zero(t, assertConsistent(t, pool, steps), "the cancelled batch rolled back whole")
	require.Equal(t, steps, countWaiting(t, pool))
	out := logs.String()
	require.Contains(t, out, "grace period over")
	require.Contains(t, out, `"msg":"sweep interrupted by shutdown`)
	require.Contains(t, out, `"msg":"sweeper stopped"`)
	require.NotContains(t, out, `"level":"ERROR"`, "an interrupted sweep is not a failure")
}

// `sweeper once` stopped by SIGTERM lets the batch in flight commit, starts
// no more, exits 1 and says "interrupted": true in its JSON summary.
func TestSigtermInterruptsOnce(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	const steps, batch = 500, 100
	testdb.SeedDue(t, pool, steps)
	release := holdTransitionsLock(t, pool)
	cmd := exec.Command(sweeperBin, "once", "--json", "--batch-size", fmt.Sprint(batch), "--workers", "1", "--log-format", "json")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "DATABASE_URL=" + url}
	var stdout bytes.Buffer
	logs := &lineBuffer{}
	cmd.Stdout, cmd.Stderr = &stdout, logs
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	waitForBlockedMove(t, pool, logs)

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	release() // the blocked batch may now commit; no other may start
	err := cmd.Wait()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr, "stdout: %s\nstderr: %s", stdout.String(), logs)
	require.Equal(t, 1, exitErr.ExitCode(), logs.String())

	var sum struct {
		Transitioned int  `json:"transitioned"`
		Interrupted  bool `json:"interrupted"`
	}
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &sum), stdout.String())
	require.True(t, sum.Interrupted, stdout.String())
	require.Equal(t, batch, sum.Transitioned, "the batch in flight committed, no later one started")
	require.Equal(t, batch, assertConsistent(t, pool, steps))
	require.Contains(t, logs.String(), "sweeper once: sweep interrupted by shutdown")
}
