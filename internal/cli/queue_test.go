package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// parkStep creates a waiting step with attempts of maxAttempts whose
// backoff (5 s) expired an hour ago.
func parkStep(t *testing.T, pool *pgxpool.Pool, attempts, maxAttempts int32) uuid.UUID {
	t.Helper()
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{
		Attempts: testdb.Ptr(attempts), MaxAttempts: testdb.Ptr(maxAttempts),
		LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](5),
	})
	return step
}

// adopt puts every waiting step on the schedule (schedule path), as a
// daemon's adoption would.
func adopt(t *testing.T, pool *pgxpool.Pool, objects testdb.Objects) {
	t.Helper()
	if objects == testdb.WithSweeperObjects {
		_, err := db.NewStore(pool).Reconcile(context.Background(), 0)
		require.NoError(t, err)
	}
}

func stateOf(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) (string, map[string]any) {
	t.Helper()
	var state string
	var meta map[string]any
	err := pool.QueryRow(context.Background(), `SELECT to_state, metadata FROM tasker.workflow_step_transitions
WHERE workflow_step_uuid = $1 AND most_recent`, step).Scan(&state, &meta)
	require.NoError(t, err)
	return state, meta
}

func TestStepsCommands(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool, url := testdb.NewWithURLFor(t, objects)
		vars := []string{"DATABASE_URL=" + url}
		due := parkStep(t, pool, 1, 3)
		stranded := parkStep(t, pool, 3, 3)
		errored := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
		testdb.PlaceInState(t, pool, errored, statemachine.Error, 0)
		adopt(t, pool, objects)

		// list: JSON for scripts, a table otherwise.
		res := runCLI(t, vars, "steps", "list", "--state", "due", "--json")
		require.Equal(t, 0, res.code, res.stderr)
		var page struct {
			Steps []struct {
				StepUUID uuid.UUID `json:"step_uuid"`
				Due      bool      `json:"due"`
			} `json:"steps"`
		}
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &page))
		require.Len(t, page.Steps, 1)
		require.Equal(t, due, page.Steps[0].StepUUID)
		res = runCLI(t, vars, "steps", "list", "--state", "stranded")
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, stranded.String())
		require.Contains(t, res.stdout, "1 step(s)")
		res = runCLI(t, vars, "steps", "list", "--state", "error", "--limit", "1")
		require.Contains(t, res.stdout, errored.String())

		// Usage errors: exit 2, one line naming what is wrong.
		for _, args := range [][]string{
			{"steps", "list", "--state", "running"},
			{"steps", "list", "--limit", "0"},
			{"steps", "list", "--limit", "1001"},
			{"steps", "list", "--cursor", "zzz"},
			{"steps", "show"},
			{"steps", "show", "not-a-uuid"},
			{"steps", "resolve", stranded.String()},
			{"steps", "grant", stranded.String(), "--attempts", "0", "--reason", "r"},
			{"steps", "cancel", "--reason", "r"},
			{"steps", "frobnicate"},
		} {
			res := runCLI(t, vars, args...)
			require.Equal(t, 2, res.code, "%v: %s", args, res.stderr)
			require.Equal(t, 1, strings.Count(strings.TrimSpace(res.stderr), "\n")+1, "%v: one line: %s", args, res.stderr)
		}

		// show: the rule's verdict, the last error, the history.
		res = runCLI(t, vars, "steps", "show", due.String(), "--json")
		require.Equal(t, 0, res.code, res.stderr)
		var detail map[string]any
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &detail))
		require.Equal(t, true, detail["due"])
		require.Len(t, detail["history"], 5)
		require.Equal(t, 3, runCLI(t, vars, "steps", "show", uuid.NewString()).code)

		// resolve: audited with --actor and --reason; again is refused (exit 3).
		res = runCLI(t, vars, "steps", "resolve", stranded.String(), "--reason", "fixed upstream", "--actor", "alice")
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, "resolved_manually")
		state, meta := stateOf(t, pool, stranded)
		require.Equal(t, "resolved_manually", state)
		require.Equal(t, "alice", meta["actor"])
		require.Equal(t, "fixed upstream", meta["why"])
		require.Equal(t, "cli", meta["via"])
		require.Contains(t, res.stderr, "manual step change", "logged at info")
		res = runCLI(t, vars, "steps", "resolve", stranded.String(), "--reason", "again")
		require.Equal(t, 3, res.code, res.stderr)
		require.Contains(t, res.stdout, "terminal")
		res = runCLI(t, vars, "steps", "show", stranded.String())
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, "alice")
		require.Contains(t, res.stdout, "resolve: fixed upstream")
		require.Equal(t, 3, runCLI(t, vars, "steps", "cancel", uuid.NewString(), "--reason", "r").code)

		// retry: the default actor is the OS user.
		res = runCLI(t, vars, "steps", "retry", due.String(), "--reason", "now")
		require.Equal(t, 0, res.code, res.stderr)
		state, meta = stateOf(t, pool, due)
		require.Equal(t, "pending", state)
		require.NotEmpty(t, meta["actor"])
		require.Equal(t, "now", meta["why"])
		require.Equal(t, 3, runCLI(t, vars, "steps", "retry", due.String()).code, "pending now: not due")

		// Bulk: a dry run prints exactly what would change and writes
		// nothing; the real run changes exactly those, and says so.
		var bulk []uuid.UUID
		for range 3 {
			bulk = append(bulk, parkStep(t, pool, 3, 3))
		}
		adopt(t, pool, objects)
		res = runCLI(t, vars, "steps", "grant", "--all-stranded", "--attempts", "1", "--reason", "one more", "--dry-run", "--json")
		require.Equal(t, 0, res.code, res.stderr)
		var out struct {
			DryRun  bool `json:"dry_run"`
			Changes []struct {
				StepUUID uuid.UUID `json:"step_uuid"`
				Changed  bool      `json:"changed"`
				Detail   string    `json:"detail"`
			} `json:"changes"`
			Changed int `json:"changed"`
		}
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
		require.True(t, out.DryRun)
		require.Len(t, out.Changes, 3)
		require.Zero(t, out.Changed)
		for _, c := range out.Changes {
			require.Contains(t, bulk, c.StepUUID)
			require.Equal(t, "would raise max_attempts 3 -> 4 (attempts 3)", c.Detail)
		}
		for _, s := range bulk {
			_, meta := stateOf(t, pool, s)
			require.NotContains(t, meta, "manual_changes")
		}
		res = runCLI(t, vars, "steps", "grant", "--all-stranded", "--attempts", "1", "--reason", "one more", "--limit", "2", "--json")
		require.Equal(t, 0, res.code, res.stderr)
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
		require.Equal(t, 2, out.Changed, "--limit caps the selection")
		res = runCLI(t, vars, "steps", "grant", "--all-stranded", "--attempts", "1", "--reason", "one more")
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, "1 changed")
		res = runCLI(t, vars, "steps", "list", "--state", "stranded", "--json")
		require.Contains(t, res.stdout, `"steps":[]`)

		// pause needs the sweeper's objects.
		res = runCLI(t, vars, "pause", "--reason", "incident")
		if objects == testdb.TaskerOnly {
			require.Equal(t, 2, res.code, res.stderr)
			require.Contains(t, res.stderr, "not installed")
			return
		}
		require.Equal(t, 0, res.code, res.stderr)
		res = runCLI(t, vars, "status", "--json")
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, `"reason":"incident"`)
		res = runCLI(t, vars, "status")
		require.Contains(t, res.stdout, "sweeps: paused by")
		require.Equal(t, 0, runCLI(t, vars, "resume").code)
		res = runCLI(t, vars, "status")
		require.Contains(t, res.stdout, "sweeps: not paused")
	})
}

// seriesValue reads one sample of a daemon's metrics.
func seriesValue(t *testing.T, h http.Handler, series string) float64 {
	t.Helper()
	return metricValue(t, scrape(t, h), series)
}

// waitMetric polls a daemon's metrics until cond holds.
func waitMetric(t *testing.T, h http.Handler, series, what string, cond func(float64) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond(seriesValue(t, h, series)) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s (%s = %v)", what, series, seriesValue(t, h, series))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Two daemons on one database, paused by a command run against the
// database: neither moves a step while paused (the inline handler still
// parks, an operator's retry still moves one); after resume both sweep
// again, and nothing is moved twice.
func TestPauseStopsEveryReplica(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	vars := []string{"DATABASE_URL=" + url}
	var daemons []*daemon
	var metrics []http.Handler
	for range 2 {
		d, _, m := startOnTime(t, url, "--schedule", "@every 1s")
		daemons, metrics = append(daemons, d), append(metrics, m)
	}
	res := runCLI(t, vars, "pause", "--reason", "incident 9", "--actor", "carol")
	require.Equal(t, 0, res.code, res.stderr)
	for _, m := range metrics {
		waitMetric(t, m, "tasker_sweeper_paused", "the daemon to see the pause", func(v float64) bool { return v == 1 })
	}
	task := testdb.SeedDue(t, pool, 40)
	manual := parkStep(t, pool, 1, 3)
	failing := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, failing, statemachine.InProgress, 0)
	testdb.SetColumns(t, pool, failing, testdb.StepColumns{Attempts: testdb.Ptr[int32](1)})

	// Each daemon sweeps on its cron ticks while paused: wait for two more
	// ticks each, then look.
	for _, m := range metrics {
		start := seriesValue(t, m, `tasker_sweeper_wakeups_total{reason="cron"}`)
		waitMetric(t, m, `tasker_sweeper_wakeups_total{reason="cron"}`, "two cron ticks", func(v float64) bool { return v >= start+2 })
	}
	var moved int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM tasker.workflow_step_transitions t
JOIN tasker.workflow_steps ws USING (workflow_step_uuid) WHERE ws.task_uuid = $1 AND t.to_state = 'pending' AND t.from_state = 'waiting_for_retry'`,
		task).Scan(&moved))
	require.Zero(t, moved, "no daemon moves a step while paused")

	// An operator's retry still works; the inline handler still parks.
	res = runCLI(t, vars, "steps", "retry", manual.String(), "--reason", "this one now")
	require.Equal(t, 0, res.code, res.stderr)
	state, _ := stateOf(t, pool, manual)
	require.Equal(t, "pending", state)
	res = runCLI(t, vars, "fail", "--step", failing.String(), "--message", "upstream 503", "--http-status", "503")
	require.Equal(t, 0, res.code, res.stderr)
	state, _ = stateOf(t, pool, failing)
	require.Equal(t, "waiting_for_retry", state)

	var before []float64
	for _, m := range metrics {
		before = append(before, seriesValue(t, m, `tasker_sweeper_sweeps_total{outcome="success"}`))
	}
	require.Equal(t, 0, runCLI(t, vars, "resume").code)
	for i, m := range metrics {
		waitMetric(t, m, `tasker_sweeper_sweeps_total{outcome="success"}`, "a sweep after resume",
			func(v float64) bool { return v > before[i] })
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var waiting int
		require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM tasker.workflow_step_transitions t
JOIN tasker.workflow_steps ws USING (workflow_step_uuid) WHERE ws.task_uuid = $1 AND t.most_recent AND t.to_state = 'waiting_for_retry'`,
			task).Scan(&waiting))
		if waiting == 0 {
			break
		}
		require.False(t, time.Now().After(deadline), "%d steps still waiting after resume", waiting)
		time.Sleep(50 * time.Millisecond)
	}
	var twice int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM (
    SELECT t.workflow_step_uuid FROM tasker.workflow_step_transitions t
    JOIN tasker.workflow_steps ws USING (workflow_step_uuid)
    WHERE ws.task_uuid = $1 AND t.from_state = 'waiting_for_retry' GROUP BY 1 HAVING count(*) <> 1) x`, task).Scan(&twice))
	require.Zero(t, twice, "every step moved exactly once")
	var sweptBy int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(DISTINCT t.metadata ->> 'sweep_id')
FROM tasker.workflow_step_transitions t JOIN tasker.workflow_steps ws USING (workflow_step_uuid)
WHERE ws.task_uuid = $1 AND t.from_state = 'waiting_for_retry'`, task).Scan(&sweptBy))
	require.Positive(t, sweptBy)
	for _, m := range metrics {
		waitMetric(t, m, "tasker_sweeper_paused", "the daemon to see the resume", func(v float64) bool { return v == 0 })
	}
	for _, d := range daemons {
		require.Contains(t, d.logs.String(), "sweeps paused")
		require.Contains(t, d.logs.String(), "sweeps resumed")
		require.Equal(t, 0, d.stop(t), d.logs.String())
	}
}
