package backoff_test

import (
	"math"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/tasker-sweeper/retrysweeper/backoff"
)

// oneHour is tasker's largest max_backoff_ms.
const oneHour = time.Hour

func policy(s backoff.Strategy, base, maxDelay time.Duration) backoff.Policy {
	return backoff.Policy{Strategy: s, Base: base, Multiplier: 2, Max: maxDelay}
}

// bigFib is F(n) computed with arbitrary precision, independently of the
// package's float arithmetic.
func bigFib(n int) *big.Int {
	a, b := big.NewInt(0), big.NewInt(1)
	for range n - 1 {
		a.Add(a, b)
		a, b = b, a
	}
	return b
}

// want is min(base_ms × factor, cap_ms) rounded up to whole seconds, in exact
// integer arithmetic.
func want(baseMs int64, factor *big.Int, capMs int64) time.Duration {
	ms := new(big.Int).Mul(big.NewInt(baseMs), factor)
	if ms.Cmp(big.NewInt(capMs)) > 0 {
		ms = big.NewInt(capMs)
	}
	seconds := (ms.Int64() + 999) / 1000
	return time.Duration(seconds) * time.Second
}

// Every strategy for n = 1…40, against exact integer arithmetic, with a cap
// that each growing strategy reaches within the range, and bases that are and
// are not whole seconds.
func TestStrategiesForTheFirstFortyAttempts(t *testing.T) {
	t.Parallel()
	factors := map[backoff.Strategy]func(n int) *big.Int{
		backoff.StrategyNone:        func(int) *big.Int { return big.NewInt(0) },
		backoff.StrategyLinear:      func(n int) *big.Int { return big.NewInt(int64(n)) },
		backoff.StrategyExponential: func(n int) *big.Int { return new(big.Int).Lsh(big.NewInt(1), uint(n)) },
		backoff.StrategyFibonacci:   bigFib,
	}
	for _, strategy := range backoff.Strategies {
		for _, c := range []struct{ baseMs, capMs int64 }{
			{1000, 3_600_000}, // tasker's default base, its largest cap
			{100, 30_000},     // its smallest base: tenths of a second round up
			{1500, 3_600_000}, // a base that is not whole seconds
			{250, 1_500},      // a cap that is not whole seconds
			{3_600_000, 3_600_000},
		} {
			p := policy(strategy, time.Duration(c.baseMs)*time.Millisecond, time.Duration(c.capMs)*time.Millisecond)
			for n := 1; n <= 40; n++ {
				got := p.Delay(n, nil)
				require.Equal(t, want(c.baseMs, factors[strategy](n), c.capMs), got.Delay,
					"%s base %dms cap %dms n=%d", strategy, c.baseMs, c.capMs, n)
				require.Equal(t, backoff.Source(strategy), got.Source)
				require.Zero(t, got.Jitter)
			}
		}
	}
}

// Exact values of the sequences, written out: a mistake in the comparison
// arithmetic above would not hide one here.
func TestStrategySequencesSpelledOut(t *testing.T) {
	t.Parallel()
	tests := []struct {
		strategy backoff.Strategy
		seconds  []int64 // n = 1, 2, ...
	}{
		{backoff.StrategyNone, []int64{0, 0, 0, 0, 0, 0}},
		{backoff.StrategyLinear, []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{backoff.StrategyExponential, []int64{2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600}},
		{backoff.StrategyFibonacci, []int64{1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 3600}},
	}
	for _, tt := range tests {
		p := policy(tt.strategy, time.Second, oneHour)
		for i, s := range tt.seconds {
			require.Equal(t, time.Duration(s)*time.Second, p.Delay(i+1, nil).Delay, "%s n=%d", tt.strategy, i+1)
		}
	}
}

// Huge attempt counts land on the cap without overflowing, wrapping or
// looping n times.
func TestStrategiesHugeAttempts(t *testing.T) {
	t.Parallel()
	for _, strategy := range []backoff.Strategy{backoff.StrategyLinear, backoff.StrategyExponential, backoff.StrategyFibonacci} {
		for _, base := range []time.Duration{100 * time.Millisecond, time.Second, time.Hour} {
			p := policy(strategy, base, oneHour)
			for _, n := range []int{1 << 20, 1 << 40, math.MaxInt32, math.MaxInt - 1, math.MaxInt} {
				got := p.Delay(n, nil)
				require.Equal(t, oneHour, got.Delay, "%s base %s n=%d", strategy, base, n)
				require.Positive(t, got.Raw, "%s base %s n=%d: raw saturates, never wraps", strategy, base, n)
			}
		}
	}
	// The smallest base a flag allows grows past the cap too.
	for _, strategy := range []backoff.Strategy{backoff.StrategyExponential, backoff.StrategyFibonacci} {
		require.Equal(t, oneHour, policy(strategy, time.Nanosecond, oneHour).Delay(200, nil).Delay, "%s", strategy)
	}
	// The largest cap the column can hold, and more: saturated, never negative.
	p := backoff.Policy{Strategy: backoff.StrategyExponential, Base: time.Hour, Multiplier: 2, Max: time.Duration(math.MaxInt64)}
	got := p.Delay(math.MaxInt, nil)
	require.Equal(t, time.Duration(math.MaxInt32)*time.Second, got.Delay)
	require.Equal(t, int32(math.MaxInt32), got.Seconds())
	require.Equal(t, time.Duration(math.MaxInt64), got.Raw)
}

// n below 1 (a NULL attempts column) is 1 for linear and fibonacci and 0 for
// exponential, as the global rule has it.
func TestStrategiesBelowOneAttempt(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, -1, math.MinInt} {
		require.Equal(t, time.Second, policy(backoff.StrategyLinear, time.Second, oneHour).Delay(n, nil).Delay)
		require.Equal(t, time.Second, policy(backoff.StrategyFibonacci, time.Second, oneHour).Delay(n, nil).Delay)
		require.Equal(t, time.Second, policy(backoff.StrategyExponential, time.Second, oneHour).Delay(n, nil).Delay)
	}
}

// The cap applies before the rounding: a cap of 1.5 s gives 2 s, never 1 s.
func TestStrategyCapThenRoundUp(t *testing.T) {
	t.Parallel()
	p := policy(backoff.StrategyLinear, time.Second, 1500*time.Millisecond)
	require.Equal(t, time.Second, p.Delay(1, nil).Delay)
	require.Equal(t, 2*time.Second, p.Delay(2, nil).Delay)
	require.Equal(t, 2*time.Second, p.Delay(3, nil).Delay)
	require.Equal(t, 3*time.Second, p.Raw(3))
	require.Equal(t, int64(2), p.CapSeconds())
	// 1 ms over a whole second is the next second.
	require.Equal(t, 2*time.Second, policy(backoff.StrategyLinear, 1001*time.Millisecond, oneHour).Delay(1, nil).Delay)
	// Exactly whole seconds stay put (no float noise: 0.1 s × 10 is 1 s, not 2).
	require.Equal(t, time.Second, policy(backoff.StrategyLinear, 100*time.Millisecond, oneHour).Delay(10, nil).Delay)
	require.Equal(t, 3*time.Second, policy(backoff.StrategyLinear, 100*time.Millisecond, oneHour).Delay(30, nil).Delay)
}

// Jitter moves a declared delay by up to ±fraction, in whole seconds, never
// above the cap nor below 0; a zero delay is not jittered.
func TestStrategyJitter(t *testing.T) {
	t.Parallel()
	p := backoff.Policy{
		Strategy: backoff.StrategyLinear, Base: 10 * time.Second, Multiplier: 2, Max: 100 * time.Second,
		Jitter: true, JitterFraction: 0.1,
	}
	low := p.Delay(5, fixedRand(0)) // 50 s − 5 s
	require.Equal(t, 45*time.Second, low.Delay)
	require.Equal(t, -5*time.Second, low.Jitter)
	high := p.Delay(10, fixedRand(0.999)) // at the cap: only downwards
	require.Equal(t, 100*time.Second, high.Delay)
	require.Zero(t, high.Jitter)
	none := backoff.Policy{Strategy: backoff.StrategyNone, Max: time.Minute, Jitter: true, JitterFraction: 1}
	require.Zero(t, none.Delay(3, fixedRand(0.999)).Delay)

	rapid.Check(t, func(t *rapid.T) {
		strategy := rapid.SampledFrom(backoff.Strategies).Draw(t, "strategy")
		base := time.Duration(rapid.Int64Range(int64(100*time.Millisecond), int64(time.Hour)).Draw(t, "base"))
		maxDelay := time.Duration(rapid.Int64Range(int64(time.Second), int64(time.Hour)).Draw(t, "max"))
		p := backoff.Policy{
			Strategy: strategy, Base: base, Multiplier: 2, Max: maxDelay, Jitter: true,
			JitterFraction: rapid.Float64Range(0, 1).Draw(t, "fraction"),
		}
		n := rapid.IntRange(-5, 1000).Draw(t, "n")
		d := p.Delay(n, fixedRand(rapid.Float64Range(0, 0.9999).Draw(t, "r")))
		if d.Delay < 0 || d.Delay > time.Duration(p.CapSeconds())*time.Second || d.Delay%time.Second != 0 {
			t.Fatalf("delay %s outside [0, %ds] or not whole seconds", d.Delay, p.CapSeconds())
		}
		plain := p
		plain.Jitter = false
		if unjittered := plain.Delay(n, nil); unjittered.Delay != d.Delay-d.Jitter {
			t.Fatalf("jitter %s does not explain %s (unjittered %s)", d.Jitter, d.Delay, unjittered.Delay)
		}
	})
}

// A valid Retry-After wins over the strategy, capped at the policy's cap
// (rounded up like its delays); a bad one falls back to the strategy.
func TestPolicyComputeRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	p := policy(backoff.StrategyFibonacci, time.Second, 90500*time.Millisecond)
	got := p.Compute(7, "30", now, nil)
	require.Equal(t, backoff.Decision{Delay: 30 * time.Second, Source: backoff.SourceRetryAfter, Raw: 30 * time.Second}, got)
	capped := p.Compute(7, "7200", now, nil)
	require.Equal(t, 91*time.Second, capped.Delay)
	require.Equal(t, 2*time.Hour, capped.Raw)
	fallback := p.Compute(7, "soon", now, nil)
	require.Equal(t, 13*time.Second, fallback.Delay)
	require.Equal(t, backoff.SourceFibonacci, fallback.Source)
}

func TestParseStrategyAndValidate(t *testing.T) {
	t.Parallel()
	for _, s := range backoff.Strategies {
		got, err := backoff.ParseStrategy(string(s))
		require.NoError(t, err)
		require.Equal(t, s, got)
	}
	for _, bad := range []string{"", "Exponential", "constant", "fixed"} {
		_, err := backoff.ParseStrategy(bad)
		require.Error(t, err, bad)
	}
	require.NoError(t, backoff.Policy{Strategy: backoff.StrategyNone, Max: time.Second, Multiplier: 1}.Validate())
	require.NoError(t, policy(backoff.StrategyLinear, time.Second, time.Minute).Validate())
	var ce *backoff.ConfigError
	require.ErrorAs(t, policy("constant", time.Second, time.Minute).Validate(), &ce)
	require.Equal(t, "strategy", ce.Field)
	require.ErrorAs(t, policy(backoff.StrategyLinear, time.Minute, time.Second).Validate(), &ce)
	require.Equal(t, "max", ce.Field)
}
