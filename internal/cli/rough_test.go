package cli

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// waitForLockWait waits until a session runs the named query and waits on a
// lock, failing the test after timeout.
func waitForLockWait(t *testing.T, pool *pgxpool.Pool, queryName string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var waiting bool
		require.NoError(t, pool.QueryRow(context.Background(), `SELECT EXISTS (
			SELECT 1 FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%name: ' || $1 || ' %')`, queryName).Scan(&waiting))
		if waiting {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session waited on a lock in %s within %s", queryName, timeout)
		}
		<-tick.C
	}
}

func statusJSON(t *testing.T, env []string) map[string]any {
	t.Helper()
	res := runCLI(t, env, "status", "--json")
	require.Equal(t, 0, res.code, res.stderr)
	var out map[string]any
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out), res.stdout)
	return out
}

// The first sweep on a database fills the schedule (a reconcile pass) before
// it trusts it, also when another replica holds the pass's lock at that
// moment: it waits, then reports the stranded steps `status` reports and
// moves what is due, instead of sweeping an empty schedule.
func TestFirstSweepReportsStrandedLikeStatus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, url := testdb.NewWithURL(t)
	env := []string{"DATABASE_URL=" + url}
	stranded := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, stranded, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, stranded, testdb.StepColumns{Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](3)})
	testdb.SeedDue(t, pool, 2)
	require.EqualValues(t, 1, statusJSON(t, env)["stranded"])

	// Another replica's first pass holds the adoption row; it then fails
	// (rolls back), so this sweep must run the pass itself.
	holder, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(ctx) }()
	_, err = holder.Exec(ctx, `SELECT 1 FROM tasker_sweeper.adoption WHERE id = 1 FOR UPDATE`)
	require.NoError(t, err)
	done := make(chan cmdResult, 1)
	go func() { done <- runCLI(t, env, "once", "--json") }()
	waitForLockWait(t, pool, "AdoptionLockWait", 10*time.Second)
	require.NoError(t, holder.Rollback(ctx))

	first := receive(t, done, 30*time.Second, "the first sweep")
	require.Equal(t, 0, first.code, first.stderr)
	sum := decodeSummary(t, first.stdout)
	require.EqualValues(t, 1, sum["stranded"], "the first sweep counts what status counts")
	require.EqualValues(t, 2, sum["transitioned"], "and moves what is due")
	require.NotContains(t, first.stderr, `"waiting":0`, "no pass over nothing is logged")

	after := statusJSON(t, env)
	require.EqualValues(t, 1, after["stranded"])
	require.Equal(t, []any{stranded.String()}, after["stranded_sample"])
}

// flagHelp parses `sweeper <command> -h`: each flag and the environment
// variable its help names ("" for none).
func flagHelp(t *testing.T, command string) map[string]string {
	t.Helper()
	res := runCLI(t, nil, command, "-h")
	require.Equal(t, 0, res.code, res.stderr)
	flags := map[string]string{}
	name := ""
	for _, line := range strings.Split(res.stdout, "\n") {
		if m := helpFlag.FindStringSubmatch(line); m != nil {
			name = m[1]
			flags[name] = ""
			continue
		}
		if m := helpEnv.FindStringSubmatch(line); m != nil && name != "" {
			flags[name] = m[1]
		}
	}
	require.NotEmpty(t, flags, res.stdout)
	return flags
}

var (
	helpFlag = regexp.MustCompile(`^  -([a-z-]+)`)
	helpEnv  = regexp.MustCompile(`\[\$([A-Z_]+)\]`)
	// readmeConfigRow is a row of the README's Configuration table.
	readmeConfigRow = regexp.MustCompile("(?m)^\\| `--([a-z-]+)` \\| `([A-Z_]+)` \\|")
)

// The README says which flags fall back to which variable and which have
// none; every command's help agrees with it.
func TestReadmeEnvironmentFallbacksMatchTheFlags(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	readme := string(raw)
	table := map[string]string{}
	for _, m := range readmeConfigRow.FindAllStringSubmatch(readme, -1) {
		table[m[1]] = m[2]
	}
	require.Contains(t, table, "database-url")
	// The README's list of flags without a variable, per command.
	noEnv := map[string][]string{
		"once":      {"dry-run", "json"},
		"status":    {"json"},
		"reconcile": {"json"},
		"fail":      {"step", "message", "kind", "retryable", "retry-after", "http-status", "json"},
		"migrate":   {"tasker-schema"},
		"demo":      {"database-url", "duration", "http-addr", "tasks"},
	}
	_, claim, ok := strings.Cut(spaces.ReplaceAllString(readme, " "), "The flags that describe one invocation have no environment variable:")
	require.True(t, ok, "the README's sentence about flags without a variable")
	claim, _, _ = strings.Cut(claim, "`sweeper <command> -h`")
	for _, c := range commands() {
		help := flagHelp(t, c.name)
		for flagName, variable := range help {
			if slices.Contains(noEnv[c.name], flagName) {
				require.Empty(t, variable, "%s --%s", c.name, flagName)
				require.Contains(t, claim, "`--"+flagName+"`", "the README lists %s --%s as having no variable", c.name, flagName)
				continue
			}
			require.NotEmpty(t, variable, "%s --%s has no variable, and the README does not say so", c.name, flagName)
			require.Equal(t, table[flagName], variable, "%s --%s: the README's Configuration table", c.name, flagName)
		}
	}
}

// repeatedPhrase returns a part of an error chain ("a: b: c") that another
// part starts with word for word ("count due steps: count due steps: ..."),
// or "" when every part says something new. The driver's own text, from
// "ERROR:" on, is not ours and is left out.
func repeatedPhrase(msg string) string {
	if i := strings.Index(msg, "ERROR:"); i >= 0 {
		msg = msg[:i]
	}
	parts := strings.Split(strings.TrimSuffix(strings.TrimSpace(msg), ":"), ": ")
	for i, a := range parts {
		wa := strings.Fields(a)
		for j, b := range parts {
			wb := strings.Fields(b)
			if i != j && len(wa) > 0 && len(wa) <= len(wb) && slices.Equal(wa, wb[:len(wa)]) {
				return a
			}
		}
	}
	return ""
}

func TestRepeatedPhrase(t *testing.T) {
	t.Parallel()
	require.Equal(t, "count due steps", repeatedPhrase(`sweeper once: count due steps: count due steps: ERROR: relation "x" does not exist`))
	require.Equal(t, "reconcile", repeatedPhrase(`sweeper once: prepare sweep: reconcile the schedule: reconcile: ERROR: boom`))
	require.Empty(t, repeatedPhrase(`sweeper once: sweep: 1 batch(es) failed: batch 1: claim due steps: ERROR: boom: boom`))
}

// A sweep, a status or a failure report against a database that lacks the
// tasker tables fails with one line whose parts each say something new; a
// failed `once` prints no summary, and with --json an object with "error".
func TestFailuresSayEachThingOnce(t *testing.T) {
	t.Parallel()
	empty := []string{"DATABASE_URL=" + testdb.NewEmptyURL(t)}
	// The schedule path with a tasker table gone: the first sweep's
	// reconcile pass fails.
	pool, url := testdb.NewWithURL(t)
	_, err := pool.Exec(context.Background(), `DROP TABLE tasker.workflow_step_edges CASCADE`)
	require.NoError(t, err)
	broken := []string{"DATABASE_URL=" + url}

	for _, tc := range []struct {
		env  []string
		args []string
	}{
		{empty, []string{"once"}},
		{empty, []string{"once", "--dry-run"}},
		{empty, []string{"status"}},
		{empty, []string{"fail", "--step", "01a23468-3933-75bb-ac40-88b2f2140155", "--message", "boom"}},
		{broken, []string{"once"}},
		{broken, []string{"once", "--dry-run"}},
		{broken, []string{"reconcile"}},
	} {
		res := runCLI(t, tc.env, tc.args...)
		require.Equal(t, 1, res.code, "%v: %s", tc.args, res.stderr)
		lines := strings.Split(strings.TrimSpace(res.stderr), "\n")
		last := lines[len(lines)-1] // the logs (JSON) come first
		require.True(t, strings.HasPrefix(last, "sweeper "+tc.args[0]+": "), "%v: %s", tc.args, res.stderr)
		require.Empty(t, repeatedPhrase(last), "%v: %s", tc.args, last)
		require.Empty(t, res.stdout, "%v: a failure prints no result", tc.args)
	}

	for _, env := range [][]string{empty, broken} {
		for _, args := range [][]string{{"once", "--json"}, {"once", "--json", "--dry-run"}} {
			res := runCLI(t, env, args...)
			require.Equal(t, 1, res.code, res.stderr)
			sum := decodeSummary(t, res.stdout)
			msg, ok := sum["error"].(string)
			require.True(t, ok, "a failed sweep's object says why: %s", res.stdout)
			require.Contains(t, res.stderr, "sweeper once: "+msg+"\n")
			require.Equal(t, slices.Contains(args, "--dry-run"), sum["dry_run"])
		}
	}
}

// A sweep that succeeds has no "error" in its object.
func TestOnceJSONWithoutError(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	testdb.SeedDue(t, pool, 1)
	res := runCLI(t, []string{"DATABASE_URL=" + url}, "once", "--json")
	require.Equal(t, 0, res.code, res.stderr)
	sum := decodeSummary(t, res.stdout)
	require.NotContains(t, sum, "error")
	require.EqualValues(t, 1, sum["transitioned"])
}
