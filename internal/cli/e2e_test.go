package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

func TestOnceDryRunThenSweep(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	testdb.SeedDue(t, pool, 50)
	env := []string{"DATABASE_URL=" + url}

	dry := runCLI(t, env, "once", "--dry-run", "--json")
	require.Equal(t, 0, dry.code, dry.stderr)
	drySum := decodeSummary(t, dry.stdout)
	require.Equal(t, true, drySum["dry_run"])
	require.EqualValues(t, 50, drySum["transitioned"])
	require.Equal(t, 50, countWaiting(t, pool), "a dry run writes nothing")

	real := runCLI(t, env, "once", "--json", "--batch-size", "7")
	require.Equal(t, 0, real.code, real.stderr)
	sum := decodeSummary(t, real.stdout)
	require.EqualValues(t, 50, sum["transitioned"], "the dry run reported what the sweep moved")
	require.EqualValues(t, 8, sum["batches"])
	require.Equal(t, 0, countWaiting(t, pool))

	nothing := runCLI(t, env, "once")
	require.Equal(t, 0, nothing.code, "nothing due is still success")
	require.Contains(t, nothing.stdout, "0 step(s) moved to pending")
}

func TestBadConfigurationExits2WithOneLineNamingTheFlag(t *testing.T) {
	t.Parallel()
	url := "postgres://u:secret@127.0.0.1:1/db"
	long := strings.Repeat("n", 64)
	cases := []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"run", "--schedule", "every five seconds"}, nil, "--schedule"},
		{[]string{"run"}, []string{"SWEEPER_SCHEDULE=* * *"}, "--schedule"},
		{[]string{"run", "--schedule", "0 0 30 2 *"}, nil, "--schedule"}, // February 30: never fires
		{[]string{"run", "--schedule", "@every 100ms"}, nil, "--schedule"},
		{[]string{"run", "--batch-size", "0"}, nil, "--batch-size"},
		{[]string{"run", "--batch-size", "100001"}, nil, "--batch-size"},
		{[]string{"run"}, []string{"SWEEPER_BATCH_SIZE=zero"}, "--batch-size"},
		{[]string{"run"}, []string{"SWEEPER_BATCH_SIZE=0"}, "--batch-size"},
		{[]string{"run", "--workers", "0"}, nil, "--workers"},
		{[]string{"run", "--workers", "65"}, nil, "--workers"},
		{[]string{"run", "--batch-timeout", "0s"}, nil, "--batch-timeout"},
		{[]string{"run", "--notify-channel", long}, nil, "--notify-channel"},
		// A NULL max_attempts is tasker's 3, not a setting: the old flag is unknown.
		{[]string{"run", "--default-max-attempts", "3"}, nil, "flag provided but not defined: -default-max-attempts"},
		{[]string{"run", "--backoff-base", "0s"}, nil, "--backoff-base"},
		{[]string{"run", "--backoff-multiplier", "0.5"}, nil, "--backoff-multiplier"},
		{[]string{"run"}, []string{"SWEEPER_BACKOFF_MAX=1ms"}, "--backoff-max"},
		{[]string{"run", "--backoff-jitter-fraction", "1.5"}, nil, "--backoff-jitter-fraction"},
		{[]string{"run", "--shutdown-grace", "-1s"}, nil, "--shutdown-grace"},
		{[]string{"run", "--wake-gap", "0s"}, nil, "--wake-gap"},
		{[]string{"run"}, []string{"SWEEPER_WAKE_GAP=1m"}, "--wake-gap"},
		{[]string{"run", "--adopt-interval", "1ms"}, nil, "--adopt-interval"},
		{[]string{"run"}, []string{"SWEEPER_WAKE_AT_DUE=sometimes"}, "--wake-at-due"},
		{[]string{"run", "--http-addr", "0.0.0.0:9999"}, nil, "--admin-token"},
		{[]string{"run", "--http-addr", "nonsense"}, nil, "--http-addr"},
		{[]string{"run", "--http-addr", "127.0.0.1:99999"}, nil, "--http-addr"},
		{[]string{"run", "--http-addr", "127.0.0.1:65536"}, nil, "--http-addr"},
		{[]string{"run", "--http-addr", "127.0.0.1:http"}, nil, "--http-addr"},
		{[]string{"run", "--http-addr", "127.0.0.1:-1"}, nil, "--http-addr"},
		{[]string{"run"}, []string{"SWEEPER_HTTP_ADDR=127.0.0.1:+80"}, "--http-addr"},
		{[]string{"run", "--log-level", "loud"}, nil, "--log-level"},
		{[]string{"run", "--log-format", "yaml"}, nil, "--log-format"},
		{[]string{"once", "--batch-size", "-3"}, nil, "--batch-size"},
		{[]string{"once", "--workers", "100"}, nil, "--workers"},
		{[]string{"once", "--no-such-flag"}, nil, "no-such-flag"},
		{[]string{"once", "extra"}, nil, "extra"},
		{[]string{"status", "--json=maybe"}, nil, "json"},
		{[]string{"migrate", "--log-level", "loud"}, nil, "--log-level"},
		{[]string{"run", "--database-url", "postgres://u:secret@host:port/db"}, nil, "--database-url"},
		{[]string{"run", "--database-url", "::not a url::"}, nil, "--database-url"},
		{[]string{"status"}, []string{"DATABASE_URL="}, "--database-url"},
	}
	for _, tc := range cases {
		env := append([]string{"DATABASE_URL=" + url}, tc.env...)
		res := runCLI(t, env, tc.args...)
		require.Equal(t, 2, res.code, "%v: %s", tc.args, res.stderr)
		lines := strings.Split(strings.TrimSpace(res.stderr), "\n")
		require.Len(t, lines, 1, "%v: one clear line, got %q", tc.args, res.stderr)
		require.Contains(t, lines[0], tc.want, tc.args)
		require.NotContains(t, res.stderr, "secret", "never print a database password")
		require.Empty(t, res.stdout, tc.args)
	}
	require.NoError(t, checkAdminAddr("0.0.0.0:9090", "token"), "off loopback is fine with a token")
	require.NoError(t, checkAdminAddr("localhost:9090", ""))
	require.NoError(t, checkAdminAddr("[::1]:9090", ""))
	require.NoError(t, checkAdminAddr("127.0.0.1:0", ""), "port 0: any free port")
	require.NoError(t, checkAdminAddr("127.0.0.1:65535", ""))
}

func TestUsageHelpAndUnknownCommands(t *testing.T) {
	t.Parallel()
	// No command is a usage error: the usage on stderr, exit 2.
	none := runCLI(t, nil)
	require.Equal(t, 2, none.code)
	require.Empty(t, none.stdout)
	require.Contains(t, none.stderr, "usage: sweeper <command>")
	for _, name := range []string{"run", "once", "status", "fail", "reconcile", "migrate", "demo"} {
		require.Contains(t, none.stderr, "  "+name+" ")
	}

	// Asked for, it is the answer: stdout, exit 0.
	help := runCLI(t, nil, "help")
	require.Equal(t, 0, help.code)
	require.Empty(t, help.stderr)
	require.Equal(t, none.stderr, help.stdout)

	flagHelp := runCLI(t, nil, "once", "-h")
	require.Equal(t, 0, flagHelp.code, flagHelp.stderr)
	require.Contains(t, flagHelp.stdout, "usage: sweeper once [flags]")
	require.Contains(t, flagHelp.stdout, "[$SWEEPER_BATCH_SIZE]")

	unknown := runCLI(t, nil, "sweep")
	require.Equal(t, 2, unknown.code)
	require.Equal(t, "sweeper: unknown command \"sweep\" (try 'sweeper help')\n", unknown.stderr)
}

func TestFlagsWinOverTheEnvironment(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	testdb.SeedDue(t, pool, 10)
	res := runCLI(t, []string{"DATABASE_URL=" + url, "SWEEPER_BATCH_SIZE=2"}, "once", "--json", "--workers", "1", "--batch-size", "5")
	require.Equal(t, 0, res.code, res.stderr)
	require.EqualValues(t, 2, decodeSummary(t, res.stdout)["batches"], "--batch-size 5, not $SWEEPER_BATCH_SIZE 2")

	testdb.SeedDue(t, pool, 10)
	// One worker: concurrent batches would share the steps unevenly.
	res = runCLI(t, []string{"DATABASE_URL=" + url, "SWEEPER_BATCH_SIZE=2"}, "once", "--json", "--workers", "1")
	require.Equal(t, 0, res.code, res.stderr)
	require.EqualValues(t, 5, decodeSummary(t, res.stdout)["batches"], "the environment fills in a missing flag")
}

func TestStatusCommand(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	env := []string{"DATABASE_URL=" + url}
	testdb.SeedDue(t, pool, 3)
	later := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, later, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, later, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Minute), BackoffRequestSeconds: testdb.Ptr[int32](3600),
	})
	stranded := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, stranded, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, stranded, testdb.StepColumns{Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](3)})

	text := runCLI(t, env, "status")
	require.Equal(t, 0, text.code, text.stderr)
	require.Regexp(t, `(?m)^\s*waiting_for_retry\s+5\s*$`, text.stdout)
	require.Regexp(t, `(?m)^\s*complete\s+0\s*$`, text.stdout, "every state has a row")
	require.Contains(t, text.stdout, "due now: 3\n")
	require.Contains(t, text.stdout, "waiting, not yet due: 1\n")
	require.Contains(t, text.stdout, "next due at: ")
	require.Contains(t, text.stdout, "stranded (waiting_for_retry, not retry-eligible): 1\n")

	// The list of stranded steps comes from the schedule, which a sweep fills.
	sweep := runCLI(t, env, "once")
	require.Equal(t, 0, sweep.code, sweep.stderr)
	text = runCLI(t, env, "status")
	require.Equal(t, 0, text.code, text.stderr)
	require.Contains(t, text.stdout, "due now: 0\n")
	require.Contains(t, text.stdout, "  step "+stranded.String()+" task ")
	require.Contains(t, text.stdout, "attempts=3 max_attempts=3 retryable=true")

	asJSON := runCLI(t, env, "status", "--json")
	require.Equal(t, 0, asJSON.code, asJSON.stderr)
	var out struct {
		Counts         map[string]int64 `json:"counts_by_state"`
		DueNow         int64            `json:"due_now"`
		NotYetDue      int64            `json:"not_yet_due"`
		NextDueAt      *time.Time       `json:"next_due_at"`
		Stranded       int64            `json:"stranded"`
		StrandedSample []uuid.UUID      `json:"stranded_sample"`
	}
	require.NoError(t, json.Unmarshal([]byte(asJSON.stdout), &out), asJSON.stdout)
	require.Equal(t, int64(2), out.Counts["waiting_for_retry"])
	require.Equal(t, int64(3), out.Counts["pending"])
	require.Equal(t, int64(0), out.DueNow)
	require.Equal(t, int64(1), out.NotYetDue)
	require.NotNil(t, out.NextDueAt)
	require.WithinDuration(t, time.Now().Add(59*time.Minute), *out.NextDueAt, 2*time.Minute)
	require.Equal(t, int64(1), out.Stranded)
	require.Equal(t, []uuid.UUID{stranded}, out.StrandedSample)

	down := runCLI(t, []string{"DATABASE_URL=postgres://postgres@127.0.0.1:1/x?connect_timeout=2"}, "status")
	require.Equal(t, 1, down.code, down.stderr)
}

// `sweeper migrate` installs the sweeper-owned objects on a database whose
// tasker tables exist (as the orchestrator's would), idempotently, and the
// sweep switches from the scan path to the schedule path.
func TestMigrateInstallsSweeperObjects(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURLFor(t, testdb.TaskerOnly)
	testdb.SeedDue(t, pool, 20)
	env := []string{"DATABASE_URL=" + url}

	var before int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM information_schema.columns
		WHERE table_schema = 'tasker'`).Scan(&before))

	scan := runCLI(t, env, "once", "--dry-run", "--json")
	require.Equal(t, 0, scan.code, scan.stderr)
	require.Equal(t, "scan", decodeSummary(t, scan.stdout)["path"])
	require.Contains(t, scan.stderr, "sweeper-owned objects missing")

	// The inline handler parks a step while there is no schedule to put it on.
	parked := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, parked, statemachine.EnqueuedAsErrorForOrchestration, 0)
	testdb.SetColumns(t, pool, parked, testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)})
	fail := runCLI(t, env, "fail", "--step", parked.String(), "--message", "connection reset", "--retry-after", "120")
	require.Equal(t, 0, fail.code, fail.stderr)
	require.Contains(t, fail.stdout, "TransitionedToWaitingForRetry")

	first := runCLI(t, env, "migrate")
	require.Equal(t, 0, first.code, first.stderr)
	require.Contains(t, first.stdout, "sweeper: applied")
	again := runCLI(t, env, "migrate")
	require.Equal(t, 0, again.code, again.stderr)
	require.Contains(t, again.stdout, "sweeper: up to date")

	var after int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM information_schema.columns
		WHERE table_schema = 'tasker'`).Scan(&after))
	require.Equal(t, before, after, "the tasker tables' columns are untouched")

	sweep := runCLI(t, env, "once", "--json")
	require.Equal(t, 0, sweep.code, sweep.stderr)
	sum := decodeSummary(t, sweep.stdout)
	require.Equal(t, "schedule", sum["path"])
	require.EqualValues(t, 21, sum["adopted"], "steps parked before the install are adopted, the handler's too")
	require.EqualValues(t, 20, sum["transitioned"], "all but the handler's, whose Retry-After is 2 minutes")
	var due time.Time
	require.NoError(t, pool.QueryRow(context.Background(),
		`SELECT due_at FROM tasker_sweeper.retry_schedule WHERE workflow_step_uuid = $1`, parked).Scan(&due))
	require.WithinDuration(t, time.Now().UTC().Add(2*time.Minute), due, 30*time.Second)
}

// `sweeper once` runs a due reconcile pass after its sweep.
func TestOnceRunsDueReconcile(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	ctx := context.Background()
	// A step parked by another writer long before any incremental adoption
	// window, and a full pass that is due.
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](1), LastAttemptedAgo: testdb.Ptr(time.Second), BackoffRequestSeconds: testdb.Ptr[int32](600),
	})
	_, err := pool.Exec(ctx, `UPDATE tasker.workflow_step_transitions SET created_at = created_at - interval '1 hour'
		WHERE workflow_step_uuid = $1`, step)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `UPDATE tasker_sweeper.adoption
		SET watermark = now(), last_full_pass = now() - interval '1 hour'`)
	require.NoError(t, err)

	res := runCLI(t, []string{"DATABASE_URL=" + url}, "once", "--json")
	require.Equal(t, 0, res.code, res.stderr)
	require.True(t, scheduled(t, pool, step), "the reconcile pass adopted the old step")
	require.Contains(t, res.stderr, "reconcile")
}

func scheduled(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) bool {
	t.Helper()
	var ok bool
	require.NoError(t, pool.QueryRow(context.Background(),
		`SELECT EXISTS (SELECT 1 FROM tasker_sweeper.retry_schedule WHERE workflow_step_uuid = $1)`, step).Scan(&ok))
	return ok
}
