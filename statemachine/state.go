package statemachine

import (
	"errors"
	"fmt"
)

// State is a workflow step state as stored in the to_state and from_state
// columns. It is a string type so it round-trips through the database without
// a mapping table; the CHECK constraint on those columns accepts exactly the
// values of the constants below.
type State string

// The ten step states of tasker-core. Their string values are the database
// spelling and must not change.
const (
	Pending                         State = "pending"
	Enqueued                        State = "enqueued"
	InProgress                      State = "in_progress"
	EnqueuedForOrchestration        State = "enqueued_for_orchestration"
	EnqueuedAsErrorForOrchestration State = "enqueued_as_error_for_orchestration"
	WaitingForRetry                 State = "waiting_for_retry"
	Complete                        State = "complete"
	Error                           State = "error"
	Cancelled                       State = "cancelled"
	ResolvedManually                State = "resolved_manually"
)

// ErrUnknownState reports a state string that is not one of the ten step
// states, typically a row written by a newer orchestrator or a typo in an
// operator request.
var ErrUnknownState = errors.New("unknown step state")

// States returns every step state in a stable order, so callers can build
// metrics labels, validation lists and exhaustive tests without repeating the
// list. It returns a fresh slice each time; callers may modify it.
func States() []State {
	return []State{
		Pending,
		Enqueued,
		InProgress,
		EnqueuedForOrchestration,
		EnqueuedAsErrorForOrchestration,
		WaitingForRetry,
		Complete,
		Error,
		Cancelled,
		ResolvedManually,
	}
}

// ParseState converts untrusted text (a database column, an HTTP parameter)
// into a State, so an unexpected value is caught at the boundary instead of
// flowing into the transition table. The error wraps ErrUnknownState.
func ParseState(s string) (State, error) {
	st := State(s)
	if !st.Valid() {
		return "", fmt.Errorf("parse state %q: %w", s, ErrUnknownState)
	}
	return st, nil
}

// Valid reports whether s is one of the ten step states. The zero State is
// not valid: "no transition rows" means pending, but that mapping belongs to
// the code that reads the rows, not to an empty string.
func (s State) Valid() bool {
	switch s {
	case Pending, Enqueued, InProgress, EnqueuedForOrchestration,
		EnqueuedAsErrorForOrchestration, WaitingForRetry, Complete, Error,
		Cancelled, ResolvedManually:
		return true
	}
	return false
}

// Terminal reports whether s ends a step's life: only an operator's
// CompleteManually or ResolveManually may move a step out of it, so automated
// code (the sweep, the failure handler) must leave such steps alone.
func (s State) Terminal() bool {
	switch s {
	case Complete, Cancelled, ResolvedManually:
		return true
	}
	return false
}

// String returns the database spelling, so a State logs and formats the way
// it is stored.
func (s State) String() string { return string(s) }
