package sweeper_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"retrysweeper/db"
	"retrysweeper/handling"
	"retrysweeper/internal/testdb"
	"retrysweeper/statemachine"
	"retrysweeper/sweeper"
)

type scheduleRow struct {
	DueAt    time.Time
	Stranded bool
}

func scheduleOf(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) (scheduleRow, bool) {
	t.Helper()
	var r scheduleRow
	err := pool.QueryRow(context.Background(),
		`SELECT due_at, stranded FROM tasker_sweeper.retry_schedule WHERE workflow_step_uuid = $1`, step).Scan(&r.DueAt, &r.Stranded)
	if err != nil {
		return r, false
	}
	return r, true
}

func newSweeper(pool *pgxpool.Pool) *sweeper.Sweeper {
	return sweeper.New(db.NewStore(pool), sweeper.Config{BatchSize: 100, Workers: 2, BatchTimeout: 10 * time.Second}, discard, sweeper.Hooks{})
}

// The inline handler puts the step it parks on the schedule in the same
// transaction, at the due time it reports; the sweep moves it once due and
// forgets it.
func TestHandlerParksOnTheSchedule(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	store := db.NewStore(pool)
	sw := newSweeper(pool)
	_, err := sw.RunOnce(ctx, false) // the first sweep's full adoption pass
	require.NoError(t, err)

	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.EnqueuedAsErrorForOrchestration, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{Attempts: testdb.Ptr[int32](1)})
	cfg := handling.DefaultConfig()
	cfg.Backoff.Jitter = false
	res, err := handling.NewService(store, cfg).HandleStepError(ctx, handling.Failure{StepUUID: step, Message: "connection reset"})
	require.NoError(t, err)
	require.Equal(t, handling.ActionTransitionedToWaitingForRetry, res.Action)

	row, ok := scheduleOf(t, pool, step)
	require.True(t, ok, "the handler scheduled the step")
	require.Equal(t, *res.NextRetryAt, row.DueAt)

	sum, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Zero(t, sum.Transitioned, "not due for another 2 s")

	// Time passes: the backoff and its schedule entry expire.
	_, err = pool.Exec(ctx, `UPDATE tasker.workflow_steps SET last_attempted_at = last_attempted_at - interval '1 minute'
		WHERE workflow_step_uuid = $1`, step)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `UPDATE tasker_sweeper.retry_schedule SET due_at = due_at - interval '1 minute'
		WHERE workflow_step_uuid = $1`, step)
	require.NoError(t, err)
	sum, err = sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Equal(t, 1, sum.Transitioned)
	require.Zero(t, sum.Adopted, "the handler's own steps need no adoption")
	_, ok = scheduleOf(t, pool, step)
	require.False(t, ok, "a moved step leaves the schedule")
}

// A step another writer parks (no schedule row) is adopted by the next
// sweep's incremental pass and moved when due.
func TestSweepAdoptsStepsParkedByOtherWriters(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	sw := newSweeper(pool)
	first, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Equal(t, sweeper.PathSchedule, first.Path)

	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](5)})

	sum, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Equal(t, 1, sum.Adopted)
	require.Equal(t, 1, sum.Transitioned)
	var full *time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT last_full_pass FROM tasker_sweeper.adoption`).Scan(&full))
	require.NotNil(t, full)
}

// Schedule rows the sweep could not move are re-evaluated once, so later
// idle sweeps do not look at them again: gone steps are dropped, a later
// real due time is adopted, blocked and stranded steps wait for a re-check.
func TestSweepReschedulesWhatItCannotMove(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	sw := newSweeper(pool)
	_, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)

	i32 := testdb.Ptr[int32]
	task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 5, Edges: [][2]int{{0, 4}}})
	gone, later, stranded, blocked := task.Steps[0], task.Steps[1], task.Steps[2], task.Steps[4]
	testdb.PlaceInState(t, pool, gone, statemachine.InProgress, 0) // also blocked's unmet parent
	testdb.PlaceInState(t, pool, later, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, later, testdb.StepColumns{Attempts: i32(1), LastAttemptedAgo: testdb.Ptr(time.Second), BackoffRequestSeconds: i32(600)})
	testdb.PlaceInState(t, pool, stranded, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, stranded, testdb.StepColumns{Attempts: i32(3), MaxAttempts: i32(3), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: i32(1)})
	testdb.PlaceInState(t, pool, blocked, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, blocked, testdb.StepColumns{Attempts: i32(1), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: i32(1)})
	// Stale hints: every row claims to be due now.
	_, err = pool.Exec(ctx, `INSERT INTO tasker_sweeper.retry_schedule (workflow_step_uuid, due_at)
		SELECT unnest($1::uuid[]), now() - interval '1 second'`, []uuid.UUID{gone, later, stranded, blocked})
	require.NoError(t, err)

	sum, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Zero(t, sum.Transitioned)

	_, ok := scheduleOf(t, pool, gone)
	require.False(t, ok, "a step that is not waiting leaves the schedule")
	row, ok := scheduleOf(t, pool, later)
	require.True(t, ok)
	var realDue time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT last_attempted_at + backoff_request_seconds * interval '1 second'
		FROM tasker.workflow_steps WHERE workflow_step_uuid = $1`, later).Scan(&realDue))
	require.Equal(t, realDue, row.DueAt, "a later real due time replaces the hint")
	row, ok = scheduleOf(t, pool, stranded)
	require.True(t, ok)
	require.True(t, row.Stranded)
	require.True(t, row.DueAt.After(time.Now().UTC().Add(20*time.Second)), "stranded steps are re-checked later, not every sweep")
	row, ok = scheduleOf(t, pool, blocked)
	require.True(t, ok)
	require.False(t, row.Stranded)
	require.True(t, row.DueAt.After(time.Now().UTC().Add(20*time.Second)), "blocked steps are re-checked later")

	again, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Equal(t, int64(1), again.Stranded, "stranded count comes from the schedule")
}
