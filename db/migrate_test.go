package db_test

import (
	"context"
	"io/fs"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/migrations"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
)

// legacyMigrate applies set the way earlier releases did: plain goose, with
// the version table in public (set.LegacyVersionTable), no schema created
// first.
func legacyMigrate(t *testing.T, pool *pgxpool.Pool, set migrations.Set) {
	t.Helper()
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer func() { _ = sqlDB.Close() }()
	store, err := database.NewStore(database.DialectPostgres, set.LegacyVersionTable)
	require.NoError(t, err)
	dir, err := fs.Sub(migrations.FS, set.Dir)
	require.NoError(t, err)
	provider, err := goose.NewProvider("", sqlDB, dir, goose.WithStore(store), goose.WithDisableGlobalRegistry(true))
	require.NoError(t, err)
	_, err = provider.Up(context.Background())
	require.NoError(t, err)
}

// versions lists a goose version table's applied versions in row order.
func versions(t *testing.T, pool *pgxpool.Pool, table string) []int64 {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT version_id FROM `+table+` WHERE is_applied ORDER BY id`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	return out
}

func tableExists(t *testing.T, pool *pgxpool.Pool, qualified string) bool {
	t.Helper()
	var present bool
	require.NoError(t, pool.QueryRow(context.Background(),
		`SELECT to_regclass($1) IS NOT NULL`, qualified).Scan(&present))
	return present
}

func TestMigrateCarriesLegacyVersionTablesOver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := db.Connect(ctx, testdb.NewEmptyURL(t))
	require.NoError(t, err)
	defer pool.Close()
	sets := migrations.Sets(true)
	for _, set := range sets {
		legacyMigrate(t, pool, set)
		require.True(t, tableExists(t, pool, set.LegacyVersionTable))
	}
	before := map[string][]int64{}
	for _, set := range sets {
		before[set.Dir] = versions(t, pool, set.LegacyVersionTable)
		require.NotEmpty(t, before[set.Dir])
	}

	for _, set := range sets {
		res, err := db.Migrate(ctx, pool, set)
		require.NoError(t, err, set.Dir)
		// Re-applying the tasker subset would fail outright (CREATE
		// FUNCTION without IF NOT EXISTS); nothing at all may run again.
		require.Empty(t, res.Applied, set.Dir)
		require.Equal(t, set.LegacyVersionTable, res.CarriedOver, set.Dir)
		require.False(t, tableExists(t, pool, set.LegacyVersionTable), set.Dir)
		require.Equal(t, before[set.Dir], versions(t, pool, set.VersionTable), set.Dir)
	}

	// Idempotent: a second run has nothing to carry over or apply.
	for _, set := range sets {
		res, err := db.Migrate(ctx, pool, set)
		require.NoError(t, err, set.Dir)
		require.Empty(t, res.Applied, set.Dir)
		require.Empty(t, res.CarriedOver, set.Dir)
		require.Equal(t, before[set.Dir], versions(t, pool, set.VersionTable), set.Dir)
	}
	var inPublic int
	require.NoError(t, pool.QueryRow(ctx,
		`SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`).Scan(&inPublic))
	require.Zero(t, inPublic, "no table is left in public")
}

// A legacy table left beside the current one (an older replica migrated
// after the move) is merged, not applied again.
func TestMigrateMergesLegacyVersionTableBesideCurrent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := db.Connect(ctx, testdb.NewEmptyURL(t))
	require.NoError(t, err)
	defer pool.Close()
	set := migrations.TaskerSubset
	_, err = db.Migrate(ctx, pool, set)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `CREATE TABLE `+set.LegacyVersionTable+` (LIKE `+set.VersionTable+` INCLUDING ALL)`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO `+set.LegacyVersionTable+` (id, version_id, is_applied) VALUES (1, 0, true), (2, 1, true)`)
	require.NoError(t, err)
	want := versions(t, pool, set.VersionTable)

	res, err := db.Migrate(ctx, pool, set)
	require.NoError(t, err)
	require.Empty(t, res.Applied)
	require.Equal(t, set.LegacyVersionTable, res.CarriedOver)
	require.False(t, tableExists(t, pool, set.LegacyVersionTable))
	require.Equal(t, want, versions(t, pool, set.VersionTable))
}

func TestMigrateWithoutTaskerSchemaAppliesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := db.Connect(ctx, testdb.NewEmptyURL(t))
	require.NoError(t, err)
	defer pool.Close()

	res, err := db.Migrate(ctx, pool, migrations.SweeperObjects)
	require.ErrorIs(t, err, db.ErrNoTaskerSchema)
	var missing *db.MissingTablesError
	require.ErrorAs(t, err, &missing)
	require.Equal(t, []string{
		"tasker.workflow_steps", "tasker.workflow_step_transitions", "tasker.workflow_step_edges", "tasker.named_steps",
	}, missing.Tables)
	require.Empty(t, res.Applied)
	var schemas int
	require.NoError(t, pool.QueryRow(ctx,
		`SELECT count(*) FROM pg_namespace WHERE nspname = $1`, migrations.Schema).Scan(&schemas))
	require.Zero(t, schemas, "nothing may be created before the check")
}
