package handling_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/backoff"
	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// failedHistory is how many transition rows PlaceInState writes for a step in
// enqueued_as_error_for_orchestration: pending, enqueued, in_progress and the
// failure itself.
const failedHistory = 4

// jitterOff is the default config without jitter, so every delay is exact.
func jitterOff() handling.Config {
	cfg := handling.DefaultConfig()
	cfg.Backoff.Jitter = false
	return cfg
}

// fixedRand is a jitter source that always draws the same value.
type fixedRand float64

func (r fixedRand) Float64() float64 { return float64(r) }

func newService(t testing.TB, pool *pgxpool.Pool, cfg handling.Config, opts ...handling.Option) *handling.Service {
	t.Helper()
	// A far-from-neutral draw: should jitter ever be applied by mistake, the
	// delay moves and the literal expectations fail.
	all := append([]handling.Option{handling.WithRand(fixedRand(0.99))}, opts...)
	svc, err := handling.NewService(db.NewStore(pool), cfg, all...)
	require.NoError(t, err)
	return svc
}

// placeStep creates a one-step task whose step is in state, with cols set.
func placeStep(t *testing.T, pool *pgxpool.Pool, state statemachine.State, cols testdb.StepColumns) testdb.Task {
	t.Helper()
	task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1})
	testdb.PlaceInState(t, pool, task.Steps[0], state, 0)
	testdb.SetColumns(t, pool, task.Steps[0], cols)
	return task
}

type stepRow struct {
	Attempts              *int32
	MaxAttempts           *int32
	BackoffRequestSeconds *int32
	LastAttemptedAt       *time.Time
	InProcess             bool
	UpdatedAt             time.Time
}

func readStep(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) stepRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
SELECT attempts, max_attempts, backoff_request_seconds, last_attempted_at, in_process, updated_at
FROM tasker.workflow_steps WHERE workflow_step_uuid = $1`, step)
	require.NoError(t, err)
	row, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[stepRow])
	require.NoError(t, err)
	return row
}

type transitionRow struct {
	ToState    string
	FromState  *string
	SortKey    int32
	MostRecent bool
	Metadata   map[string]any
}

func transitions(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) []transitionRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
SELECT to_state, from_state, sort_key, most_recent, metadata
FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1 ORDER BY sort_key`, step)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[transitionRow])
	require.NoError(t, err)
	return out
}

// snapshot is every column of the step row and of all its transition rows, as
// text, so "nothing was written" can be checked by comparing two snapshots.
func snapshot(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) string {
	t.Helper()
	var stepJSON, transitionsJSON string
	err := pool.QueryRow(context.Background(), `
SELECT to_jsonb(ws)::text,
       (SELECT coalesce(jsonb_agg(to_jsonb(tr) ORDER BY tr.sort_key), '[]'::jsonb)::text
        FROM tasker.workflow_step_transitions tr
        WHERE tr.workflow_step_uuid = ws.workflow_step_uuid)
FROM tasker.workflow_steps ws WHERE ws.workflow_step_uuid = $1`, step).Scan(&stepJSON, &transitionsJSON)
	require.NoError(t, err)
	return stepJSON + "\n" + transitionsJSON
}

func dbNow(t *testing.T, pool *pgxpool.Pool) time.Time {
	t.Helper()
	var now time.Time
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT now()::timestamp`).Scan(&now))
	return now
}

func currentState(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) string {
	t.Helper()
	var state string
	err := pool.QueryRow(context.Background(), `
SELECT coalesce((SELECT to_state FROM tasker.workflow_step_transitions
                 WHERE workflow_step_uuid = $1 AND most_recent), 'pending')`, step).Scan(&state)
	require.NoError(t, err)
	return state
}

// bothPaths runs a test on a database with the sweeper-owned objects, where
// the handler writes the step, its transition and its schedule row in one
// statement, and on one without them, where it uses a multi-statement
// transaction: both must behave the same.
func bothPaths(t *testing.T, test func(t *testing.T, pool *pgxpool.Pool, objects testdb.Objects)) {
	t.Helper()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) { test(t, testdb.NewFor(t, objects), objects) })
}

// scheduledAt is the step's due time on the sweeper's schedule, nil when it
// has no schedule row (or the database has no schedule).
func scheduledAt(t *testing.T, pool *pgxpool.Pool, objects testdb.Objects, step uuid.UUID) *time.Time {
	t.Helper()
	if objects == testdb.TaskerOnly {
		return nil
	}
	rows, err := pool.Query(context.Background(),
		`SELECT due_at FROM tasker_sweeper.retry_schedule WHERE workflow_step_uuid = $1`, step)
	require.NoError(t, err)
	due, err := pgx.CollectRows(rows, pgx.RowTo[time.Time])
	require.NoError(t, err)
	if len(due) == 0 {
		return nil
	}
	return &due[0]
}

// metaString returns a metadata value that must be a JSON string.
func metaString(t *testing.T, meta map[string]any, key string) string {
	t.Helper()
	v, ok := meta[key].(string)
	require.True(t, ok, "metadata %q = %#v, want a string", key, meta[key])
	return v
}

// The main path: a retryable failure with attempts left parks the
// step in waiting_for_retry and writes its backoff, all of it visible at once.
func TestHandleSchedulesRetry(t *testing.T) {
	t.Parallel()
	bothPaths(t, testHandleSchedulesRetry)
}

func testHandleSchedulesRetry(t *testing.T, pool *pgxpool.Pool, objects testdb.Objects) {
	step := placeStep(t, pool, statemachine.EnqueuedAsErrorForOrchestration, testdb.StepColumns{
		Attempts:         testdb.Ptr[int32](1),
		MaxAttempts:      testdb.Ptr[int32](3),
		Retryable:        testdb.Ptr(true),
		InProcess:        testdb.Ptr(true),
		LastAttemptedAgo: testdb.Ptr(10 * time.Minute),
	}).Steps[0]
	before := readStep(t, pool, step)
	require.Nil(t, before.BackoffRequestSeconds)
	require.True(t, before.InProcess)

	res, err := newService(t, pool, jitterOff()).Handle(context.Background(), handling.Failure{
		StepUUID: step, Message: "upstream hiccup", Source: "worker",
	})
	now := dbNow(t, pool)
	require.NoError(t, err)

	require.Equal(t, step, res.StepUUID)
	require.Equal(t, handling.ActionTransitionedToWaitingForRetry, res.Action)
	require.Equal(t, statemachine.WaitingForRetry, res.FinalState)
	require.NotNil(t, res.BackoffSeconds)
	require.Equal(t, int32(2), *res.BackoffSeconds)
	require.Equal(t, backoff.SourceExponential, res.BackoffSource)
	require.Equal(t, 1, res.Attempts)
	require.Equal(t, 3, res.MaxAttempts)
	require.Equal(t, handling.CategoryTransient, res.Classification.Category)
	require.True(t, res.Classification.Retryable)

	after := readStep(t, pool, step)
	require.NotNil(t, after.BackoffRequestSeconds)
	require.Equal(t, int32(2), *after.BackoffRequestSeconds)
	require.NotNil(t, after.LastAttemptedAt)
	require.WithinDuration(t, now, *after.LastAttemptedAt, 5*time.Second, "last_attempted_at = now() in database time")
	require.False(t, after.InProcess)
	require.True(t, after.UpdatedAt.After(before.UpdatedAt), "updated_at moves")
	require.WithinDuration(t, now, after.UpdatedAt, 5*time.Second)
	require.NotNil(t, res.NextRetryAt)
	require.Equal(t, after.LastAttemptedAt.Add(2*time.Second), *res.NextRetryAt,
		"next retry is exactly last_attempted_at + backoff as written")
	if objects == testdb.WithSweeperObjects {
		require.Equal(t, res.NextRetryAt, scheduledAt(t, pool, objects, step), "scheduled for its due time")
	}

	rows := transitions(t, pool, step)
	require.Len(t, rows, failedHistory+1)
	prev, last := rows[failedHistory-1], rows[failedHistory]
	require.Equal(t, "enqueued_as_error_for_orchestration", prev.ToState)
	require.False(t, prev.MostRecent, "the old current row is retired")
	require.Equal(t, "waiting_for_retry", last.ToState)
	require.NotNil(t, last.FromState)
	require.Equal(t, "enqueued_as_error_for_orchestration", *last.FromState)
	require.Equal(t, int32(5), last.SortKey)
	require.Equal(t, prev.SortKey+1, last.SortKey)
	require.True(t, last.MostRecent)

	meta := last.Metadata
	require.JSONEq(t, `{"type":"WaitForRetry","data":"upstream hiccup"}`, metaString(t, meta, "event"))
	stamp, err := time.Parse(time.RFC3339Nano, metaString(t, meta, "timestamp"))
	require.NoError(t, err)
	require.WithinDuration(t, time.Now(), stamp, time.Minute)
	require.Equal(t, "Transient", meta["category"])
	require.Equal(t, "TRANSIENT", meta["error_code"])
	require.Equal(t, float64(2), meta["backoff_seconds"])
	require.Equal(t, "exponential", meta["backoff_source"])
	require.Equal(t, float64(0), meta["jitter_seconds"])
	require.Equal(t, float64(1), meta["attempts"])
	require.Equal(t, float64(3), meta["max_attempts"])
	require.Equal(t, "worker", meta["error_source"])
	require.NotContains(t, meta, "retry_after")
}

// Every decision against the database: what the result says, and
// what was (or was not) written.
func TestHandleDecisions(t *testing.T) {
	t.Parallel()
	clock := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	const msg = "upstream hiccup" // classified Transient by the default rule

	tests := []struct {
		name    string
		cols    testdb.StepColumns
		failure handling.Failure // StepUUID is filled in
		config  func(*handling.Config)
		opts    []handling.Option

		wantAction   handling.Action
		wantState    statemachine.State // in the result and in the database
		wantCategory handling.Category
		wantBackoff  int32 // 0: backoff_request_seconds stays NULL
		wantSource   backoff.Source
		wantEvent    string // the new transition's event; "" means no new row
	}{
		{
			name:       "attempts left",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)},
			failure:    handling.Failure{Message: msg},
			wantAction: handling.ActionTransitionedToWaitingForRetry, wantState: statemachine.WaitingForRetry,
			wantCategory: handling.CategoryTransient, wantBackoff: 2, wantSource: backoff.SourceExponential,
			wantEvent: `{"type":"WaitForRetry","data":"upstream hiccup"}`,
		},
		{
			name:       "null attempts count as zero",
			cols:       testdb.StepColumns{MaxAttempts: testdb.Ptr[int32](3)},
			failure:    handling.Failure{Message: msg},
			wantAction: handling.ActionTransitionedToWaitingForRetry, wantState: statemachine.WaitingForRetry,
			wantCategory: handling.CategoryTransient, wantBackoff: 1, wantSource: backoff.SourceExponential,
			wantEvent: `{"type":"WaitForRetry","data":"upstream hiccup"}`,
		},
		{
			name:       "attempts exhausted",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](3)},
			failure:    handling.Failure{Message: msg},
			wantAction: handling.ActionMarkedAsError, wantState: statemachine.Error,
			wantCategory: handling.CategoryTransient,
			wantEvent:    `{"type":"Fail","data":"upstream hiccup"}`,
		},
		{
			name: "worker hint not retryable beats a transient classification",
			cols: testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)},
			failure: handling.Failure{
				Message: "connection reset by peer", Retryable: testdb.Ptr(false),
			},
			wantAction: handling.ActionMarkedAsPermanentFailure, wantState: statemachine.Error,
			wantCategory: handling.CategoryNetwork,
			wantEvent:    `{"type":"Fail","data":"connection reset by peer"}`,
		},
		{
			name: "worker hint retryable beats a permanent classification",
			cols: testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)},
			failure: handling.Failure{
				Message: "validation failed", Retryable: testdb.Ptr(true),
			},
			wantAction: handling.ActionTransitionedToWaitingForRetry, wantState: statemachine.WaitingForRetry,
			wantCategory: handling.CategoryPermanent, wantBackoff: 2, wantSource: backoff.SourceExponential,
			wantEvent: `{"type":"WaitForRetry","data":"validation failed"}`,
		},
		{
			name: "retryable column false",
			cols: testdb.StepColumns{
				Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3), Retryable: testdb.Ptr(false),
			},
			failure:    handling.Failure{Message: msg},
			wantAction: handling.ActionMarkedAsPermanentFailure, wantState: statemachine.Error,
			wantCategory: handling.CategoryTransient,
			wantEvent:    `{"type":"Fail","data":"upstream hiccup"}`,
		},
		{
			name:       "null max_attempts below the default",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](2), NullMaxAttempts: true},
			failure:    handling.Failure{Message: msg},
			wantAction: handling.ActionTransitionedToWaitingForRetry, wantState: statemachine.WaitingForRetry,
			wantCategory: handling.CategoryTransient, wantBackoff: 4, wantSource: backoff.SourceExponential,
			wantEvent: `{"type":"WaitForRetry","data":"upstream hiccup"}`,
		},
		{
			name:       "null max_attempts at the default",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](3), NullMaxAttempts: true},
			failure:    handling.Failure{Message: msg},
			wantAction: handling.ActionMarkedAsError, wantState: statemachine.Error,
			wantCategory: handling.CategoryTransient,
			wantEvent:    `{"type":"Fail","data":"upstream hiccup"}`,
		},
		{
			name:       "retry-after seconds",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)},
			failure:    handling.Failure{Message: msg, RetryAfter: "120"},
			wantAction: handling.ActionTransitionedToWaitingForRetry, wantState: statemachine.WaitingForRetry,
			wantCategory: handling.CategoryTransient, wantBackoff: 120, wantSource: backoff.SourceRetryAfter,
			wantEvent: `{"type":"WaitForRetry","data":"upstream hiccup"}`,
		},
		{
			name: "retry-after http date",
			cols: testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)},
			// 120 s after the injected clock.
			failure:    handling.Failure{Message: msg, RetryAfter: "Tue, 06 May 2031 07:10:09 GMT"},
			opts:       []handling.Option{handling.WithClock(func() time.Time { return clock })},
			wantAction: handling.ActionTransitionedToWaitingForRetry, wantState: statemachine.WaitingForRetry,
			wantCategory: handling.CategoryTransient, wantBackoff: 120, wantSource: backoff.SourceRetryAfter,
			wantEvent: `{"type":"WaitForRetry","data":"upstream hiccup"}`,
		},
		{
			name:       "retry-after capped at max",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)},
			failure:    handling.Failure{Message: msg, RetryAfter: "100000"},
			wantAction: handling.ActionTransitionedToWaitingForRetry, wantState: statemachine.WaitingForRetry,
			wantCategory: handling.CategoryTransient, wantBackoff: 300, wantSource: backoff.SourceRetryAfter,
			wantEvent: `{"type":"WaitForRetry","data":"upstream hiccup"}`,
		},
		{
			name:       "garbage retry-after falls back to exponential",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)},
			failure:    handling.Failure{Message: msg, RetryAfter: "soon"},
			wantAction: handling.ActionTransitionedToWaitingForRetry, wantState: statemachine.WaitingForRetry,
			wantCategory: handling.CategoryTransient, wantBackoff: 2, wantSource: backoff.SourceExponential,
			wantEvent: `{"type":"WaitForRetry","data":"upstream hiccup"}`,
		},
		{
			name:       "legacy mode writes the backoff only",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)},
			failure:    handling.Failure{Message: msg},
			config:     func(c *handling.Config) { c.UseWaitingForRetryState = false },
			wantAction: handling.ActionNoActionTaken, wantState: statemachine.EnqueuedAsErrorForOrchestration,
			wantCategory: handling.CategoryTransient, wantBackoff: 2, wantSource: backoff.SourceExponential,
		},
		{
			name:       "classification off makes a network error permanent",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)},
			failure:    handling.Failure{Message: "connection reset"},
			config:     func(c *handling.Config) { c.UseErrorClassification = false },
			wantAction: handling.ActionMarkedAsPermanentFailure, wantState: statemachine.Error,
			wantCategory: handling.CategoryPermanent,
			wantEvent:    `{"type":"Fail","data":"connection reset"}`,
		},
		{
			name:       "classification off ignores a retryable hint",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)},
			failure:    handling.Failure{Message: "connection reset", Retryable: testdb.Ptr(true)},
			config:     func(c *handling.Config) { c.UseErrorClassification = false },
			wantAction: handling.ActionMarkedAsPermanentFailure, wantState: statemachine.Error,
			wantCategory: handling.CategoryPermanent,
			wantEvent:    `{"type":"Fail","data":"connection reset"}`,
		},
		{
			name:       "permanent message",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)},
			failure:    handling.Failure{Message: "validation failed"},
			wantAction: handling.ActionMarkedAsPermanentFailure, wantState: statemachine.Error,
			wantCategory: handling.CategoryPermanent,
			wantEvent:    `{"type":"Fail","data":"validation failed"}`,
		},
		{
			name:       "explicit kind beats the message",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)},
			failure:    handling.Failure{Message: "validation failed", Kind: "RateLimit"},
			wantAction: handling.ActionTransitionedToWaitingForRetry, wantState: statemachine.WaitingForRetry,
			wantCategory: handling.CategoryRateLimit, wantBackoff: 2, wantSource: backoff.SourceExponential,
			wantEvent: `{"type":"WaitForRetry","data":"validation failed"}`,
		},
		{
			name:       "http 429 is retried",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](2), MaxAttempts: testdb.Ptr[int32](5)},
			failure:    handling.Failure{Message: msg, HTTPStatus: 429},
			wantAction: handling.ActionTransitionedToWaitingForRetry, wantState: statemachine.WaitingForRetry,
			wantCategory: handling.CategoryRateLimit, wantBackoff: 4, wantSource: backoff.SourceExponential,
			wantEvent: `{"type":"WaitForRetry","data":"upstream hiccup"}`,
		},
		{
			name:       "http 404 is permanent",
			cols:       testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)},
			failure:    handling.Failure{Message: msg, HTTPStatus: 404},
			wantAction: handling.ActionMarkedAsPermanentFailure, wantState: statemachine.Error,
			wantCategory: handling.CategoryPermanent,
			wantEvent:    `{"type":"Fail","data":"upstream hiccup"}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bothPaths(t, func(t *testing.T, pool *pgxpool.Pool, objects testdb.Objects) {
				cols := tc.cols
				cols.InProcess = testdb.Ptr(true)
				cols.LastAttemptedAgo = testdb.Ptr(10 * time.Minute)
				step := placeStep(t, pool, statemachine.EnqueuedAsErrorForOrchestration, cols).Steps[0]
				before := readStep(t, pool, step)
				cfg := jitterOff()
				if tc.config != nil {
					tc.config(&cfg)
				}
				f := tc.failure
				f.StepUUID = step

				res, err := newService(t, pool, cfg, tc.opts...).Handle(context.Background(), f)
				now := dbNow(t, pool)
				require.NoError(t, err)
				require.Equal(t, tc.wantAction, res.Action)
				require.Equal(t, tc.wantState, res.FinalState)
				require.Equal(t, string(tc.wantState), currentState(t, pool, step), "the real state")
				require.Equal(t, tc.wantCategory, res.Classification.Category)

				after := readStep(t, pool, step)
				if tc.wantBackoff == 0 {
					require.Nil(t, after.BackoffRequestSeconds)
					require.Equal(t, before.LastAttemptedAt, after.LastAttemptedAt)
					require.Nil(t, res.BackoffSeconds)
					require.Nil(t, res.NextRetryAt)
				} else {
					require.NotNil(t, after.BackoffRequestSeconds)
					require.Equal(t, tc.wantBackoff, *after.BackoffRequestSeconds)
					require.NotNil(t, res.BackoffSeconds)
					require.Equal(t, tc.wantBackoff, *res.BackoffSeconds)
					require.Equal(t, tc.wantSource, res.BackoffSource)
					require.NotNil(t, after.LastAttemptedAt)
					require.WithinDuration(t, now, *after.LastAttemptedAt, 5*time.Second)
					require.NotNil(t, res.NextRetryAt)
					require.Equal(t, after.LastAttemptedAt.Add(time.Duration(tc.wantBackoff)*time.Second), *res.NextRetryAt)
				}
				scheduled := tc.wantState == statemachine.WaitingForRetry && objects == testdb.WithSweeperObjects
				if scheduled {
					require.Equal(t, res.NextRetryAt, scheduledAt(t, pool, objects, step), "parked steps are scheduled")
				} else {
					require.Nil(t, scheduledAt(t, pool, objects, step), "only parked steps are scheduled")
				}

				rows := transitions(t, pool, step)
				if tc.wantEvent == "" {
					require.Len(t, rows, failedHistory, "no transition row added")
					require.True(t, rows[failedHistory-1].MostRecent)
					return
				}
				require.Len(t, rows, failedHistory+1)
				require.False(t, after.InProcess, "a transition releases the step")
				require.False(t, rows[failedHistory-1].MostRecent)
				last := rows[failedHistory]
				require.Equal(t, string(tc.wantState), last.ToState)
				require.NotNil(t, last.FromState)
				require.Equal(t, "enqueued_as_error_for_orchestration", *last.FromState)
				require.Equal(t, int32(5), last.SortKey)
				require.True(t, last.MostRecent)
				require.JSONEq(t, tc.wantEvent, metaString(t, last.Metadata, "event"))
				require.Equal(t, string(tc.wantCategory), last.Metadata["category"])
				if scheduled {
					require.Equal(t, true, last.Metadata["sweeper_scheduled"], "keeps the row out of adoption's index")
				} else {
					require.NotContains(t, last.Metadata, "sweeper_scheduled", "unscheduled rows stay adoptable")
				}
				if tc.wantBackoff != 0 {
					require.Equal(t, float64(tc.wantBackoff), last.Metadata["backoff_seconds"])
					require.Equal(t, string(tc.wantSource), last.Metadata["backoff_source"])
				} else {
					require.NotContains(t, last.Metadata, "backoff_seconds")
				}
				if tc.wantSource == backoff.SourceRetryAfter {
					require.Equal(t, tc.failure.RetryAfter, last.Metadata["retry_after"])
				}
			})
		})
	}
}

// A retry is written in one transaction. The handler's transaction is
// killed after the step UPDATE ran and while the transition INSERT is
// stalled: neither half may become visible.
func TestHandleIsOneTransaction(t *testing.T) {
	t.Parallel()
	bothPaths(t, testHandleIsOneTransaction)
}

func testHandleIsOneTransaction(t *testing.T, pool *pgxpool.Pool, objects testdb.Objects) {
	ctx := context.Background()
	step := placeStep(t, pool, statemachine.EnqueuedAsErrorForOrchestration, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3),
		InProcess: testdb.Ptr(true), LastAttemptedAgo: testdb.Ptr(10 * time.Minute),
	}).Steps[0]
	beforeRow := readStep(t, pool, step)
	before := snapshot(t, pool, step)

	// Only this test's own database gets the stalling trigger.
	_, err := pool.Exec(ctx, `
CREATE FUNCTION public.stall_transition_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(60);
    RETURN NEW;
END
$$;
CREATE TRIGGER stall_transition_insert BEFORE INSERT ON tasker.workflow_step_transitions
FOR EACH ROW EXECUTE FUNCTION public.stall_transition_insert();`)
	require.NoError(t, err)

	handleCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	var (
		wg        sync.WaitGroup
		res       handling.Result
		handleErr error
	)
	// Deferred in this order so that a failing test cancels the stalled call
	// first and then waits for it.
	defer wg.Wait()
	defer cancel()
	svc := newService(t, pool, jitterOff())
	wg.Go(func() {
		res, handleErr = svc.Handle(handleCtx, handling.Failure{
			StepUUID: step, Message: "upstream hiccup",
		})
	})

	pid := waitForSleepingBackend(t, pool)
	// The step UPDATE already ran in the open transaction: it holds the row lock.
	_, lockErr := pool.Exec(ctx, `
SELECT 1 FROM tasker.workflow_steps WHERE workflow_step_uuid = $1 FOR UPDATE NOWAIT`, step)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, lockErr, &pgErr, "the handler's transaction must already hold the step row")
	require.Equal(t, "55P03", pgErr.Code)

	var terminated bool
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, pid).Scan(&terminated))
	require.True(t, terminated)
	wg.Wait()

	require.Error(t, handleErr, "a killed transaction is an error")
	require.NotEqual(t, handling.ActionTransitionedToWaitingForRetry, res.Action)
	after := readStep(t, pool, step)
	require.Nil(t, after.BackoffRequestSeconds, "no backoff without its transition")
	require.Equal(t, beforeRow.LastAttemptedAt, after.LastAttemptedAt)
	require.True(t, after.InProcess)
	require.Len(t, transitions(t, pool, step), failedHistory)
	require.Equal(t, before, snapshot(t, pool, step))
	require.Nil(t, scheduledAt(t, pool, objects, step), "no schedule row without its transition")
}

// waitForSleepingBackend returns the pid of the session of this database that
// sits in pg_sleep.
func waitForSleepingBackend(t *testing.T, pool *pgxpool.Pool) int32 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var pids []int32
		rows, err := pool.Query(context.Background(), `
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND wait_event = 'PgSleep'`)
		require.NoError(t, err)
		pids, err = pgx.CollectRows(rows, pgx.RowTo[int32])
		require.NoError(t, err)
		if len(pids) > 0 {
			require.Len(t, pids, 1)
			return pids[0]
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the handler never reached the stalled transition insert")
	return 0
}

// A step in a state where neither WaitForRetry nor Fail is legal is a
// conflict, on the retry path and on the fail path alike, and nothing is
// written.
func TestHandleConflictWritesNothing(t *testing.T) {
	t.Parallel()
	for _, state := range []statemachine.State{
		statemachine.Complete, statemachine.Cancelled, statemachine.ResolvedManually,
	} {
		for _, attempts := range []int32{1, 3} { // retry path, exhausted (fail) path
			t.Run(fmt.Sprintf("%s/attempts=%d", state, attempts), func(t *testing.T) {
				t.Parallel()
				pool := testdb.New(t)
				step := placeStep(t, pool, state, testdb.StepColumns{
					Attempts: testdb.Ptr(attempts), MaxAttempts: testdb.Ptr[int32](3),
				}).Steps[0]
				before := snapshot(t, pool, step)

				_, err := newService(t, pool, jitterOff()).Handle(context.Background(), handling.Failure{
					StepUUID: step, Message: "upstream hiccup",
				})
				require.ErrorIs(t, err, handling.ErrConflict)
				require.Equal(t, before, snapshot(t, pool, step))
				require.Equal(t, string(state), currentState(t, pool, step))
			})
		}
	}
}

func TestHandleUnknownStep(t *testing.T) {
	t.Parallel()
	svc := newService(t, testdb.New(t), jitterOff())

	_, err := svc.Handle(context.Background(), handling.Failure{StepUUID: uuid.New(), Message: "boom"})
	require.ErrorIs(t, err, statemachine.ErrStepNotFound)

	_, err = svc.Handle(context.Background(), handling.Failure{StepUUID: uuid.Nil, Message: "boom"})
	require.ErrorIs(t, err, handling.ErrInvalidFailure)
}

// A repeated report finds the step already parked or failed: NoActionTaken and
// not a single byte written, updated_at included.
func TestHandleRepeatedReportIsNoAction(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		attempts  int32
		wantFirst handling.Action
		wantState statemachine.State
	}{
		{"waiting_for_retry", 1, handling.ActionTransitionedToWaitingForRetry, statemachine.WaitingForRetry},
		{"error", 3, handling.ActionMarkedAsError, statemachine.Error},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := testdb.New(t)
			step := placeStep(t, pool, statemachine.EnqueuedAsErrorForOrchestration, testdb.StepColumns{
				Attempts: testdb.Ptr(tc.attempts), MaxAttempts: testdb.Ptr[int32](3),
			}).Steps[0]
			svc := newService(t, pool, jitterOff())
			f := handling.Failure{StepUUID: step, Message: "upstream hiccup"}

			first, err := svc.Handle(context.Background(), f)
			require.NoError(t, err)
			require.Equal(t, tc.wantFirst, first.Action)
			afterFirst := snapshot(t, pool, step)
			require.Len(t, transitions(t, pool, step), failedHistory+1)

			second, err := svc.Handle(context.Background(), f)
			require.NoError(t, err)
			require.Equal(t, handling.ActionNoActionTaken, second.Action)
			require.Equal(t, tc.wantState, second.FinalState)
			require.Nil(t, second.BackoffSeconds)
			require.Equal(t, afterFirst, snapshot(t, pool, step))
			require.Len(t, transitions(t, pool, step), failedHistory+1)
		})
	}
}

// Many reports of the same failure at once: exactly one moves the step, the
// others see it already handled; nobody gets an error.
func TestHandleConcurrentReportsExactlyOneWins(t *testing.T) {
	t.Parallel()
	bothPaths(t, testHandleConcurrentReportsExactlyOneWins)
}

func testHandleConcurrentReportsExactlyOneWins(t *testing.T, pool *pgxpool.Pool, objects testdb.Objects) {
	step := placeStep(t, pool, statemachine.EnqueuedAsErrorForOrchestration, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3),
	}).Steps[0]
	svc := newService(t, pool, jitterOff())

	const reporters = 8
	results := make([]handling.Result, reporters)
	errs := make([]error, reporters)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range reporters {
		wg.Go(func() {
			<-start
			results[i], errs[i] = svc.Handle(context.Background(), handling.Failure{
				StepUUID: step, Message: "upstream hiccup",
			})
		})
	}
	close(start)
	wg.Wait()

	counts := map[handling.Action]int{}
	for i := range reporters {
		require.NoError(t, errs[i], "reporter %d", i)
		require.Equal(t, statemachine.WaitingForRetry, results[i].FinalState, "reporter %d", i)
		counts[results[i].Action]++
	}
	require.Equal(t, map[handling.Action]int{
		handling.ActionTransitionedToWaitingForRetry: 1,
		handling.ActionNoActionTaken:                 reporters - 1,
	}, counts)

	rows := transitions(t, pool, step)
	require.Len(t, rows, failedHistory+1, "exactly one transition row added")
	mostRecent := 0
	for _, r := range rows {
		if r.MostRecent {
			mostRecent++
		}
	}
	require.Equal(t, 1, mostRecent)
	require.Equal(t, "waiting_for_retry", rows[failedHistory].ToState)
	row := readStep(t, pool, step)
	require.NotNil(t, row.BackoffRequestSeconds)
	require.Equal(t, int32(2), *row.BackoffRequestSeconds)
	require.Equal(t, objects == testdb.WithSweeperObjects, scheduledAt(t, pool, objects, step) != nil,
		"scheduled on the schedule path")
}

// jsonb rejects NUL; the handler strips it instead of failing the report.
func TestHandleStripsNUL(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	step := placeStep(t, pool, statemachine.EnqueuedAsErrorForOrchestration, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3),
	}).Steps[0]

	res, err := newService(t, pool, jitterOff()).Handle(context.Background(), handling.Failure{
		StepUUID: step, Message: "bad\x00byte",
	})
	require.NoError(t, err)
	require.Equal(t, handling.ActionTransitionedToWaitingForRetry, res.Action)
	rows := transitions(t, pool, step)
	require.Len(t, rows, failedHistory+1)
	require.JSONEq(t, `{"type":"WaitForRetry","data":"badbyte"}`, metaString(t, rows[failedHistory].Metadata, "event"))
}

// recordingClassifier remembers what it was asked and answers with a fixed
// verdict.
type recordingClassifier struct {
	mu   sync.Mutex
	seen []handling.ErrorContext
}

func (c *recordingClassifier) Classify(ec handling.ErrorContext) handling.Classification {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen = append(c.seen, ec)
	return handling.Classification{
		Category:  handling.CategoryPermanent,
		Retryable: false,
		ErrorCode: "CUSTOM_CODE",
		Message:   ec.Message,
		Reason:    "custom",
	}
}

// The classifier gets the attempt as stored (no +1), the resolved max, and a
// real execution duration, and its verdict is the one applied.
func TestHandleClassifierContext(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	task := placeStep(t, pool, statemachine.EnqueuedAsErrorForOrchestration, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](2), MaxAttempts: testdb.Ptr[int32](3),
		LastAttemptedAgo: testdb.Ptr(90 * time.Second),
	})
	step := task.Steps[0]
	classifier := &recordingClassifier{}

	res, err := newService(t, pool, jitterOff(), handling.WithClassifier(classifier)).Handle(
		context.Background(), handling.Failure{
			StepUUID: step, Message: "upstream hiccup", Source: "http_api", Kind: "whatever", HTTPStatus: 500,
		})
	require.NoError(t, err)

	classifier.mu.Lock()
	seen := append([]handling.ErrorContext(nil), classifier.seen...)
	classifier.mu.Unlock()
	require.Len(t, seen, 1)
	ec := seen[0]
	require.Equal(t, step.String(), ec.StepUUID)
	require.Equal(t, task.TaskUUID.String(), ec.TaskUUID)
	require.True(t, strings.HasPrefix(ec.StepName, "step-0-"), "step name %q", ec.StepName)
	require.Equal(t, 2, ec.AttemptNumber, "attempts already counts the failed attempt")
	require.Equal(t, 3, ec.MaxAttempts)
	require.InDelta(t, 90*time.Second, ec.ExecutionDuration, float64(5*time.Second))
	require.Equal(t, "http_api", ec.ErrorSource)
	require.Equal(t, "upstream hiccup", ec.Message)
	require.Equal(t, "whatever", ec.Kind)
	require.Equal(t, 500, ec.HTTPStatus)

	// The custom verdict (Permanent) is applied, not the standard one (Transient).
	require.Equal(t, handling.ActionMarkedAsPermanentFailure, res.Action)
	require.Equal(t, handling.CategoryPermanent, res.Classification.Category)
	rows := transitions(t, pool, step)
	require.Len(t, rows, failedHistory+1)
	require.Equal(t, "error", rows[failedHistory].ToState)
	require.Equal(t, "CUSTOM_CODE", rows[failedHistory].Metadata["error_code"])
}

// A NULL max_attempts reaches the classifier, and the result, as tasker's
// limit of 3.
func TestHandleClassifierSeesTaskerDefaultMaxAttempts(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	step := placeStep(t, pool, statemachine.EnqueuedAsErrorForOrchestration, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](1), NullMaxAttempts: true,
	}).Steps[0]
	classifier := &recordingClassifier{}

	res, err := newService(t, pool, jitterOff(), handling.WithClassifier(classifier)).Handle(
		context.Background(), handling.Failure{StepUUID: step, Message: "upstream hiccup"})
	require.NoError(t, err)
	require.Equal(t, 3, handling.TaskerDefaultMaxAttempts)
	require.Equal(t, handling.TaskerDefaultMaxAttempts, res.MaxAttempts)
	classifier.mu.Lock()
	defer classifier.mu.Unlock()
	require.Len(t, classifier.seen, 1)
	require.Equal(t, handling.TaskerDefaultMaxAttempts, classifier.seen[0].MaxAttempts)
	require.Equal(t, time.Duration(0), classifier.seen[0].ExecutionDuration, "no last_attempted_at, no duration")
}

// Jitter comes from the injected source and is recorded beside the delay.
func TestHandleJitterFromInjectedRand(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	step := placeStep(t, pool, statemachine.EnqueuedAsErrorForOrchestration, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](5),
	}).Steps[0]
	cfg := handling.DefaultConfig()
	cfg.Backoff.JitterFraction = 0.5

	// 1 s × 2³ = 8 s; a draw of 0.75 is +0.5 × 0.5 × 8 s = +2 s.
	res, err := newService(t, pool, cfg, handling.WithRand(fixedRand(0.75))).Handle(
		context.Background(), handling.Failure{StepUUID: step, Message: "upstream hiccup"})
	require.NoError(t, err)
	require.NotNil(t, res.BackoffSeconds)
	require.Equal(t, int32(10), *res.BackoffSeconds)
	row := readStep(t, pool, step)
	require.NotNil(t, row.BackoffRequestSeconds)
	require.Equal(t, int32(10), *row.BackoffRequestSeconds)
	rows := transitions(t, pool, step)
	require.Len(t, rows, failedHistory+1)
	require.Equal(t, float64(10), rows[failedHistory].Metadata["backoff_seconds"])
	require.Equal(t, float64(2), rows[failedHistory].Metadata["jitter_seconds"])
}
