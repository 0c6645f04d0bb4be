package sweeper_test

// Tests that pin down conditions of the due rule and of the claims which the
// broader tests above could lose without failing (`make mutants` found them):
// each claim query must apply the whole rule by itself, whatever ran before it.

import (
	"context"
	"fmt"
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

// staleSchedule gives every step a schedule row that says it is due now and
// not stranded, whatever the step's real state: the schedule is only a hint.
func staleSchedule(t *testing.T, pool *pgxpool.Pool, steps []uuid.UUID) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `
INSERT INTO tasker_sweeper.retry_schedule (workflow_step_uuid, due_at, stranded, updated_at)
SELECT unnest($1::uuid[]), now() - interval '1 second', false, now()
ON CONFLICT (workflow_step_uuid) DO UPDATE SET due_at = excluded.due_at, stranded = false, updated_at = now()`, steps)
	require.NoError(t, err)
}

func stepsOf(fx []ruleFixture) []uuid.UUID {
	out := make([]uuid.UUID, len(fx))
	for i, f := range fx {
		out[i] = f.step
	}
	return out
}

// A batch's claim re-checks the whole due rule on its own. A sweep usually
// re-evaluates stale schedule rows before it claims, but only a page of them,
// and a row can turn stale between that pass and the claim (or be claimed by
// another replica's batch): the claim is what keeps a stranded, blocked,
// busy or not-yet-due step where it is.
func TestClaimAppliesTheRuleBehindAStaleSchedule(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		fx := buildRuleFixtures(t, pool)
		if objects == testdb.WithSweeperObjects {
			staleSchedule(t, pool, stepsOf(fx))
		}
		snaps := map[uuid.UUID]stepSnapshot{}
		for _, f := range fx {
			snaps[f.step] = snapshot(t, pool, f.step)
		}

		store := db.NewStore(pool)
		res, err := store.MoveDueBatch(ctx, sweeper.Batch{SweepID: uuid.New(), Number: 1, Limit: 1000})
		require.NoError(t, err)
		moved := map[uuid.UUID]bool{}
		for _, m := range res.Moved {
			moved[m.StepUUID] = true
		}
		var wantMoved int
		for _, f := range fx {
			require.Equal(t, f.due, moved[f.step], "claim of %q", f.name)
			if f.due {
				wantMoved++
				require.Equal(t, "pending", snapshot(t, pool, f.step).Current, f.name)
			} else {
				require.Equal(t, snaps[f.step], snapshot(t, pool, f.step), "%q must be untouched", f.name)
			}
		}
		require.Equal(t, wantMoved, res.Claimed, "the claim returns only steps it can move: no lost races")

		// The moved steps have a waiting_for_retry row in their history now;
		// only the current row counts, so a second claim finds nothing.
		if objects == testdb.WithSweeperObjects {
			staleSchedule(t, pool, stepsOf(fx))
		}
		again, err := store.MoveDueBatch(ctx, sweeper.Batch{SweepID: uuid.New(), Number: 1, Limit: 1000})
		require.NoError(t, err)
		require.Zero(t, again.Claimed)
		counts, err := store.CountDue(ctx)
		require.NoError(t, err)
		require.Zero(t, counts.Due, "nothing is due after the move")
		require.Equal(t, int64(3), counts.Stranded, "the three stranded fixtures, each once")
	})
}

// The admin API's retry (Sweeper.MoveStep) applies the same rule to one
// step; force releases only the due time, never the other conditions.
func TestManualRetryAppliesTheWholeRule(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		fx := buildRuleFixtures(t, pool)
		sw := newSweeper(t, pool)
		snaps := map[uuid.UUID]stepSnapshot{}
		for _, f := range fx {
			snaps[f.step] = snapshot(t, pool, f.step)
		}

		for _, f := range fx {
			_, err := sw.MoveStep(ctx, f.step, false)
			if f.due {
				require.NoError(t, err, f.name)
				require.Equal(t, "pending", snapshot(t, pool, f.step).Current, f.name)
				continue
			}
			require.ErrorIs(t, err, sweeper.ErrNotDue, f.name)
			require.Equal(t, snaps[f.step], snapshot(t, pool, f.step), "%q must be untouched", f.name)
		}

		// Forced: the steps held back only by their due time move; every
		// other condition still holds the rest, including the steps just
		// moved, whose waiting_for_retry row is history now.
		onlyTime := map[string]bool{"backoff not expired": true, "backoff NULL, recent error transition": true}
		for _, f := range fx {
			before := snapshot(t, pool, f.step)
			_, err := sw.MoveStep(ctx, f.step, true)
			if onlyTime[f.name] {
				require.NoError(t, err, f.name)
				require.Equal(t, "pending", snapshot(t, pool, f.step).Current, f.name)
				continue
			}
			require.ErrorIs(t, err, sweeper.ErrNotDue, "forced retry of %q", f.name)
			require.Equal(t, before, snapshot(t, pool, f.step), "%q must be untouched", f.name)
		}
	})
}

// A step whose parent is not finished is refused a manual retry, forced or
// not, until the parent completes.
func TestManualRetryWaitsForParents(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 2, Edges: [][2]int{{0, 1}}})
		parent, child := task.Steps[0], task.Steps[1]
		testdb.PlaceHistory(t, pool, parent, testdb.History(statemachine.InProgress), 0)
		testdb.PlaceHistory(t, pool, child, toWaiting, 0)
		testdb.SetColumns(t, pool, child, testdb.StepColumns{
			Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](1),
		})
		sw := newSweeper(t, pool)
		before := snapshot(t, pool, child)
		for _, force := range []bool{false, true} {
			_, err := sw.MoveStep(ctx, child, force)
			require.ErrorIs(t, err, sweeper.ErrNotDue, "force=%v", force)
		}
		require.Equal(t, before, snapshot(t, pool, child))

		_, err := pool.Exec(ctx, `
WITH retired AS (
    UPDATE tasker.workflow_step_transitions SET most_recent = false
    WHERE workflow_step_uuid = $1 AND most_recent RETURNING sort_key
)
INSERT INTO tasker.workflow_step_transitions (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
SELECT $1, 'complete', 'in_progress', '{}', sort_key + 1, true, now(), now() FROM retired`, parent)
		require.NoError(t, err)
		_, err = sw.MoveStep(ctx, child, false)
		require.NoError(t, err, "the parent completed: the child is due")
	})
}

// errorFallbackStep is a waiting step with no backoff columns and attempts
// of 10, whose last error was errorAgo ago: due min(2^attempts, 60) s after it.
func errorFallbackStep(t *testing.T, pool *pgxpool.Pool, attempts int32, errorAgo time.Duration) (step uuid.UUID, dueAt time.Time) {
	t.Helper()
	step = testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceHistory(t, pool, step, erroredThenWaiting, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{Attempts: testdb.Ptr(attempts), MaxAttempts: testdb.Ptr[int32](10)})
	require.NoError(t, pool.QueryRow(context.Background(), `
UPDATE tasker.workflow_step_transitions SET created_at = now() - make_interval(secs => $2)
WHERE workflow_step_uuid = $1 AND to_state = 'error'
RETURNING created_at + least(power(2, $3::integer) * interval '1 second', interval '60 seconds')`,
		step, errorAgo.Seconds(), attempts).Scan(&dueAt))
	return step, dueAt
}

// Without backoff columns a step is due min(2^attempts, 60) s after its
// last error, exactly, in every query that computes it. With 6 attempts an
// error 40 s ago is due in 20 s (2^5 s would make it due already); with 5
// attempts one 45 s ago is due (3^5 s, or 2^6 s, would not be).
func TestErrorFallbackDueTime(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		store := db.NewStore(pool)
		sw := newSweeper(t, pool)
		notYet, notYetDue := errorFallbackStep(t, pool, 6, 40*time.Second)
		swept, sweptDue := errorFallbackStep(t, pool, 5, 45*time.Second)
		manual, _ := errorFallbackStep(t, pool, 5, 45*time.Second)
		notYetManual, notYetManualDue := errorFallbackStep(t, pool, 6, 40*time.Second)
		nextDue := notYetDue
		if notYetManualDue.Before(nextDue) {
			nextDue = notYetManualDue
		}

		for step, want := range map[uuid.UUID]time.Time{notYet: notYetDue, swept: sweptDue} {
			status, err := store.StepDueStatus(ctx, step)
			require.NoError(t, err)
			require.Equal(t, want, status.DueAt)
			due, reason := status.Due()
			require.Equal(t, step == swept, due, reason)
		}
		counts, err := store.CountDue(ctx)
		require.NoError(t, err)
		require.Equal(t, sweeper.DueCounts{Due: 2, NotYetDue: 2, NextDueAt: nextDue}, counts)

		_, err = sw.MoveStep(ctx, notYetManual, false)
		require.ErrorIs(t, err, sweeper.ErrNotDue)
		_, err = sw.MoveStep(ctx, manual, false)
		require.NoError(t, err)

		if objects == testdb.WithSweeperObjects {
			// Adoption schedules each step at its real due time.
			adopted, err := store.Reconcile(ctx, 0)
			require.NoError(t, err)
			require.EqualValues(t, 3, adopted.Missing)
			for step, want := range map[uuid.UUID]time.Time{notYet: notYetDue, swept: sweptDue} {
				row, ok := scheduleOf(t, pool, step)
				require.True(t, ok)
				require.Equal(t, want, row.DueAt)
			}
		}
		sum, err := sw.RunOnce(ctx, false)
		require.NoError(t, err)
		require.Equal(t, 1, sum.Transitioned)
		require.Equal(t, "pending", snapshot(t, pool, swept).Current)
		require.Equal(t, "waiting_for_retry", snapshot(t, pool, notYet).Current)

		if objects == testdb.WithSweeperObjects {
			// A stale hint: the claim still goes by the real due time, and
			// the hint is moved to it.
			staleSchedule(t, pool, []uuid.UUID{notYet})
			batch, err := store.MoveDueBatch(ctx, sweeper.Batch{SweepID: uuid.New(), Number: 1, Limit: 10})
			require.NoError(t, err)
			require.Zero(t, batch.Claimed)
			res, err := store.Prepare(ctx)
			require.NoError(t, err)
			require.Equal(t, [2]int{0, 1}, [2]int{res.Dropped, res.Deferred}, "dropped, deferred")
			row, ok := scheduleOf(t, pool, notYet)
			require.True(t, ok)
			require.Equal(t, notYetDue, row.DueAt)
		}
	})
}

// Rows another transaction holds are skipped, never waited for: the sweep
// moves everything else and a manual retry of a held step is refused at once.
func TestClaimsSkipLockedRows(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		var steps []uuid.UUID
		for range 4 {
			step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
			testdb.PlaceHistory(t, pool, step, toWaiting, 0)
			testdb.SetColumns(t, pool, step, testdb.StepColumns{
				Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](1),
			})
			steps = append(steps, step)
		}
		store := db.NewStore(pool)
		if objects == testdb.WithSweeperObjects {
			adopted, err := store.Reconcile(ctx, 0)
			require.NoError(t, err)
			require.EqualValues(t, len(steps), adopted.Missing)
		}

		// The orchestrator holds one step row; on the schedule path another
		// replica's batch holds a second step's schedule row.
		held := []uuid.UUID{steps[0]}
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(ctx) }()
		_, err = tx.Exec(ctx, `SELECT 1 FROM tasker.workflow_steps WHERE workflow_step_uuid = $1 FOR UPDATE`, steps[0])
		require.NoError(t, err)
		if objects == testdb.WithSweeperObjects {
			held = append(held, steps[1])
			_, err = tx.Exec(ctx, `SELECT 1 FROM tasker_sweeper.retry_schedule WHERE workflow_step_uuid = $1 FOR UPDATE`, steps[1])
			require.NoError(t, err)
		}

		// A claim that waited would run into the batch timeout.
		sw := mustNew(t, store, sweeper.Config{BatchSize: 10, Workers: 1, BatchTimeout: 10 * time.Second})
		sum, err := sw.RunOnce(ctx, false)
		require.NoError(t, err)
		require.Equal(t, len(steps)-len(held), sum.Transitioned)
		for _, step := range held {
			require.Equal(t, "waiting_for_retry", snapshot(t, pool, step).Current)
		}
		_, err = sw.MoveStep(ctx, steps[0], false)
		require.ErrorIs(t, err, sweeper.ErrNotDue, "a held step is skipped, not waited for")

		require.NoError(t, tx.Rollback(ctx))
		sum, err = sw.RunOnce(ctx, false)
		require.NoError(t, err)
		require.Equal(t, len(held), sum.Transitioned, "released rows move on the next sweep")
	})
}

// Adoption schedules a waiting step at its real due time: the backoff when
// both columns are set, otherwise when it was parked; a step that is not
// retry-eligible (attempts used up, or not retryable after a first attempt)
// is marked stranded, one on its first attempt is not, even when it is not
// retryable. Both ways a row joins from the tables are
// checked: the reconcile pass and the adoption pass.
func TestAdoptionSchedulesAtTheRealDueTime(t *testing.T) {
	t.Parallel()
	for _, pass := range []string{"reconcile", "adoption"} {
		t.Run(pass, func(t *testing.T) {
			t.Parallel()
			pool := testdb.New(t)
			ctx := context.Background()
			store := db.NewStore(pool)
			if pass == "adoption" {
				// The first pass on a new database reconciles and sets the
				// watermark; the steps below are parked after it.
				_, err := store.Adopt(ctx)
				require.NoError(t, err)
			}
			i32 := testdb.Ptr[int32]
			park := func(cols testdb.StepColumns) uuid.UUID {
				step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
				testdb.PlaceHistory(t, pool, step, toWaiting, 0)
				testdb.SetColumns(t, pool, step, cols)
				return step
			}
			backoff := park(testdb.StepColumns{Attempts: i32(1), LastAttemptedAgo: testdb.Ptr(10 * time.Second), BackoffRequestSeconds: i32(600)})
			expired := park(testdb.StepColumns{Attempts: i32(1), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: i32(1)})
			noBackoff := park(testdb.StepColumns{Attempts: i32(1)})
			stranded := park(testdb.StepColumns{Attempts: i32(3), MaxAttempts: i32(3), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: i32(1)})
			firstAttempt := park(testdb.StepColumns{Attempts: i32(0), Retryable: testdb.Ptr(false), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: i32(1)})
			notRetryable := park(testdb.StepColumns{Attempts: i32(1), Retryable: testdb.Ptr(false), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: i32(1)})
			// Waited once, retried, running again: not waiting, not adopted.
			running := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
			testdb.PlaceHistory(t, pool, running, append(testdb.History(statemachine.WaitingForRetry),
				statemachine.Pending, statemachine.Enqueued, statemachine.InProgress), 0)

			var joined int64
			if pass == "adoption" {
				adopted, err := store.Adopt(ctx)
				require.NoError(t, err)
				require.Nil(t, adopted.Reconciled, "an adoption pass, not a reconcile")
				joined = int64(adopted.Adopted)
			} else {
				rec, err := store.Reconcile(ctx, 0)
				require.NoError(t, err)
				joined = rec.Missing
			}
			require.EqualValues(t, 6, joined)
			_, ok := scheduleOf(t, pool, running)
			require.False(t, ok, "only a current waiting_for_retry row is adopted")
			dueAt := `SELECT last_attempted_at + backoff_request_seconds * interval '1 second', %s FROM tasker.workflow_steps WHERE workflow_step_uuid = $1`
			for step, want := range map[uuid.UUID]string{
				backoff:      fmt.Sprintf(dueAt, "false"),
				expired:      fmt.Sprintf(dueAt, "false"),
				noBackoff:    `SELECT created_at, false FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1 AND most_recent`,
				stranded:     fmt.Sprintf(dueAt, "true"),
				firstAttempt: fmt.Sprintf(dueAt, "false"),
				notRetryable: fmt.Sprintf(dueAt, "true"),
			} {
				var wantRow scheduleRow
				require.NoError(t, pool.QueryRow(ctx, want, step).Scan(&wantRow.DueAt, &wantRow.Stranded))
				row, ok := scheduleOf(t, pool, step)
				require.True(t, ok)
				require.Equal(t, wantRow, row, want)
			}
		})
	}
}

// Re-evaluating stale schedule rows, a step whose parent is not finished
// (no transitions at all counts as pending) is blocked and re-checked
// later; one whose parent completed or was resolved is movable and left
// for the claim.
func TestRescheduleJudgesParents(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		parent  *statemachine.State // nil: no transitions
		blocked bool
	}{
		"parent without transitions": {nil, true},
		"parent in_progress":         {testdb.Ptr(statemachine.InProgress), true},
		"parent complete":            {testdb.Ptr(statemachine.Complete), false},
		"parent resolved_manually":   {testdb.Ptr(statemachine.ResolvedManually), false},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pool := testdb.New(t)
			ctx := context.Background()
			task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 2, Edges: [][2]int{{0, 1}}})
			if tc.parent != nil {
				testdb.PlaceInState(t, pool, task.Steps[0], *tc.parent, 0)
			}
			child := task.Steps[1]
			testdb.PlaceHistory(t, pool, child, toWaiting, 0)
			testdb.SetColumns(t, pool, child, testdb.StepColumns{
				Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](1),
			})
			store := db.NewStore(pool)
			_, err := store.Reconcile(ctx, 0) // past the first pass, which would reconcile the stale row
			require.NoError(t, err)
			staleSchedule(t, pool, []uuid.UUID{child})
			before, _ := scheduleOf(t, pool, child)

			res, err := store.Prepare(ctx)
			require.NoError(t, err)
			row, ok := scheduleOf(t, pool, child)
			require.True(t, ok)
			require.False(t, row.Stranded)
			if !tc.blocked {
				require.Equal(t, [2]int{0, 0}, [2]int{res.Dropped, res.Deferred}, "dropped, deferred")
				require.Equal(t, before, row, "a movable row is left for the claim")
				return
			}
			require.Equal(t, [2]int{0, 1}, [2]int{res.Dropped, res.Deferred}, "dropped, deferred")
			require.True(t, row.DueAt.After(time.Now().UTC().Add(20*time.Second)), "a blocked step is re-checked later")
		})
	}
}

// Re-evaluating stale schedule rows, a due step the orchestrator has
// processed or is working on is blocked, so its row is re-checked later
// instead of being walked past by every batch; the same step free again is
// left for the claim.
func TestRescheduleDefersBusySteps(t *testing.T) {
	t.Parallel()
	for name, cols := range map[string]testdb.StepColumns{
		"processed":  {Processed: testdb.Ptr(true)},
		"in process": {InProcess: testdb.Ptr(true)},
		"free":       {},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pool := testdb.New(t)
			ctx := context.Background()
			step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
			testdb.PlaceHistory(t, pool, step, toWaiting, 0)
			testdb.SetColumns(t, pool, step, testdb.StepColumns{
				Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](1),
			})
			testdb.SetColumns(t, pool, step, cols)
			store := db.NewStore(pool)
			_, err := store.Reconcile(ctx, 0) // past the first pass, which would reconcile the stale row
			require.NoError(t, err)
			staleSchedule(t, pool, []uuid.UUID{step})
			before, _ := scheduleOf(t, pool, step)

			res, err := store.Prepare(ctx)
			require.NoError(t, err)
			row, ok := scheduleOf(t, pool, step)
			require.True(t, ok)
			if cols == (testdb.StepColumns{}) {
				require.Equal(t, [2]int{0, 0}, [2]int{res.Dropped, res.Deferred}, "dropped, deferred")
				require.Equal(t, before, row, "a movable row is left for the claim")
				return
			}
			require.Equal(t, [2]int{0, 1}, [2]int{res.Dropped, res.Deferred}, "dropped, deferred")
			require.True(t, row.DueAt.After(time.Now().UTC().Add(20*time.Second)), "a busy step is re-checked later")
			require.False(t, row.Stranded, "busy is not stranded")
		})
	}
}
