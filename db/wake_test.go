package db_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// The probe reads what is due by its horizon since After, and the earliest
// due time after the horizon; a row that never comes due is never next.
func TestProbeDueReadsTheSchedulesDueTimes(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	store := db.NewStore(pool, db.WithClock(func() time.Time { return now }))

	p, lease, err := store.ProbeDue(ctx, sweeper.ProbeRequest{})
	require.NoError(t, err)
	require.Nil(t, lease, "no lease asked for")
	require.Equal(t, sweeper.DueProbe{DBNow: now}, p, "an empty schedule: nothing due, nothing next")

	for _, due := range []string{"2030-06-01 11:59:00", "2030-06-01 13:00:00", "infinity"} {
		_, err := pool.Exec(ctx, `INSERT INTO tasker_sweeper.retry_schedule (workflow_step_uuid, due_at) VALUES ($1, $2::timestamp)`,
			uuid.New(), due)
		require.NoError(t, err)
	}
	p, _, err = store.ProbeDue(ctx, sweeper.ProbeRequest{})
	require.NoError(t, err)
	require.True(t, p.DueNow)
	require.Equal(t, now.Add(time.Hour), p.Next, "the infinite row is never next")

	p, _, err = store.ProbeDue(ctx, sweeper.ProbeRequest{After: now.Add(-30 * time.Second)})
	require.NoError(t, err)
	require.False(t, p.DueNow, "the overdue row was due by After")

	p, _, err = store.ProbeDue(ctx, sweeper.ProbeRequest{Until: now.Add(-2 * time.Minute)})
	require.NoError(t, err)
	require.False(t, p.DueNow, "nothing was due by the wake-up's own time")
	require.Equal(t, now.Add(-time.Minute), p.Next, "the overdue row is after that horizon")
	require.Equal(t, now, p.DBNow)
}

// One replica holds the timer lease at a time; giving it back probes again
// and lets the next one take it. Nothing due: no lease is taken.
func TestTimerLeaseIsHeldByOneReplicaAtATime(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	a, b := db.NewStore(pool), db.NewStore(pool)

	p, lease, err := a.ProbeDue(ctx, sweeper.ProbeRequest{Lease: true})
	require.NoError(t, err)
	require.False(t, p.DueNow)
	require.Nil(t, lease, "nothing due: nothing to hold")

	_, err = pool.Exec(ctx, `INSERT INTO tasker_sweeper.retry_schedule (workflow_step_uuid, due_at) VALUES ($1, now() - interval '1 second')`,
		uuid.New())
	require.NoError(t, err)
	p, held, err := a.ProbeDue(ctx, sweeper.ProbeRequest{Lease: true})
	require.NoError(t, err)
	require.True(t, p.DueNow)
	require.NotNil(t, held)
	p, other, err := b.ProbeDue(ctx, sweeper.ProbeRequest{Lease: true})
	require.NoError(t, err)
	require.True(t, p.DueNow)
	require.Nil(t, other, "another replica holds it")

	after, err := held.Release(ctx, p.DBNow)
	require.NoError(t, err)
	require.False(t, after.DueNow, "the row was due by After")
	_, err = held.Release(ctx, time.Time{})
	require.Error(t, err, "released once")

	_, again, err := b.ProbeDue(ctx, sweeper.ProbeRequest{Lease: true})
	require.NoError(t, err)
	require.NotNil(t, again, "free again")
	_, err = again.Release(ctx, time.Time{})
	require.NoError(t, err)
}

// The handler's park statement tells the listeners when the step falls due,
// with the schedule row's due time, once it commits.
func TestParkNotifiesTheDueTime(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer func() { _ = conn.Close(ctx) }()
	_, err = conn.Exec(ctx, "LISTEN "+db.ParkedChannel)
	require.NoError(t, err)

	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.EnqueuedAsErrorForOrchestration, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{Attempts: testdb.Ptr[int32](1)})
	handler, err := handling.NewService(db.NewStore(pool), handling.DefaultConfig())
	require.NoError(t, err)
	res, err := handler.Handle(ctx, handling.Failure{StepUUID: step, Message: "connection reset", RetryAfter: "7"})
	require.NoError(t, err)
	require.Equal(t, handling.ActionTransitionedToWaitingForRetry, res.Action)

	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := conn.WaitForNotification(wctx)
	require.NoError(t, err)
	due, err := time.Parse(time.RFC3339Nano, n.Payload)
	require.NoError(t, err, n.Payload)
	var row time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT due_at FROM tasker_sweeper.retry_schedule WHERE workflow_step_uuid = $1`, step).Scan(&row))
	require.Equal(t, row, due.UTC())
	require.Equal(t, *res.NextRetryAt, row)
}

// A park whose due time is no earlier than another row's that is due at
// least a second from now sends nothing (every timer is armed for that one
// or earlier); one that comes first does.
func TestParkNotifiesOnlyWhenItMayBeFirst(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer func() { _ = conn.Close(ctx) }()
	_, err = conn.Exec(ctx, "LISTEN "+db.ParkedChannel)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO tasker_sweeper.retry_schedule (workflow_step_uuid, due_at) VALUES ($1, now() + interval '10 seconds')`,
		uuid.New())
	require.NoError(t, err)
	handler, err := handling.NewService(db.NewStore(pool), handling.DefaultConfig())
	require.NoError(t, err)
	park := func(retryAfter string) time.Time {
		step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
		testdb.PlaceInState(t, pool, step, statemachine.EnqueuedAsErrorForOrchestration, 0)
		testdb.SetColumns(t, pool, step, testdb.StepColumns{Attempts: testdb.Ptr[int32](1)})
		res, err := handler.Handle(ctx, handling.Failure{StepUUID: step, Message: "connection reset", RetryAfter: retryAfter})
		require.NoError(t, err)
		require.Equal(t, handling.ActionTransitionedToWaitingForRetry, res.Action)
		return *res.NextRetryAt
	}
	park("30") // after the row due in 10 s: nothing to tell
	first := park("5")

	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := conn.WaitForNotification(wctx)
	require.NoError(t, err)
	due, err := time.Parse(time.RFC3339Nano, n.Payload)
	require.NoError(t, err)
	require.Equal(t, first, due.UTC(), "the first notification is the park that comes first; the later one sent none")
}

// Adoption on its own: the first pass on a database reconciles; later ones
// report what they adopted and the earliest due time among it.
func TestAdoptReportsTheEarliestDueTime(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	store := db.NewStore(pool)
	first, err := store.Adopt(ctx)
	require.NoError(t, err)
	require.NotNil(t, first.Reconciled, "the first pass reconciles")

	var dues []time.Time
	for _, backoff := range []int32{90, 30, 60} {
		step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
		testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
		testdb.SetColumns(t, pool, step, testdb.StepColumns{
			Attempts:         testdb.Ptr[int32](1),
			LastAttemptedAgo: testdb.Ptr(time.Duration(0)), BackoffRequestSeconds: testdb.Ptr(backoff),
		})
		var due time.Time
		require.NoError(t, pool.QueryRow(ctx, `SELECT last_attempted_at + backoff_request_seconds * interval '1 second'
			FROM tasker.workflow_steps WHERE workflow_step_uuid = $1`, step).Scan(&due))
		dues = append(dues, due)
	}
	res, err := store.Adopt(ctx)
	require.NoError(t, err)
	require.Nil(t, res.Reconciled)
	require.Equal(t, 3, res.Adopted)
	require.Equal(t, dues[1], res.EarliestDue)

	again, err := store.Adopt(ctx)
	require.NoError(t, err)
	require.Zero(t, again.Adopted)

	scan := db.NewStore(testdb.NewFor(t, testdb.TaskerOnly))
	_, err = scan.Adopt(ctx)
	require.ErrorIs(t, err, sweeper.ErrNoSchedule)
	_, _, err = scan.ProbeDue(ctx, sweeper.ProbeRequest{})
	require.ErrorIs(t, err, sweeper.ErrNoSchedule)
}
