package handling

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/backoff"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// ErrConflict means the step is in a state where the failure cannot be
// applied (complete, cancelled, enqueued for orchestration after a success,
// ...). Nothing was written. The error returned is a *ConflictError naming
// the refused event.
var ErrConflict = errors.New("step state does not allow handling a failure")

// ErrInvalidFailure means the failure report itself is unusable (no step id).
var ErrInvalidFailure = errors.New("invalid failure report")

// Action is what the handler did with a failure.
type Action string

// The four outcomes of a failure report, named as in tasker-core.
const (
	ActionMarkedAsPermanentFailure      Action = "MarkedAsPermanentFailure"
	ActionTransitionedToWaitingForRetry Action = "TransitionedToWaitingForRetry"
	ActionMarkedAsError                 Action = "MarkedAsError"
	ActionNoActionTaken                 Action = "NoActionTaken"
)

// Failure is one report of a failed step attempt.
type Failure struct {
	StepUUID uuid.UUID
	Message  string
	// Kind is an optional explicit category ("RateLimit", "permanent", ...).
	Kind string
	// Retryable is the worker's own verdict; when set it wins over the
	// classifier, since the worker knows its error best.
	Retryable *bool
	// RetryAfter is a raw Retry-After value: integer seconds or an HTTP date.
	RetryAfter string
	// HTTPStatus of the failed call, 0 when none.
	HTTPStatus int
	// Source names the reporter in the metadata ("http_api", "cli", ...).
	Source string
	// Metadata is free-form context handed to the classifier.
	Metadata map[string]any
	// DryRun decides without writing anything (and counts nothing): what
	// `sweeper policy explain` and ?dry_run=true show.
	DryRun bool
}

// Step is the part of a workflow step a failure decision needs.
type Step struct {
	StepUUID        uuid.UUID
	TaskUUID        uuid.UUID
	Name            string
	State           statemachine.State
	Retryable       bool
	MaxAttempts     *int32
	Attempts        *int32
	LastAttemptedAt *time.Time
	// DBNow is the database clock when the step was read.
	DBNow time.Time
	// NamedTaskUUID is the step's task template (tasks.named_task_uuid),
	// uuid.Nil when the task row is missing; TemplateUpdatedAt is the
	// template's updated_at, which says when a cached copy is stale.
	NamedTaskUUID     uuid.UUID
	TemplateUpdatedAt time.Time
	// TaskName and TaskNamespace are the template's name and namespace
	// (empty when unknown), for the policy file's rules.
	TaskName, TaskNamespace string
}

// FailureWrite is the one transaction that applies a decision.
type FailureWrite struct {
	StepUUID uuid.UUID
	// From is the state the decision was made on; the transition is a
	// compare-and-swap on it.
	From statemachine.State
	// Event is the transition to write; nil writes no transition (legacy mode).
	Event *statemachine.Event
	// BackoffSeconds, when set, is written to backoff_request_seconds with
	// last_attempted_at = now().
	BackoffSeconds *int32
	// Provenance is merged into the transition metadata.
	Provenance map[string]any
}

// FailureWritten is what the store reports back about a FailureWrite it
// committed.
type FailureWritten struct {
	// NextRetryAt is last_attempted_at + backoff_request_seconds as written,
	// in database time; nil when no backoff was written.
	NextRetryAt *time.Time
}

// Store is what the handler needs from the database.
type Store interface {
	// StepForFailure reads a step; statemachine.ErrStepNotFound if absent.
	StepForFailure(ctx context.Context, step uuid.UUID) (Step, error)
	// ApplyFailure writes the step columns and the transition atomically:
	// everything or nothing. A state that moved since From gives
	// statemachine.ErrLostRace and writes nothing.
	ApplyFailure(ctx context.Context, w FailureWrite) (FailureWritten, error)
}

// Config holds the handler's switches.
type Config struct {
	// UseErrorClassification off makes every error permanent.
	UseErrorClassification bool
	// UseWaitingForRetryState off is the legacy mode: write the backoff
	// only and leave the state to the orchestrator.
	UseWaitingForRetryState bool
	// Backoff tunes the delay of a retry. A NULL max_attempts is not
	// configurable: it is TaskerDefaultMaxAttempts.
	Backoff backoff.Config
	// TaskerEnv is the tasker environment whose task-template overrides
	// apply (environments.<env>); empty applies none.
	TaskerEnv string
	// Policy is the retry policy file's rules; nil without a file. The
	// Service can replace it while it runs (SetPolicy).
	Policy *Policy
}

// DefaultConfig is classification on, waiting_for_retry on and the default
// backoff.
func DefaultConfig() Config {
	return Config{
		UseErrorClassification:  true,
		UseWaitingForRetryState: true,
		Backoff:                 backoff.DefaultConfig(),
	}
}

// Validate reports the first setting out of range as a *FieldError; a
// backoff field's error also unwraps to the *backoff.ConfigError.
func (c Config) Validate() error {
	if err := c.Backoff.Validate(); err != nil {
		var ce *backoff.ConfigError
		if errors.As(err, &ce) {
			return &FieldError{Field: "backoff_" + ce.Field, Problem: ce.Problem, Err: err}
		}
		return fmt.Errorf("validate backoff: %w", err)
	}
	return nil
}

// FieldError names the Config field that is out of range, so a caller can
// point at its own name for it (a flag, a config key).
type FieldError struct {
	// Field is the snake_case field name: backoff_ and the
	// backoff.ConfigError's field (backoff_base, ...).
	Field   string
	Problem string
	// Err is the underlying error, if any (a *backoff.ConfigError).
	Err error
}

func (e *FieldError) Error() string { return "handler " + e.Field + " " + e.Problem }

// Unwrap returns the underlying error.
func (e *FieldError) Unwrap() error { return e.Err }

// Result is the handler's answer, serialisable as the API's JSON body.
type Result struct {
	StepUUID       uuid.UUID          `json:"step_uuid"`
	Action         Action             `json:"action"`
	FinalState     statemachine.State `json:"final_state"`
	BackoffSeconds *int32             `json:"backoff_applied_seconds,omitempty"`
	BackoffSource  backoff.Source     `json:"backoff_source,omitempty"`
	NextRetryAt    *time.Time         `json:"next_retry_at,omitempty"`
	Attempts       int                `json:"attempts"`
	MaxAttempts    int                `json:"max_attempts"`
	Classification Classification     `json:"classification"`
	// Reason says in words why the action was chosen.
	Reason string `json:"reason"`
	// Policy says which retry policy decided and why.
	Policy *PolicyDecision `json:"policy,omitempty"`
	// DryRun is set when nothing was written.
	DryRun bool `json:"dry_run,omitempty"`
}

// Service applies failures to steps.
type Service struct {
	store      Store
	classifier Classifier
	cfg        Config
	rnd        backoff.Rand
	now        func() time.Time
	policy     atomic.Pointer[Policy]
	templates  *templateCache
	hooks      PolicyHooks
	logger     *slog.Logger
}

// PolicyHooks observe the declared policies at work (metrics); nil fields
// are skipped. Dry runs call none.
type PolicyHooks struct {
	// RuleMatched is called with the id of the rule that decided a failure.
	RuleMatched func(rule string)
	// TemplateInvalid is called for a failure handled with the global policy
	// because its task template's configuration does not parse.
	TemplateInvalid func(template string)
}

// WithPolicyHooks sets the hooks.
func WithPolicyHooks(h PolicyHooks) Option { return func(s *Service) { s.hooks = h } }

// WithLogger sets the logger (an unparseable task template is logged once
// per template version); nil discards.
func WithLogger(l *slog.Logger) Option { return func(s *Service) { s.logger = l } }

// SetPolicy replaces the policy file's rules (nil: none) for the failures
// handled from now on, e.g. after a reload.
func (s *Service) SetPolicy(p *Policy) { s.policy.Store(p) }

// CurrentPolicy is the policy file in force; nil without one.
func (s *Service) CurrentPolicy() *Policy { return s.policy.Load() }

// Option customises a Service.
type Option func(*Service)

// WithClassifier replaces the standard classification rules.
func WithClassifier(c Classifier) Option { return func(s *Service) { s.classifier = c } }

// WithRand sets the jitter source (tests pin it).
func WithRand(r backoff.Rand) Option { return func(s *Service) { s.rnd = r } }

// WithClock sets the clock used to judge Retry-After dates.
func WithClock(now func() time.Time) Option { return func(s *Service) { s.now = now } }

// NewService builds a handler, refusing a cfg that Config.Validate rejects.
func NewService(store Store, cfg Config, opts ...Option) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new failure handler: %w", err)
	}
	s := &Service{store: store, classifier: StandardClassifier{}, cfg: cfg, rnd: globalRand{}, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	s.policy.Store(cfg.Policy)
	if ts, ok := store.(TemplateStore); ok {
		s.templates = newTemplateCache(ts)
	}
	return s, nil
}

// maxRaceRetries bounds how often a decision is re-made after another writer
// moved the step under us; the re-read normally finds it already handled.
const maxRaceRetries = 3

// Handle classifies a failure and either schedules a retry (waiting_for_retry
// with backoff) or fails the step (error), in one transaction with a
// compare-and-swap on the state it read. A repeated report for a step already
// in waiting_for_retry or error is NoActionTaken. The decision itself is
// Decide's; Handle reads the step, classifies the failure, writes the
// decision, and decides again when another writer moved the step first.
func (s *Service) Handle(ctx context.Context, f Failure) (Result, error) {
	if f.StepUUID == uuid.Nil {
		return Result{}, fmt.Errorf("%w: step uuid is required", ErrInvalidFailure)
	}
	f.Message = cleanMessage(f.Message)
	for range maxRaceRetries {
		res, err := s.handleOnce(ctx, f)
		if errors.Is(err, statemachine.ErrLostRace) {
			continue // someone else moved the step: decide again on what is there now
		}
		return res, err
	}
	return Result{}, fmt.Errorf("handle failure of step %s: %w", f.StepUUID, statemachine.ErrLostRace)
}

func (s *Service) handleOnce(ctx context.Context, f Failure) (Result, error) {
	step, err := s.store.StepForFailure(ctx, f.StepUUID)
	if err != nil {
		return Result{}, fmt.Errorf("read step: %w", err)
	}
	classification := s.classify(errorContext(step, f))
	in := PolicyInput{Rules: s.policy.Load(), Env: s.cfg.TaskerEnv}
	invalidTemplate := ""
	if step.State != statemachine.WaitingForRetry && step.State != statemachine.Error {
		in.Template, in.TemplateNote, invalidTemplate = s.templatePolicy(ctx, step)
	}
	d := DecideWithPolicy(s.cfg, in, step, f, classification, s.now(), s.rnd)
	res := Result{
		StepUUID:       step.StepUUID,
		Action:         d.Action,
		FinalState:     d.FinalState,
		BackoffSeconds: d.BackoffSeconds,
		BackoffSource:  d.BackoffSource,
		Attempts:       d.Attempts,
		MaxAttempts:    d.MaxAttempts,
		Classification: classification,
		Reason:         d.Reason,
		Policy:         d.Policy,
		DryRun:         f.DryRun,
	}
	if d.Conflict != nil {
		return res, d.Conflict
	}
	if f.DryRun {
		return res, nil
	}
	if !d.Writes() {
		return res, nil
	}
	written, err := s.store.ApplyFailure(ctx, FailureWrite{
		StepUUID: step.StepUUID, From: step.State, Event: d.Event,
		BackoffSeconds: d.BackoffSeconds, Provenance: d.Provenance,
	})
	if err != nil {
		return Result{}, fmt.Errorf("write %s decision: %w", d.Action, err)
	}
	res.NextRetryAt = written.NextRetryAt
	s.observe(d, invalidTemplate)
	return res, nil
}

// errorContext is what the classifier sees of a failure on step.
func errorContext(step Step, f Failure) ErrorContext {
	ec := ErrorContext{
		StepUUID:      step.StepUUID.String(),
		TaskUUID:      step.TaskUUID.String(),
		StepName:      step.Name,
		AttemptNumber: step.attempts(),
		MaxAttempts:   step.maxAttempts(),
		ErrorSource:   f.Source,
		Message:       f.Message,
		Kind:          f.Kind,
		HTTPStatus:    f.HTTPStatus,
		Metadata:      f.Metadata,
	}
	if step.LastAttemptedAt != nil && step.DBNow.After(*step.LastAttemptedAt) {
		ec.ExecutionDuration = step.DBNow.Sub(*step.LastAttemptedAt)
	}
	return ec
}

// classify applies the configured classifier, or the "everything is
// permanent" rule when classification is off.
func (s *Service) classify(ec ErrorContext) Classification {
	if !s.cfg.UseErrorClassification {
		return classificationDisabled(ec)
	}
	return s.classifier.Classify(ec)
}

// maxMessageBytes bounds the error text stored in every transition row.
const maxMessageBytes = 4096

// cleanMessage makes an error text safe for jsonb (which rejects NUL) and
// bounds its size, cutting on a rune boundary.
func cleanMessage(msg string) string {
	msg = strings.ToValidUTF8(strings.ReplaceAll(msg, "\x00", ""), "\uFFFD")
	if len(msg) <= maxMessageBytes {
		return msg
	}
	cut := maxMessageBytes
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "…"
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}
