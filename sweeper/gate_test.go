package sweeper_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// blockingStore holds the first full sweep at its stranded count until the
// test lets it go.
type blockingStore struct {
	*db.Store
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *blockingStore) Stranded(ctx context.Context, sample int) (int64, []sweeper.StrandedStep, error) {
	b.once.Do(func() {
		b.entered <- struct{}{}
		<-b.release
	})
	return b.Store.Stranded(ctx, sample)
}

// parkWithHandler parks a fresh step through the inline handler with a
// Retry-After of seconds (the schedule path writes its row and notifies).
func parkWithHandler(t *testing.T, pool *pgxpool.Pool, seconds string) uuid.UUID {
	t.Helper()
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.EnqueuedAsErrorForOrchestration, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{Attempts: testdb.Ptr[int32](1)})
	handler, err := handling.NewService(db.NewStore(pool), handling.DefaultConfig())
	require.NoError(t, err)
	res, err := handler.Handle(context.Background(), handling.Failure{StepUUID: step, Message: "connection reset", RetryAfter: seconds})
	require.NoError(t, err)
	require.Equal(t, handling.ActionTransitionedToWaitingForRetry, res.Action)
	return step
}

// pendingAt is when a step moved out of waiting_for_retry, and its due
// time, on the database clock.
func pendingAt(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) (moved, due time.Time) {
	t.Helper()
	require.NoError(t, pool.QueryRow(context.Background(), `
SELECT p.created_at, ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second'
FROM tasker.workflow_step_transitions p
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = p.workflow_step_uuid
WHERE p.workflow_step_uuid = $1 AND p.to_state = 'pending' AND p.from_state = 'waiting_for_retry'`, step).Scan(&moved, &due))
	return moved, due
}

type gateProbe struct {
	wakes  chan sweeper.Trigger
	empty  chan sweeper.Trigger
	sweeps chan sweeper.Summary
}

func newGateProbe() *gateProbe {
	return &gateProbe{
		wakes: make(chan sweeper.Trigger, 256), empty: make(chan sweeper.Trigger, 256), sweeps: make(chan sweeper.Summary, 256),
	}
}

func (p *gateProbe) hooks() sweeper.Hooks {
	return sweeper.Hooks{SweepDone: func(sum sweeper.Summary, _ error) { p.sweeps <- sum }}
}

func (p *gateProbe) options(gap time.Duration) sweeper.SchedulerOptions {
	return sweeper.SchedulerOptions{
		OnWake: func(r sweeper.Trigger) { p.wakes <- r },
		Gate:   &sweeper.GateOptions{Gap: gap, OnEmptyWake: func(r sweeper.Trigger) { p.empty <- r }},
	}
}

// A timer wake-up that finds a sweep running does not sweep beside it: it
// re-arms after that sweep, and the step moves then, at or after its due
// time.
func TestTimerGateReArmsAfterTheSweepItFoundRunning(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	store := &blockingStore{Store: db.NewStore(pool), entered: make(chan struct{}, 1), release: make(chan struct{})}
	probe := newGateProbe()
	sw, err := sweeper.New(store, sweeper.DefaultConfig(), discard, probe.hooks())
	require.NoError(t, err)
	_, err = sw.Reconcile(context.Background(), 0) // the first adoption pass is behind us
	require.NoError(t, err)
	sched, err := sweeper.NewScheduler(sw, "@hourly", discard, probe.options(sweeper.DefaultWakeGap))
	require.NoError(t, err)
	step := parkWithHandler(t, pool, "2")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan struct{})
	go func() { defer close(runDone); sched.Run(ctx) }()
	// The first look at the schedule: nothing due yet, the timer armed.
	require.Equal(t, sweeper.TriggerTimer, receiveWithin(t, probe.wakes, "the first look"))
	require.Equal(t, sweeper.TriggerTimer, receiveWithin(t, probe.empty, "the first look to find nothing due"))

	manual := make(chan sweeper.Summary, 1)
	go func() {
		sum, err := sched.Trigger(context.Background(), false)
		require.NoError(t, err)
		manual <- sum
	}()
	receiveWithin(t, store.entered, "the manual sweep to be held")

	require.Equal(t, sweeper.TriggerTimer, receiveWithin(t, probe.wakes, "the wake-up at the due time"))
	var waiting bool
	require.NoError(t, pool.QueryRow(ctx, `SELECT to_state = 'waiting_for_retry' FROM tasker.workflow_step_transitions
		WHERE workflow_step_uuid = $1 AND most_recent`, step).Scan(&waiting))
	require.True(t, waiting, "no sweep ran beside the held one")
	var releasedAt time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT now()::timestamp`).Scan(&releasedAt))
	close(store.release)
	require.Zero(t, receiveWithin(t, manual, "the manual sweep to finish").Transitioned,
		"it found nothing due: it looked before the due time")
	require.Equal(t, sweeper.TriggerManual, receiveWithin(t, probe.sweeps, "the manual sweep's summary").Trigger)

	sum := receiveWithin(t, probe.sweeps, "the sweep after it")
	require.Equal(t, sweeper.TriggerTimer, sum.Trigger)
	require.Equal(t, 1, sum.Transitioned)
	moved, due := pendingAt(t, pool, step)
	require.False(t, moved.Before(due), "never before its due time")
	require.False(t, moved.Before(releasedAt), "after the sweep it found running")
	cancel()
	<-runDone
}

// On the scan path there is no schedule to arm a timer from: the gate turns
// itself off and says so.
func TestTimerGateTurnsItselfOffOnTheScanPath(t *testing.T) {
	t.Parallel()
	pool := testdb.NewFor(t, testdb.TaskerOnly)
	probe := newGateProbe()
	sw, err := sweeper.New(db.NewStore(pool), sweeper.DefaultConfig(), discard, probe.hooks())
	require.NoError(t, err)
	sched, err := sweeper.NewScheduler(sw, "@hourly", discard, probe.options(0))
	require.NoError(t, err)
	require.Equal(t, sweeper.WakeModeAtDue, sched.WakeMode(), "until it knows the path")
	sum, err := sched.Trigger(context.Background(), false)
	require.NoError(t, err)
	require.Equal(t, sweeper.PathScan, sum.Path)
	require.Equal(t, sweeper.WakeModeCron, sched.WakeMode())

	cron, err := sweeper.NewScheduler(sw, "@hourly", discard, sweeper.SchedulerOptions{})
	require.NoError(t, err)
	require.Equal(t, sweeper.WakeModeCron, cron.WakeMode(), "without a gate")
}

// A stream of steps falling due every few milliseconds is swept in batches
// no closer than the gap, each step at or after its due time and within the
// gap (plus a tolerance) of it.
func TestTimerGateCoalescesAStreamIntoBatches(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	probe := newGateProbe()
	sw, err := sweeper.New(db.NewStore(pool), sweeper.DefaultConfig(), discard, probe.hooks())
	require.NoError(t, err)
	_, err = sw.Reconcile(ctx, 0)
	require.NoError(t, err)
	// 40 steps due every 5 ms from 1.5 s on (database clock), scheduled the
	// way the handler schedules them.
	const n = 40
	task := testdb.SeedDue(t, pool, n)
	_, err = pool.Exec(ctx, `
WITH s AS (
    SELECT workflow_step_uuid, row_number() OVER (ORDER BY workflow_step_uuid) AS i
    FROM tasker.workflow_steps WHERE task_uuid = $1
)
UPDATE tasker.workflow_steps ws
SET last_attempted_at = now() + (1500 + 5 * s.i) * interval '1 millisecond' - interval '1 second', backoff_request_seconds = 1
FROM s WHERE ws.workflow_step_uuid = s.workflow_step_uuid`, task)
	require.NoError(t, err)
	res, err := sw.Reconcile(ctx, 0) // puts them on the schedule at their due times
	require.NoError(t, err)
	require.EqualValues(t, n, res.Missing)

	const gap = 50 * time.Millisecond
	sched, err := sweeper.NewScheduler(sw, "@hourly", discard, probe.options(gap))
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	runDone := make(chan struct{})
	go func() { defer close(runDone); sched.Run(runCtx) }()

	var sweeps []sweeper.Summary
	for moved := 0; moved < n; {
		sum := receiveWithin(t, probe.sweeps, "a timed sweep")
		require.Equal(t, sweeper.TriggerTimer, sum.Trigger)
		if sum.Transitioned > 0 {
			sweeps = append(sweeps, sum)
			moved += sum.Transitioned
		}
	}
	cancel()
	<-runDone
	// 200 ms of due times at one sweep per 50 ms: about five sweeps.
	require.LessOrEqual(t, len(sweeps), 10, "coalesced into batches")
	for i := 1; i < len(sweeps); i++ {
		require.GreaterOrEqual(t, sweeps[i].StartedAt.Sub(sweeps[i-1].StartedAt), gap/2,
			"timer-driven sweeps keep their distance (grid points of the database clock; local start times jitter)")
	}
	rows, err := pool.Query(ctx, `
SELECT p.created_at - (ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second')
FROM tasker.workflow_step_transitions p
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = p.workflow_step_uuid
WHERE ws.task_uuid = $1 AND p.to_state = 'pending' AND p.from_state = 'waiting_for_retry'`, task)
	require.NoError(t, err)
	defer rows.Close()
	count := 0
	for rows.Next() {
		var lag time.Duration
		require.NoError(t, rows.Scan(&lag))
		require.GreaterOrEqual(t, lag, time.Duration(0), "never before its due time")
		require.LessOrEqual(t, lag, gap+300*time.Millisecond)
		count++
	}
	require.NoError(t, rows.Err())
	require.Equal(t, n, count, "each step moved once")
	t.Logf("%d steps in %d timed sweeps", n, len(sweeps))
}

// A replica that holds the timer lease and stalls (here: a session that
// took it and does nothing) holds up the others by stallGaps gaps at most:
// a due step that has waited longer is swept without the lease.
func TestTimerGateSweepsPastAStalledLeaseHolder(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	var held bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('tasker_sweeper.timer'), 0)`).Scan(&held))
	require.True(t, held, "the stalled replica's lease")
	defer func() { _, _ = conn.Exec(ctx, `SELECT pg_advisory_unlock_all()`) }()

	probe := newGateProbe()
	sw, err := sweeper.New(db.NewStore(pool), sweeper.DefaultConfig(), discard, probe.hooks())
	require.NoError(t, err)
	_, err = sw.Reconcile(ctx, 0)
	require.NoError(t, err)
	step := parkWithHandler(t, pool, "1")
	sched, err := sweeper.NewScheduler(sw, "@hourly", discard, probe.options(sweeper.DefaultWakeGap))
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	runDone := make(chan struct{})
	go func() { defer close(runDone); sched.Run(runCtx) }()
	for {
		if sum := receiveWithin(t, probe.sweeps, "a sweep past the held lease"); sum.Transitioned == 1 {
			require.Equal(t, sweeper.TriggerTimer, sum.Trigger)
			break
		}
	}
	cancel()
	<-runDone
	moved, due := pendingAt(t, pool, step)
	require.False(t, moved.Before(due), "never before its due time")
	require.Less(t, moved.Sub(due), 5*sweeper.DefaultWakeGap+300*time.Millisecond,
		"held up by the stalled holder for about four gaps, not until a cron tick")
	require.GreaterOrEqual(t, moved.Sub(due), 4*sweeper.DefaultWakeGap, "the holder got its four gaps first")
}
