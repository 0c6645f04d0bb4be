package statemachine_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// wireStates are the ten states as the database spells them, in the order
// States returns them, written out by hand so the tests do not trust the code
// under test for their expectations.
var wireStates = []string{
	"pending", "enqueued", "in_progress", "enqueued_for_orchestration",
	"enqueued_as_error_for_orchestration", "waiting_for_retry", "complete",
	"error", "cancelled", "resolved_manually",
}

func TestStatesOrderAndValues(t *testing.T) {
	t.Parallel()

	want := make([]statemachine.State, 0, len(wireStates))
	for _, s := range wireStates {
		want = append(want, statemachine.State(s))
	}
	require.Equal(t, want, statemachine.States())

	// A caller mutating the result must not corrupt the package.
	got := statemachine.States()
	got[0] = "mutated"
	require.Equal(t, want, statemachine.States())
}

func TestParseState(t *testing.T) {
	t.Parallel()

	for _, s := range wireStates {
		st, err := statemachine.ParseState(s)
		require.NoError(t, err, s)
		require.Equal(t, s, st.String())
		require.True(t, st.Valid(), s)
	}

	for _, bad := range []string{"bogus", "", "Pending", " pending", "retrying"} {
		st, err := statemachine.ParseState(bad)
		require.ErrorIs(t, err, statemachine.ErrUnknownState, "%q", bad)
		require.Empty(t, st)
		require.False(t, statemachine.State(bad).Valid(), "%q", bad)
	}
}

func TestTerminal(t *testing.T) {
	t.Parallel()

	terminal := map[statemachine.State]bool{"complete": true, "cancelled": true, "resolved_manually": true}
	for _, s := range statemachine.States() {
		require.Equal(t, terminal[s], s.Terminal(), "%s", s)
	}
	require.False(t, statemachine.State("bogus").Terminal())
}

func TestEventTypes(t *testing.T) {
	t.Parallel()

	want := gridEvents[:] // written out by hand in transition_test.go
	require.Equal(t, want, statemachine.EventTypes())
	for _, e := range want {
		require.True(t, e.Valid(), "%s", e)
		require.Equal(t, string(e), e.String())
	}
	require.False(t, statemachine.EventType("retry").Valid())
	require.False(t, statemachine.EventType("").Valid())
}
