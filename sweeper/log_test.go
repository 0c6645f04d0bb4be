package sweeper_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// logLines is a JSON log sink a test can count messages in.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// take returns the records logged since the last take.
func (l *logLines) take(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), line)
		out = append(out, rec)
	}
	l.buf.Reset()
	return out
}

// withMsg keeps the records whose message starts with prefix.
func withMsg(recs []map[string]any, prefix string) []map[string]any {
	var out []map[string]any
	for _, r := range recs {
		if msg, _ := r["msg"].(string); strings.HasPrefix(msg, prefix) {
			out = append(out, r)
		}
	}
	return out
}

// The stranded-steps warning is logged when the number changes or every 10
// minutes, not on every sweep; when none are left that is said once.
func TestStrandedWarningIsRateLimited(t *testing.T) {
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		ctx := context.Background()
		pool := testdb.NewFor(t, objects)
		task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 2})
		strand := func(step int) {
			testdb.PlaceInState(t, pool, task.Steps[step], statemachine.WaitingForRetry, 0)
			testdb.SetColumns(t, pool, task.Steps[step], testdb.StepColumns{Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](3)})
		}
		strand(0)
		logs := &logLines{}
		store := db.NewStore(pool)
		sw, err := sweeper.New(store, sweeper.DefaultConfig(), slog.New(slog.NewJSONHandler(logs, nil)), sweeper.Hooks{})
		require.NoError(t, err)
		now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
		sw.SetClock(func() time.Time { return now })
		sweep := func() []map[string]any {
			t.Helper()
			_, err := sw.RunOnce(ctx, false)
			require.NoError(t, err)
			return logs.take(t)
		}
		const warning = "stranded steps: waiting_for_retry but not retry-eligible"

		first := withMsg(sweep(), warning)
		require.Len(t, first, 1)
		require.Equal(t, "WARN", first[0]["level"])
		require.EqualValues(t, 1, first[0]["stranded"])
		for range 5 {
			now = now.Add(time.Minute)
			require.Empty(t, withMsg(sweep(), warning), "the same number within 10 minutes is not logged again")
		}

		strand(1)
		if objects == testdb.WithSweeperObjects {
			_, err := sw.Reconcile(ctx, 0) // the schedule learns of the in-place edit
			require.NoError(t, err)
		}
		changed := withMsg(sweep(), warning)
		require.Len(t, changed, 1, "a new number is logged at once")
		require.EqualValues(t, 2, changed[0]["stranded"])
		now = now.Add(9 * time.Minute)
		require.Empty(t, withMsg(sweep(), warning))
		now = now.Add(time.Minute)
		again := withMsg(sweep(), warning)
		require.Len(t, again, 1, "the same number again after 10 minutes")
		require.EqualValues(t, 2, again[0]["stranded"])

		for step := range 2 {
			testdb.SetColumns(t, pool, task.Steps[step], testdb.StepColumns{MaxAttempts: testdb.Ptr[int32](5)})
		}
		if objects == testdb.WithSweeperObjects {
			_, err := sw.Reconcile(ctx, 0)
			require.NoError(t, err)
		}
		recs := sweep()
		require.Empty(t, withMsg(recs, warning))
		require.Len(t, withMsg(recs, "no stranded steps left"), 1)
		now = now.Add(time.Hour)
		recs = sweep()
		require.Empty(t, withMsg(recs, warning))
		require.Empty(t, withMsg(recs, "no stranded steps left"), "said once")
	})
}
