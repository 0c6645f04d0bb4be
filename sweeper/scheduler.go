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
	// OnWake is told about every wake-up: each cron tick that fires (cron)
	// and each firing of the timer gate (timer, notify, adoption).
	OnWake func(reason Trigger)
	// Gate, when set, turns on the timer gate: steps move at their due
	// time, and the cron schedule is the safety net (schedule path only).
	Gate *GateOptions
}

// Scheduler runs sweeps on a cron schedule and, with the timer gate, at the
// due times the schedule holds. It owns the loop rather than using
// cron.Cron, so it can give sweeps a context, skip (and count) a tick that
// finds a sweep still running, and let manual triggers wait their turn: at
// most one sweep runs in a process at any time. A timer wake-up that finds a
// sweep running re-arms after it; a cron tick that finds a timer-driven
// sweep running runs right after it.
type Scheduler struct {
	sweeper  *Sweeper
	schedule cron.Schedule
	logger   *slog.Logger
	opts     SchedulerOptions
	// slot holds a token while a sweep runs; a full slot means "busy".
	slot chan struct{}
	wg   sync.WaitGroup
	// now and after are the clock and the cron timer (tests replace them).
	now   func() time.Time
	after func(time.Duration) (<-chan time.Time, func() bool)
	// gate is the timer gate (nil: cron only).
	gate *gate
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
	s := &Scheduler{
		sweeper: sw, schedule: sched, logger: logger, opts: opts, slot: make(chan struct{}, 1),
		now: time.Now,
		after: func(d time.Duration) (<-chan time.Time, func() bool) {
			t := time.NewTimer(d)
			return t.C, t.Stop
		},
	}
	if opts.Gate != nil {
		ds, _ := sw.store.(DueStore)
		s.gate = newGate(ds, *opts.Gate, logger, func() time.Time { return s.now() })
	}
	return s
}

// WakeMode says how sweeps are timed: WakeModeAtDue with the timer gate
// (until it finds the scan path, which has no schedule), WakeModeCron
// otherwise.
func (s *Scheduler) WakeMode() string {
	if s.gate.active() {
		return WakeModeAtDue
	}
	return WakeModeCron
}

// Run fires sweeps until ctx is cancelled, then waits for the sweep in
// flight (which stops starting batches and lets running ones commit). A
// schedule whose next time is zero or not after now fires nothing: Run logs
// it once and looks again after minScheduleWait. With the timer gate it
// looks at the schedule at once and then after every sweep.
func (s *Scheduler) Run(ctx context.Context) {
	defer s.wg.Wait()
	g := s.gate
	if g.active() {
		defer g.stop()
		g.pullIn(time.Time{}, TriggerTimer)
	}
	warned := false
	fired, stop, usable := s.armCron(&warned)
	cycling, cronPending := false, false
	for {
		select {
		case <-ctx.Done():
			stop()
			return
		case <-fired:
			if usable {
				s.onWake(TriggerCron)
				cronPending = s.tick(ctx, cycling)
			}
			fired, stop, usable = s.armCron(&warned)
		case <-g.timerC():
			cycling = s.wake(ctx) || cycling
		case due := <-g.notifyC():
			g.pullIn(due, TriggerNotify)
		case due := <-g.adoptC():
			g.pullIn(due, TriggerAdoption)
		case <-g.doneC():
			cycling = false
			if cronPending {
				cronPending = s.tick(ctx, false)
			}
		}
	}
}

// armCron starts the cron timer for the schedule's next time.
func (s *Scheduler) armCron(warned *bool) (<-chan time.Time, func() bool, bool) {
	now := s.now()
	next := s.schedule.Next(now)
	usable := !next.IsZero() && next.After(now)
	wait := next.Sub(now)
	switch {
	case usable:
		*warned = false
	case !*warned:
		*warned = true
		s.logger.Warn("the schedule gives no next sweep time after now; no scheduled sweeps until it does",
			slog.Time("next", next), slog.String("recheck_every", minScheduleWait.String()))
		wait = minScheduleWait
	default:
		wait = minScheduleWait
	}
	fired, stop := s.after(wait)
	return fired, stop, usable
}

// tick handles a cron tick; it reports true when the tick waits for the
// timed sweep in flight (cycling) to finish.
func (s *Scheduler) tick(ctx context.Context, cycling bool) (pending bool) {
	if s.opts.DatabaseReady != nil && !s.opts.DatabaseReady() {
		s.skip(SkipDatabaseUnavailable)
		return false
	}
	select {
	case s.slot <- struct{}{}:
		s.wg.Go(func() {
			defer func() { <-s.slot }()
			_, _ = s.safeRun(ctx, sweepOptions{trigger: TriggerCron})
			s.afterSweep(ctx)
		})
		return false
	default:
		if cycling {
			return true // a short timed sweep: the tick runs right after it
		}
		s.skip(SkipSweepRunning)
		return false
	}
}

// wake handles a firing of the gate's timer; it reports whether it started
// a timed cycle.
func (s *Scheduler) wake(ctx context.Context) bool {
	g := s.gate
	w, ok := g.take()
	if !ok || !g.active() {
		return false
	}
	s.onWake(w.reason)
	if s.opts.DatabaseReady != nil && !s.opts.DatabaseReady() {
		g.retryLater(notReadyRetry, w.reason)
		return false
	}
	select {
	case s.slot <- struct{}{}:
		s.wg.Go(func() {
			defer func() {
				<-s.slot
				g.done <- struct{}{}
			}()
			s.cycle(ctx, w)
		})
		return true
	default:
		g.deferWake() // the running sweep's probe re-arms the timer
		return false
	}
}

// cycle is one timed wake-up: a probe that asks for the lease when
// something is due by the wake-up's time, and, holding it, a timed sweep and
// a second probe (which gives the lease back) to arm the timer again.
func (s *Scheduler) cycle(ctx context.Context, w wake) {
	g := s.gate
	r := probeResult{timed: true, wake: w}
	pre, lease, err := g.store.ProbeDue(ctx, ProbeRequest{After: w.floor, Until: w.grid, Lease: true})
	r.at, r.pre, r.latest, r.err = s.now(), pre, pre, err
	switch {
	case err != nil:
	case !pre.DueNow:
	case lease == nil && pre.DBNow.Sub(pre.Earliest) < g.stallAfter():
		r.busy = true
	default:
		// Holding the lease, or the holder has let a due step wait past
		// stallAfter (stalled, or a long sweep): sweep. SKIP LOCKED keeps
		// every move exactly once either way.
		r.swept = true
		sum, _ := s.safeRun(ctx, sweepOptions{trigger: w.reason, reevaluate: pre.Leftover})
		r.moved = sum.Transitioned
		var post DueProbe
		if lease != nil {
			post, err = lease.Release(ctx, pre.DBNow)
		} else {
			post, _, err = g.store.ProbeDue(ctx, ProbeRequest{After: pre.DBNow})
		}
		r.at = s.now()
		if err != nil {
			r.err, r.latest = err, DueProbe{}
		} else {
			r.latest = post
		}
	}
	g.settle(ctx, r)
	if r.moved == 0 && g.opts.OnEmptyWake != nil {
		g.opts.OnEmptyWake(w.reason)
	}
}

// afterSweep is the gate's look at the schedule after a cron or manual
// sweep.
func (s *Scheduler) afterSweep(ctx context.Context) {
	g := s.gate
	if !g.active() {
		return
	}
	p, _, err := g.store.ProbeDue(ctx, ProbeRequest{After: g.currentFloor()})
	g.settle(ctx, probeResult{latest: p, at: s.now(), err: err})
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
	sum, err := s.safeRun(ctx, sweepOptions{dryRun: dryRun, trigger: TriggerManual})
	s.afterSweep(ctx)
	return sum, err
}

func (s *Scheduler) onWake(reason Trigger) {
	if s.opts.OnWake != nil {
		s.opts.OnWake(reason)
	}
}

func (s *Scheduler) skip(reason string) {
	s.logger.Debug("sweep tick skipped", slog.String("reason", reason))
	if s.opts.OnSkippedTick != nil {
		s.opts.OnSkippedTick(reason)
	}
}

// safeRun turns a panic in a sweep into an error: the daemon keeps running.
func (s *Scheduler) safeRun(ctx context.Context, o sweepOptions) (sum Summary, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sweep panicked: %v", r)
			s.logger.Error("sweep panicked", slog.Any("panic", r), slog.String("stack", string(debug.Stack())))
		}
	}()
	return s.sweeper.run(ctx, o)
}
