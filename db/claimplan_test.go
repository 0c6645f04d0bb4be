package db_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db/internal/dbsqlc"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
)

// explainer is a dbsqlc.DBTX that runs each query under EXPLAIN ANALYZE
// (in the caller's transaction) before running it, keeping the plans.
type explainer struct {
	tx    pgx.Tx
	plans []planNode
}

type planNode struct {
	NodeType     string     `json:"Node Type"`
	RelationName string     `json:"Relation Name"`
	IndexName    string     `json:"Index Name"`
	ActualRows   float64    `json:"Actual Rows"`
	ActualLoops  float64    `json:"Actual Loops"`
	Plans        []planNode `json:"Plans"`
}

func (e *explainer) explain(ctx context.Context, sql string, args ...any) error {
	var raw []byte
	if err := e.tx.QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) "+sql, args...).Scan(&raw); err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	var out []struct {
		Plan planNode `json:"Plan"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return err
	}
	e.plans = append(e.plans, out[0].Plan)
	return nil
}

func (e *explainer) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return e.tx.Exec(ctx, sql, args...)
}

func (e *explainer) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := e.explain(ctx, sql, args...); err != nil {
		return nil, err
	}
	return e.tx.Query(ctx, sql, args...)
}

func (e *explainer) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := e.explain(ctx, sql, args...); err != nil {
		return errRow{err}
	}
	return e.tx.QueryRow(ctx, sql, args...)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// rowsRead is the most rows any node of the plan produced over all its
// loops: a plan that reads every waiting step shows it here.
func rowsRead(n planNode) (most float64, where string) {
	most, where = n.ActualRows*n.ActualLoops, n.NodeType+" "+n.RelationName+" "+n.IndexName
	for _, c := range n.Plans {
		if m, w := rowsRead(c); m > most {
			most, where = m, w
		}
	}
	return most, where
}

const waiting, window = 4000, 50

// staleStatistics seeds n due steps with an overdue schedule row each, the
// statistics taken while the steps were still pending, as before a burst
// of failures: they say almost nothing is waiting.
func staleStatistics(t *testing.T, n int) *pgxpool.Pool {
	t.Helper()
	pool := testdb.NewFor(t, testdb.WithSweeperObjects)
	ctx := context.Background()
	testdb.SeedDue(t, pool, n)
	for _, sql := range []string{
		`UPDATE tasker.workflow_step_transitions SET to_state = 'pending' WHERE most_recent`,
		`ANALYZE tasker.workflow_steps, tasker.workflow_step_transitions, tasker_sweeper.retry_schedule`,
		`UPDATE tasker.workflow_step_transitions SET to_state = 'waiting_for_retry' WHERE most_recent`,
		`INSERT INTO tasker_sweeper.retry_schedule (workflow_step_uuid, due_at)
		 SELECT workflow_step_uuid, now() - interval '1 minute' FROM tasker.workflow_step_transitions
		 WHERE most_recent AND to_state = 'waiting_for_retry'`,
	} {
		_, err := pool.Exec(ctx, sql)
		require.NoError(t, err)
	}
	return pool
}

// The schedule claim's cost follows the batch, not the waiting steps, even
// when the statistics were taken before a burst of parks (the tables looked
// empty): each candidate is looked up on its own, so no node of the plan
// reads more rows than the window holds. As a plain join the planner
// hashed the candidates against every current transition instead.
func TestScheduleClaimReadsOnlyItsWindowWhateverTheStatistics(t *testing.T) {
	t.Parallel()
	pool := staleStatistics(t, waiting)
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	e := &explainer{tx: tx}
	rows, err := dbsqlc.New(e).ScheduleClaimDue(ctx, dbsqlc.ScheduleClaimDueParams{WindowLimit: window, BatchLimit: window})
	require.NoError(t, err)
	require.Len(t, rows, window, "the claim takes a full batch")
	require.Len(t, e.plans, 1)
	most, where := rowsRead(e.plans[0])
	require.LessOrEqualf(t, most, float64(2*window),
		"a node of the claim's plan read %.0f rows (%s) for a window of %d among %d waiting steps", most, where, window, waiting)
}

// The re-evaluation before the batches reads the overdue schedule rows in
// due order, a batch at a time; the same statistics must not make it read
// every waiting step.
func TestScheduleRescheduleReadsOnlyItsBatchWhateverTheStatistics(t *testing.T) {
	t.Parallel()
	pool := staleStatistics(t, waiting)
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	e := &explainer{tx: tx}
	got, err := dbsqlc.New(e).ScheduleReschedule(ctx, dbsqlc.ScheduleRescheduleParams{BatchLimit: window, RecheckSeconds: 30})
	require.NoError(t, err)
	require.EqualValues(t, window, got.Examined)
	require.Len(t, e.plans, 1)
	most, where := rowsRead(e.plans[0])
	require.LessOrEqualf(t, most, float64(2*window),
		"a node of the re-evaluation's plan read %.0f rows (%s) for a batch of %d among %d waiting steps", most, where, window, waiting)
}
