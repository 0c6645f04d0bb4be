package backoff_test

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/tasker-sweeper/retrysweeper/backoff"
)

// fixedRand returns the same draw every time, so a jittered delay is reproducible.
type fixedRand float64

func (r fixedRand) Float64() float64 { return float64(r) }

func noJitter(cfg backoff.Config) backoff.Config {
	cfg.Jitter = false
	return cfg
}

func TestExponentialDefaultsWithoutJitter(t *testing.T) {
	t.Parallel()
	// Indexed by attempts: 2^attempts seconds until the 300 s cap at attempts 9.
	want := []int64{
		1, 2, 4, 8, 16, 32, 64, 128, 256, 300, // 0..9
		300, 300, 300, 300, 300, 300, 300, 300, 300, 300, // 10..19
		300, 300, 300, 300, 300, 300, 300, 300, 300, 300, // 20..29
		300, 300, 300, 300, 300, 300, 300, 300, 300, 300, // 30..39
		300, // 40
	}
	require.Len(t, want, 41)
	cfg := noJitter(backoff.DefaultConfig())
	for attempts, seconds := range want {
		got := backoff.Exponential(cfg, attempts, nil)
		require.Equal(t, time.Duration(seconds)*time.Second, got.Delay, "attempts %d", attempts)
		require.Equal(t, backoff.SourceExponential, got.Source, "attempts %d", attempts)
		require.Zero(t, got.Jitter, "attempts %d", attempts)
	}
}

func TestExponentialExtremeAttempts(t *testing.T) {
	t.Parallel()
	cfg := noJitter(backoff.DefaultConfig())
	tests := []struct {
		name     string
		attempts int
		want     time.Duration
	}{
		{"1<<20", 1 << 20, 300 * time.Second},
		{"1<<30", 1 << 30, 300 * time.Second},
		{"MaxInt32", math.MaxInt32, 300 * time.Second},
		{"MaxInt", math.MaxInt, 300 * time.Second},
		{"-1", -1, time.Second},
		{"-100", -100, time.Second},
		{"MinInt", math.MinInt, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, backoff.Exponential(cfg, tt.attempts, nil).Delay)
		})
	}
}

func TestExponentialNonIntegerMultiplier(t *testing.T) {
	t.Parallel()
	cfg := backoff.Config{Base: 2 * time.Second, Multiplier: 1.5, Max: 60 * time.Second}
	// 2 × 1.5^n = 2, 3, 4.5, 6.75, 10.125, 15.1875, 22.78…, 34.17…, 51.26…, 76.88… (capped);
	// halves round up (4.5 → 5).
	want := []int64{2, 3, 5, 7, 10, 15, 23, 34, 51, 60, 60}
	for attempts, seconds := range want {
		got := backoff.Exponential(cfg, attempts, nil)
		require.Equal(t, time.Duration(seconds)*time.Second, got.Delay, "attempts %d", attempts)
	}
}

func TestExponentialSubSecondMaxIsTruncated(t *testing.T) {
	t.Parallel()
	// 1.5 s rounds up to 2 s, but Max is a hard ceiling, truncated to whole seconds.
	cfg := backoff.Config{Base: 1500 * time.Millisecond, Multiplier: 1, Max: 1999 * time.Millisecond}
	require.Equal(t, time.Second, backoff.Exponential(cfg, 0, nil).Delay)
}

func TestExponentialJitterIsDeterministicAndClamped(t *testing.T) {
	t.Parallel()
	cfg := backoff.DefaultConfig() // fraction 0.1
	tests := []struct {
		name       string
		attempts   int
		draw       float64
		wantDelay  time.Duration
		wantJitter time.Duration
	}{
		// 8 s ± 0.8 s.
		{"lowest draw", 3, 0, 7 * time.Second, -time.Second},
		{"middle draw", 3, 0.5, 8 * time.Second, 0},
		{"high draw", 3, 0.99, 9 * time.Second, time.Second},
		{"small draw rounds to zero", 3, 0.3, 8 * time.Second, 0}, // -0.32 s
		// 300 s ± 30 s, but never above Max.
		{"cap jittered down", 9, 0, 270 * time.Second, -30 * time.Second},
		{"cap not jittered up", 9, 0.99, 300 * time.Second, 0},
		// A broken source is clamped to [0, 1]; NaN means no jitter.
		{"draw above one", 3, 7, 9 * time.Second, time.Second},
		{"draw below zero", 3, -7, 7 * time.Second, -time.Second},
		{"NaN draw", 3, math.NaN(), 8 * time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := backoff.Exponential(cfg, tt.attempts, fixedRand(tt.draw))
			require.Equal(t, backoff.Decision{
				Delay:  tt.wantDelay,
				Source: backoff.SourceExponential,
				Jitter: tt.wantJitter,
			}, got)
		})
	}
}

func TestExponentialFullJitterNeverNegative(t *testing.T) {
	t.Parallel()
	cfg := backoff.DefaultConfig()
	cfg.JitterFraction = 1
	got := backoff.Exponential(cfg, 2, fixedRand(0)) // 4 s - 4 s
	require.Equal(t, time.Duration(0), got.Delay)
	require.Equal(t, -4*time.Second, got.Jitter)
}

func TestExponentialPanicsOnNilRandWithJitter(t *testing.T) {
	t.Parallel()
	require.PanicsWithValue(t, "backoff: Exponential with Jitter needs a non-nil Rand", func() {
		backoff.Exponential(backoff.DefaultConfig(), 0, nil)
	})
}

func TestExponentialInvalidConfigStaysInBounds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  backoff.Config
		want time.Duration
	}{
		{"NaN multiplier", backoff.Config{Base: time.Second, Multiplier: math.NaN(), Max: 10 * time.Second}, 10 * time.Second},
		{"negative base", backoff.Config{Base: -time.Second, Multiplier: 2, Max: 10 * time.Second}, 0},
		{"negative max", backoff.Config{Base: time.Second, Multiplier: 2, Max: -time.Second}, 0},
		{"max below base", backoff.Config{Base: 20 * time.Second, Multiplier: 2, Max: 10 * time.Second}, 10 * time.Second},
		{"fraction above one", backoff.Config{Base: 4 * time.Second, Multiplier: 1, Max: 10 * time.Second, Jitter: true, JitterFraction: 5}, 0},
		{"NaN fraction", backoff.Config{Base: 4 * time.Second, Multiplier: 1, Max: 10 * time.Second, Jitter: true, JitterFraction: math.NaN()}, 4 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, backoff.Exponential(tt.cfg, 3, fixedRand(0)).Delay)
		})
	}
}

func TestExponentialProperties(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		base := time.Duration(rapid.Int64Range(1, 10_000).Draw(t, "base_ms")) * time.Millisecond
		cfg := backoff.Config{
			Base:           base,
			Multiplier:     rapid.Float64Range(1, 10).Draw(t, "multiplier"),
			Max:            base + time.Duration(rapid.Int64Range(0, 1_000_000).Draw(t, "max_extra_ms"))*time.Millisecond,
			Jitter:         true,
			JitterFraction: rapid.Float64Range(0, 1).Draw(t, "fraction"),
		}
		require.NoError(t, cfg.Validate())
		attempts := rapid.OneOf(rapid.IntRange(-5, 64), rapid.Int()).Draw(t, "attempts")
		draw := rapid.Float64Range(0, 1).Filter(func(f float64) bool { return f < 1 }).Draw(t, "draw")

		plain := backoff.Exponential(noJitter(cfg), attempts, nil)
		got := backoff.Exponential(cfg, attempts, fixedRand(draw))

		require.GreaterOrEqual(t, got.Delay, time.Duration(0))
		require.LessOrEqual(t, got.Delay, cfg.Max)
		require.LessOrEqual(t, plain.Delay, cfg.Max)
		require.Zero(t, got.Delay%time.Second, "delay %s not whole seconds", got.Delay)
		require.Zero(t, got.Jitter%time.Second, "jitter %s not whole seconds", got.Jitter)
		require.Equal(t, plain.Delay+got.Jitter, got.Delay)

		bound := time.Duration(math.Ceil(cfg.JitterFraction*plain.Delay.Seconds())) * time.Second
		require.LessOrEqual(t, got.Jitter.Abs(), bound)

		// Growth never reverses: one more attempt never shortens the unjittered delay.
		if attempts < math.MaxInt {
			next := backoff.Exponential(noJitter(cfg), attempts+1, nil)
			require.GreaterOrEqual(t, next.Delay, plain.Delay)
		}
	})
}

func TestDecisionSeconds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		delay time.Duration
		want  int32
	}{
		{0, 0},
		{300 * time.Second, 300},
		{1500 * time.Millisecond, 1},
		{-time.Second, 0},
		{math.MaxInt32 * time.Second, math.MaxInt32},
		{math.MaxInt64, math.MaxInt32},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, backoff.Decision{Delay: tt.delay}.Seconds(), "delay %s", tt.delay)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, backoff.DefaultConfig().Validate())

	tests := []struct {
		name    string
		mutate  func(*backoff.Config)
		wantErr string
	}{
		{"zero base", func(c *backoff.Config) { c.Base = 0 }, "backoff base must be > 0"},
		{"negative base", func(c *backoff.Config) { c.Base = -time.Second }, "backoff base must be > 0"},
		{"multiplier below one", func(c *backoff.Config) { c.Multiplier = 0.5 }, "backoff multiplier must be"},
		{"NaN multiplier", func(c *backoff.Config) { c.Multiplier = math.NaN() }, "backoff multiplier must be"},
		{"infinite multiplier", func(c *backoff.Config) { c.Multiplier = math.Inf(1) }, "backoff multiplier must be"},
		{"max below base", func(c *backoff.Config) { c.Max = 500 * time.Millisecond }, "backoff max must be >= base"},
		{"max beyond int column", func(c *backoff.Config) { c.Max = (math.MaxInt32 + 1) * time.Second }, "backoff max must be <="},
		{"negative fraction", func(c *backoff.Config) { c.JitterFraction = -0.1 }, "backoff jitter_fraction must be in [0, 1]"},
		{"fraction above one", func(c *backoff.Config) { c.JitterFraction = 1.1 }, "backoff jitter_fraction must be in [0, 1]"},
		{"NaN fraction", func(c *backoff.Config) { c.JitterFraction = math.NaN() }, "backoff jitter_fraction must be in [0, 1]"},
		{"bad fraction with jitter off", func(c *backoff.Config) { c.Jitter = false; c.JitterFraction = 2 }, "backoff jitter_fraction"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := backoff.DefaultConfig()
			tt.mutate(&cfg)
			require.ErrorContains(t, cfg.Validate(), tt.wantErr)
		})
	}

	t.Run("edges accepted", func(t *testing.T) {
		t.Parallel()
		cfg := backoff.Config{Base: time.Second, Multiplier: 1, Max: time.Second, JitterFraction: 0}
		require.NoError(t, cfg.Validate())
		cfg.JitterFraction = 1
		cfg.Max = math.MaxInt32 * time.Second
		require.NoError(t, cfg.Validate())
	})
}
