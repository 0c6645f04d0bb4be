package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/preflight"
)

// runCheck is `sweeper check`: the readiness preflight the daemon's /readyz
// runs (minus the record of recent sweeps), from a shell, as a table or one
// JSON object. Exit 0 when every check passes, 1 when one fails (the
// database unreachable included), 2 on bad flags.
func runCheck(ctx context.Context, e env, args []string) error {
	f := newFlags("check", e)
	dbURL := databaseFlag(f)
	asJSON := f.fs.Bool("json", false, "print the report as one JSON object")
	timeout := f.fs.Duration("timeout", 10*time.Second, "how long to wait for the database")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := checkDatabaseURL(*dbURL); err != nil {
		return err
	}
	if *timeout <= 0 {
		return usageErrorf("invalid --timeout %s: must be > 0", *timeout)
	}
	known, err := db.KnownSweeperVersion()
	if err != nil {
		return err
	}
	poolCfg, err := db.PoolConfig(*dbURL)
	if err != nil {
		return usageErrorf("invalid --database-url: %v", err)
	}
	poolCfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg) // lazy: an unreachable database is a failed check
	if err != nil {
		return fmt.Errorf("open pool: %w", err)
	}
	defer pool.Close()

	cctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	rep := preflight.Evaluate(db.NewStore(pool).Preflight(cctx), preflight.Options{KnownVersion: known})
	rep.CheckedAt = time.Now().UTC()
	if *asJSON {
		if err := json.NewEncoder(e.stdout).Encode(rep); err != nil {
			return err
		}
	} else if err := printReport(e, rep); err != nil {
		return err
	}
	if !rep.Ready {
		return &exitError{code: exitRuntime, err: errors.New(rep.Summary())}
	}
	return nil
}

func printReport(e env, rep preflight.Report) error {
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "CHECK\tRESULT\tDETAIL")
	for _, c := range rep.Checks {
		result := "ok"
		if !c.OK {
			result = "FAIL"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", c.Name, result, c.Detail)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if rep.Ready {
		fmt.Fprintln(e.stdout, "\nready: every check passed")
	} else {
		fmt.Fprintf(e.stdout, "\nnot ready: %d check(s) failed\n", len(rep.Failed()))
	}
	return nil
}
