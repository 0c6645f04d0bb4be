package sweeper_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// The due rule's clock can be pinned (db.WithClock) instead of rewriting
// rows: a step whose backoff ends in ten minutes is not due now, and is due,
// moved and explained as due by a store whose clock is eleven minutes ahead.
// The move itself is stamped with the database clock.
func TestPinnedClockDecidesWhatIsDue(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
		parkNotDue(t, pool, step) // 600 s backoff from a second ago

		now := mustNew(t, db.NewStore(pool), sweeper.DefaultConfig())
		scheduleIfAny(t, now, objects)
		sum, err := now.RunOnce(ctx, false)
		require.NoError(t, err)
		require.Zero(t, sum.Transitioned)

		ahead := db.NewStore(pool, db.WithClock(func() time.Time { return time.Now().Add(11 * time.Minute) }))
		status, err := ahead.StepDueStatus(ctx, step)
		require.NoError(t, err)
		due, why := status.Due()
		require.True(t, due, why)
		later := mustNew(t, ahead, sweeper.DefaultConfig())
		dry, err := later.RunOnce(ctx, true)
		require.NoError(t, err)
		require.Equal(t, 1, dry.Transitioned)
		sum, err = later.RunOnce(ctx, false)
		require.NoError(t, err)
		require.Equal(t, 1, sum.Transitioned)
		var movedAt time.Time
		require.NoError(t, pool.QueryRow(ctx, `SELECT created_at FROM tasker.workflow_step_transitions
			WHERE workflow_step_uuid = $1 AND most_recent AND to_state = 'pending'`, step).Scan(&movedAt))
		require.WithinDuration(t, time.Now().UTC(), movedAt, time.Minute, "writes keep the database clock")
	})
}
