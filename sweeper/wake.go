package sweeper

import (
	"context"
	"time"
)

// Trigger says what started a sweep: the schedule's tick, a person or a
// command, or the timer gate (and what armed its timer). It labels the lag
// histogram and every Summary.
type Trigger string

const (
	// TriggerCron is a tick of the cron schedule.
	TriggerCron Trigger = "cron"
	// TriggerManual is POST /v1/sweeps, `sweeper once` or a one-step retry.
	TriggerManual Trigger = "manual"
	// TriggerTimer is the timer gate, armed by its own look at the schedule.
	TriggerTimer Trigger = "timer"
	// TriggerNotify is the timer gate, armed by a park another process
	// announced (the inline handler's pg_notify).
	TriggerNotify Trigger = "notify"
	// TriggerAdoption is the timer gate, armed by the adoption loop after it
	// adopted steps other writers parked.
	TriggerAdoption Trigger = "adoption"
)

// Timed reports whether t is one of the timer gate's triggers. A timed
// sweep is short: it runs the batches (and re-evaluates the overdue rows
// that cannot move when a probe saw some left), and leaves adoption, the
// stranded count and the count of locked steps to the cron sweeps (and
// adoption to its own loop).
func (t Trigger) Timed() bool {
	return t == TriggerTimer || t == TriggerNotify || t == TriggerAdoption
}

// DueProbe is one look at the schedule's due times, on the database clock.
type DueProbe struct {
	// DBNow is the database's now() when the probe ran.
	DBNow time.Time
	// DueNow says some schedule row's time came after the probe's After
	// (or ever, without one) and by its horizon: DBNow, or the request's
	// earlier Until.
	DueNow bool
	// Earliest is the earliest due time after the request's After
	// (meaningful when DueNow): how long the oldest step of those waits.
	Earliest time.Time
	// Leftover says some row due at or before the request's After (and the
	// horizon) is still on the schedule: it could not move then (locked by
	// another transaction, or blocked) and may want re-evaluating.
	Leftover bool
	// Next is the earliest due time after the horizon; zero when there is
	// none (an empty schedule, or only rows that never come due).
	Next time.Time
}

// ProbeRequest asks for a DueProbe.
type ProbeRequest struct {
	// After, when set, leaves rows due at or before it out of DueNow: they
	// were due when this process last swept, and what is left of them could
	// not move then (another transaction held them, or they are blocked).
	After time.Time
	// Until, when set and earlier than the database's now(), is the
	// horizon instead of now(): a timer wake-up looks at what was due by
	// its own time, so every replica waking for it sees the same rows.
	Until time.Time
	// Lease asks, when something is due, for the replicas' timer lease: of
	// the replicas that wake for the same due time, the one holding it
	// sweeps and the others leave the steps to it (unless they have waited
	// too long: a holder may stall).
	Lease bool
}

// Lease is the replicas' timer lease, held from a probe until Release.
type Lease interface {
	// Release gives the lease back and probes again in the same round trip
	// (After as in ProbeRequest).
	Release(ctx context.Context, after time.Time) (DueProbe, error)
}

// Adoption reports one adoption pass: steps other writers parked that
// joined the schedule.
type Adoption struct {
	Adopted int
	// EarliestDue is the earliest due time among the adopted steps
	// (meaningful when Adopted > 0).
	EarliestDue time.Time
	// Reconciled is set when the pass reconciled instead (the first on a
	// new database): what joined is then best found by a probe.
	Reconciled *Reconciliation
}

// DueStore is implemented by stores that keep a schedule: what the timer
// gate and the adoption loop need. On the scan path every method returns
// ErrNoSchedule.
type DueStore interface {
	// ProbeDue looks at the schedule's due times in one statement; with
	// req.Lease and something due it also tries to take the timer lease,
	// returned non-nil when taken (the caller must Release it).
	ProbeDue(ctx context.Context, req ProbeRequest) (DueProbe, Lease, error)
	// Reevaluate is the part of Prepare that re-evaluates the overdue rows
	// that cannot move (drops, defers), so later claims do not walk past
	// them again.
	Reevaluate(ctx context.Context) (Preparation, error)
	// Adopt runs one adoption pass on its own.
	Adopt(ctx context.Context) (Adoption, error)
}

// WakeSource tells the timer gate of due times it did not read itself:
// steps another process parked (database clock). A zero time asks for a
// look at the schedule now (the source may have missed some, e.g. while a
// listening connection was down).
type WakeSource interface {
	Wakes() <-chan time.Time
}

// Timer gate defaults.
const (
	// DefaultWakeGap is the least time between two timer-driven sweeps, so
	// a steady stream of due steps is swept in batches.
	DefaultWakeGap = 15 * time.Millisecond
	// DefaultWakeStagger is the largest random delay a replica that did not
	// take the last timer-driven batch adds to its wake-ups, so the one that
	// did usually takes the next one too.
	DefaultWakeStagger = 5 * time.Millisecond
	// DefaultWakeMaxSleep is the longest the timer sleeps without looking
	// at the schedule again (which also refreshes its clock offset).
	DefaultWakeMaxSleep = time.Minute
)

// GateOptions turn on and tune the timer gate: after each sweep the
// scheduler reads the earliest due time in the schedule and arms a timer
// for it, so a step moves at its due time rather than at the next cron tick.
// The cron schedule stays as the safety net. The gate works on the schedule
// path only; on the scan path it turns itself off.
type GateOptions struct {
	// Gap is the least time between two timer-driven sweeps; zero means
	// DefaultWakeGap. Wake-ups fall on multiples of Gap on the database
	// clock, so replicas wake together and one takes the batch.
	Gap time.Duration
	// Stagger is the largest random delay added to the wake-ups of a
	// replica that did not take the last batch; zero means
	// DefaultWakeStagger, negative none.
	Stagger time.Duration
	// MaxSleep caps one sleep of the timer; zero means DefaultWakeMaxSleep.
	MaxSleep time.Duration
	// Notify, when set, reports steps other processes parked (the inline
	// handler's notifications).
	Notify WakeSource
	// Adoption, when set, reports steps the adoption loop adopted.
	Adoption WakeSource
	// OnEmptyWake is told about every timer wake-up that moved nothing:
	// nothing was due, another replica held the lease, or the steps were
	// gone by the time the batch looked.
	OnEmptyWake func(reason Trigger)
}

func (o GateOptions) withDefaults() GateOptions {
	if o.Gap <= 0 {
		o.Gap = DefaultWakeGap
	}
	switch {
	case o.Stagger == 0:
		o.Stagger = DefaultWakeStagger
	case o.Stagger < 0:
		o.Stagger = 0
	}
	if o.MaxSleep <= 0 {
		o.MaxSleep = DefaultWakeMaxSleep
	}
	return o
}

// Wake modes reported by Scheduler.WakeMode.
const (
	// WakeModeAtDue: the timer gate sweeps steps at their due time; the
	// cron schedule is the safety net.
	WakeModeAtDue = "at_due"
	// WakeModeCron: sweeps run on the cron schedule (and on demand) only.
	WakeModeCron = "cron"
)
