package db_test

import (
	"context"
	"io/fs"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/migrations"
	"github.com/tasker-sweeper/retrysweeper/internal/preflight"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// The binary knows the highest migration it embeds, and that is what a
// database it migrated records.
func TestKnownSweeperVersionIsTheMigratedOne(t *testing.T) {
	t.Parallel()
	known, err := db.KnownSweeperVersion()
	require.NoError(t, err)
	files, err := fs.Glob(migrations.FS, migrations.SweeperObjects.Dir+"/*.sql")
	require.NoError(t, err)
	require.EqualValues(t, len(files), known, "one migration per version, numbered from 1")

	pool := testdb.New(t)
	f := db.NewStore(pool).Preflight(context.Background())
	require.NoError(t, f.Err)
	require.True(t, f.VersionTableExists)
	require.True(t, f.VersionReadable)
	require.Equal(t, known, f.SweeperVersion)
	require.Equal(t, migrations.SweeperObjects.VersionTable, f.VersionTable)
}

// What a migrated database says about itself: every relation the sweeper
// needs, with its columns and the owner's privileges.
func TestPreflightFactsOfAMigratedDatabase(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		f := db.NewStore(pool).Preflight(context.Background())
		require.NoError(t, f.Err)
		require.NotEmpty(t, f.ServerVersion)
		require.NotEmpty(t, f.User)
		require.Positive(t, f.Elapsed)
		require.Equal(t, objects == testdb.WithSweeperObjects, f.ScheduleInstalled)
		require.True(t, f.Schemas[preflight.TaskerSchema])
		needs := preflight.TaskerNeeds
		if objects == testdb.WithSweeperObjects {
			needs = append(slices.Clone(needs), preflight.SweeperNeeds...)
		} else {
			// The schema may exist (migrate keeps the tasker subset's own
			// version table there), but not the sweeper's objects.
			require.False(t, f.VersionTableExists)
		}
		require.Len(t, f.Relations, len(needs))
		for _, n := range needs {
			rel, ok := f.Relations[n.Qualified()]
			require.True(t, ok, n.Qualified())
			for _, col := range n.Columns {
				require.Contains(t, rel.Columns, col, n.Qualified())
			}
			for _, p := range n.Privileges {
				require.True(t, rel.Privileges[p], "%s on %s", p, n.Qualified())
			}
		}
		known, err := db.KnownSweeperVersion()
		require.NoError(t, err)
		r := preflight.Evaluate(f, preflight.Options{KnownVersion: known})
		require.True(t, r.Ready, r.Summary())
	})
}

// Every column a query names on the tables the preflight checks is in the
// preflight's list: the list cannot fall behind the SQL.
func TestPreflightNeedsCoverTheQueries(t *testing.T) {
	t.Parallel()
	aliases := map[string]string{
		"ws": "tasker.workflow_steps", "attempted": "tasker.workflow_steps", "step": "tasker.workflow_steps",
		"cur": "tasker.workflow_step_transitions", "t": "tasker.workflow_step_transitions",
		"e": "tasker.workflow_step_transitions", "x": "tasker.workflow_step_transitions",
		"parent": "tasker.workflow_step_transitions", "edge": "tasker.workflow_step_edges",
		"ns": "tasker.named_steps", "s": "tasker_sweeper.retry_schedule",
		"task": "tasker.tasks", "nt": "tasker.named_tasks", "tn": "tasker.task_namespaces",
	}
	listed := map[string][]string{}
	for _, n := range append(slices.Clone(preflight.TaskerNeeds), preflight.SweeperNeeds...) {
		listed[n.Qualified()] = n.Columns
	}
	files, err := fs.Glob(queriesFS(t), "*.sql")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	seen := 0
	for _, name := range files {
		raw, err := fs.ReadFile(queriesFS(t), name)
		require.NoError(t, err)
		for _, word := range strings.FieldsFunc(string(raw), func(r rune) bool {
			return r != '.' && r != '_' && (r < 'a' || r > 'z')
		}) {
			alias, col, ok := strings.Cut(word, ".")
			table, known := aliases[alias]
			if !ok || !known || col == "" || strings.Contains(col, ".") {
				continue
			}
			seen++
			require.Contains(t, listed[table], col, "%s names %s.%s (%s): add it to preflight's needs", name, alias, col, table)
		}
	}
	require.Greater(t, seen, 100, "the scan found the queries' column references")
}

// The backlog gauges count what waits and what is due by the full rule, on
// both paths: a blocked, a stranded and a not-yet-due step wait but are not
// due.
func TestBacklogCountsByTheDueRule(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		pool := testdb.NewFor(t, objects)
		ctx := context.Background()
		store := db.NewStore(pool)
		empty, err := store.Backlog(ctx)
		require.NoError(t, err)
		require.Zero(t, empty.Waiting)
		require.Zero(t, empty.Due)
		require.Zero(t, empty.OldestDueAge())

		testdb.SeedDue(t, pool, 5) // due an hour ago (last attempt 1 h ago, 1 s backoff)
		task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 4, Edges: [][2]int{{0, 1}}})
		parent, blocked, stranded, later := task.Steps[0], task.Steps[1], task.Steps[2], task.Steps[3]
		testdb.PlaceInState(t, pool, parent, "in_progress", time.Minute)
		for _, step := range []struct {
			id   uuid.UUID
			cols testdb.StepColumns
		}{
			{blocked, testdb.StepColumns{Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](1)}},
			{stranded, testdb.StepColumns{Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](3), LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](1)}},
			{later, testdb.StepColumns{Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Duration(0)), BackoffRequestSeconds: testdb.Ptr[int32](3600)}},
		} {
			testdb.PlaceInState(t, pool, step.id, "waiting_for_retry", time.Minute)
			testdb.SetColumns(t, pool, step.id, step.cols)
		}
		if objects == testdb.WithSweeperObjects {
			_, err := store.Reconcile(ctx, 0) // what the daemon's first pass does
			require.NoError(t, err)
		}
		b, err := store.Backlog(ctx)
		require.NoError(t, err)
		require.EqualValues(t, 8, b.Waiting)
		require.EqualValues(t, 5, b.Due)
		age := b.OldestDueAge()
		require.InDelta(t, time.Hour.Seconds(), age.Seconds(), 60, "due since the backoff expired: %s", age)
		require.Equal(t, sweeper.Path(map[testdb.Objects]string{testdb.WithSweeperObjects: "schedule", testdb.TaskerOnly: "scan"}[objects]), store.ChosenPath())
	})
}

// queriesFS is the rendered SQL the store runs.
func queriesFS(t *testing.T) fs.FS {
	t.Helper()
	return os.DirFS("queries")
}
