package handling

import (
	"fmt"
	"time"

	"github.com/tasker-sweeper/retrysweeper/backoff"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// TaskerDefaultMaxAttempts is the attempt limit of a step whose max_attempts
// is NULL. It is tasker's: its readiness rule reads coalesce(max_attempts, 3),
// and so does every query of the sweep. It is not configurable on purpose: a
// handler that parked steps under any other limit would park steps the
// orchestrator and the sweep then call not retry-eligible (stranded), or fail
// steps they would still retry.
const TaskerDefaultMaxAttempts = 3

// ConflictError means the step is in a state from which the transition a
// failure needs is illegal (complete, cancelled, ...). It matches ErrConflict
// under errors.Is. Nothing is written.
type ConflictError struct {
	Step  Step
	Event statemachine.EventType
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%v: step %s is %s, where %s is not allowed", ErrConflict, e.Step.StepUUID, e.Step.State, e.Event)
}

// Unwrap lets errors.Is(err, ErrConflict) match.
func (e *ConflictError) Unwrap() error { return ErrConflict }

// Decision is what one failure report does to one step, decided without any
// I/O: the action, what to write (a transition event, a backoff, both or
// nothing) and the words for the operator. Decide makes it; the Service
// writes it.
type Decision struct {
	// Action is the outcome; empty when Conflict is set.
	Action Action
	// FinalState is the step's state once the decision is written: the state
	// it was read in when nothing changes it (repeated report, legacy mode,
	// conflict).
	FinalState statemachine.State
	// Event is the transition to write, from the state the step was read in;
	// nil writes no transition.
	Event *statemachine.Event
	// BackoffSeconds, when set, is written to backoff_request_seconds (with
	// last_attempted_at = now()); nil writes no backoff.
	BackoffSeconds *int32
	// BackoffSource says which rule chose BackoffSeconds; empty without one.
	BackoffSource backoff.Source
	// JitterSeconds is the signed jitter included in BackoffSeconds.
	JitterSeconds int64
	// Provenance is merged into the transition metadata; nil when nothing is
	// written.
	Provenance map[string]any
	// Reason says in words why Action was chosen.
	Reason string
	// Attempts is the step's attempts column (NULL as 0): it already counts
	// the attempt that just failed.
	Attempts int
	// MaxAttempts is max_attempts, TaskerDefaultMaxAttempts when NULL.
	MaxAttempts int
	// Conflict is a *ConflictError when the step's state forbids the
	// transition the failure needs; nothing is written then.
	Conflict error
	// Policy says which policy decided and why; nil for a repeated report.
	Policy *PolicyDecision
	// Rule is the policy file's rule that matched, nil when none did.
	Rule *Rule
}

// Writes reports whether the decision writes anything.
func (d Decision) Writes() bool {
	return d.Conflict == nil && (d.Event != nil || d.BackoffSeconds != nil)
}

// Eligible reports whether a failure on step is retry-eligible: the step is
// retryable, the error is, and attempts are left. The error is retryable when
// its classification says so, unless the worker said otherwise (the worker's
// verdict counts only while classification is on: off, every error is
// permanent).
func Eligible(cfg Config, step Step, f Failure, c Classification) bool {
	return eligible(cfg, step, f, c, nil)
}

// eligible is Eligible under the matching rule of a policy file (nil: none):
// its retryable stands in for the classifier's verdict (never for the
// worker's), and its max_attempts stops retries earlier (never later).
func eligible(cfg Config, step Step, f Failure, c Classification, rule *Rule) bool {
	return step.Retryable && errorRetryable(cfg, f, c, rule) && step.attempts() < attemptLimit(step, rule)
}

func errorRetryable(cfg Config, f Failure, c Classification, rule *Rule) bool {
	switch {
	case f.Retryable != nil && cfg.UseErrorClassification:
		return *f.Retryable
	case rule != nil && rule.Retryable != nil && cfg.UseErrorClassification:
		return *rule.Retryable
	}
	return c.Retryable
}

// attemptLimit is max_attempts, lowered by the rule's max_attempts.
func attemptLimit(step Step, rule *Rule) int {
	limit := step.maxAttempts()
	if rule != nil && rule.MaxAttempts != nil {
		limit = min(limit, *rule.MaxAttempts)
	}
	return limit
}

// Decide decides what a failure f does to step, given its classification c:
//
//   - a step already in waiting_for_retry or error was handled by an earlier
//     report: NoActionTaken, nothing written;
//   - a retry-eligible failure (see Eligible) gets a backoff (Retry-After,
//     judged against now, or exponential with jitter from rnd) and the
//     WaitForRetry transition: TransitionedToWaitingForRetry; in legacy mode
//     (cfg.UseWaitingForRetryState off) the backoff only, and NoActionTaken;
//   - any other failure gets the Fail transition: MarkedAsError when only the
//     attempts ran out, MarkedAsPermanentFailure when the error or the step is
//     not retryable;
//   - a transition the step's state forbids is a Conflict.
//
// f.Message is written as is: the Service cleans it first. Decide applies
// cfg.Policy's rules and no template policy; DecideWithPolicy takes both.
func Decide(cfg Config, step Step, f Failure, c Classification, now time.Time, rnd backoff.Rand) Decision {
	return DecideWithPolicy(cfg, PolicyInput{Rules: cfg.Policy}, step, f, c, now, rnd)
}

// DecideWithPolicy is Decide under declared policies, with this precedence:
// the worker's explicit retryable verdict and a valid Retry-After, then the
// first matching rule of in.Rules, then in.Template (the step's template
// policy), then cfg's flags. A rule's retryable replaces the classifier's
// verdict, its max_attempts can only stop retries earlier, and each delay
// parameter comes from the first layer that sets it. Decision.Policy says
// what applied and why.
func DecideWithPolicy(cfg Config, in PolicyInput, step Step, f Failure, c Classification, now time.Time, rnd backoff.Rand) Decision {
	d := Decision{FinalState: step.State, Attempts: step.attempts(), MaxAttempts: step.maxAttempts()}

	if step.State == statemachine.WaitingForRetry || step.State == statemachine.Error {
		d.Action = ActionNoActionTaken
		d.Reason = "step already in " + string(step.State) + ": failure already handled"
		return d
	}

	prov := map[string]any{
		"actor":                 "tasker-sweeper/inline-handler",
		"error_source":          f.Source,
		"category":              string(c.Category),
		"error_code":            c.ErrorCode,
		"classification_reason": c.Reason,
		"attempts":              d.Attempts,
		"max_attempts":          d.MaxAttempts,
	}
	if f.HTTPStatus != 0 {
		prov["http_status"] = f.HTTPStatus
	}

	rule := in.Rules.First(matchContext(step, f, c))
	d.Rule = rule
	why := ruleWhy(in.Rules, rule)
	if in.Template == nil && in.TemplateNote != "" {
		why = append(why, in.TemplateNote)
	}
	if !eligible(cfg, step, f, c, rule) {
		d.Policy = &PolicyDecision{Why: why}
		d = decideFail(cfg, step, f, c, d, prov, rule)
		d.Policy.Why = append(d.Policy.Why, d.Reason)
		finishPolicy(d.Policy, in, rule)
		prov["retry_policy"] = d.Policy.metadata()
		return d
	}
	if cfg.UseWaitingForRetryState && !statemachine.CanTransition(step.State, statemachine.EventWaitForRetry) {
		return conflict(d, step, statemachine.EventWaitForRetry)
	}

	b, pd := computeDelay(cfg, in, rule, d.Attempts, f, now, rnd)
	pd.Why = append(why, pd.Why...)
	finishPolicy(pd, in, rule)
	d.Policy = pd
	prov["retry_policy"] = pd.metadata()
	seconds := b.Seconds()
	d.BackoffSeconds = &seconds
	d.BackoffSource = b.Source
	d.JitterSeconds = int64(b.Jitter / time.Second)
	prov["backoff_seconds"] = seconds
	prov["backoff_source"] = string(b.Source)
	prov["jitter_seconds"] = d.JitterSeconds
	if b.Source == backoff.SourceRetryAfter {
		prov["retry_after"] = f.RetryAfter
	}
	d.Provenance = prov

	if !cfg.UseWaitingForRetryState {
		d.Action = ActionNoActionTaken
		d.Reason = "legacy mode: backoff written, state left to the orchestrator"
		return d
	}
	ev := statemachine.WaitForRetryEvent(f.Message)
	d.Event = &ev
	d.Action = ActionTransitionedToWaitingForRetry
	d.FinalState = statemachine.WaitingForRetry
	d.Reason = fmt.Sprintf("retryable %s failure, attempt %d of %d", c.Category, d.Attempts, d.MaxAttempts)
	if limit := attemptLimit(step, rule); limit < d.MaxAttempts {
		d.Reason += fmt.Sprintf(" (rule %s stops at %d)", rule.ID, limit)
	}
	prov["why"] = "retryable failure, backoff scheduled"
	return d
}

// ruleWhy says which rule matched, if any.
func ruleWhy(p *Policy, rule *Rule) []string {
	switch {
	case p == nil:
		return []string{"no policy file"}
	case rule == nil:
		return []string{fmt.Sprintf("no rule of %s (%d rules) matches", p.Path, len(p.Rules))}
	default:
		return []string{fmt.Sprintf("rule %s (%s line %d) is the first that matches", rule.ID, p.Path, rule.Line)}
	}
}

// finishPolicy adds what every PolicyDecision records.
func finishPolicy(pd *PolicyDecision, in PolicyInput, rule *Rule) {
	if rule != nil {
		pd.Rule = rule.ID
	}
	if in.Rules != nil {
		pd.PolicyFileHash = in.Rules.Hash
	}
	if in.Template != nil {
		pd.TaskerEnv = in.Env
	}
}

// decideFail is Decide for a failure that is not retry-eligible.
func decideFail(cfg Config, step Step, f Failure, c Classification, d Decision, prov map[string]any, rule *Rule) Decision {
	if !statemachine.CanTransition(step.State, statemachine.EventFail) {
		return conflict(d, step, statemachine.EventFail)
	}
	switch {
	case !cfg.UseErrorClassification:
		d.Action = ActionMarkedAsPermanentFailure
		d.Reason = "error classification disabled: every error is permanent"
	case f.Retryable != nil && !*f.Retryable:
		d.Action = ActionMarkedAsPermanentFailure
		d.Reason = "worker reported the error as not retryable"
	case f.Retryable == nil && rule != nil && rule.Retryable != nil && !*rule.Retryable:
		d.Action = ActionMarkedAsPermanentFailure
		d.Reason = fmt.Sprintf("policy rule %s: not retryable", rule.ID)
	case f.Retryable == nil && (rule == nil || rule.Retryable == nil) && !c.Retryable:
		d.Action = ActionMarkedAsPermanentFailure
		d.Reason = fmt.Sprintf("%s errors are not retryable", c.Category)
	case !step.Retryable:
		d.Action = ActionMarkedAsPermanentFailure
		d.Reason = "step is not retryable"
	case d.Attempts < d.MaxAttempts:
		d.Action = ActionMarkedAsError
		d.Reason = fmt.Sprintf("policy rule %s stops after %d attempts (%d of %d made)", rule.ID, attemptLimit(step, rule), d.Attempts, d.MaxAttempts)
	default:
		d.Action = ActionMarkedAsError
		d.Reason = fmt.Sprintf("attempts exhausted (%d of %d)", d.Attempts, d.MaxAttempts)
	}
	prov["why"] = d.Reason
	ev := statemachine.FailEvent(f.Message)
	d.Event = &ev
	d.FinalState = statemachine.Error
	d.Provenance = prov
	return d
}

func conflict(d Decision, step Step, ev statemachine.EventType) Decision {
	d.Conflict = &ConflictError{Step: step, Event: ev}
	return d
}

// classificationDisabled is the verdict when error classification is off:
// every error is permanent.
func classificationDisabled(ec ErrorContext) Classification {
	return Classification{
		Category:     CategoryPermanent,
		Retryable:    false,
		ErrorCode:    "CLASSIFICATION_DISABLED",
		Message:      ec.Message,
		FinalAttempt: ec.AttemptNumber >= ec.MaxAttempts,
		Reason:       "classification_disabled",
	}
}

// attempts is the attempts column, NULL as 0.
func (s Step) attempts() int { return int(deref(s.Attempts, 0)) }

// maxAttempts is the max_attempts column, NULL as TaskerDefaultMaxAttempts.
func (s Step) maxAttempts() int { return int(deref(s.MaxAttempts, TaskerDefaultMaxAttempts)) }
