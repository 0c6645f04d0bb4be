package demo

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/internal/demo/demosqlc"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// queries runs the demo's own statements (internal/demo/queries): the
// orchestrator's and the workers' writes the sweeper never makes, and the
// counts behind the report.
type queries struct {
	q *demosqlc.Queries
}

// seeded counts the rows seed wrote.
type seeded struct {
	tasks, steps, edges, transitions int64
}

// sweepMoves counts the sweep's moves to pending among the demo's steps.
type sweepMoves struct {
	// moves counts transitions the sweep wrote.
	moves int64
	// steps counts the distinct steps they moved.
	steps int64
}

// taskerSchemaExists reports whether the tasker tables exist already (an
// orchestrator's database, or a previous demo's), in which case the demo
// must not create them.
func (s queries) taskerSchemaExists(ctx context.Context) (bool, error) {
	exists, err := s.q.TaskerSchemaExists(ctx)
	if err != nil {
		return false, fmt.Errorf("look for the tasker schema: %w", err)
	}
	return exists, nil
}

// seed writes the plan in one statement, so either all of it is written or
// none: the namespace and named task (reused when they exist), the tasks,
// their steps, the edges between consecutive steps and each step's
// transition history.
func (s queries) seed(ctx context.Context, p plan) (seeded, error) {
	n := len(p.steps)
	params := demosqlc.DemoSeedParams{
		Namespace:     namespace,
		TaskName:      taskName,
		Configuration: []byte(templateConfiguration),
		TaskUUIDs:     p.tasks,
		StepUUIDs:     make([]uuid.UUID, n),
		StepTasks:     make([]uuid.UUID, n),
		StepNames:     make([]string, n),
		StepPositions: make([]int32, n),
		StepStates:    make([]string, n),
		StepAttempts:  make([]int32, n),
		StepRetryable: make([]bool, n),
		StepEndedAgo:  make([]int32, n),
	}
	for i, st := range p.steps {
		switch st.state {
		case statemachine.Pending, statemachine.Complete, statemachine.EnqueuedAsErrorForOrchestration:
		default:
			// The statement writes histories for these three only.
			return seeded{}, fmt.Errorf("seed demo workload: step %s: cannot seed state %q", st.id, st.state)
		}
		params.StepUUIDs[i], params.StepTasks[i], params.StepNames[i] = st.id, st.task, st.name()
		params.StepPositions[i], params.StepStates[i], params.StepAttempts[i] = int32(st.pos), string(st.state), st.attempts
		params.StepRetryable[i], params.StepEndedAgo[i] = st.retryable, int32(st.endedAgo/time.Second)
	}
	row, err := s.q.DemoSeed(ctx, params)
	if err != nil {
		return seeded{}, fmt.Errorf("seed demo workload: %w", err)
	}
	return seeded{tasks: row.Tasks, steps: row.Steps, edges: row.Edges, transitions: row.Transitions}, nil
}

// startAttempt is a worker claiming a step: attempts goes up at once (the
// inline handler expects attempts to count the attempt that failed) and the
// step is in process. statemachine.ErrStepNotFound when no such step exists.
func (s queries) startAttempt(ctx context.Context, step uuid.UUID) error {
	n, err := s.q.StepStartAttempt(ctx, step)
	if err != nil {
		return fmt.Errorf("claim step %s: %w", step, err)
	}
	if n == 0 {
		return fmt.Errorf("claim step %s: %w", step, statemachine.ErrStepNotFound)
	}
	return nil
}

// finishAttempt is a worker's attempt succeeding: the step is processed and
// released. statemachine.ErrStepNotFound when no such step exists.
func (s queries) finishAttempt(ctx context.Context, step uuid.UUID) error {
	n, err := s.q.StepFinishAttempt(ctx, step)
	if err != nil {
		return fmt.Errorf("finish step %s: %w", step, err)
	}
	if n == 0 {
		return fmt.Errorf("finish step %s: %w", step, statemachine.ErrStepNotFound)
	}
	return nil
}

// sweptBackSteps lists up to limit steps of the given tasks that the sweep
// moved back to pending and nobody has picked up since, oldest move first:
// what the orchestrator would run next.
func (s queries) sweptBackSteps(ctx context.Context, tasks []uuid.UUID, limit int) ([]uuid.UUID, error) {
	steps, err := s.q.StepListSweptBack(ctx, demosqlc.StepListSweptBackParams{TaskUUIDs: tasks, PickupLimit: int32(limit)})
	if err != nil {
		return nil, fmt.Errorf("find swept steps: %w", err)
	}
	return steps, nil
}

// sweptBackPending counts the steps of the given tasks that the sweep moved
// back to pending and nobody has re-run since; their other pending steps are
// waiting for their parents.
func (s queries) sweptBackPending(ctx context.Context, tasks []uuid.UUID) (int64, error) {
	n, err := s.q.StepCountSweptBack(ctx, tasks)
	if err != nil {
		return 0, fmt.Errorf("count swept steps not yet re-run: %w", err)
	}
	return n, nil
}

// sweepMoves counts how often the sweep moved steps of the given tasks back
// to pending, and how many distinct steps that was.
func (s queries) sweepMoves(ctx context.Context, tasks []uuid.UUID) (sweepMoves, error) {
	row, err := s.q.TransitionCountSweepMoves(ctx, tasks)
	if err != nil {
		return sweepMoves{}, fmt.Errorf("count sweep moves: %w", err)
	}
	return sweepMoves{moves: row.Moves, steps: row.Steps}, nil
}

// retryPolicy is one line of the report's retry-policy section.
type retryPolicy struct {
	step, source, strategy string
	parked                 int64
	minSeconds, maxSeconds int32
}

// retryPolicies counts the retries the handler parked among the demo's
// steps, by step and by the policy that chose the delay.
func (s queries) retryPolicies(ctx context.Context, tasks []uuid.UUID) ([]retryPolicy, error) {
	rows, err := s.q.TransitionRetryPolicies(ctx, tasks)
	if err != nil {
		return nil, fmt.Errorf("count parked retries by policy: %w", err)
	}
	out := make([]retryPolicy, len(rows))
	for i, r := range rows {
		out[i] = retryPolicy{
			step: r.StepName, source: r.Source, strategy: r.Strategy, parked: r.Parked,
			minSeconds: r.MinSeconds, maxSeconds: r.MaxSeconds,
		}
	}
	return out, nil
}
