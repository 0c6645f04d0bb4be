package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// demoStepNames are the four steps of every demo task, run in this order
// (edges a→b→c→d).
var demoStepNames = [4]string{"validate_order", "charge_payment", "reserve_inventory", "send_confirmation"}

const (
	demoNamespace = "sweeper_demo"
	demoTaskName  = "process_order"
	// demoActor marks the transitions the demo's simulated orchestrator writes.
	demoActor = "sweeper-demo/orchestrator"
)

// demoFailure is one kind of failure a worker reports, as it would reach
// the inline handler.
type demoFailure struct {
	message    string
	httpStatus int
	retryAfter string
}

func (f demoFailure) report(step uuid.UUID) handling.Failure {
	return handling.Failure{
		StepUUID: step, Message: f.message, HTTPStatus: f.httpStatus, RetryAfter: f.retryAfter, Source: "sweeper-demo",
	}
}

var (
	failNetwork     = demoFailure{message: "read tcp 10.0.3.7:49152->10.0.9.2:443: connection reset by peer"}
	failUnavailable = demoFailure{message: "inventory service: 503 Service Unavailable", httpStatus: 503}
	failTimeout     = demoFailure{message: "payment gateway did not answer within 30s", httpStatus: 504}
	failRateLimit2  = demoFailure{message: "payment gateway: 429 Too Many Requests", httpStatus: 429, retryAfter: "2"}
	failRateLimit3  = demoFailure{message: "mail provider: 429 Too Many Requests", httpStatus: 429, retryAfter: "3"}
	failValidation  = demoFailure{message: "validation failed: missing field customer_id", httpStatus: 422}
)

// demoFailureMix is the failure of task i's failing step: mostly
// retryable (network, 503, timeouts, rate limits with Retry-After), one in
// ten permanent.
var demoFailureMix = []demoFailure{
	failNetwork, failRateLimit2, failTimeout, failUnavailable, failNetwork,
	failRateLimit3, failTimeout, failValidation, failNetwork, failRateLimit2,
}

// demoStep is one seeded step.
type demoStep struct {
	id        uuid.UUID
	task      uuid.UUID
	taskNo    int
	pos       int
	state     statemachine.State
	attempts  int32
	retryable bool
	// endedAgo is how long ago the step reached its state.
	endedAgo time.Duration
}

// demoPlan is the workload: which step of which task is where, and the
// failure each failing step reports.
type demoPlan struct {
	tasks   []uuid.UUID
	steps   []demoStep
	failing []plannedFailure
}

type plannedFailure struct {
	step    demoStep
	failure demoFailure
}

// newDemoPlan lays out n tasks of four chained steps. Task i's failing step
// is step i%3: the steps before it are complete (so it is ready to run),
// the ones after it pending. The failing step has just failed its first
// attempt, except in the last task, where it has used all three attempts
// (MarkedAsError), and in the one before, whose step is not retryable
// (MarkedAsPermanentFailure whatever the error).
func newDemoPlan(n int) demoPlan {
	var p demoPlan
	for i := range n {
		task := newUUID()
		p.tasks = append(p.tasks, task)
		failPos := i % 3
		failure := demoFailureMix[i%len(demoFailureMix)]
		for pos := range demoStepNames {
			st := demoStep{id: newUUID(), task: task, taskNo: i + 1, pos: pos, state: statemachine.Pending, retryable: true}
			switch {
			case pos < failPos:
				st.state, st.attempts, st.endedAgo = statemachine.Complete, 1, time.Duration(45*(failPos-pos))*time.Second
			case pos == failPos:
				st.state, st.attempts = statemachine.EnqueuedAsErrorForOrchestration, 1
				switch {
				case n >= 3 && i == n-1:
					st.attempts, failure = 3, failTimeout
				case n >= 4 && i == n-2:
					st.retryable, failure = false, failNetwork
				}
				p.failing = append(p.failing, plannedFailure{step: st, failure: failure})
			}
			p.steps = append(p.steps, st)
		}
	}
	return p
}

func newUUID() uuid.UUID {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.New()
	}
	return id
}

// stepName is how the demo names a step in its logs.
func (s demoStep) stepName() string { return demoStepNames[s.pos] }

// seed writes the plan through the store, in one statement.
func (p demoPlan) seed(ctx context.Context, store *db.Store) (db.DemoSeeded, error) {
	seed := db.DemoSeed{
		Namespace: demoNamespace,
		TaskName:  demoTaskName,
		Tasks:     p.tasks,
		Steps:     make([]db.DemoSeedStep, len(p.steps)),
	}
	for i, s := range p.steps {
		seed.Steps[i] = db.DemoSeedStep{
			StepUUID: s.id, TaskUUID: s.task, Name: s.stepName(), Position: s.pos,
			State: s.state, Attempts: s.attempts, Retryable: s.retryable, EndedAgo: s.endedAgo,
		}
	}
	return store.SeedDemo(ctx, seed)
}

// decisionTally counts the inline handler's decisions by action and error
// category, for the summaries. The seeding and the feeder both add to it.
type decisionTally struct {
	mu     sync.Mutex
	counts map[handling.Action]actionCount
	// retriesSucceeded counts retries the simulated orchestrator completed.
	retriesSucceeded int
}

func newDecisionTally() *decisionTally {
	return &decisionTally{counts: map[handling.Action]actionCount{}}
}

func (t *decisionTally) add(res handling.Result) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.counts[res.Action]
	if c.byCategory == nil {
		c.byCategory = map[handling.Category]int{}
	}
	c.total++
	c.byCategory[res.Classification.Category]++
	t.counts[res.Action] = c
}

func (t *decisionTally) succeeded() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.retriesSucceeded++
}

// snapshot returns every action in a stable order, a copy of the counts,
// and the number of successful retries.
func (t *decisionTally) snapshot() (actions []handling.Action, counts map[handling.Action]actionCount, succeeded int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	counts = make(map[handling.Action]actionCount, len(t.counts))
	for a, c := range t.counts {
		counts[a] = actionCount{total: c.total, byCategory: maps.Clone(c.byCategory)}
	}
	return []handling.Action{
		handling.ActionTransitionedToWaitingForRetry,
		handling.ActionMarkedAsPermanentFailure,
		handling.ActionMarkedAsError,
		handling.ActionNoActionTaken,
	}, counts, t.retriesSucceeded
}

// demoWorld is the demo's simulated orchestrator and workers: it reports
// failures to the real inline handler and re-runs the steps the sweep
// hands back.
type demoWorld struct {
	store   *db.Store
	handler *handling.Service
	logger  *slog.Logger
	tally   *decisionTally
	tasks   []uuid.UUID
	// failureOf is the failure each failing step reports again when retried:
	// the dependency that broke is usually still broken.
	failureOf map[uuid.UUID]demoFailure
	stepOf    map[uuid.UUID]demoStep
	// pickups counts retries started; every third one succeeds.
	pickups int
}

func newDemoWorld(store *db.Store, handler *handling.Service, logger *slog.Logger, plan demoPlan) *demoWorld {
	w := &demoWorld{
		store: store, handler: handler, logger: logger, tally: newDecisionTally(), tasks: plan.tasks,
		failureOf: make(map[uuid.UUID]demoFailure, len(plan.failing)),
		stepOf:    make(map[uuid.UUID]demoStep, len(plan.steps)),
	}
	for _, s := range plan.steps {
		w.stepOf[s.id] = s
	}
	for _, f := range plan.failing {
		w.failureOf[f.step.id] = f.failure
	}
	return w
}

// reportSeededFailures feeds every seeded failure through the inline handler.
func (w *demoWorld) reportSeededFailures(ctx context.Context, plan demoPlan) error {
	for _, f := range plan.failing {
		if err := w.report(ctx, f.step.id, f.failure); err != nil {
			return err
		}
	}
	return nil
}

// report runs one failure through the handler and logs its decision.
func (w *demoWorld) report(ctx context.Context, step uuid.UUID, f demoFailure) error {
	res, err := w.handler.HandleStepError(ctx, f.report(step))
	if err != nil {
		return fmt.Errorf("handle failure of step %s: %w", step, err)
	}
	w.tally.add(res)
	s := w.stepOf[step]
	attrs := []any{
		slog.Int("task", s.taskNo),
		slog.String("step", s.stepName()),
		slog.String("attempt", fmt.Sprintf("%d/%d", res.Attempts, res.MaxAttempts)),
		slog.String("category", string(res.Classification.Category)),
	}
	switch res.Action {
	case handling.ActionTransitionedToWaitingForRetry:
		if res.BackoffSeconds != nil {
			attrs = append(attrs, slog.String("retry_in", fmt.Sprintf("%ds", *res.BackoffSeconds)),
				slog.String("backoff_source", string(res.BackoffSource)))
		}
	default:
		attrs = append(attrs, slog.String("reason", res.Reason))
	}
	attrs = append(attrs, slog.String("step_uuid", step.String()))
	msg := "step failed: " + string(res.Action)
	if res.Action == handling.ActionTransitionedToWaitingForRetry {
		w.logger.Info(msg, attrs...)
	} else {
		w.logger.Warn(msg, attrs...)
	}
	return nil
}

// feedEvery is how often the simulated orchestrator picks up the steps the
// sweep moved back to pending.
const feedEvery = 3 * time.Second

// feed plays the orchestrator until ctx ends: every feedEvery it re-runs up
// to limit steps the sweep handed back. Most fail again (and go through the
// inline handler, a step closer to exhausting its attempts); every third
// retry succeeds.
func (w *demoWorld) feed(ctx context.Context, limit int) {
	ticker := time.NewTicker(feedEvery)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if err := w.feedOnce(ctx, limit); err != nil && ctx.Err() == nil {
			w.logger.Error("demo orchestrator: re-running swept steps", slog.Any("error", err))
		}
	}
}

func (w *demoWorld) feedOnce(ctx context.Context, limit int) error {
	steps, err := w.store.DemoSweptBackSteps(ctx, w.tasks, limit)
	if err != nil {
		return err
	}
	for _, step := range steps {
		if err := w.retry(ctx, step); err != nil {
			if errors.Is(err, statemachine.ErrLostRace) {
				w.logger.Debug("demo orchestrator: step moved under us", slog.String("step_uuid", step.String()))
				continue
			}
			return err
		}
	}
	return nil
}

// retry runs one attempt of a pending step the way the orchestrator and a
// worker would: enqueue, claim (attempts+1), start, then either report
// success or hand the failure to the inline handler.
func (w *demoWorld) retry(ctx context.Context, step uuid.UUID) error {
	if err := w.transition(ctx, step, statemachine.Pending, statemachine.EventEnqueue); err != nil {
		return err
	}
	if err := w.store.DemoStartAttempt(ctx, step); err != nil {
		return err
	}
	if err := w.transition(ctx, step, statemachine.Enqueued, statemachine.EventStart); err != nil {
		return err
	}
	w.pickups++
	if w.pickups%3 == 0 {
		if err := w.transition(ctx, step, statemachine.InProgress, statemachine.EventEnqueueForOrchestration); err != nil {
			return err
		}
		if err := w.transition(ctx, step, statemachine.EnqueuedForOrchestration, statemachine.EventComplete); err != nil {
			return err
		}
		if err := w.store.DemoFinishAttempt(ctx, step); err != nil {
			return err
		}
		w.tally.succeeded()
		s := w.stepOf[step]
		w.logger.Info("retry succeeded: step complete",
			slog.Int("task", s.taskNo), slog.String("step", s.stepName()), slog.String("step_uuid", step.String()))
		return nil
	}
	if err := w.transition(ctx, step, statemachine.InProgress, statemachine.EventEnqueueAsErrorForOrchestration); err != nil {
		return err
	}
	return w.report(ctx, step, w.failureOf[step])
}

func (w *demoWorld) transition(ctx context.Context, step uuid.UUID, from statemachine.State, ev statemachine.EventType) error {
	_, err := w.store.WriteTransition(ctx, db.Transition{
		StepUUID: step, From: from, Event: statemachine.Event{Type: ev},
		Provenance: map[string]any{"actor": demoActor},
	})
	if err != nil {
		return fmt.Errorf("demo orchestrator: %w", err)
	}
	return nil
}
