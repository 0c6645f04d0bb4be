package testdb

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// TaskSpec describes a task to create: how many steps, and which steps are
// parents of which (Edges[i] = {parent index, child index}).
type TaskSpec struct {
	Steps int
	Edges [][2]int
}

// Task is a created task and its steps, in creation order.
type Task struct {
	TaskUUID uuid.UUID
	Steps    []uuid.UUID
}

// CreateTask inserts a namespace, a named task, a task and its steps (each
// with its own named step), all with tasker's column defaults, and no
// transitions: every step starts pending.
func CreateTask(t testing.TB, pool *pgxpool.Pool, spec TaskSpec) Task {
	t.Helper()
	ctx := context.Background()
	suffix := uuid.NewString()
	var task Task
	err := pool.QueryRow(ctx, `
WITH ns AS (
    INSERT INTO tasker.task_namespaces (name, created_at, updated_at)
    VALUES ('ns-' || left($1, 32), now(), now()) RETURNING task_namespace_uuid
), nt AS (
    INSERT INTO tasker.named_tasks (task_namespace_uuid, name, created_at, updated_at)
    SELECT task_namespace_uuid, 'task-' || left($1, 32), now(), now() FROM ns RETURNING named_task_uuid
)
INSERT INTO tasker.tasks (named_task_uuid, requested_at, identity_hash, created_at, updated_at, correlation_id)
SELECT named_task_uuid, now(), $1, now(), now(), gen_random_uuid() FROM nt
RETURNING task_uuid`, suffix).Scan(&task.TaskUUID)
	if err != nil {
		t.Fatalf("create task: %v", err)
	}
	for i := range spec.Steps {
		var step uuid.UUID
		err := pool.QueryRow(ctx, `
WITH ns AS (
    INSERT INTO tasker.named_steps (name, created_at, updated_at)
    VALUES ($2, now(), now()) RETURNING named_step_uuid
)
INSERT INTO tasker.workflow_steps (task_uuid, named_step_uuid, created_at, updated_at)
SELECT $1, named_step_uuid, now(), now() FROM ns
RETURNING workflow_step_uuid`, task.TaskUUID, fmt.Sprintf("step-%d-%s", i, suffix)).Scan(&step)
		if err != nil {
			t.Fatalf("create step %d: %v", i, err)
		}
		task.Steps = append(task.Steps, step)
	}
	for _, e := range spec.Edges {
		_, err := pool.Exec(ctx, `
INSERT INTO tasker.workflow_step_edges (from_step_uuid, to_step_uuid, name, created_at, updated_at)
VALUES ($1, $2, 'provides', now(), now())`, task.Steps[e[0]], task.Steps[e[1]])
		if err != nil {
			t.Fatalf("create edge %v: %v", e, err)
		}
	}
	return task
}

// historyTo is a realistic path from pending to each state, as the
// orchestrator and workers would have written it.
var historyTo = map[statemachine.State][]statemachine.State{
	statemachine.Pending:                         {statemachine.Pending},
	statemachine.Enqueued:                        {statemachine.Pending, statemachine.Enqueued},
	statemachine.InProgress:                      {statemachine.Pending, statemachine.Enqueued, statemachine.InProgress},
	statemachine.EnqueuedForOrchestration:        {statemachine.Pending, statemachine.Enqueued, statemachine.InProgress, statemachine.EnqueuedForOrchestration},
	statemachine.EnqueuedAsErrorForOrchestration: {statemachine.Pending, statemachine.Enqueued, statemachine.InProgress, statemachine.EnqueuedAsErrorForOrchestration},
	statemachine.WaitingForRetry:                 {statemachine.Pending, statemachine.Enqueued, statemachine.InProgress, statemachine.EnqueuedAsErrorForOrchestration, statemachine.WaitingForRetry},
	statemachine.Complete:                        {statemachine.Pending, statemachine.Enqueued, statemachine.InProgress, statemachine.EnqueuedForOrchestration, statemachine.Complete},
	statemachine.Error:                           {statemachine.Pending, statemachine.Enqueued, statemachine.InProgress, statemachine.EnqueuedAsErrorForOrchestration, statemachine.Error},
	statemachine.Cancelled:                       {statemachine.Pending, statemachine.Cancelled},
	statemachine.ResolvedManually:                {statemachine.Pending, statemachine.Enqueued, statemachine.InProgress, statemachine.EnqueuedAsErrorForOrchestration, statemachine.Error, statemachine.ResolvedManually},
}

// History returns the path PlaceInState writes for state.
func History(state statemachine.State) []statemachine.State {
	return append([]statemachine.State(nil), historyTo[state]...)
}

// PlaceInState gives a step that has no transitions yet a realistic history
// ending in state (see History).
func PlaceInState(t testing.TB, pool *pgxpool.Pool, step uuid.UUID, state statemachine.State, lastAt time.Duration) {
	t.Helper()
	path, ok := historyTo[state]
	if !ok {
		t.Fatalf("no fixture history for state %q", state)
	}
	PlaceHistory(t, pool, step, path, lastAt)
}

// PlaceHistory writes path as a step's transition history: sort_keys 1..n,
// one row a minute apart ending lastAt ago, from_state NULL on the first row,
// only the last row most_recent. Each hop is checked against the state
// machine, so a fixture can never hold a history the orchestrator could not
// have written.
func PlaceHistory(t testing.TB, pool *pgxpool.Pool, step uuid.UUID, path []statemachine.State, lastAt time.Duration) {
	t.Helper()
	for i := 1; i < len(path); i++ {
		if !reachable(path[i-1], path[i]) {
			t.Fatalf("fixture history %v: no event moves %s to %s", path, path[i-1], path[i])
		}
	}
	ctx := context.Background()
	for i, to := range path {
		var from *string
		if i > 0 {
			s := string(path[i-1])
			from = &s
		}
		ago := lastAt + time.Duration(len(path)-1-i)*time.Minute
		_, err := pool.Exec(ctx, `
INSERT INTO tasker.workflow_step_transitions
    (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
VALUES ($1, $2, $3, '{"fixture": true}', $4, $5,
        now() - make_interval(secs => $6), now() - make_interval(secs => $6))`,
			step, string(to), from, i+1, i == len(path)-1, ago.Seconds())
		if err != nil {
			t.Fatalf("place step history %v (row %d): %v", path, i+1, err)
		}
	}
}

func reachable(from, to statemachine.State) bool {
	for _, ev := range statemachine.EventTypes() {
		if next, err := statemachine.Next(from, ev); err == nil && next == to {
			return true
		}
	}
	return false
}

// StepColumns are the retry columns of a step a test wants to set; nil
// pointers leave a column as it is, the Null* flags set it to NULL.
type StepColumns struct {
	Retryable             *bool
	MaxAttempts           *int32
	NullMaxAttempts       bool
	Attempts              *int32
	InProcess             *bool
	Processed             *bool
	LastAttemptedAgo      *time.Duration // last_attempted_at = now() - this
	BackoffRequestSeconds *int32
}

// SetColumns updates the retry columns of a step.
func SetColumns(t testing.TB, pool *pgxpool.Pool, step uuid.UUID, c StepColumns) {
	t.Helper()
	var lastAgo *float64
	if c.LastAttemptedAgo != nil {
		s := c.LastAttemptedAgo.Seconds()
		lastAgo = &s
	}
	_, err := pool.Exec(context.Background(), `
UPDATE tasker.workflow_steps SET
    retryable = coalesce($2, retryable),
    max_attempts = CASE WHEN $3 THEN NULL ELSE coalesce($4, max_attempts) END,
    attempts = coalesce($5, attempts),
    in_process = coalesce($6, in_process),
    processed = coalesce($7, processed),
    last_attempted_at = coalesce(now() - make_interval(secs => $8), last_attempted_at),
    backoff_request_seconds = coalesce($9, backoff_request_seconds)
WHERE workflow_step_uuid = $1`,
		step, c.Retryable, c.NullMaxAttempts, c.MaxAttempts, c.Attempts, c.InProcess, c.Processed, lastAgo, c.BackoffRequestSeconds)
	if err != nil {
		t.Fatalf("set step columns: %v", err)
	}
}

// Ptr returns a pointer to v, for StepColumns literals.
func Ptr[T any](v T) *T { return &v }

// SeedDue creates one task with n due waiting_for_retry steps, set-based,
// each with the 5-row history the orchestrator would have written (attempts
// 1, backoff 1 s expired an hour ago). It returns the task's uuid.
func SeedDue(t testing.TB, pool *pgxpool.Pool, n int) uuid.UUID {
	t.Helper()
	task := CreateTask(t, pool, TaskSpec{Steps: 0})
	_, err := pool.Exec(context.Background(), `
WITH ns AS (
    INSERT INTO tasker.named_steps (name, created_at, updated_at)
    SELECT 'bulk-' || g || '-' || $1::uuid::text, now(), now() FROM generate_series(1, $2) g
    RETURNING named_step_uuid
), steps AS (
    INSERT INTO tasker.workflow_steps (task_uuid, named_step_uuid, attempts, last_attempted_at,
                                       backoff_request_seconds, created_at, updated_at)
    SELECT $1::uuid, named_step_uuid, 1, now() - interval '1 hour', 1, now(), now() FROM ns
    RETURNING workflow_step_uuid
)
INSERT INTO tasker.workflow_step_transitions
    (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
SELECT s.workflow_step_uuid, h.to_state, h.from_state, '{}', h.sort_key, h.sort_key = 5, now(), now()
FROM steps s
CROSS JOIN (VALUES (1, 'pending', NULL), (2, 'enqueued', 'pending'), (3, 'in_progress', 'enqueued'),
                   (4, 'enqueued_as_error_for_orchestration', 'in_progress'),
                   (5, 'waiting_for_retry', 'enqueued_as_error_for_orchestration')) AS h(sort_key, to_state, from_state)`,
		task.TaskUUID, n)
	if err != nil {
		t.Fatalf("seed %d due steps: %v", n, err)
	}
	return task.TaskUUID
}
