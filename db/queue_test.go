package db_test

// The retry queue as an operator sees it, on both sweep paths: listings
// by state with keyset pages and filters, one step's detail with its last
// error and history, the manual changes (each a compare-and-swap on the
// step as read, audited in the transition metadata) and the pause switch.

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// queueFixture is one step of each kind a listing tells apart.
type queueFixture struct {
	due1, due2, later, stranded, errored, blocked, parent uuid.UUID
	task                                                  uuid.UUID
}

func waitingWith(t *testing.T, pool *pgxpool.Pool, step uuid.UUID, cols testdb.StepColumns) {
	t.Helper()
	testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, step, cols)
}

func newQueueFixture(t *testing.T, pool *pgxpool.Pool) queueFixture {
	t.Helper()
	// Steps 0..5 in one task; step 6 is the parent of step 5.
	task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 7, Edges: [][2]int{{6, 5}}})
	f := queueFixture{
		due1: task.Steps[0], due2: task.Steps[1], later: task.Steps[2], stranded: task.Steps[3],
		errored: task.Steps[4], blocked: task.Steps[5], parent: task.Steps[6], task: task.TaskUUID,
	}
	expired := testdb.StepColumns{Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](5)}
	waitingWith(t, pool, f.due1, expired)
	waitingWith(t, pool, f.due2, expired)
	waitingWith(t, pool, f.later, testdb.StepColumns{Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Duration(0)), BackoffRequestSeconds: testdb.Ptr[int32](3600)})
	waitingWith(t, pool, f.stranded, testdb.StepColumns{Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](3), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](5)})
	testdb.PlaceInState(t, pool, f.errored, statemachine.Error, 0)
	waitingWith(t, pool, f.blocked, expired)
	testdb.PlaceInState(t, pool, f.parent, statemachine.InProgress, 0)
	// The due1 step was parked by the inline handler: its failure's
	// category, code and message are in the waiting row's metadata.
	_, err := pool.Exec(context.Background(), `
UPDATE tasker.workflow_step_transitions SET metadata = '{"actor": "tasker-sweeper/inline-handler",
    "category": "Timeout", "error_code": "TIMEOUT", "event": "{\"type\":\"WaitForRetry\",\"data\":\"upstream timed out\"}"}'
WHERE workflow_step_uuid = $1 AND most_recent`, f.due1)
	require.NoError(t, err)
	// The errored step's failure is only in the orchestrator's results.
	_, err = pool.Exec(context.Background(), `
UPDATE tasker.workflow_steps SET results = '{"error": {"message": "card declined", "error_type": "PaymentError"},
    "metadata": {"error_code": "E402"}}' WHERE workflow_step_uuid = $1`, f.errored)
	require.NoError(t, err)
	return f
}

// queueStore is a store on a database of the given shape whose schedule
// (on the schedule path) holds every waiting step, as after a daemon's
// adoption.
func queueStore(t *testing.T, objects testdb.Objects) (*pgxpool.Pool, *db.Store, queueFixture) {
	t.Helper()
	pool := testdb.NewFor(t, objects)
	f := newQueueFixture(t, pool)
	store := db.NewStore(pool)
	if objects == testdb.WithSweeperObjects {
		_, err := store.Reconcile(context.Background(), 0)
		require.NoError(t, err)
	}
	return pool, store, f
}

func listAll(t *testing.T, store *db.Store, q sweeper.StepQuery) []sweeper.StepItem {
	t.Helper()
	var all []sweeper.StepItem
	for range 100 {
		n, err := q.Normalize()
		require.NoError(t, err)
		page, err := store.ListSteps(context.Background(), n)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page.Steps), n.Limit)
		all = append(all, page.Steps...)
		if page.NextCursor == "" {
			return all
		}
		q.Cursor = page.NextCursor
	}
	t.Fatal("the listing never ended")
	return nil
}

func idsOf(items []sweeper.StepItem) []uuid.UUID {
	out := make([]uuid.UUID, len(items))
	for i, it := range items {
		out[i] = it.StepUUID
	}
	return out
}

func TestListStepsByState(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		_, store, f := queueStore(t, objects)
		for _, tc := range []struct {
			state sweeper.ListState
			want  []uuid.UUID
		}{
			{sweeper.ListWaiting, []uuid.UUID{f.due1, f.due2, f.later, f.stranded, f.blocked}},
			{sweeper.ListDue, []uuid.UUID{f.due1, f.due2}},
			{sweeper.ListStranded, []uuid.UUID{f.stranded}},
			{sweeper.ListError, []uuid.UUID{f.errored}},
		} {
			for _, limit := range []int{1, 2, 100} {
				got := listAll(t, store, sweeper.StepQuery{State: tc.state, Limit: limit})
				require.ElementsMatch(t, tc.want, idsOf(got), "%s, pages of %d", tc.state, limit)
			}
		}

		items := map[uuid.UUID]sweeper.StepItem{}
		for _, it := range listAll(t, store, sweeper.StepQuery{State: sweeper.ListWaiting}) {
			items[it.StepUUID] = it
		}
		d1 := items[f.due1]
		require.True(t, d1.Due)
		require.Empty(t, d1.WhyNotDue)
		require.Equal(t, "handler", d1.ParkedBy)
		require.Equal(t, &sweeper.LastError{Category: "Timeout", Code: "TIMEOUT", Message: "upstream timed out"}, d1.LastError)
		require.Equal(t, f.task, d1.TaskUUID)
		require.NotEmpty(t, d1.Namespace, "the test role reads the task tables")
		require.NotEmpty(t, d1.TaskName)
		require.NotNil(t, d1.DueAt)
		require.NotNil(t, d1.EnteredAt)
		require.Equal(t, "other", items[f.due2].ParkedBy)
		require.False(t, items[f.later].Due)
		require.Contains(t, items[f.later].WhyNotDue, "backoff expires at")
		require.Contains(t, items[f.stranded].WhyNotDue, "stranded")
		require.Contains(t, items[f.blocked].WhyNotDue, "1 parent step(s)")

		errs := listAll(t, store, sweeper.StepQuery{State: sweeper.ListError})
		require.Len(t, errs, 1)
		require.Equal(t, &sweeper.LastError{Category: "PaymentError", Code: "E402", Message: "card declined"}, errs[0].LastError)
		require.Nil(t, errs[0].DueAt)
		require.Empty(t, errs[0].ParkedBy)
	})
}

func TestListStepsFiltersAndOrder(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool, store, f := queueStore(t, objects)
		other := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
		waitingWith(t, pool, other, testdb.StepColumns{Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](5)})
		if objects == testdb.WithSweeperObjects {
			_, err := store.Reconcile(context.Background(), 0)
			require.NoError(t, err)
		}
		due := listAll(t, store, sweeper.StepQuery{State: sweeper.ListDue, Task: &f.task})
		require.ElementsMatch(t, []uuid.UUID{f.due1, f.due2}, idsOf(due))
		all := listAll(t, store, sweeper.StepQuery{State: sweeper.ListDue})
		require.Len(t, all, 3)

		detail, err := store.StepDetail(context.Background(), f.due2)
		require.NoError(t, err)
		byName := listAll(t, store, sweeper.StepQuery{State: sweeper.ListWaiting, Name: detail.Name})
		require.Equal(t, []uuid.UUID{f.due2}, idsOf(byName))

		// The fixtures entered waiting_for_retry just now: none is an hour old.
		require.Empty(t, listAll(t, store, sweeper.StepQuery{State: sweeper.ListWaiting, OlderThan: time.Hour}))
		require.Len(t, listAll(t, store, sweeper.StepQuery{State: sweeper.ListWaiting, OlderThan: time.Nanosecond}), 6)

		// The schedule path lists waiting steps by due time; the scan path by step.
		waiting := listAll(t, store, sweeper.StepQuery{State: sweeper.ListWaiting, Limit: 2})
		for i := 1; i < len(waiting); i++ {
			if objects == testdb.WithSweeperObjects {
				require.False(t, waiting[i].DueAt.Before(*waiting[i-1].DueAt), "due order")
			} else {
				require.Less(t, waiting[i-1].StepUUID.String(), waiting[i].StepUUID.String(), "step order")
			}
		}
	})
}

func TestListStepsRefusesBadInput(t *testing.T) {
	t.Parallel()
	for _, q := range []sweeper.StepQuery{
		{State: "running"},
		{Limit: -1},
		{Limit: sweeper.MaxListLimit + 1},
		{Cursor: "%%%"},
		{Cursor: "bm90LWpzb24"},
		{State: sweeper.ListDue, Cursor: sweeper.Cursor{State: sweeper.ListError, Step: uuid.New()}.Encode()},
		{OlderThan: -time.Second},
	} {
		_, err := q.Normalize()
		var in *sweeper.InputError
		require.ErrorAs(t, err, &in, "%+v", q)
	}
	_, err := sweeper.StepQuery{Limit: sweeper.MaxListLimit}.Normalize()
	require.NoError(t, err)
}

// An operator over the store, with a sweeper for retries.
func operatorOn(t *testing.T, store *db.Store) *sweeper.Operator {
	t.Helper()
	sw, err := sweeper.New(store, sweeper.DefaultConfig(), slog.New(slog.DiscardHandler), sweeper.Hooks{})
	require.NoError(t, err)
	return sweeper.NewOperator(store, sw, slog.New(slog.DiscardHandler))
}

func currentOf(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) historyRow {
	t.Helper()
	rows := historyOf(t, pool, step)
	require.NotEmpty(t, rows)
	last := rows[len(rows)-1]
	require.True(t, last.MostRecent)
	return last
}

func TestOperationsAreAuditedCompareAndSwaps(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool, store, f := queueStore(t, objects)
		ctx := context.Background()
		op := operatorOn(t, store)
		audit := sweeper.Audit{Actor: "alice", Reason: "incident 42", Via: "cli"}

		// Resolve a stranded step: resolved_manually, audited, off the schedule.
		ch, err := op.Apply(ctx, sweeper.Request{Step: f.stranded, Op: sweeper.OpResolve, Audit: audit})
		require.NoError(t, err)
		require.Equal(t, sweeper.Change{
			StepUUID: f.stranded, Operation: sweeper.OpResolve, From: statemachine.WaitingForRetry,
			To: statemachine.ResolvedManually, Changed: true, Detail: "moved waiting_for_retry -> resolved_manually",
		}, ch)
		cur := currentOf(t, pool, f.stranded)
		require.Equal(t, "resolved_manually", cur.ToState)
		require.Equal(t, "alice", cur.Metadata["actor"])
		require.Equal(t, "incident 42", cur.Metadata["why"])
		require.Equal(t, "resolve", cur.Metadata["operation"])
		require.JSONEq(t, `{"type":"ResolveManually"}`, cur.Metadata["event"].(string))
		if objects == testdb.WithSweeperObjects {
			var rows int
			require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM tasker_sweeper.retry_schedule WHERE workflow_step_uuid = $1`, f.stranded).Scan(&rows))
			require.Zero(t, rows)
		}
		// Resolving or cancelling it again is refused: it is terminal.
		for _, o := range []sweeper.Operation{sweeper.OpResolve, sweeper.OpCancel} {
			ch, err = op.Apply(ctx, sweeper.Request{Step: f.stranded, Op: o, Audit: audit})
			require.ErrorIs(t, err, sweeper.ErrRefused)
			require.False(t, ch.Changed)
		}
		require.Len(t, historyOf(t, pool, f.stranded), 6, "nothing more written")

		// Cancel the error step.
		ch, err = op.Apply(ctx, sweeper.Request{Step: f.errored, Op: sweeper.OpCancel, Audit: audit})
		require.NoError(t, err)
		require.Equal(t, statemachine.Cancelled, ch.To)
		require.Equal(t, "cancel", currentOf(t, pool, f.errored).Metadata["operation"])

		// A dry run writes nothing.
		before := historyOf(t, pool, f.due1)
		ch, err = op.Apply(ctx, sweeper.Request{Step: f.due1, Op: sweeper.OpCancel, Audit: audit, DryRun: true})
		require.NoError(t, err)
		require.False(t, ch.Changed)
		require.Equal(t, before, historyOf(t, pool, f.due1))

		// Retry a due step: pending, with who and why.
		ch, err = op.Apply(ctx, sweeper.Request{Step: f.due1, Op: sweeper.OpRetry, Audit: sweeper.Audit{Actor: "bob", Reason: "now please"}})
		require.NoError(t, err)
		require.True(t, ch.Changed)
		cur = currentOf(t, pool, f.due1)
		require.Equal(t, "pending", cur.ToState)
		require.Equal(t, "bob", cur.Metadata["actor"])
		require.Equal(t, "now please", cur.Metadata["why"])
		require.Equal(t, "retry", cur.Metadata["operation"])
		// A not-yet-due step needs force.
		_, err = op.Apply(ctx, sweeper.Request{Step: f.later, Op: sweeper.OpRetry, Audit: audit})
		require.ErrorIs(t, err, sweeper.ErrNotDue)
		_, err = op.Apply(ctx, sweeper.Request{Step: f.later, Op: sweeper.OpRetry, Force: true, Audit: audit})
		require.NoError(t, err)

		// Unknown steps and bad requests.
		_, err = op.Apply(ctx, sweeper.Request{Step: uuid.New(), Op: sweeper.OpResolve, Audit: audit})
		require.ErrorIs(t, err, statemachine.ErrStepNotFound)
		var in *sweeper.InputError
		_, err = op.Apply(ctx, sweeper.Request{Step: f.due2, Op: sweeper.OpGrant, Attempts: 0, Audit: audit})
		require.ErrorAs(t, err, &in)
		_, err = op.Apply(ctx, sweeper.Request{Step: f.due2, Op: sweeper.OpResolve, Audit: sweeper.Audit{Actor: "x"}})
		require.ErrorAs(t, err, &in, "a reason is required")
	})
}

func TestGrantIsACompareAndSwapOnTheStepAsRead(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool, store, f := queueStore(t, objects)
		ctx := context.Background()
		op := operatorOn(t, store)
		audit := sweeper.Audit{Actor: "alice", Reason: "upstream fixed"}

		read, err := store.StepDetail(ctx, f.stranded)
		require.NoError(t, err)
		// Another writer changes the step after it was read: the grant
		// writes nothing and says so.
		testdb.SetColumns(t, pool, f.stranded, testdb.StepColumns{MaxAttempts: testdb.Ptr[int32](2)})
		before := historyOf(t, pool, f.stranded)
		ch, err := op.ApplyItem(ctx, sweeper.Request{Op: sweeper.OpGrant, Attempts: 2, Audit: audit}, read.StepItem)
		require.ErrorIs(t, err, statemachine.ErrLostRace)
		require.False(t, ch.Changed)
		require.Equal(t, before, historyOf(t, pool, f.stranded))
		require.Equal(t, int32(2), *snapshotMax(t, pool, f.stranded))

		// Read again and grant: max_attempts = attempts + 2, recorded on
		// the waiting row; no longer stranded.
		ch, err = op.Apply(ctx, sweeper.Request{Step: f.stranded, Op: sweeper.OpGrant, Attempts: 2, Audit: audit})
		require.NoError(t, err)
		require.True(t, ch.Changed)
		require.Equal(t, int32(5), *snapshotMax(t, pool, f.stranded))
		cur := currentOf(t, pool, f.stranded)
		require.Equal(t, "waiting_for_retry", cur.ToState)
		changes, _ := cur.Metadata["manual_changes"].([]any)
		require.Len(t, changes, 1)
		require.Equal(t, "grant", changes[0].(map[string]any)["operation"])
		require.Equal(t, "alice", changes[0].(map[string]any)["actor"])
		require.Empty(t, listAll(t, store, sweeper.StepQuery{State: sweeper.ListStranded}))
		due := listAll(t, store, sweeper.StepQuery{State: sweeper.ListDue})
		require.Contains(t, idsOf(due), f.stranded, "its backoff passed long ago")

		// Grant on a step that is not waiting, or not retryable, is refused.
		_, err = op.Apply(ctx, sweeper.Request{Step: f.errored, Op: sweeper.OpGrant, Attempts: 1, Audit: audit})
		require.ErrorIs(t, err, sweeper.ErrRefused)
		testdb.SetColumns(t, pool, f.due2, testdb.StepColumns{Retryable: testdb.Ptr(false)})
		_, err = op.Apply(ctx, sweeper.Request{Step: f.due2, Op: sweeper.OpGrant, Attempts: 1, Audit: audit})
		require.ErrorIs(t, err, sweeper.ErrRefused)
	})
}

func snapshotMax(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) *int32 {
	t.Helper()
	var v *int32
	require.NoError(t, pool.QueryRow(context.Background(),
		`SELECT max_attempts FROM tasker.workflow_steps WHERE workflow_step_uuid = $1`, step).Scan(&v))
	return v
}

func TestStepDetailHistory(t *testing.T) {
	t.Parallel()
	_, store, f := queueStore(t, testdb.WithSweeperObjects)
	d, err := store.StepDetail(context.Background(), f.due1)
	require.NoError(t, err)
	require.Len(t, d.History, 5)
	require.Equal(t, statemachine.WaitingForRetry, d.History[0].To, "newest first")
	require.True(t, d.History[0].MostRecent)
	require.Equal(t, "WaitForRetry", d.History[0].Event)
	require.Equal(t, "upstream timed out", d.History[0].Message)
	require.Equal(t, "tasker-sweeper/inline-handler", d.History[0].Who)
	require.Nil(t, d.History[4].From)
	_, err = store.StepDetail(context.Background(), uuid.New())
	require.ErrorIs(t, err, statemachine.ErrStepNotFound)
}

func TestPauseSwitch(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		_, store, _ := queueStore(t, objects)
		ctx := context.Background()
		p, err := store.PauseState(ctx)
		require.NoError(t, err)
		require.False(t, p.Paused)
		_, _, err = store.SetPause(ctx, true, "alice", "incident")
		if objects == testdb.TaskerOnly {
			require.ErrorIs(t, err, sweeper.ErrNoSchedule)
			return
		}
		require.NoError(t, err)
		p, err = store.PauseState(ctx)
		require.NoError(t, err)
		require.True(t, p.Paused)
		require.Equal(t, "alice", p.By)
		require.Equal(t, "incident", p.Reason)
		require.NotNil(t, p.Since)
		// A second pause keeps the first one's record.
		p2, changed, err := store.SetPause(ctx, true, "bob", "again")
		require.NoError(t, err)
		require.False(t, changed)
		require.Equal(t, "alice", p2.By)
		p3, changed, err := store.SetPause(ctx, false, "bob", "")
		require.NoError(t, err)
		require.True(t, changed)
		require.False(t, p3.Paused)
	})
}
