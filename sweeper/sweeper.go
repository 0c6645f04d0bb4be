// Package sweeper owns the retry sweep: one RunOnce pass moves every due
// waiting_for_retry step back to pending in concurrent batch transactions,
// and the Scheduler runs passes on a cron schedule and, with its timer gate,
// at the due times the retry schedule holds, without ever overlapping them.
// It also owns the adoption and reconcile loops. It defines the narrow
// interfaces it needs (Store, DueStore, WakeSource); the db package
// implements them.
package sweeper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// Batch asks the store to claim and move up to Limit due steps in one
// transaction.
type Batch struct {
	SweepID uuid.UUID
	// Number is the batch's sequence number within its sweep, from 1.
	Number int
	Limit  int
	// Window is how many of the earliest-due candidates a store that reads
	// a schedule may look through for Limit movable ones; it grows within a
	// sweep while candidates are locked by others or cannot move (see
	// BatchResult.WindowFull). Zero means Limit.
	Window int
	// OnlyStep, when set, restricts the claim to that step (a manual retry).
	OnlyStep *uuid.UUID
	// Force skips the due-time condition (only with OnlyStep).
	Force bool
	// NotifyChannel, when set, gets a pg_notify with the task ids whose steps
	// became pending, in the same transaction.
	NotifyChannel string
	// Provenance, when set (an operator's retry of one step), is merged
	// into the transition metadata: who asked, why, the operation.
	Provenance map[string]any
}

// Moved is one step a batch moved to pending.
type Moved struct {
	StepUUID uuid.UUID
	TaskUUID uuid.UUID
	DueAt    time.Time
	MovedAt  time.Time
}

// BatchResult reports one batch transaction.
type BatchResult struct {
	// Claimed is how many due steps the batch locked.
	Claimed int
	// Moved are the steps actually moved; Claimed - len(Moved) lost a race.
	Moved []Moved
	// WindowFull says a short batch did not see every candidate: its
	// window was full of rows it could not take (locked by another
	// transaction, or not movable), so more may lie beyond it. The sweep
	// goes on with a larger window instead of ending.
	WindowFull bool
	// Trigger is what started the batch's sweep (set by the sweeper, not
	// the store).
	Trigger Trigger
}

// DueCounts is what a sweep would do right now, without writing: the due,
// stranded and not-yet-due steps by the due rule over the tasker tables.
type DueCounts struct {
	Due      int64
	Stranded int64
	// NotYetDue steps are eligible and waiting for their backoff; the first
	// becomes due at NextDueAt (meaningful only when NotYetDue > 0).
	NotYetDue int64
	NextDueAt time.Time
}

// StrandedStep is a waiting_for_retry step that is not retry-eligible: no
// legal transition gets it out, so only an operator can.
type StrandedStep struct {
	StepUUID    uuid.UUID
	TaskUUID    uuid.UUID
	Attempts    *int32
	MaxAttempts *int32
	Retryable   bool
}

// Path is how a store finds due steps.
type Path string

const (
	// PathSchedule reads candidates from the sweeper-owned retry schedule
	// by due time: a sweep costs in proportion to the due steps.
	PathSchedule Path = "schedule"
	// PathScan evaluates the due rule over every waiting step (the
	// sweeper-owned objects are not installed): correct, slower on large
	// tables.
	PathScan Path = "scan"
)

// Preparation reports what a store did before a sweep's batches.
type Preparation struct {
	// Adopted is how many steps parked by other writers joined the schedule.
	Adopted int
	// Reconciled is set when the store reconciled before this sweep (the
	// first sweep on a new database does).
	Reconciled *Reconciliation
	// NothingDue means no batch could find anything: the sweep may stop.
	NothingDue bool
	// Dropped schedule rows belonged to steps no longer waiting_for_retry;
	// Deferred ones were moved to a later time (backoff changed, blocked,
	// stranded).
	Dropped, Deferred int
}

// Reconciliation reports one reconcile pass: what the schedule (a cache of
// the tasker tables) had wrong and put right.
type Reconciliation struct {
	// Ran is false when no pass was due or another replica was running one.
	Ran bool `json:"ran"`
	// Skipped means another replica was reconciling at the time.
	Skipped bool `json:"skipped"`
	// Waiting is how many waiting_for_retry steps the pass looked at.
	Waiting int64 `json:"waiting"`
	// Missing steps were waiting without a schedule row: added.
	Missing int64 `json:"missing"`
	// Orphaned rows belonged to steps no longer waiting: dropped.
	Orphaned int64 `json:"orphaned"`
	// RetimedEarlier rows said later than the tables: the steps would have
	// moved late. RetimedLater rows said earlier (harmless, but re-read).
	RetimedEarlier int64 `json:"retimed_earlier"`
	RetimedLater   int64 `json:"retimed_later"`
	// Restranded rows had the wrong stranded flag.
	Restranded int64         `json:"restranded"`
	Duration   time.Duration `json:"-"`
	DurationMS float64       `json:"duration_ms"`
}

// Corrected is how many rows the pass changed.
func (r Reconciliation) Corrected() int64 {
	return r.Missing + r.Orphaned + r.RetimedEarlier + r.RetimedLater + r.Restranded
}

// Store is what a sweep needs from the database. Each sweep path has its
// own implementation; none branches on the path. Its errors name the
// operation that failed ("count due steps: ..."), so a sweep passes them on
// without saying it again.
type Store interface {
	// Path says how due steps are found.
	Path(ctx context.Context) (Path, error)
	// Prepare readies a sweep's batches: on the schedule path it adopts
	// steps other writers parked and re-evaluates overdue rows that cannot
	// move, and says when nothing is due.
	Prepare(ctx context.Context) (Preparation, error)
	// MoveDueBatch claims up to b.Limit due steps with FOR UPDATE SKIP LOCKED
	// and moves them to pending in one transaction.
	MoveDueBatch(ctx context.Context, b Batch) (BatchResult, error)
	// CountDueLeft counts the due steps still waiting: after a sweep's
	// batches, those another transaction held locked.
	CountDueLeft(ctx context.Context) (int64, error)
	// CountDue evaluates the due rule without locking or writing.
	CountDue(ctx context.Context) (DueCounts, error)
	// Stranded counts the stranded steps and lists up to sample of them.
	Stranded(ctx context.Context, sample int) (int64, []StrandedStep, error)
}

// Reconciler is implemented by stores that keep a schedule: it makes the
// schedule match the tasker tables.
type Reconciler interface {
	// Reconcile runs a pass if the last one is at least olderThan ago (0:
	// now), one replica at a time.
	Reconcile(ctx context.Context, olderThan time.Duration) (Reconciliation, error)
}

// ErrNoSchedule means the operation needs the sweeper-owned objects, which
// are not installed (the scan path): run `sweeper migrate`.
var ErrNoSchedule = errors.New("the sweeper-owned objects are not installed (run 'sweeper migrate')")

// Config tunes a sweep.
type Config struct {
	// BatchSize is the most steps one batch transaction moves.
	BatchSize int
	// Workers is how many batch transactions run at once.
	Workers int
	// BatchTimeout bounds one batch transaction.
	BatchTimeout time.Duration
	// NotifyChannel, when set, is pg_notify'd with the task ids of moved steps.
	NotifyChannel string
}

// DefaultConfig is 1000-step batches, 4 workers, 30 s per batch, no notify.
func DefaultConfig() Config {
	return Config{BatchSize: 1000, Workers: 4, BatchTimeout: 30 * time.Second}
}

// Config limits. The notify channel is a PostgreSQL identifier, which the
// server truncates past 63 bytes.
const (
	MaxBatchSize        = 100_000
	MaxWorkers          = 64
	MaxNotifyChannelLen = 63
)

// Validate reports the first setting out of range as a *FieldError.
func (c Config) Validate() error {
	switch {
	case c.BatchSize < 1 || c.BatchSize > MaxBatchSize:
		return &FieldError{Field: "batch_size", Problem: fmt.Sprintf("must be between 1 and %d, got %d", MaxBatchSize, c.BatchSize)}
	case c.Workers < 1 || c.Workers > MaxWorkers:
		return &FieldError{Field: "workers", Problem: fmt.Sprintf("must be between 1 and %d, got %d", MaxWorkers, c.Workers)}
	case c.BatchTimeout <= 0:
		return &FieldError{Field: "batch_timeout", Problem: fmt.Sprintf("must be > 0, got %s", c.BatchTimeout)}
	case len(c.NotifyChannel) > MaxNotifyChannelLen:
		return &FieldError{Field: "notify_channel", Problem: fmt.Sprintf(
			"must be at most %d bytes (PostgreSQL's identifier limit), got %d", MaxNotifyChannelLen, len(c.NotifyChannel))}
	}
	return nil
}

// FieldError names the Config field that is out of range, so a caller can
// point at its own name for it (a flag, a config key).
type FieldError struct {
	// Field is the snake_case field name: batch_size, workers,
	// batch_timeout, notify_channel.
	Field   string
	Problem string
}

func (e *FieldError) Error() string { return "sweep " + e.Field + " " + e.Problem }

// Summary is the outcome of one sweep: logged, exported as metrics and
// returned to whoever asked for it.
type Summary struct {
	SweepID uuid.UUID `json:"sweep_id"`
	DryRun  bool      `json:"dry_run"`
	// Transitioned is how many steps moved to pending (in a dry run: how
	// many would have).
	Transitioned int `json:"transitioned"`
	// Stranded is how many waiting_for_retry steps are not retry-eligible.
	Stranded int64 `json:"stranded"`
	// LostRaces is how many claimed steps another writer moved first.
	LostRaces int `json:"lost_races"`
	// Path is how due steps were found: schedule or scan.
	Path Path `json:"path"`
	// Trigger is what started the sweep: cron, manual, or the timer gate's
	// timer, notify or adoption. A timed sweep leaves Adopted, Stranded and
	// SkippedLocked at zero: the cron sweeps count those.
	Trigger Trigger `json:"trigger"`
	// Adopted is how many steps parked by other writers joined the schedule.
	Adopted int `json:"adopted"`
	// SkippedLocked is how many due steps were left waiting because another
	// transaction held them locked; the next sweep tries them again.
	SkippedLocked int64 `json:"skipped_locked"`
	Batches       int   `json:"batches"`
	FailedBatches int   `json:"failed_batches"`
	// Interrupted means a shutdown stopped the sweep before it was done:
	// every batch that ran is committed or rolled back whole.
	Interrupted bool `json:"interrupted"`
	// Paused means the replicas' pause switch was on: the sweep moved
	// nothing (or stopped before its next batch).
	Paused     bool          `json:"paused,omitempty"`
	StartedAt  time.Time     `json:"started_at"`
	Duration   time.Duration `json:"-"`
	DurationMS float64       `json:"duration_ms"`
	// MaxLag is the largest due-to-pending lag of the steps the sweep moved
	// (moved at minus due at, never negative); zero when none moved.
	MaxLag   time.Duration `json:"-"`
	MaxLagMS float64       `json:"max_lag_ms"`
}

// Hooks let the caller observe sweeps (metrics) without the sweeper knowing
// how they are exported. Every field is optional.
type Hooks struct {
	// BatchDone runs after every batch transaction, with its error if any.
	BatchDone func(BatchResult, error)
	// SweepDone runs after every sweep (not after one the pause switch
	// stopped before it began).
	SweepDone func(Summary, error)
	// PauseChecked is told the pause switch each time a sweep reads it.
	PauseChecked func(Pause)
}

// Sweeper runs sweeps against a Store.
type Sweeper struct {
	store  Store
	cfg    Config
	logger *slog.Logger
	hooks  Hooks
	// loggedPath is the path last announced in the logs.
	loggedPath atomic.Value
	// stranded rate-limits the stranded-steps warning.
	stranded strandedLog
	// now is the clock of the log rate limits (tests replace it).
	now func() time.Time
	// paused is the pause switch as last read (logged when it flips).
	paused atomic.Bool
	// aborted is cancelled by AbortBatches (set up on first use).
	abortOnce sync.Once
	aborted   context.Context
	abort     context.CancelFunc
}

// New builds a Sweeper, refusing a cfg that Config.Validate rejects.
func New(store Store, cfg Config, logger *slog.Logger, hooks Hooks) (*Sweeper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new sweeper: %w", err)
	}
	return &Sweeper{store: store, cfg: cfg, logger: logger, hooks: hooks, now: time.Now}, nil
}

// strandedSampleSize is how many stranded step ids a sweep logs.
const strandedSampleSize = 10

// RunOnce performs one sweep: it counts the stranded steps, then runs batch
// transactions on Workers connections until a batch comes back short of
// BatchSize (nothing more is due). Cancelling ctx stops new batches from
// starting; batches already running finish (each within BatchTimeout), so a
// shutdown never leaves a half-moved batch. A failed batch is counted and
// stops the sweep; RunOnce then returns an error with the summary so far.
func (s *Sweeper) RunOnce(ctx context.Context, dryRun bool) (Summary, error) {
	return s.run(ctx, sweepOptions{dryRun: dryRun, trigger: TriggerManual})
}

// sweepOptions say what a sweep is asked to do.
type sweepOptions struct {
	dryRun  bool
	trigger Trigger
	// reevaluate (a timed sweep): re-evaluate the overdue rows that cannot
	// move, after the batches.
	reevaluate bool
}

// run is one sweep: a timed one (the timer gate's) is short, see
// Trigger.Timed.
func (s *Sweeper) run(ctx context.Context, o sweepOptions) (Summary, error) {
	sum := Summary{SweepID: newSweepID(), DryRun: o.dryRun, Trigger: o.trigger, StartedAt: time.Now()}
	log := s.logger.With(slog.String("sweep_id", sum.SweepID.String()))
	if !o.dryRun {
		// The pause switch stops every replica: nothing of the sweep runs
		// (not even adoption or the re-evaluation), and nothing is counted.
		paused, err := s.checkPause(ctx)
		if err != nil {
			return sum, err
		}
		if paused {
			sum.Paused = true
			return sum, nil
		}
	}
	var err error
	if o.trigger.Timed() && !o.dryRun {
		err = s.sweepDue(ctx, log, &sum, o.reevaluate)
	} else {
		err = s.sweep(ctx, log, &sum)
	}
	sum.Duration = time.Since(sum.StartedAt)
	sum.DurationMS = float64(sum.Duration.Microseconds()) / 1000
	sum.MaxLagMS = float64(sum.MaxLag.Microseconds()) / 1000
	s.report(log, sum, err)
	if s.hooks.SweepDone != nil {
		s.hooks.SweepDone(sum, err)
	}
	return sum, err
}

// choosePath asks the store for its path and announces a change of path.
func (s *Sweeper) choosePath(ctx context.Context, log *slog.Logger, sum *Summary) error {
	path, err := s.store.Path(ctx)
	if err != nil {
		return fmt.Errorf("choose sweep path: %w", err)
	}
	sum.Path = path
	if prev, _ := s.loggedPath.Swap(path).(Path); prev != path {
		if path == PathSchedule {
			log.Info("sweep path: schedule (sweeper-owned objects installed; cost follows the due steps)")
		} else {
			log.Warn("sweep path: scan (sweeper-owned objects missing; every waiting step is evaluated on " +
				"each sweep: run 'sweeper migrate' to install them)")
		}
	}
	return nil
}

// sweepDue is a timed sweep (the timer gate's): a probe just found a
// schedule row due, so it goes straight to the batches, and then, when the
// probe saw rows left over from earlier looks, re-evaluates the overdue rows
// that cannot move (after the batches: the steps that are due do not wait
// for it). Adoption has its own loop; the stranded count and the count of
// locked steps are the cron sweeps'.
func (s *Sweeper) sweepDue(ctx context.Context, log *slog.Logger, sum *Summary, reevaluate bool) error {
	if err := s.choosePath(ctx, log, sum); err != nil {
		return err
	}
	ds, ok := s.store.(DueStore)
	if !ok {
		return ErrNoSchedule
	}
	if err := s.runBatches(ctx, log, sum); err != nil {
		return err
	}
	if sum.Interrupted {
		return ErrInterrupted
	}
	if !reevaluate {
		return nil
	}
	prep, err := ds.Reevaluate(ctx)
	if err != nil {
		return fmt.Errorf("re-evaluate overdue schedule rows: %w", err)
	}
	if prep.Dropped > 0 || prep.Deferred > 0 {
		log.Debug("schedule rows re-evaluated", slog.Int("dropped", prep.Dropped), slog.Int("deferred", prep.Deferred))
	}
	return nil
}

func (s *Sweeper) sweep(ctx context.Context, log *slog.Logger, sum *Summary) error {
	if err := s.choosePath(ctx, log, sum); err != nil {
		return err
	}
	if sum.DryRun {
		counts, err := s.store.CountDue(ctx)
		if err != nil {
			return err
		}
		sum.Transitioned = int(counts.Due)
		sum.Stranded = counts.Stranded
		return nil
	}
	prep, err := s.store.Prepare(ctx)
	if err != nil {
		return fmt.Errorf("prepare sweep: %w", err)
	}
	sum.Adopted = prep.Adopted
	if r := prep.Reconciled; r != nil && r.Ran {
		// The first pass on a database fills the schedule: what it adds is
		// not drift.
		log.Info("first reconcile pass on this database: the schedule now holds every waiting step",
			slog.Int64("waiting", r.Waiting), slog.Int64("added", r.Missing), slog.Float64("duration_ms", r.DurationMS))
	}
	if prep.Adopted > 0 {
		log.Info("adopted steps parked by other writers", slog.Int("adopted", prep.Adopted))
	}
	if prep.Dropped > 0 || prep.Deferred > 0 {
		log.Debug("schedule rows re-evaluated", slog.Int("dropped", prep.Dropped), slog.Int("deferred", prep.Deferred))
	}
	stranded, sample, err := s.store.Stranded(ctx, strandedSampleSize)
	if err != nil {
		return err
	}
	sum.Stranded = stranded
	s.logStranded(log, stranded, sample)
	if prep.NothingDue {
		return nil
	}
	if err := s.runBatches(ctx, log, sum); err != nil {
		return err
	}
	if sum.Interrupted {
		return ErrInterrupted
	}
	// Whatever is still due now was held by another transaction's locks
	// (the claims skip locked rows) or fell due in the last moments.
	left, err := s.store.CountDueLeft(ctx)
	if err != nil {
		return err
	}
	sum.SkippedLocked = left
	return nil
}

// strandedRepeat is how often an unchanged number of stranded steps is
// logged again; a change is logged at once.
const strandedRepeat = 10 * time.Minute

// strandedLog remembers the stranded count last logged, so a sweep every
// few seconds does not repeat the same warning.
type strandedLog struct {
	mu     sync.Mutex
	logged bool
	count  int64
	at     time.Time
}

// due reports whether count should be logged at now, and records it if so.
func (l *strandedLog) due(count int64, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.logged && count == 0 {
		return false // nothing stranded, and nothing said yet
	}
	if l.logged && count == l.count && (count == 0 || now.Sub(l.at) < strandedRepeat) {
		return false // "none left" is said once
	}
	l.logged, l.count, l.at = true, count, now
	return true
}

// logStranded warns about stranded steps when their number changed or
// strandedRepeat passed since it was last logged, and says so once when
// none are left.
func (s *Sweeper) logStranded(log *slog.Logger, stranded int64, sample []StrandedStep) {
	if !s.stranded.due(stranded, s.now()) {
		return
	}
	if stranded == 0 {
		log.Info("no stranded steps left")
		return
	}
	ids := make([]string, len(sample))
	for i, st := range sample {
		ids[i] = st.StepUUID.String()
	}
	log.Warn("stranded steps: waiting_for_retry but not retry-eligible; only an operator can move them "+
		"(logged again when the number changes, or in 10 minutes)",
		slog.Int64("stranded", stranded), slog.Any("sample_step_uuids", ids))
}

// Reconcile runs a reconcile pass if the last one is at least olderThan
// ago (0: now) and logs what it corrected; ErrNoSchedule on the scan path.
// The daemon calls it on a timer of its own, so the pass never delays a
// sweep; `sweeper once` calls it after its sweep, `sweeper reconcile` on
// demand.
func (s *Sweeper) Reconcile(ctx context.Context, olderThan time.Duration) (Reconciliation, error) {
	r, ok := s.store.(Reconciler)
	if !ok {
		return Reconciliation{}, ErrNoSchedule
	}
	res, err := r.Reconcile(ctx, olderThan)
	if err != nil {
		return res, err
	}
	if res.Ran {
		s.logReconciliation(res)
	}
	return res, nil
}

func (s *Sweeper) logReconciliation(res Reconciliation) {
	attrs := []any{
		slog.Int64("waiting", res.Waiting), slog.Int64("missing", res.Missing),
		slog.Int64("orphaned", res.Orphaned), slog.Int64("retimed_earlier", res.RetimedEarlier),
		slog.Int64("retimed_later", res.RetimedLater), slog.Int64("restranded", res.Restranded),
		slog.Float64("duration_ms", res.DurationMS),
	}
	if res.Corrected() > 0 {
		s.logger.Warn("reconcile: the schedule had drifted from the tasker tables; corrected", attrs...)
		return
	}
	s.logger.Info("reconcile: the schedule matches the tasker tables", attrs...)
}

// maxWindow bounds how many candidates one batch looks through.
const maxWindow = 1 << 20

func (s *Sweeper) runBatches(ctx context.Context, log *slog.Logger, sum *Summary) error {
	var (
		mu        sync.Mutex
		firstErr  error
		exhausted atomic.Bool
		aborted   atomic.Bool
		number    int
	)
	g := new(errgroup.Group)
	g.SetLimit(s.cfg.Workers)
	// The candidate window starts at the batch size and doubles whenever a
	// short batch's window was full of rows it could not take (locked by
	// the orchestrator, say), so locked rows never end a sweep.
	var window atomic.Int64
	window.Store(int64(s.cfg.BatchSize))
	// The first batch runs alone (an idle sweep costs one transaction, and
	// workers start only when there is a backlog), and so does a last one
	// after batches ran side by side: each holds its window's schedule rows
	// until it commits, so a sibling may have found nothing it could take
	// while rows were still held that nobody took.
	runAlone, sideBySide := true, false
	for {
		for !exhausted.Load() && ctx.Err() == nil {
			if number > 0 {
				// The sweep read the switch before its first batch; every
				// later batch reads it again, so a pause stops a long sweep
				// within one batch.
				paused, err := s.checkPause(ctx)
				if err == nil && paused {
					sum.Paused = true
					exhausted.Store(true)
					break
				}
			}
			number++
			batch := Batch{
				SweepID: sum.SweepID, Number: number, Limit: s.cfg.BatchSize, Window: int(window.Load()),
				NotifyChannel: s.cfg.NotifyChannel,
			}
			runAndTally := func() error {
				res, err := s.runBatch(ctx, batch, sum.Trigger)
				switch {
				case err != nil:
					exhausted.Store(true)
				case res.Claimed < batch.Limit && res.WindowFull:
					grown := min(int64(batch.Window)*2, maxWindow)
					if grown == int64(batch.Window) {
						exhausted.Store(true) // as far as one sweep looks; the next goes on
					}
					for w := window.Load(); w < grown && !window.CompareAndSwap(w, grown); w = window.Load() {
					}
				case res.Claimed < batch.Limit:
					exhausted.Store(true)
				}
				if err != nil && s.abortContext().Err() != nil && errors.Is(err, context.Canceled) {
					// AbortBatches (a shutdown's grace is over) cancelled it: it
					// rolled back whole, and the sweep is interrupted, not failed.
					aborted.Store(true)
					log.Warn("sweep batch cancelled by shutdown: rolled back", slog.Int("batch", batch.Number))
					return nil
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					sum.FailedBatches++
					if firstErr == nil {
						firstErr = err
					}
					log.Error("sweep batch failed", slog.Int("batch", batch.Number), slog.Any("error", err))
					return nil // a batch failure is data: siblings finish their transactions
				}
				if res.Claimed > 0 {
					sum.Batches++
				}
				sum.Transitioned += len(res.Moved)
				sum.LostRaces += res.Claimed - len(res.Moved)
				for _, mv := range res.Moved {
					if !mv.DueAt.IsZero() {
						sum.MaxLag = max(sum.MaxLag, mv.MovedAt.Sub(mv.DueAt))
					}
				}
				return nil
			}
			if runAlone {
				runAlone = false
				_ = runAndTally()
				continue
			}
			sideBySide = true
			g.Go(runAndTally)
		}
		_ = g.Wait()
		if !sideBySide || firstErr != nil || aborted.Load() || ctx.Err() != nil {
			break
		}
		sideBySide, runAlone = false, true
		exhausted.Store(false)
	}
	if aborted.Load() || (ctx.Err() != nil && !exhausted.Load()) {
		sum.Interrupted = true
	}
	if firstErr != nil {
		return fmt.Errorf("sweep: %d batch(es) failed: %w", sum.FailedBatches, firstErr)
	}
	return nil
}

// runBatch runs one batch transaction. It is detached from ctx's
// cancellation so that a shutdown lets it commit, bounded by BatchTimeout;
// panics are recovered into errors so one bad batch cannot kill the daemon.
func (s *Sweeper) runBatch(ctx context.Context, b Batch, trigger Trigger) (res BatchResult, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("batch %d panicked: %v\n%s", b.Number, r, debug.Stack())
		}
		res.Trigger = trigger
		if s.hooks.BatchDone != nil {
			s.hooks.BatchDone(res, err)
		}
	}()
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.BatchTimeout)
	defer cancel()
	stop := context.AfterFunc(s.abortContext(), cancel)
	defer stop()
	return s.store.MoveDueBatch(bctx, b)
}

// AbortBatches cancels the batch transactions in flight (each rolls back
// whole) and every later one: a shutdown whose grace period is over.
func (s *Sweeper) AbortBatches() {
	s.abortContext()
	s.abort()
}

func (s *Sweeper) abortContext() context.Context {
	s.abortOnce.Do(func() { s.aborted, s.abort = context.WithCancel(context.Background()) })
	return s.aborted
}

// MoveStep moves one step to pending now if it is due (or, with force, if
// it would be due but for its backoff), with the same rules and
// compare-and-swap as a sweep. ErrNotDue when it is not movable,
// statemachine.ErrLostRace when another writer moved it between claim and
// move.
func (s *Sweeper) MoveStep(ctx context.Context, step uuid.UUID, force bool) (Moved, error) {
	return s.MoveStepAudited(ctx, step, force, nil)
}

// MoveStepAudited is MoveStep with provenance (who asked, why) merged into
// the transition metadata. It is an operator's act: the pause switch does
// not stop it.
func (s *Sweeper) MoveStepAudited(ctx context.Context, step uuid.UUID, force bool, prov map[string]any) (Moved, error) {
	res, err := s.runBatch(ctx, Batch{
		SweepID: newSweepID(), Number: 1, Limit: 1, OnlyStep: &step, Force: force, NotifyChannel: s.cfg.NotifyChannel,
		Provenance: prov,
	}, TriggerManual)
	if err != nil {
		return Moved{}, err
	}
	if len(res.Moved) == 1 {
		return res.Moved[0], nil
	}
	if res.Claimed == 1 {
		return Moved{}, fmt.Errorf("move step %s: another writer moved it first: %w", step, statemachine.ErrLostRace)
	}
	return Moved{}, ErrNotDue
}

// checkPause reads the replicas' pause switch (never paused for a store
// without one), tells the hook, and logs when it flips.
func (s *Sweeper) checkPause(ctx context.Context) (bool, error) {
	pr, ok := s.store.(PauseReader)
	if !ok {
		return false, nil
	}
	p, err := pr.PauseState(ctx)
	if err != nil {
		return false, fmt.Errorf("read the pause switch: %w", err)
	}
	if s.hooks.PauseChecked != nil {
		s.hooks.PauseChecked(p)
	}
	if s.paused.Swap(p.Paused) != p.Paused {
		if p.Paused {
			s.logger.Warn("sweeps paused: this replica moves no step until 'sweeper resume'",
				slog.String("paused_by", p.By), slog.String("reason", p.Reason))
		} else {
			s.logger.Info("sweeps resumed")
		}
	}
	return p.Paused, nil
}

// ErrInterrupted means a shutdown stopped a sweep before every due step was
// moved; what moved is committed, the rest waits for the next sweep.
var ErrInterrupted = errors.New("sweep interrupted by shutdown")

// ErrNotDue means a step asked to be moved is not due (or not movable at
// all: wrong state, processed, in process, unmet parents, not eligible).
var ErrNotDue = errors.New("step is not due")

func (s *Sweeper) report(log *slog.Logger, sum Summary, err error) {
	attrs := []any{
		slog.String("trigger", string(sum.Trigger)),
		slog.Bool("dry_run", sum.DryRun),
		slog.Int("transitioned", sum.Transitioned),
		slog.Int64("stranded", sum.Stranded),
		slog.Int("lost_races", sum.LostRaces),
		slog.Int("batches", sum.Batches),
		slog.Float64("duration_ms", sum.DurationMS),
	}
	if sum.SkippedLocked > 0 {
		attrs = append(attrs, slog.Int64("skipped_locked", sum.SkippedLocked))
	}
	switch {
	case errors.Is(err, ErrInterrupted) || errors.Is(err, context.Canceled):
		log.Warn("sweep interrupted by shutdown: the rest waits for the next sweep", attrs...)
	case err != nil:
		log.Error("sweep failed", append(attrs, slog.Any("error", err))...)
	case (sum.Transitioned > 0 || sum.LostRaces > 0) && !sum.Trigger.Timed():
		// Timed sweeps run up to 1/gap times a second: debug only.
		log.Info("sweep finished", attrs...)
	default:
		log.Debug("sweep finished", attrs...)
	}
}

func newSweepID() uuid.UUID {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.New()
	}
	return id
}
