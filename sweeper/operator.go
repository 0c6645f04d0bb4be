package sweeper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// Operation names a manual change of a step.
type Operation string

const (
	// OpRetry moves a waiting step to pending now, by the sweep's rule
	// (with force, before its backoff has passed).
	OpRetry Operation = "retry"
	// OpResolve moves a step to resolved_manually: its children's
	// dependency check passes.
	OpResolve Operation = "resolve"
	// OpCancel moves a step to cancelled.
	OpCancel Operation = "cancel"
	// OpGrant raises a waiting step's max_attempts, so a stranded step is
	// retry-eligible again.
	OpGrant Operation = "grant"
)

// Audit says who asks for a manual change and why; it is written into the
// transition metadata beside tasker's event JSON and logged.
type Audit struct {
	// Actor is who: an operator's name (the CLI: --actor, else the OS
	// user), or the API's caller.
	Actor string
	// Reason is why.
	Reason string
	// Via is where the change came from: cli or api.
	Via string
	// RemoteAddr and TokenName say which API client asked (API only).
	RemoteAddr string
	TokenName  string
}

// provenance is the metadata an audited change carries.
func (a Audit) provenance(op Operation) map[string]any {
	p := map[string]any{"actor": a.Actor, "why": a.Reason, "operation": string(op), "manual": true}
	if a.Via != "" {
		p["via"] = a.Via
	}
	if a.RemoteAddr != "" {
		p["remote_addr"] = a.RemoteAddr
	}
	if a.TokenName != "" {
		p["token_name"] = a.TokenName
	}
	return p
}

// Change is what one operation did to one step (or, in a dry run, would
// do). Changed is false when nothing was written.
type Change struct {
	StepUUID  uuid.UUID          `json:"step_uuid"`
	Operation Operation          `json:"operation"`
	From      statemachine.State `json:"from"`
	To        statemachine.State `json:"to"`
	Changed   bool               `json:"changed"`
	Detail    string             `json:"detail"`
}

// ManualTransition asks the store for one audited state change, a
// compare-and-swap on From (statemachine.ErrLostRace when the step moved).
type ManualTransition struct {
	Step       uuid.UUID
	From       statemachine.State
	Event      statemachine.Event
	Provenance map[string]any
}

// Grant asks the store to raise a waiting step's max_attempts to
// NewMaxAttempts, a compare-and-swap on Read (the step as read):
// statemachine.ErrLostRace when it changed.
type Grant struct {
	Read           StepItem
	NewMaxAttempts int32
	Provenance     map[string]any
}

// QueueStore is what the operator needs from the database.
type QueueStore interface {
	// ListSteps returns one page of a normalized query.
	ListSteps(ctx context.Context, q StepQuery) (StepPage, error)
	// StepDetail reads one step and its latest HistoryLimit transitions;
	// statemachine.ErrStepNotFound when there is none.
	StepDetail(ctx context.Context, step uuid.UUID) (StepDetail, error)
	ManualTransition(ctx context.Context, t ManualTransition) error
	GrantAttempts(ctx context.Context, g Grant) error
	PauseReader
	// SetPause pauses or resumes every replica; changed says the switch
	// moved. ErrNoSchedule when the switch is not installed.
	SetPause(ctx context.Context, paused bool, by, reason string) (p Pause, changed bool, err error)
}

// Operator lists and changes the retry queue for an operator: the CLI and
// the admin API run the same operations through it.
type Operator struct {
	store   QueueStore
	sweeper *Sweeper
	logger  *slog.Logger
}

// NewOperator builds an operator; retries go through sw (the sweep's rule
// and compare-and-swap).
func NewOperator(store QueueStore, sw *Sweeper, logger *slog.Logger) *Operator {
	return &Operator{store: store, sweeper: sw, logger: logger}
}

// List returns one page of steps; an *InputError for a bad query.
func (o *Operator) List(ctx context.Context, q StepQuery) (StepPage, error) {
	q, err := q.Normalize()
	if err != nil {
		return StepPage{}, err
	}
	return o.store.ListSteps(ctx, q)
}

// Show returns one step with its history; statemachine.ErrStepNotFound.
func (o *Operator) Show(ctx context.Context, step uuid.UUID) (StepDetail, error) {
	return o.store.StepDetail(ctx, step)
}

// Request is one operation on one step.
type Request struct {
	Step uuid.UUID
	Op   Operation
	// Force (retry) also releases a step whose backoff has not passed.
	Force bool
	// Attempts (grant) is how many more attempts the step gets.
	Attempts int
	// DryRun says what would change and writes nothing.
	DryRun bool
	Audit  Audit
}

// Check validates a request before any step is read: an *InputError.
func (r Request) Check() error {
	switch r.Op {
	case OpRetry:
	case OpResolve, OpCancel, OpGrant:
		if r.Audit.Reason == "" {
			return &InputError{Field: "reason", Problem: "a reason is required for " + string(r.Op)}
		}
	default:
		return &InputError{Field: "operation", Problem: fmt.Sprintf("unknown operation %q", r.Op)}
	}
	if r.Op == OpGrant && r.Attempts <= 0 {
		return &InputError{Field: "attempts", Problem: fmt.Sprintf("must be at least 1, got %d", r.Attempts)}
	}
	return nil
}

// Apply runs one operation on one step, a compare-and-swap on the step as
// read. The Change says what happened; the error is an *InputError (bad
// request), statemachine.ErrStepNotFound, ErrRefused (illegal for the step
// as it is), ErrNotDue (a retry of a step that is not due) or
// statemachine.ErrLostRace (another writer moved it first: nothing was
// overwritten).
func (o *Operator) Apply(ctx context.Context, r Request) (Change, error) {
	ch := Change{StepUUID: r.Step, Operation: r.Op}
	if err := r.Check(); err != nil {
		return ch, err
	}
	d, err := o.store.StepDetail(ctx, r.Step)
	if err != nil {
		return ch, err
	}
	ch, err = o.apply(ctx, r, d.StepItem, ch)
	o.log(ctx, r, ch, err)
	return ch, err
}

// ApplyItem is Apply on a step as a listing read it (bulk operations).
func (o *Operator) ApplyItem(ctx context.Context, r Request, it StepItem) (Change, error) {
	ch := Change{StepUUID: it.StepUUID, Operation: r.Op}
	r.Step = it.StepUUID
	if err := r.Check(); err != nil {
		return ch, err
	}
	ch, err := o.apply(ctx, r, it, ch)
	o.log(ctx, r, ch, err)
	return ch, err
}

func (o *Operator) apply(ctx context.Context, r Request, it StepItem, ch Change) (Change, error) {
	ch.From, ch.To = it.State, it.State
	prov := r.Audit.provenance(r.Op)
	switch r.Op {
	case OpResolve, OpCancel:
		ev := statemachine.Event{Type: statemachine.EventResolveManually}
		if r.Op == OpCancel {
			ev.Type = statemachine.EventCancel
		}
		to, err := statemachine.Next(it.State, ev.Type)
		if err != nil || it.State.Terminal() {
			ch.Detail = fmt.Sprintf("step is %s, a terminal state: nothing to %s", it.State, r.Op)
			return ch, fmt.Errorf("%s step %s: %s: %w", r.Op, it.StepUUID, ch.Detail, ErrRefused)
		}
		ch.To = to
		if r.DryRun {
			ch.Detail = fmt.Sprintf("would move %s -> %s", it.State, to)
			return ch, nil
		}
		err = o.store.ManualTransition(ctx, ManualTransition{Step: it.StepUUID, From: it.State, Event: ev, Provenance: prov})
		return o.written(ch, err, fmt.Sprintf("moved %s -> %s", it.State, to))
	case OpGrant:
		if it.State != statemachine.WaitingForRetry {
			ch.Detail = fmt.Sprintf("step is %s, not waiting_for_retry: grant raises the attempts of a waiting step", it.State)
			return ch, fmt.Errorf("grant step %s: %s: %w", it.StepUUID, ch.Detail, ErrRefused)
		}
		if !it.Retryable {
			ch.Detail = "step is not retryable: more attempts would not make it retry-eligible (resolve or cancel it)"
			return ch, fmt.Errorf("grant step %s: %s: %w", it.StepUUID, ch.Detail, ErrRefused)
		}
		attempts, maxAttempts := int64(0), int64(3)
		if it.Attempts != nil {
			attempts = int64(*it.Attempts)
		}
		if it.MaxAttempts != nil {
			maxAttempts = int64(*it.MaxAttempts)
		}
		newMax := min(max(attempts, maxAttempts)+int64(r.Attempts), math.MaxInt32)
		ch.Detail = fmt.Sprintf("max_attempts %s -> %d (attempts %d)", fmtMax(it.MaxAttempts), newMax, attempts)
		if r.DryRun {
			ch.Detail = "would raise " + ch.Detail
			return ch, nil
		}
		prov["max_attempts_from"] = it.MaxAttempts
		prov["max_attempts_to"] = newMax
		prov["at"] = time.Now().UTC().Format(time.RFC3339Nano)
		err := o.store.GrantAttempts(ctx, Grant{Read: it, NewMaxAttempts: int32(newMax), Provenance: prov})
		return o.written(ch, err, "raised "+ch.Detail)
	default: // OpRetry
		ch.To = statemachine.Pending
		rule := it.Rule
		if r.DryRun {
			due, why := rule.Due()
			if due || (r.Force && rule.MovableButForTime) {
				ch.Detail = fmt.Sprintf("would move %s -> %s", it.State, statemachine.Pending)
				return ch, nil
			}
			ch.To = it.State
			ch.Detail = "not movable: " + why
			return ch, fmt.Errorf("retry step %s: %s: %w", it.StepUUID, why, ErrNotDue)
		}
		mv, err := o.sweeper.MoveStepAudited(ctx, it.StepUUID, r.Force, prov)
		switch {
		case err == nil:
			ch.Changed = true
			ch.Detail = fmt.Sprintf("moved %s -> %s (due at %s)", it.State, statemachine.Pending, mv.DueAt.UTC().Format(time.RFC3339))
			return ch, nil
		case errors.Is(err, ErrNotDue):
			ch.To = it.State
			_, why := rule.Due()
			if rule.IsDue || (r.Force && rule.MovableButForTime) {
				why = "step is locked by another writer right now; try again"
			}
			ch.Detail = "not movable: " + why
			return ch, fmt.Errorf("retry step %s: %s: %w", it.StepUUID, why, ErrNotDue)
		default:
			return o.written(ch, err, "")
		}
	}
}

// written turns a store write's outcome into the Change.
func (o *Operator) written(ch Change, err error, done string) (Change, error) {
	switch {
	case err == nil:
		ch.Changed, ch.Detail = true, done
	case errors.Is(err, statemachine.ErrLostRace):
		ch.To = ch.From
		ch.Detail = "another writer changed the step since it was read: nothing written"
	}
	return ch, err
}

func fmtMax(p *int32) string {
	if p == nil {
		return "NULL (3)"
	}
	return fmt.Sprint(*p)
}

func (o *Operator) log(ctx context.Context, r Request, ch Change, err error) {
	if o.logger == nil || r.DryRun {
		return
	}
	attrs := []slog.Attr{
		slog.String("operation", string(r.Op)), slog.String("step_uuid", ch.StepUUID.String()),
		slog.String("from", string(ch.From)), slog.String("to", string(ch.To)), slog.Bool("changed", ch.Changed),
		slog.String("detail", ch.Detail), slog.String("actor", r.Audit.Actor), slog.String("reason", r.Audit.Reason),
	}
	if r.Audit.Via != "" {
		attrs = append(attrs, slog.String("via", r.Audit.Via))
	}
	if r.Audit.RemoteAddr != "" {
		attrs = append(attrs, slog.String("remote_addr", r.Audit.RemoteAddr))
	}
	if r.Audit.TokenName != "" {
		attrs = append(attrs, slog.String("token_name", r.Audit.TokenName))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	o.logger.LogAttrs(ctx, slog.LevelInfo, "manual step change", attrs...)
}

// Bulk selects steps with q (q.Limit is ignored: pages of
// DefaultListLimit), at most max of them, and applies r to each, a
// compare-and-swap each, committed one by one; batch is told each page's
// changes once they are committed. It stops at the first error that is not
// about one step (the database, a bad query).
func (o *Operator) Bulk(ctx context.Context, q StepQuery, maxSteps int, r Request,
	batch func(changes []Change, errs []error),
) (changed, unchanged int, err error) {
	if err := r.Check(); err != nil {
		return 0, 0, err
	}
	q.Limit, q.Cursor = 0, ""
	q, err = q.Normalize()
	if err != nil {
		return 0, 0, err
	}
	seen := 0
	for seen < maxSteps {
		q.Limit = min(DefaultListLimit, maxSteps-seen)
		page, err := o.store.ListSteps(ctx, q)
		if err != nil {
			return changed, unchanged, err
		}
		changes := make([]Change, 0, len(page.Steps))
		errs := make([]error, 0, len(page.Steps))
		for _, it := range page.Steps {
			ch, err := o.ApplyItem(ctx, r, it)
			if err != nil && !StepScoped(err) {
				batch(changes, errs)
				return changed, unchanged, err
			}
			if ch.Changed {
				changed++
			} else {
				unchanged++
			}
			changes, errs = append(changes, ch), append(errs, err)
		}
		seen += len(page.Steps)
		if len(changes) > 0 {
			batch(changes, errs)
		}
		if page.NextCursor == "" {
			break
		}
		q.Cursor = page.NextCursor
	}
	return changed, unchanged, nil
}

// StepScoped says err is about one step (unknown, refused, not due, moved
// by another writer), not about the request or the database.
func StepScoped(err error) bool {
	return errors.Is(err, statemachine.ErrStepNotFound) || errors.Is(err, ErrRefused) ||
		errors.Is(err, ErrNotDue) || errors.Is(err, statemachine.ErrLostRace)
}

// Pause pauses every replica (the switch lives in the database);
// ErrNoSchedule when it is not installed.
func (o *Operator) Pause(ctx context.Context, by, reason string) (Pause, bool, error) {
	p, changed, err := o.store.SetPause(ctx, true, by, reason)
	if err == nil && o.logger != nil {
		o.logger.LogAttrs(ctx, slog.LevelInfo, "sweeps paused on every replica", slog.String("by", p.By),
			slog.String("reason", p.Reason), slog.Bool("changed", changed))
	}
	return p, changed, err
}

// Resume lets every replica sweep again.
func (o *Operator) Resume(ctx context.Context, by string) (Pause, bool, error) {
	p, changed, err := o.store.SetPause(ctx, false, by, "")
	if err == nil && o.logger != nil {
		o.logger.LogAttrs(ctx, slog.LevelInfo, "sweeps resumed on every replica", slog.String("by", by),
			slog.Bool("changed", changed))
	}
	return p, changed, err
}

// PauseState reads the switch (not paused when it is not installed).
func (o *Operator) PauseState(ctx context.Context) (Pause, error) { return o.store.PauseState(ctx) }
