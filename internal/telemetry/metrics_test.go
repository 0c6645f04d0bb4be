package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}

// A replica whose reconcile pass finds another replica's running skips it,
// and the metrics say so; a failed pass is counted as failed; what a pass
// corrected is counted by kind.
func TestReconcilePassMetrics(t *testing.T) {
	t.Parallel()
	m := New()
	m.ReconcilePass(sweeper.Reconciliation{Skipped: true}, nil)
	m.ReconcilePass(sweeper.Reconciliation{}, nil) // not due: not a pass
	m.ReconcilePass(sweeper.Reconciliation{}, errors.New("connection refused"))
	m.ReconcilePass(sweeper.Reconciliation{Ran: true, Missing: 3, Orphaned: 2, RetimedEarlier: 5, Restranded: 1}, nil)
	require.Equal(t, 1.0, counterValue(t, m.reconciles.WithLabelValues("skipped")))
	require.Equal(t, 1.0, counterValue(t, m.reconciles.WithLabelValues("failed")))
	require.Equal(t, 1.0, counterValue(t, m.reconciles.WithLabelValues("done")))
	require.Equal(t, 3.0, counterValue(t, m.drift.WithLabelValues("missing")))
	require.Equal(t, 2.0, counterValue(t, m.drift.WithLabelValues("orphaned")))
	require.Equal(t, 5.0, counterValue(t, m.drift.WithLabelValues("retimed_earlier")))
	require.Equal(t, 0.0, counterValue(t, m.drift.WithLabelValues("retimed_later")))
	require.Equal(t, 1.0, counterValue(t, m.drift.WithLabelValues("restranded")))
}

func TestSweepHooksCountOutcomes(t *testing.T) {
	t.Parallel()
	m := New()
	hooks := m.SweepHooks()
	now := time.Now()
	hooks.BatchDone(sweeper.BatchResult{Claimed: 2, Trigger: sweeper.TriggerTimer, Moved: []sweeper.Moved{
		{DueAt: now.Add(-2 * time.Second), MovedAt: now}, {DueAt: now.Add(time.Second), MovedAt: now},
	}}, nil)
	hooks.BatchDone(sweeper.BatchResult{}, nil)
	hooks.BatchDone(sweeper.BatchResult{}, errors.New("deadlock"))
	hooks.BatchDone(sweeper.BatchResult{}, fmt.Errorf("batch 3: %w", context.Canceled))
	hooks.SweepDone(sweeper.Summary{Transitioned: 2, LostRaces: 1, Adopted: 4, Stranded: 5, SkippedLocked: 7}, nil)
	hooks.SweepDone(sweeper.Summary{DryRun: true, Transitioned: 9, Stranded: 6}, nil)
	hooks.SweepDone(sweeper.Summary{Transitioned: 1}, errors.New("batch failed"))
	hooks.SweepDone(sweeper.Summary{}, context.Canceled)
	// A timed sweep does not count stranded steps: the gauge keeps its value.
	hooks.SweepDone(sweeper.Summary{Trigger: sweeper.TriggerNotify}, nil)

	for _, outcome := range []string{"moved", "empty", "failed", "interrupted"} {
		require.Equal(t, 1.0, counterValue(t, m.batches.WithLabelValues(outcome)), outcome)
	}
	for _, outcome := range []string{"dry_run", "failure", "interrupted"} {
		require.Equal(t, 1.0, counterValue(t, m.sweeps.WithLabelValues(outcome)), outcome)
	}
	require.Equal(t, 2.0, counterValue(t, m.sweeps.WithLabelValues("success")))
	require.Equal(t, 3.0, counterValue(t, m.transitioned), "a dry run moves nothing")
	require.Equal(t, 1.0, counterValue(t, m.lostRaces))
	require.Equal(t, 7.0, counterValue(t, m.locked))
	require.Equal(t, 4.0, counterValue(t, m.adopted.WithLabelValues("sweep")))
	var g dto.Metric
	require.NoError(t, m.stranded.Write(&g))
	require.Equal(t, 6.0, g.GetGauge().GetValue(), "the last successful sweep's count; failed ones do not reset it")
	var h dto.Metric
	require.NoError(t, m.lag.WithLabelValues("timer").(prometheus.Metric).Write(&h))
	require.Equal(t, uint64(2), h.GetHistogram().GetSampleCount(), "labelled by the batch's trigger")
	require.InDelta(t, 2.0, h.GetHistogram().GetSampleSum(), 0.01, "a step moved before its due time counts as 0")
	var manual dto.Metric
	require.NoError(t, m.lag.WithLabelValues("manual").(prometheus.Metric).Write(&manual))
	require.Zero(t, manual.GetHistogram().GetSampleCount())
}

func TestWakeAndListenerMetrics(t *testing.T) {
	t.Parallel()
	m := New()
	m.Wake(sweeper.TriggerCron)
	m.Wake(sweeper.TriggerNotify)
	m.Wake(sweeper.TriggerNotify)
	m.EmptyWake(sweeper.TriggerNotify)
	m.Adopted(3)
	m.ListenerUp(true)
	m.ListenerUp(false)
	require.Equal(t, 1.0, counterValue(t, m.wakeups.WithLabelValues("cron")))
	require.Equal(t, 2.0, counterValue(t, m.wakeups.WithLabelValues("notify")))
	require.Equal(t, 1.0, counterValue(t, m.emptyWakeups.WithLabelValues("notify")))
	require.Equal(t, 3.0, counterValue(t, m.adopted.WithLabelValues("poll")))
	var g dto.Metric
	require.NoError(t, m.listenerUp.Write(&g))
	require.Equal(t, 0.0, g.GetGauge().GetValue())
}

type stubHandler struct {
	res handling.Result
	err error
}

func (s stubHandler) Handle(context.Context, handling.Failure) (handling.Result, error) {
	return s.res, s.err
}

func TestCountDecisions(t *testing.T) {
	t.Parallel()
	m := New()
	decided := handling.Result{Action: handling.ActionMarkedAsError, Classification: handling.Classification{Category: handling.CategoryTimeout}}
	res, err := m.CountDecisions(stubHandler{res: decided}).Handle(t.Context(), handling.Failure{})
	require.NoError(t, err)
	require.Equal(t, decided, res)
	_, err = m.CountDecisions(stubHandler{err: handling.ErrConflict}).Handle(t.Context(), handling.Failure{})
	require.ErrorIs(t, err, handling.ErrConflict)

	require.Equal(t, 1.0, counterValue(t, m.decisions.WithLabelValues("MarkedAsError", "Timeout")))
	families, err := m.registry.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() == "tasker_sweeper_handler_decisions_total" {
			require.Len(t, f.GetMetric(), 1, "an error is not a decision")
		}
	}
}

// Every series of the README's Metrics table is served under its name and
// labels once something has happened.
func TestHandlerServesTheDocumentedSeries(t *testing.T) {
	t.Parallel()
	m := New()
	hooks := m.SweepHooks()
	hooks.BatchDone(sweeper.BatchResult{Claimed: 1, Trigger: sweeper.TriggerCron,
		Moved: []sweeper.Moved{{DueAt: time.Now(), MovedAt: time.Now()}}}, nil)
	hooks.SweepDone(sweeper.Summary{Transitioned: 1}, nil)
	m.Wake(sweeper.TriggerTimer)
	m.EmptyWake(sweeper.TriggerTimer)
	m.ListenerUp(true)
	m.Adopted(1)
	m.SkippedTick(sweeper.SkipSweepRunning)
	m.SkippedTick(sweeper.SkipDatabaseUnavailable)
	m.DatabaseChecked(true)
	m.ReconcilePass(sweeper.Reconciliation{Ran: true, Missing: 1}, nil)
	_, err := m.CountDecisions(stubHandler{res: handling.Result{Action: handling.ActionNoActionTaken}}).
		Handle(t.Context(), handling.Failure{})
	require.NoError(t, err)

	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	body := string(raw)
	for _, series := range []string{
		`tasker_sweeper_sweeps_total{outcome="success"} 1`,
		`tasker_sweeper_steps_transitioned_total 1`,
		`tasker_sweeper_stranded_steps 0`,
		`tasker_sweeper_lost_races_total 0`,
		`tasker_sweeper_batches_total{outcome="moved"} 1`,
		`tasker_sweeper_sweep_duration_seconds_count 1`,
		`tasker_sweeper_due_to_pending_lag_seconds_count{trigger="cron"} 1`,
		`tasker_sweeper_due_to_pending_lag_seconds_bucket{trigger="cron",le="0.001"}`,
		`tasker_sweeper_wakeups_total{reason="timer"} 1`,
		`tasker_sweeper_empty_wakeups_total{reason="timer"} 1`,
		`tasker_sweeper_listener_up 1`,
		`tasker_sweeper_steps_adopted_total{pass="poll"} 1`,
		`tasker_sweeper_skipped_ticks_total{reason="sweep_running"} 1`,
		`tasker_sweeper_skipped_ticks_total{reason="database_unavailable"} 1`,
		`tasker_sweeper_handler_decisions_total{action="NoActionTaken",category=""} 1`,
		`tasker_sweeper_database_up 1`,
		`tasker_sweeper_schedule_drift_total{kind="missing"} 1`,
		`tasker_sweeper_reconcile_passes_total{outcome="done"} 1`,
		`go_goroutines `,
	} {
		require.Contains(t, body, series)
	}
	var families []string
	for line := range strings.Lines(body) {
		if name, ok := strings.CutPrefix(line, "# TYPE tasker_sweeper_"); ok {
			families = append(families, strings.Fields(name)[0])
		}
	}
	slices.Sort(families)
	require.Equal(t, []string{
		"batches_total", "database_up", "due_to_pending_lag_seconds", "empty_wakeups_total",
		"handler_decisions_total", "listener_up", "lost_races_total", "reconcile_passes_total", "schedule_drift_total",
		"skipped_locked_steps_total", "skipped_ticks_total", "steps_adopted_total",
		"steps_transitioned_total", "stranded_steps", "sweep_duration_seconds", "sweeps_total", "wakeups_total",
	}, families, "exactly the README's metrics")
}
