package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/migrations"
)

// runMigrate is `sweeper migrate`. By default it applies only sweeper-owned
// objects, which are safe on a database the orchestrator created;
// --tasker-schema first creates the tasker schema subset, for a standalone
// or demo database that has no orchestrator. A database without the tasker
// tables the sweeper needs, or a role that may not build the index on the
// transition table, is refused before any migration runs: exit 2, like any
// other wrong configuration.
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
	logger, err := logCfg.oneShotLogger(e.stderr)
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
		if res.CarriedOver != "" {
			fmt.Fprintf(e.stdout, "%s: moved the version table %s to %s\n", set.Dir, res.CarriedOver, set.VersionTable)
		}
		var missing *db.MissingTablesError
		if errors.As(err, &missing) {
			// Checked before anything is written: nothing was applied.
			return usageErrorf("nothing applied: this database has no tasker schema (missing %s); "+
				"point --database-url at the orchestrator's database, or add --tasker-schema for a standalone one",
				strings.Join(missing.Tables, ", "))
		}
		var cannotIndex *db.IndexPrivilegeError
		if errors.As(err, &cannotIndex) {
			return usageErrorf("nothing applied: %v; run 'sweeper migrate' as the owner of the tasker tables "+
				"or a role that is a member of it", cannotIndex)
		}
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
		logger.Debug("migrations applied", slog.String("set", set.Dir), slog.Int("count", len(res.Applied)))
	}
	return nil
}
