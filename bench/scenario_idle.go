package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// quietSchedule keeps a daemon's scheduler out of the way while the
// benchmark drives it through the admin API (@hourly could fire mid-run).
const quietSchedule = "@every 24h"

// idleTemplate holds idleWaiting steps waiting but not yet due, idleError
// steps in error and idleComplete complete steps (the complete roots of the
// other groups included). "idle_base" is the same data without the
// sweeper-owned objects (the orchestrator scenario's baseline).
func (b *bench) idleTemplate(ctx context.Context) error {
	roots := func(children int) int { return (children + childrenPerTask - 1) / childrenPerTask }
	otherRoots := roots(b.sz.idleWaiting) + roots(b.sz.idleError)
	// A complete group of c children brings c/9 complete roots of its own.
	completeChildren := max(0, (b.sz.idleComplete-otherRoots)*childrenPerTask/(childrenPerTask+1))
	return b.buildTemplate(ctx, templateSpec{
		name: "idle", keepBase: true,
		seed: func(ctx context.Context, pool *pgxpool.Pool) error {
			err := seedGroups(ctx, b.log, pool, []seedSpec{
				{kindNotDue, b.sz.idleWaiting},
				{kindError, b.sz.idleError},
				{kindComplete, completeChildren},
			})
			if err != nil {
				return err
			}
			// The orchestrator scenario updates random steps of this data;
			// read their ids now, so no measured clone is warmed by it.
			b.idleSteps, err = allSteps(ctx, pool)
			return err
		},
	})
}

// idle: the cost of a sweep that finds nothing on a big database. Each run
// is a fresh clone; in it idleSweeps consecutive `sweeper once` processes
// run, the first one cold (the clone's pages are not in shared buffers
// yet); idle_ms is the median over runs of the median of the warm sweeps'
// own duration_ms. The same is measured through a running daemon's
// POST /v1/sweeps, whose connections are already open.
func (b *bench) idle(ctx context.Context) error {
	if err := b.idleTemplate(ctx); err != nil {
		return err
	}
	var coldMS, warmMS, warmWallMS, daemonMS []float64
	for run := 1; run <= b.opts.runs; run++ {
		timedOut := false
		err := b.onClone(ctx, "idle", func(name string) error {
			var durs, walls []float64
			for i := range b.sz.idleSweeps {
				res, err := b.runOnce(ctx, name, b.sz.idleLimit)
				if sweeperTrouble(err) {
					timedOut = true
					b.log.printf("  run %d: an idle sweep failed (%v); skipping the rest of the scenario", run, err)
					if errors.Is(err, errTimedOut) {
						b.res.note("idle: a sweep that finds nothing did not finish within %s", b.sz.idleLimit)
					} else {
						b.res.note("idle: a sweep that finds nothing failed: %v", err)
					}
					return nil
				}
				if err != nil {
					return err
				}
				if res.summary.Transitioned != 0 || res.summary.Stranded != 0 {
					return fmt.Errorf("idle sweep moved %d steps and found %d stranded; expected nothing",
						res.summary.Transitioned, res.summary.Stranded)
				}
				if i == 0 {
					coldMS = append(coldMS, res.summary.DurationMS)
					b.log.printf("  run %d: cold sweep %.1f ms (%s)", run, res.summary.DurationMS, res.summary.describe())
					continue
				}
				durs = append(durs, res.summary.DurationMS)
				walls = append(walls, ms(res.wall))
			}
			warmMS = append(warmMS, median(durs))
			warmWallMS = append(warmWallMS, median(walls))
			d, err := b.daemonIdleSweeps(ctx, name)
			if err != nil {
				return err
			}
			daemonMS = append(daemonMS, d)
			b.log.printf("  run %d: warm sweeps %v ms (median %.1f), process wall %.1f ms, daemon %.1f ms",
				run, durs, median(durs), median(walls), d)
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
	desc := fmt.Sprintf("%d waiting not due, %d complete, %d error", b.sz.idleWaiting, b.sz.idleComplete, b.sz.idleError)
	r.add(row{
		scenario: "idle", metric: "sweeper once, warm sweep (" + desc + ")", unit: "ms", value: median(warmMS),
		runs: warmMS, target: atMost(10),
	})
	r.add(row{scenario: "idle", metric: "sweeper once, warm, process wall time", unit: "ms", value: median(warmWallMS), runs: warmWallMS})
	r.add(row{scenario: "idle", metric: "sweeper once, first (cold) sweep of a clone", unit: "ms", value: median(coldMS), runs: coldMS})
	r.add(row{scenario: "idle", metric: "daemon POST /v1/sweeps, warm pool", unit: "ms", value: median(daemonMS), runs: daemonMS})
	r.set("idle_ms", median(warmMS))
	r.set("idle_wall_ms", median(warmWallMS))
	r.set("idle_cold_ms", median(coldMS))
	r.set("idle_daemon_ms", median(daemonMS))
	return nil
}

// daemonIdleSweeps starts a daemon on database and returns the median
// duration_ms of idleSweeps-1 sweeps triggered through POST /v1/sweeps
// after one warm-up sweep.
func (b *bench) daemonIdleSweeps(ctx context.Context, database string) (float64, error) {
	d, err := b.startDaemon(ctx, b.url(database), "--schedule", quietSchedule)
	if err != nil {
		return 0, err
	}
	var durs []float64
	client := &http.Client{Timeout: time.Minute}
	for i := range b.sz.idleSweeps {
		sum, err := postSweep(ctx, client, d.addr)
		if err != nil {
			_ = d.stop()
			return 0, err
		}
		if sum.Transitioned != 0 {
			_ = d.stop()
			return 0, fmt.Errorf("idle sweep through the API moved %d steps", sum.Transitioned)
		}
		if i > 0 {
			durs = append(durs, sum.DurationMS)
		}
	}
	if err := d.stop(); err != nil {
		return 0, err
	}
	return median(durs), nil
}

func postSweep(ctx context.Context, client *http.Client, addr string) (onceSummary, error) {
	var sum onceSummary
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/sweeps", nil)
	if err != nil {
		return sum, fmt.Errorf("build sweep request: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return sum, fmt.Errorf("POST /v1/sweeps: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return sum, fmt.Errorf("POST /v1/sweeps: status %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&sum); err != nil {
		return sum, fmt.Errorf("decode sweep summary: %w", err)
	}
	return sum, nil
}
