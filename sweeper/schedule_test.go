package sweeper_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
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

// afterFirstSweep is a database with the sweeper-owned objects that a
// sweeper has swept once (so its first, full adoption pass is behind it).
func afterFirstSweep(t *testing.T) (*pgxpool.Pool, *sweeper.Sweeper) {
	t.Helper()
	pool := testdb.New(t)
	sw := newSweeper(t, pool)
	sum, err := sw.RunOnce(context.Background(), false)
	require.NoError(t, err)
	require.Equal(t, sweeper.PathSchedule, sum.Path)
	return pool, sw
}

func newSweeper(t testing.TB, pool *pgxpool.Pool) *sweeper.Sweeper {
	return mustNew(t, db.NewStore(pool), sweeper.Config{BatchSize: 100, Workers: 2, BatchTimeout: 10 * time.Second})
}

// The inline handler puts the step it parks on the schedule in the same
// transaction, at the due time it reports; the sweep moves it once due and
// forgets it.
func TestHandlerParksOnTheSchedule(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	store := db.NewStore(pool)
	sw := newSweeper(t, pool)
	_, err := sw.RunOnce(ctx, false) // the first sweep's full adoption pass
	require.NoError(t, err)

	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.EnqueuedAsErrorForOrchestration, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{Attempts: testdb.Ptr[int32](1)})
	cfg := handling.DefaultConfig()
	cfg.Backoff.Jitter = false
	handler, err := handling.NewService(store, cfg)
	require.NoError(t, err)
	res, err := handler.Handle(ctx, handling.Failure{StepUUID: step, Message: "connection reset"})
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
	sw := newSweeper(t, pool)
	first, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Equal(t, sweeper.PathSchedule, first.Path)

	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](5),
	})

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
	pool, sw := afterFirstSweep(t)
	ctx := context.Background()

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
	_, err := pool.Exec(ctx, `INSERT INTO tasker_sweeper.retry_schedule (workflow_step_uuid, due_at)
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

// parkNotDue puts a step in waiting_for_retry the way a writer other than
// the handler would (no schedule row), with 10 minutes of backoff left.
func parkNotDue(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) {
	t.Helper()
	testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Second), BackoffRequestSeconds: testdb.Ptr[int32](600),
	})
}

// countingStore counts the batches a sweep asks for.
type countingStore struct {
	*db.Store
	batches atomic.Int32
}

func (c *countingStore) MoveDueBatch(ctx context.Context, b sweeper.Batch) (sweeper.BatchResult, error) {
	c.batches.Add(1)
	return c.Store.MoveDueBatch(ctx, b)
}

// adoptionRow is the adoption state with its row version: xmin changes
// whenever a sweep writes the row.
func adoptionRow(t *testing.T, pool *pgxpool.Pool) (xmin string, watermark, lastFull *time.Time) {
	t.Helper()
	require.NoError(t, pool.QueryRow(context.Background(),
		`SELECT xmin::text, watermark, last_full_pass FROM tasker_sweeper.adoption`).Scan(&xmin, &watermark, &lastFull))
	return xmin, watermark, lastFull
}

// An idle sweep on the schedule path writes nothing and claims nothing: no
// batch transaction when no schedule row is due, no adoption write while
// the watermark is recent. The scan path cannot tell and always looks.
func TestIdleSweepWritesNothing(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
		parkNotDue(t, pool, step)
		store := &countingStore{Store: db.NewStore(pool)}
		sw := mustNew(t, store, sweeper.DefaultConfig())
		_, err := sw.RunOnce(ctx, false) // the first ever: full adoption
		require.NoError(t, err)
		store.batches.Store(0)
		if objects == testdb.TaskerOnly {
			sum, err := sw.RunOnce(ctx, false)
			require.NoError(t, err)
			require.Zero(t, sum.Transitioned)
			require.Equal(t, int32(1), store.batches.Load(), "the scan path looks every time")
			return
		}
		_, ok := scheduleOf(t, pool, step)
		require.True(t, ok, "the waiting step was adopted")
		xmin, _, _ := adoptionRow(t, pool)

		sum, err := sw.RunOnce(ctx, false)
		require.NoError(t, err)
		require.Zero(t, sum.Transitioned)
		require.Zero(t, store.batches.Load(), "nothing due on the schedule: no batch")
		after, _, _ := adoptionRow(t, pool)
		require.Equal(t, xmin, after, "a recent watermark is not rewritten by an idle sweep")

		// Once the step is due, the sweep looks again and moves it.
		_, err = pool.Exec(ctx, `UPDATE tasker.workflow_steps SET backoff_request_seconds = 1 WHERE workflow_step_uuid = $1`, step)
		require.NoError(t, err)
		_, err = pool.Exec(ctx, `UPDATE tasker_sweeper.retry_schedule SET due_at = now() - interval '1 second'`)
		require.NoError(t, err)
		sum, err = sw.RunOnce(ctx, false)
		require.NoError(t, err)
		require.Equal(t, 1, sum.Transitioned)
	})
}

// The watermark moves when a pass adopted something, and when it is old
// even if nothing was found, so the window a pass re-reads stays small.
func TestAdoptionWatermarkAdvances(t *testing.T) {
	t.Parallel()
	pool, sw := afterFirstSweep(t)
	ctx := context.Background()
	_, first, _ := adoptionRow(t, pool)
	require.NotNil(t, first)

	// Old watermark, nothing to adopt: it still moves up to now.
	_, err := pool.Exec(ctx, `UPDATE tasker_sweeper.adoption SET watermark = watermark - interval '30 seconds'`)
	require.NoError(t, err)
	_, err = sw.RunOnce(ctx, false)
	require.NoError(t, err)
	_, second, _ := adoptionRow(t, pool)
	require.False(t, second.Before(*first), "an old watermark is advanced: %s -> %s", first, second)

	// Something adopted: it moves even though it is recent.
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	parkNotDue(t, pool, step)
	sum, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Equal(t, 1, sum.Adopted)
	_, third, _ := adoptionRow(t, pool)
	require.True(t, third.After(*second), "a pass that adopted advances the watermark")
}

// The full pass adopts what the incremental one cannot see (a waiting row
// older than the watermark's margin), only when due, one replica at a time;
// a replica's full pass never blocks another's incremental pass.
func TestFullAdoptionPass(t *testing.T) {
	t.Parallel()
	pool, sw := afterFirstSweep(t)
	ctx := context.Background()

	// Parked by another writer long ago, as if its transaction had been
	// open across many passes.
	old := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	parkNotDue(t, pool, old)
	_, err := pool.Exec(ctx, `UPDATE tasker.workflow_step_transitions SET created_at = created_at - interval '1 hour'
		WHERE workflow_step_uuid = $1`, old)
	require.NoError(t, err)

	sum, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Zero(t, sum.Adopted, "older than the incremental window")
	res, err := sw.Reconcile(ctx, 15*time.Minute)
	require.NoError(t, err)
	require.Equal(t, sweeper.Reconciliation{}, res, "the last reconcile pass is recent: nothing to do")
	_, ok := scheduleOf(t, pool, old)
	require.False(t, ok)

	_, err = pool.Exec(ctx, `UPDATE tasker_sweeper.adoption SET last_full_pass = last_full_pass - interval '16 minutes'`)
	require.NoError(t, err)

	// Another replica's full pass holds the state row: this one skips its
	// own, and its incremental pass (due to advance an old watermark) does
	// not wait: it leaves the advance to the full pass.
	_, err = pool.Exec(ctx, `UPDATE tasker_sweeper.adoption SET watermark = watermark - interval '30 seconds'`)
	require.NoError(t, err)
	_, oldWatermark, _ := adoptionRow(t, pool)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT 1 FROM tasker_sweeper.adoption FOR UPDATE`)
	require.NoError(t, err)
	res, err = sw.Reconcile(ctx, 15*time.Minute)
	require.NoError(t, err)
	require.True(t, res.Skipped)
	quick, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = sw.RunOnce(quick, false)
	cancel()
	require.NoError(t, err, "an incremental pass does not wait for a full pass")
	require.NoError(t, tx.Rollback(ctx))
	_, watermark, _ := adoptionRow(t, pool)
	require.Equal(t, oldWatermark, watermark, "the advance was skipped, not queued")

	res, err = sw.Reconcile(ctx, 15*time.Minute)
	require.NoError(t, err)
	require.True(t, res.Ran)
	require.EqualValues(t, 1, res.Missing)
	_, ok = scheduleOf(t, pool, old)
	require.True(t, ok, "the reconcile pass adopted the old step")
	_, _, lastFull := adoptionRow(t, pool)
	require.WithinDuration(t, time.Now().UTC(), *lastFull, time.Minute)
}
