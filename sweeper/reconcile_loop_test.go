package sweeper_test

import (
	"context"
	"sync"
	"sync/atomic"
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

// parkOutsideWindow makes one step waiting_for_retry the way another writer
// would, with a transition older than any incremental adoption window, and
// makes a reconcile pass due.
func parkOutsideWindow(t *testing.T, pool *pgxpool.Pool) uuid.UUID {
	t.Helper()
	ctx := context.Background()
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Second), BackoffRequestSeconds: testdb.Ptr[int32](600),
	})
	_, err := pool.Exec(ctx, `UPDATE tasker.workflow_step_transitions SET created_at = created_at - interval '1 hour'
		WHERE workflow_step_uuid = $1`, step)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `UPDATE tasker_sweeper.adoption
		SET watermark = now(), last_full_pass = now() - interval '1 hour'`)
	require.NoError(t, err)
	return step
}

type passOutcome struct {
	res sweeper.Reconciliation
	err error
}

// A reconcile pass runs at once when started, adopts a step no sweep
// would see, reports it, and the loop stops with its context.
func TestRunReconcileAdoptsOldSteps(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	step := parkOutsideWindow(t, pool)
	sw := mustNew(t, db.NewStore(pool), sweeper.DefaultConfig())

	passes := make(chan passOutcome, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		sw.RunReconcile(ctx, sweeper.ReconcileOptions{
			OnPassDone: func(res sweeper.Reconciliation, err error) { passes <- passOutcome{res, err} },
		})
	}()
	select {
	case p := <-passes:
		require.NoError(t, p.err)
		require.True(t, p.res.Ran)
		require.EqualValues(t, 1, p.res.Missing)
		require.EqualValues(t, 1, p.res.Waiting)
	case <-time.After(10 * time.Second):
		t.Fatal("no full pass within 10 s of the start")
	}
	_, ok := scheduleOf(t, pool, step)
	require.True(t, ok, "the pass put the old step on the schedule")

	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the loop did not stop with its context")
	}
}

// While the database is reported down, no pass runs; checks keep coming at
// the interval and the first one after it is back adopts.
func TestRunReconcileWaitsForTheDatabase(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	step := parkOutsideWindow(t, pool)
	sw := mustNew(t, db.NewStore(pool), sweeper.DefaultConfig())

	var checks atomic.Int32
	thirdCheck, resume := make(chan struct{}), make(chan struct{})
	passes := make(chan passOutcome, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	release := sync.OnceFunc(func() { close(resume) })
	defer func() { release(); cancel(); <-done }()
	go func() {
		defer close(done)
		sw.RunReconcile(ctx, sweeper.ReconcileOptions{
			Check: 10 * time.Millisecond,
			DatabaseReady: func() bool {
				n := checks.Add(1)
				if n == 3 {
					close(thirdCheck)
					<-resume // held until the test has looked
				}
				return n > 3
			},
			OnPassDone: func(res sweeper.Reconciliation, err error) { passes <- passOutcome{res, err} },
		})
	}()

	select {
	case <-thirdCheck:
	case <-time.After(10 * time.Second):
		t.Fatal("the loop did not check readiness three times")
	}
	require.Empty(t, passes, "no pass while the database is down")
	_, ok := scheduleOf(t, pool, step)
	require.False(t, ok)
	release()
	select {
	case p := <-passes:
		require.NoError(t, p.err)
		require.EqualValues(t, 1, p.res.Missing)
		require.Greater(t, checks.Load(), int32(3))
	case <-time.After(10 * time.Second):
		t.Fatal("no pass after the database came back")
	}
	_, ok = scheduleOf(t, pool, step)
	require.True(t, ok)
}
