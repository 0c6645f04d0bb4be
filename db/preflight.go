package db

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pressly/goose/v3"

	"github.com/tasker-sweeper/retrysweeper/db/migrations"
	"github.com/tasker-sweeper/retrysweeper/internal/preflight"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// KnownSweeperVersion is the highest version among the sweeper-owned
// migrations this binary carries: a database whose version table records a
// higher one was migrated by a newer sweeper.
func KnownSweeperVersion() (int64, error) {
	entries, err := fs.ReadDir(migrations.FS, migrations.SweeperObjects.Dir)
	if err != nil {
		return 0, fmt.Errorf("list sweeper migrations: %w", err)
	}
	var known int64
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		v, err := goose.NumericComponent(e.Name())
		if err != nil {
			return 0, fmt.Errorf("sweeper migration %s: %w", e.Name(), err)
		}
		known = max(known, v)
	}
	return known, nil
}

// The relations the schedule path needs, as SchedulePresent looks for them
// (schedule.sql.tmpl).
const (
	scheduleTable = "tasker_sweeper.retry_schedule"
	scheduleIndex = "tasker.tasker_sweeper_waiting_unscheduled"
)

// Preflight asks the database what the readiness rule needs to know (see
// preflight.Facts), in one read-only transaction of catalog reads. A
// failure to ask (unreachable, timed out) is Facts.Err.
func (s *Store) Preflight(ctx context.Context) preflight.Facts {
	start := time.Now()
	f := preflight.Facts{VersionTable: migrations.SweeperObjects.VersionTable}
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		return s.preflightFacts(ctx, tx, &f)
	})
	f.Elapsed = time.Since(start)
	if err != nil {
		var pgErr *pgconn.PgError
		return preflight.Facts{
			Err: asSentinel(err), ServerError: errors.As(err, &pgErr),
			Elapsed: f.Elapsed, VersionTable: f.VersionTable,
		}
	}
	return f
}

func (s *Store) preflightFacts(ctx context.Context, tx pgx.Tx, f *preflight.Facts) error {
	q := s.q.WithTx(tx)
	session, err := q.PreflightSession(ctx)
	if err != nil {
		return fmt.Errorf("read the session: %w", err)
	}
	f.ServerVersion, f.User = session.ServerVersion, session.RoleName

	schemas, err := q.PreflightSchemas(ctx, []string{preflight.TaskerSchema, preflight.SweeperSchema})
	if err != nil {
		return fmt.Errorf("look up the schemas: %w", err)
	}
	f.Schemas = make(map[string]bool, len(schemas))
	for _, sc := range schemas {
		f.Schemas[sc.SchemaName] = sc.Usage
	}

	var names []string
	for _, needs := range [][]preflight.Need{preflight.TaskerNeeds, preflight.SweeperNeeds} {
		for _, n := range needs {
			names = append(names, n.Qualified())
		}
	}
	names = append(names, f.VersionTable, scheduleIndex)
	rels, err := q.PreflightRelations(ctx, names)
	if err != nil {
		return fmt.Errorf("look up the tables: %w", err)
	}
	f.Relations = make(map[string]preflight.Relation, len(rels))
	for _, r := range rels {
		f.Relations[r.SchemaName+"."+r.TableName] = preflight.Relation{
			Columns: r.Columns,
			Privileges: map[string]bool{
				"SELECT": r.CanSelect, "INSERT": r.CanInsert, "UPDATE": r.CanUpdate, "DELETE": r.CanDelete,
			},
		}
	}

	_, hasIndex := f.Relations[scheduleIndex]
	_, hasTable := f.Relations[scheduleTable]
	f.ScheduleInstalled = hasTable && hasIndex
	delete(f.Relations, scheduleIndex)
	if vt, ok := f.Relations[f.VersionTable]; ok {
		f.VersionTableExists = true
		// Reading it also needs USAGE on its schema (the sweeper's own).
		f.VersionReadable = vt.Privileges["SELECT"] && f.Schemas[schemaOf(f.VersionTable)]
		delete(f.Relations, f.VersionTable)
	}
	if f.VersionReadable {
		if f.SweeperVersion, err = q.PreflightSweeperVersion(ctx); err != nil {
			return fmt.Errorf("read %s: %w", f.VersionTable, err)
		}
	}
	return nil
}

// ChosenPath is the sweep path this store settled on, or "" before the
// database first answered.
func (s *Store) ChosenPath() sweeper.Path {
	if p := s.chosen.Load(); p != nil {
		return (*p).path()
	}
	return ""
}

// schemaOf is the schema part of a qualified name.
func schemaOf(qualified string) string {
	schema, _, _ := strings.Cut(qualified, ".")
	return schema
}
