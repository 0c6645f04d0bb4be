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
// @every interval under one second (cron would silently round it up).
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
	return sched, nil
}

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
}

// NewScheduler parses spec and builds a scheduler for sw.
func NewScheduler(sw *Sweeper, spec string, logger *slog.Logger, opts SchedulerOptions) (*Scheduler, error) {
	sched, err := ParseSchedule(spec)
	if err != nil {
		return nil, err
	}
	return &Scheduler{sweeper: sw, schedule: sched, logger: logger, opts: opts, slot: make(chan struct{}, 1)}, nil
}

// Run fires sweeps until ctx is cancelled, then waits for the sweep in
// flight (which stops starting batches and lets running ones commit).
func (s *Scheduler) Run(ctx context.Context) {
	defer s.wg.Wait()
	for {
		next := s.schedule.Next(time.Now())
		timer := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
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
