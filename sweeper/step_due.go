package sweeper

import (
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// StepDue is every condition of the due rule for one step, so an operator
// can see why it is or is not due.
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
	// DueAt is when the backoff expires; when neither the backoff columns
	// nor an error transition exist it is the time the step entered its
	// current state (due at once).
	DueAt time.Time
	// DueFromBackoff says DueAt came from last_attempted_at +
	// backoff_request_seconds rather than the error-time fallback.
	DueFromBackoff bool
	DBNow          time.Time
}

// Due reports whether a sweep would move the step now, and if not, why.
func (d StepDue) Due() (bool, string) {
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
	case d.DueAt.After(d.DBNow):
		return false, "backoff expires at " + d.DueAt.UTC().Format(time.RFC3339)
	}
	return true, "backoff expired: the next sweep moves it to pending"
}
