package sweeper_test

import (
	"context"
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
	for _, spec := range []string{"", "every 5s", "* * *", "61 * * * *", "@every -1s", "@sometimes"} {
		_, err := sweeper.ParseSchedule(spec)
		require.Error(t, err, spec)
	}
}
