package sweeper_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// gatedStore is the real store with a gate in front of MoveDueBatch: the
// first batch waits until the test opens the gate, so a sweep can be held
// "in flight" while the test pokes at the scheduler.
type gatedStore struct {
	*db.Store
	entered  chan struct{} // receives once per MoveDueBatch call
	gate     chan struct{}
	once     sync.Once
	active   atomic.Int32
	maxSeen  atomic.Int32
	panicNow atomic.Bool
}

func (g *gatedStore) MoveDueBatch(ctx context.Context, b sweeper.Batch) (sweeper.BatchResult, error) {
	n := g.active.Add(1)
	defer g.active.Add(-1)
	for {
		seen := g.maxSeen.Load()
		if n <= seen || g.maxSeen.CompareAndSwap(seen, n) {
			break
		}
	}
	g.entered <- struct{}{}
	if g.panicNow.Load() {
		panic("injected batch panic")
	}
	g.once.Do(func() { <-g.gate })
	return g.Store.MoveDueBatch(ctx, b)
}

func TestManualTriggerWaitsForScheduledSweep(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	testdb.SeedDue(t, pool, 10)
	store := &gatedStore{Store: db.NewStore(pool), entered: make(chan struct{}, 16), gate: make(chan struct{})}
	cfg := sweeper.Config{BatchSize: 100, Workers: 1, BatchTimeout: 10 * time.Second}
	skipped := make(chan string, 16)
	sched, err := sweeper.NewScheduler(mustNew(t, store, cfg), "@every 1s", discard,
		sweeper.SchedulerOptions{OnSkippedTick: func(reason string) { skipped <- reason }})
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); sched.Run(ctx) }()

	<-store.entered // the scheduled sweep is in flight, held at its first batch
	triggered := make(chan sweeper.Summary, 1)
	go func() {
		sum, err := sched.Trigger(context.Background(), false)
		require.NoError(t, err)
		triggered <- sum
	}()

	// The next tick finds the sweep still running: skipped and counted.
	require.Equal(t, sweeper.SkipSweepRunning, <-skipped)
	select {
	case <-store.entered:
		t.Fatal("the manual sweep started while the scheduled one was running")
	case <-triggered:
		t.Fatal("the manual sweep finished while the scheduled one was running")
	default:
	}

	close(store.gate)
	sum := <-triggered
	require.Zero(t, sum.Transitioned, "the scheduled sweep already moved everything")
	require.Equal(t, int32(1), store.maxSeen.Load(), "sweeps never overlapped")
	cancel()
	<-runDone
}

func TestPanickingSweepIsRecovered(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	testdb.SeedDue(t, pool, 3)
	store := &gatedStore{Store: db.NewStore(pool), entered: make(chan struct{}, 16), gate: make(chan struct{})}
	close(store.gate)
	store.panicNow.Store(true)
	sched, err := sweeper.NewScheduler(mustNew(t, store, sweeper.DefaultConfig()),
		"@hourly", discard, sweeper.SchedulerOptions{})
	require.NoError(t, err)

	_, err = sched.Trigger(context.Background(), false)
	require.ErrorContains(t, err, "panicked")

	store.panicNow.Store(false)
	sum, err := sched.Trigger(context.Background(), false)
	require.NoError(t, err)
	require.Equal(t, 3, sum.Transitioned, "the scheduler keeps working after a panic")
}

func TestSchedulerSkipsTicksWhileDatabaseUnavailable(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	store := &gatedStore{Store: db.NewStore(pool), entered: make(chan struct{}, 16), gate: make(chan struct{})}
	skipped := make(chan string, 16)
	sched, err := sweeper.NewScheduler(mustNew(t, store, sweeper.DefaultConfig()),
		"* * * * * *", discard, sweeper.SchedulerOptions{
			DatabaseReady: func() bool { return false },
			OnSkippedTick: func(reason string) { skipped <- reason },
		})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); sched.Run(ctx) }()
	require.Equal(t, sweeper.SkipDatabaseUnavailable, <-skipped)
	cancel()
	<-done
	require.Empty(t, store.entered, "no sweep ran while the database was unavailable")
}

func TestParseScheduleForms(t *testing.T) {
	t.Parallel()
	for _, spec := range []string{"*/5 * * * *", "*/10 * * * * *", "@every 5s", "@hourly", "0 3 * * MON"} {
		_, err := sweeper.ParseSchedule(spec)
		require.NoError(t, err, spec)
	}
	for _, spec := range []string{"", "every 5s", "* * *", "61 * * * *", "@every -1s", "@sometimes", "@every 500ms"} {
		_, err := sweeper.ParseSchedule(spec)
		require.Error(t, err, spec)
	}
}

// A spec cron parses but that never fires (no such date) is refused: cron's
// Next would return the zero time and the scheduler's timer fire at once.
func TestParseScheduleRefusesSpecsThatNeverFire(t *testing.T) {
	t.Parallel()
	for _, spec := range []string{"0 0 30 2 *", "0 0 31 4 *", "0 0 0 31 11 *", "0 0 30,31 2 *"} {
		_, err := sweeper.ParseSchedule(spec)
		require.ErrorContains(t, err, "never fires", spec)
	}
	sched, err := sweeper.ParseSchedule("0 0 29 2 *") // leap days come round
	require.NoError(t, err)
	require.False(t, sched.Next(time.Now()).IsZero())
}

// scheduleFunc is a cron.Schedule from a function.
type scheduleFunc func(time.Time) time.Time

func (f scheduleFunc) Next(t time.Time) time.Time { return f(t) }

// A schedule with no next time after now (zero, or in the past) fires
// nothing and costs one look per second, logged once; a schedule that
// recovers fires again.
func TestSchedulerNeverSpinsOnAScheduleWithoutANextTime(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	testdb.SeedDue(t, pool, 2)
	sweeps := make(chan sweeper.Summary, 16)
	sw, err := sweeper.New(db.NewStore(pool), sweeper.DefaultConfig(), discard,
		sweeper.Hooks{SweepDone: func(sum sweeper.Summary, _ error) { sweeps <- sum }})
	require.NoError(t, err)

	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var looks atomic.Int32
	sched := scheduleFunc(func(t time.Time) time.Time {
		switch looks.Add(1) {
		case 1, 2:
			return time.Time{} // what cron says for February 30
		case 3:
			return t.Add(-time.Minute) // a broken schedule
		default:
			return t.Add(time.Hour)
		}
	})
	waits := make(chan time.Duration)
	tick := make(chan time.Time)
	after := func(d time.Duration) (<-chan time.Time, func() bool) {
		waits <- d
		return tick, func() bool { return true }
	}
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, nil))
	s := sweeper.NewSchedulerWith(sw, sched, logger, sweeper.SchedulerOptions{},
		func() time.Time { return now }, after)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()

	for range 3 {
		d := receiveWithin(t, waits, "the scheduler to ask for a wait")
		require.Equal(t, time.Second, d, "a schedule without a next time waits the minimum, never zero")
		tick <- now
	}
	require.Equal(t, 1, strings.Count(logs.String(), "no next sweep time"), "logged once: %s", logs)
	require.Empty(t, sweeps, "no sweep fires for a schedule without a next time")

	// The schedule recovers: its next time is honoured and the sweep runs.
	require.Equal(t, time.Hour, receiveWithin(t, waits, "the recovered schedule's wait"))
	tick <- now
	sum := receiveWithin(t, sweeps, "the sweep of the recovered schedule")
	require.Equal(t, 2, sum.Transitioned)
	receiveWithin(t, waits, "the next wait")
	cancel()
	<-done
}

// lockedBuffer is a log destination a test reads while a goroutine writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func receiveWithin[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}
