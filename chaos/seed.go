package main

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The seeded data is tasker-shaped: tasks that fan out from a complete root
// step to up to nine child steps (edges root -> child), so every child's
// dependency check has a real parent to look at. Each child carries the
// history the orchestrator and its workers would have written, one row a
// minute apart, only the last most_recent, with no sweeper metadata: the
// waiting_for_retry rows are parked "the orchestrator's way", so on the
// schedule path the sweeper has to adopt them.

// seedCatalogSQL creates the namespace, named task and named steps every
// seeded task uses (once, in the template).
const seedCatalogSQL = `
INSERT INTO tasker.task_namespaces (name, created_at, updated_at) VALUES ('chaos', now(), now());
INSERT INTO tasker.named_tasks (task_namespace_uuid, name, created_at, updated_at)
SELECT task_namespace_uuid, 'chaos_task', now(), now() FROM tasker.task_namespaces WHERE name = 'chaos';
INSERT INTO tasker.named_steps (name, created_at, updated_at)
SELECT 'chaos_step_' || p, now(), now() FROM generate_series(0, 9) p;`

// group describes children to seed.
type group struct {
	children int
	// history is "waiting" (parked in waiting_for_retry) or "in_progress"
	// (running, in_process: a worker has it).
	history string
	// Child n (1..children) was last attempted lastAgo seconds ago minus
	// (n-1)*stagger: a positive stagger makes later children due later.
	lastAgo, stagger float64
	backoff          *int32 // backoff_request_seconds (nil: NULL)
	attempts         int32
	maxAttempts      int32
	retryable        bool
}

// dueGroup is n steps parked an hour ago with a 2 s backoff: all due.
func dueGroup(n int) group {
	return group{children: n, history: "waiting", lastAgo: 3600, backoff: ptr(int32(2)), attempts: 1, maxAttempts: 3, retryable: true}
}

// laterGroup is n steps parked now whose backoff expires in secs seconds.
func laterGroup(n int, secs int32) group {
	return group{children: n, history: "waiting", backoff: ptr(secs), attempts: 1, maxAttempts: 3, retryable: true}
}

// runningGroup is n steps a worker is running (in_progress, in_process),
// with room for many more attempts.
func runningGroup(n int) group {
	return group{children: n, history: "in_progress", attempts: 1, maxAttempts: 100_000, retryable: true}
}

func ptr[T any](v T) *T { return &v }

const seedStepsSQL = `
CREATE TEMP TABLE seed_steps ON COMMIT DROP AS
WITH tasks AS (
    SELECT g AS task_no, tasker.uuid_generate_v7() AS task_uuid FROM generate_series(0, ($1::int + 8) / 9 - 1) g
)
SELECT t.task_no, t.task_uuid, p.pos, t.task_no * 9 + p.pos AS n, tasker.uuid_generate_v7() AS step_uuid
FROM tasks t CROSS JOIN generate_series(0, 9) p(pos)
WHERE p.pos = 0 OR t.task_no * 9 + p.pos <= $1::int
ORDER BY t.task_no, p.pos`

const seedTasksSQL = `
INSERT INTO tasker.tasks (task_uuid, named_task_uuid, complete, requested_at, identity_hash,
                          created_at, updated_at, priority, correlation_id, context)
SELECT s.task_uuid, nt.named_task_uuid, false, now() - interval '2 hours', md5(s.task_uuid::text),
       now() - interval '2 hours', now(), 0, gen_random_uuid(), jsonb_build_object('order_id', s.task_no)
FROM seed_steps s CROSS JOIN (SELECT named_task_uuid FROM tasker.named_tasks WHERE name = 'chaos_task') nt
WHERE s.pos = 0`

// seedChildrenSQL: $1 in_process, $2 attempts, $3 max_attempts, $4
// retryable, $5 seconds since child 1 was last attempted, $6 stagger, $7
// backoff. Roots are complete and processed.
const seedChildrenSQL = `
INSERT INTO tasker.workflow_steps (workflow_step_uuid, task_uuid, named_step_uuid, retryable, max_attempts,
    in_process, processed, processed_at, attempts, last_attempted_at, backoff_request_seconds, results,
    inputs, created_at, updated_at, priority)
SELECT s.step_uuid, s.task_uuid, ns.named_step_uuid,
       CASE WHEN s.pos = 0 THEN true ELSE $4::boolean END,
       CASE WHEN s.pos = 0 THEN 3 ELSE $3::int END,
       CASE WHEN s.pos = 0 THEN false ELSE $1::boolean END,
       s.pos = 0,
       CASE WHEN s.pos = 0 THEN now() - interval '100 minutes' END,
       CASE WHEN s.pos = 0 THEN 1 ELSE $2::int END,
       CASE WHEN s.pos = 0 THEN now() - interval '101 minutes'
            ELSE now() - $5::float8 * interval '1 second' + (s.n - 1) * $6::float8 * interval '1 second' END,
       CASE WHEN s.pos = 0 THEN NULL ELSE $7::int END,
       CASE WHEN s.pos = 0 THEN '{"status": "ok"}'::jsonb END,
       jsonb_build_object('order_id', s.task_no), now() - interval '2 hours', now(), 0
FROM seed_steps s
JOIN tasker.named_steps ns ON ns.name = 'chaos_step_' || s.pos`

const seedEdgesSQL = `
INSERT INTO tasker.workflow_step_edges (from_step_uuid, to_step_uuid, name, created_at, updated_at)
SELECT r.step_uuid, c.step_uuid, 'provides', now() - interval '2 hours', now() - interval '2 hours'
FROM seed_steps c JOIN seed_steps r ON r.task_no = c.task_no AND r.pos = 0
WHERE c.pos > 0`

// seedTransitionsSQL writes each step's history: roots the "complete" path,
// children the path $1. A child's last row is created when it was last
// attempted (never in the future), the others a minute apart before it.
const seedTransitionsSQL = `
WITH paths (path, sort_key, to_state, from_state, event) AS (
    VALUES
    ('complete', 1, 'pending', NULL, NULL),
    ('complete', 2, 'enqueued', 'pending', 'Enqueue'),
    ('complete', 3, 'in_progress', 'enqueued', 'Start'),
    ('complete', 4, 'enqueued_for_orchestration', 'in_progress', 'EnqueueForOrchestration'),
    ('complete', 5, 'complete', 'enqueued_for_orchestration', 'Complete'),
    ('waiting', 1, 'pending', NULL, NULL),
    ('waiting', 2, 'enqueued', 'pending', 'Enqueue'),
    ('waiting', 3, 'in_progress', 'enqueued', 'Start'),
    ('waiting', 4, 'enqueued_as_error_for_orchestration', 'in_progress', 'EnqueueAsErrorForOrchestration'),
    ('waiting', 5, 'waiting_for_retry', 'enqueued_as_error_for_orchestration', 'WaitForRetry'),
    ('in_progress', 1, 'pending', NULL, NULL),
    ('in_progress', 2, 'enqueued', 'pending', 'Enqueue'),
    ('in_progress', 3, 'in_progress', 'enqueued', 'Start')
), lengths AS (
    SELECT path, max(sort_key) AS rows FROM paths GROUP BY path
)
INSERT INTO tasker.workflow_step_transitions
    (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
SELECT s.step_uuid, p.to_state, p.from_state,
       CASE WHEN p.event IS NULL THEN '{}'::jsonb
            ELSE jsonb_build_object('event', jsonb_build_object('type', p.event), 'actor', 'tasker-orchestration') END,
       p.sort_key, p.sort_key = l.rows, at.t, at.t
FROM seed_steps s
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = s.step_uuid
JOIN paths p ON p.path = CASE WHEN s.pos = 0 THEN 'complete' ELSE $1 END
JOIN lengths l ON l.path = p.path
CROSS JOIN LATERAL (
    SELECT least(coalesce(ws.last_attempted_at, now()), now()) - (l.rows - p.sort_key) * interval '1 minute'
) at(t)`

// seed inserts a group of children (and their tasks and roots) in one
// transaction and returns the children's ids in order (child 1 first).
func seed(ctx context.Context, pool *pgxpool.Pool, g group) ([]uuid.UUID, error) {
	var steps []uuid.UUID
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, seedStepsSQL, g.children); err != nil {
			return fmt.Errorf("stage steps: %w", err)
		}
		if _, err := tx.Exec(ctx, seedTasksSQL); err != nil {
			return fmt.Errorf("insert tasks: %w", err)
		}
		inProcess := g.history == "in_progress"
		if _, err := tx.Exec(ctx, seedChildrenSQL, inProcess, g.attempts, g.maxAttempts, g.retryable,
			g.lastAgo, g.stagger, g.backoff); err != nil {
			return fmt.Errorf("insert steps: %w", err)
		}
		if _, err := tx.Exec(ctx, seedEdgesSQL); err != nil {
			return fmt.Errorf("insert edges: %w", err)
		}
		if _, err := tx.Exec(ctx, seedTransitionsSQL, g.history); err != nil {
			return fmt.Errorf("insert transitions: %w", err)
		}
		rows, err := tx.Query(ctx, "SELECT step_uuid FROM seed_steps WHERE pos > 0 ORDER BY n")
		if err != nil {
			return fmt.Errorf("list seeded steps: %w", err)
		}
		steps, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("seed %d %s steps: %w", g.children, g.history, err)
	}
	if _, err := pool.Exec(ctx, "ANALYZE"); err != nil {
		return nil, fmt.Errorf("analyze: %w", err)
	}
	return steps, nil
}

// appendTransitionSQL retires each step's current row and appends $2 with
// sort_key max+1, from the retired row's state, in one statement.
const appendTransitionSQL = `
WITH retired AS (
    UPDATE tasker.workflow_step_transitions t
    SET most_recent = false, updated_at = now()
    WHERE t.workflow_step_uuid = ANY($1::uuid[]) AND t.most_recent
    RETURNING t.workflow_step_uuid, t.to_state
)
INSERT INTO tasker.workflow_step_transitions
    (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
SELECT r.workflow_step_uuid, $2::varchar, r.to_state,
       jsonb_build_object('event', jsonb_build_object('type', $3::text), 'actor', 'tasker-orchestration'),
       (SELECT max(x.sort_key) + 1 FROM tasker.workflow_step_transitions x WHERE x.workflow_step_uuid = r.workflow_step_uuid),
       true, now(), now()
FROM retired r`

// orchestratorPark is the orchestrator's own way of parking failed steps:
// one transaction that locks the steps, writes backoff_request_seconds and
// last_attempted_at, and appends a waiting_for_retry transition (most_recent,
// sort_key max+1, no sweeper metadata).
func orchestratorPark(ctx context.Context, pool *pgxpool.Pool, steps []uuid.UUID, backoff int32) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT 1 FROM tasker.workflow_steps WHERE workflow_step_uuid = ANY($1::uuid[])
ORDER BY workflow_step_uuid FOR UPDATE`, steps); err != nil {
			return fmt.Errorf("lock steps: %w", err)
		}
		if _, err := tx.Exec(ctx, `UPDATE tasker.workflow_steps
SET backoff_request_seconds = $2, last_attempted_at = now(), in_process = false, updated_at = now()
WHERE workflow_step_uuid = ANY($1::uuid[])`, steps, backoff); err != nil {
			return fmt.Errorf("write backoff: %w", err)
		}
		if _, err := tx.Exec(ctx, appendTransitionSQL, steps, "waiting_for_retry", "WaitForRetry"); err != nil {
			return fmt.Errorf("append waiting_for_retry: %w", err)
		}
		return nil
	})
}

// rerun is the orchestrator picking up to n pending steps and running them
// again: pending -> enqueued -> in_progress, attempts + 1, in_process. Steps
// others hold are skipped. It returns the steps it started.
func rerun(ctx context.Context, pool *pgxpool.Pool, n int) ([]uuid.UUID, error) {
	var steps []uuid.UUID
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
SELECT ws.workflow_step_uuid
FROM tasker.workflow_step_transitions cur
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = cur.workflow_step_uuid
WHERE cur.most_recent AND cur.to_state = 'pending' AND NOT ws.processed AND NOT ws.in_process
ORDER BY cur.created_at
LIMIT $1
FOR UPDATE OF ws, cur SKIP LOCKED`, n)
		if err != nil {
			return fmt.Errorf("pick pending steps: %w", err)
		}
		steps, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil || len(steps) == 0 {
			return err
		}
		if _, err := tx.Exec(ctx, appendTransitionSQL, steps, "enqueued", "Enqueue"); err != nil {
			return fmt.Errorf("append enqueued: %w", err)
		}
		if _, err := tx.Exec(ctx, appendTransitionSQL, steps, "in_progress", "Start"); err != nil {
			return fmt.Errorf("append in_progress: %w", err)
		}
		_, err = tx.Exec(ctx, `UPDATE tasker.workflow_steps
SET attempts = coalesce(attempts, 0) + 1, in_process = true, last_attempted_at = now(), updated_at = now()
WHERE workflow_step_uuid = ANY($1::uuid[])`, steps)
		if err != nil {
			return fmt.Errorf("mark attempts: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("re-run pending steps: %w", err)
	}
	return steps, nil
}
