package handling_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// The handler and the sweep never disagree on retry eligibility for a NULL
// max_attempts: a step the handler parks is retry-eligible by the sweep's rule
// (never stranded), and a step it fails as exhausted is one the sweep's rule
// would have stranded had it been parked.
func TestHandlerAndSweepAgreeOnEligibility(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	store := db.NewStore(pool)
	svc := newService(t, pool, jitterOff())

	actions := map[handling.Action]int{}
	for attempts := int32(0); attempts <= 5; attempts++ {
		step := placeStep(t, pool, statemachine.EnqueuedAsErrorForOrchestration, testdb.StepColumns{
			Attempts: testdb.Ptr(attempts), NullMaxAttempts: true, Retryable: testdb.Ptr(true),
		}).Steps[0]

		res, err := svc.Handle(ctx, handling.Failure{StepUUID: step, Message: "upstream hiccup"})
		require.NoError(t, err, "attempts %d", attempts)
		actions[res.Action]++
		due, err := store.StepDueStatus(ctx, step)
		require.NoError(t, err)
		require.Nil(t, due.MaxAttempts, "max_attempts stays NULL")

		switch res.Action {
		case handling.ActionTransitionedToWaitingForRetry:
			require.Equal(t, statemachine.WaitingForRetry, due.State)
			require.True(t, due.RetryEligible, "attempts %d: parked by the handler, stranded by the sweep", attempts)
		case handling.ActionMarkedAsError:
			require.Equal(t, statemachine.Error, due.State)
			require.False(t, due.RetryEligible, "attempts %d: failed as exhausted, yet the sweep would retry it", attempts)
		default:
			t.Fatalf("attempts %d: unexpected action %s (%s)", attempts, res.Action, res.Reason)
		}
		require.Equal(t, attempts < handling.TaskerDefaultMaxAttempts,
			res.Action == handling.ActionTransitionedToWaitingForRetry, "attempts %d", attempts)
	}
	require.Equal(t, map[handling.Action]int{
		handling.ActionTransitionedToWaitingForRetry: 3, // attempts 0, 1, 2
		handling.ActionMarkedAsError:                 3, // attempts 3, 4, 5
	}, actions)
}
