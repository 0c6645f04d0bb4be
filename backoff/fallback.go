package backoff

import "time"

// fallbackCapSeconds is the 60-second ceiling hard-coded in tasker-core's readiness SQL.
const fallbackCapSeconds = 60

// FallbackDueTime is the next retry time tasker-core's readiness SQL uses when the step has no
// backoff columns: failureTime + min(2^coalesce(attempts, 1), 60) seconds, where failureTime is
// the created_at of the step's latest error transition. It must match the SQL exactly, or the
// sweeper and the orchestrator would disagree about when a step is due.
//
// A nil attempts is SQL NULL and counts as 1. Negative attempts count as 0 (1 second), where the
// SQL would give a fractional second. Any attempts of 6 or more hit the cap, so large values
// cannot overflow the shift.
func FallbackDueTime(failureTime time.Time, attempts *int32) time.Time {
	n := int32(1)
	if attempts != nil {
		n = max(*attempts, 0)
	}
	secs := int64(fallbackCapSeconds)
	if n < 6 { // 2^6 = 64 is already past the cap
		secs = min(int64(1)<<n, fallbackCapSeconds)
	}
	return failureTime.Add(time.Duration(secs) * time.Second)
}
