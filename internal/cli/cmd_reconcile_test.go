package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// Without the sweeper-owned objects there is no schedule to reconcile:
// exit 2, one line saying what to run.
func TestReconcileOnTheScanPathExits2(t *testing.T) {
	t.Parallel()
	url := testdb.NewURLWith(t, testdb.TaskerOnly)
	res := runCLI(t, []string{"DATABASE_URL=" + url}, "reconcile")
	require.Equal(t, 2, res.code, res.stderr)
	lines := strings.Split(strings.TrimSpace(res.stderr), "\n")
	require.Len(t, lines, 1, "one clear line, got %q", res.stderr)
	require.Contains(t, lines[0], "sweeper reconcile: nothing to reconcile")
	require.Contains(t, lines[0], "sweeper migrate")
	require.Empty(t, res.stdout)
}

// On the schedule path `sweeper reconcile` runs one pass now and says what
// it corrected: as a table, or as counts with --json.
func TestReconcileOnTheSchedulePathReportsCorrections(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	ctx := context.Background()
	env := []string{"DATABASE_URL=" + url}
	// Three steps parked by another writer, waiting for an hour-long
	// backoff: the schedule has no row for them yet.
	for range 3 {
		step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
		testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
		testdb.SetColumns(t, pool, step, testdb.StepColumns{
			Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Second), BackoffRequestSeconds: testdb.Ptr[int32](3600),
		})
	}

	first := runCLI(t, env, "reconcile")
	require.Equal(t, 0, first.code, first.stderr)
	require.Contains(t, first.stdout, "reconciled 3 waiting step(s)")
	require.Contains(t, first.stdout, ": 3 correction(s)")
	require.Regexp(t, `(?m)^\s+3  missing: waiting without a schedule row \(added\)$`, first.stdout)
	for _, row := range []string{"orphaned:", "retimed earlier:", "retimed later:", "restranded:"} {
		require.Regexp(t, `(?m)^\s+0  `+row, first.stdout)
	}

	again := runCLI(t, env, "reconcile")
	require.Equal(t, 0, again.code, again.stderr)
	require.Contains(t, again.stdout, ": 0 correction(s)", "a pass that corrects nothing is still exit 0")

	tag, err := pool.Exec(ctx, `DELETE FROM tasker_sweeper.retry_schedule
		WHERE workflow_step_uuid = (SELECT workflow_step_uuid FROM tasker_sweeper.retry_schedule LIMIT 1)`)
	require.NoError(t, err)
	require.EqualValues(t, 1, tag.RowsAffected())
	asJSON := runCLI(t, env, "reconcile", "--json")
	require.Equal(t, 0, asJSON.code, asJSON.stderr)
	var counts map[string]any
	require.NoError(t, json.Unmarshal([]byte(asJSON.stdout), &counts), asJSON.stdout)
	require.Equal(t, map[string]any{
		"ran": true, "skipped": false, "waiting": float64(3), "missing": float64(1), "orphaned": float64(0),
		"retimed_earlier": float64(0), "retimed_later": float64(0), "restranded": float64(0),
		"duration_ms": counts["duration_ms"],
	}, counts)
	require.Positive(t, counts["duration_ms"])
}
