package backoff

import (
	"fmt"
	"math"
	"time"
)

// Strategy is how a declared retry policy grows its delay with the attempt
// number n: the names are tasker's task-template `backoff` values.
type Strategy string

// The strategies a task template or a policy rule may name.
const (
	// StrategyNone retries at once: 0 s.
	StrategyNone Strategy = "none"
	// StrategyLinear waits Base × n.
	StrategyLinear Strategy = "linear"
	// StrategyExponential waits Base × Multiplier^n (Multiplier 2: Base × 2ⁿ).
	StrategyExponential Strategy = "exponential"
	// StrategyFibonacci waits Base × F(n), F(1) = F(2) = 1, F(3) = 2, ...
	StrategyFibonacci Strategy = "fibonacci"
)

// Strategies lists every strategy once, in the order documentation names them.
var Strategies = []Strategy{StrategyNone, StrategyLinear, StrategyExponential, StrategyFibonacci}

// ParseStrategy reads a strategy name exactly as tasker spells it.
func ParseStrategy(s string) (Strategy, error) {
	for _, st := range Strategies {
		if string(st) == s {
			return st, nil
		}
	}
	return "", fmt.Errorf("unknown backoff strategy %q: want none, linear, exponential or fibonacci", s)
}

// Sources of the declared strategies, next to SourceExponential and
// SourceRetryAfter: a delay's source is the strategy's name.
const (
	SourceNone      Source = "none"
	SourceLinear    Source = "linear"
	SourceFibonacci Source = "fibonacci"
)

// Policy is a declared retry policy: a strategy with its base, growth, cap and
// jitter. Its delays are capped at Max and then rounded up to whole seconds
// (backoff_request_seconds holds whole seconds, and rounding up never retries
// before the declared delay).
type Policy struct {
	Strategy Strategy
	// Base is the unit every strategy multiplies.
	Base time.Duration
	// Multiplier is the exponential strategy's growth per attempt; the other
	// strategies ignore it.
	Multiplier float64
	// Max caps every delay, a Retry-After included.
	Max time.Duration
	// Jitter and JitterFraction spread delays as Config's do.
	Jitter         bool
	JitterFraction float64
}

// Validate reports the first field out of range, naming it as Config.Validate
// does. StrategyNone needs no base.
func (p Policy) Validate() error {
	if _, err := ParseStrategy(string(p.Strategy)); err != nil {
		return &ConfigError{Field: "strategy", Problem: err.Error()}
	}
	cfg := Config{Base: p.Base, Multiplier: p.Multiplier, Max: p.Max, JitterFraction: p.JitterFraction}
	if p.Strategy == StrategyNone && cfg.Base <= 0 {
		cfg.Base = min(time.Second, max(cfg.Max, 1))
	}
	return cfg.Validate()
}

// maxRaw is the largest raw delay reported in nanoseconds; beyond it a delay is
// only "more than the cap".
const maxRaw = time.Duration(math.MaxInt64)

// Raw returns the strategy's delay for attempt n before the cap and the
// rounding, saturated at the largest time.Duration. n below 1 counts as 1 for
// linear and fibonacci (a failure has been at least one attempt), as 0 for
// exponential (Base × Multiplier⁰ = Base, as Exponential does).
func (p Policy) Raw(n int) time.Duration {
	ns := p.rawNanos(n)
	if !(ns < float64(maxRaw)) { // also +Inf and NaN
		return maxRaw
	}
	if ns <= 0 {
		return 0
	}
	return time.Duration(math.Round(ns))
}

// rawNanos computes in float64 so that no n, however large, overflows: a
// product past the range becomes +Inf and lands on the cap.
func (p Policy) rawNanos(n int) float64 {
	base := float64(p.Base)
	switch p.Strategy {
	case StrategyNone:
		return 0
	case StrategyLinear:
		return base * float64(max(n, 1))
	case StrategyFibonacci:
		return base * fibonacciUpTo(max(n, 1), float64(p.Max)/max(base, 1))
	default: // exponential, and an unvalidated strategy
		return base * math.Pow(p.Multiplier, float64(max(n, 0)))
	}
}

// fibonacciUpTo returns F(n), or the first F(k) above limit when that comes
// sooner: past the cap the exact value does not matter, so huge n cost a few
// dozen steps, never n.
func fibonacciUpTo(n int, limit float64) float64 {
	a, b := 0.0, 1.0 // F(0), F(1)
	for k := 1; k < n; k++ {
		if b > limit {
			return b
		}
		a, b = b, a+b
	}
	return b
}

// ceilSeconds is d rounded up to whole seconds, saturated at the int column.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	s := int64(d / time.Second)
	if d%time.Second != 0 {
		s++
	}
	return min(s, maxColumnSeconds)
}

// CapSeconds is Max rounded up to whole seconds: the longest delay the policy
// gives, jitter and Retry-After included.
func (p Policy) CapSeconds() int64 { return ceilSeconds(p.Max) }

// Delay returns min(Raw(n), Max) rounded up to whole seconds and then, with
// Jitter, moved by a uniform jitter of up to ±JitterFraction of it (whole
// seconds), clamped to [0, CapSeconds]. Decision.Raw is Raw(n).
//
// rnd may be nil only without Jitter.
func (p Policy) Delay(n int, rnd Rand) Decision {
	if p.Jitter && rnd == nil {
		panic("backoff: Policy.Delay with Jitter needs a non-nil Rand")
	}
	raw := p.Raw(n)
	ceiling := p.CapSeconds()
	seconds := ceilSeconds(min(raw, p.Max))
	d := Decision{Delay: time.Duration(seconds) * time.Second, Source: Source(p.Strategy), Raw: raw}
	if !p.Jitter || seconds == 0 {
		return d
	}
	jittered := min(max(seconds+jitterSeconds(seconds, p.JitterFraction, rnd.Float64()), 0), ceiling)
	d.Delay = time.Duration(jittered) * time.Second
	d.Jitter = time.Duration(jittered-seconds) * time.Second
	return d
}

// Compute is Compute for a declared policy: a valid Retry-After wins, capped
// at CapSeconds and without jitter; anything else is Delay(n).
func (p Policy) Compute(n int, retryAfter string, now time.Time, rnd Rand) Decision {
	if delay, ok := ParseRetryAfter(retryAfter, now); ok {
		return Decision{
			Delay:  min(delay, time.Duration(p.CapSeconds())*time.Second),
			Source: SourceRetryAfter,
			Raw:    delay,
		}
	}
	return p.Delay(n, rnd)
}
