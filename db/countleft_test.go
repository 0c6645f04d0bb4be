package db_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// CountDueLeft (what a sweep reports as skipped_locked) counts exactly the
// steps the due rule calls due, whatever the schedule's rows say: a
// stranded, a processed, an in-process, a blocked and a not-yet-due step
// with overdue schedule rows are not counted; a due one is.
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
		park(testdb.StepColumns{Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](3)}) // stranded
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
		require.EqualValues(t, 1, left)
	})
}
