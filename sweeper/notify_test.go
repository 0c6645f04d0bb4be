package sweeper_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// With a notify channel, a listener hears the task ids of every moved step,
// in payloads under PostgreSQL's 8000-byte limit, and only after commit.
func TestSweepNotifiesTaskIDs(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	ctx := context.Background()

	// 400 tasks with one due step each: more task ids than fit one payload.
	const tasks = 400
	want := map[string]bool{}
	for range tasks {
		task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1})
		testdb.PlaceInState(t, pool, task.Steps[0], statemachine.WaitingForRetry, 0)
		testdb.SetColumns(t, pool, task.Steps[0], testdb.StepColumns{Attempts: testdb.Ptr[int32](1)})
		want[task.TaskUUID.String()] = true
	}

	listener, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer func() { _ = listener.Close(ctx) }()
	_, err = listener.Exec(ctx, `LISTEN steps_ready`)
	require.NoError(t, err)

	cfg := sweeper.Config{BatchSize: 1000, Workers: 1, BatchTimeout: 10 * time.Second, NotifyChannel: "steps_ready"}
	sum, err := mustNew(t, db.NewStore(pool), cfg).RunOnce(ctx, false)
	require.NoError(t, err)
	require.Equal(t, tasks, sum.Transitioned)

	got := map[string]bool{}
	payloads := 0
	for len(got) < tasks {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := listener.WaitForNotification(wctx)
		cancel()
		require.NoError(t, err, "heard %d of %d task ids", len(got), tasks)
		require.Less(t, len(n.Payload), 8000)
		var p struct {
			SweepID   uuid.UUID `json:"sweep_id"`
			TaskUUIDs []string  `json:"task_uuids"`
		}
		require.NoError(t, json.Unmarshal([]byte(n.Payload), &p))
		require.Equal(t, sum.SweepID, p.SweepID)
		for _, id := range p.TaskUUIDs {
			require.True(t, want[id], "unexpected task id %s", id)
			got[id] = true
		}
		payloads++
	}
	require.Greater(t, payloads, 1, "400 task ids need more than one payload")
}
