package sweeper_test

import (
	"context"
	"log/slog"
	"sort"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

var discard = slog.New(slog.DiscardHandler)

// readiness is tasker's own readiness rule (get_step_readiness_status_batch
// with evaluate_step_state_readiness and calculate_step_next_retry_time),
// written out independently of the sweeper's queries and evaluated over
// whole tasks, so the parity tests compare against the orchestrator's view.
const readiness = `
WITH steps AS (
    SELECT ws.* FROM tasker.workflow_steps ws WHERE ws.task_uuid = ANY($1::uuid[])
), states AS (
    SELECT DISTINCT ON (t.workflow_step_uuid) t.workflow_step_uuid, t.to_state
    FROM tasker.workflow_step_transitions t
    WHERE t.most_recent
    ORDER BY t.workflow_step_uuid, t.created_at DESC
), last_failures AS (
    SELECT DISTINCT ON (t.workflow_step_uuid) t.workflow_step_uuid, t.created_at AS failure_time
    FROM tasker.workflow_step_transitions t
    JOIN steps s ON s.workflow_step_uuid = t.workflow_step_uuid
    WHERE t.to_state = 'error'
    ORDER BY t.workflow_step_uuid, t.created_at DESC
), deps AS (
    SELECT e.to_step_uuid, count(*) AS total,
           count(*) FILTER (WHERE ps.to_state IN ('complete', 'resolved_manually')) AS done
    FROM tasker.workflow_step_edges e
    JOIN steps s ON s.workflow_step_uuid = e.to_step_uuid
    LEFT JOIN states ps ON ps.workflow_step_uuid = e.from_step_uuid
    GROUP BY e.to_step_uuid
)
SELECT
    s.workflow_step_uuid,
    coalesce(st.to_state, 'pending') AS current_state,
    coalesce(st.to_state, 'pending') IN ('pending', 'waiting_for_retry')
    AND NOT s.processed
    AND NOT s.in_process
    AND (d.total IS NULL OR d.done = d.total)
    AND (coalesce(s.attempts, 0) = 0
         OR (coalesce(s.retryable, true) AND coalesce(s.attempts, 0) < coalesce(s.max_attempts, 3)))
    AND (CASE
           WHEN s.backoff_request_seconds IS NOT NULL AND s.last_attempted_at IS NOT NULL
             THEN s.last_attempted_at + s.backoff_request_seconds * interval '1 second'
           WHEN lf.failure_time IS NOT NULL
             THEN lf.failure_time + least(power(2.0, coalesce(s.attempts, 1)) * interval '1 second',
                                          60 * interval '1 second')
         END IS NULL
         OR CASE
           WHEN s.backoff_request_seconds IS NOT NULL AND s.last_attempted_at IS NOT NULL
             THEN s.last_attempted_at + s.backoff_request_seconds * interval '1 second'
           WHEN lf.failure_time IS NOT NULL
             THEN lf.failure_time + least(power(2.0, coalesce(s.attempts, 1)) * interval '1 second',
                                          60 * interval '1 second')
         END <= now()) AS ready
FROM steps s
LEFT JOIN states st ON st.workflow_step_uuid = s.workflow_step_uuid
LEFT JOIN deps d ON d.to_step_uuid = s.workflow_step_uuid
LEFT JOIN last_failures lf ON lf.workflow_step_uuid = s.workflow_step_uuid`

type readinessRow struct {
	Step  uuid.UUID
	State string
	Ready bool
}

func readinessOf(t *testing.T, pool *pgxpool.Pool, tasks []uuid.UUID) map[uuid.UUID]readinessRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), readiness, tasks)
	require.NoError(t, err)
	list, err := pgx.CollectRows(rows, pgx.RowToStructByPos[readinessRow])
	require.NoError(t, err)
	out := make(map[uuid.UUID]readinessRow, len(list))
	for _, r := range list {
		out[r.Step] = r
	}
	return out
}

type stepSnapshot struct {
	Attempts              *int32
	MaxAttempts           *int32
	Retryable             bool
	InProcess             bool
	Processed             bool
	LastAttemptedAt       *time.Time
	BackoffRequestSeconds *int32
	UpdatedAt             time.Time
	Transitions           int
	MaxSortKey            int32
	Current               string
}

func snapshot(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) stepSnapshot {
	t.Helper()
	var s stepSnapshot
	err := pool.QueryRow(context.Background(), `
SELECT ws.attempts, ws.max_attempts, ws.retryable, ws.in_process, ws.processed, ws.last_attempted_at,
       ws.backoff_request_seconds, ws.updated_at,
       (SELECT count(*) FROM tasker.workflow_step_transitions t WHERE t.workflow_step_uuid = ws.workflow_step_uuid),
       (SELECT coalesce(max(sort_key), 0) FROM tasker.workflow_step_transitions t WHERE t.workflow_step_uuid = ws.workflow_step_uuid),
       coalesce((SELECT to_state FROM tasker.workflow_step_transitions t
                 WHERE t.workflow_step_uuid = ws.workflow_step_uuid AND t.most_recent), 'pending')
FROM tasker.workflow_steps ws WHERE ws.workflow_step_uuid = $1`, step).Scan(
		&s.Attempts, &s.MaxAttempts, &s.Retryable, &s.InProcess, &s.Processed, &s.LastAttemptedAt,
		&s.BackoffRequestSeconds, &s.UpdatedAt, &s.Transitions, &s.MaxSortKey, &s.Current)
	require.NoError(t, err)
	return s
}

// ruleFixture is one step per condition of the due rule (README, "What a
// sweep moves"), named by what it exercises,
// with whether the sweep must move it.
type ruleFixture struct {
	name string
	step uuid.UUID
	task uuid.UUID
	due  bool
}

var (
	toWaiting = testdb.History(statemachine.WaitingForRetry)
	// A step that failed to error, was retried, ran again and is now waiting:
	// it has an error transition in its history.
	erroredThenWaiting = []statemachine.State{
		statemachine.Pending, statemachine.Enqueued, statemachine.InProgress,
		statemachine.EnqueuedAsErrorForOrchestration, statemachine.Error, statemachine.Pending,
		statemachine.Enqueued, statemachine.InProgress, statemachine.EnqueuedAsErrorForOrchestration,
		statemachine.WaitingForRetry,
	}
)

func buildRuleFixtures(t *testing.T, pool *pgxpool.Pool) []ruleFixture {
	t.Helper()
	ctx := context.Background()
	var out []ruleFixture
	i32 := testdb.Ptr[int32]
	ago := func(d time.Duration) *time.Duration { return &d }

	single := func(name string, due bool, path []statemachine.State, cols testdb.StepColumns) uuid.UUID {
		task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1})
		testdb.PlaceHistory(t, pool, task.Steps[0], path, 0)
		testdb.SetColumns(t, pool, task.Steps[0], cols)
		out = append(out, ruleFixture{name: name, step: task.Steps[0], task: task.TaskUUID, due: due})
		return task.Steps[0]
	}
	expired := testdb.StepColumns{Attempts: i32(1), LastAttemptedAgo: ago(10 * time.Minute), BackoffRequestSeconds: i32(5)}

	single("due by backoff", true, toWaiting, expired)
	single("backoff not expired", false, toWaiting,
		testdb.StepColumns{Attempts: i32(1), LastAttemptedAgo: ago(10 * time.Second), BackoffRequestSeconds: i32(3600)})
	single("backoff NULL, no error transition: due at once", true, toWaiting, testdb.StepColumns{Attempts: i32(1)})
	single("backoff NULL, old error transition", true, erroredThenWaiting, testdb.StepColumns{Attempts: i32(2)})
	recent := single("backoff NULL, recent error transition", false, erroredThenWaiting, testdb.StepColumns{Attempts: i32(2)})
	_, err := pool.Exec(ctx, `UPDATE tasker.workflow_step_transitions SET created_at = now() - interval '1 second'
		WHERE workflow_step_uuid = $1 AND to_state = 'error'`, recent)
	require.NoError(t, err)
	single("last_attempted_at set but backoff NULL uses the fallback", true, toWaiting,
		testdb.StepColumns{Attempts: i32(1), LastAttemptedAgo: ago(time.Second)})
	single("attempts exhausted: stranded", false, toWaiting,
		testdb.StepColumns{Attempts: i32(3), MaxAttempts: i32(3), LastAttemptedAgo: ago(time.Hour), BackoffRequestSeconds: i32(1)})
	single("retryable=false: stranded", false, toWaiting,
		testdb.StepColumns{Retryable: testdb.Ptr(false), Attempts: i32(1), LastAttemptedAgo: ago(time.Hour), BackoffRequestSeconds: i32(1)})
	single("retryable=false but attempts 0 is eligible", true, toWaiting,
		testdb.StepColumns{Retryable: testdb.Ptr(false), Attempts: i32(0), LastAttemptedAgo: ago(time.Hour), BackoffRequestSeconds: i32(1)})
	single("attempts NULL is a first attempt", true, toWaiting,
		testdb.StepColumns{LastAttemptedAgo: ago(time.Hour), BackoffRequestSeconds: i32(1)})
	single("processed", false, toWaiting, testdb.StepColumns{
		Processed: testdb.Ptr(true), Attempts: i32(1), LastAttemptedAgo: ago(time.Hour), BackoffRequestSeconds: i32(1),
	})
	single("in_process", false, toWaiting, testdb.StepColumns{
		InProcess: testdb.Ptr(true), Attempts: i32(1), LastAttemptedAgo: ago(time.Hour), BackoffRequestSeconds: i32(1),
	})
	single("max_attempts NULL, attempts 2", true, toWaiting, testdb.StepColumns{
		NullMaxAttempts: true, Attempts: i32(2), LastAttemptedAgo: ago(time.Hour), BackoffRequestSeconds: i32(1),
	})
	single("max_attempts NULL, attempts 3: stranded", false, toWaiting, testdb.StepColumns{
		NullMaxAttempts: true, Attempts: i32(3), LastAttemptedAgo: ago(time.Hour), BackoffRequestSeconds: i32(1),
	})
	single("backoff expired within the last second", true, toWaiting, testdb.StepColumns{
		Attempts: i32(1), LastAttemptedAgo: ago(2 * time.Second), BackoffRequestSeconds: i32(1),
	})

	// Parents: a two-step task whose second step waits on the first.
	withParent := func(name string, due bool, parent statemachine.State) {
		task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 2, Edges: [][2]int{{0, 1}}})
		testdb.PlaceInState(t, pool, task.Steps[0], parent, 0)
		testdb.PlaceHistory(t, pool, task.Steps[1], toWaiting, 0)
		testdb.SetColumns(t, pool, task.Steps[1], expired)
		out = append(out, ruleFixture{name: name, step: task.Steps[1], task: task.TaskUUID, due: due})
		out = append(out, ruleFixture{name: name + " (the parent)", step: task.Steps[0], task: task.TaskUUID, due: false})
	}
	withParent("parent complete", true, statemachine.Complete)
	withParent("parent resolved_manually", true, statemachine.ResolvedManually)
	withParent("parent in_progress: unmet", false, statemachine.InProgress)
	withParent("parent error: unmet", false, statemachine.Error)
	// A parent with no transitions is pending: unmet.
	task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 2, Edges: [][2]int{{0, 1}}})
	testdb.PlaceHistory(t, pool, task.Steps[1], toWaiting, 0)
	testdb.SetColumns(t, pool, task.Steps[1], expired)
	out = append(out, ruleFixture{name: "parent without transitions: unmet", step: task.Steps[1], task: task.TaskUUID})
	out = append(out, ruleFixture{name: "parent without transitions (the parent)", step: task.Steps[0], task: task.TaskUUID})

	// Every other state, with retry columns that would make a waiting step due.
	for _, st := range statemachine.States() {
		if st == statemachine.WaitingForRetry {
			continue
		}
		single("state "+string(st), false, testdb.History(st), expired)
	}
	return out
}

func tasksOf(fx []ruleFixture) []uuid.UUID {
	seen := map[uuid.UUID]bool{}
	var out []uuid.UUID
	for _, f := range fx {
		if !seen[f.task] {
			seen[f.task] = true
			out = append(out, f.task)
		}
	}
	return out
}

func TestSweepMovesExactlyTheDueSteps(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, testSweepMovesExactlyTheDueSteps)
}

func testSweepMovesExactlyTheDueSteps(t *testing.T, objects testdb.Objects) {
	pool := testdb.NewFor(t, objects)
	ctx := context.Background()
	fx := buildRuleFixtures(t, pool)
	tasks := tasksOf(fx)

	// The fixture agrees with tasker's own readiness rule before the sweep.
	before := readinessOf(t, pool, tasks)
	store := db.NewStore(pool)
	snaps := map[uuid.UUID]stepSnapshot{}
	var wantDue []string
	for _, f := range fx {
		r := before[f.step]
		require.Equal(t, f.due, r.Ready && r.State == "waiting_for_retry", "fixture %q vs tasker's readiness rule", f.name)
		// The admin API's per-step explanation uses its own copy of the rule.
		status, err := store.StepDueStatus(ctx, f.step)
		require.NoError(t, err)
		due, reason := status.Due()
		require.Equal(t, f.due, due, "StepDueStatus for %q: %s", f.name, reason)
		snaps[f.step] = snapshot(t, pool, f.step)
		if f.due {
			wantDue = append(wantDue, f.name)
		}
	}
	require.NotEmpty(t, wantDue)

	sw := mustNew(t, db.NewStore(pool), sweeper.Config{BatchSize: 3, Workers: 2, BatchTimeout: 10 * time.Second})
	dry, err := sw.RunOnce(ctx, true)
	require.NoError(t, err)
	require.True(t, dry.DryRun)
	require.Equal(t, len(wantDue), dry.Transitioned, "dry run reports what a sweep moves")
	for _, f := range fx {
		require.Equal(t, snaps[f.step], snapshot(t, pool, f.step), "dry run wrote to %q", f.name)
	}

	sum, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	wantPath := sweeper.PathSchedule
	if objects == testdb.TaskerOnly {
		wantPath = sweeper.PathScan
	}
	require.Equal(t, wantPath, sum.Path)
	require.Equal(t, len(wantDue), sum.Transitioned)
	require.Zero(t, sum.LostRaces)
	require.Equal(t, int64(3), sum.Stranded, "exhausted, retryable=false, max_attempts NULL with 3 attempts")

	after := readinessOf(t, pool, tasks)
	var moved []string
	for _, f := range fx {
		prev, now := snaps[f.step], snapshot(t, pool, f.step)
		if !f.due {
			require.Equal(t, prev, now, "%q must be untouched", f.name)
			continue
		}
		moved = append(moved, f.name)
		require.Equal(t, "pending", now.Current, f.name)
		require.Equal(t, prev.Transitions+1, now.Transitions, "%q gets exactly one new transition", f.name)
		require.Equal(t, prev.MaxSortKey+1, now.MaxSortKey, f.name)
		require.Equal(t, prev.Attempts, now.Attempts, "%q keeps attempts", f.name)
		require.Equal(t, prev.BackoffRequestSeconds, now.BackoffRequestSeconds, "%q keeps its backoff", f.name)
		require.Equal(t, prev.LastAttemptedAt, now.LastAttemptedAt, f.name)
		require.True(t, now.UpdatedAt.After(prev.UpdatedAt), "%q updated_at touched", f.name)
		// The invariant that matters: the orchestrator now sees it pending and ready.
		require.Equal(t, "pending", after[f.step].State, f.name)
		require.True(t, after[f.step].Ready, "tasker's readiness rule must see %q as ready right after the sweep", f.name)

		var from, to string
		var meta map[string]any
		require.NoError(t, pool.QueryRow(ctx, `SELECT from_state, to_state, metadata FROM tasker.workflow_step_transitions
			WHERE workflow_step_uuid = $1 AND most_recent`, f.step).Scan(&from, &to, &meta))
		require.Equal(t, "waiting_for_retry", from)
		require.Equal(t, "pending", to)
		require.JSONEq(t, `{"type":"Retry"}`, meta["event"].(string))
		require.Equal(t, sum.SweepID.String(), meta["sweep_id"])
		require.NotEmpty(t, meta["due_at"])
		require.NotEmpty(t, meta["timestamp"])
	}
	sort.Strings(moved)
	sort.Strings(wantDue)
	require.Equal(t, wantDue, moved)

	again, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Zero(t, again.Transitioned, "a second sweep moves nothing")
}

// Several sweepers on one database (in-process here; separate processes in
// the binary's end-to-end test) move every step exactly once.
func TestConcurrentSweepersMoveEachStepOnce(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, testConcurrentSweepersMoveEachStepOnce)
}

func testConcurrentSweepersMoveEachStepOnce(t *testing.T, objects testdb.Objects) {
	pool := testdb.NewFor(t, objects)
	ctx := context.Background()
	const steps = 2000
	testdb.SeedDue(t, pool, steps)

	cfg := sweeper.Config{BatchSize: 50, Workers: 3, BatchTimeout: 30 * time.Second}
	results := make(chan sweeper.Summary, 4)
	errs := make(chan error, 4)
	start := make(chan struct{})
	for range 4 {
		sw := mustNew(t, db.NewStore(pool), cfg)
		go func() {
			<-start
			sum, err := sw.RunOnce(ctx, false)
			results <- sum
			errs <- err
		}()
	}
	close(start)
	total := 0
	for range 4 {
		require.NoError(t, <-errs)
		total += (<-results).Transitioned
	}
	require.Equal(t, steps, total)

	var pendingRows, mostRecent, multi int
	require.NoError(t, pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE to_state = 'pending' AND from_state = 'waiting_for_retry'),
       count(*) FILTER (WHERE most_recent),
       (SELECT count(*) FROM (SELECT workflow_step_uuid FROM tasker.workflow_step_transitions
                              WHERE to_state = 'pending' AND from_state = 'waiting_for_retry'
                              GROUP BY 1 HAVING count(*) > 1) d)
FROM tasker.workflow_step_transitions`).Scan(&pendingRows, &mostRecent, &multi))
	require.Equal(t, steps, pendingRows)
	require.Equal(t, steps, mostRecent)
	require.Zero(t, multi)
}

// A sweep reports the largest due-to-pending lag of the steps it moved
// (the seeded steps fell due 59 min 59 s ago), and none when it moved
// nothing.
func TestSweepReportsTheLargestLagOfWhatItMoved(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		testdb.SeedDue(t, pool, 3)
		sw, err := sweeper.New(db.NewStore(pool), sweeper.DefaultConfig(), discard, sweeper.Hooks{})
		require.NoError(t, err)

		sum, err := sw.RunOnce(t.Context(), false)
		require.NoError(t, err)
		require.Equal(t, 3, sum.Transitioned)
		require.GreaterOrEqual(t, sum.MaxLag, time.Hour-time.Second)
		require.Less(t, sum.MaxLag, time.Hour+time.Minute)
		require.InDelta(t, float64(sum.MaxLag.Microseconds())/1000, sum.MaxLagMS, 0.001)

		again, err := sw.RunOnce(t.Context(), false)
		require.NoError(t, err)
		require.Zero(t, again.Transitioned)
		require.Zero(t, again.MaxLag)
	})
}
