package db_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// CountDueLeft (what a sweep reports as skipped_locked) counts exactly the
// steps the due rule calls due, whatever the schedule's rows say: a
// stranded, a processed, an in-process, a blocked and a not-yet-due step
// with overdue schedule rows are not counted; a due one is, and so is one
// on its first attempt that is not retryable.
func TestCountDueLeftAppliesTheWholeRule(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		expired := testdb.StepColumns{
			Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Hour),
			BackoffRequestSeconds: testdb.Ptr[int32](1),
		}
		park := func(cols ...testdb.StepColumns) {
			step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
			testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
			testdb.SetColumns(t, pool, step, expired)
			for _, c := range cols {
				testdb.SetColumns(t, pool, step, c)
			}
		}
		park()                                                                                      // due
		park(testdb.StepColumns{Attempts: testdb.Ptr[int32](0), Retryable: testdb.Ptr(false)})      // due: a first attempt is eligible
		park(testdb.StepColumns{Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](3)}) // stranded
		park(testdb.StepColumns{Retryable: testdb.Ptr(false)})                                      // stranded: not retryable
		park(testdb.StepColumns{Processed: testdb.Ptr(true)})
		park(testdb.StepColumns{InProcess: testdb.Ptr(true)})
		park(testdb.StepColumns{LastAttemptedAgo: testdb.Ptr(time.Second), BackoffRequestSeconds: testdb.Ptr[int32](600)})
		blocked := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 2, Edges: [][2]int{{0, 1}}})
		testdb.PlaceInState(t, pool, blocked.Steps[0], statemachine.InProgress, 0)
		testdb.PlaceInState(t, pool, blocked.Steps[1], statemachine.WaitingForRetry, 0)
		testdb.SetColumns(t, pool, blocked.Steps[1], expired)
		if objects == testdb.WithSweeperObjects {
			// Every waiting step has an overdue row, as a stale schedule would.
			_, err := pool.Exec(ctx, `INSERT INTO tasker_sweeper.retry_schedule (workflow_step_uuid, due_at)
				SELECT workflow_step_uuid, now() - interval '1 minute' FROM tasker.workflow_step_transitions
				WHERE most_recent AND to_state = 'waiting_for_retry'`)
			require.NoError(t, err)
		}
		left, err := db.NewStore(pool).CountDueLeft(ctx)
		require.NoError(t, err)
		require.EqualValues(t, 2, left)
	})
}

// Stranded means waiting but not retry-eligible: attempts used up, or not
// retryable after a first attempt. A step on its first attempt is eligible
// whatever its retryable flag says, and one under its attempts is too.
func TestStrandedIsWhatTheRuleCannotRetry(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		park := func(c testdb.StepColumns) uuid.UUID {
			step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
			testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
			c.LastAttemptedAgo, c.BackoffRequestSeconds = testdb.Ptr(time.Hour), testdb.Ptr[int32](1)
			testdb.SetColumns(t, pool, step, c)
			return step
		}
		i32 := testdb.Ptr[int32]
		usedUp := park(testdb.StepColumns{Attempts: i32(3), MaxAttempts: i32(3)})
		notRetryable := park(testdb.StepColumns{Attempts: i32(1), Retryable: testdb.Ptr(false)})
		park(testdb.StepColumns{Attempts: i32(0), Retryable: testdb.Ptr(false)}) // first attempt
		park(testdb.StepColumns{Attempts: i32(2), NullMaxAttempts: true})        // tasker's default of 3
		nullMaxUsedUp := park(testdb.StepColumns{Attempts: i32(3), NullMaxAttempts: true})
		store := db.NewStore(pool)
		if objects == testdb.WithSweeperObjects {
			_, err := store.Reconcile(ctx, 0)
			require.NoError(t, err)
		}
		count, sample, err := store.Stranded(ctx, 10)
		require.NoError(t, err)
		require.EqualValues(t, 3, count)
		got := make([]uuid.UUID, 0, len(sample))
		for _, s := range sample {
			got = append(got, s.StepUUID)
		}
		require.ElementsMatch(t, []uuid.UUID{usedUp, notRetryable, nullMaxUsedUp}, got)
	})
}
