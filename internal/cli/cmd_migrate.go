package cli

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/migrations"
)

// runMigrate is `sweeper migrate`. By default it applies only sweeper-owned
// objects, which are safe on a database the orchestrator created;
// --tasker-schema first creates the tasker schema subset, for a standalone
// or demo database that has no orchestrator.
func runMigrate(ctx context.Context, e env, args []string) error {
	f := newFlags("migrate", e)
	dbURL := databaseFlag(f)
	logCfg := logFlags(f)
	withTasker := f.fs.Bool("tasker-schema", false,
		"also create the tasker schema subset (standalone/demo databases only; never on an orchestrator's database)")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := checkDatabaseURL(*dbURL); err != nil {
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
	for _, set := range migrations.Sets(*withTasker) {
		res, err := db.Migrate(ctx, store.Pool(), set)
		if err != nil {
			return err
		}
		if len(res.Applied) == 0 {
			fmt.Fprintf(e.stdout, "%s: up to date\n", set.Dir)
			continue
		}
		for _, name := range res.Applied {
			fmt.Fprintf(e.stdout, "%s: applied %s\n", set.Dir, name)
		}
		logger.Info("migrations applied", slog.String("set", set.Dir), slog.Int("count", len(res.Applied)))
	}
	return nil
}
