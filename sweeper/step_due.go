package sweeper

import (
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// StepDue is the due rule evaluated for one step, with each of its
// conditions, so an operator can see why it is or is not due.
type StepDue struct {
	StepUUID      uuid.UUID
	State         statemachine.State
	Processed     bool
	InProcess     bool
	RetryEligible bool
	Retryable     bool
	Attempts      *int32
	MaxAttempts   *int32
	// UnmetParents counts parents not complete or resolved_manually.
	UnmetParents int
	// IsDue is the rule's verdict: a sweep would move the step now.
	IsDue bool
	// RetryTimeReached says the step's next retry time, if any, has come.
	RetryTimeReached bool
	// MovableButForTime says every condition but the time holds: what a
	// forced retry needs.
	MovableButForTime bool
	// NeverDue means the next retry time is infinity.
	NeverDue bool
	// DueAt is when the backoff expires; when neither the backoff columns
	// nor an error transition give a finite time, the time the step entered
	// its current state.
	DueAt time.Time
	// DueFromBackoff says DueAt came from last_attempted_at +
	// backoff_request_seconds rather than the error-time fallback.
	DueFromBackoff bool
	DBNow          time.Time
}

// Due reports whether a sweep would move the step now, and if not, why.
// The verdict is the query's; this only names the first failed condition.
func (d StepDue) Due() (bool, string) {
	if d.IsDue {
		return true, "backoff expired: the next sweep moves it to pending"
	}
	switch {
	case d.State != statemachine.WaitingForRetry:
		return false, "step is " + string(d.State) + ", not waiting_for_retry"
	case d.Processed:
		return false, "step is already processed"
	case d.InProcess:
		return false, "step is in process"
	case !d.RetryEligible:
		return false, "step is not retry-eligible (attempts exhausted or not retryable): stranded until an operator acts"
	case d.UnmetParents > 0:
		return false, fmt.Sprintf("%d parent step(s) not complete or resolved_manually", d.UnmetParents)
	case d.NeverDue:
		return false, "its next retry time is infinity: it never comes due"
	default:
		return false, "backoff expires at " + d.DueAt.UTC().Format(time.RFC3339)
	}
}
