// Package telemetry owns the daemon's Prometheus metrics: the registry and
// its series, and the adapters that feed them from the sweeper's hooks, the
// scheduler's skipped ticks and wake-ups, the adoption loop, the reconcile
// passes, the database health checks, the readiness verdicts, the backlog
// gauges, the park listener and the inline
// handler's decisions.
package telemetry

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/buildinfo"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// Known label values, each exported at 0 from the start so a rate() or an
// absent() alert has a series to look at before the first event.
var (
	sweepOutcomes     = []string{"success", "failure", "interrupted"}
	batchOutcomes     = []string{"moved", "empty", "failed", "interrupted"}
	skipReasons       = []string{sweeper.SkipSweepRunning, sweeper.SkipDatabaseUnavailable}
	reconcileOutcomes = []string{"done", "skipped", "failed"}
	driftKinds        = []string{"missing", "orphaned", "retimed_earlier", "retimed_later", "restranded"}
	adoptionPasses    = []string{"sweep", "poll"}
	wakeReasons       = []string{
		string(sweeper.TriggerCron), string(sweeper.TriggerTimer),
		string(sweeper.TriggerNotify), string(sweeper.TriggerAdoption),
	}
	emptyWakeReasons = []string{string(sweeper.TriggerTimer), string(sweeper.TriggerNotify), string(sweeper.TriggerAdoption)}
	lagTriggers      = []string{
		string(sweeper.TriggerTimer), string(sweeper.TriggerNotify), string(sweeper.TriggerAdoption),
		string(sweeper.TriggerCron), string(sweeper.TriggerManual),
	}
)

// Metrics are the daemon's Prometheus series, on a registry of their own so
// tests can build as many daemons as they like.
type Metrics struct {
	registry     *prometheus.Registry
	sweeps       *prometheus.CounterVec
	transitioned prometheus.Counter
	stranded     prometheus.Gauge
	lostRaces    prometheus.Counter
	batches      *prometheus.CounterVec
	duration     prometheus.Histogram
	lag          *prometheus.HistogramVec
	skippedTicks *prometheus.CounterVec
	decisions    *prometheus.CounterVec
	databaseUp   prometheus.Gauge
	adopted      *prometheus.CounterVec
	reconciles   *prometheus.CounterVec
	drift        *prometheus.CounterVec
	locked       prometheus.Counter
	wakeups      *prometheus.CounterVec
	emptyWakeups *prometheus.CounterVec
	listenerUp   prometheus.Gauge
	paused       prometheus.Gauge
	dryRuns      prometheus.Counter
	lastSuccess  prometheus.Gauge
	ready        prometheus.Gauge
	waiting      prometheus.Gauge
	due          prometheus.Gauge
	oldestDue    prometheus.Gauge
	buildInfo    *prometheus.GaugeVec
	// now is the clock of the last-success gauge (tests pin it).
	now func() time.Time
}

// New registers every series, plus the Go runtime and process collectors.
func New() *Metrics {
	const ns = "tasker_sweeper"
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		sweeps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "sweeps_total",
			Help: "Sweeps by outcome: success, failure, interrupted (a shutdown stopped it); dry runs are counted apart.",
		}, []string{"outcome"}),
		transitioned: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "steps_transitioned_total",
			Help: "Steps moved from waiting_for_retry to pending.",
		}),
		stranded: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "stranded_steps",
			Help: "Steps in waiting_for_retry that are not retry-eligible, as of the last sweep: only an operator can move them.",
		}),
		lostRaces: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "lost_races_total",
			Help: "Claimed steps another writer moved first.",
		}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "batches_total",
			Help: "Batch transactions by outcome: moved, empty, failed, interrupted (cancelled by a shutdown, rolled back).",
		}, []string{"outcome"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "sweep_duration_seconds",
			Help:    "Wall time of one sweep.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
		}),
		lag: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "due_to_pending_lag_seconds",
			Help: "Time from a step becoming due to the sweep moving it to pending (database clock), by what started the sweep: " +
				"timer, notify, adoption (the timer gate), cron, manual.",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60, 120, 300},
		}, []string{"trigger"}),
		skippedTicks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "skipped_ticks_total",
			Help: "Scheduled ticks skipped, by reason: sweep_running, database_unavailable.",
		}, []string{"reason"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "handler_decisions_total",
			Help: "Inline failure handler decisions by action and error category.",
		}, []string{"action", "category"}),
		databaseUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "database_up",
			Help: "1 when the last database health check succeeded.",
		}),
		adopted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "steps_adopted_total",
			Help: "Waiting steps parked by other writers that joined the schedule on a sweep (each sweep looks at the recent ones).",
		}, []string{"pass"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "reconcile_passes_total",
			Help: "Reconcile passes this process ran, by outcome: done, skipped (another replica was running one), failed.",
		}, []string{"outcome"}),
		drift: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "schedule_drift_total",
			Help: "Schedule rows a reconcile pass corrected, by kind: missing, orphaned, retimed_earlier, retimed_later, restranded.",
		}, []string{"kind"}),
		locked: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "skipped_locked_steps_total",
			Help: "Due steps a sweep left waiting because another transaction held them locked (tried again next sweep).",
		}),
		wakeups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "wakeups_total",
			Help: "Scheduler wake-ups by reason: cron (a tick), timer, notify, adoption (the timer gate, by what armed it).",
		}, []string{"reason"}),
		emptyWakeups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "empty_wakeups_total",
			Help: "Timer gate wake-ups that moved nothing (nothing due, or another replica took the batch), by reason.",
		}, []string{"reason"}),
		listenerUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "listener_up",
			Help: "1 while the connection listening for parked steps (the timer gate's notifications) is up.",
		}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "paused",
			Help: "1 while the replicas' pause switch is on (sweeper pause): no sweep moves a step; as of the last sweep's look.",
		}),
		dryRuns: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "dry_runs_total",
			Help: "Dry-run sweeps (POST /v1/sweeps?dry_run=true), whatever their outcome: they move nothing.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "last_success_timestamp_seconds",
			Help: "Unix time the last successful sweep (not a dry run) finished; 0 before the first.",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "ready",
			Help: "1 when the last readiness preflight passed every check (what /readyz answers), else 0.",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "waiting_steps",
			Help: "Steps in waiting_for_retry, stranded ones included (refreshed at most every 15 s).",
		}),
		due: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "due_steps",
			Help: "Waiting steps that are due by the full due rule and not yet moved (refreshed at most every 15 s).",
		}),
		oldestDue: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "oldest_due_age_seconds",
			Help: "How long the longest-waiting due step has been due; 0 when none is (refreshed at most every 15 s).",
		}),
		buildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Name: "build_info",
			Help: "Always 1; the labels say which build is running.",
		}, []string{"version", "revision", "goversion"}),
		now: time.Now,
	}
	m.registry.MustRegister(m.sweeps, m.transitioned, m.stranded, m.lostRaces, m.batches, m.duration, m.lag,
		m.skippedTicks, m.decisions, m.databaseUp, m.adopted, m.reconciles, m.drift, m.locked,
		m.wakeups, m.emptyWakeups, m.listenerUp, m.paused,
		m.dryRuns, m.lastSuccess, m.ready, m.waiting, m.due, m.oldestDue, m.buildInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, vec := range []struct {
		v      *prometheus.CounterVec
		values []string
	}{
		{m.sweeps, sweepOutcomes},
		{m.batches, batchOutcomes},
		{m.skippedTicks, skipReasons},
		{m.reconciles, reconcileOutcomes},
		{m.drift, driftKinds},
		{m.adopted, adoptionPasses},
		{m.wakeups, wakeReasons},
		{m.emptyWakeups, emptyWakeReasons},
	} {
		for _, value := range vec.values {
			vec.v.WithLabelValues(value)
		}
	}
	for _, trigger := range lagTriggers {
		m.lag.WithLabelValues(trigger)
	}
	build := buildinfo.Get()
	m.buildInfo.WithLabelValues(build.Version, build.Revision, build.GoVersion).Set(1)
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// SweepHooks feeds sweep and batch outcomes into the metrics.
func (m *Metrics) SweepHooks() sweeper.Hooks {
	return sweeper.Hooks{BatchDone: m.batchDone, SweepDone: m.sweepDone, PauseChecked: m.PauseChecked}
}

func (m *Metrics) batchDone(res sweeper.BatchResult, err error) {
	switch {
	case errors.Is(err, context.Canceled):
		m.batches.WithLabelValues("interrupted").Inc() // a shutdown cancelled it: rolled back whole
	case err != nil:
		m.batches.WithLabelValues("failed").Inc()
	case res.Claimed == 0:
		m.batches.WithLabelValues("empty").Inc()
	default:
		m.batches.WithLabelValues("moved").Inc()
	}
	trigger := res.Trigger
	if trigger == "" {
		trigger = sweeper.TriggerManual
	}
	for _, mv := range res.Moved {
		if !mv.DueAt.IsZero() {
			m.lag.WithLabelValues(string(trigger)).Observe(max(mv.MovedAt.Sub(mv.DueAt).Seconds(), 0))
		}
	}
}

// sweepDone records a finished sweep. A dry run is counted only in
// dry_runs_total: it moves nothing, so it says nothing about whether sweeps
// work, and its duration would skew the sweeps' histogram.
func (m *Metrics) sweepDone(sum sweeper.Summary, err error) {
	if err == nil && !sum.Trigger.Timed() { // timed sweeps do not count stranded steps
		m.stranded.Set(float64(sum.Stranded))
	}
	if sum.DryRun {
		m.dryRuns.Inc()
		return
	}
	outcome := "success"
	switch {
	case sum.Interrupted || errors.Is(err, sweeper.ErrInterrupted) || errors.Is(err, context.Canceled):
		outcome = "interrupted"
	case err != nil:
		outcome = "failure"
	}
	m.sweeps.WithLabelValues(outcome).Inc()
	m.duration.Observe(sum.Duration.Seconds())
	m.transitioned.Add(float64(sum.Transitioned))
	m.lostRaces.Add(float64(sum.LostRaces))
	m.adopted.WithLabelValues("sweep").Add(float64(sum.Adopted))
	m.locked.Add(float64(sum.SkippedLocked))
	if outcome == "success" {
		m.lastSuccess.Set(float64(m.now().UnixNano()) / 1e9)
	}
}

// ReadinessChecked records a readiness verdict (what /readyz answered).
func (m *Metrics) ReadinessChecked(ready bool) { m.ready.Set(boolGauge(ready)) }

// BacklogCounted sets the backlog gauges.
func (m *Metrics) BacklogCounted(b sweeper.Backlog) {
	m.waiting.Set(float64(b.Waiting))
	m.due.Set(float64(b.Due))
	m.oldestDue.Set(b.OldestDueAge().Seconds())
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ReconcilePass records one attempt at a reconcile pass (fits
// sweeper.ReconcileOptions.OnPassDone); a check that found none due is not
// a pass.
func (m *Metrics) ReconcilePass(res sweeper.Reconciliation, err error) {
	switch {
	case err != nil:
		m.reconciles.WithLabelValues("failed").Inc()
	case res.Skipped:
		m.reconciles.WithLabelValues("skipped").Inc()
	case res.Ran:
		m.reconciles.WithLabelValues("done").Inc()
		m.drift.WithLabelValues("missing").Add(float64(res.Missing))
		m.drift.WithLabelValues("orphaned").Add(float64(res.Orphaned))
		m.drift.WithLabelValues("retimed_earlier").Add(float64(res.RetimedEarlier))
		m.drift.WithLabelValues("retimed_later").Add(float64(res.RetimedLater))
		m.drift.WithLabelValues("restranded").Add(float64(res.Restranded))
	}
}

// SkippedTick counts a scheduled tick skipped for reason (fits
// sweeper.SchedulerOptions.OnSkippedTick).
func (m *Metrics) SkippedTick(reason string) { m.skippedTicks.WithLabelValues(reason).Inc() }

// DatabaseChecked records a health check's verdict.
func (m *Metrics) DatabaseChecked(up bool) { m.databaseUp.Set(boolGauge(up)) }

// FailureHandler is the inline handler as CountDecisions wraps it.
type FailureHandler interface {
	Handle(ctx context.Context, f handling.Failure) (handling.Result, error)
}

// CountDecisions wraps next so that every decision it makes is counted by
// action and error category; errors are not decisions.
func (m *Metrics) CountDecisions(next FailureHandler) FailureHandler {
	return decisionCounter{next: next, metrics: m}
}

type decisionCounter struct {
	next    FailureHandler
	metrics *Metrics
}

func (d decisionCounter) Handle(ctx context.Context, f handling.Failure) (handling.Result, error) {
	res, err := d.next.Handle(ctx, f)
	if err == nil {
		d.metrics.decisions.WithLabelValues(string(res.Action), string(res.Classification.Category)).Inc()
	}
	return res, err
}

// Wake counts a scheduler wake-up (fits sweeper.SchedulerOptions.OnWake).
func (m *Metrics) Wake(reason sweeper.Trigger) { m.wakeups.WithLabelValues(string(reason)).Inc() }

// EmptyWake counts a timer wake-up that moved nothing (fits
// sweeper.GateOptions.OnEmptyWake).
func (m *Metrics) EmptyWake(reason sweeper.Trigger) {
	m.emptyWakeups.WithLabelValues(string(reason)).Inc()
}

// PauseChecked records the pause switch as a sweep read it.
func (m *Metrics) PauseChecked(p sweeper.Pause) { m.paused.Set(boolGauge(p.Paused)) }

// ListenerUp records the state of the park listener's connection.
func (m *Metrics) ListenerUp(up bool) { m.listenerUp.Set(boolGauge(up)) }

// Adopted counts the steps the daemon's adoption loop adopted (fits
// sweeper.AdoptionOptions.OnAdopted), as steps_adopted_total{pass="poll"}.
func (m *Metrics) Adopted(n int) { m.adopted.WithLabelValues("poll").Add(float64(n)) }
