package db_test

// Every state change is a compare-and-swap on the current transition. The
// sweep's move retires a step's current row only while it is still
// waiting_for_retry, so a step another writer moved after the claim is left
// alone and counted as a lost race; the inline handler's write only while
// the step is in the state it decided on.

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/internal/dbsqlc"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// historyRow is every column of a transition row, and its row version:
// xmin changes whenever a statement rewrites the row.
type historyRow struct {
	Xmin       string
	ToState    string
	FromState  *string
	SortKey    int32
	MostRecent bool
	Metadata   map[string]any
	UpdatedAt  time.Time
}

func historyOf(t *testing.T, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, step uuid.UUID,
) []historyRow {
	t.Helper()
	rows, err := q.Query(context.Background(), `
SELECT xmin::text, to_state, from_state, sort_key, most_recent, metadata, updated_at
FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1 ORDER BY sort_key`, step)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[historyRow])
	require.NoError(t, err)
	return out
}

// dueWaitingStep is a waiting_for_retry step whose backoff expired an hour ago.
func dueWaitingStep(t *testing.T, pool *pgxpool.Pool, path []statemachine.State) uuid.UUID {
	t.Helper()
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceHistory(t, pool, step, path, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](1),
	})
	return step
}

func moveParams(steps []uuid.UUID) dbsqlc.SweepMoveToPendingParams {
	dues := make([]time.Time, len(steps))
	for i := range dues {
		dues[i] = time.Now().UTC()
	}
	return dbsqlc.SweepMoveToPendingParams{StepUUIDs: steps, DueAts: dues, Metadata: []byte(`{"actor":"tasker-sweeper/sweep"}`)}
}

// Handed steps that are not waiting any more, the move writes nothing to
// them: not to the current row, not to an old waiting_for_retry row.
func TestMoveLeavesStepsThatAreNoLongerWaiting(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	waiting := dueWaitingStep(t, pool, testdb.History(statemachine.WaitingForRetry))
	// Retried by someone else and running again: its waiting row is history.
	retried := dueWaitingStep(t, pool, append(testdb.History(statemachine.WaitingForRetry),
		statemachine.Pending, statemachine.Enqueued, statemachine.InProgress))
	complete := dueWaitingStep(t, pool, testdb.History(statemachine.Complete))
	before := map[uuid.UUID][]historyRow{retried: historyOf(t, pool, retried), complete: historyOf(t, pool, complete)}

	moved, err := dbsqlc.New(pool).SweepMoveToPending(ctx, moveParams([]uuid.UUID{waiting, retried, complete}))
	require.NoError(t, err)
	require.Len(t, moved, 1)
	require.Equal(t, waiting, moved[0].WorkflowStepUUID)
	for step, rows := range before {
		require.Equal(t, rows, historyOf(t, pool, step), "a step that is not waiting is not written")
	}
	rows := historyOf(t, pool, waiting)
	last := rows[len(rows)-1]
	require.Equal(t, "pending", last.ToState)
	require.True(t, last.MostRecent)
}

// Another writer moves a claimed step before the batch moves it: the batch
// moves the others and leaves that one as the writer left it, a lost race.
func TestWriterBetweenClaimAndMoveWins(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		var steps []uuid.UUID
		for range 3 {
			steps = append(steps, dueWaitingStep(t, pool, testdb.History(statemachine.WaitingForRetry)))
		}
		if objects == testdb.WithSweeperObjects {
			_, err := pool.Exec(ctx, `INSERT INTO tasker_sweeper.retry_schedule (workflow_step_uuid, due_at)
				SELECT unnest($1::uuid[]), now() - interval '1 second'`, steps)
			require.NoError(t, err)
		}
		raced := steps[1]

		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(ctx) }()
		q := dbsqlc.New(tx)
		var claimed []uuid.UUID
		if objects == testdb.WithSweeperObjects {
			rows, err := q.ScheduleClaimDue(ctx, dbsqlc.ScheduleClaimDueParams{BatchLimit: 10})
			require.NoError(t, err)
			for _, r := range rows {
				claimed = append(claimed, r.WorkflowStepUUID)
			}
		} else {
			rows, err := q.SweepClaimDue(ctx, dbsqlc.SweepClaimDueParams{BatchLimit: 10})
			require.NoError(t, err)
			for _, r := range rows {
				claimed = append(claimed, r.WorkflowStepUUID)
			}
		}
		require.ElementsMatch(t, steps, claimed)

		// The claim's locks keep well-behaved writers out; this one writes
		// in the batch's own transaction, as if it had got in anyway.
		_, err = q.TransitionWrite(ctx, dbsqlc.TransitionWriteParams{
			WorkflowStepUUID: raced, FromState: "waiting_for_retry", ToState: "pending",
			Metadata: []byte(`{"actor":"another-writer"}`),
		})
		require.NoError(t, err)
		racedRows := historyOf(t, tx, raced)

		moved, err := q.SweepMoveToPending(ctx, moveParams(claimed))
		require.NoError(t, err)
		var movedSteps []uuid.UUID
		for _, m := range moved {
			movedSteps = append(movedSteps, m.WorkflowStepUUID)
		}
		require.ElementsMatch(t, []uuid.UUID{steps[0], steps[2]}, movedSteps)
		require.Equal(t, 1, len(claimed)-len(moved), "one lost race")
		require.Equal(t, racedRows, historyOf(t, tx, raced), "the other writer's move stands alone")
		require.NoError(t, tx.Commit(ctx))

		rows := historyOf(t, pool, raced)
		last := rows[len(rows)-1]
		require.Equal(t, "another-writer", last.Metadata["actor"])
		require.Len(t, rows, len(testdb.History(statemachine.WaitingForRetry))+1)
	})
}

// The inline handler decided on a state the step has since left: its write
// is a lost race and writes nothing, not the transition, not the backoff
// columns, not the schedule row.
func TestApplyFailureOnALeftStateWritesNothing(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
		testdb.PlaceInState(t, pool, step, statemachine.Complete, 0)
		stepRow := func() string {
			var row string
			require.NoError(t, pool.QueryRow(ctx, `SELECT xmin::text || ' ' || ws::text FROM tasker.workflow_steps ws
				WHERE workflow_step_uuid = $1`, step).Scan(&row))
			return row
		}
		before, beforeRow := historyOf(t, pool, step), stepRow()

		event := statemachine.WaitForRetryEvent("upstream hiccup")
		_, err := db.NewStore(pool).ApplyFailure(ctx, handling.FailureWrite{
			StepUUID: step, From: statemachine.EnqueuedAsErrorForOrchestration, Event: &event,
			BackoffSeconds: testdb.Ptr[int32](5),
		})
		require.ErrorIs(t, err, statemachine.ErrLostRace)
		require.Equal(t, before, historyOf(t, pool, step))
		require.Equal(t, beforeRow, stepRow())
		if objects == testdb.WithSweeperObjects {
			var scheduled bool
			require.NoError(t, pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tasker_sweeper.retry_schedule
				WHERE workflow_step_uuid = $1)`, step).Scan(&scheduled))
			require.False(t, scheduled)
		}
	})
}
