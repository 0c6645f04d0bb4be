package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// reconcileSummary is what `sweeper reconcile --json` prints.
type reconcileSummary struct {
	Ran            bool    `json:"ran"`
	Waiting        int64   `json:"waiting"`
	Missing        int64   `json:"missing"`
	Orphaned       int64   `json:"orphaned"`
	RetimedEarlier int64   `json:"retimed_earlier"`
	RetimedLater   int64   `json:"retimed_later"`
	Restranded     int64   `json:"restranded"`
	DurationMS     float64 `json:"duration_ms"`
}

// reconcile: the cost of a reconcile pass over the idle data (idleWaiting
// steps waiting, not due, all on the schedule): once when the schedule is
// right (the steady state, every 5 minutes by default), once after the
// schedule was truncated (a restore: every row rebuilt).
func (b *bench) reconcile(ctx context.Context) error {
	if err := b.idleTemplate(ctx); err != nil {
		return err
	}
	var steadyMS, rebuildMS []float64
	for run := 1; run <= b.opts.runs; run++ {
		err := b.onClone(ctx, "idle", func(name string) error {
			steady, err := b.runReconcile(ctx, name)
			if err != nil {
				return err
			}
			if steady.Missing+steady.Orphaned+steady.RetimedEarlier+steady.RetimedLater+steady.Restranded != 0 {
				return fmt.Errorf("a reconcile of a consistent schedule corrected something: %+v", steady)
			}
			pool, err := b.connect(ctx, name)
			if err != nil {
				return err
			}
			_, err = pool.Exec(ctx, `TRUNCATE tasker_sweeper.retry_schedule`)
			pool.Close()
			if err != nil {
				return fmt.Errorf("truncate the schedule: %w", err)
			}
			rebuilt, err := b.runReconcile(ctx, name)
			if err != nil {
				return err
			}
			if rebuilt.Missing != int64(b.sz.idleWaiting) {
				return fmt.Errorf("a reconcile after a truncate added %d rows, want %d", rebuilt.Missing, b.sz.idleWaiting)
			}
			steadyMS = append(steadyMS, steady.DurationMS)
			rebuildMS = append(rebuildMS, rebuilt.DurationMS)
			b.log.printf("  run %d: reconcile %.0f ms (nothing to correct), %.0f ms after a truncate (%d rows added)",
				run, steady.DurationMS, rebuilt.DurationMS, rebuilt.Missing)
			return nil
		})
		if err != nil {
			return err
		}
	}
	desc := fmt.Sprintf("%d waiting", b.sz.idleWaiting)
	b.res.add(row{
		scenario: "reconcile", metric: "pass, schedule consistent (" + desc + ")", unit: "ms",
		value: median(steadyMS), runs: steadyMS,
	})
	b.res.add(row{
		scenario: "reconcile", metric: "pass after the schedule was truncated (" + desc + ")", unit: "ms",
		value: median(rebuildMS), runs: rebuildMS,
	})
	b.res.set("reconcile_ms", median(steadyMS))
	b.res.set("reconcile_rebuild_ms", median(rebuildMS))
	return nil
}

func (b *bench) runReconcile(ctx context.Context, database string) (reconcileSummary, error) {
	var sum reconcileSummary
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, b.sweeper, "reconcile", "--json", "--log-level", "warn")
	cmd.Env = sweeperEnv(b.url(database))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return sum, fmt.Errorf("%w: sweeper reconcile: %w: %s", errSweeperFailed, err, lastLine(stderr.String()))
	}
	if err := json.Unmarshal([]byte(lastLine(stdout.String())), &sum); err != nil {
		return sum, fmt.Errorf("unreadable summary from sweeper reconcile %q: %w", stdout.String(), err)
	}
	if !sum.Ran {
		return sum, fmt.Errorf("sweeper reconcile did not run a pass: %s", stdout.String())
	}
	return sum, nil
}
