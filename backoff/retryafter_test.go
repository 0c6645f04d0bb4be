package backoff_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/backoff"
)

// now has a sub-second part so that date delays exercise the round-up.
var now = time.Date(2025, time.March, 4, 10, 20, 30, 250_000_000, time.UTC)

func TestParseRetryAfterSeconds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		value string
		want  time.Duration
	}{
		{"120", 120 * time.Second},
		{" 120 ", 120 * time.Second},
		{"\t120\r\n", 120 * time.Second},
		{"0", 0},
		{"007", 7 * time.Second},
		{"9223372036", 9223372036 * time.Second}, // the largest whole-second Duration
	}
	for _, tt := range tests {
		got, ok := backoff.ParseRetryAfter(tt.value, now)
		require.True(t, ok, "%q", tt.value)
		require.Equal(t, tt.want, got, "%q", tt.value)
	}
}

func TestParseRetryAfterHTTPDates(t *testing.T) {
	t.Parallel()
	at := now.Add(120 * time.Second) // the formats drop the 0.25 s, so the wait is 119.75 s
	tests := []struct {
		name  string
		value string
	}{
		{"IMF-fixdate", at.Format(http.TimeFormat)},
		{"RFC 850 GMT", at.In(time.FixedZone("GMT", 0)).Format(time.RFC850)},
		{"RFC 850 UTC", at.Format(time.RFC850)},
		{"asctime", at.Format(time.ANSIC)},
		{"padded asctime", " " + at.Format(time.ANSIC) + " "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Cross-check that the value is one net/http also reads as this instant.
			parsed, err := http.ParseTime(tt.value)
			if tt.name != "padded asctime" {
				require.NoError(t, err)
				require.True(t, parsed.Equal(at.Truncate(time.Second)), "net/http read %s", parsed)
			}
			got, ok := backoff.ParseRetryAfter(tt.value, now)
			require.True(t, ok, "%q", tt.value)
			require.Equal(t, 120*time.Second, got, "%q", tt.value)
		})
	}
}

func TestParseRetryAfterRoundsDateUp(t *testing.T) {
	t.Parallel()
	at := time.Date(2025, time.March, 4, 10, 20, 31, 0, time.UTC) // 0.75 s after now
	got, ok := backoff.ParseRetryAfter(at.Format(http.TimeFormat), now)
	require.True(t, ok)
	require.Equal(t, time.Second, got)
}

func TestParseRetryAfterRejects(t *testing.T) {
	t.Parallel()
	whole := now.Truncate(time.Second)
	tests := []struct {
		name  string
		value string
		now   time.Time
	}{
		{"empty", "", now},
		{"whitespace only", "  \t ", now},
		{"negative", "-5", now},
		{"plus sign", "+5", now},
		{"garbage", "abc", now},
		{"fraction", "1.5", now},
		{"inner space", "1 20", now},
		{"overflows int64", "99999999999999999999", now},
		{"overflows Duration", "9223372037", now},
		{"past date", now.Add(-time.Minute).Format(http.TimeFormat), now},
		{"date equal to now", whole.Format(http.TimeFormat), whole},
		{"date within the second before now", whole.Format(http.TimeFormat), now},
		// Read as GMT, this EST date would still be 19 h in the future, so only the zone check
		// rejects it.
		{"non-GMT zone", now.Add(24 * time.Hour).In(time.FixedZone("EST", -5*3600)).Format(time.RFC850), now},
		{"date too far for a Duration", time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC).Format(http.TimeFormat), now},
		{"RFC 3339 is not an HTTP date", now.Add(time.Hour).Format(time.RFC3339), now},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := backoff.ParseRetryAfter(tt.value, tt.now)
			require.False(t, ok, "%q parsed as %s", tt.value, got)
			require.Zero(t, got)
		})
	}
}

func TestComputeRetryAfterWins(t *testing.T) {
	t.Parallel()
	cfg := backoff.DefaultConfig()
	tests := []struct {
		name       string
		retryAfter string
		want       time.Duration
	}{
		{"seconds", "120", 120 * time.Second},
		{"capped at max", "7200", 300 * time.Second},
		{"zero means now", "0", 0},
		{"date", now.Add(120 * time.Second).Format(http.TimeFormat), 120 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// A draw of 0 would subtract jitter if any were applied.
			got := backoff.Compute(cfg, 5, tt.retryAfter, now, fixedRand(0))
			require.Equal(t, backoff.Decision{Delay: tt.want, Source: backoff.SourceRetryAfter}, got)
		})
	}
}

func TestComputeFallsBackToExponential(t *testing.T) {
	t.Parallel()
	cfg := backoff.DefaultConfig()
	whole := now.Truncate(time.Second)
	for _, value := range []string{
		"", "-5", "abc", "1.5", "99999999999999999999",
		now.Add(-time.Hour).Format(http.TimeFormat),
	} {
		got := backoff.Compute(cfg, 3, value, now, fixedRand(0.5))
		require.Equal(t, backoff.Decision{Delay: 8 * time.Second, Source: backoff.SourceExponential}, got, "%q", value)
	}
	got := backoff.Compute(cfg, 3, whole.Format(http.TimeFormat), whole, fixedRand(0))
	require.Equal(t, backoff.Decision{Delay: 7 * time.Second, Source: backoff.SourceExponential, Jitter: -time.Second}, got,
		"a date equal to now falls back, with jitter")
}
