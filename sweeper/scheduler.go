package sweeper

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
)

// scheduleParser accepts 5-field specs, 6-field specs with a leading
// seconds field, and descriptors such as @every 5s and @hourly.
var scheduleParser = cron.NewParser(
	cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor,
)

// ParseSchedule validates a cron spec. Unlike cron itself it rejects an
// @every interval under one second (cron would silently round it up) and a
// spec that never fires, such as February 30 (cron's Next returns the zero
// time for it).
func ParseSchedule(spec string) (cron.Schedule, error) {
	if rest, ok := strings.CutPrefix(spec, "@every "); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil {
			return nil, fmt.Errorf("parse schedule %q: %w", spec, err)
		}
		if d < time.Second {
			return nil, fmt.Errorf("parse schedule %q: @every needs an interval of at least 1s", spec)
		}
	}
	sched, err := scheduleParser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("parse schedule %q: %w", spec, err)
	}
	if sched.Next(time.Now()).IsZero() {
		return nil, fmt.Errorf("parse schedule %q: it never fires (no matching date)", spec)
	}
	return sched, nil
}

// minScheduleWait is how long Run waits before it looks at the schedule
// again when the schedule gives no next time after now: a broken schedule
// costs one look per second, never a busy loop.
const minScheduleWait = time.Second

// Skip reasons passed to SchedulerOptions.OnSkippedTick.
const (
	SkipSweepRunning        = "sweep_running"
	SkipDatabaseUnavailable = "database_unavailable"
)

// SchedulerOptions are the optional parts of a Scheduler.
type SchedulerOptions struct {
	// DatabaseReady reports whether the database is reachable; ticks while
	// it is not are skipped instead of piling up failing sweeps.
	DatabaseReady func() bool
	// OnSkippedTick is told about every skipped tick and why.
	OnSkippedTick func(reason string)
}

// Scheduler runs sweeps on a cron schedule. It owns the loop rather than
// using cron.Cron, so it can give sweeps a context, skip (and count) a tick
// that finds a sweep still running, and let manual triggers wait their turn:
// at most one sweep runs in a process at any time.
type Scheduler struct {
	sweeper  *Sweeper
	schedule cron.Schedule
	logger   *slog.Logger
	opts     SchedulerOptions
	// slot holds a token while a sweep runs; a full slot means "busy".
	slot chan struct{}
	wg   sync.WaitGroup
	// now and after are the clock and the timer (tests replace them).
	now   func() time.Time
	after func(time.Duration) (<-chan time.Time, func() bool)
}

// NewScheduler parses spec and builds a scheduler for sw.
func NewScheduler(sw *Sweeper, spec string, logger *slog.Logger, opts SchedulerOptions) (*Scheduler, error) {
	sched, err := ParseSchedule(spec)
	if err != nil {
		return nil, err
	}
	return newScheduler(sw, sched, logger, opts), nil
}

func newScheduler(sw *Sweeper, sched cron.Schedule, logger *slog.Logger, opts SchedulerOptions) *Scheduler {
	return &Scheduler{
		sweeper: sw, schedule: sched, logger: logger, opts: opts, slot: make(chan struct{}, 1),
		now: time.Now,
		after: func(d time.Duration) (<-chan time.Time, func() bool) {
			t := time.NewTimer(d)
			return t.C, t.Stop
		},
	}
}

// Run fires sweeps until ctx is cancelled, then waits for the sweep in
// flight (which stops starting batches and lets running ones commit). A
// schedule whose next time is zero or not after now fires nothing: Run logs
// it once and looks again after minScheduleWait.
func (s *Scheduler) Run(ctx context.Context) {
	defer s.wg.Wait()
	warned := false
	for {
		now := s.now()
		next := s.schedule.Next(now)
		usable := !next.IsZero() && next.After(now)
		wait := next.Sub(now)
		switch {
		case usable:
			warned = false
		case !warned:
			warned = true
			s.logger.Warn("the schedule gives no next sweep time after now; no scheduled sweeps until it does",
				slog.Time("next", next), slog.String("recheck_every", minScheduleWait.String()))
			fallthrough
		default:
			wait = minScheduleWait
		}
		fired, stop := s.after(wait)
		select {
		case <-ctx.Done():
			stop()
			return
		case <-fired:
		}
		if !usable {
			continue
		}
		if s.opts.DatabaseReady != nil && !s.opts.DatabaseReady() {
			s.skip(SkipDatabaseUnavailable)
			continue
		}
		select {
		case s.slot <- struct{}{}:
			s.wg.Go(func() {
				defer func() { <-s.slot }()
				_, _ = s.safeRun(ctx, false)
			})
		default:
			s.skip(SkipSweepRunning)
		}
	}
}

// Trigger runs a sweep now, after waiting for any sweep in flight: manual
// sweeps never run beside scheduled ones.
func (s *Scheduler) Trigger(ctx context.Context, dryRun bool) (Summary, error) {
	select {
	case s.slot <- struct{}{}:
	case <-ctx.Done():
		return Summary{}, fmt.Errorf("wait for the running sweep: %w", ctx.Err())
	}
	defer func() { <-s.slot }()
	return s.safeRun(ctx, dryRun)
}

func (s *Scheduler) skip(reason string) {
	s.logger.Debug("sweep tick skipped", slog.String("reason", reason))
	if s.opts.OnSkippedTick != nil {
		s.opts.OnSkippedTick(reason)
	}
}

// safeRun turns a panic in a sweep into an error: the daemon keeps running.
func (s *Scheduler) safeRun(ctx context.Context, dryRun bool) (sum Summary, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sweep panicked: %v", r)
			s.logger.Error("sweep panicked", slog.Any("panic", r), slog.String("stack", string(debug.Stack())))
		}
	}()
	return s.sweeper.RunOnce(ctx, dryRun)
}
