package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
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
	for _, outcome := range []string{"failure", "interrupted"} {
		require.Equal(t, 1.0, counterValue(t, m.sweeps.WithLabelValues(outcome)), outcome)
	}
	require.Equal(t, 2.0, counterValue(t, m.sweeps.WithLabelValues("success")), "the timed sweep is a success too")
	require.Equal(t, 1.0, counterValue(t, m.dryRuns), "a dry run is counted apart")
	families, err := m.registry.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() == "tasker_sweeper_sweeps_total" {
			require.Len(t, f.GetMetric(), 3, "outcomes are success, failure, interrupted: no dry_run")
		}
		if f.GetName() == "tasker_sweeper_sweep_duration_seconds" {
			require.Equal(t, uint64(4), f.GetMetric()[0].GetHistogram().GetSampleCount(), "dry runs are not timed with the sweeps")
		}
	}
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

// readmeMetrics are the metric names of README.md's Metrics table.
func readmeMetrics(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	_, section, found := strings.Cut(string(raw), "\n## Metrics\n")
	require.True(t, found, "README.md has a Metrics section")
	section, _, _ = strings.Cut(section, "\n## ")
	var names []string
	for line := range strings.Lines(section) {
		rest, ok := strings.CutPrefix(line, "| `tasker_sweeper_")
		if !ok {
			continue
		}
		name, _, _ := strings.Cut(rest, "`")
		name, _, _ = strings.Cut(name, "{")
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Every family of the README's Metrics table is served, and nothing else
// under tasker_sweeper_; every known label value is there from the start,
// at 0, before anything happened.
func TestHandlerServesExactlyTheREADMEsMetrics(t *testing.T) {
	t.Parallel()
	body := scrape(t, New())
	for _, series := range []string{
		`tasker_sweeper_sweeps_total{outcome="success"} 0`,
		`tasker_sweeper_sweeps_total{outcome="failure"} 0`,
		`tasker_sweeper_sweeps_total{outcome="interrupted"} 0`,
		`tasker_sweeper_dry_runs_total 0`,
		`tasker_sweeper_batches_total{outcome="moved"} 0`,
		`tasker_sweeper_batches_total{outcome="empty"} 0`,
		`tasker_sweeper_batches_total{outcome="failed"} 0`,
		`tasker_sweeper_batches_total{outcome="interrupted"} 0`,
		`tasker_sweeper_skipped_ticks_total{reason="sweep_running"} 0`,
		`tasker_sweeper_skipped_ticks_total{reason="database_unavailable"} 0`,
		`tasker_sweeper_reconcile_passes_total{outcome="done"} 0`,
		`tasker_sweeper_reconcile_passes_total{outcome="skipped"} 0`,
		`tasker_sweeper_reconcile_passes_total{outcome="failed"} 0`,
		`tasker_sweeper_schedule_drift_total{kind="missing"} 0`,
		`tasker_sweeper_schedule_drift_total{kind="orphaned"} 0`,
		`tasker_sweeper_schedule_drift_total{kind="retimed_earlier"} 0`,
		`tasker_sweeper_schedule_drift_total{kind="retimed_later"} 0`,
		`tasker_sweeper_schedule_drift_total{kind="restranded"} 0`,
		`tasker_sweeper_steps_adopted_total{pass="sweep"} 0`,
		`tasker_sweeper_steps_adopted_total{pass="poll"} 0`,
		`tasker_sweeper_wakeups_total{reason="cron"} 0`,
		`tasker_sweeper_wakeups_total{reason="timer"} 0`,
		`tasker_sweeper_wakeups_total{reason="notify"} 0`,
		`tasker_sweeper_wakeups_total{reason="adoption"} 0`,
		`tasker_sweeper_empty_wakeups_total{reason="timer"} 0`,
		`tasker_sweeper_empty_wakeups_total{reason="notify"} 0`,
		`tasker_sweeper_empty_wakeups_total{reason="adoption"} 0`,
		`tasker_sweeper_due_to_pending_lag_seconds_count{trigger="timer"} 0`,
		`tasker_sweeper_due_to_pending_lag_seconds_count{trigger="notify"} 0`,
		`tasker_sweeper_due_to_pending_lag_seconds_count{trigger="adoption"} 0`,
		`tasker_sweeper_due_to_pending_lag_seconds_count{trigger="cron"} 0`,
		`tasker_sweeper_due_to_pending_lag_seconds_count{trigger="manual"} 0`,
		`tasker_sweeper_listener_up 0`,
		`tasker_sweeper_last_success_timestamp_seconds 0`,
		`tasker_sweeper_waiting_steps 0`,
		`tasker_sweeper_due_steps 0`,
		`tasker_sweeper_oldest_due_age_seconds 0`,
		`tasker_sweeper_ready 0`,
		`tasker_sweeper_database_up 0`,
		`tasker_sweeper_build_info{goversion="` + runtime.Version() + `",revision="`,
		`go_goroutines `,
	} {
		require.Contains(t, body, series)
	}
	require.NotContains(t, body, "tasker_sweeper_handler_decisions_total{", "decisions have no known label set to start with")

	// Once something happened, the rest of the families show up too.
	m := New()
	_, err := m.CountDecisions(stubHandler{res: handling.Result{Action: handling.ActionNoActionTaken}}).
		Handle(t.Context(), handling.Failure{})
	require.NoError(t, err)
	m.Wake(sweeper.TriggerTimer)
	m.EmptyWake(sweeper.TriggerTimer)
	m.ListenerUp(true)
	m.Adopted(1)
	m.PauseChecked(sweeper.Pause{Paused: true})
	body = scrape(t, m)
	for _, series := range []string{
		`tasker_sweeper_handler_decisions_total{action="NoActionTaken",category=""} 1`,
		`tasker_sweeper_wakeups_total{reason="timer"} 1`,
		`tasker_sweeper_empty_wakeups_total{reason="timer"} 1`,
		`tasker_sweeper_listener_up 1`,
		`tasker_sweeper_paused 1`,
		`tasker_sweeper_steps_adopted_total{pass="poll"} 1`,
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
	want := readmeMetrics(t)
	require.Len(t, want, 25, "README's Metrics table lists every family once: %v", want)
	require.Equal(t, want, families, "exactly the README's metrics")
}

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(raw)
}

func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, g.Write(&m))
	return m.GetGauge().GetValue()
}

// The gauges an operator alerts on: the last success, readiness, the
// backlog.
func TestAlertingGauges(t *testing.T) {
	t.Parallel()
	m := New()
	at := time.Date(2025, 3, 1, 12, 0, 0, 500_000_000, time.UTC)
	m.now = func() time.Time { return at }
	hooks := m.SweepHooks()
	hooks.SweepDone(sweeper.Summary{}, errors.New("boom"))
	hooks.SweepDone(sweeper.Summary{DryRun: true}, nil)
	require.Zero(t, gaugeValue(t, m.lastSuccess), "neither a failure nor a dry run is a success")
	hooks.SweepDone(sweeper.Summary{Transitioned: 1}, nil)
	require.Equal(t, float64(at.UnixMilli())/1000, gaugeValue(t, m.lastSuccess))
	hooks.SweepDone(sweeper.Summary{Interrupted: true}, nil)
	require.Equal(t, float64(at.UnixMilli())/1000, gaugeValue(t, m.lastSuccess), "an interrupted sweep is not a success")

	m.ReadinessChecked(true)
	require.Equal(t, 1.0, gaugeValue(t, m.ready))
	m.ReadinessChecked(false)
	require.Equal(t, 0.0, gaugeValue(t, m.ready))

	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	m.BacklogCounted(sweeper.Backlog{Waiting: 1000, Due: 7, OldestDueAt: now.Add(-90 * time.Second), DBNow: now})
	require.Equal(t, 1000.0, gaugeValue(t, m.waiting))
	require.Equal(t, 7.0, gaugeValue(t, m.due))
	require.Equal(t, 90.0, gaugeValue(t, m.oldestDue))
	m.BacklogCounted(sweeper.Backlog{Waiting: 5, OldestDueAt: now.Add(-time.Hour), DBNow: now})
	require.Equal(t, 0.0, gaugeValue(t, m.oldestDue), "nothing due: no age")
}

// promtool accepts the exposition: names, types, help, units.
func TestPromtoolChecksTheMetrics(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("promtool is required under CI=true: %v", err)
		}
		t.Skipf("promtool not found (%v): install it to lint the metrics (CI=true makes this a failure)", err)
	}
	m := New()
	hooks := m.SweepHooks()
	hooks.BatchDone(sweeper.BatchResult{Claimed: 1, Moved: []sweeper.Moved{{DueAt: time.Now(), MovedAt: time.Now()}}}, nil)
	hooks.SweepDone(sweeper.Summary{Transitioned: 1}, nil)
	_, err = m.CountDecisions(stubHandler{res: handling.Result{
		Action:         handling.ActionMarkedAsError,
		Classification: handling.Classification{Category: handling.CategoryTimeout},
	}}).Handle(t.Context(), handling.Failure{})
	require.NoError(t, err)
	cmd := exec.CommandContext(t.Context(), promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(scrape(t, m))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "promtool check metrics:\n%s", out)
}
