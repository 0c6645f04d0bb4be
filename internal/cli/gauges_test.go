package cli

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// The backlog is counted after the database first answers, then at most
// once per interval however often it answers (and no sooner than ten times
// the last count took); never while it is down; a failing count keeps the
// last values and is logged once.
func TestGaugeLoopRefreshesAtMostOncePerInterval(t *testing.T) {
	t.Parallel()
	up := make(chan struct{}) // unbuffered: a send returns once the loop took the previous one
	var dbUp atomic.Bool
	var counts atomic.Int32
	var fail atomic.Bool
	var mu sync.Mutex
	var set []sweeper.Backlog
	var logs syncBuffer
	var clock atomic.Int64 // nanoseconds past a fixed start
	var took atomic.Int64  // how long a count takes on that clock
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	g := &gaugeLoop{
		now:   func() time.Time { return start.Add(time.Duration(clock.Load())) },
		every: time.Hour,
		backlog: func(context.Context) (sweeper.Backlog, error) {
			n := counts.Add(1)
			clock.Add(took.Load())
			if fail.Load() {
				return sweeper.Backlog{}, errors.New("statement timeout")
			}
			return sweeper.Backlog{Waiting: int64(n)}, nil
		},
		set:    func(b sweeper.Backlog) { mu.Lock(); set = append(set, b); mu.Unlock() },
		dbUp:   dbUp.Load,
		up:     up,
		ready:  func(context.Context) {},
		logger: slog.New(slog.NewTextHandler(&logs, nil)),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); g.run(ctx) }()
	defer func() { cancel(); <-done }()

	// The database is down: nothing is counted.
	up <- struct{}{}
	up <- struct{}{}
	require.Zero(t, counts.Load())

	dbUp.Store(true)
	up <- struct{}{}
	up <- struct{}{} // taken once the first refresh is done
	up <- struct{}{}
	require.EqualValues(t, 1, counts.Load(), "one count per interval")
	mu.Lock()
	require.Equal(t, []sweeper.Backlog{{Waiting: 1}}, set)
	mu.Unlock()

	// The next interval, with a failing count: logged once, the gauges kept.
	fail.Store(true)
	for range 3 {
		clock.Add(int64(time.Hour))
		up <- struct{}{}
		up <- struct{}{} // the same interval: taken once the count above is done
	}
	require.EqualValues(t, 4, counts.Load())
	require.Equal(t, 1, bytes.Count([]byte(logs.String()), []byte("backlog gauges not refreshed")), logs.String())
	mu.Lock()
	require.Len(t, set, 1, "a failed count sets nothing")
	mu.Unlock()
	fail.Store(false)
	clock.Add(int64(time.Hour))
	up <- struct{}{}
	up <- struct{}{}
	require.Contains(t, logs.String(), "backlog gauges refreshed again")
	mu.Lock()
	require.Equal(t, []sweeper.Backlog{{Waiting: 1}, {Waiting: 5}}, set)
	mu.Unlock()

	// A count that took 2 h: the next one waits 10 times as long.
	took.Store(int64(2 * time.Hour))
	clock.Add(int64(time.Hour))
	up <- struct{}{}
	up <- struct{}{}
	require.EqualValues(t, 6, counts.Load())
	clock.Add(int64(17 * time.Hour)) // 19 h after it started
	up <- struct{}{}
	up <- struct{}{}
	require.EqualValues(t, 6, counts.Load(), "not before 20 h")
	clock.Add(int64(time.Hour))
	up <- struct{}{}
	up <- struct{}{}
	require.EqualValues(t, 7, counts.Load())
}
