package db

import (
	"context"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
	"github.com/pressly/goose/v3/lock"

	"github.com/tasker-sweeper/retrysweeper/db/migrations"
)

// MigrationResult names the migrations one Migrate call applied.
type MigrationResult struct {
	Set     string
	Applied []string
}

// Migrate applies every pending migration of set. goose takes an advisory
// lock, so several replicas starting at once migrate one at a time.
func Migrate(ctx context.Context, pool *pgxpool.Pool, set migrations.Set) (MigrationResult, error) {
	res := MigrationResult{Set: set.Dir}
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer func() { _ = sqlDB.Close() }()

	store, err := database.NewStore(database.DialectPostgres, set.VersionTable)
	if err != nil {
		return res, fmt.Errorf("migration store: %w", err)
	}
	dir, err := fs.Sub(migrations.FS, set.Dir)
	if err != nil {
		return res, fmt.Errorf("migration files %s: %w", set.Dir, err)
	}
	// Probe the advisory lock every second for up to two minutes: a replica
	// waiting on another's migration should neither spin nor give up early.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 120))
	if err != nil {
		return res, fmt.Errorf("migration lock: %w", err)
	}
	provider, err := goose.NewProvider("", sqlDB, dir,
		goose.WithStore(store),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSessionLocker(locker),
	)
	if err != nil {
		return res, fmt.Errorf("migration provider: %w", err)
	}
	results, err := provider.Up(ctx)
	for _, r := range results {
		if r.Error == nil && !r.Empty {
			res.Applied = append(res.Applied, r.Source.Path)
		}
	}
	if err != nil {
		return res, fmt.Errorf("migrate %s: %w", set.Dir, err)
	}
	return res, nil
}
