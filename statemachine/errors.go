package statemachine

import "errors"

// ErrLostRace means another writer (a second sweeper replica, the inline
// handler, the orchestrator) changed the step's state between our read and
// our write, so our transition was not written. It is an expected outcome of
// running several writers, never a crash: count it and move on.
var ErrLostRace = errors.New("lost race: the step's state changed before the transition was written")

// ErrStepNotFound means no workflow step has the given uuid.
var ErrStepNotFound = errors.New("workflow step not found")
