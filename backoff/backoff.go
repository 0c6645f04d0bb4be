// Package backoff owns the arithmetic of retry delays: exponential growth with a cap and jitter,
// and Retry-After parsing. It does no I/O and reads neither the clock nor a global random
// source; callers inject both, so every result can be reproduced in a test.
package backoff

import (
	"fmt"
	"math"
	"time"
)

// Config tunes Exponential and Compute. Its zero value is not usable (a zero Base would make
// every delay zero), so start from DefaultConfig and check overrides with Validate.
type Config struct {
	// Base is the delay before the first retry.
	Base time.Duration
	// Multiplier is the growth factor per attempt; 1 gives a constant delay.
	Multiplier float64
	// Max caps every delay, the server's Retry-After included, so one misbehaving server cannot
	// park a step for hours.
	Max time.Duration
	// Jitter spreads retries of steps that failed together, so they do not return together.
	Jitter bool
	// JitterFraction is the largest jitter as a share of the delay.
	JitterFraction float64
}

// DefaultConfig returns the project's defaults (1 s base, ×2, 300 s cap, 10 % jitter), which
// match tasker-core's BackoffCalculator.
func DefaultConfig() Config {
	return Config{
		Base:           time.Second,
		Multiplier:     2,
		Max:            300 * time.Second,
		Jitter:         true,
		JitterFraction: 0.1,
	}
}

// maxColumnSeconds is the largest delay backoff_request_seconds (an int4 column) can hold.
const maxColumnSeconds = math.MaxInt32

// Validate reports the first field that is out of range, naming it, so a bad flag fails at start
// with one clear line. JitterFraction is checked even when Jitter is off: a typo should not lie
// dormant until someone turns jitter on.
func (c Config) Validate() error {
	switch {
	case c.Base <= 0:
		return &ConfigError{Field: "base", Problem: fmt.Sprintf("must be > 0, got %s", c.Base)}
	case !(c.Multiplier >= 1) || math.IsInf(c.Multiplier, 1): // the negation also rejects NaN
		return &ConfigError{Field: "multiplier", Problem: fmt.Sprintf("must be a finite number >= 1, got %v", c.Multiplier)}
	case c.Max < c.Base:
		return &ConfigError{Field: "max", Problem: fmt.Sprintf("must be >= base, got max %s < base %s", c.Max, c.Base)}
	case c.Max > maxColumnSeconds*time.Second:
		return &ConfigError{Field: "max", Problem: fmt.Sprintf(
			"must be <= %ds (backoff_request_seconds is an int column), got %s", maxColumnSeconds, c.Max)}
	case !(c.JitterFraction >= 0 && c.JitterFraction <= 1):
		return &ConfigError{Field: "jitter_fraction", Problem: fmt.Sprintf("must be in [0, 1], got %v", c.JitterFraction)}
	}
	return nil
}

// ConfigError names the Config field that is out of range, so a caller can
// point at its own name for it (a flag, a config key).
type ConfigError struct {
	// Field is the snake_case field name: base, multiplier, max, jitter_fraction.
	Field   string
	Problem string
}

func (e *ConfigError) Error() string { return "backoff " + e.Field + " " + e.Problem }

// Source says where a delay came from. It is recorded in transition metadata so an operator can
// tell a server-imposed wait from our own backoff.
type Source string

const (
	// SourceExponential marks a delay computed by Exponential.
	SourceExponential Source = "exponential"
	// SourceRetryAfter marks a delay taken from the server's Retry-After value.
	SourceRetryAfter Source = "retry_after"
)

// Decision is one computed delay. Delay and Jitter are whole seconds because the delay is stored
// in backoff_request_seconds, and a sub-second part would make the due time the sweeper computes
// differ from the one the caller reports.
type Decision struct {
	// Delay is the wait before the next attempt; never negative.
	Delay time.Duration
	// Source says which rule produced Delay.
	Source Source
	// Jitter is the signed jitter actually applied (after clamping to [0, Max]), so that Delay
	// minus Jitter is always the unjittered delay; zero when no jitter was applied.
	Jitter time.Duration
	// Raw is the delay a Policy computed before the cap, the rounding and the jitter (the
	// server's own value for a Retry-After), saturated at the largest time.Duration; Exponential
	// and Compute leave it zero (Policy.Raw gives theirs).
	Raw time.Duration
}

// Seconds returns Delay in whole seconds for the backoff_request_seconds column. It saturates
// instead of wrapping, so a hand-built Decision can never store a negative or wrapped delay.
func (d Decision) Seconds() int32 {
	s := d.Delay / time.Second
	return int32(min(max(s, 0), maxColumnSeconds))
}

// Rand is the injected random source for jitter: Float64 returns a value in [0, 1).
// *math/rand/v2.Rand satisfies it; tests pass a fixed value.
type Rand interface {
	Float64() float64
}

// Exponential returns min(Base × Multiplier^attempts, Max), rounded half up to whole seconds,
// then, when cfg.Jitter is set, moved by a uniform jitter in [-f×d, +f×d] (f = JitterFraction,
// d = the rounded delay) rounded to whole seconds.
//
// The result is clamped to [0, Max]: Max is a promise to the operator, so jitter never exceeds
// it, and a delay at the cap can only be jittered downwards. When Max is not whole seconds, the
// ceiling is Max truncated to whole seconds.
//
// Negative attempts count as 0. Huge attempts (up to math.MaxInt) land on the cap: the power is
// computed in float64, where overflow becomes +Inf rather than wrapping. An unvalidated Config
// still yields a delay in [0, Max], never a panic.
//
// rnd may be nil only when cfg.Jitter is false; Exponential panics otherwise, because silently
// dropping jitter would hide a wiring bug until retries stampede.
func Exponential(cfg Config, attempts int, rnd Rand) Decision {
	if cfg.Jitter && rnd == nil {
		panic("backoff: Exponential with Jitter needs a non-nil Rand")
	}
	ceiling := ceilingSeconds(cfg.Max)
	undelayed := exponentialSeconds(cfg, attempts, ceiling)
	d := Decision{Delay: time.Duration(undelayed) * time.Second, Source: SourceExponential}
	if !cfg.Jitter {
		return d
	}
	jittered := min(max(undelayed+jitterSeconds(undelayed, cfg.JitterFraction, rnd.Float64()), 0), ceiling)
	d.Delay = time.Duration(jittered) * time.Second
	d.Jitter = time.Duration(jittered-undelayed) * time.Second
	return d
}

// ceilingSeconds is the cap in whole seconds, truncated so that a rounded delay never exceeds Max.
func ceilingSeconds(maxDelay time.Duration) int64 {
	return max(int64(maxDelay/time.Second), 0)
}

func exponentialSeconds(cfg Config, attempts int, ceiling int64) int64 {
	raw := cfg.Base.Seconds() * math.Pow(cfg.Multiplier, float64(max(attempts, 0)))
	// Written as a negation so that +Inf (an overflowed power) and NaN (a NaN multiplier) both
	// land on the cap instead of being converted to an undefined int64.
	if !(raw < float64(ceiling)) {
		return ceiling
	}
	if raw <= 0 {
		return 0
	}
	// raw is positive, so math.Round's half-away-from-zero is round half up.
	return int64(math.Round(raw))
}

// jitterSeconds maps r in [0, 1) onto [-fraction×delay, +fraction×delay) and rounds it.
// Rounding to nearest keeps |jitter| <= ceil(fraction×delay). Out-of-range inputs are clamped so
// a misbehaving Rand or an unvalidated fraction cannot push the delay outside its bounds; a NaN
// draw means no jitter rather than the most negative one.
func jitterSeconds(delay int64, fraction, r float64) int64 {
	if math.IsNaN(fraction) {
		fraction = 0
	}
	if math.IsNaN(r) {
		r = 0.5
	}
	fraction = min(max(fraction, 0), 1)
	r = min(max(r, 0), 1)
	return int64(math.Round((2*r - 1) * fraction * float64(delay)))
}

// Compute picks the delay after a failure. A valid Retry-After wins, because the server knows
// when it will accept us again: it is capped at Max and gets no jitter (the server has already
// chosen the moment). Anything else (empty, negative, garbage, a date not in the future) falls
// back to Exponential, so a bad header never means "retry at once".
func Compute(cfg Config, attempts int, retryAfter string, now time.Time, rnd Rand) Decision {
	if delay, ok := ParseRetryAfter(retryAfter, now); ok {
		return Decision{
			Delay:  min(delay, time.Duration(ceilingSeconds(cfg.Max))*time.Second),
			Source: SourceRetryAfter,
		}
	}
	return Exponential(cfg, attempts, rnd)
}
