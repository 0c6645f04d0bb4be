package statemachine

import (
	"errors"
	"fmt"
)

// ErrInvalidTransition reports an event that is not legal from the step's
// current state. Callers match it with errors.Is to tell a refused move (a
// data condition: count it, skip the step) from an infrastructure failure.
var ErrInvalidTransition = errors.New("invalid step transition")

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

// transitions is the legal-transition table, tasker's. waiting_for_retry +
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
// either value is unknown). It does not evaluate guards: whether a step's
// parents have finished is the due rule's business, evaluated in SQL.
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
