package sweeper

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testGate is a gate on a fixed local clock whose database clock runs skew
// ahead of it (no store: it is never asked to probe here).
func testGate(t *testing.T, now time.Time, skew time.Duration) *gate {
	t.Helper()
	g := newGate(nil, GateOptions{Gap: 15 * time.Millisecond, Stagger: 5 * time.Millisecond, MaxSleep: time.Minute},
		slog.New(slog.DiscardHandler), func() time.Time { return now })
	g.off.Store(false) // no store, but the arming logic is what is tested
	g.skew, g.skewAt = skew, now
	t.Cleanup(func() { g.timer.Stop() })
	return g
}

func TestCeilGrid(t *testing.T) {
	t.Parallel()
	gap := 15 * time.Millisecond
	base := time.Unix(0, 0).Add(1000 * gap) // on the grid
	require.Equal(t, base.UTC(), ceilGrid(base, gap), "a grid point stays")
	require.Equal(t, base.Add(gap).UTC(), ceilGrid(base.Add(time.Nanosecond), gap))
	require.Equal(t, base.Add(gap).UTC(), ceilGrid(base.Add(gap-time.Nanosecond), gap))
}

// Wake-ups fall on the database clock's grid, converted with the measured
// skew: the incumbent on the dot, the others up to the stagger later.
func TestArmOnTheGridWithSkewAndStagger(t *testing.T) {
	t.Parallel()
	local := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	skew := 3*time.Second + 7*time.Millisecond // the database clock is ahead
	g := testGate(t, local, skew)
	due := local.Add(skew).Add(2 * time.Second).Add(time.Millisecond)
	grid := ceilGrid(due, g.opts.Gap)

	g.incumbent = true
	g.armLocked(due, TriggerNotify)
	require.Equal(t, grid, g.armedGrid)
	require.Equal(t, grid.Add(-skew), g.armedAt, "the incumbent wakes on the dot, in local time")
	require.Equal(t, TriggerNotify, g.armedReason)
	require.False(t, g.armedAt.Add(skew).Before(due), "never before the due time on the database clock")

	for range 50 {
		g.armedAt = time.Time{}
		g.incumbent = false
		g.armLocked(due, TriggerNotify)
		require.GreaterOrEqual(t, g.armedAt.Sub(grid.Add(-skew)), time.Duration(0))
		require.Less(t, g.armedAt.Sub(grid.Add(-skew)), g.opts.Stagger, "the others wait at most the stagger")
	}
}

// An armed grid point is replaced only by an earlier one, which also
// brings its reason.
func TestArmKeepsTheEarliestGridPoint(t *testing.T) {
	t.Parallel()
	local := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	g := testGate(t, local, 0)
	g.incumbent = true
	g.armLocked(local.Add(2*time.Second), TriggerNotify)
	first := g.armedGrid
	g.armLocked(local.Add(3*time.Second), TriggerTimer)
	g.armLocked(first.Add(-time.Nanosecond), TriggerTimer) // the same grid point
	require.Equal(t, first, g.armedGrid)
	require.Equal(t, TriggerNotify, g.armedReason)
	g.armLocked(local.Add(time.Second), TriggerAdoption)
	require.Equal(t, ceilGrid(local.Add(time.Second), g.opts.Gap), g.armedGrid)
	require.Equal(t, TriggerAdoption, g.armedReason)
}

// No two timed wake-ups closer than the gap; a replica that keeps missing
// (another took the batch) skips more grid points, up to 4 gaps; the sleep
// is capped.
func TestArmGapBackoffAndCap(t *testing.T) {
	t.Parallel()
	local := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	g := testGate(t, local, 0)
	gap := g.opts.Gap
	g.incumbent = true
	g.lastGrid = ceilGrid(local, gap)
	g.armLocked(local, TriggerTimer) // due now: the next grid point after the gap
	require.Equal(t, g.lastGrid.Add(gap), g.armedGrid)

	for misses, want := range []time.Duration{1, 2, 4, 4, 4} {
		g.armedAt = time.Time{}
		g.misses = misses
		g.armLocked(local, TriggerTimer)
		require.Equal(t, g.lastGrid.Add(want*gap), g.armedGrid, "after %d misses", misses)
	}

	g.armedAt, g.misses = time.Time{}, 0
	g.armLocked(local.Add(time.Hour), TriggerTimer)
	require.Equal(t, local.Add(time.Minute), g.armedAt, "capped at MaxSleep")
	w, ok := g.take()
	require.True(t, ok)
	require.Equal(t, ceilGrid(local, gap), w.grid, "a capped wake-up looks up to now, not up to its far grid point")
	_, ok = g.take()
	require.False(t, ok, "a second firing for one arming is stale")
}

// What a wake-up found moves the floor, the incumbency and the misses.
func TestSettleAfterAWakeUp(t *testing.T) {
	t.Parallel()
	local := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	g := testGate(t, local, 0)
	ctx := context.Background()
	grid := ceilGrid(local, g.opts.Gap)
	later := local.Add(time.Second)

	// Another replica held the lease: what was due is its to sweep; this one
	// looks again when the step would have waited stallAfter.
	busy := DueProbe{DBNow: grid.Add(2 * time.Millisecond), DueNow: true, Earliest: grid.Add(-time.Millisecond), Next: later}
	g.settle(ctx, probeResult{timed: true, wake: wake{grid: grid}, busy: true, pre: busy, latest: busy, at: local})
	require.True(t, g.floor.IsZero(), "the floor stays: the look after stallAfter must still see the step")
	require.False(t, g.incumbent)
	require.Equal(t, 1, g.misses)
	require.Equal(t, ceilGrid(busy.Earliest.Add(g.stallAfter()), g.opts.Gap), g.armedGrid,
		"armed for the stall check, not for what the holder sweeps now")

	// This replica swept: the floor is its first probe's time, and what fell
	// due meanwhile is swept at the next grid point.
	g.armedAt = time.Time{}
	pre := DueProbe{DBNow: grid.Add(16 * time.Millisecond), DueNow: true}
	g.settle(ctx, probeResult{
		timed: true, wake: wake{grid: grid.Add(g.opts.Gap)}, swept: true, moved: 3,
		pre: pre, latest: DueProbe{DBNow: pre.DBNow.Add(4 * time.Millisecond), DueNow: true}, at: local,
	})
	require.Equal(t, pre.DBNow, g.floor)
	require.True(t, g.incumbent)
	require.Zero(t, g.misses)
	require.Equal(t, grid.Add(2*g.opts.Gap), g.armedGrid)

	// A park reported at or before the floor clears it, so the probe sees it.
	g.pullIn(g.floor.Add(-time.Millisecond), TriggerNotify)
	require.True(t, g.floor.IsZero())
}

// A late reply only makes a clock-offset sample smaller: the largest recent
// one stands, until it is older than the window.
func TestSkewKeepsTheLargestRecentSample(t *testing.T) {
	t.Parallel()
	local := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	g := testGate(t, local, 2*time.Second)
	g.observeSkew(2*time.Second-40*time.Millisecond, local.Add(time.Second)) // a reply 40 ms late
	require.Equal(t, 2*time.Second, g.skew)
	g.observeSkew(2*time.Second+time.Millisecond, local.Add(2*time.Second))
	require.Equal(t, 2*time.Second+time.Millisecond, g.skew)
	g.observeSkew(time.Second, local.Add(2*time.Second+skewWindow+time.Millisecond)) // the clock moved
	require.Equal(t, time.Second, g.skew)
}
