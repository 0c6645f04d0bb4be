package preflight

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// healthy is what a database migrated by this binary, with every grant,
// says about itself.
func healthy() Facts {
	f := Facts{
		Elapsed: 1500 * time.Microsecond, ServerVersion: "15.18", User: "sweeper",
		Schemas:      map[string]bool{TaskerSchema: true, SweeperSchema: true},
		Relations:    map[string]Relation{},
		VersionTable: "tasker_sweeper.goose_version", VersionTableExists: true, VersionReadable: true,
		SweeperVersion: 3, ScheduleInstalled: true,
	}
	for _, needs := range [][]Need{TaskerNeeds, SweeperNeeds} {
		for _, n := range needs {
			privs := map[string]bool{"SELECT": true, "INSERT": true, "UPDATE": true, "DELETE": true}
			f.Relations[n.Qualified()] = Relation{Columns: append([]string{"extra"}, n.Columns...), Privileges: privs}
		}
	}
	return f
}

func check(t *testing.T, r Report, name string) Check {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no %s check in %+v", name, r.Checks)
	return Check{}
}

func names(r Report) []string {
	var out []string
	for _, c := range r.Checks {
		out = append(out, c.Name)
	}
	return out
}

func TestHealthyDatabaseIsReady(t *testing.T) {
	t.Parallel()
	r := Evaluate(healthy(), Options{KnownVersion: 3, Sweeps: &SweepRecord{Sweeps: 4}})
	require.True(t, r.Ready, r.Summary())
	require.Equal(t, "ready", r.Summary())
	require.Empty(t, r.Failed())
	require.Equal(t, "schedule", r.Path)
	require.Equal(t, []string{CheckDatabase, CheckTaskerSchema, CheckPrivileges, CheckSweeperSchema, CheckSweepPath, CheckSweeps}, names(r))
	require.Equal(t, "PostgreSQL 15.18 as sweeper, answered in 1.5ms", check(t, r, CheckDatabase).Detail)
	require.Equal(t, "4 tables, 26 columns present", check(t, r, CheckTaskerSchema).Detail)
	require.Equal(t, "role sweeper holds the 15 grants the sweeper needs", check(t, r, CheckPrivileges).Detail)
	require.Equal(t, "version 3 (current)", check(t, r, CheckSweeperSchema).Detail)

	r = Evaluate(healthy(), Options{KnownVersion: 3})
	require.NotContains(t, names(r), CheckSweeps, "no sweep record, no sweeps check (sweeper check)")
}

func TestUnreachableDatabaseIsOneFailedCheck(t *testing.T) {
	t.Parallel()
	r := Evaluate(Facts{Err: errors.New("dial tcp 127.0.0.1:1: connect: connection refused")},
		Options{KnownVersion: 3, Sweeps: &SweepRecord{}})
	require.False(t, r.Ready)
	require.Equal(t, []string{CheckDatabase, CheckSweeps}, names(r), "nothing else can be known")
	require.Equal(t, "not ready: database: unreachable: dial tcp 127.0.0.1:1: connect: connection refused", r.Summary())
	require.Empty(t, r.Path)

	r = Evaluate(Facts{Err: errors.New(`FATAL: password authentication failed for user "sweeper" (SQLSTATE 28P01)`), ServerError: true},
		Options{KnownVersion: 3})
	require.Equal(t, `not ready: database: the server refused the probe: FATAL: password authentication failed for user "sweeper" (SQLSTATE 28P01)`, r.Summary())
}

func TestEachFailureNamesItsCheckAndWhy(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		change func(*Facts)
		opts   Options
		failed string
		detail string
	}{
		{
			"no tasker schema", func(f *Facts) { delete(f.Schemas, TaskerSchema) },
			Options{},
			CheckTaskerSchema, "schema tasker not found",
		},
		{
			"missing table", func(f *Facts) { delete(f.Relations, "tasker.workflow_step_edges") },
			Options{},
			CheckTaskerSchema, "table tasker.workflow_step_edges is missing",
		},
		{"missing column", func(f *Facts) {
			r := f.Relations["tasker.workflow_steps"]
			r.Columns = []string{"workflow_step_uuid"}
			f.Relations["tasker.workflow_steps"] = r
		}, Options{}, CheckTaskerSchema, "tasker.workflow_steps has no column task_uuid, named_step_uuid"},
		{
			"no UPDATE on steps", func(f *Facts) { f.Relations["tasker.workflow_steps"].Privileges["UPDATE"] = false },
			Options{},
			CheckPrivileges, "role sweeper lacks UPDATE on tasker.workflow_steps",
		},
		{"no INSERT, UPDATE on transitions", func(f *Facts) {
			p := f.Relations["tasker.workflow_step_transitions"].Privileges
			p["INSERT"], p["UPDATE"] = false, false
		}, Options{}, CheckPrivileges, "lacks INSERT, UPDATE on tasker.workflow_step_transitions"},
		{
			"no usage on tasker", func(f *Facts) { f.Schemas[TaskerSchema] = false },
			Options{},
			CheckPrivileges, "lacks USAGE on schema tasker",
		},
		{
			"no DELETE on the schedule", func(f *Facts) { f.Relations["tasker_sweeper.retry_schedule"].Privileges["DELETE"] = false },
			Options{},
			CheckPrivileges, "lacks DELETE on tasker_sweeper.retry_schedule",
		},
		{
			"newer sweeper", func(f *Facts) { f.SweeperVersion = 4 },
			Options{},
			CheckSweeperSchema, "database migrated by a newer sweeper: version 4, this binary knows up to 3",
		},
		{
			"schedule table gone", func(f *Facts) { delete(f.Relations, "tasker_sweeper.adoption") },
			Options{},
			CheckSweeperSchema, "version 3 recorded but table tasker_sweeper.adoption is missing",
		},
		{
			"sweeps failing", func(*Facts) {},
			Options{Sweeps: &SweepRecord{Sweeps: 9, ConsecutiveFailures: 3, LastError: "deadlock detected"}},
			CheckSweeps, "the last 3 sweeps failed: deadlock detected",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := healthy()
			tc.change(&f)
			tc.opts.KnownVersion = 3
			r := Evaluate(f, tc.opts)
			require.False(t, r.Ready)
			failed := r.Failed()
			require.Len(t, failed, 1, "%+v", failed)
			require.Equal(t, tc.failed, failed[0].Name)
			require.Contains(t, failed[0].Detail, tc.detail)
			require.True(t, strings.HasPrefix(r.Summary(), "not ready: "+tc.failed+": "), r.Summary())
		})
	}
}

func TestSweeperObjectsAndPaths(t *testing.T) {
	t.Parallel()
	// Never migrated: the scan path, ready.
	f := healthy()
	f.VersionTableExists, f.VersionReadable, f.ScheduleInstalled = false, false, false
	delete(f.Schemas, SweeperSchema)
	for _, n := range SweeperNeeds {
		delete(f.Relations, n.Qualified())
	}
	r := Evaluate(f, Options{KnownVersion: 3})
	require.True(t, r.Ready, r.Summary())
	require.Equal(t, "scan", r.Path)
	require.Contains(t, check(t, r, CheckSweeperSchema).Detail, "not installed")
	require.Contains(t, check(t, r, CheckSweepPath).Detail, "scan: every sweep evaluates every waiting step")

	// Older than the binary: ready, says to migrate.
	f = healthy()
	f.SweeperVersion, f.ScheduleInstalled = 2, false
	r = Evaluate(f, Options{KnownVersion: 3})
	require.True(t, r.Ready, r.Summary())
	require.Equal(t, "version 2 of 3: 'sweeper migrate' installs the rest", check(t, r, CheckSweeperSchema).Detail)

	// The version table is not readable: ready, with a hint.
	f = healthy()
	f.VersionReadable = false
	r = Evaluate(f, Options{KnownVersion: 3})
	require.True(t, r.Ready, r.Summary())
	require.Contains(t, check(t, r, CheckSweeperSchema).Detail, "version unknown: role sweeper may not read tasker_sweeper.goose_version")

	// Installed after this process chose the scan path.
	r = Evaluate(healthy(), Options{KnownVersion: 3, RunningPath: "scan"})
	require.Contains(t, check(t, r, CheckSweepPath).Detail, "this process sweeps on the scan path until it restarts")
}

func TestSweepsCheck(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		rec    SweepRecord
		ok     bool
		detail string
	}{
		{SweepRecord{}, true, "no sweep finished yet"},
		{SweepRecord{Sweeps: 5}, true, "the last sweep succeeded"},
		{SweepRecord{Sweeps: 5, ConsecutiveFailures: 2, LastError: "x"}, true, "2 failed sweep(s) in a row (not ready at 3): x"},
		{SweepRecord{Sweeps: 5, ConsecutiveFailures: 7, LastError: "x"}, false, "the last 7 sweeps failed: x"},
	} {
		c := sweeps(tc.rec)
		require.Equal(t, tc.ok, c.OK, "%+v", tc.rec)
		require.Equal(t, tc.detail, c.Detail)
	}
}
