package sweeper

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// gate is the Scheduler's timer gate: it keeps a timer armed for the
// earliest due time it knows of, on the database clock.
//
// Wake-ups fall on multiples of Gap of the database clock (the grid), never
// sooner than Gap after the last one: every replica computes the same grid
// points for the same due times, wakes together, and the timer lease decides
// which one sweeps. The one that took the last batch (the incumbent) wakes on
// the dot; the others add a random stagger, and after each wake-up that
// found nothing for them they skip more grid points (up to 4), so a steady
// stream costs them a probe now and then, not one per batch. A replica that
// finds the lease held while a due step has waited more than stallGaps gaps
// sweeps anyway, so a stalled holder delays steps by that much at most. A
// step is never moved early whatever the timer does: the sweep's own rule
// decides, on the database clock.
type gate struct {
	opts   GateOptions
	store  DueStore
	logger *slog.Logger
	now    func() time.Time
	off    atomic.Bool
	timer  *time.Timer
	// done receives after every timed cycle (the loop may have a cron
	// sweep waiting for the slot).
	done chan struct{}

	mu sync.Mutex
	// armedAt is the local time the timer fires (zero: not armed), for the
	// grid point armedGrid (database clock), armed by armedReason.
	armedAt     time.Time
	armedGrid   time.Time
	armedReason Trigger
	// floor (database clock; zero: none): rows due at or before it were
	// looked at by an earlier wake-up; what is left of them could not move.
	floor time.Time
	// lastGrid is the grid point of the last timed wake-up; misses counts
	// the wake-ups since this replica last took a batch while another did.
	lastGrid time.Time
	misses   int
	// incumbent: this replica took the last batch of a wake-up.
	incumbent bool
	// skew is the database clock minus the local clock: the largest sample
	// of the last skewWindow (see observeSkew), taken at skewAt.
	skew   time.Duration
	skewAt time.Time
	// deferred: a wake-up found a sweep running; re-arm when it settles.
	deferred bool
	// failing: the last probe failed (logged once per failure streak).
	failing bool
}

// maxMissShift caps the grid points a replica that keeps missing skips:
// 2^2 = 4 gaps (60 ms at the default gap).
const maxMissShift = 2

// stallGaps: a replica that finds the lease held but a due step waiting
// longer than this many gaps sweeps anyway: the holder has stalled (a
// paused process, a throttled container) or is busy with a long sweep.
const stallGaps = 4

// stallAfter is how long a due step may wait on another replica's lease.
func (g *gate) stallAfter() time.Duration { return stallGaps * g.opts.Gap }

// skewWindow is how long the largest clock-offset sample stands.
const skewWindow = 10 * time.Second

// notReadyRetry is how soon a wake-up skipped while the database is
// unreachable is tried again (a flag check, no statement).
const notReadyRetry = time.Second

func newGate(store DueStore, opts GateOptions, logger *slog.Logger, now func() time.Time) *gate {
	t := time.NewTimer(time.Hour)
	t.Stop()
	g := &gate{opts: opts.withDefaults(), store: store, logger: logger, now: now, timer: t, done: make(chan struct{}, 1)}
	if store == nil {
		g.off.Store(true)
	}
	return g
}

// active reports whether the gate is on (nil-safe).
func (g *gate) active() bool { return g != nil && !g.off.Load() }

// timerC, notifyC, adoptC and doneC are the loop's channels; nil (never
// ready) without a gate or source.
func (g *gate) timerC() <-chan time.Time {
	if g == nil {
		return nil
	}
	return g.timer.C
}

func (g *gate) notifyC() <-chan time.Time {
	if g == nil || g.opts.Notify == nil {
		return nil
	}
	return g.opts.Notify.Wakes()
}

func (g *gate) adoptC() <-chan time.Time {
	if g == nil || g.opts.Adoption == nil {
		return nil
	}
	return g.opts.Adoption.Wakes()
}

func (g *gate) doneC() <-chan struct{} {
	if g == nil {
		return nil
	}
	return g.done
}

// wake is one firing of the timer.
type wake struct {
	reason Trigger
	// grid is the grid point woken for (database clock): the probe's
	// horizon.
	grid  time.Time
	floor time.Time
}

// take turns a firing into a wake-up; false when the firing is stale (the
// timer was re-armed since).
func (g *gate) take() (wake, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.armedAt.IsZero() {
		return wake{}, false
	}
	w := wake{reason: g.armedReason, grid: g.armedGrid, floor: g.floor}
	// A capped sleep fires before its grid point: it looks up to now.
	if dbNow := ceilGrid(g.now().Add(g.skew), g.opts.Gap); dbNow.Before(w.grid) {
		w.grid = dbNow
	}
	g.armedAt, g.armedGrid = time.Time{}, time.Time{}
	return w, true
}

// pullIn arms the timer for a due time another source reported (database
// clock; zero: look now), if it is earlier than the armed one. A due time
// at or before the floor clears the floor, so the probe sees the row.
func (g *gate) pullIn(due time.Time, reason Trigger) {
	if !g.active() {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if due.IsZero() {
		g.floor = time.Time{}
		due = g.now().Add(g.skew)
	} else if !g.floor.IsZero() && !due.After(g.floor) {
		g.floor = time.Time{}
	}
	g.armLocked(due, reason)
}

// stop disarms the timer (the loop is ending).
func (g *gate) stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.timer.Stop()
	g.armedAt = time.Time{}
}

// retryLater arms a look after d (local clock), for a wake-up skipped
// while the database was unreachable.
func (g *gate) retryLater(d time.Duration, reason Trigger) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armLocked(g.now().Add(g.skew).Add(d), reason)
}

// deferWake records a wake-up that found a sweep running: that sweep's
// probe re-arms the timer.
func (g *gate) deferWake() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.deferred = true
}

func (g *gate) currentFloor() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.floor
}

// armLocked arms the timer for due (database clock) on the grid, no sooner
// than the gap (times the misses' backoff) after the last wake-up, unless
// the timer is already armed earlier. The sleep is capped at MaxSleep.
func (g *gate) armLocked(due time.Time, reason Trigger) {
	if g.off.Load() {
		return
	}
	gap := g.opts.Gap
	t := due
	if !g.lastGrid.IsZero() {
		if earliest := g.lastGrid.Add(gap << min(g.misses, maxMissShift)); t.Before(earliest) {
			t = earliest
		}
	}
	grid := ceilGrid(t, gap)
	if !g.armedAt.IsZero() && !grid.Before(g.armedGrid) {
		return // armed for this grid point or an earlier one already
	}
	now := g.now()
	at := grid.Add(-g.skew)
	if !g.incumbent && g.opts.Stagger > 0 {
		at = at.Add(rand.N(g.opts.Stagger))
	}
	if limit := now.Add(g.opts.MaxSleep); at.After(limit) {
		at = limit
	}
	g.armedAt, g.armedGrid, g.armedReason = at, grid, reason
	g.timer.Reset(max(at.Sub(now), 0))
}

// ceilGrid rounds t up to a multiple of gap (Unix time).
func ceilGrid(t time.Time, gap time.Duration) time.Time {
	n, step := t.UnixNano(), gap.Nanoseconds()
	if r := n % step; r != 0 {
		n += step - r
	}
	return time.Unix(0, n).UTC()
}

// probeResult is what a probe (and, for a timed wake-up, the sweep between
// its two probes) found out.
type probeResult struct {
	// timed: a wake-up's cycle; otherwise the probe after a cron or
	// manual sweep.
	timed bool
	wake  wake
	// pre is a cycle's first probe; latest the last one (the only one
	// after a cron or manual sweep, or when the cycle did not sweep).
	pre, latest DueProbe
	// at is the local time latest came back.
	at time.Time
	// swept: this replica held the lease and swept; busy: another
	// replica held it.
	swept, busy bool
	moved       int
	err         error
}

// settle records a probe's result and arms the timer for what it found.
func (g *gate) settle(ctx context.Context, r probeResult) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r.err != nil {
		switch {
		case errors.Is(r.err, ErrNoSchedule):
			if !g.off.Swap(true) {
				g.timer.Stop()
				g.armedAt = time.Time{}
				g.logger.Info("timer gate off: the scan path keeps no schedule; sweeps follow the cron schedule")
			}
			return
		case ctx.Err() != nil:
			return
		case !g.failing:
			g.failing = true
			g.logger.Warn("timer gate: probe of the schedule failed; the cron schedule carries on", slog.Any("error", r.err))
		}
		if r.latest.DBNow.IsZero() {
			return
		}
	} else {
		g.failing = false
	}
	g.observeSkew(r.latest.DBNow.Sub(r.at), r.at)
	if r.timed {
		g.lastGrid = r.wake.grid
		switch {
		case r.swept:
			g.floor = r.pre.DBNow
			g.incumbent, g.misses = true, 0
		case r.busy:
			// What is due is the holder's; the floor stays, so the look
			// after stallAfter still sees it if the holder has not moved it.
			g.incumbent = false
			g.misses++
		default: // nothing due by the wake-up's time
			g.floor = laterOf(g.floor, earlierOf(r.wake.grid, r.pre.DBNow))
			if !g.incumbent {
				g.misses++
			}
		}
	}
	var target time.Time
	switch {
	case r.busy:
		target = r.pre.Earliest.Add(g.stallAfter()) // has the holder moved it by then?
		if !r.latest.Next.IsZero() {
			target = earlierOf(target, r.latest.Next)
		}
	case r.latest.DueNow:
		target = r.latest.DBNow
	case !r.latest.Next.IsZero():
		target = r.latest.Next
	}
	if g.deferred {
		g.deferred = false
		if target.IsZero() || target.After(r.latest.DBNow) {
			target = r.latest.DBNow
		}
	}
	if !target.IsZero() {
		g.armLocked(target, TriggerTimer)
	}
}

// observeSkew takes a clock-offset sample: the database's now() minus the
// local time its reply arrived. A slow reply (a busy machine, a scheduling
// delay) only makes a sample smaller, and a smaller offset makes wake-ups
// later, so the largest sample of the last skewWindow is the estimate; once
// it is older than that, the next sample replaces it, so a real change of
// either clock gets through.
func (g *gate) observeSkew(sample time.Duration, at time.Time) {
	if g.skewAt.IsZero() || sample >= g.skew || at.Sub(g.skewAt) > skewWindow {
		g.skew, g.skewAt = sample, at
	}
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlierOf(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
