package main

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// parkOutsideWindow makes one step waiting_for_retry the way another writer
// would, with a transition older than any incremental adoption window, and
// makes the full adoption pass due.
func parkOutsideWindow(t *testing.T, pool *pgxpool.Pool) uuid.UUID {
	t.Helper()
	ctx := context.Background()
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Second), BackoffRequestSeconds: testdb.Ptr[int32](600)})
	_, err := pool.Exec(ctx, `UPDATE tasker.workflow_step_transitions SET created_at = created_at - interval '1 hour'
		WHERE workflow_step_uuid = $1`, step)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `UPDATE tasker_sweeper.adoption
		SET watermark = now(), last_full_pass = now() - interval '1 hour'`)
	require.NoError(t, err)
	return step
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}

func scheduled(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) bool {
	t.Helper()
	var ok bool
	require.NoError(t, pool.QueryRow(context.Background(),
		`SELECT EXISTS (SELECT 1 FROM tasker_sweeper.retry_schedule WHERE workflow_step_uuid = $1)`, step).Scan(&ok))
	return ok
}

// The daemon's full adoption pass runs on its own timer, beside the
// scheduler, and stops with the daemon.
func TestFullAdoptionLoopAdoptsOldSteps(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	step := parkOutsideWindow(t, pool)
	sw := sweeper.New(db.NewStore(pool), sweeper.DefaultConfig(), slog.New(slog.DiscardHandler), sweeper.Hooks{})

	m := newMetrics()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		fullAdoptionLoop(ctx, sw, func() bool { return true }, m.fullPass, slog.New(slog.DiscardHandler))
	}()
	require.Eventually(t, func() bool { return scheduled(t, pool, step) }, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool {
		return counterValue(t, m.fullPasses.WithLabelValues("done")) == 1
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, 1.0, counterValue(t, m.adopted.WithLabelValues("full")))
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the loop did not stop with its context")
	}
}

// A replica whose full pass finds another replica's running skips it, and
// the metrics say so; a failed pass is counted as failed.
func TestFullPassMetrics(t *testing.T) {
	t.Parallel()
	m := newMetrics()
	m.fullPass(sweeper.Reconciliation{Skipped: true}, nil)
	m.fullPass(sweeper.Reconciliation{}, nil) // not due: not a pass
	m.fullPass(sweeper.Reconciliation{}, errors.New("connection refused"))
	m.fullPass(sweeper.Reconciliation{Ran: true, Missing: 3}, nil)
	require.Equal(t, 1.0, counterValue(t, m.fullPasses.WithLabelValues("skipped")))
	require.Equal(t, 1.0, counterValue(t, m.fullPasses.WithLabelValues("failed")))
	require.Equal(t, 1.0, counterValue(t, m.fullPasses.WithLabelValues("done")))
	require.Equal(t, 3.0, counterValue(t, m.adopted.WithLabelValues("full")))
}

// `sweeper once` runs a due full adoption pass after its sweep.
func TestOnceRunsDueFullAdoption(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	step := parkOutsideWindow(t, pool)
	res := runBinary(t, []string{"DATABASE_URL=" + url}, "once", "--json")
	require.Equal(t, 0, res.code, res.stderr)
	require.True(t, scheduled(t, pool, step), "the full pass adopted the old step")
	require.Contains(t, res.stderr, "reconcile")
}
