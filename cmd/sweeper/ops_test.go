package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
)

// `sweeper check` and `sweeper version` reach the process with their exit
// codes: check is 0 on a ready database, 1 on an unreachable one.
func TestCheckAndVersionExitCodes(t *testing.T) {
	t.Parallel()
	_, url := testdb.NewWithURL(t)
	ready := runBinary(t, []string{"DATABASE_URL=" + url}, "check")
	require.Equal(t, 0, ready.code, ready.stdout+ready.stderr)
	require.Contains(t, ready.stdout, "ready: every check passed")

	down := runBinary(t, []string{"DATABASE_URL=postgres://postgres@127.0.0.1:1/x?connect_timeout=2"}, "check")
	require.Equal(t, 1, down.code, down.stdout+down.stderr)
	require.Contains(t, down.stdout, "database  FAIL    unreachable: ")

	bad := runBinary(t, nil, "check")
	require.Equal(t, 2, bad.code, bad.stderr)
	require.Contains(t, bad.stderr, "--database-url")

	for _, args := range [][]string{{"version"}, {"--version"}} {
		v := runBinary(t, nil, args...)
		require.Equal(t, 0, v.code, v.stderr)
		require.True(t, strings.HasPrefix(v.stdout, "sweeper "), v.stdout)
		require.Contains(t, v.stdout, "  go:       go1.")
	}
}
