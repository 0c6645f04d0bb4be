package handling

import (
	"fmt"
	"strings"
	"time"

	"github.com/tasker-sweeper/retrysweeper/backoff"
)

// Where a retry's delay came from, in order of precedence.
const (
	PolicySourceRetryAfter = "retry_after"
	PolicySourceRule       = "rule"
	PolicySourceTemplate   = "template"
	PolicySourceGlobal     = "global"
)

// PolicyInput is what the declared policies say about one failure, gathered
// by the Service (the template from the database, the rules from the policy
// file) so that deciding stays pure.
type PolicyInput struct {
	// Rules is the policy file in force; nil without one.
	Rules *Policy
	// Template is the step's template policy; nil when none applies, and
	// TemplateNote then says why ("no template", "no entry", the parse
	// error).
	Template     *TemplatePolicy
	TemplateNote string
	// Env is the tasker environment whose overrides were applied.
	Env string
}

// PolicyDecision says which policy decided a failure and how: the
// provenance recorded in the transition metadata (without Why) and what
// `sweeper policy explain` prints.
type PolicyDecision struct {
	// Source is where the delay came from: retry_after, rule, template or
	// global; empty when the failure is not retried.
	Source string `json:"source,omitempty"`
	// Rule is the id of the first matching rule, whatever it set.
	Rule string `json:"rule,omitempty"`
	// Template and TaskerEnv name the template policy that applied.
	Template  string   `json:"template,omitempty"`
	TaskerEnv string   `json:"tasker_env,omitempty"`
	Overrides []string `json:"overrides,omitempty"`
	// The delay's parameters, raw (before the cap, the rounding and the
	// jitter) and applied delay, and the jitter; set when retried.
	Strategy       backoff.Strategy `json:"strategy,omitempty"`
	BaseMs         int64            `json:"base_ms,omitempty"`
	Multiplier     float64          `json:"multiplier,omitempty"`
	CapMs          int64            `json:"cap_ms,omitempty"`
	Jitter         bool             `json:"jitter"`
	JitterFraction float64          `json:"jitter_fraction,omitempty"`
	RawDelayMs     int64            `json:"raw_delay_ms"`
	AppliedSeconds int32            `json:"applied_delay_seconds"`
	JitterSeconds  int64            `json:"jitter_seconds"`
	// PolicyFileHash identifies the policy file in force, if any.
	PolicyFileHash string `json:"policy_file_hash,omitempty"`
	// Why says, in order, what was considered.
	Why []string `json:"why,omitempty"`
}

// metadata is the provenance written into the transition: the decision
// without Why.
func (p *PolicyDecision) metadata() map[string]any {
	m := map[string]any{"jitter": p.Jitter}
	add := func(k string, v any, set bool) {
		if set {
			m[k] = v
		}
	}
	add("source", p.Source, p.Source != "")
	add("rule", p.Rule, p.Rule != "")
	add("template", p.Template, p.Template != "")
	add("tasker_env", p.TaskerEnv, p.TaskerEnv != "")
	add("strategy", string(p.Strategy), p.Strategy != "")
	add("base_ms", p.BaseMs, p.Source != "")
	add("multiplier", p.Multiplier, p.Strategy == backoff.StrategyExponential)
	add("cap_ms", p.CapMs, p.Source != "")
	add("jitter_fraction", p.JitterFraction, p.Jitter)
	add("raw_delay_ms", p.RawDelayMs, p.Source != "")
	add("applied_delay_seconds", p.AppliedSeconds, p.Source != "")
	add("jitter_seconds", p.JitterSeconds, p.Source != "")
	add("policy_file_hash", p.PolicyFileHash, p.PolicyFileHash != "")
	return m
}

// matchContext is what the rules see of a failure on step.
func matchContext(step Step, f Failure, c Classification) MatchContext {
	return MatchContext{
		Category: c.Category, ErrorCode: c.ErrorCode, HTTPStatus: f.HTTPStatus,
		Step: step.Name, Namespace: step.TaskNamespace, Task: step.TaskName,
	}
}

// delayPolicy layers the declared settings over the flags: each parameter
// from the matching rule if it sets it, else from the template policy, else
// from cfg. It returns the source of the delay (rule, template or global) and
// notes for Why.
func delayPolicy(cfg backoff.Config, rule *Rule, tp *TemplatePolicy) (backoff.Policy, string, []string) {
	p := backoff.Policy{
		Strategy: backoff.StrategyExponential, Base: cfg.Base, Multiplier: cfg.Multiplier, Max: cfg.Max,
		Jitter: cfg.Jitter, JitterFraction: cfg.JitterFraction,
	}
	source := PolicySourceGlobal
	var notes []string
	if tp != nil {
		source = PolicySourceTemplate
		p.Strategy = tp.Strategy
		declared := []string{"backoff " + string(tp.Strategy)}
		if tp.Base != nil {
			p.Base = *tp.Base
			declared = append(declared, fmt.Sprintf("backoff_base_ms %d", tp.Base.Milliseconds()))
		} else {
			notes = append(notes, "the template declares no backoff_base_ms: the base is --backoff-base "+cfg.Base.String())
		}
		if tp.Cap != nil {
			p.Max = *tp.Cap
			declared = append(declared, fmt.Sprintf("max_backoff_ms %d", tp.Cap.Milliseconds()))
		} else {
			notes = append(notes, "the template declares no max_backoff_ms: the cap is --backoff-max "+cfg.Max.String())
		}
		over := ""
		if len(tp.Overrides) > 0 {
			over = " (after " + strings.Join(tp.Overrides, ", ") + ")"
		}
		notes = append([]string{fmt.Sprintf("task template %s, step %s: %s%s",
			tp.Template, tp.Step, strings.Join(declared, ", "), over)}, notes...)
	}
	if rule.setsDelay() {
		source = PolicySourceRule
		var set []string
		if rule.Strategy != "" {
			p.Strategy = rule.Strategy
			set = append(set, "strategy "+string(rule.Strategy))
		}
		if rule.Base != nil {
			p.Base = *rule.Base
			set = append(set, "base "+rule.Base.String())
		}
		if rule.Multiplier != nil {
			p.Multiplier = *rule.Multiplier
			set = append(set, fmt.Sprintf("multiplier %v", *rule.Multiplier))
		}
		if rule.Cap != nil {
			p.Max = *rule.Cap
			set = append(set, "cap "+rule.Cap.String())
		}
		if rule.Jitter != nil {
			p.Jitter = *rule.Jitter
			set = append(set, fmt.Sprintf("jitter %v", *rule.Jitter))
		}
		if rule.JitterFraction != nil {
			p.JitterFraction = *rule.JitterFraction
			set = append(set, fmt.Sprintf("jitter fraction %v", *rule.JitterFraction))
		}
		notes = append(notes, fmt.Sprintf("rule %s sets %s", rule.ID, strings.Join(set, ", ")))
	}
	return p, source, notes
}

// computeDelay is the delay of a retry-eligible failure under the layered
// policy: the global flags alone keep the global rule exactly
// (backoff.Compute); a declared policy is capped, then rounded up.
func computeDelay(cfg Config, in PolicyInput, rule *Rule, attempts int, f Failure, now time.Time, rnd backoff.Rand) (backoff.Decision, *PolicyDecision) {
	p, source, notes := delayPolicy(cfg.Backoff, rule, in.Template)
	pd := &PolicyDecision{Source: source, Why: notes}
	var b backoff.Decision
	if source == PolicySourceGlobal {
		b = backoff.Compute(cfg.Backoff, attempts, f.RetryAfter, now, rnd)
		b.Raw = p.Raw(attempts)
		if b.Source == backoff.SourceRetryAfter {
			b.Raw, _ = backoff.ParseRetryAfter(f.RetryAfter, now)
		}
		pd.Why = append(pd.Why, "no rule or template policy sets the delay: the global flags (exponential, rounded to the nearest second)")
	} else {
		b = p.Compute(attempts, f.RetryAfter, now, rnd)
	}
	if b.Source == backoff.SourceRetryAfter {
		pd.Source = PolicySourceRetryAfter
		pd.Why = append(pd.Why, fmt.Sprintf("Retry-After %q is valid and wins, capped at %ds", f.RetryAfter, p.CapSeconds()))
	} else if f.RetryAfter != "" {
		pd.Why = append(pd.Why, fmt.Sprintf("Retry-After %q is not a valid delay: ignored", f.RetryAfter))
	}
	pd.Strategy = p.Strategy
	pd.BaseMs = p.Base.Milliseconds()
	pd.Multiplier = p.Multiplier
	pd.CapMs = p.Max.Milliseconds()
	pd.Jitter = p.Jitter && b.Source != backoff.SourceRetryAfter
	if pd.Jitter {
		pd.JitterFraction = p.JitterFraction
	}
	pd.RawDelayMs = b.Raw.Milliseconds()
	pd.AppliedSeconds = b.Seconds()
	pd.JitterSeconds = int64(b.Jitter / time.Second)
	if in.Template != nil {
		pd.Template = in.Template.Template
		pd.Overrides = in.Template.Overrides
	}
	if b.Source != backoff.SourceRetryAfter {
		pd.Why = append(pd.Why, fmt.Sprintf("%s for attempt %d: raw %s, capped at %s and rounded up: %ds, jitter %+ds",
			p.Strategy, attempts, b.Raw, p.Max, pd.AppliedSeconds-int32(pd.JitterSeconds), pd.JitterSeconds))
	}
	return b, pd
}
