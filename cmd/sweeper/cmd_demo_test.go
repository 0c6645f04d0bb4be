package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDemoRunsTheDaemonOnAThrowawayServer(t *testing.T) {
	t.Parallel()
	// No DATABASE_URL: the demo starts its own server.
	res := runBinary(t, nil, "demo", "--duration", "6s", "--tasks", "5", "--log-format", "json")
	require.Equal(t, 0, res.code, "stdout:\n%s\nstderr:\n%s", res.stdout, res.stderr)

	// The seeded failures cover every decision the handler makes.
	for _, action := range []string{"TransitionedToWaitingForRetry", "MarkedAsPermanentFailure", "MarkedAsError"} {
		require.Contains(t, res.stdout, action)
	}
	// The final table: every state has a row, and the sweep moved steps back.
	require.Contains(t, res.stdout, "What happened")
	for _, state := range []string{"pending", "waiting_for_retry", "complete", "error"} {
		require.Regexp(t, `(?m)^`+state+`\s+\d+`, res.stdout)
	}
	require.Positive(t, tableCount(t, res.stdout, "steps swept back to pending"), res.stdout)
	require.Positive(t, tableCount(t, res.stdout, "sweeps run"), res.stdout)

	records := jsonRecords(t, res.stderr)
	transitioned := 0.0
	port := 0
	for _, r := range records {
		switch r["msg"] {
		case "sweep finished":
			transitioned = max(transitioned, r["transitioned"].(float64))
		case "throwaway PostgreSQL ready":
			port = int(r["port"].(float64))
		}
	}
	require.Positive(t, transitioned, "a sweep moved steps to pending:\n%s", res.stderr)
	require.NotZero(t, port, "the demo logs its server's port:\n%s", res.stderr)

	// The server is stopped and its data removed: pgserver names its log
	// after the port, and the postmaster's command line carries it.
	for _, parent := range []string{"/dev/shm", os.TempDir()} {
		left, err := filepath.Glob(filepath.Join(parent, "sweeper-pgserver-*", fmt.Sprintf("server-%d.log", port)))
		require.NoError(t, err)
		require.Empty(t, left, "the demo's data directory is removed")
	}
	require.Empty(t, postgresOnPort(t, port), "the demo's server is stopped")
}

func TestDemoUsageErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		flag string
	}{
		{[]string{"demo", "--duration", "0s"}, "--duration"},
		{[]string{"demo", "--tasks", "0"}, "--tasks"},
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

// tableCount reads the number in the final table's row labelled label.
func tableCount(t *testing.T, stdout, label string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(label) + `\s+(\d+)`).FindStringSubmatch(stdout)
	require.NotNil(t, m, "row %q in:\n%s", label, stdout)
	n, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	return n
}

// jsonRecords decodes JSON log lines, failing on any line that is not one.
func jsonRecords(t *testing.T, stderr string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(stderr))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		var r map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &r), "log line %q", sc.Text())
		out = append(out, r)
	}
	require.NoError(t, sc.Err())
	return out
}

// postgresOnPort lists the pids of pgserver postmasters started with port.
func postgresOnPort(t *testing.T, port int) []int {
	t.Helper()
	cmdlines, err := filepath.Glob("/proc/[0-9]*/cmdline")
	require.NoError(t, err)
	want := fmt.Sprintf("port=%d\x00", port)
	var pids []int
	for _, path := range cmdlines {
		raw, err := os.ReadFile(path)
		if err != nil {
			continue // the process ended while we looked
		}
		cmdline := string(raw)
		if strings.Contains(cmdline, "sweeper-pgserver-") && strings.Contains(cmdline, want) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
			pids = append(pids, pid)
		}
	}
	return pids
}
