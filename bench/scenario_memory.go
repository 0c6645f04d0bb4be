package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
)

// memory: peak RSS of one `sweeper once` that sweeps a memoryDue backlog
// (the process's own VmHWM, sampled every 10 ms: see peakRSS).
func (b *bench) memory(ctx context.Context) error {
	err := b.buildTemplate(ctx, templateSpec{
		name: "memory", park: parkDue,
		seed: func(ctx context.Context, pool *pgxpool.Pool) error {
			return seedGroups(ctx, b.log, pool, []seedSpec{{kindDue, b.sz.memoryDue}})
		},
	})
	if err != nil {
		return err
	}
	n := b.sz.memoryDue
	var rss, rate []float64
	for run := 1; run <= b.opts.runs; run++ {
		timedOut := false
		err := b.onClone(ctx, "memory", func(name string) error {
			res, err := b.runOnce(ctx, name, b.sz.memoryLimit)
			if errors.Is(err, errSweeperFailed) {
				timedOut = true
				b.log.printf("  run %d: %v; skipping the remaining runs", run, err)
				b.res.note("memory: %v; no value reported", err)
				return nil
			}
			if errors.Is(err, errTimedOut) {
				timedOut = true
				mib := float64(res.maxRSSKiB) / 1024
				b.log.printf("  run %d: timed out after %s (peak RSS until then %.1f MiB); skipping the remaining runs", run, b.sz.memoryLimit, mib)
				b.res.note("memory: sweeper once did not sweep %d due steps within %s (peak RSS until stopped: %.1f MiB); no value reported",
					n, b.sz.memoryLimit, mib)
				b.res.set("peak_rss_mib_at_timeout", mib)
				return nil
			}
			if err != nil {
				return err
			}
			if res.summary.Transitioned != n {
				return fmt.Errorf("sweep moved %d of %d due steps", res.summary.Transitioned, n)
			}
			mib := float64(res.maxRSSKiB) / 1024
			stepsPerS := float64(n) / (res.summary.DurationMS / 1000)
			rss = append(rss, mib)
			rate = append(rate, stepsPerS)
			b.log.printf("  run %d: peak RSS %.1f MiB; %.0f ms (%.0f steps/s); %s", run, mib, res.summary.DurationMS, stepsPerS, res.summary.describe())
			return nil
		})
		if err != nil {
			return err
		}
		if timedOut {
			break
		}
	}
	r := b.res
	r.add(row{scenario: "memory", metric: fmt.Sprintf("sweeper once peak RSS, %d due steps", n), unit: "MiB", value: median(rss), runs: rss, target: atMost(64)})
	r.add(row{scenario: "memory", metric: fmt.Sprintf("sweeper once throughput, %d due steps", n), unit: "steps/s", value: median(rate), runs: rate})
	r.set("peak_rss_mib", median(rss))
	r.set("memory_sweep_steps_per_s", median(rate))
	return nil
}
