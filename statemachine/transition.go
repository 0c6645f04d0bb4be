package statemachine

import (
	"errors"
	"fmt"
)

// ErrInvalidTransition reports an event that is not legal from the step's
// current state. Callers match it with errors.Is to tell a refused move (a
// data condition: count it, skip the step) from an infrastructure failure.
var ErrInvalidTransition = errors.New("invalid step transition")

// ErrGuardFailed reports a transition that is legal in the table but whose
// guard does not hold, such as enqueueing a step whose parents have not
// finished. Like ErrInvalidTransition it is a refusal, not a failure.
var ErrGuardFailed = errors.New("step transition guard failed")

// InvalidTransitionError carries the refused pair, so logs and API responses
// can say exactly which move was rejected. It matches ErrInvalidTransition
// under errors.Is.
type InvalidTransitionError struct {
	From  State
	Event EventType
}

// Error names both halves of the refused pair because either may be the
// surprise (a stale state read, or the wrong event).
func (e *InvalidTransitionError) Error() string {
	return fmt.Sprintf("invalid step transition: event %s is not allowed from state %s",
		e.Event, e.From)
}

// Unwrap lets errors.Is(err, ErrInvalidTransition) match without callers
// knowing the concrete type.
func (e *InvalidTransitionError) Unwrap() error { return ErrInvalidTransition }

type transitionKey struct {
	from  State
	event EventType
}

// transitions is the legal-transition table of SPEC §5. waiting_for_retry +
// Fail is deliberately absent: a parked step is not running, so nothing can
// have failed; it must be retried (back to pending) before it can fail again.
var transitions = buildTransitions()

func buildTransitions() map[transitionKey]State {
	t := map[transitionKey]State{
		{Pending, EventEnqueue}: Enqueued,
		{Pending, EventStart}:   InProgress, // legacy path, kept for old orchestrators
		{Enqueued, EventStart}:  InProgress,

		{InProgress, EventEnqueueForOrchestration}:        EnqueuedForOrchestration,
		{InProgress, EventEnqueueAsErrorForOrchestration}: EnqueuedAsErrorForOrchestration,
		{InProgress, EventComplete}:                       Complete, // legacy

		{EnqueuedForOrchestration, EventComplete}:        Complete,
		{EnqueuedForOrchestration, EventFail}:            Error,
		{EnqueuedAsErrorForOrchestration, EventFail}:     Error,
		{EnqueuedAsErrorForOrchestration, EventComplete}: Complete,

		{Pending, EventFail}:    Error,
		{Enqueued, EventFail}:   Error,
		{InProgress, EventFail}: Error,

		{InProgress, EventWaitForRetry}:                      WaitingForRetry,
		{Enqueued, EventWaitForRetry}:                        WaitingForRetry,
		{Pending, EventWaitForRetry}:                         WaitingForRetry,
		{EnqueuedAsErrorForOrchestration, EventWaitForRetry}: WaitingForRetry,

		{WaitingForRetry, EventRetry}: Pending,
		{Error, EventRetry}:           Pending,
		{Error, EventResetForRetry}:   Pending,
	}
	for _, s := range States() {
		if !s.Terminal() {
			t[transitionKey{s, EventCancel}] = Cancelled
		}
		// Operators can always override, even a finished step: that is
		// how a wrongly completed or cancelled step is corrected.
		t[transitionKey{s, EventCompleteManually}] = Complete
		t[transitionKey{s, EventResolveManually}] = ResolvedManually
	}
	return t
}

// Next returns the state a step in from moves to on event, or an
// *InvalidTransitionError when the pair is not in the table (including when
// either value is unknown). It does not evaluate guards: the Enqueue guard
// needs the parents' states, which the caller loads; see ParentsSatisfied.
func Next(from State, event EventType) (State, error) {
	to, ok := transitions[transitionKey{from, event}]
	if !ok {
		return "", &InvalidTransitionError{From: from, Event: event}
	}
	return to, nil
}

// CanTransition reports whether Next would accept the pair, for callers that
// filter candidates before building an event.
func CanTransition(from State, event EventType) bool {
	_, ok := transitions[transitionKey{from, event}]
	return ok
}

// ParentsSatisfied is the Enqueue guard: a step may be enqueued only once
// every parent is complete or resolved_manually, because a resolved parent
// is an operator's promise that its dependents may proceed. A step with no
// parents is always satisfied.
func ParentsSatisfied(parents []State) bool {
	for _, p := range parents {
		if p != Complete && p != ResolvedManually {
			return false
		}
	}
	return true
}

// EnqueueGuard is ParentsSatisfied as an error, for callers that propagate
// refusals: it names the first blocking parent state and wraps
// ErrGuardFailed.
func EnqueueGuard(parents []State) error {
	for i, p := range parents {
		if p != Complete && p != ResolvedManually {
			return fmt.Errorf("enqueue step: parent %d is %s, not complete or resolved_manually: %w",
				i, p, ErrGuardFailed)
		}
	}
	return nil
}
