package main

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
)

// The demo itself is tested in internal/demo; these tests cover the
// wrapper: its flags, and that it wires the real daemon.

func TestDemoRunsTheRealDaemonAndIgnoresDatabaseURL(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	// $DATABASE_URL points at a real database: the demo must still start
	// its own server and write nothing here.
	res := runBinary(t, []string{"DATABASE_URL=" + url},
		"demo", "--duration", "3s", "--tasks", "3", "--log-format", "json")
	require.Equal(t, 0, res.code, "stdout:\n%s\nstderr:\n%s", res.stdout, res.stderr)

	require.Contains(t, res.stdout, "into the throwaway database")
	require.Regexp(t, `Admin API on http://127\.0\.0\.1:\d+ `, res.stdout, "the daemon's admin API reports its address")
	require.Contains(t, res.stderr, `"msg":"throwaway PostgreSQL ready"`)
	require.Contains(t, res.stderr, `"msg":"sweeper running"`, "the production daemon ran")
	m := regexp.MustCompile(`(?m)^sweeps run\s+(\d+)`).FindStringSubmatch(res.stdout)
	require.NotNil(t, m, res.stdout)
	sweeps, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	require.Positive(t, sweeps, "the daemon's sweeps reach the demo's report")

	var tasks int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM tasker.tasks`).Scan(&tasks))
	require.Zero(t, tasks, "the demo wrote nothing into $DATABASE_URL's database")
}

func TestDemoUsageErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		flag string
	}{
		{[]string{"demo", "--duration", "0s"}, "--duration"},
		{[]string{"demo", "--tasks", "0"}, "--tasks"},
		{[]string{"demo", "--tasks", "10001"}, "--tasks"},
		{[]string{"demo", "--http-addr", "0.0.0.0:0"}, "--http-addr"},
		{[]string{"demo", "--database-url", "postgres://u:secret@h:notaport/db"}, "--database-url"},
		{[]string{"demo", "--log-format", "yaml"}, "--log-format"},
	}
	for _, tc := range cases {
		res := runBinary(t, nil, tc.args...)
		require.Equal(t, 2, res.code, "%v: %s", tc.args, res.stderr)
		require.Equal(t, 1, strings.Count(strings.TrimSpace(res.stderr), "\n")+1, "one line: %q", res.stderr)
		require.Contains(t, res.stderr, tc.flag)
		require.NotContains(t, res.stderr, "secret", "never print a database password")
	}
}
