package sweeper_test

// The README's runbook for stranded steps, checked against tasker's own
// readiness rule (the independent rendering in sweep_test.go): a stranded
// step is never ready and no sweep moves it; each of the three exits does
// what the runbook says, on both sweep paths.

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// strandedStep parks steps[i] of a task with its attempts used up, last
// attempted lastAgo ago with a backoff of backoff seconds.
func strandedStep(t *testing.T, pool *pgxpool.Pool, step uuid.UUID, lastAgo time.Duration, backoff int32) {
	t.Helper()
	testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](3),
		LastAttemptedAgo: testdb.Ptr(lastAgo), BackoffRequestSeconds: testdb.Ptr(backoff),
	})
}

func runbookOperator(t *testing.T, store *db.Store) (*sweeper.Operator, *sweeper.Sweeper) {
	t.Helper()
	sw := mustNew(t, store, sweeper.DefaultConfig())
	return sweeper.NewOperator(store, sw, discard), sw
}

var runbookAudit = sweeper.Audit{Actor: "runbook", Reason: "stranded step", Via: "cli"}

func TestRunbookStrandedStepsExits(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		// Task A: a stranded step whose backoff passed long ago, and one
		// whose backoff has an hour to go. Task B: a stranded parent and its
		// pending child. Task C: a stranded step to cancel.
		a := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 2})
		strandedStep(t, pool, a.Steps[0], time.Hour, 5)
		strandedStep(t, pool, a.Steps[1], 0, 3600)
		b := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 2, Edges: [][2]int{{0, 1}}})
		strandedStep(t, pool, b.Steps[0], time.Hour, 5)
		c := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1})
		strandedStep(t, pool, c.Steps[0], time.Hour, 5)
		tasks := []uuid.UUID{a.TaskUUID, b.TaskUUID, c.TaskUUID}

		store := db.NewStore(pool)
		op, sw := runbookOperator(t, store)
		sum, err := sw.RunOnce(ctx, false)
		require.NoError(t, err)
		require.Zero(t, sum.Transitioned, "nothing automatic gets a stranded step out")
		require.EqualValues(t, 4, sum.Stranded)
		before := readinessOf(t, pool, tasks)
		for _, s := range []uuid.UUID{a.Steps[0], a.Steps[1], b.Steps[0], b.Steps[1], c.Steps[0]} {
			require.False(t, before[s].Ready, "tasker calls none of them ready")
		}
		stranded, err := op.List(ctx, sweeper.StepQuery{State: sweeper.ListStranded})
		require.NoError(t, err)
		require.Len(t, stranded.Steps, 4)

		// Exit 1, grant: the readiness rule calls the step ready once its
		// backoff has passed, and the sweep moves it then, not before.
		for _, s := range a.Steps {
			_, err := op.Apply(ctx, sweeper.Request{Step: s, Op: sweeper.OpGrant, Attempts: 1, Audit: runbookAudit})
			require.NoError(t, err)
		}
		after := readinessOf(t, pool, tasks)
		require.True(t, after[a.Steps[0]].Ready, "backoff passed: ready")
		require.False(t, after[a.Steps[1]].Ready, "backoff not passed: not yet")
		sum, err = sw.RunOnce(ctx, false)
		require.NoError(t, err)
		require.Equal(t, 1, sum.Transitioned)
		require.Equal(t, "pending", snapshot(t, pool, a.Steps[0]).Current)
		require.Equal(t, "waiting_for_retry", snapshot(t, pool, a.Steps[1]).Current)
		later := db.NewStore(pool, db.WithClock(func() time.Time { return time.Now().Add(2 * time.Hour) }))
		sum, err = mustNew(t, later, sweeper.DefaultConfig()).RunOnce(ctx, false)
		require.NoError(t, err)
		require.Equal(t, 1, sum.Transitioned, "once its backoff has passed it moves by the normal rule")
		require.Equal(t, "pending", snapshot(t, pool, a.Steps[1]).Current)

		// Exit 2, resolve: the parent is resolved_manually, and its child's
		// dependency check passes (tasker calls the pending child ready).
		require.False(t, before[b.Steps[1]].Ready, "blocked by its stranded parent")
		_, err = op.Apply(ctx, sweeper.Request{Step: b.Steps[0], Op: sweeper.OpResolve, Audit: runbookAudit})
		require.NoError(t, err)
		after = readinessOf(t, pool, tasks)
		require.Equal(t, "resolved_manually", after[b.Steps[0]].State)
		require.False(t, after[b.Steps[0]].Ready)
		require.True(t, after[b.Steps[1]].Ready, "the child's dependency check passes")

		// Exit 3, cancel: the step leaves the queue for good.
		_, err = op.Apply(ctx, sweeper.Request{Step: c.Steps[0], Op: sweeper.OpCancel, Audit: runbookAudit})
		require.NoError(t, err)
		after = readinessOf(t, pool, tasks)
		require.Equal(t, "cancelled", after[c.Steps[0]].State)
		require.False(t, after[c.Steps[0]].Ready)

		sum, err = sw.RunOnce(ctx, false)
		require.NoError(t, err)
		require.Zero(t, sum.Stranded, "nothing stranded is left")
		left, err := op.List(ctx, sweeper.StepQuery{State: sweeper.ListStranded})
		require.NoError(t, err)
		require.Empty(t, left.Steps)
	})
}

// The pause switch stops a sweep before it starts (nothing of it runs)
// and an operator's retry still moves a step.
func TestPausedSweepMovesNothing(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	task := testdb.SeedDue(t, pool, 5)
	store := db.NewStore(pool)
	var seen []sweeper.Pause
	sw, err := sweeper.New(store, sweeper.DefaultConfig(), discard, sweeper.Hooks{PauseChecked: func(p sweeper.Pause) { seen = append(seen, p) }})
	require.NoError(t, err)
	op := sweeper.NewOperator(store, sw, discard)
	_, _, err = op.Pause(ctx, "dave", "maintenance")
	require.NoError(t, err)
	sum, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.True(t, sum.Paused)
	require.Zero(t, sum.Transitioned)
	require.NotEmpty(t, seen)
	require.True(t, seen[len(seen)-1].Paused)
	dry, err := sw.RunOnce(ctx, true)
	require.NoError(t, err)
	require.Equal(t, 5, dry.Transitioned, "a dry run still says what would move")
	var steps []uuid.UUID
	rows, err := pool.Query(ctx, `SELECT workflow_step_uuid FROM tasker.workflow_steps WHERE task_uuid = $1`, task)
	require.NoError(t, err)
	for rows.Next() {
		var id uuid.UUID
		require.NoError(t, rows.Scan(&id))
		steps = append(steps, id)
	}
	require.NoError(t, rows.Err())
	for _, s := range steps {
		require.Equal(t, "waiting_for_retry", snapshot(t, pool, s).Current)
	}
	_, err = op.Apply(ctx, sweeper.Request{Step: steps[0], Op: sweeper.OpRetry, Audit: runbookAudit})
	require.NoError(t, err, "an operator's retry is not paused")
	require.Equal(t, "pending", snapshot(t, pool, steps[0]).Current)
	_, _, err = op.Resume(ctx, "dave")
	require.NoError(t, err)
	sum, err = sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.False(t, sum.Paused)
	require.Equal(t, 4, sum.Transitioned)
}
