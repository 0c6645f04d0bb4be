package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// runOnce is `sweeper once`: one sweep now, its summary on stdout. Exit 0 on
// success (also when nothing was due), 1 when the sweep failed.
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
	logger, err := logCfg.logger(e.stderr)
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
	if *asJSON {
		if err := json.NewEncoder(e.stdout).Encode(sum); err != nil {
			return err
		}
	} else {
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
