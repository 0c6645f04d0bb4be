package sweeper

import "time"

// Backlog is what waits and how late the due steps are, for the gauges an
// operator alerts on. Stores compute it off the sweep's path.
type Backlog struct {
	// Waiting is how many steps are in waiting_for_retry (stranded ones
	// included).
	Waiting int64
	// Due is how many of them a sweep would move right now, by the full due
	// rule: due and not yet moved.
	Due int64
	// OldestDueAt is when the longest-waiting due step became due
	// (meaningful only when Due > 0).
	OldestDueAt time.Time
	// DBNow is the database clock the counts were taken at.
	DBNow time.Time
}

// OldestDueAge is how long the longest-waiting due step has been due: 0
// when none is.
func (b Backlog) OldestDueAge() time.Duration {
	if b.Due == 0 || b.OldestDueAt.After(b.DBNow) {
		return 0
	}
	return b.DBNow.Sub(b.OldestDueAt)
}
