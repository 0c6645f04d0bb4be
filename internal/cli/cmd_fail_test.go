package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

func TestFailCommandExitCodes(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	dbEnv := []string{"DATABASE_URL=" + url}

	t.Run("usage errors exit 2 with one line naming the flag", func(t *testing.T) {
		cases := []struct {
			env  []string
			args []string
			flag string
		}{
			{nil, []string{"fail", "--step", uuid.NewString()}, "--database-url"},
			{dbEnv, []string{"fail"}, "--step"},
			{dbEnv, []string{"fail", "--step", "not-a-uuid"}, "--step"},
			{dbEnv, []string{"fail", "--step", uuid.NewString(), "--retryable", "maybe"}, "--retryable"},
			{dbEnv, []string{"fail", "--step", uuid.NewString(), "--http-status", "42"}, "--http-status"},
			{dbEnv, []string{"fail", "--step", uuid.NewString(), "--no-such-flag"}, "no-such-flag"},
			{dbEnv, []string{"fail", "--step", uuid.NewString(), "--default-max-attempts", "3"}, "not defined: -default-max-attempts"},
			{append([]string{"SWEEPER_BACKOFF_MAX=1ms"}, dbEnv...), []string{"fail", "--step", uuid.NewString()}, "--backoff-max"},
			{[]string{"DATABASE_URL=postgres://u:secret@h:notaport/db"}, []string{"fail", "--step", uuid.NewString()}, "--database-url"},
		}
		for _, tc := range cases {
			res := runCLI(t, tc.env, tc.args...)
			require.Equal(t, 2, res.code, "%v: %s", tc.args, res.stderr)
			require.Equal(t, 1, strings.Count(strings.TrimSpace(res.stderr), "\n")+1, "one line: %q", res.stderr)
			require.Contains(t, res.stderr, tc.flag)
			require.NotContains(t, res.stderr, "secret", "never print a database password")
		}
	})

	t.Run("unknown step exits 3", func(t *testing.T) {
		res := runCLI(t, dbEnv, "fail", "--step", uuid.NewString(), "--message", "boom")
		require.Equal(t, 3, res.code, res.stderr)
		require.Contains(t, res.stderr, "not found")

		// The nil uuid is well formed and names no step: unknown too.
		nilStep := runCLI(t, dbEnv, "fail", "--step", uuid.Nil.String(), "--message", "boom")
		require.Equal(t, 3, nilStep.code, nilStep.stderr)
		require.Equal(t, "sweeper fail: step "+uuid.Nil.String()+": workflow step not found\n", nilStep.stderr)
		require.Empty(t, nilStep.stdout)
	})

	t.Run("step in an illegal state exits 3", func(t *testing.T) {
		step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
		testdb.PlaceInState(t, pool, step, statemachine.Complete, 0)
		res := runCLI(t, dbEnv, "fail", "--step", step.String(), "--message", "boom")
		require.Equal(t, 3, res.code, res.stderr)
	})

	t.Run("handled failure exits 0 and prints the result", func(t *testing.T) {
		step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
		testdb.PlaceInState(t, pool, step, statemachine.EnqueuedAsErrorForOrchestration, 0)
		testdb.SetColumns(t, pool, step, testdb.StepColumns{Attempts: testdb.Ptr[int32](1)})
		res := runCLI(t, dbEnv, "fail", "--step", step.String(), "--message", "upstream 503",
			"--http-status", "503", "--backoff-jitter=false", "--json")
		require.Equal(t, 0, res.code, res.stderr)
		var out handling.Result
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
		require.Equal(t, handling.ActionTransitionedToWaitingForRetry, out.Action)
		require.Equal(t, statemachine.WaitingForRetry, out.FinalState)
		require.Equal(t, int32(2), *out.BackoffSeconds)

		again := runCLI(t, dbEnv, "fail", "--step", step.String(), "--message", "upstream 503")
		require.Equal(t, 0, again.code, again.stderr)
		require.Contains(t, again.stdout, string(handling.ActionNoActionTaken))
	})

	t.Run("database unreachable exits 1", func(t *testing.T) {
		res := runCLI(t, []string{"DATABASE_URL=postgres://postgres@127.0.0.1:1/x?connect_timeout=2"},
			"fail", "--step", uuid.NewString())
		require.Equal(t, 1, res.code, res.stderr)
	})
}
