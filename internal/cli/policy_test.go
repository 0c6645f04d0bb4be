package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// `sweeper policy explain` prints the decision and why, and writes nothing.
func TestPolicyExplain(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	task := testdb.CreateTemplatedTask(t, pool, testdb.TemplateSpec{
		Namespace: "payments", Name: "refund", Steps: []string{"charge_card"},
		Configuration: `{"steps": [{"name": "charge_card", "retry": {"backoff": "fibonacci", "backoff_base_ms": 2000}}],
		  "environments": {"production": {"steps": [{"name": "ALL", "retry": {"max_backoff_ms": 10000}}]}}}`,
	})
	step := task.Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.EnqueuedAsErrorForOrchestration, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{Attempts: testdb.Ptr[int32](6), MaxAttempts: testdb.Ptr[int32](10)})
	file := filepath.Join(t.TempDir(), "policy.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`rules:
  - id: card-declined
    match: {http_status: 402, namespace: payments}
    retryable: false
  - id: payments-slow
    match: {category: RateLimit, step: "charge_*"}
    strategy: linear
    base: 4s
`), 0o600))
	env := []string{"DATABASE_URL=" + url, "TASKER_ENV=production", "SWEEPER_POLICY_FILE=" + file, "SWEEPER_BACKOFF_JITTER=false"}

	// The template: fibonacci 2 s × F(6) = 16 s, capped at production's 10 s.
	res := runCLI(t, env, "policy", "explain", "--step", step.String(), "--message", "boom")
	require.Equal(t, 0, res.code, res.stderr)
	for _, want := range []string{
		"would be TransitionedToWaitingForRetry, then waiting_for_retry",
		"policy file:    " + file,
		"template:       payments/refund (tasker env \"production\")",
		"delay:          10s from template: fibonacci, base 2s, cap 10s, raw 16s, jitter off",
		"no rule of " + file + " (2 rules) matches",
		"environments.production.ALL",
		"nothing was written",
	} {
		require.Contains(t, res.stdout, want)
	}

	// A rule: linear 4 s × 6, still under the template's cap.
	res = runCLI(t, env, "policy", "explain", "--step", step.String(), "--message", "slow down", "--http-status", "429", "--json")
	require.Equal(t, 0, res.code, res.stderr)
	var got handling.Result
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
	require.True(t, got.DryRun)
	require.Equal(t, "payments-slow", got.Policy.Rule)
	require.Equal(t, handling.PolicySourceRule, got.Policy.Source)
	require.Equal(t, int32(10), *got.BackoffSeconds)
	require.Equal(t, int64(24000), got.Policy.RawDelayMs)

	// Retry-After wins, capped; a rule stops retries.
	res = runCLI(t, env, "policy", "explain", "--step", step.String(), "--message", "slow down", "--http-status", "429", "--retry-after", "3")
	require.Equal(t, 0, res.code, res.stderr)
	require.Contains(t, res.stdout, "delay:          3s from retry_after")
	res = runCLI(t, env, "policy", "explain", "--step", step.String(), "--message", "declined", "--http-status", "402")
	require.Equal(t, 0, res.code, res.stderr)
	require.Contains(t, res.stdout, "would be MarkedAsPermanentFailure")
	require.Contains(t, res.stdout, "rule:           card-declined")

	// Nothing was written by any of it.
	var rows int
	require.NoError(t, pool.QueryRow(t.Context(),
		`SELECT count(*) FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1`, step).Scan(&rows))
	require.Len(t, testdb.History(statemachine.EnqueuedAsErrorForOrchestration), rows)

	// Usage and unknown steps.
	for _, args := range [][]string{
		{"policy"},
		{"policy", "explian"},
		{"policy", "explain"},
		{"policy", "explain", "--step", "x"},
		{"policy", "explain", "--step", step.String(), "--http-status", "7"},
	} {
		res := runCLI(t, env, args...)
		require.Equal(t, 2, res.code, "%v: %s", args, res.stderr)
		require.Equal(t, 1, strings.Count(strings.TrimSpace(res.stderr), "\n")+1, "one line: %q", res.stderr)
	}
	res = runCLI(t, env, "policy", "explain", "--step", uuid.NewString(), "--message", "boom")
	require.Equal(t, 3, res.code, res.stderr)
}
