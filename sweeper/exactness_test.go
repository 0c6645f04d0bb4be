package sweeper_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// Tests that every due step moves whatever the orchestrator is doing: row
// locks held by other transactions, odd values in the retry columns, a
// schedule that lost rows or holds stale due times, late commits.

// currentStates maps each step of the tasks to its current state.
func currentStates(t *testing.T, pool *pgxpool.Pool, steps []uuid.UUID) map[uuid.UUID]string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
SELECT ws.workflow_step_uuid, coalesce(cur.to_state, 'pending')
FROM tasker.workflow_steps ws
LEFT JOIN tasker.workflow_step_transitions cur ON cur.workflow_step_uuid = ws.workflow_step_uuid AND cur.most_recent
WHERE ws.workflow_step_uuid = ANY($1)`, steps)
	require.NoError(t, err)
	out := map[uuid.UUID]string{}
	for rows.Next() {
		var id uuid.UUID
		var state string
		require.NoError(t, rows.Scan(&id, &state))
		out[id] = state
	}
	require.NoError(t, rows.Err())
	return out
}

func stepsOfTask(t *testing.T, pool *pgxpool.Pool, task uuid.UUID) []uuid.UUID {
	t.Helper()
	rows, err := pool.Query(context.Background(),
		`SELECT workflow_step_uuid FROM tasker.workflow_steps WHERE task_uuid = $1 ORDER BY workflow_step_uuid`, task)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	require.NoError(t, err)
	return ids
}

// scheduleIfAny fills the schedule on the schedule path, so the sweep under
// test starts from a schedule that knows every waiting step.
func scheduleIfAny(t *testing.T, sw *sweeper.Sweeper, objects testdb.Objects) {
	t.Helper()
	if objects == testdb.TaskerOnly {
		return
	}
	res, err := sw.Reconcile(context.Background(), 0)
	require.NoError(t, err)
	require.True(t, res.Ran)
}

// Rows another transaction holds locked never use up a place in a batch
// and never end a sweep: with the earliest-due steps locked, every other due
// step moves in the same sweep, the locked ones are counted and move in the
// next sweep once released.
func TestLockedRowsNeverUseUpABatch(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		task := testdb.SeedDue(t, pool, 60)
		steps := stepsOfTask(t, pool, task)
		locked := steps[:15]
		// The locked ones are the earliest due, at the head of the schedule.
		_, err := pool.Exec(ctx, `UPDATE tasker.workflow_steps SET last_attempted_at = now() - interval '2 hours'
			WHERE workflow_step_uuid = ANY($1)`, locked)
		require.NoError(t, err)
		sw := mustNew(t, db.NewStore(pool), sweeper.Config{BatchSize: 10, Workers: 2, BatchTimeout: 10 * time.Second})
		scheduleIfAny(t, sw, objects)

		holder, err := pool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = holder.Rollback(ctx) }()
		_, err = holder.Exec(ctx, `SELECT 1 FROM tasker.workflow_steps WHERE workflow_step_uuid = ANY($1) FOR UPDATE`, locked)
		require.NoError(t, err)

		sum, err := sw.RunOnce(ctx, false)
		require.NoError(t, err)
		require.Equal(t, 45, sum.Transitioned, "every unlocked due step moves in this sweep")
		require.EqualValues(t, 15, sum.SkippedLocked)
		states := currentStates(t, pool, steps)
		for i, id := range steps {
			want := "pending"
			if i < len(locked) {
				want = "waiting_for_retry"
			}
			require.Equal(t, want, states[id], "step %d", i)
		}

		require.NoError(t, holder.Rollback(ctx))
		sum, err = sw.RunOnce(ctx, false)
		require.NoError(t, err)
		require.Equal(t, 15, sum.Transitioned, "released, they move on the next sweep")
		require.Zero(t, sum.SkippedLocked)
	})
}

// -infinity, infinity, negative backoffs and an odd transition timestamp
// mean what tasker's readiness rule says, and none of them can fail a batch,
// a sweep, the per-step status or the handler's read.
func TestOddValuesFollowTaskerAndPoisonNothing(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 6})
		minusInf, plusInf, negative, oddCreated, ordinary, nullAttempts := task.Steps[0], task.Steps[1],
			task.Steps[2], task.Steps[3], task.Steps[4], task.Steps[5]
		for _, s := range task.Steps {
			testdb.PlaceInState(t, pool, s, statemachine.WaitingForRetry, 0)
			testdb.SetColumns(t, pool, s, testdb.StepColumns{
				Attempts:         testdb.Ptr[int32](1),
				LastAttemptedAgo: testdb.Ptr(time.Minute), BackoffRequestSeconds: testdb.Ptr[int32](5),
			})
		}
		exec := func(sql string, args ...any) {
			t.Helper()
			_, err := pool.Exec(ctx, sql, args...)
			require.NoError(t, err)
		}
		exec(`UPDATE tasker.workflow_steps SET last_attempted_at = '-infinity' WHERE workflow_step_uuid = $1`, minusInf)
		exec(`UPDATE tasker.workflow_steps SET last_attempted_at = 'infinity' WHERE workflow_step_uuid = $1`, plusInf)
		exec(`UPDATE tasker.workflow_steps SET backoff_request_seconds = -3600, last_attempted_at = now()
			WHERE workflow_step_uuid = $1`, negative)
		exec(`UPDATE tasker.workflow_step_transitions SET created_at = 'infinity'
			WHERE workflow_step_uuid = $1 AND most_recent`, oddCreated)
		exec(`UPDATE tasker.workflow_steps SET attempts = NULL WHERE workflow_step_uuid = $1`, nullAttempts)

		ready := readinessOf(t, pool, []uuid.UUID{task.TaskUUID})
		wantDue := map[uuid.UUID]bool{minusInf: true, plusInf: false, negative: true, oddCreated: true, ordinary: true, nullAttempts: true}
		store := db.NewStore(pool)
		for id, due := range wantDue {
			require.Equal(t, due, ready[id].Ready, "tasker's readiness rule for %s", id)
			status, err := store.StepDueStatus(ctx, id)
			require.NoError(t, err, "the per-step status never fails on an odd value")
			got, why := status.Due()
			require.Equal(t, due, got, why)
			_, err = store.GetStep(ctx, id)
			require.NoError(t, err, "the handler's read never fails on an odd value")
		}
		status, err := store.StepDueStatus(ctx, plusInf)
		require.NoError(t, err)
		require.True(t, status.NeverDue)

		sw := mustNew(t, store, sweeper.Config{BatchSize: 2, Workers: 2, BatchTimeout: 10 * time.Second})
		sum, err := sw.RunOnce(ctx, false)
		require.NoError(t, err, "no odd row fails a batch")
		require.Equal(t, 5, sum.Transitioned)
		require.Zero(t, sum.FailedBatches)
		states := currentStates(t, pool, task.Steps)
		for id, due := range wantDue {
			want := "waiting_for_retry"
			if due {
				want = "pending"
			}
			require.Equal(t, want, states[id], id)
		}

		// A repeated failure report for the infinity step reads it fine.
		h, err := handling.NewService(store, handling.DefaultConfig())
		require.NoError(t, err)
		res, err := h.Handle(ctx, handling.Failure{StepUUID: plusInf, Message: "timeout again"})
		require.NoError(t, err)
		require.Equal(t, handling.ActionNoActionTaken, res.Action)
	})
}

// A step the handler parked, whose schedule row is lost (a restore of the
// tasker schema alone, a truncate), is brought back by a reconcile pass and
// then moves.
func TestReconcileRestoresLostScheduleRows(t *testing.T) {
	t.Parallel()
	pool, sw := afterFirstSweep(t)
	ctx := context.Background()
	store := db.NewStore(pool)
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.EnqueuedAsErrorForOrchestration, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{Attempts: testdb.Ptr[int32](1)})
	h, err := handling.NewService(store, handling.DefaultConfig())
	require.NoError(t, err)
	res, err := h.Handle(ctx, handling.Failure{StepUUID: step, Message: "busy", RetryAfter: "0"})
	require.NoError(t, err)
	require.Equal(t, handling.ActionTransitionedToWaitingForRetry, res.Action)
	_, err = pool.Exec(ctx, `TRUNCATE tasker_sweeper.retry_schedule`)
	require.NoError(t, err)

	sum, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Zero(t, sum.Transitioned, "without its row, the schedule path does not see it")
	dry, err := sw.RunOnce(ctx, true)
	require.NoError(t, err)
	require.Equal(t, 1, dry.Transitioned, "the dry run, evaluated over the tasker tables, does")

	rec, err := sw.Reconcile(ctx, 0)
	require.NoError(t, err)
	require.True(t, rec.Ran)
	require.EqualValues(t, 1, rec.Missing, "the handler-marked step without a row is adopted")
	sum, err = sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Equal(t, 1, sum.Transitioned)
}

// In-place edits of parked steps (a shorter backoff, an earlier
// last_attempted_at, more attempts for a stranded step, retryable switched
// on) are what the reconcile pass corrects, after which the sweep moves
// exactly what tasker's rule calls due; rows of steps moved by another
// writer are dropped.
func TestReconcileCorrectsInPlaceEdits(t *testing.T) {
	t.Parallel()
	pool, sw := afterFirstSweep(t)
	ctx := context.Background()
	task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 7})
	shortened, earlier, stranded, notRetryable, untouched, movedAway, lengthened := task.Steps[0], task.Steps[1],
		task.Steps[2], task.Steps[3], task.Steps[4], task.Steps[5], task.Steps[6]
	for _, s := range task.Steps {
		parkNotDue(t, pool, s) // attempts 1, 600 s backoff from a second ago
	}
	testdb.SetColumns(t, pool, stranded, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](3),
		LastAttemptedAgo: testdb.Ptr(time.Hour),
	})
	testdb.SetColumns(t, pool, notRetryable, testdb.StepColumns{Retryable: testdb.Ptr(false), LastAttemptedAgo: testdb.Ptr(time.Hour)})
	sum, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Zero(t, sum.Transitioned)
	require.EqualValues(t, 2, sum.Stranded)

	// The edits, by a tool or an operator, straight into the tasker tables.
	testdb.SetColumns(t, pool, shortened, testdb.StepColumns{BackoffRequestSeconds: testdb.Ptr[int32](0)})
	testdb.SetColumns(t, pool, earlier, testdb.StepColumns{LastAttemptedAgo: testdb.Ptr(time.Hour)})
	testdb.SetColumns(t, pool, stranded, testdb.StepColumns{MaxAttempts: testdb.Ptr[int32](5)})
	testdb.SetColumns(t, pool, notRetryable, testdb.StepColumns{Retryable: testdb.Ptr(true)})
	testdb.SetColumns(t, pool, lengthened, testdb.StepColumns{BackoffRequestSeconds: testdb.Ptr[int32](3600)})
	_, err = db.NewStore(pool).WriteTransition(ctx, db.Transition{
		StepUUID: movedAway, From: statemachine.WaitingForRetry, Event: statemachine.Event{Type: statemachine.EventCancel},
	})
	require.NoError(t, err)

	sum, err = sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Zero(t, sum.Transitioned, "the schedule still holds the old due times")

	rec, err := sw.Reconcile(ctx, 0)
	require.NoError(t, err)
	require.True(t, rec.Ran)
	require.EqualValues(t, 2, rec.RetimedEarlier, "shortened and earlier")
	require.EqualValues(t, 2, rec.Restranded, "the stranded and the not-retryable step are eligible again")
	require.EqualValues(t, 1, rec.Orphaned, "the cancelled step's row")
	require.Zero(t, rec.Missing)
	require.EqualValues(t, 1, rec.RetimedLater, "the lengthened backoff")
	require.EqualValues(t, 6, rec.Waiting)
	var realDue time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT last_attempted_at + backoff_request_seconds * interval '1 second'
		FROM tasker.workflow_steps WHERE workflow_step_uuid = $1`, lengthened).Scan(&realDue))
	row, ok := scheduleOf(t, pool, lengthened)
	require.True(t, ok)
	require.Equal(t, realDue, row.DueAt, "retimed to the real, later due time")

	ready := readinessOf(t, pool, []uuid.UUID{task.TaskUUID})
	sum, err = sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Equal(t, 4, sum.Transitioned)
	states := currentStates(t, pool, task.Steps)
	for _, s := range []uuid.UUID{shortened, earlier, stranded, notRetryable} {
		require.True(t, ready[s].Ready, "tasker calls it ready")
		require.Equal(t, "pending", states[s])
	}
	require.Equal(t, "waiting_for_retry", states[untouched])
	require.Equal(t, "waiting_for_retry", states[lengthened])

	again, err := sw.Reconcile(ctx, 0)
	require.NoError(t, err)
	require.Zero(t, again.Corrected(), "a second pass finds nothing to correct")
}

// A waiting transition committed late by a transaction that started before
// the last adoption pass (tasker stamps created_at with the transaction's
// start) is still adopted by the next incremental pass: the watermark never
// passes an open transaction's start. The margin is set to 0 so the bound
// is what is tested.
func TestAdoptionWaitsForOpenTransactions(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	sw := mustNew(t, db.NewStore(pool, db.WithAdoptionMargin(0)), sweeper.DefaultConfig())
	_, err := sw.RunOnce(ctx, false) // the first pass reconciles and sets the watermark
	require.NoError(t, err)

	late := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	other := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, late, statemachine.EnqueuedAsErrorForOrchestration, 0)
	testdb.PlaceInState(t, pool, other, statemachine.EnqueuedAsErrorForOrchestration, 0)

	// The orchestrator's transaction: started now, commits after a pass.
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	park := `
WITH retired AS (
    UPDATE tasker.workflow_step_transitions SET most_recent = false
    WHERE workflow_step_uuid = $1 AND most_recent RETURNING sort_key)
INSERT INTO tasker.workflow_step_transitions
    (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
SELECT $1, 'waiting_for_retry', 'enqueued_as_error_for_orchestration', '{}', sort_key + 1, true, now(), now()
FROM retired`
	_, err = tx.Exec(ctx, park, late)
	require.NoError(t, err)

	// Meanwhile another writer parks a step and commits; a pass adopts it
	// (and so advances the watermark) while the first transaction is open.
	_, err = pool.Exec(ctx, park, other)
	require.NoError(t, err)
	sum, err := sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Equal(t, 1, sum.Adopted)
	require.Equal(t, 1, sum.Transitioned)

	require.NoError(t, tx.Commit(ctx))
	sum, err = sw.RunOnce(ctx, false)
	require.NoError(t, err)
	require.Equal(t, 1, sum.Adopted, "the late commit is adopted by the next incremental pass")
	require.Equal(t, 1, sum.Transitioned)
}

// The parity check against tasker's readiness rule, repeated after random
// in-place edits of waiting steps and (on the schedule path) a reconcile:
// each sweep moves exactly the steps the rule calls ready, and nothing else.
func TestParityAfterRandomEditsAndReconcile(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		seed := time.Now().UnixNano()
		t.Logf("seed %d", seed)
		rnd := rand.New(rand.NewPCG(uint64(seed), 1))
		task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 40})
		sw := mustNew(t, db.NewStore(pool), sweeper.Config{BatchSize: 7, Workers: 2, BatchTimeout: 10 * time.Second})
		store := db.NewStore(pool)
		for round := range 4 {
			states := currentStates(t, pool, task.Steps)
			for _, s := range task.Steps {
				switch {
				case rnd.IntN(3) == 0:
					continue // left as it is
				case round == 0:
					testdb.PlaceInState(t, pool, s, statemachine.WaitingForRetry, 0)
				case states[s] == "pending":
					_, err := store.WriteTransition(ctx, db.Transition{
						StepUUID: s, From: statemachine.Pending, Event: statemachine.WaitForRetryEvent("again"),
					})
					require.NoError(t, err)
				}
				_, err := pool.Exec(ctx, `
UPDATE tasker.workflow_steps SET
    attempts = CASE WHEN $2 < 0 THEN NULL ELSE $2 END,
    max_attempts = CASE WHEN $3 < 0 THEN NULL ELSE $3 END,
    retryable = $4,
    processed = $5,
    in_process = $6,
    backoff_request_seconds = CASE WHEN $7 < -50 THEN NULL ELSE $7 END,
    last_attempted_at = CASE WHEN $8 < -500 THEN NULL ELSE now() + make_interval(secs => $8) END
WHERE workflow_step_uuid = $1`, s, rnd.IntN(6)-1, rnd.IntN(6)-1, rnd.IntN(4) > 0, rnd.IntN(10) == 0,
					rnd.IntN(10) == 0, rnd.IntN(200)-60, rnd.IntN(700)-600)
				require.NoError(t, err)
			}
			scheduleIfAny(t, sw, objects)
			ready := readinessOf(t, pool, []uuid.UUID{task.TaskUUID})
			before := currentStates(t, pool, task.Steps)
			sum, err := sw.RunOnce(ctx, false)
			require.NoError(t, err)
			after := currentStates(t, pool, task.Steps)
			want := 0
			for _, s := range task.Steps {
				due := before[s] == "waiting_for_retry" && ready[s].Ready
				if due {
					want++
					require.Equal(t, "pending", after[s], "round %d: tasker calls %s ready", round, s)
				} else {
					require.Equal(t, before[s], after[s], "round %d: %s must not move", round, s)
				}
			}
			require.Equal(t, want, sum.Transitioned, "round %d", round)
			require.Zero(t, sum.SkippedLocked, "round %d", round)
		}
	})
}
