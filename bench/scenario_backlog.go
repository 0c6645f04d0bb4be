package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// backlogTemplate holds backlogDue due steps; "backlog_base" is the same
// data without the sweeper-owned objects (what the baselines run on: they
// are defined against the orchestrator's schema alone).
func (b *bench) backlogTemplate(ctx context.Context) error {
	return b.buildTemplate(ctx, templateSpec{
		name: "backlog", keepBase: true, park: parkDue,
		seed: func(ctx context.Context, pool *pgxpool.Pool) error {
			return seedGroups(ctx, b.log, pool, []seedSpec{{kindDue, b.sz.backlogDue}})
		},
	})
}

// backlog: the project's sweep (`sweeper once`) against the set-based
// limit and the naive one-transaction-per-step approach, each run on a
// fresh clone of the same data, interleaved round by round.
func (b *bench) backlog(ctx context.Context) error {
	if err := b.backlogTemplate(ctx); err != nil {
		return err
	}
	n := b.sz.backlogDue
	var sweepRate, sweepWallRate, sweepMS, limitRate, naiveRate []float64
	naiveCapped, sweepTimedOut, sweepSlow := false, false, false
	for round := 1; round <= b.opts.runs; round++ {
		// The project's sweep.
		err := b.onClone(ctx, "backlog", func(name string) error {
			if sweepTimedOut || sweepSlow {
				return nil
			}
			res, err := b.runOnce(ctx, name, b.sz.backlogLimit)
			if sweeperTrouble(err) {
				sweepTimedOut = true
				b.log.printf("  run %d sweep: %v; skipping the remaining sweep runs", round, err)
				if errors.Is(err, errTimedOut) {
					b.res.note("backlog: sweeper once did not move %d due steps within %s; no rate reported", n, b.sz.backlogLimit)
				} else {
					b.res.note("backlog: %v; no rate reported", err)
				}
				return nil
			}
			if err != nil {
				return err
			}
			if res.summary.Transitioned != n {
				return fmt.Errorf("sweep moved %d of %d due steps", res.summary.Transitioned, n)
			}
			if err := b.verifyMoves(ctx, name, n, n); err != nil {
				return fmt.Errorf("sweep: %w", err)
			}
			rate := float64(res.summary.Transitioned) / (res.summary.DurationMS / 1000)
			sweepRate = append(sweepRate, rate)
			sweepWallRate = append(sweepWallRate, float64(res.summary.Transitioned)/res.wall.Seconds())
			sweepMS = append(sweepMS, res.summary.DurationMS)
			b.log.printf("  run %d sweep: %.0f ms (process %.0f ms): %.0f steps/s; %s",
				round, res.summary.DurationMS, ms(res.wall), rate, res.summary.describe())
			if res.wall > b.sz.backlogOneRun && round < b.opts.runs {
				sweepSlow = true
				b.log.printf("  the sweep took over %s; its remaining runs are skipped", b.sz.backlogOneRun)
				b.res.note("backlog: the sweep took over %s (under a third of the limit's speed), so it ran once, not %d times",
					b.sz.backlogOneRun, b.opts.runs)
			}
			return nil
		})
		if err != nil {
			return err
		}
		// The limit.
		err = b.onClone(ctx, "backlog_base", func(name string) error {
			res, err := b.runLimit(ctx, name)
			if err != nil {
				return err
			}
			if err := b.verifyMoves(ctx, name, n, n); err != nil {
				return fmt.Errorf("limit: %w", err)
			}
			limitRate = append(limitRate, res.perSecond())
			b.log.printf("  run %d limit: %d steps in %.0f ms: %.0f steps/s", round, res.moved, ms(res.elapsed), res.perSecond())
			return nil
		})
		if err != nil {
			return err
		}
		// The naive approach, capped.
		err = b.onClone(ctx, "backlog_base", func(name string) error {
			res, err := b.runNaive(ctx, name)
			if err != nil {
				return err
			}
			if err := b.verifyMoves(ctx, name, n, res.moved); err != nil {
				return fmt.Errorf("naive: %w", err)
			}
			naiveCapped = naiveCapped || res.capped
			naiveRate = append(naiveRate, res.perSecond())
			b.log.printf("  run %d naive: %d steps in %.0f ms: %.0f steps/s (capped: %t)",
				round, res.moved, ms(res.elapsed), res.perSecond(), res.capped)
			return nil
		})
		if err != nil {
			return err
		}
	}
	sweep, limit, naive := median(sweepRate), median(limitRate), median(naiveRate)
	vsLimit, vsNaive := sweep/limit, sweep/naive
	r := b.res
	r.add(row{scenario: "backlog", metric: fmt.Sprintf("sweeper once, %d due steps", n), unit: "steps/s", value: sweep, runs: sweepRate})
	r.add(row{scenario: "backlog", metric: "sweeper once, incl. process start", unit: "steps/s", value: median(sweepWallRate), runs: sweepWallRate})
	r.add(row{scenario: "backlog", metric: "limit: 1 set-based statement per 1000, 1 conn", unit: "steps/s", value: limit, runs: limitRate})
	naiveNote := ""
	if naiveCapped {
		naiveNote = fmt.Sprintf("capped at %s per run", b.sz.naiveCap)
	}
	r.add(row{
		scenario: "backlog", metric: fmt.Sprintf("naive: 1 tx per step, %d workers", b.sz.naiveWorkers), unit: "steps/s",
		value: naive, runs: naiveRate, note: naiveNote,
	})
	r.add(row{scenario: "backlog", metric: "sweep / limit", unit: "x", value: vsLimit, target: atLeast(1.0), runs: ratios(sweepRate, limitRate)})
	r.add(row{scenario: "backlog", metric: "sweep / naive", unit: "x", value: vsNaive, target: atLeast(5.0), runs: ratios(sweepRate, naiveRate)})
	r.set("backlog_steps_per_s", sweep)
	r.set("backlog_ratio_vs_limit", vsLimit)
	r.set("backlog_ratio_vs_naive", vsNaive)
	r.set("backlog_sweep_ms", median(sweepMS))
	r.set("backlog_limit_steps_per_s", limit)
	r.set("backlog_naive_steps_per_s", naive)
	if naiveCapped {
		r.note("the naive baseline stops after %s per run; its rate is steps moved / elapsed time", b.sz.naiveCap)
	}
	return nil
}

// ratios pairs the i-th runs of a and b.
func ratios(a, b []float64) []float64 {
	out := make([]float64, min(len(a), len(b)))
	for i := range out {
		out[i] = a[i] / b[i]
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// onClone runs fn on a fresh clone of template and drops the clone after.
func (b *bench) onClone(ctx context.Context, template string, fn func(name string) error) error {
	name, drop, err := b.clone(ctx, template)
	if err != nil {
		return err
	}
	defer drop()
	return fn(name)
}

// verifyMoves checks a clone after a backlog run: of total due steps,
// exactly moved are pending now (each with one new pending row, sort_key 6
// after its 5-row history), the rest still waiting, no step moved twice.
func (b *bench) verifyMoves(ctx context.Context, database string, total, moved int) error {
	pool, err := b.connect(ctx, database)
	if err != nil {
		return err
	}
	defer pool.Close()
	var waiting, pendingNow, pendingRows, badSortKey int
	err = pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE most_recent AND to_state = 'waiting_for_retry'),
       count(*) FILTER (WHERE most_recent AND to_state = 'pending' AND from_state = 'waiting_for_retry'),
       count(*) FILTER (WHERE to_state = 'pending' AND from_state = 'waiting_for_retry'),
       count(*) FILTER (WHERE to_state = 'pending' AND from_state = 'waiting_for_retry' AND sort_key <> 6)
FROM tasker.workflow_step_transitions`).Scan(&waiting, &pendingNow, &pendingRows, &badSortKey)
	if err != nil {
		return fmt.Errorf("verify moves: %w", err)
	}
	if pendingNow != moved || pendingRows != moved || waiting != total-moved || badSortKey != 0 {
		return fmt.Errorf("inconsistent after moving %d of %d: %d pending now, %d pending rows, %d still waiting, %d bad sort keys",
			moved, total, pendingNow, pendingRows, waiting, badSortKey)
	}
	return nil
}
