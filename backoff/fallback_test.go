package backoff_test

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/backoff"
)

func TestFallbackDueTime(t *testing.T) {
	t.Parallel()
	failed := time.Date(2025, time.March, 4, 10, 0, 0, 0, time.UTC)
	ptr := func(n int32) *int32 { return &n }
	tests := []struct {
		name     string
		attempts *int32
		want     time.Duration
	}{
		{"NULL counts as 1", nil, 2 * time.Second},
		{"0", ptr(0), time.Second},
		{"1", ptr(1), 2 * time.Second},
		{"3", ptr(3), 8 * time.Second},
		{"5", ptr(5), 32 * time.Second},
		{"6 hits the cap", ptr(6), 60 * time.Second},
		{"63", ptr(63), 60 * time.Second}, // 1<<63 would be negative in int64
		{"64", ptr(64), 60 * time.Second}, // 1<<64 would be 0
		{"100", ptr(100), 60 * time.Second},
		{"MaxInt32", ptr(math.MaxInt32), 60 * time.Second},
		{"negative counts as 0", ptr(-3), time.Second},
		{"MinInt32", ptr(math.MinInt32), time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, failed.Add(tt.want), backoff.FallbackDueTime(failed, tt.attempts))
		})
	}
}
