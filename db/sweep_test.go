package db_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/internal/dbsqlc"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// The due condition is "next retry time <= now()": a step whose backoff
// expires exactly at the claiming transaction's now() is due. now() is fixed
// for a transaction, so setting the columns and claiming in one transaction
// hits the boundary exactly; one microsecond later is not due.
func TestClaimDueAtExactlyNow(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 2})
	for _, step := range task.Steps {
		testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	}
	atNow, justAfter := task.Steps[0], task.Steps[1]

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `
UPDATE tasker.workflow_steps
SET attempts = 1, backoff_request_seconds = 30,
    last_attempted_at = now() - interval '30 seconds' + CASE WHEN workflow_step_uuid = $2 THEN interval '1 microsecond' ELSE interval '0' END
WHERE task_uuid = $1`, task.TaskUUID, justAfter)
	require.NoError(t, err)

	claimed, err := dbsqlc.New(tx).SweepClaimDue(ctx, dbsqlc.SweepClaimDueParams{BatchLimit: 10})
	require.NoError(t, err)
	require.Len(t, claimed, 1)
	require.Equal(t, atNow, claimed[0].WorkflowStepUUID)

	dbNow := claimed[0].DueAt
	now := dbNow
	require.NoError(t, tx.QueryRow(ctx, `SELECT now()::timestamp`).Scan(&now))
	require.Equal(t, now, dbNow, "due_at is exactly the transaction's now()")
}

// A step without transitions is pending; its due status must still answer
// (it used to fail scanning a NULL due time).
func TestStepDueStatusWithoutTransitions(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	due, err := db.NewStore(pool).StepDueStatus(context.Background(), step)
	require.NoError(t, err)
	require.Equal(t, statemachine.Pending, due.State)
	ok, reason := due.Due()
	require.False(t, ok)
	require.Contains(t, reason, "not waiting_for_retry")
}
