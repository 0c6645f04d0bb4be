package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// A bad policy file stops every command that takes it before it starts: exit
// 2, one line naming the file, the line and the problem.
func TestBadPolicyFileAtStartExits2NamingTheLine(t *testing.T) {
	t.Parallel()
	bad := filepath.Join(t.TempDir(), "policy.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("rules:\n  - id: slow\n    strategy: cubic\n"), 0o600))
	env := []string{"DATABASE_URL=postgres://postgres@127.0.0.1:1/x?connect_timeout=1"}
	for _, args := range [][]string{
		{"run", "--ops-addr=", "--policy-file", bad},
		{"fail", "--step", uuid.NewString(), "--policy-file", bad},
		{"policy", "explain", "--step", uuid.NewString(), "--policy-file", bad},
	} {
		res := runBinary(t, env, args...)
		require.Equal(t, 2, res.code, "%v: %s", args, res.stderr)
		require.Equal(t, 1, strings.Count(res.stderr, "\n"), "one line: %q", res.stderr)
		require.Contains(t, res.stderr, bad+`:3: strategy: unknown backoff strategy "cubic"`)
	}
	// The same through the environment, and a file that is not there.
	res := runBinary(t, append(env, "SWEEPER_POLICY_FILE="+bad), "run", "--ops-addr=")
	require.Equal(t, 2, res.code, res.stderr)
	require.Contains(t, res.stderr, "$SWEEPER_POLICY_FILE")
	require.Contains(t, res.stderr, bad+":3:")
	missing := filepath.Join(t.TempDir(), "none.yaml")
	res = runBinary(t, env, "run", "--ops-addr=", "--policy-file", missing)
	require.Equal(t, 2, res.code, res.stderr)
	require.Contains(t, res.stderr, missing+": no such file or directory")
}

// explained is the part of a dry run's answer these tests read.
type explained struct {
	Action         string `json:"action"`
	BackoffSeconds *int32 `json:"backoff_applied_seconds"`
	DryRun         bool   `json:"dry_run"`
	Policy         struct {
		Source string `json:"source"`
		Rule   string `json:"rule"`
		Hash   string `json:"policy_file_hash"`
	} `json:"policy"`
}

// SIGHUP re-reads the policy file in a running daemon: a good file replaces
// the rules, a bad one keeps them and the log says why.
func TestSighupReloadsThePolicyFile(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	task := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1})
	step := task.Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.EnqueuedAsErrorForOrchestration, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](10)})
	file := filepath.Join(t.TempDir(), "policy.yaml")
	require.NoError(t, os.WriteFile(file, []byte("rules:\n  - {id: first, strategy: none}\n"), 0o600))

	cmd, exited, logs := startDaemon(t, []string{"DATABASE_URL=" + url},
		"--http-addr", "127.0.0.1:0", "--log-format", "json", "--backoff-jitter=false", "--policy-file", file)
	waitOrFail(t, logs.seen(`"msg":"sweeper running"`), 20*time.Second, "the daemon to start")
	addr := logAttr(t, logs.String(), "sweeper running", "http_addr")
	firstHash := logAttr(t, logs.String(), "sweeper running", "policy_file_hash")

	dryRun := func() explained {
		t.Helper()
		resp, err := http.Post("http://"+addr+"/v1/steps/"+step.String()+"/failures?dry_run=true", "application/json",
			bytes.NewBufferString(`{"message": "boom"}`))
		require.NoError(t, err)
		defer func() { _ = resp.Body.Close() }()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var e explained
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&e))
		require.True(t, e.DryRun)
		return e
	}
	got := dryRun()
	require.Equal(t, "first", got.Policy.Rule)
	require.Equal(t, firstHash, got.Policy.Hash)
	require.Equal(t, int32(0), *got.BackoffSeconds)

	// A good file: the new rules from the next failure on.
	require.NoError(t, os.WriteFile(file, []byte("rules:\n  - {id: second, strategy: linear, base: 7s}\n"), 0o600))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	waitOrFail(t, logs.seen(`"msg":"policy file reloaded"`), 10*time.Second, "the reload")
	got = dryRun()
	require.Equal(t, "second", got.Policy.Rule)
	require.Equal(t, int32(21), *got.BackoffSeconds)
	secondHash := got.Policy.Hash
	require.NotEqual(t, firstHash, secondHash)

	// A bad file: the rules in force stay, and the log names the line.
	require.NoError(t, os.WriteFile(file, []byte("rules:\n  - id: third\n    base: soon\n"), 0o600))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	waitOrFail(t, logs.seen(`"msg":"policy reload failed: the policy in force stays"`), 10*time.Second, "the failed reload")
	require.Contains(t, logs.String(), file+`:3: base \"soon\": want a duration`)
	got = dryRun()
	require.Equal(t, "second", got.Policy.Rule)
	require.Equal(t, secondHash, got.Policy.Hash)

	// The dry runs wrote nothing; the daemon still stops cleanly.
	var rows int
	require.NoError(t, pool.QueryRow(t.Context(),
		`SELECT count(*) FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1`, step).Scan(&rows))
	require.Len(t, testdb.History(statemachine.EnqueuedAsErrorForOrchestration), rows)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, exitCode(t, exited, logs), logs.String())
}

// logAttr is a string attribute of the first JSON log line with msg.
func logAttr(t *testing.T, logs, msg, key string) string {
	t.Helper()
	for line := range strings.Lines(logs) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != msg {
			continue
		}
		v, ok := rec[key].(string)
		require.True(t, ok, "%s has no %s: %s", msg, key, line)
		return v
	}
	t.Fatalf("no %q line in the logs:\n%s", msg, logs)
	return ""
}
