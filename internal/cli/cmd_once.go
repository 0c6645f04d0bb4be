package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// onceJSON is `sweeper once --json`'s object: the summary, and the error
// when the sweep did not succeed.
type onceJSON struct {
	sweeper.Summary
	Error string `json:"error,omitempty"`
}

// runOnce is `sweeper once`: one sweep now, its summary on stdout. Exit 0 on
// success (also when nothing was due), 1 when the sweep failed or was
// interrupted. A failed sweep prints no summary, except with --json: the
// object then carries "error".
func runOnce(ctx context.Context, e env, args []string) error {
	f := newFlags("once", e)
	dbURL := databaseFlag(f)
	cfg := sweepFlags(f)
	logCfg := logFlags(f)
	dryRun := f.fs.Bool("dry-run", false, "report what would move without writing")
	asJSON := f.fs.Bool("json", false, "print the summary as one JSON object")
	reconcile := reconcileFlag(f)
	if err := f.parse(args); err != nil {
		return err
	}
	if err := checkReconcileInterval(*reconcile); err != nil {
		return err
	}
	if err := checkDatabaseURL(*dbURL); err != nil {
		return err
	}
	if err := checkSweepConfig(cfg); err != nil {
		return err
	}
	logger, err := logCfg.oneShotLogger(e.stderr)
	if err != nil {
		return err
	}
	store, err := openStore(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer store.Pool().Close()

	sw, err := sweeper.New(store, *cfg, logger, sweeper.Hooks{})
	if err != nil {
		return configError(err)
	}
	sum, sweepErr := sw.RunOnce(ctx, *dryRun)
	interrupted := errors.Is(sweepErr, sweeper.ErrInterrupted)
	switch {
	case *asJSON:
		out := onceJSON{Summary: sum}
		if sweepErr != nil {
			out.Error = sweepErr.Error()
		}
		if err := json.NewEncoder(e.stdout).Encode(out); err != nil {
			return err
		}
	case sweepErr == nil || interrupted:
		// A failed sweep prints nothing here: its counts would read as a
		// result. The error goes to stderr, the counts to the log.
		verb := "moved to pending"
		if sum.DryRun {
			verb = "would move to pending (dry run)"
		}
		if sum.Interrupted {
			verb += " before a shutdown interrupted the sweep"
		}
		fmt.Fprintf(e.stdout, "sweep %s: %d step(s) %s, %d stranded, %d lost race(s), %d skipped (locked), %d batch(es), %.1f ms\n",
			sum.SweepID, sum.Transitioned, verb, sum.Stranded, sum.LostRaces, sum.SkippedLocked, sum.Batches, sum.DurationMS)
	}
	if sweepErr != nil || *dryRun {
		return sweepErr
	}
	// After the sweep, so its due steps never wait for it: a reconcile
	// pass, when one is due (the daemon runs them on a timer).
	_, err = sw.Reconcile(ctx, *reconcile)
	if errors.Is(err, sweeper.ErrNoSchedule) {
		return nil
	}
	return err
}
