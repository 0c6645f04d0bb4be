package sweeper_test

// Every schedule query that evaluates part of the due rule, checked against
// the whole fixture set of the rule (buildRuleFixtures): the count of due
// steps left, the stranded flag adoption and reconcile write, the
// re-evaluation's verdicts and the reconcile pass's "blocked on purpose"
// exception. A change to any condition of the rule in one of them fails
// here (`make mutants`).

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// The fixtures that are waiting but not retry-eligible, and those that are
// due and eligible but blocked (busy, or a parent not finished).
var (
	strandedFixtures = map[string]bool{
		"attempts exhausted: stranded":            true,
		"retryable=false: stranded":               true,
		"max_attempts NULL, attempts 3: stranded": true,
	}
	blockedFixtures = map[string]bool{
		"processed":                         true,
		"in_process":                        true,
		"parent in_progress: unmet":         true,
		"parent error: unmet":               true,
		"parent without transitions: unmet": true,
	}
)

func TestCountDueLeftAgreesWithTheRuleOnEveryFixture(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		fx := buildRuleFixtures(t, pool)
		if objects == testdb.WithSweeperObjects {
			staleSchedule(t, pool, stepsOf(fx)) // every step overdue in the schedule
		}
		want := 0
		for _, f := range fx {
			if f.due {
				want++
			}
		}
		left, err := db.NewStore(pool).CountDueLeft(context.Background())
		require.NoError(t, err)
		require.EqualValues(t, want, left)
	})
}

func TestAdoptionAndReconcileMarkExactlyTheStrandedFixtures(t *testing.T) {
	t.Parallel()
	for _, pass := range []string{"reconcile", "adoption"} {
		t.Run(pass, func(t *testing.T) {
			t.Parallel()
			pool := testdb.New(t)
			ctx := context.Background()
			store := db.NewStore(pool)
			if pass == "adoption" {
				_, err := store.Adopt(ctx) // the first pass: sets the watermark
				require.NoError(t, err)
			}
			fx := buildRuleFixtures(t, pool)
			if pass == "adoption" {
				a, err := store.Adopt(ctx)
				require.NoError(t, err)
				require.Nil(t, a.Reconciled)
			} else {
				_, err := store.Reconcile(ctx, 0)
				require.NoError(t, err)
			}
			for _, f := range fx {
				row, ok := scheduleOf(t, pool, f.step)
				if !ok {
					continue // not waiting
				}
				require.Equal(t, strandedFixtures[f.name], row.Stranded, f.name)
			}
		})
	}
}

// Before the batches, the overdue rows that cannot move are re-evaluated:
// stranded ones are flagged, blocked ones put off, movable ones left alone.
func TestReevaluationJudgesEveryFixture(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	store := db.NewStore(pool)
	_, err := store.Reconcile(ctx, 0) // past the first pass
	require.NoError(t, err)
	fx := buildRuleFixtures(t, pool)
	staleSchedule(t, pool, stepsOf(fx))
	before := map[string]scheduleRow{}
	for _, f := range fx {
		before[f.name], _ = scheduleOf(t, pool, f.step)
	}
	_, err = store.Prepare(ctx)
	require.NoError(t, err)
	later := time.Now().UTC().Add(20 * time.Second)
	for _, f := range fx {
		row, ok := scheduleOf(t, pool, f.step)
		switch {
		case !ok:
			require.False(t, f.due, "%s: a due step's row is kept", f.name)
		case strandedFixtures[f.name]:
			require.True(t, row.Stranded, "%s is flagged stranded", f.name)
		case blockedFixtures[f.name]:
			require.False(t, row.Stranded, f.name)
			require.True(t, row.DueAt.After(later), "%s is put off", f.name)
		case f.due:
			require.Equal(t, before[f.name], row, "%s is left for the claim", f.name)
		}
	}
}

// The reconcile pass corrects a row later than the tables say, unless the
// step is due and blocked (the re-evaluation put it there on purpose) or
// stranded (its time does not matter until an operator acts).
func TestReconcileLeavesExactlyTheBlockedFixturesPutOff(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	store := db.NewStore(pool)
	fx := buildRuleFixtures(t, pool)
	_, err := store.Reconcile(ctx, 0)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `UPDATE tasker_sweeper.retry_schedule SET due_at = now() + interval '2 hours', updated_at = now() - interval '1 minute'`)
	require.NoError(t, err)
	_, err = store.Reconcile(ctx, 0)
	require.NoError(t, err)
	putOff := time.Now().UTC().Add(time.Hour + 50*time.Minute)
	for _, f := range fx {
		row, ok := scheduleOf(t, pool, f.step)
		if !ok {
			continue
		}
		if blockedFixtures[f.name] || strandedFixtures[f.name] {
			require.True(t, row.DueAt.After(putOff), "%s stays put off", f.name)
		} else {
			require.True(t, row.DueAt.Before(putOff), "%s is retimed to the tables' due time", f.name)
		}
	}
}

// The error-time fallback (no backoff columns: due min(2^attempts, 60) s
// after the last error) in every query that computes it: the count left,
// the adoption's due times, the sweep's claim and the manual retry. With 5
// attempts an error 45 s ago is due (3^5 s would not be); with 6 one 40 s
// ago is not (2^5 s would be); with 7 one 62 s ago is due (the 60 s cap;
// 2^6 s would not be). A step that waited before is counted once.
func TestErrorFallbackInEveryQuery(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		store := db.NewStore(pool)
		if objects == testdb.WithSweeperObjects {
			_, err := store.Adopt(ctx) // the first pass: sets the watermark
			require.NoError(t, err)
		}
		five, fiveDue := errorFallbackStep(t, pool, 5, 45*time.Second)
		six, sixDue := errorFallbackStep(t, pool, 6, 40*time.Second)
		seven, sevenDue := errorFallbackStep(t, pool, 7, 62*time.Second)
		manual, _ := errorFallbackStep(t, pool, 7, 62*time.Second)
		waitedBefore := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
		testdb.PlaceHistory(t, pool, waitedBefore, append(append([]statemachine.State{}, toWaiting...),
			statemachine.Pending, statemachine.Enqueued, statemachine.InProgress,
			statemachine.EnqueuedAsErrorForOrchestration, statemachine.WaitingForRetry), 0)
		testdb.SetColumns(t, pool, waitedBefore, testdb.StepColumns{
			Attempts: testdb.Ptr[int32](2), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](1),
		})

		if objects == testdb.WithSweeperObjects {
			a, err := store.Adopt(ctx)
			require.NoError(t, err)
			require.Equal(t, 5, a.Adopted)
			for step, want := range map[uuid.UUID]time.Time{five: fiveDue, six: sixDue, seven: sevenDue} {
				row, ok := scheduleOf(t, pool, step)
				require.True(t, ok)
				require.Equal(t, want, row.DueAt, "adopted at the fallback due time")
			}
			staleSchedule(t, pool, []uuid.UUID{five, six, seven, manual, waitedBefore})
		}
		left, err := store.CountDueLeft(ctx)
		require.NoError(t, err)
		require.EqualValues(t, 4, left, "five, seven, manual and the step that waited before")

		sw := newSweeper(t, pool)
		_, err = sw.MoveStep(ctx, manual, false)
		require.NoError(t, err, "the cap makes it due")
		sum, err := sw.RunOnce(ctx, false)
		require.NoError(t, err)
		require.Equal(t, 3, sum.Transitioned)
		for step, want := range map[uuid.UUID]string{five: "pending", six: "waiting_for_retry", seven: "pending", waitedBefore: "pending"} {
			require.Equal(t, want, snapshot(t, pool, step).Current)
		}
	})
}

// The reconcile pass corrects a wrong stranded flag even when the row's
// due time is right.
func TestReconcileRestrandsAWrongFlag(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	store := db.NewStore(pool)
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceHistory(t, pool, step, toWaiting, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](3),
		LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](1),
	})
	_, err := store.Reconcile(ctx, 0)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `UPDATE tasker_sweeper.retry_schedule SET stranded = false, updated_at = now() - interval '1 minute'`)
	require.NoError(t, err)
	rec, err := store.Reconcile(ctx, 0)
	require.NoError(t, err)
	require.EqualValues(t, 1, rec.Restranded)
	row, ok := scheduleOf(t, pool, step)
	require.True(t, ok)
	require.True(t, row.Stranded)
}
