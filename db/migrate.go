package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/jackc/pgx/v5"
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
	// CarriedOver names the legacy version table whose rows this run moved
	// into the set's version table (empty when there was none).
	CarriedOver string
}

// ErrNoTaskerSchema means the database lacks tasker tables a migration set
// needs: it is not an orchestrator's database, or the tasker subset was not
// installed.
var ErrNoTaskerSchema = errors.New("the tasker schema is missing")

// MissingTablesError lists the tasker tables a migration set needs that the
// database does not have. It matches ErrNoTaskerSchema.
type MissingTablesError struct {
	// Tables are schema-qualified (tasker.workflow_steps, ...).
	Tables []string
}

func (e *MissingTablesError) Error() string {
	return fmt.Sprintf("%v: no %s", ErrNoTaskerSchema, strings.Join(e.Tables, ", "))
}

// Is makes errors.Is(err, ErrNoTaskerSchema) hold.
func (e *MissingTablesError) Is(target error) bool { return target == ErrNoTaskerSchema }

// ErrCannotIndex means the role migrating may not build the set's index on
// a tasker table: PostgreSQL allows it only to the table's owner (or a member
// of the owning role) with CREATE on its schema.
var ErrCannotIndex = errors.New("the role may not build indexes on the tasker table")

// IndexPrivilegeError says what the migrating role lacks to build an index
// on a tasker table. It matches ErrCannotIndex.
type IndexPrivilegeError struct {
	// Role is the role migrating, Table the table (schema-qualified) and
	// Owner its owner.
	Role, Table, Owner string
	// NotOwner: Role does not have the privileges of Owner. NoCreate: Role
	// lacks CREATE on the table's schema.
	NotOwner, NoCreate bool
}

func (e *IndexPrivilegeError) Error() string {
	var lacks []string
	if e.NotOwner {
		lacks = append(lacks, fmt.Sprintf("is not the owner of %s (%s) nor a member of it", e.Table, e.Owner))
	}
	if e.NoCreate {
		lacks = append(lacks, "has no CREATE on schema tasker")
	}
	return fmt.Sprintf("role %s may not build the index on %s: it %s", e.Role, e.Table, strings.Join(lacks, " and "))
}

// Is makes errors.Is(err, ErrCannotIndex) hold.
func (e *IndexPrivilegeError) Is(target error) bool { return target == ErrCannotIndex }

// Migrate applies every pending migration of set. goose takes an advisory
// lock, so several replicas starting at once migrate one at a time.
func Migrate(ctx context.Context, pool *pgxpool.Pool, set migrations.Set) (MigrationResult, error) {
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer func() { _ = sqlDB.Close() }()
	return MigrateDB(ctx, sqlDB, set)
}

// MigrateDB is Migrate over a database/sql handle (the test databases'
// template migrator has one). Before goose runs it checks that the tasker
// tables the set needs exist (a *MissingTablesError, and nothing applied,
// when they do not), creates the schema of the set's version table, and
// carries an earlier release's version table over to the current one; when
// migrations are pending it checks that the role may build the set's index
// on a tasker table (an *IndexPrivilegeError, and nothing applied, when not).
//
// The statements here are bookkeeping around goose, on tables named at run
// time; the store's queries live in db/queries.
func MigrateDB(ctx context.Context, sqlDB *sql.DB, set migrations.Set) (MigrationResult, error) {
	res := MigrationResult{Set: set.Dir}
	if err := checkTaskerTables(ctx, sqlDB, set.NeedsTasker); err != nil {
		return res, err
	}
	store, err := database.NewStore(database.DialectPostgres, set.VersionTable)
	if err != nil {
		return res, fmt.Errorf("migration store: %w", err)
	}
	carried, err := prepareVersionTable(ctx, sqlDB, store, set)
	if err != nil {
		return res, err
	}
	if carried {
		res.CarriedOver = set.LegacyVersionTable
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
	if set.IndexesTasker != "" {
		pending, err := provider.HasPending(ctx)
		if err != nil {
			return res, fmt.Errorf("look for pending migrations of %s: %w", set.Dir, err)
		}
		if pending {
			if err := checkIndexPrivileges(ctx, sqlDB, set.IndexesTasker); err != nil {
				return res, err
			}
		}
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

// checkTaskerTables returns a *MissingTablesError naming the tables of
// tables (in schema tasker) the database does not have. It reads the
// catalog, so it needs no privilege on the tables.
func checkTaskerTables(ctx context.Context, sqlDB *sql.DB, tables []string) error {
	if len(tables) == 0 {
		return nil
	}
	var missing []string
	for _, name := range tables {
		present, err := relationExists(ctx, sqlDB, "tasker", name)
		if err != nil {
			return err
		}
		if !present {
			missing = append(missing, "tasker."+name)
		}
	}
	if len(missing) > 0 {
		return &MissingTablesError{Tables: missing}
	}
	return nil
}

// checkIndexPrivileges returns an *IndexPrivilegeError when the current
// role may not create an index on tasker.table.
func checkIndexPrivileges(ctx context.Context, sqlDB *sql.DB, table string) error {
	e := IndexPrivilegeError{Table: "tasker." + table}
	var isOwner, canCreate bool
	err := sqlDB.QueryRowContext(ctx, `SELECT current_user::text, c.relowner::regrole::text,
			pg_has_role(c.relowner, 'USAGE'), has_schema_privilege(n.oid, 'CREATE')
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'tasker' AND c.relname = $1`, table).Scan(&e.Role, &e.Owner, &isOwner, &canCreate)
	if err != nil {
		return fmt.Errorf("check the privileges on %s: %w", e.Table, err)
	}
	if isOwner && canCreate {
		return nil
	}
	e.NotOwner, e.NoCreate = !isOwner, !canCreate
	return &e
}

// queryer is what the catalog look-ups run on: the database or a transaction.
type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func relationExists(ctx context.Context, q queryer, schema, name string) (bool, error) {
	var present bool
	err := q.QueryRowContext(ctx, `SELECT EXISTS (
		SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))`, schema, name).Scan(&present)
	if err != nil {
		return false, fmt.Errorf("look for table %s.%s: %w", schema, name, err)
	}
	return present, nil
}

func schemaExists(ctx context.Context, q queryer, schema string) (bool, error) {
	var present bool
	err := q.QueryRowContext(ctx,
		`SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)`, schema).Scan(&present)
	if err != nil {
		return false, fmt.Errorf("look for schema %s: %w", schema, err)
	}
	return present, nil
}

// splitTable splits "schema.table"; both parts are required.
func splitTable(qualified string) (schema, table string, err error) {
	schema, table, ok := strings.Cut(qualified, ".")
	if !ok || schema == "" || table == "" {
		return "", "", fmt.Errorf("version table %q: want schema.table", qualified)
	}
	return schema, table, nil
}

// prepareVersionTable makes goose's version table for set ready to use:
// its schema exists (goose creates the table, not the schema), and the rows
// of an earlier release's version table (set.LegacyVersionTable) are in it,
// the legacy table dropped, so goose applies nothing twice. It reports
// whether it carried rows over. It is idempotent and, under the migration
// advisory lock, safe with replicas migrating at once; when the schema
// exists and there is no legacy table it only reads the catalog.
func prepareVersionTable(ctx context.Context, sqlDB *sql.DB, store database.Store, set migrations.Set) (bool, error) {
	schema, table, err := splitTable(set.VersionTable)
	if err != nil {
		return false, err
	}
	needSchema, needCarry, err := versionTableWork(ctx, sqlDB, schema, set.LegacyVersionTable)
	if err != nil || (!needSchema && !needCarry) {
		return false, err
	}
	tx, err := sqlDB.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("begin version table preparation: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	// The same key as goose's session lock: a replica's migration in flight
	// finishes first.
	if _, err := tx.ExecContext(ctx, `SET LOCAL lock_timeout = '120s'`); err != nil {
		return false, fmt.Errorf("set lock timeout: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, lock.DefaultLockID); err != nil {
		return false, fmt.Errorf("take the migration lock: %w", err)
	}
	// Again under the lock: another replica may have done it meanwhile.
	needSchema, needCarry, err = versionTableWork(ctx, tx, schema, set.LegacyVersionTable)
	if err != nil {
		return false, err
	}
	if needSchema {
		// Only when missing: CREATE SCHEMA needs CREATE on the database even
		// with IF NOT EXISTS.
		if _, err := tx.ExecContext(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{schema}.Sanitize()); err != nil {
			return false, fmt.Errorf("create schema %s: %w", schema, err)
		}
	}
	if needCarry {
		if err := carryOver(ctx, tx, store, schema, table, set.LegacyVersionTable); err != nil {
			return false, err
		}
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("commit version table preparation: %w", err)
	}
	return needCarry, nil
}

// versionTableWork says whether the version table's schema must be created
// and whether a legacy version table is there to carry over.
func versionTableWork(ctx context.Context, q queryer, schema, legacy string) (needSchema, needCarry bool, err error) {
	present, err := schemaExists(ctx, q, schema)
	if err != nil {
		return false, false, err
	}
	if legacy != "" {
		oldSchema, oldTable, err := splitTable(legacy)
		if err != nil {
			return false, false, err
		}
		if needCarry, err = relationExists(ctx, q, oldSchema, oldTable); err != nil {
			return false, false, err
		}
	}
	return !present, needCarry, nil
}

// carryOver copies the legacy version table's rows that the current one
// lacks into it (creating it, in goose's shape, if needed), in their order,
// then drops the legacy table.
func carryOver(ctx context.Context, tx *sql.Tx, store database.Store, schema, table, legacy string) error {
	exists, err := relationExists(ctx, tx, schema, table)
	if err != nil {
		return err
	}
	if !exists {
		if err := store.CreateVersionTable(ctx, tx); err != nil {
			return fmt.Errorf("create version table %s.%s: %w", schema, table, err)
		}
	}
	oldSchema, oldTable, err := splitTable(legacy)
	if err != nil {
		return err
	}
	current := pgx.Identifier{schema, table}.Sanitize()
	old := pgx.Identifier{oldSchema, oldTable}.Sanitize()
	if _, err := tx.ExecContext(ctx, `INSERT INTO `+current+` (version_id, is_applied, tstamp)
		SELECT o.version_id, o.is_applied, o.tstamp FROM `+old+` o
		WHERE NOT EXISTS (SELECT 1 FROM `+current+` c WHERE c.version_id = o.version_id)
		ORDER BY o.id`); err != nil {
		return fmt.Errorf("copy %s into %s.%s: %w", legacy, schema, table, err)
	}
	if _, err := tx.ExecContext(ctx, `DROP TABLE `+old); err != nil {
		return fmt.Errorf("drop %s: %w", legacy, err)
	}
	return nil
}
