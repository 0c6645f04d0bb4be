package demo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// tally counts the inline handler's decisions by action and error category,
// for the summaries. The seeding and the feeder both add to it.
type tally struct {
	mu     sync.Mutex
	counts map[handling.Action]actionCount
	// retriesSucceeded counts retries the simulated orchestrator completed.
	retriesSucceeded int
}

func newTally() *tally {
	return &tally{counts: map[handling.Action]actionCount{}}
}

func (t *tally) add(res handling.Result) {
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

func (t *tally) succeeded() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.retriesSucceeded++
}

// snapshot returns every action in a stable order, a copy of the counts,
// and the number of successful retries.
func (t *tally) snapshot() (actions []handling.Action, counts map[handling.Action]actionCount, succeeded int) {
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

// actionCount is how often the handler took one action, by error category.
type actionCount struct {
	total      int
	byCategory map[handling.Category]int
}

// categories lists the categories behind an action, most frequent first.
func (c actionCount) categories() string {
	cats := slices.Collect(maps.Keys(c.byCategory))
	slices.SortFunc(cats, func(a, b handling.Category) int {
		if d := c.byCategory[b] - c.byCategory[a]; d != 0 {
			return d
		}
		return strings.Compare(string(a), string(b))
	})
	parts := make([]string, len(cats))
	for i, cat := range cats {
		parts[i] = fmt.Sprintf("%s %d", cat, c.byCategory[cat])
	}
	return strings.Join(parts, ", ")
}

// world is the demo's simulated orchestrator and workers: it reports
// failures to the real inline handler and re-runs the steps the sweep hands
// back, writing every state change through the production store.
type world struct {
	store   *db.Store
	q       queries
	handler *handling.Service
	logger  *slog.Logger
	tally   *tally
	tasks   []uuid.UUID
	// failureOf is the failure each failing step reports again when retried:
	// the dependency that broke is usually still broken.
	failureOf map[uuid.UUID]failure
	stepOf    map[uuid.UUID]step
	// pickups counts retries started; every third one succeeds.
	pickups int
}

func newWorld(store *db.Store, q queries, handler *handling.Service, logger *slog.Logger, p plan) *world {
	w := &world{
		store: store, q: q, handler: handler, logger: logger, tally: newTally(), tasks: p.tasks,
		failureOf: make(map[uuid.UUID]failure, len(p.failing)),
		stepOf:    make(map[uuid.UUID]step, len(p.steps)),
	}
	for _, s := range p.steps {
		w.stepOf[s.id] = s
	}
	for _, f := range p.failing {
		w.failureOf[f.step.id] = f.failure
	}
	return w
}

// reportSeededFailures feeds every seeded failure through the inline handler.
func (w *world) reportSeededFailures(ctx context.Context, p plan) error {
	for _, f := range p.failing {
		if err := w.report(ctx, f.step.id, f.failure); err != nil {
			return err
		}
	}
	return nil
}

// report runs one failure through the handler and logs its decision.
func (w *world) report(ctx context.Context, id uuid.UUID, f failure) error {
	res, err := w.handler.Handle(ctx, f.report(id))
	if err != nil {
		return fmt.Errorf("handle failure of step %s: %w", id, err)
	}
	w.tally.add(res)
	s := w.stepOf[id]
	attrs := []any{
		slog.Int("task", s.taskNo),
		slog.String("step", s.name()),
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
	attrs = append(attrs, slog.String("step_uuid", id.String()))
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
func (w *world) feed(ctx context.Context, limit int) {
	ticker := time.NewTicker(feedEvery)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if _, err := w.feedOnce(ctx, limit); err != nil && ctx.Err() == nil {
			w.logger.Error("demo orchestrator: re-running swept steps", slog.Any("error", err))
		}
	}
}

// feedOnce re-runs up to limit swept-back steps and returns how many it
// re-ran; a step another writer moved first is skipped.
func (w *world) feedOnce(ctx context.Context, limit int) (int, error) {
	steps, err := w.q.sweptBackSteps(ctx, w.tasks, limit)
	if err != nil {
		return 0, err
	}
	rerun := 0
	for _, id := range steps {
		if err := w.retry(ctx, id); err != nil {
			if errors.Is(err, statemachine.ErrLostRace) {
				w.logger.Debug("demo orchestrator: step moved under us", slog.String("step_uuid", id.String()))
				continue
			}
			return rerun, err
		}
		rerun++
	}
	return rerun, nil
}

// retry runs one attempt of a pending step the way the orchestrator and a
// worker would: enqueue, claim (attempts+1), start, then either report
// success or hand the failure to the inline handler.
func (w *world) retry(ctx context.Context, id uuid.UUID) error {
	if err := w.transition(ctx, id, statemachine.Pending, statemachine.EventEnqueue); err != nil {
		return err
	}
	if err := w.q.startAttempt(ctx, id); err != nil {
		return err
	}
	if err := w.transition(ctx, id, statemachine.Enqueued, statemachine.EventStart); err != nil {
		return err
	}
	w.pickups++
	if w.pickups%3 == 0 {
		if err := w.transition(ctx, id, statemachine.InProgress, statemachine.EventEnqueueForOrchestration); err != nil {
			return err
		}
		if err := w.transition(ctx, id, statemachine.EnqueuedForOrchestration, statemachine.EventComplete); err != nil {
			return err
		}
		if err := w.q.finishAttempt(ctx, id); err != nil {
			return err
		}
		w.tally.succeeded()
		s := w.stepOf[id]
		w.logger.Info("retry succeeded: step complete",
			slog.Int("task", s.taskNo), slog.String("step", s.name()), slog.String("step_uuid", id.String()))
		return nil
	}
	if err := w.transition(ctx, id, statemachine.InProgress, statemachine.EventEnqueueAsErrorForOrchestration); err != nil {
		return err
	}
	return w.report(ctx, id, w.failureOf[id])
}

func (w *world) transition(ctx context.Context, id uuid.UUID, from statemachine.State, ev statemachine.EventType) error {
	_, err := w.store.WriteTransition(ctx, db.Transition{
		StepUUID: id, From: from, Event: statemachine.Event{Type: ev},
		Provenance: map[string]any{"actor": actor},
	})
	if err != nil {
		return fmt.Errorf("demo orchestrator: %w", err)
	}
	return nil
}
