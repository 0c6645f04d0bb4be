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

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
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
