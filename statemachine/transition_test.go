package statemachine_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// Expected targets, spelled as the database spells them. xxxx marks a pair
// the table must reject.
const (
	xxxx = "invalid"
	pend = "pending"
	enqd = "enqueued"
	inpr = "in_progress"
	enfo = "enqueued_for_orchestration"
	enae = "enqueued_as_error_for_orchestration"
	wait = "waiting_for_retry"
	comp = "complete"
	erro = "error"
	canc = "cancelled"
	resm = "resolved_manually"
)

// gridEvents fixes the column order of expectedGrid. It is written out by
// hand rather than taken from EventTypes so the test does not trust the code
// under test for its own expectations.
var gridEvents = [12]statemachine.EventType{
	"Enqueue", "Start", "EnqueueForOrchestration", "EnqueueAsErrorForOrchestration",
	"Complete", "Fail", "WaitForRetry", "Retry",
	"ResetForRetry", "Cancel", "CompleteManually", "ResolveManually",
}

// expectedGrid is the legal-transition table transcribed independently of
// transition.go (tasker's step state machine): one row per state, one
// column per event in gridEvents order, every cell the target or xxxx.
var expectedGrid = map[string][12]string{
	//                                      Enq   Start EnqFO EnqAE Compl Fail  Wait  Retry Reset Cancl CMan  RMan
	"pending":                             {enqd, inpr, xxxx, xxxx, xxxx, erro, wait, xxxx, xxxx, canc, comp, resm},
	"enqueued":                            {xxxx, inpr, xxxx, xxxx, xxxx, erro, wait, xxxx, xxxx, canc, comp, resm},
	"in_progress":                         {xxxx, xxxx, enfo, enae, comp, erro, wait, xxxx, xxxx, canc, comp, resm},
	"enqueued_for_orchestration":          {xxxx, xxxx, xxxx, xxxx, comp, erro, xxxx, xxxx, xxxx, canc, comp, resm},
	"enqueued_as_error_for_orchestration": {xxxx, xxxx, xxxx, xxxx, comp, erro, wait, xxxx, xxxx, canc, comp, resm},
	"waiting_for_retry":                   {xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, pend, xxxx, canc, comp, resm},
	"complete":                            {xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, comp, resm},
	"error":                               {xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, pend, pend, canc, comp, resm},
	"cancelled":                           {xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, comp, resm},
	"resolved_manually":                   {xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, xxxx, comp, resm},
}

func TestNextCoversEveryPair(t *testing.T) {
	t.Parallel()

	// The grid must stay exhaustive: a state or event added to the package
	// without a row or column here fails the test.
	rows := make([]statemachine.State, 0, len(expectedGrid))
	for from := range expectedGrid {
		rows = append(rows, statemachine.State(from))
	}
	require.ElementsMatch(t, statemachine.States(), rows, "grid rows vs States()")
	require.ElementsMatch(t, statemachine.EventTypes(), gridEvents[:], "grid columns vs EventTypes()")

	checked := 0
	for rawFrom, row := range expectedGrid {
		from := statemachine.State(rawFrom)
		for i, ev := range gridEvents {
			want := row[i]
			got, err := statemachine.Next(from, ev)
			if want == xxxx {
				require.ErrorIs(t, err, statemachine.ErrInvalidTransition, "%s + %s", from, ev)
				var ite *statemachine.InvalidTransitionError
				require.ErrorAs(t, err, &ite, "%s + %s", from, ev)
				require.Equal(t, from, ite.From)
				require.Equal(t, ev, ite.Event)
				require.Empty(t, got, "%s + %s", from, ev)
				require.False(t, statemachine.CanTransition(from, ev), "%s + %s", from, ev)
			} else {
				require.NoError(t, err, "%s + %s", from, ev)
				require.Equal(t, statemachine.State(want), got, "%s + %s", from, ev)
				require.True(t, statemachine.CanTransition(from, ev), "%s + %s", from, ev)
			}
			checked++
		}
	}
	require.Equal(t, 10*12, checked)
}

func TestWaitingForRetryCannotFail(t *testing.T) {
	t.Parallel()

	to, err := statemachine.Next(statemachine.WaitingForRetry, statemachine.EventFail)
	require.ErrorIs(t, err, statemachine.ErrInvalidTransition)
	require.Empty(t, to)
	require.False(t, statemachine.CanTransition(statemachine.WaitingForRetry, statemachine.EventFail))
	require.Contains(t, err.Error(), "Fail")
	require.Contains(t, err.Error(), "waiting_for_retry")
}

func TestNextRejectsUnknownValues(t *testing.T) {
	t.Parallel()

	// Operator overrides apply to any of the ten states, not to garbage.
	_, err := statemachine.Next("bogus", statemachine.EventCompleteManually)
	require.ErrorIs(t, err, statemachine.ErrInvalidTransition)
	_, err = statemachine.Next("", statemachine.EventResolveManually)
	require.ErrorIs(t, err, statemachine.ErrInvalidTransition)
	_, err = statemachine.Next(statemachine.Pending, "Explode")
	require.ErrorIs(t, err, statemachine.ErrInvalidTransition)
}

func TestNextProperties(t *testing.T) {
	t.Parallel()

	rapid.Check(t, func(t *rapid.T) {
		// Mostly real values, sometimes arbitrary text, so unknown inputs
		// are exercised too.
		from := rapid.OneOf(
			rapid.SampledFrom(statemachine.States()),
			rapid.Custom(func(t *rapid.T) statemachine.State {
				return statemachine.State(rapid.String().Draw(t, "raw_state"))
			}),
		).Draw(t, "from")
		ev := rapid.OneOf(
			rapid.SampledFrom(statemachine.EventTypes()),
			rapid.Custom(func(t *rapid.T) statemachine.EventType {
				return statemachine.EventType(rapid.String().Draw(t, "raw_event"))
			}),
		).Draw(t, "event")

		to, err := statemachine.Next(from, ev)
		if statemachine.CanTransition(from, ev) != (err == nil) {
			t.Fatalf("CanTransition(%q, %q) disagrees with Next error %v", from, ev, err)
		}
		if err != nil {
			if !errors.Is(err, statemachine.ErrInvalidTransition) {
				t.Fatalf("Next(%q, %q) error %v does not match ErrInvalidTransition", from, ev, err)
			}
			return
		}
		if !from.Valid() || !ev.Valid() {
			t.Fatalf("Next(%q, %q) accepted an unknown value", from, ev)
		}
		if !to.Valid() {
			t.Fatalf("Next(%q, %q) = %q, not a valid state", from, ev, to)
		}
		if from.Terminal() && ev != statemachine.EventCompleteManually && ev != statemachine.EventResolveManually {
			t.Fatalf("terminal %q left via %q", from, ev)
		}
		// Operator overrides always land where their name says.
		if ev == statemachine.EventCompleteManually && to != statemachine.Complete {
			t.Fatalf("CompleteManually from %q went to %q", from, to)
		}
		if ev == statemachine.EventResolveManually && to != statemachine.ResolvedManually {
			t.Fatalf("ResolveManually from %q went to %q", from, to)
		}
	})
}
