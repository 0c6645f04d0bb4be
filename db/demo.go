package db

// The methods in this file serve `sweeper demo` only: it plays the
// orchestrator and its workers (seeding tasks, claiming and finishing
// attempts), which the sweeper itself never does. They live here so that all
// SQL stays in db/queries; state changes of a step still go through
// WriteTransition, so the demo follows the production compare-and-swap rules.

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/db/internal/dbsqlc"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// DemoSeed is a demo workload to write: one namespace and named task, the
// tasks, and their steps chained by position.
type DemoSeed struct {
	// Namespace and TaskName name the task namespace and the named task
	// (version 0.1.0); existing rows with these names are reused as they are.
	Namespace string
	TaskName  string
	// Tasks are the task ids in order: the task at index i gets order_id
	// 100001+i in its context and in its steps' inputs.
	Tasks []uuid.UUID
	Steps []DemoSeedStep
}

// DemoSeedStep is one step of a DemoSeed.
type DemoSeedStep struct {
	StepUUID uuid.UUID
	// TaskUUID must be one of DemoSeed.Tasks.
	TaskUUID uuid.UUID
	// Name is the named step; existing named steps are reused as they are.
	Name string
	// Position is the step's place in its task from 0: each step gets an
	// edge from the step of its task at Position-1.
	Position int
	// State is where the step starts: pending (no transition rows),
	// complete, or enqueued_as_error_for_orchestration (a worker's attempt
	// just failed and is waiting for the inline handler). The seed writes
	// the history that reaches it.
	State statemachine.State
	// Attempts made so far; 0 leaves the column NULL.
	Attempts  int32
	Retryable bool
	// EndedAgo is how long ago the step reached State, in whole seconds;
	// its history is ten seconds per hop before that.
	EndedAgo time.Duration
}

// DemoSeeded counts the rows SeedDemo wrote.
type DemoSeeded struct {
	Tasks, Steps, Edges, Transitions int64
}

// DemoSweepMoves counts the sweep's moves to pending among the demo's steps.
type DemoSweepMoves struct {
	// Moves counts transitions the sweep wrote.
	Moves int64
	// Steps counts the distinct steps they moved.
	Steps int64
}

// TaskerSchemaExists reports whether the tasker tables exist already (an
// orchestrator's database, or a previous demo's), in which case the demo
// must not create them.
func (s *Store) TaskerSchemaExists(ctx context.Context) (bool, error) {
	exists, err := s.q.TaskerSchemaExists(ctx)
	if err != nil {
		return false, fmt.Errorf("look for the tasker schema: %w", translate(err))
	}
	return exists, nil
}

// SeedDemo writes a demo workload in one statement, so either all of it is
// written or none: the tasks, their steps, the edges between consecutive
// steps and each step's transition history.
func (s *Store) SeedDemo(ctx context.Context, seed DemoSeed) (DemoSeeded, error) {
	n := len(seed.Steps)
	p := dbsqlc.DemoSeedParams{
		Namespace:     seed.Namespace,
		TaskName:      seed.TaskName,
		TaskUuids:     seed.Tasks,
		StepUUIDs:     make([]uuid.UUID, n),
		StepTasks:     make([]uuid.UUID, n),
		StepNames:     make([]string, n),
		StepPositions: make([]int32, n),
		StepStates:    make([]string, n),
		StepAttempts:  make([]int32, n),
		StepRetryable: make([]bool, n),
		StepEndedAgo:  make([]int32, n),
	}
	for i, st := range seed.Steps {
		switch st.State {
		case statemachine.Pending, statemachine.Complete, statemachine.EnqueuedAsErrorForOrchestration:
		default:
			return DemoSeeded{}, fmt.Errorf("seed demo workload: step %s: cannot seed state %q", st.StepUUID, st.State)
		}
		p.StepUUIDs[i], p.StepTasks[i], p.StepNames[i] = st.StepUUID, st.TaskUUID, st.Name
		p.StepPositions[i], p.StepStates[i], p.StepAttempts[i] = int32(st.Position), string(st.State), st.Attempts
		p.StepRetryable[i], p.StepEndedAgo[i] = st.Retryable, int32(st.EndedAgo/time.Second)
	}
	row, err := s.q.DemoSeed(ctx, p)
	if err != nil {
		return DemoSeeded{}, fmt.Errorf("seed demo workload: %w", translate(err))
	}
	return DemoSeeded{Tasks: row.Tasks, Steps: row.Steps, Edges: row.Edges, Transitions: row.Transitions}, nil
}

// DemoStartAttempt is a worker claiming a step: attempts goes up at once
// (the inline handler expects attempts to count the attempt that failed,
// SPEC §6) and the step is in process. statemachine.ErrStepNotFound when no
// such step exists.
func (s *Store) DemoStartAttempt(ctx context.Context, step uuid.UUID) error {
	n, err := s.q.StepStartAttempt(ctx, step)
	if err != nil {
		return fmt.Errorf("claim step %s: %w", step, translate(err))
	}
	if n == 0 {
		return fmt.Errorf("claim step %s: %w", step, statemachine.ErrStepNotFound)
	}
	return nil
}

// DemoFinishAttempt is a worker's attempt succeeding: the step is processed
// and released. statemachine.ErrStepNotFound when no such step exists.
func (s *Store) DemoFinishAttempt(ctx context.Context, step uuid.UUID) error {
	n, err := s.q.StepFinishAttempt(ctx, step)
	if err != nil {
		return fmt.Errorf("finish step %s: %w", step, translate(err))
	}
	if n == 0 {
		return fmt.Errorf("finish step %s: %w", step, statemachine.ErrStepNotFound)
	}
	return nil
}

// DemoSweptBackSteps lists up to limit steps of the given tasks that the
// sweep moved back to pending and nobody has picked up since, oldest move
// first: what the orchestrator would run next.
func (s *Store) DemoSweptBackSteps(ctx context.Context, tasks []uuid.UUID, limit int) ([]uuid.UUID, error) {
	steps, err := s.q.StepListSweptBack(ctx, dbsqlc.StepListSweptBackParams{TaskUuids: tasks, PickupLimit: int32(limit)})
	if err != nil {
		return nil, fmt.Errorf("find swept steps: %w", translate(err))
	}
	return steps, nil
}

// DemoSweptBackPending counts the steps of the given tasks that the sweep
// moved back to pending and nobody has re-run since; their other pending
// steps are waiting for their parents.
func (s *Store) DemoSweptBackPending(ctx context.Context, tasks []uuid.UUID) (int64, error) {
	n, err := s.q.StepCountSweptBack(ctx, tasks)
	if err != nil {
		return 0, fmt.Errorf("count swept steps not yet re-run: %w", translate(err))
	}
	return n, nil
}

// DemoSweepMoves counts how often the sweep moved steps of the given tasks
// back to pending, and how many distinct steps that was.
func (s *Store) DemoSweepMoves(ctx context.Context, tasks []uuid.UUID) (DemoSweepMoves, error) {
	row, err := s.q.TransitionCountSweepMoves(ctx, tasks)
	if err != nil {
		return DemoSweepMoves{}, fmt.Errorf("count sweep moves: %w", translate(err))
	}
	return DemoSweepMoves{Moves: row.Moves, Steps: row.Steps}, nil
}
