package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/pgserver"
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
	res := runCLI(t, nil, append(strings.Fields(command), "-h")...)
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
		"check":     {"json", "timeout"},
		"version":   {"json"},
		"fail":      {"step", "message", "kind", "retryable", "retry-after", "http-status", "json"},
		"migrate":   {"tasker-schema"},
		"demo":      {"database-url", "duration", "http-addr", "tasks"},
	}
	queueFlags := []string{
		"state", "task", "name", "older-than", "limit", "cursor", "all-stranded", "force",
		"attempts", "reason", "actor", "dry-run", "json",
	}
	for _, c := range []string{"steps list", "steps show", "steps retry", "steps resolve", "steps cancel", "steps grant", "pause", "resume"} {
		noEnv[c] = queueFlags
	}
	_, claim, ok := strings.Cut(spaces.ReplaceAllString(readme, " "), "The flags that describe one invocation have no environment variable:")
	require.True(t, ok, "the README's sentence about flags without a variable")
	claim, _, _ = strings.Cut(claim, "`sweeper <command> -h`")
	var names []string
	for _, c := range commands() {
		if c.name == "steps" {
			names = append(names, "steps list", "steps show", "steps retry", "steps resolve", "steps cancel", "steps grant")
			continue
		}
		names = append(names, c.name)
	}
	for _, name := range names {
		help := flagHelp(t, name)
		for flagName, variable := range help {
			if slices.Contains(noEnv[name], flagName) {
				require.Empty(t, variable, "%s --%s", name, flagName)
				require.Contains(t, claim, "`--"+flagName+"`", "the README lists %s --%s as having no variable", name, flagName)
				continue
			}
			require.NotEmpty(t, variable, "%s --%s has no variable, and the README does not say so", name, flagName)
			require.Equal(t, table[flagName], variable, "%s --%s: the README's Configuration table", name, flagName)
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

// jsonRecords parses JSON log lines, skipping lines that are not JSON.
func jsonRecords(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(logs, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil {
			out = append(out, rec)
		}
	}
	return out
}

func recordWith(recs []map[string]any, msgPrefix string) map[string]any {
	for _, r := range recs {
		if msg, _ := r["msg"].(string); strings.HasPrefix(msg, msgPrefix) {
			return r
		}
	}
	return nil
}

// `sweeper run` logs one start-up line with the effective configuration:
// where the database is (never its password), the sweep path, the
// schedule and its next time, the sweep and admin settings (whether a token
// is set, never the token) and the durations as duration strings.
func TestRunLogsTheEffectiveConfigurationOnce(t *testing.T) {
	t.Parallel()
	_, dbURL := testdb.NewWithURL(t)
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	password, ok := u.User.Password()
	require.True(t, ok, "the test database URL has a password to hide")
	const token = "s3cret-admin-token"
	d := startDaemon(t, []string{"DATABASE_URL=" + dbURL, "SWEEPER_ADMIN_TOKEN=" + token},
		"--http-addr", "127.0.0.1:0", "--schedule", "@every 1h", "--workers", "3", "--batch-size", "250",
		"--reconcile-interval", "7m", "--shutdown-grace", "12s", "--log-format", "json")
	addr := receive(t, d.addr, 10*time.Second, "the admin API")
	require.Equal(t, 0, d.stop(t), d.logs.String())
	logs := d.logs.String()
	require.NotContains(t, logs, password, "never the database password")
	require.NotContains(t, logs, token, "never the admin token")

	recs := jsonRecords(t, logs)
	var starts []map[string]any
	for _, r := range recs {
		if r["msg"] == "sweeper running" {
			starts = append(starts, r)
		}
	}
	require.Len(t, starts, 1, logs)
	start := starts[0]
	require.Equal(t, "INFO", start["level"])
	require.Equal(t, net.JoinHostPort(u.Hostname(), u.Port()), start["db_host"])
	require.Equal(t, strings.TrimPrefix(u.Path, "/"), start["db_name"])
	require.Equal(t, u.User.Username(), start["db_user"])
	require.Equal(t, "schedule", start["sweep_path"])
	require.Equal(t, "@every 1h", start["schedule"])
	next, err := time.Parse(time.RFC3339Nano, start["next_sweep_at"].(string))
	require.NoError(t, err)
	require.WithinDuration(t, time.Now().Add(time.Hour), next, time.Minute)
	require.EqualValues(t, 250, start["batch_size"])
	require.EqualValues(t, 3, start["workers"])
	require.Equal(t, addr, start["http_addr"])
	require.Equal(t, true, start["admin_token_set"])
	require.Equal(t, "7m0s", start["reconcile_interval"])
	require.Equal(t, "12s", start["shutdown_grace"])
	require.Equal(t, "30s", start["batch_timeout"])

	// No duration anywhere in the log is a count of nanoseconds.
	for _, r := range recs {
		for key, v := range r {
			if n, isNum := v.(float64); isNum {
				require.Less(t, n, 1e9, "%s=%v in %v: a duration in nanoseconds?", key, v, r["msg"])
			}
		}
	}
}

// With the database down at start the line still comes, the path unknown;
// the first failed check says why, and the recovery is logged.
func TestRunLogsTheOutageWithItsCause(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	dbURL := fmt.Sprintf("postgres://postgres:hunter2@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=2", port)
	d := startDaemon(t, []string{"DATABASE_URL=" + dbURL},
		"--http-addr", "127.0.0.1:0", "--schedule", "@every 1s", "--log-format", "json")
	receive(t, d.addr, 10*time.Second, "the admin API")
	srv, err := pgserver.Start(context.Background(), pgserver.Options{Port: port})
	require.NoError(t, err)
	defer func() { require.NoError(t, srv.Stop()) }()
	receive(t, d.up, 10*time.Second, "readiness after the database started")
	receive(t, d.sweeps, 10*time.Second, "a sweep once the database answers")
	require.Equal(t, 0, d.stop(t), d.logs.String())

	logs := d.logs.String()
	require.NotContains(t, logs, "hunter2")
	recs := jsonRecords(t, logs)
	start := recordWith(recs, "sweeper running")
	require.NotNil(t, start, logs)
	require.Contains(t, start["sweep_path"], "unknown")
	down := recordWith(recs, "database unreachable at start")
	require.NotNil(t, down, logs)
	require.Equal(t, "WARN", down["level"])
	require.Contains(t, down["error"], "127.0.0.1", "the cause: %v", down["error"])
	back := recordWith(recs, "database reachable again")
	require.NotNil(t, back, logs)
	require.NotEmpty(t, back["down_for"])
	require.NotNil(t, recordWith(recs, "sweep path: "), "the path, once known")
}

// The outage log: the first failure with its cause, a reminder every five
// minutes while it lasts (not on every check), and the recovery.
func TestOutageLogRepeatsEveryFiveMinutes(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	o := newOutageLog(slog.New(slog.NewJSONHandler(&buf, nil)))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	o.now = func() time.Time { return now }
	msgs := func() []string {
		var out []string
		for _, r := range jsonRecords(t, buf.String()) {
			out = append(out, r["msg"].(string))
		}
		return out
	}
	o.record(nil)
	refused := errors.New("dial tcp 10.0.0.5:5432: connect: connection refused")
	for range 601 { // a check every second, from 0 s to 600 s
		o.record(refused)
		now = now.Add(time.Second)
	}
	o.record(nil)
	o.record(nil)
	require.Equal(t, []string{
		"database reachable",
		"database unreachable; sweeps paused until it answers",
		"database still unreachable; sweeps paused",
		"database still unreachable; sweeps paused",
		"database reachable again; sweeps resume",
	}, msgs())
	recs := jsonRecords(t, buf.String())
	require.Len(t, recs, 5, "10 minutes down: the failure, reminders at 5 and 10 minutes, the recovery")
	require.Equal(t, refused.Error(), recs[1]["error"])
	require.Equal(t, "5m0s", recs[2]["down_for"])
	require.EqualValues(t, 301, recs[2]["failed_checks"])
	require.Equal(t, "10m0s", recs[3]["down_for"])
	require.EqualValues(t, 601, recs[3]["failed_checks"])
	require.Equal(t, "database reachable again; sweeps resume", recs[4]["msg"])
	require.Equal(t, "10m1s", recs[4]["down_for"])
	require.EqualValues(t, 601, recs[4]["failed_checks"])
}

// One-shot commands print their result on stdout; at the default level
// their log says only what is wrong. Asked for, the details are debug.
func TestOneShotCommandsLogOnlyWhatIsWrong(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	testdb.SeedDue(t, pool, 2)
	env := []string{"DATABASE_URL=" + url}
	once := runCLI(t, env, "once", "--log-format", "json")
	require.Equal(t, 0, once.code, once.stderr)
	require.Contains(t, once.stdout, "2 step(s) moved to pending")
	require.Empty(t, once.stderr, "nothing was wrong")
	for _, args := range [][]string{{"reconcile", "--log-format", "json"}, {"migrate", "--log-format", "json"}, {"status"}} {
		res := runCLI(t, env, args...)
		require.Equal(t, 0, res.code, "%v: %s", args, res.stderr)
		require.NotEmpty(t, res.stdout, args)
		require.Empty(t, res.stderr, "%v: nothing was wrong", args)
	}

	testdb.SeedDue(t, pool, 1)
	debug := runCLI(t, env, "once", "--log-format", "json", "--log-level", "debug")
	require.Equal(t, 0, debug.code, debug.stderr)
	recs := jsonRecords(t, debug.stderr)
	path := recordWith(recs, "sweep path: schedule")
	require.NotNil(t, path, debug.stderr)
	require.Equal(t, "DEBUG", path["level"])
	require.Equal(t, "DEBUG", recordWith(recs, "sweep finished")["level"])
}
