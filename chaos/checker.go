package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// readinessSQL is tasker's own readiness rule (get_step_readiness_status_batch
// with evaluate_step_state_readiness and calculate_step_next_retry_time),
// written out independently of the sweeper's queries and evaluated over
// whole tasks; the same rendering the sweeper's parity tests use, over every
// step of the database. $1 shifts the clock: the rule as of now() + $1
// seconds (0 is tasker's rule itself).
const readinessSQL = `
WITH steps AS (
    SELECT ws.* FROM tasker.workflow_steps ws
), states AS (
    SELECT DISTINCT ON (t.workflow_step_uuid) t.workflow_step_uuid, t.to_state
    FROM tasker.workflow_step_transitions t
    WHERE t.most_recent
    ORDER BY t.workflow_step_uuid, t.created_at DESC
), last_failures AS (
    SELECT DISTINCT ON (t.workflow_step_uuid) t.workflow_step_uuid, t.created_at AS failure_time
    FROM tasker.workflow_step_transitions t
    JOIN steps s ON s.workflow_step_uuid = t.workflow_step_uuid
    WHERE t.to_state = 'error'
    ORDER BY t.workflow_step_uuid, t.created_at DESC
), deps AS (
    SELECT e.to_step_uuid, count(*) AS total,
           count(*) FILTER (WHERE ps.to_state IN ('complete', 'resolved_manually')) AS done
    FROM tasker.workflow_step_edges e
    JOIN steps s ON s.workflow_step_uuid = e.to_step_uuid
    LEFT JOIN states ps ON ps.workflow_step_uuid = e.from_step_uuid
    GROUP BY e.to_step_uuid
)
SELECT
    s.workflow_step_uuid,
    coalesce(st.to_state, 'pending') AS current_state,
    coalesce(st.to_state, 'pending') IN ('pending', 'waiting_for_retry')
    AND NOT s.processed
    AND NOT s.in_process
    AND (d.total IS NULL OR d.done = d.total)
    AND (coalesce(s.attempts, 0) = 0
         OR (coalesce(s.retryable, true) AND coalesce(s.attempts, 0) < coalesce(s.max_attempts, 3)))
    AND (CASE
           WHEN s.backoff_request_seconds IS NOT NULL AND s.last_attempted_at IS NOT NULL
             THEN s.last_attempted_at + s.backoff_request_seconds * interval '1 second'
           WHEN lf.failure_time IS NOT NULL
             THEN lf.failure_time + least(power(2.0, coalesce(s.attempts, 1)) * interval '1 second',
                                          60 * interval '1 second')
         END IS NULL
         OR CASE
           WHEN s.backoff_request_seconds IS NOT NULL AND s.last_attempted_at IS NOT NULL
             THEN s.last_attempted_at + s.backoff_request_seconds * interval '1 second'
           WHEN lf.failure_time IS NOT NULL
             THEN lf.failure_time + least(power(2.0, coalesce(s.attempts, 1)) * interval '1 second',
                                          60 * interval '1 second')
         END <= now() + $1::float8 * interval '1 second') AS ready
FROM steps s
LEFT JOIN states st ON st.workflow_step_uuid = s.workflow_step_uuid
LEFT JOIN deps d ON d.to_step_uuid = s.workflow_step_uuid
LEFT JOIN last_failures lf ON lf.workflow_step_uuid = s.workflow_step_uuid`

// dueWaitingSQL counts the waiting steps tasker's rule calls due (as of now
// + $1 s), except those in $2, with a few of their ids.
const dueWaitingSQL = `
SELECT count(*), coalesce((array_agg(r.workflow_step_uuid ORDER BY r.workflow_step_uuid))[1:3], '{}')
FROM (` + readinessSQL + `) r
WHERE r.current_state = 'waiting_for_retry' AND r.ready AND NOT (r.workflow_step_uuid = ANY($2::uuid[]))`

// dueWaiting is how many waiting steps are due now (plus ahead seconds),
// not counting exclude, with a sample of their ids.
func dueWaiting(ctx context.Context, pool *pgxpool.Pool, ahead float64, exclude []uuid.UUID) (int64, []uuid.UUID, error) {
	if exclude == nil {
		exclude = []uuid.UUID{}
	}
	var n int64
	var sample []uuid.UUID
	if err := pool.QueryRow(ctx, dueWaitingSQL, ahead, exclude).Scan(&n, &sample); err != nil {
		return 0, nil, fmt.Errorf("count due waiting steps: %w", err)
	}
	return n, sample, nil
}

// waitDrained polls until no waiting step is due (as of now + ahead s),
// except exclude, or limit passes; it returns how many are still due then.
func waitDrained(ctx context.Context, pool *pgxpool.Pool, limit time.Duration, ahead float64, exclude []uuid.UUID) (int64, []uuid.UUID, error) {
	deadline := time.Now().Add(limit)
	for {
		n, sample, err := dueWaiting(ctx, pool, ahead, exclude)
		if err == nil && n == 0 {
			return 0, nil, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return n, sample, err
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// invariantSQL finds steps whose history breaks an invariant; each query
// returns (step, what is wrong), a few rows at most.
var invariantSQL = []struct{ name, sql string }{
	{"moved twice in one waiting episode", `
WITH ordered AS (
    SELECT workflow_step_uuid, to_state, from_state,
           count(*) FILTER (WHERE to_state = 'waiting_for_retry')
               OVER (PARTITION BY workflow_step_uuid ORDER BY sort_key) AS episode
    FROM tasker.workflow_step_transitions
)
SELECT workflow_step_uuid, format('%s retry rows in waiting episode %s', count(*), episode)
FROM ordered
WHERE to_state = 'pending' AND from_state = 'waiting_for_retry'
GROUP BY workflow_step_uuid, episode
HAVING count(*) > 1 OR episode = 0
LIMIT 3`},
	{"not exactly one most_recent row (the last)", `
SELECT workflow_step_uuid,
       format('%s most_recent rows; last sort_key %s, most_recent at %s', count(*) FILTER (WHERE most_recent),
              max(sort_key), string_agg(sort_key::text, ',') FILTER (WHERE most_recent))
FROM tasker.workflow_step_transitions
GROUP BY workflow_step_uuid
HAVING count(*) FILTER (WHERE most_recent) <> 1
    OR max(sort_key) <> max(sort_key) FILTER (WHERE most_recent)
LIMIT 3`},
	{"sort_keys not contiguous 1..n", `
SELECT workflow_step_uuid, format('%s rows, sort_keys %s..%s, %s distinct', count(*), min(sort_key), max(sort_key),
                                  count(DISTINCT sort_key))
FROM tasker.workflow_step_transitions
GROUP BY workflow_step_uuid
HAVING min(sort_key) <> 1 OR max(sort_key) <> count(*) OR count(DISTINCT sort_key) <> count(*)
LIMIT 3`},
	{"from_state is not the previous row's state", `
SELECT workflow_step_uuid, format('sort_key %s: from %s after %s', sort_key, from_state, prev)
FROM (
    SELECT workflow_step_uuid, sort_key, from_state,
           lag(to_state) OVER (PARTITION BY workflow_step_uuid ORDER BY sort_key) AS prev
    FROM tasker.workflow_step_transitions
) h
WHERE sort_key > 1 AND from_state IS DISTINCT FROM prev
LIMIT 3`},
}

// check runs the invariants after a scenario: no step moved twice within
// one waiting episode, exactly one most_recent row per step (the last),
// sort_keys 1..n, a consistent from_state chain, and no step left waiting
// that tasker's readiness rule calls due, except the steps in locked (held
// by the scenario's own locker). It returns the violations.
func check(ctx context.Context, pool *pgxpool.Pool, locked []uuid.UUID) []string {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var problems []string
	for _, inv := range invariantSQL {
		rows, err := pool.Query(cctx, inv.sql)
		if err != nil {
			problems = append(problems, fmt.Sprintf("checker: %s: %v", inv.name, err))
			continue
		}
		type bad struct {
			step uuid.UUID
			what string
		}
		found, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (bad, error) {
			var b bad
			err := r.Scan(&b.step, &b.what)
			return b, err
		})
		if err != nil {
			problems = append(problems, fmt.Sprintf("checker: %s: %v", inv.name, err))
			continue
		}
		if len(found) > 0 {
			problems = append(problems, fmt.Sprintf("%s: step %s (%s)", inv.name, found[0].step, found[0].what))
		}
	}
	n, sample, err := dueWaiting(cctx, pool, 0, locked)
	switch {
	case err != nil:
		problems = append(problems, "checker: "+err.Error())
	case n > 0:
		problems = append(problems, fmt.Sprintf("%d due step(s) left waiting (e.g. %s)", n, sample[0]))
	}
	return problems
}

// joinProblems renders a scenario's failures in one cell.
func joinProblems(problems []string) string {
	return strings.Join(problems, "; ")
}

// stateCounts maps current state to step count (steps without transitions
// count as pending).
func stateCounts(ctx context.Context, pool *pgxpool.Pool, steps []uuid.UUID) (map[string]int, error) {
	rows, err := pool.Query(ctx, `
SELECT coalesce(cur.to_state, 'pending'), count(*)
FROM unnest($1::uuid[]) s(id)
LEFT JOIN tasker.workflow_step_transitions cur ON cur.workflow_step_uuid = s.id AND cur.most_recent
GROUP BY 1`, steps)
	if err != nil {
		return nil, fmt.Errorf("count states: %w", err)
	}
	out := map[string]int{}
	for rows.Next() {
		var state string
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("count states: %w", err)
		}
		out[state] = n
	}
	return out, rows.Err()
}

// movedCount is how many steps are pending right now (cheap: the
// most_recent partial index), the progress of a sweep over a backlog of
// waiting steps.
func movedCount(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var n int
	err := pool.QueryRow(ctx, `SELECT count(*) FROM tasker.workflow_step_transitions WHERE most_recent AND to_state = 'pending'`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count pending steps: %w", err)
	}
	return n, nil
}

// waitMoved polls until at least n steps are pending, or limit passes.
func waitMoved(ctx context.Context, pool *pgxpool.Pool, n int, limit time.Duration, alive func() bool) (int, error) {
	deadline := time.Now().Add(limit)
	for {
		got, err := movedCount(ctx, pool)
		if err == nil && got >= n {
			return got, nil
		}
		if alive != nil && !alive() {
			return got, fmt.Errorf("the sweeper exited with %d of %d steps moved", got, n)
		}
		if time.Now().After(deadline) {
			if err != nil {
				return got, err
			}
			return got, fmt.Errorf("only %d steps moved after %s (waiting for %d)", got, limit, n)
		}
		select {
		case <-ctx.Done():
			return got, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitSessionsGone polls until no session of the sweeper is connected to
// d (a killed process's backends linger until they notice), within limit.
func waitSessionsGone(ctx context.Context, admin *pgxpool.Pool, d *database, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		var n int
		err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2`,
			d.name, sweeperApp).Scan(&n)
		if err == nil && n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d sweeper session(s) still connected %s after the kill", n, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitStates polls until every step in steps is in state, or limit passes;
// it returns the last counts.
func waitStates(ctx context.Context, pool *pgxpool.Pool, steps []uuid.UUID, state string, limit time.Duration) (map[string]int, error) {
	deadline := time.Now().Add(limit)
	for {
		got, err := stateCounts(ctx, pool, steps)
		if err == nil && got[state] == len(steps) {
			return got, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("not all %s after %s", state, limit)
			}
			return got, err
		}
		select {
		case <-ctx.Done():
			return got, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
