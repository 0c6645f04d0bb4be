package sweeper

import (
	"log/slog"
	"time"

	"github.com/robfig/cron/v3"
)

// NewSchedulerWith builds a Scheduler over any cron.Schedule with the given
// clock and timer, so a test can hand it a schedule no spec parses to and
// watch how long it waits.
func NewSchedulerWith(sw *Sweeper, sched cron.Schedule, logger *slog.Logger, opts SchedulerOptions,
	now func() time.Time, after func(time.Duration) (<-chan time.Time, func() bool),
) *Scheduler {
	s := newScheduler(sw, sched, logger, opts)
	s.now, s.after = now, after
	return s
}

// SetClock replaces the clock of the sweeper's log rate limits.
func (s *Sweeper) SetClock(now func() time.Time) { s.now = now }
