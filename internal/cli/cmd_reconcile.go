package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// runReconcile is `sweeper reconcile`: one reconcile pass now (for after a
// restore, a truncate or hand edits of parked steps), and what it corrected.
// Exit 0 when it ran (also when it corrected nothing), 1 on a failure or when
// another replica's pass held the lock, 2 without the sweeper-owned objects.
func runReconcile(ctx context.Context, e env, args []string) error {
	f := newFlags("reconcile", e)
	dbURL := databaseFlag(f)
	logCfg := logFlags(f)
	asJSON := f.fs.Bool("json", false, "print what the pass corrected as one JSON object")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := checkDatabaseURL(*dbURL); err != nil {
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
	sw, err := sweeper.New(store, sweeper.DefaultConfig(), logger, sweeper.Hooks{})
	if err != nil {
		return configError(err)
	}
	res, err := sw.Reconcile(ctx, 0)
	if errors.Is(err, sweeper.ErrNoSchedule) {
		return usageErrorf("nothing to reconcile: %v", err)
	}
	if err != nil {
		return err
	}
	if res.Skipped {
		return errors.New("another replica is reconciling right now; try again when it is done")
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(res)
	}
	fmt.Fprintf(e.stdout, "reconciled %d waiting step(s) in %.1f ms: %d correction(s)\n", res.Waiting, res.DurationMS, res.Corrected())
	for _, c := range []struct {
		n    int64
		what string
	}{
		{res.Missing, "missing: waiting without a schedule row (added)"},
		{res.Orphaned, "orphaned: rows of steps no longer waiting (dropped)"},
		{res.RetimedEarlier, "retimed earlier: the row said later than the tables (would have moved late)"},
		{res.RetimedLater, "retimed later: the row said earlier than the tables"},
		{res.Restranded, "restranded: the stranded flag was wrong"},
	} {
		fmt.Fprintf(e.stdout, "  %6d  %s\n", c.n, c.what)
	}
	return nil
}
