package db_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/migrations"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

func TestMain(m *testing.M) { testdb.Main(m) }

type transitionRow struct {
	ToState    string
	FromState  *string
	SortKey    int32
	MostRecent bool
	Metadata   map[string]any
	CreatedAt  time.Time
}

func transitions(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) []transitionRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
SELECT to_state, from_state, sort_key, most_recent, metadata, created_at
FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1 ORDER BY sort_key`, step)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[transitionRow])
	require.NoError(t, err)
	return out
}

func TestWriteTransitionAppendsSortKeysAndMovesMostRecent(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	store := db.NewStore(pool)
	ctx := context.Background()
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]

	moves := []struct {
		from  statemachine.State
		event statemachine.Event
		to    statemachine.State
	}{
		{statemachine.Pending, statemachine.Event{Type: statemachine.EventEnqueue}, statemachine.Enqueued},
		{statemachine.Enqueued, statemachine.Event{Type: statemachine.EventStart}, statemachine.InProgress},
		{statemachine.InProgress, statemachine.WaitForRetryEvent("boom"), statemachine.WaitingForRetry},
	}
	for i, mv := range moves {
		res, err := store.WriteTransition(ctx, db.Transition{
			StepUUID: step, From: mv.from, Event: mv.event,
			Provenance: map[string]any{"who": "test", "n": i},
		})
		require.NoError(t, err)
		require.Equal(t, int32(i+1), res.SortKey)
		require.Equal(t, mv.to, res.To)
	}

	rows := transitions(t, pool, step)
	require.Len(t, rows, 3)
	for i, r := range rows {
		require.Equal(t, int32(i+1), r.SortKey)
		require.Equal(t, i == 2, r.MostRecent, "only the last row is most_recent")
		require.Equal(t, string(moves[i].to), r.ToState)
		require.NotNil(t, r.FromState)
		require.Equal(t, string(moves[i].from), *r.FromState)
	}
	last := rows[2]
	require.Equal(t, "test", last.Metadata["who"])
	require.JSONEq(t, `{"type":"WaitForRetry","data":"boom"}`, last.Metadata["event"].(string))
	stamp, err := time.Parse(time.RFC3339Nano, last.Metadata["timestamp"].(string))
	require.NoError(t, err)
	require.Equal(t, time.UTC, stamp.Location())
	require.WithinDuration(t, time.Now(), stamp, time.Minute)

	got, err := store.GetStep(ctx, step)
	require.NoError(t, err)
	require.Equal(t, statemachine.WaitingForRetry, got.State)
	require.Equal(t, int32(3), got.SortKey)
}

func TestWriteTransitionCASMismatchWritesNothing(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	store := db.NewStore(pool)
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.Enqueued, 0)
	before := transitions(t, pool, step)

	// The caller read "pending" but the step has moved on to enqueued.
	_, err := store.WriteTransition(context.Background(), db.Transition{
		StepUUID: step, From: statemachine.Pending, Event: statemachine.Event{Type: statemachine.EventEnqueue},
	})
	require.ErrorIs(t, err, statemachine.ErrLostRace)
	require.Equal(t, before, transitions(t, pool, step))
}

func TestWriteTransitionRejectsIllegalEventBeforeWriting(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	store := db.NewStore(pool)
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	before := transitions(t, pool, step)

	_, err := store.WriteTransition(context.Background(), db.Transition{
		StepUUID: step, From: statemachine.WaitingForRetry, Event: statemachine.FailEvent("nope"),
	})
	require.ErrorIs(t, err, statemachine.ErrInvalidTransition)
	require.Equal(t, before, transitions(t, pool, step))
}

// Many writers race to move one step: exactly one wins and every other one
// gets the lost-race sentinel, never a raw driver error.
func TestConcurrentWritersExactlyOneWins(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	store := db.NewStore(pool)
	ctx := context.Background()
	task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 10})
	for _, step := range task.Steps {
		testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	}

	const writers = 8
	for _, step := range task.Steps {
		var wg sync.WaitGroup
		errs := make([]error, writers)
		start := make(chan struct{})
		for w := range writers {
			wg.Go(func() {
				<-start
				_, errs[w] = store.WriteTransition(ctx, db.Transition{
					StepUUID: step, From: statemachine.WaitingForRetry, Event: statemachine.RetryEvent(),
				})
			})
		}
		close(start)
		wg.Wait()
		wins := 0
		for _, err := range errs {
			if err == nil {
				wins++
				continue
			}
			require.ErrorIs(t, err, statemachine.ErrLostRace)
		}
		require.Equal(t, 1, wins, "step %s", step)
		rows := transitions(t, pool, step)
		require.Len(t, rows, 6)
		require.Equal(t, "pending", rows[5].ToState)
	}
}

// A writer that commits while our write is blocked behind it is detected
// both ways: by the CAS (the row we expected was retired) and, for a step
// with no transitions yet, by the unique most_recent index.
func TestBlockedWriterLosesToCommittedWriter(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	store := db.NewStore(pool)
	ctx := context.Background()
	task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 2})
	withHistory, fresh := task.Steps[0], task.Steps[1]
	testdb.PlaceInState(t, pool, withHistory, statemachine.WaitingForRetry, 0)

	cases := []struct {
		name   string
		step   uuid.UUID
		from   statemachine.State
		event  statemachine.Event
		winner string // what the other writer does inside its open transaction
	}{
		{"cas", withHistory, statemachine.WaitingForRetry, statemachine.RetryEvent(), `
UPDATE tasker.workflow_step_transitions SET most_recent = false
WHERE workflow_step_uuid = $1 AND most_recent`},
		{"unique index", fresh, statemachine.Pending, statemachine.Event{Type: statemachine.EventEnqueue}, `
INSERT INTO tasker.workflow_step_transitions
    (workflow_step_uuid, to_state, sort_key, most_recent, created_at, updated_at)
VALUES ($1, 'enqueued', 1, true, now(), now())`},
	}
	for _, tc := range cases {
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, tc.winner, tc.step)
		require.NoError(t, err)

		done := make(chan error, 1)
		go func() {
			_, err := store.WriteTransition(ctx, db.Transition{StepUUID: tc.step, From: tc.from, Event: tc.event})
			done <- err
		}()
		waitForLockWait(t, pool)
		require.NoError(t, tx.Commit(ctx))
		err = <-done
		require.ErrorIs(t, err, statemachine.ErrLostRace, tc.name)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			require.Equal(t, "23505", pgErr.Code, "only the unique violation may surface, wrapped")
		}
	}
}

// waitForLockWait blocks until some session of this database waits on a lock.
func waitForLockWait(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var waiting int
		err := pool.QueryRow(context.Background(), `
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting)
		require.NoError(t, err)
		if waiting > 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the second writer never blocked")
}

func TestGetStepUnknownIsNotFound(t *testing.T) {
	t.Parallel()
	store := db.NewStore(testdb.New(t))
	_, err := store.GetStep(context.Background(), uuid.New())
	require.ErrorIs(t, err, statemachine.ErrStepNotFound)
}

func TestGetStepWithoutTransitionsIsPending(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	got, err := db.NewStore(pool).GetStep(context.Background(), step)
	require.NoError(t, err)
	require.Equal(t, statemachine.Pending, got.State)
	require.Equal(t, int32(0), got.SortKey)
	require.True(t, got.Retryable)
	require.Equal(t, int32(3), *got.MaxAttempts, "tasker's default max_attempts")
	require.Nil(t, got.Attempts)
	require.Contains(t, got.Name, "step-0-")
}

func TestStateCheckConstraintRejectsUnknownState(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	for _, col := range []string{"to_state", "from_state"} {
		_, err := pool.Exec(context.Background(), `
INSERT INTO tasker.workflow_step_transitions
    (workflow_step_uuid, to_state, from_state, sort_key, most_recent, created_at, updated_at)
VALUES ($1, CASE WHEN $2 = 'to_state' THEN 'bogus' ELSE 'pending' END,
        CASE WHEN $2 = 'from_state' THEN 'bogus' END, 1, false, now(), now())`, step, col)
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr, col)
		require.Equal(t, "23514", pgErr.Code, "check_violation on %s", col)
	}
}

// The pool forces UTC even when the database's own default zone is not UTC:
// timestamps written with now() must hold UTC wall-clock time.
func TestPoolForcesUTC(t *testing.T) {
	t.Parallel()
	url := testdb.NewURL(t)
	ctx := context.Background()

	raw, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	var dbName string
	require.NoError(t, raw.QueryRow(ctx, `SELECT current_database()`).Scan(&dbName))
	_, err = raw.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{dbName}.Sanitize()+` SET timezone TO 'America/New_York'`)
	require.NoError(t, err)
	require.NoError(t, raw.Close(ctx))

	// Without our configuration a session would get New York time ...
	plain, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	var plainZone string
	require.NoError(t, plain.QueryRow(ctx, `SHOW timezone`).Scan(&plainZone))
	require.NoError(t, plain.Close(ctx))
	require.Equal(t, "America/New_York", plainZone)

	// ... but every connection of our pool is in UTC.
	pool, err := db.Connect(ctx, url)
	require.NoError(t, err)
	defer pool.Close()
	var zone string
	var now time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT current_setting('timezone'), now()::timestamp`).Scan(&zone, &now))
	require.Equal(t, "UTC", zone)
	require.WithinDuration(t, time.Now().UTC(), now, 5*time.Second,
		"now()::timestamp must be UTC wall-clock time")
}

func TestMigrateIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := db.Connect(ctx, testdb.NewEmptyURL(t))
	require.NoError(t, err)
	defer pool.Close()

	first, err := db.Migrate(ctx, pool, migrations.TaskerSubset)
	require.NoError(t, err)
	require.NotEmpty(t, first.Applied)
	second, err := db.Migrate(ctx, pool, migrations.TaskerSubset)
	require.NoError(t, err)
	require.Empty(t, second.Applied)

	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM tasker.workflow_steps`).Scan(&n))
	require.Zero(t, n)

	// The uuid default generates version-7 UUIDs on PostgreSQL 15.
	var id uuid.UUID
	require.NoError(t, pool.QueryRow(ctx, `SELECT tasker.uuid_generate_v7()`).Scan(&id))
	require.Equal(t, uuid.Version(7), id.Version())
	require.WithinDuration(t, time.Now(), time.Unix(id.Time().UnixTime()), 5*time.Second)
}
