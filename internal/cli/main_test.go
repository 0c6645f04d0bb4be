package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
)

func TestMain(m *testing.M) { testdb.Main(m) }

type cmdResult struct {
	code   int
	stdout string
	stderr string
}

// getenvOf is a getenv over only the given NAME=value pairs.
func getenvOf(vars []string) func(string) string {
	values := map[string]string{}
	for _, kv := range vars {
		name, value, _ := strings.Cut(kv, "=")
		values[name] = value
	}
	return func(name string) string { return values[name] }
}

// runCLI runs the command line in-process, as the binary would, with only
// the given environment.
func runCLI(t *testing.T, vars []string, args ...string) cmdResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(t.Context(), args, getenvOf(vars), &stdout, &stderr)
	return cmdResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// syncBuffer is a writer several goroutines may log to while a test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// receive waits for one value from ch, failing the test after timeout.
func receive[T any](t *testing.T, ch <-chan T, timeout time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
		var zero T
		return zero
	}
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

func countWaiting(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM tasker.workflow_step_transitions
		WHERE most_recent AND to_state = 'waiting_for_retry'`).Scan(&n))
	return n
}
