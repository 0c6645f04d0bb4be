package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
)

// The seeded data is tasker-shaped: one namespace and named task, ten named
// steps, and tasks that fan out from a complete root step to up to nine
// child steps (edges root -> child), so every child's dependency check has
// a real parent to look at. Every step carries the transition history the
// orchestrator and workers would have written (one row a minute apart,
// only the last most_recent), e.g. pending, enqueued, in_progress,
// enqueued_as_error_for_orchestration, waiting_for_retry.

// childrenPerTask is the fan-out of a seeded task.
const childrenPerTask = 9

// seedChunk is how many child steps one seeding transaction inserts (a
// multiple of childrenPerTask, so chunks fill whole tasks), and
// seedParallelism how many run at once.
const (
	seedChunk       = 27_000 * childrenPerTask
	seedParallelism = 2
)

// childKind is the state (and the retry columns that go with it) of the
// child steps of a seeded group.
type childKind string

const (
	// kindDue: attempt 1 failed an hour ago with a 2 s backoff. Seeded with
	// its history up to enqueued_as_error_for_orchestration already retired
	// (no current row yet); parkDue appends the current waiting_for_retry
	// row, after which it is due.
	kindDue childKind = "due"
	// kindNotDue: waiting_for_retry with a backoff that expires between 1 h
	// and 24 h from now.
	kindNotDue childKind = "not_due"
	// kindComplete: complete and processed.
	kindComplete childKind = "complete"
	// kindError: error, attempts exhausted (3 of 3).
	kindError childKind = "error"
	// kindAwaitingDecision: enqueued_as_error_for_orchestration after its
	// first attempt, waiting for the inline handler's decision.
	kindAwaitingDecision childKind = "awaiting_decision"
	// kindLag: waiting_for_retry with due times spread over a window that
	// starts in the future (set per run by seedLagSteps).
	kindLag childKind = "lag"
)

// historyPath is the transition history ending in each kind's state.
var historyPath = map[childKind]string{
	kindDue:              "awaiting_park",
	kindNotDue:           "retry",
	kindLag:              "retry",
	kindComplete:         "complete",
	kindError:            "error",
	kindAwaitingDecision: "awaiting_decision",
}

// stepColumns are the SQL expressions of a child step's retry columns, in
// the order of insertStepsSQL's column list after max_attempts. s.n is the
// child's ordinal in its group (1..children); for kindLag, $1 is how many
// seconds from now() the first step becomes due and $2 the seconds between
// two consecutive due times (the database clock is the only clock).
var stepColumns = map[childKind]string{
	kindDue: `false, false, NULL::timestamp, 1, now() - interval '1 hour', 2, NULL::jsonb`,
	kindNotDue: `false, false, NULL::timestamp, 1, now() - (s.n % 600) * interval '1 second',
	             3600 + (s.n::bigint * 7919) % 82800, NULL::jsonb`,
	kindComplete: `false, true, now() - interval '1 hour', 1, now() - interval '61 minutes', NULL::int,
	               '{"status": "ok"}'::jsonb`,
	kindError:            `false, false, NULL::timestamp, 3, now() - interval '1 hour', 8, NULL::jsonb`,
	kindAwaitingDecision: `true, false, NULL::timestamp, 1, now() - interval '1 minute', NULL::int, NULL::jsonb`,
	kindLag: `false, false, NULL::timestamp, 1,
	          now() + ($1::float8 + (s.n - 1) * $2::float8) * interval '1 second' - interval '60 seconds', 60, NULL::jsonb`,
}

// seedCatalogSQL creates the namespace, named task and named steps every
// seeded task uses. The named task carries a task template (tasker's
// serialised form) whose steps declare their retry policies, cycling
// through the strategies, with a production override for every step: the
// inline handler reads and applies it for each failure it handles. The
// delays (30 s and more) outlast the handler scenario, so it measures the
// handler, not sweeps of the steps it parks falling due meanwhile.
const seedCatalogSQL = `
WITH ns AS (
    INSERT INTO tasker.task_namespaces (name, created_at, updated_at)
    VALUES ('bench', now(), now()) RETURNING task_namespace_uuid
)
INSERT INTO tasker.named_tasks (task_namespace_uuid, name, configuration, created_at, updated_at)
SELECT task_namespace_uuid, 'process_order', jsonb_build_object(
    'name', 'process_order', 'namespace_name', 'bench', 'version', '1.0.0',
    'steps', (SELECT jsonb_agg(jsonb_build_object(
        'name', 'bench_step_' || p,
        'handler', jsonb_build_object('callable', 'Bench::Step' || p),
        'dependencies', CASE WHEN p = 0 THEN '[]'::jsonb ELSE '["bench_step_0"]'::jsonb END,
        'retry', jsonb_build_object(
            'retryable', true, 'max_attempts', 3,
            'backoff', (ARRAY['exponential', 'linear', 'fibonacci'])[1 + p % 3],
            'backoff_base_ms', 30000 * (1 + p % 2), 'max_backoff_ms', 600000)) ORDER BY p)
        FROM generate_series(0, 9) p),
    'environments', jsonb_build_object('production', jsonb_build_object(
        'steps', jsonb_build_array(jsonb_build_object('name', 'ALL', 'retry', jsonb_build_object('max_backoff_ms', 300000)))))
), now(), now() FROM ns;

INSERT INTO tasker.named_steps (name, created_at, updated_at)
SELECT 'bench_step_' || p, now(), now() FROM generate_series(0, 9) p;`

// seedStepsSQL stages a chunk's tasks and steps: $1 tasks of a root
// (pos 0) and up to childrenPerTask children, $2 children in all, numbered
// s.n = $3+1..$3+$2 in task order ($3: the children of earlier chunks).
const seedStepsSQL = `
CREATE TEMP TABLE seed_steps ON COMMIT DROP AS
WITH tasks AS (
    SELECT g AS task_no, tasker.uuid_generate_v7() AS task_uuid FROM generate_series(0, $1::int - 1) g
)
SELECT t.task_no, t.task_uuid, p.pos, $3::int + t.task_no * 9 + p.pos AS n, tasker.uuid_generate_v7() AS step_uuid
FROM tasks t CROSS JOIN generate_series(0, 9) p(pos)
WHERE p.pos = 0 OR t.task_no * 9 + p.pos <= $2::int
ORDER BY t.task_no, p.pos`

const insertTasksSQL = `
INSERT INTO tasker.tasks (task_uuid, named_task_uuid, complete, requested_at, identity_hash,
                          created_at, updated_at, priority, correlation_id, context)
SELECT s.task_uuid, nt.named_task_uuid, false, now() - interval '2 hours', md5(s.task_uuid::text),
       now() - interval '2 hours', now(), 0, gen_random_uuid(), jsonb_build_object('order_id', s.task_no)
FROM seed_steps s CROSS JOIN (SELECT named_task_uuid FROM tasker.named_tasks WHERE name = 'process_order') nt
WHERE s.pos = 0`

// insertStepsSQL inserts roots (complete) and children (%s: the kind's
// column expressions).
const insertStepsSQL = `
INSERT INTO tasker.workflow_steps (workflow_step_uuid, task_uuid, named_step_uuid, retryable, max_attempts,
    in_process, processed, processed_at, attempts, last_attempted_at, backoff_request_seconds, results,
    inputs, created_at, updated_at, priority)
SELECT s.step_uuid, s.task_uuid, ns.named_step_uuid, true, 3, c.*,
       jsonb_build_object('order_id', s.task_no), now() - interval '2 hours', now(), 0
FROM seed_steps s
JOIN tasker.named_steps ns ON ns.name = 'bench_step_' || s.pos
CROSS JOIN LATERAL (
    SELECT false, true, now() - interval '100 minutes', 1, now() - interval '101 minutes', NULL::int,
           '{"status": "ok"}'::jsonb
    WHERE s.pos = 0
    UNION ALL
    SELECT %s
    WHERE s.pos > 0
) c`

const insertEdgesSQL = `
INSERT INTO tasker.workflow_step_edges (from_step_uuid, to_step_uuid, name, created_at, updated_at)
SELECT r.step_uuid, c.step_uuid, 'provides', now() - interval '2 hours', now() - interval '2 hours'
FROM seed_steps c JOIN seed_steps r ON r.task_no = c.task_no AND r.pos = 0
WHERE c.pos > 0`

// insertTransitionsSQL writes each step's history: roots take the
// "complete" path, children the path $1; the last row is most_recent and
// is $2 seconds old, the others one minute apart before it. Timestamps and
// metadata depend only on the hop, so they are computed once per hop.
const insertTransitionsSQL = `
WITH paths (path, sort_key, to_state, from_state, event) AS (
    VALUES
    ('complete', 1, 'pending', NULL, NULL),
    ('complete', 2, 'enqueued', 'pending', '{"type":"Enqueue"}'),
    ('complete', 3, 'in_progress', 'enqueued', '{"type":"Start"}'),
    ('complete', 4, 'enqueued_for_orchestration', 'in_progress', '{"type":"EnqueueForOrchestration"}'),
    ('complete', 5, 'complete', 'enqueued_for_orchestration', '{"type":"Complete"}'),
    ('retry', 1, 'pending', NULL, NULL),
    ('retry', 2, 'enqueued', 'pending', '{"type":"Enqueue"}'),
    ('retry', 3, 'in_progress', 'enqueued', '{"type":"Start"}'),
    ('retry', 4, 'enqueued_as_error_for_orchestration', 'in_progress', '{"type":"EnqueueAsErrorForOrchestration"}'),
    ('retry', 5, 'waiting_for_retry', 'enqueued_as_error_for_orchestration',
     '{"type":"WaitForRetry","data":"read tcp 10.0.3.7:49152->10.0.9.2:443: connection reset by peer"}'),
    ('error', 1, 'pending', NULL, NULL),
    ('error', 2, 'enqueued', 'pending', '{"type":"Enqueue"}'),
    ('error', 3, 'in_progress', 'enqueued', '{"type":"Start"}'),
    ('error', 4, 'enqueued_as_error_for_orchestration', 'in_progress', '{"type":"EnqueueAsErrorForOrchestration"}'),
    ('error', 5, 'error', 'enqueued_as_error_for_orchestration',
     '{"type":"Fail","data":"validation failed: missing field customer_id"}'),
    ('awaiting_decision', 1, 'pending', NULL, NULL),
    ('awaiting_decision', 2, 'enqueued', 'pending', '{"type":"Enqueue"}'),
    ('awaiting_decision', 3, 'in_progress', 'enqueued', '{"type":"Start"}'),
    ('awaiting_decision', 4, 'enqueued_as_error_for_orchestration', 'in_progress', '{"type":"EnqueueAsErrorForOrchestration"}'),
    ('awaiting_park', 1, 'pending', NULL, NULL),
    ('awaiting_park', 2, 'enqueued', 'pending', '{"type":"Enqueue"}'),
    ('awaiting_park', 3, 'in_progress', 'enqueued', '{"type":"Start"}'),
    ('awaiting_park', 4, 'enqueued_as_error_for_orchestration', 'in_progress', '{"type":"EnqueueAsErrorForOrchestration"}')
), lengths AS (
    SELECT path, max(sort_key) AS rows FROM paths GROUP BY path
), hops AS (
    SELECT p.path, p.sort_key, p.to_state, p.from_state, ts.at,
           -- The awaiting_park path has no current row: parkDue appends it.
           p.sort_key = l.rows AND p.path <> 'awaiting_park' AS most_recent,
           CASE WHEN p.event IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('event', p.event, 'timestamp', to_char(ts.at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                                        'actor', 'tasker-orchestration')
           END AS metadata
    FROM paths p
    JOIN lengths l ON l.path = p.path
    CROSS JOIN LATERAL (SELECT now() - $2::float8 * interval '1 second' - (l.rows - p.sort_key) * interval '1 minute') ts(at)
)
INSERT INTO tasker.workflow_step_transitions
    (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
SELECT s.step_uuid, h.to_state, h.from_state, h.metadata, h.sort_key, h.most_recent, h.at, h.at
FROM seed_steps s
JOIN hops h ON h.path = CASE WHEN s.pos = 0 THEN 'complete' ELSE $1 END`

// seedCatalog creates the rows every seeded task refers to; once per
// database.
func seedCatalog(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, seedCatalogSQL); err != nil {
		return fmt.Errorf("seed catalog: %w", err)
	}
	return nil
}

// seedGroup inserts children child steps of one kind, in tasks of
// childrenPerTask, set-based, in one transaction. Template seeding passes
// bulk=true: foreign keys are not checked (the rows are consistent by
// construction; checking 10 M transition rows would dominate the run) and
// the commit is asynchronous. Seeding during a run passes bulk=false, so
// any trigger a sweeper-owned migration installed fires as it would for
// the orchestrator's writes.
func seedGroup(ctx context.Context, pool *pgxpool.Pool, kind childKind, children, offset int, bulk bool, lagLead, lagEvery float64) error {
	if children <= 0 {
		return nil
	}
	tasks := (children + childrenPerTask - 1) / childrenPerTask
	historyAge := 6000.0 // seconds: the last transition is 100 minutes old
	if kind == kindLag {
		historyAge = 0 // parked just now, as the orchestrator would
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if bulk {
			if _, err := tx.Exec(ctx, "SET LOCAL session_replication_role = replica; SET LOCAL synchronous_commit = off; SET LOCAL work_mem = '64MB'"); err != nil {
				return fmt.Errorf("bulk settings: %w", err)
			}
		}
		if _, err := tx.Exec(ctx, seedStepsSQL, tasks, children, offset); err != nil {
			return fmt.Errorf("stage %s steps: %w", kind, err)
		}
		if _, err := tx.Exec(ctx, insertTasksSQL); err != nil {
			return fmt.Errorf("insert tasks: %w", err)
		}
		stepsSQL := fmt.Sprintf(insertStepsSQL, stepColumns[kind])
		var err error
		if kind == kindLag {
			_, err = tx.Exec(ctx, stepsSQL, lagLead, lagEvery)
		} else {
			_, err = tx.Exec(ctx, stepsSQL)
		}
		if err != nil {
			return fmt.Errorf("insert %s steps: %w", kind, err)
		}
		if _, err := tx.Exec(ctx, insertEdgesSQL); err != nil {
			return fmt.Errorf("insert edges: %w", err)
		}
		if _, err := tx.Exec(ctx, insertTransitionsSQL, historyPath[kind], historyAge); err != nil {
			return fmt.Errorf("insert %s transitions: %w", kind, err)
		}
		return nil
	})
}

// seedGroups bulk-loads the catalog and each group in order into a
// database that has only the tasker subset. The secondary indexes (those
// that back no constraint) are dropped first and rebuilt from their own
// definitions afterwards: building an index once is far cheaper than
// maintaining it through millions of inserts, and the result is the same.
func seedGroups(ctx context.Context, log *progress, pool *pgxpool.Pool, groups []seedSpec) error {
	indexes, err := dropSecondaryIndexes(ctx, pool)
	if err != nil {
		return err
	}
	if err := seedCatalog(ctx, pool); err != nil {
		return err
	}
	// Chunks of a few hundred thousand steps, two at a time: seeding is
	// CPU-bound in the server, and a chunk's transaction stays small.
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(seedParallelism)
	var total, roots int
	for _, grp := range groups {
		for offset := 0; offset < grp.children; offset += seedChunk {
			n := min(seedChunk, grp.children-offset)
			g.Go(func() error { return seedGroup(gctx, pool, grp.kind, n, offset, true, 0, 0) })
			roots += (n + childrenPerTask - 1) / childrenPerTask
		}
		total += grp.children
	}
	if err := g.Wait(); err != nil {
		return err
	}
	log.printf("  seeded %d steps (+%d complete roots) in %.1fs", total, roots, time.Since(start).Seconds())
	start = time.Now()
	if err := createIndexes(ctx, pool, indexes); err != nil {
		return err
	}
	log.printf("  rebuilt %d secondary indexes in %.1fs", len(indexes), time.Since(start).Seconds())
	return nil
}

// dropSecondaryIndexes drops the tasker schema's indexes that back no
// constraint and returns their definitions.
func dropSecondaryIndexes(ctx context.Context, pool *pgxpool.Pool) ([]string, error) {
	rows, err := pool.Query(ctx, `
SELECT format('%I.%I', n.nspname, ic.relname), pg_get_indexdef(i.indexrelid)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE n.nspname = 'tasker'
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
ORDER BY ic.relname`)
	if err != nil {
		return nil, fmt.Errorf("list secondary indexes: %w", err)
	}
	type index struct{ name, def string }
	idx, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (index, error) {
		var x index
		err := r.Scan(&x.name, &x.def)
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("list secondary indexes: %w", err)
	}
	defs := make([]string, len(idx))
	for i, x := range idx {
		if _, err := pool.Exec(ctx, "DROP INDEX "+x.name); err != nil {
			return nil, fmt.Errorf("drop index %s: %w", x.name, err)
		}
		defs[i] = x.def
	}
	return defs, nil
}

// createIndexes runs index definitions with a bulk-build memory budget.
func createIndexes(ctx context.Context, pool *pgxpool.Pool, defs []string) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL maintenance_work_mem = '1GB'"); err != nil {
			return fmt.Errorf("index build settings: %w", err)
		}
		for _, def := range defs {
			if _, err := tx.Exec(ctx, def); err != nil {
				return fmt.Errorf("rebuild index (%s): %w", def, err)
			}
		}
		return nil
	})
}

// seedSpec is one group of a template.
type seedSpec struct {
	kind     childKind
	children int
}

// parkDueSQL is the orchestrator parking the kindDue steps in
// waiting_for_retry: it appends the current row (sort_key 5, created now)
// to each history that has none. Their enqueued_as_error_for_orchestration
// rows were seeded already retired, which spares re-writing every one of
// them here: the result is the same rows a retire-and-append would leave.
const parkDueSQL = `
INSERT INTO tasker.workflow_step_transitions
    (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
SELECT t.workflow_step_uuid, 'waiting_for_retry', 'enqueued_as_error_for_orchestration',
       jsonb_build_object('event', '{"type":"WaitForRetry","data":"read tcp 10.0.3.7:49152->10.0.9.2:443: connection reset by peer"}',
                          'timestamp', to_char(now(), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), 'actor', 'tasker-orchestration'),
       t.sort_key + 1, true, now(), now()
FROM tasker.workflow_step_transitions t
WHERE t.to_state = 'enqueued_as_error_for_orchestration' AND t.sort_key = 4
  AND NOT EXISTS (SELECT 1 FROM tasker.workflow_step_transitions c
                  WHERE c.workflow_step_uuid = t.workflow_step_uuid AND c.most_recent)
ORDER BY t.workflow_step_uuid`

// parkDue parks the seeded kindDue steps; see templateSpec.park.
func parkDue(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, parkDueSQL); err != nil {
		return fmt.Errorf("park due steps: %w", err)
	}
	return nil
}
