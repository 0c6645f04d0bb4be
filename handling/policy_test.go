package handling_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/backoff"
	"github.com/tasker-sweeper/retrysweeper/handling"
)

const examplePolicy = `# rules are tried in order; the first that matches decides
rules:
  - id: payments-rate-limit
    match:
      category: RateLimit
      http_status: [429, 5xx]
      step: "charge_*"
      namespace: payments
      task: [refund, checkout]
    strategy: linear
    base: 5s
    cap: 2m
    jitter: 0.2
  - id: no-retry-on-validation
    match: {error_code: [VALIDATION_ERROR, http_422]}
    retryable: false
  - match: {category: [Timeout, Network]}
    max_attempts: 2
    multiplier: 3
    jitter: false
`

func TestParsePolicyYAMLAndJSON(t *testing.T) {
	t.Parallel()
	p, err := handling.ParsePolicy("policy.yaml", []byte(examplePolicy))
	require.NoError(t, err)
	require.Equal(t, "policy.yaml", p.Path)
	require.Regexp(t, `^sha256:[0-9a-f]{16}$`, p.Hash)
	require.Len(t, p.Rules, 3)
	r := p.Rules[0]
	require.Equal(t, "payments-rate-limit", r.ID)
	require.Equal(t, 3, r.Line)
	require.Equal(t, []handling.Category{handling.CategoryRateLimit}, r.Match.Categories)
	require.Equal(t, []handling.StatusRange{{Low: 429, High: 429}, {Low: 500, High: 599}}, r.Match.HTTPStatuses)
	require.Equal(t, []string{"charge_*"}, r.Match.Steps)
	require.Equal(t, []string{"refund", "checkout"}, r.Match.Tasks)
	require.Equal(t, backoff.StrategyLinear, r.Strategy)
	require.Equal(t, 5*time.Second, *r.Base)
	require.Equal(t, 2*time.Minute, *r.Cap)
	require.True(t, *r.Jitter)
	require.InDelta(t, 0.2, *r.JitterFraction, 0)
	require.Equal(t, "rule-3", p.Rules[2].ID, "a rule without an id is named by its position")
	require.Equal(t, 2, *p.Rules[2].MaxAttempts)
	require.False(t, *p.Rules[2].Jitter)
	require.False(t, *p.Rules[1].Retryable)

	j, err := handling.ParsePolicy("policy.json", []byte(`{
  "rules": [
    {"id": "slow-partner", "match": {"namespace": "partners"}, "strategy": "fibonacci", "base": "2s", "cap": "10m"}
  ]
}`))
	require.NoError(t, err)
	require.Equal(t, 3, j.Rules[0].Line)
	require.Equal(t, backoff.StrategyFibonacci, j.Rules[0].Strategy)
	require.NotEqual(t, p.Hash, j.Hash)

	empty, err := handling.ParsePolicy("empty.yaml", nil)
	require.NoError(t, err)
	require.Empty(t, empty.Rules)
}

// Every mistake names the file, the line and the problem.
func TestParsePolicyErrorsNameTheLine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, content string
		line          int
		problem       string
	}{
		{"syntax", "rules:\n  - id: a\n    base: 5s\n    cap: 1m: 2\n", 4, "mapping values are not allowed"},
		{"json syntax", "{\"rules\": [\n  {\"id\": \"a\",\n   \"base\": \"5s\"\n  ]}\n", 4, "invalid JSON"},
		{"json semantics", "{\"rules\": [\n  {\"id\": \"a\",\n   \"base\": 5}\n]}\n", 3, `base "5"`},
		{"top-level key", "rules: []\nrule:\n  - id: a\n", 2, `unknown key "rule"`},
		{"not a list", "rules: {id: a}\n", 1, "want a list of rules"},
		{"unknown rule key", "rules:\n  - id: a\n    strategy: linear\n    retry_in: 5s\n", 4, `unknown key "retry_in"`},
		{"unknown strategy", "rules:\n  - id: a\n    strategy: constant\n", 3, `unknown backoff strategy "constant"`},
		{"bad duration", "rules:\n  - id: a\n    base: 5\n", 3, `base "5": want a duration`},
		{"zero base", "rules:\n  - id: a\n    base: 0s\n", 3, "base 0s"},
		{"short cap", "rules:\n  - id: a\n    cap: 500ms\n", 3, "cap 500ms"},
		{"cap below base", "rules:\n  - id: a\n    base: 1m\n    cap: 30s\n", 2, "cap 30s is below base 1m0s"},
		{"multiplier", "rules:\n  - id: a\n    multiplier: 0.5\n", 3, "multiplier 0.5"},
		{"jitter", "rules:\n  - id: a\n    jitter: 2\n", 3, `jitter "2"`},
		{"retryable", "rules:\n  - id: a\n    retryable: maybe\n", 3, `retryable "maybe": want true or false`},
		{"max_attempts", "rules:\n  - id: a\n    max_attempts: 0\n", 3, `max_attempts "0"`},
		{"category", "rules:\n  - id: a\n    match: {category: Flaky}\n    retryable: true\n", 3, `category "Flaky"`},
		{"http status", "rules:\n  - id: a\n    match:\n      http_status: [429, 700]\n    retryable: true\n", 4, `http_status "700"`},
		{"condition", "rules:\n  - id: a\n    match: {kind: x}\n    retryable: true\n", 3, `unknown condition "kind"`},
		{"pattern", "rules:\n  - id: a\n    match: {step: \"[a\"}\n    retryable: true\n", 3, `step pattern "[a"`},
		{"empty list", "rules:\n  - id: a\n    match: {task: []}\n    retryable: true\n", 3, "an empty list matches nothing"},
		{"sets nothing", "rules:\n  - id: a\n    match: {task: t}\n", 2, "rule a sets nothing"},
		{"duplicate id", "rules:\n  - {id: a, retryable: true}\n  - {id: a, retryable: false}\n", 3, `rule id "a" is already used by the rule on line 2`},
		{"bad id", "rules:\n  - {id: \"a b\", retryable: true}\n", 2, `id "a b"`},
	}
	for _, tt := range tests {
		_, err := handling.ParsePolicy("/etc/sweeper/policy.yaml", []byte(tt.content))
		var pe *handling.PolicyError
		require.ErrorAs(t, err, &pe, tt.name)
		require.Equal(t, tt.line, pe.Line, "%s: %v", tt.name, err)
		require.Contains(t, pe.Problem, tt.problem, tt.name)
		require.Regexp(t, `^/etc/sweeper/policy\.yaml:\d+: `, err.Error(), tt.name)
		require.NotContains(t, err.Error(), "\n", tt.name)
	}
}

func TestRuleMatching(t *testing.T) {
	t.Parallel()
	p, err := handling.ParsePolicy("p.yaml", []byte(examplePolicy))
	require.NoError(t, err)
	base := handling.MatchContext{
		Category: handling.CategoryRateLimit, ErrorCode: "HTTP_429", HTTPStatus: 429,
		Step: "charge_card", Namespace: "payments", Task: "checkout",
	}
	require.Equal(t, "payments-rate-limit", p.First(base).ID)
	for name, change := range map[string]func(*handling.MatchContext){
		"category":  func(m *handling.MatchContext) { m.Category = handling.CategoryTransient },
		"status":    func(m *handling.MatchContext) { m.HTTPStatus = 404 },
		"step":      func(m *handling.MatchContext) { m.Step = "refund_card" },
		"namespace": func(m *handling.MatchContext) { m.Namespace = "shipping" },
		"task":      func(m *handling.MatchContext) { m.Task = "subscribe" },
	} {
		mc := base
		change(&mc)
		require.Nil(t, p.First(mc), "%s no longer matches", name)
	}
	five := base
	five.HTTPStatus = 503
	require.Equal(t, "payments-rate-limit", p.First(five).ID, "5xx is a class")
	require.Equal(t, "no-retry-on-validation", p.First(handling.MatchContext{ErrorCode: "HTTP_422"}).ID, "codes ignore case")
	require.Equal(t, "rule-3", p.First(handling.MatchContext{Category: handling.CategoryNetwork}).ID)
	require.Nil(t, (*handling.Policy)(nil).First(base))
}

// decideAt decides a failure of step under the rules and the template.
func decideAt(t *testing.T, cfg handling.Config, rules string, tp *handling.TemplatePolicy, step handling.Step, f handling.Failure) handling.Decision {
	t.Helper()
	in := handling.PolicyInput{Template: tp}
	if rules != "" {
		p, err := handling.ParsePolicy("p.yaml", []byte(rules))
		require.NoError(t, err)
		in.Rules = p
	}
	ec := handling.ErrorContext{
		StepName: step.Name, Message: f.Message, Kind: f.Kind, HTTPStatus: f.HTTPStatus,
		AttemptNumber: int(*step.Attempts), MaxAttempts: int(*step.MaxAttempts),
	}
	return handling.DecideWithPolicy(cfg, in, step, f, handling.StandardClassifier{}.Classify(ec), decideNow, nil)
}

// Precedence: the worker's verdict and a valid Retry-After, then the first
// matching rule, then the template's step policy, then the flags.
func TestPolicyPrecedence(t *testing.T) {
	t.Parallel()
	cfg := jitterOff() // flags: exponential 1 s × 2ⁿ, cap 300 s
	fib := &handling.TemplatePolicy{
		Template: "ns/t", Step: "fetch", Strategy: backoff.StrategyFibonacci,
		Base: dur(4 * time.Second), Cap: dur(20 * time.Second),
	}
	linearRule := "rules:\n  - {id: lin, match: {step: fetch}, strategy: linear, base: 3s}\n"
	yes, no := true, false
	tests := []struct {
		name     string
		rules    string
		template *handling.TemplatePolicy
		step     handling.Step
		failure  handling.Failure
		action   handling.Action
		seconds  int32 // when retried
		source   string
		rule     string
	}{
		{
			"flags alone", "", nil, failedStep(3, 10),
			handling.Failure{Message: "boom"},
			handling.ActionTransitionedToWaitingForRetry, 8, handling.PolicySourceGlobal, "",
		},
		{
			"template over flags", "", fib, failedStep(3, 10),
			handling.Failure{Message: "boom"},
			handling.ActionTransitionedToWaitingForRetry, 8, handling.PolicySourceTemplate, "",
		},
		{
			"template cap", "", fib, failedStep(9, 10),
			handling.Failure{Message: "boom"},
			handling.ActionTransitionedToWaitingForRetry, 20, handling.PolicySourceTemplate, "",
		},
		{
			"rule over template (the template's cap stays)", linearRule, fib, failedStep(9, 10),
			handling.Failure{Message: "boom"},
			handling.ActionTransitionedToWaitingForRetry, 20, handling.PolicySourceRule, "lin",
		},
		{
			"rule over template", linearRule, fib, failedStep(3, 10),
			handling.Failure{Message: "boom"},
			handling.ActionTransitionedToWaitingForRetry, 9, handling.PolicySourceRule, "lin",
		},
		{
			"a rule that does not match", "rules:\n  - {id: other, match: {step: send}, strategy: none}\n", fib, failedStep(3, 10),
			handling.Failure{Message: "boom"},
			handling.ActionTransitionedToWaitingForRetry, 8, handling.PolicySourceTemplate, "",
		},
		{
			"first matching rule wins", "rules:\n  - {id: first, match: {category: Transient}, strategy: none}\n" +
				"  - {id: second, strategy: linear}\n", nil, failedStep(3, 10),
			handling.Failure{Message: "boom"},
			handling.ActionTransitionedToWaitingForRetry, 0, handling.PolicySourceRule, "first",
		},
		{
			"Retry-After over rule, capped at the rule's cap", "rules:\n  - {id: c, strategy: linear, cap: 45s}\n", fib, failedStep(3, 10),
			handling.Failure{Message: "slow down", HTTPStatus: 429, RetryAfter: "600"},
			handling.ActionTransitionedToWaitingForRetry, 45, handling.PolicySourceRetryAfter, "c",
		},
		{
			"Retry-After over template, capped at its cap", "", fib, failedStep(3, 10),
			handling.Failure{Message: "slow down", HTTPStatus: 429, RetryAfter: "600"},
			handling.ActionTransitionedToWaitingForRetry, 20, handling.PolicySourceRetryAfter, "",
		},
		{
			"Retry-After under the cap", "", fib, failedStep(3, 10),
			handling.Failure{Message: "slow down", HTTPStatus: 429, RetryAfter: "7"},
			handling.ActionTransitionedToWaitingForRetry, 7, handling.PolicySourceRetryAfter, "",
		},
		{
			"rule not retryable over the classifier", "rules:\n  - {id: stop, match: {category: Transient}, retryable: false}\n", fib,
			failedStep(1, 10),
			handling.Failure{Message: "boom"},
			handling.ActionMarkedAsPermanentFailure, 0, "", "stop",
		},
		{
			"rule retryable over the classifier", "rules:\n  - {id: again, match: {http_status: 404}, retryable: true}\n", fib,
			failedStep(2, 10),
			handling.Failure{Message: "not found", HTTPStatus: 404},
			handling.ActionTransitionedToWaitingForRetry, 4, handling.PolicySourceTemplate, "again",
		},
		{
			"worker's false over the rule's true", "rules:\n  - {id: again, retryable: true}\n", nil,
			failedStep(1, 10),
			handling.Failure{Message: "boom", Retryable: &no},
			handling.ActionMarkedAsPermanentFailure, 0, "", "again",
		},
		{
			"worker's true over the rule's false", "rules:\n  - {id: stop, retryable: false, strategy: linear}\n", nil,
			failedStep(2, 10),
			handling.Failure{Message: "boom", Retryable: &yes},
			handling.ActionTransitionedToWaitingForRetry, 2, handling.PolicySourceRule, "stop",
		},
		{
			"a rule cannot retry a step that is not retryable", "rules:\n  - {id: again, retryable: true}\n", nil,
			notRetryable(failedStep(1, 10)),
			handling.Failure{Message: "boom"},
			handling.ActionMarkedAsPermanentFailure, 0, "", "again",
		},
		{
			"rule stops earlier", "rules:\n  - {id: two, max_attempts: 2}\n", fib, failedStep(2, 10),
			handling.Failure{Message: "boom"},
			handling.ActionMarkedAsError, 0, "", "two",
		},
		{
			"rule does not raise max_attempts", "rules:\n  - {id: many, max_attempts: 50}\n", fib, failedStep(3, 3),
			handling.Failure{Message: "boom"},
			handling.ActionMarkedAsError, 0, "", "many",
		},
		{
			"below the rule's limit", "rules:\n  - {id: two, max_attempts: 2}\n", nil, failedStep(1, 10),
			handling.Failure{Message: "boom"},
			handling.ActionTransitionedToWaitingForRetry, 2, handling.PolicySourceGlobal, "two",
		},
	}
	for _, tt := range tests {
		d := decideAt(t, cfg, tt.rules, tt.template, tt.step, tt.failure)
		require.Equal(t, tt.action, d.Action, "%s: %s", tt.name, d.Reason)
		require.NotNil(t, d.Policy, tt.name)
		require.Equal(t, tt.rule, d.Policy.Rule, tt.name)
		meta := d.Provenance["retry_policy"].(map[string]any)
		if tt.rule != "" {
			require.Equal(t, tt.rule, meta["rule"], tt.name)
			require.NotEmpty(t, meta["policy_file_hash"], tt.name)
		}
		if tt.action != handling.ActionTransitionedToWaitingForRetry {
			require.Nil(t, d.BackoffSeconds, tt.name)
			require.Empty(t, d.Policy.Source, tt.name)
			continue
		}
		require.Equal(t, tt.seconds, *d.BackoffSeconds, tt.name)
		require.Equal(t, tt.source, d.Policy.Source, tt.name)
		require.Equal(t, tt.source, meta["source"], tt.name)
		require.Equal(t, tt.seconds, meta["applied_delay_seconds"], tt.name)
		require.NotEmpty(t, d.Policy.Why, tt.name)
	}
}

// Absent base or cap fall back to the flags, whatever the strategy.
func TestTemplateWithoutBaseOrCapUsesTheFlags(t *testing.T) {
	t.Parallel()
	cfg := jitterOff()
	cfg.Backoff.Base = 2 * time.Second
	cfg.Backoff.Max = 11 * time.Second
	for _, tt := range []struct {
		tp      handling.TemplatePolicy
		seconds []int32
	}{
		{handling.TemplatePolicy{Strategy: backoff.StrategyLinear}, []int32{2, 4, 6, 8, 10, 11, 11}},
		{handling.TemplatePolicy{Strategy: backoff.StrategyLinear, Base: dur(500 * time.Millisecond)}, []int32{1, 1, 2, 2, 3}},
		{handling.TemplatePolicy{Strategy: backoff.StrategyFibonacci, Cap: dur(4 * time.Second)}, []int32{2, 2, 4, 4, 4}},
		{handling.TemplatePolicy{Strategy: backoff.StrategyExponential, Cap: dur(90 * time.Second)}, []int32{4, 8, 16, 32, 64, 90}},
	} {
		for i, want := range tt.seconds {
			d := decideAt(t, cfg, "", &tt.tp, failedStep(int32(i+1), 100), handling.Failure{Message: "boom"})
			require.Equal(t, want, *d.BackoffSeconds, "%+v attempt %d", tt.tp, i+1)
			wantCap := cfg.Backoff.Max
			if tt.tp.Cap != nil {
				wantCap = *tt.tp.Cap
			}
			require.Equal(t, wantCap.Milliseconds(), d.Policy.CapMs)
		}
	}
}

// Jitter as configured: the flags' jitter applies to a template policy, a
// rule may turn it off or change its fraction.
func TestPolicyJitter(t *testing.T) {
	t.Parallel()
	cfg := handling.DefaultConfig() // jitter on, 0.1
	tp := &handling.TemplatePolicy{Strategy: backoff.StrategyLinear, Base: dur(10 * time.Second), Cap: dur(time.Hour)}
	in := handling.PolicyInput{Template: tp}
	step := failedStep(10, 100) // 100 s before jitter
	c := classify(t, step, "boom")
	d := handling.DecideWithPolicy(cfg, in, step, handling.Failure{Message: "boom"}, c, decideNow, fixedRand(0))
	require.Equal(t, int32(90), *d.BackoffSeconds)
	require.Equal(t, int64(-10), d.Policy.JitterSeconds)
	require.True(t, d.Policy.Jitter)

	off, err := handling.ParsePolicy("p.yaml", []byte("rules:\n  - {id: calm, jitter: false}\n"))
	require.NoError(t, err)
	in.Rules = off
	d = handling.DecideWithPolicy(cfg, in, step, handling.Failure{Message: "boom"}, c, decideNow, fixedRand(0))
	require.Equal(t, int32(100), *d.BackoffSeconds)
	require.False(t, d.Policy.Jitter)

	wide, err := handling.ParsePolicy("p.yaml", []byte("rules:\n  - {id: wide, jitter: 0.5}\n"))
	require.NoError(t, err)
	in.Rules = wide
	d = handling.DecideWithPolicy(cfg, in, step, handling.Failure{Message: "boom"}, c, decideNow, fixedRand(0))
	require.Equal(t, int32(50), *d.BackoffSeconds)
	require.Equal(t, handling.PolicySourceRule, d.Policy.Source)
}
