package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/migrations"
	"github.com/tasker-sweeper/retrysweeper/internal/pgserver"
	"github.com/tasker-sweeper/retrysweeper/internal/preflight"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// waitForReadyz polls base's /readyz until it answers want or timeout
// passes, and returns the last answer.
func waitForReadyz(t *testing.T, base string, want int, timeout time.Duration) (int, string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		status, body := httpGet(t, base+"/readyz")
		if status == want || time.Now().After(deadline) {
			return status, body
		}
		receive(t, time.After(20*time.Millisecond), time.Second, "the next look")
	}
}

// readyzBody decodes a /readyz answer.
type readyzBody struct {
	Status string            `json:"status"`
	Ready  bool              `json:"ready"`
	Error  string            `json:"error"`
	Code   string            `json:"code"`
	Path   string            `json:"path"`
	Checks []preflight.Check `json:"checks"`
}

func decodeReadyz(t *testing.T, body string) readyzBody {
	t.Helper()
	var r readyzBody
	require.NoError(t, json.Unmarshal([]byte(body), &r), body)
	return r
}

// verdict is what `sweeper check` and a daemon's /readyz (on both
// listeners) say about one database.
type verdict struct {
	check       cmdResult
	status      int
	readyz      readyzBody
	adminStatus int
}

// judge runs `sweeper check` against url, then a daemon (that never sweeps
// during the test) and asks its /readyz on the ops listener and on the
// admin API.
func judge(t *testing.T, url string) verdict {
	t.Helper()
	env := []string{"DATABASE_URL=" + url}
	v := verdict{check: runCLI(t, env, "check")}
	// Only the probes are judged: no sweep may run (the timer gate would
	// adopt and move the caller's due steps while the daemon is up).
	d := startDaemon(t, env, "--http-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0", "--schedule", "@every 1h",
		"--wake-at-due=false")
	ops := receive(t, d.ops, 10*time.Second, "the ops listener")
	admin := receive(t, d.addr, 10*time.Second, "the admin API")
	status, body := httpGet(t, "http://"+ops+"/readyz")
	v.status, v.readyz = status, decodeReadyz(t, body)
	v.adminStatus, _ = httpGet(t, "http://"+admin+"/readyz")
	require.Equal(t, 0, d.stop(t), d.logs.String())
	return v
}

// requireNotReady checks both answers fail, naming the check and why.
func requireNotReady(t *testing.T, v verdict, check, why string) {
	t.Helper()
	require.Equal(t, 1, v.check.code, "sweeper check: %s%s", v.check.stdout, v.check.stderr)
	require.Regexp(t, `(?m)^`+check+` +FAIL +.*`+regexpQuote(why), v.check.stdout)
	require.Contains(t, v.check.stdout, "not ready:")
	require.Contains(t, v.check.stderr, "sweeper check: not ready: "+check+": ")
	require.Equal(t, http.StatusServiceUnavailable, v.status, "%+v", v.readyz)
	require.Equal(t, http.StatusServiceUnavailable, v.adminStatus)
	require.False(t, v.readyz.Ready)
	require.Equal(t, "unavailable", v.readyz.Code)
	require.Contains(t, v.readyz.Error, check+": ")
	require.Contains(t, v.readyz.Error, why)
	found := false
	for _, c := range v.readyz.Checks {
		if c.Name == check {
			found = true
			require.False(t, c.OK, "%+v", c)
			require.Contains(t, c.Detail, why)
		}
	}
	require.True(t, found, "no %s check in %+v", check, v.readyz.Checks)
}

func regexpQuote(s string) string {
	return strings.NewReplacer(".", `\.`, "(", `\(`, ")", `\)`, "'", "'").Replace(s)
}

// A database migrated by this binary: 200 with every check listed, exit 0,
// on both sweep paths.
func TestReadyOnAHealthyDatabase(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		url := testdb.NewURLWith(t, objects)
		v := judge(t, url)
		require.Equal(t, 0, v.check.code, v.check.stdout+v.check.stderr)
		require.Equal(t, http.StatusOK, v.status, "%+v", v.readyz)
		require.Equal(t, http.StatusOK, v.adminStatus)
		require.True(t, v.readyz.Ready)
		require.Equal(t, "ready", v.readyz.Status)
		var names []string
		for _, c := range v.readyz.Checks {
			require.True(t, c.OK, "%+v", c)
			names = append(names, c.Name)
		}
		require.Equal(t, []string{"database", "tasker_schema", "privileges", "sweeper_schema", "sweep_path", "sweeps"}, names)
		for _, name := range names[:5] {
			require.Regexp(t, `(?m)^`+name+` +ok +\S`, v.check.stdout)
		}
		require.NotRegexp(t, `(?m)^sweeps `, v.check.stdout, "the sweeps check is the daemon's")
		require.Contains(t, v.check.stdout, "ready: every check passed")
		path := map[testdb.Objects]string{testdb.WithSweeperObjects: "schedule", testdb.TaskerOnly: "scan"}[objects]
		require.Equal(t, path, v.readyz.Path)
		require.Regexp(t, `(?m)^sweep_path +ok +`+path+`: `, v.check.stdout)

		js := runCLI(t, []string{"DATABASE_URL=" + url}, "check", "--json")
		require.Equal(t, 0, js.code, js.stderr)
		var rep preflight.Report
		require.NoError(t, json.Unmarshal([]byte(js.stdout), &rep))
		require.True(t, rep.Ready)
		require.Len(t, rep.Checks, 5)
		require.Equal(t, path, rep.Path)
	})
}

// A tasker table dropped: not ready, naming the table.
func TestNotReadyWithoutATaskerTable(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	_, err := pool.Exec(context.Background(), `DROP TABLE tasker.workflow_step_edges`)
	require.NoError(t, err)
	requireNotReady(t, judge(t, url), "tasker_schema", "table tasker.workflow_step_edges is missing")
}

// A database migrated by a newer sweeper: not ready, saying so.
func TestNotReadyOnASchemaFromANewerSweeper(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	known, err := db.KnownSweeperVersion()
	require.NoError(t, err)
	_, err = pool.Exec(context.Background(),
		`INSERT INTO `+migrations.SweeperObjects.VersionTable+` (version_id, is_applied) VALUES ($1, true)`, known+1)
	require.NoError(t, err)
	requireNotReady(t, judge(t, url), "sweeper_schema",
		fmt.Sprintf("database migrated by a newer sweeper: version %d, this binary knows up to %d", known+1, known))
}

// The database unreachable: not ready, saying why, and `sweeper check`
// still prints its table.
func TestNotReadyWhenTheDatabaseIsDown(t *testing.T) {
	t.Parallel()
	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=2", freePort(t))
	v := judge(t, url)
	requireNotReady(t, v, "database", "unreachable: ")
	require.Contains(t, v.readyz.Error, "connection refused")
	require.Len(t, v.check.stdout, len(strings.TrimRight(v.check.stdout, "\n"))+1)
	require.NotContains(t, v.check.stdout, "tasker_schema", "nothing else can be known")
}

// restrictedRole creates a login role on url's database holding the
// README's grants, dropped when the test ends, and returns its URL and an
// admin pool on the database.
func restrictedRole(t *testing.T, dbURL string) (string, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	server := testdb.Server(t)
	admin := *u
	admin.User = url.UserPassword(server.User, server.Password)
	pool, err := pgxpool.New(ctx, admin.String())
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	role := "sweeper_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	_, err = pool.Exec(ctx, `CREATE ROLE `+role+` LOGIN PASSWORD 'sweeper-pw'`)
	require.NoError(t, err)
	t.Cleanup(func() {
		for _, stmt := range []string{`DROP OWNED BY ` + role, `DROP ROLE ` + role} {
			if _, err := pool.Exec(ctx, stmt); err != nil {
				t.Errorf("%s: %v", stmt, err)
			}
		}
	})
	// The grants the README lists, nothing more.
	_, err = pool.Exec(ctx, strings.ReplaceAll(`
GRANT USAGE ON SCHEMA tasker TO ROLE_NAME;
GRANT SELECT ON tasker.workflow_steps, tasker.workflow_step_transitions,
                tasker.workflow_step_edges, tasker.named_steps,
                tasker.tasks, tasker.named_tasks, tasker.task_namespaces TO ROLE_NAME;
GRANT INSERT, UPDATE ON tasker.workflow_step_transitions TO ROLE_NAME;
GRANT UPDATE ON tasker.workflow_steps TO ROLE_NAME;
GRANT USAGE ON SCHEMA tasker_sweeper TO ROLE_NAME;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA tasker_sweeper TO ROLE_NAME;`, "ROLE_NAME", role))
	require.NoError(t, err)
	restricted := *u
	restricted.User = url.UserPassword(role, "sweeper-pw")
	return restricted.String(), pool
}

// A role with exactly the README's grants is ready and sweeps; the same
// role without UPDATE on workflow_steps is not ready, naming the grant.
func TestReadinessOfARestrictedRole(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	testdb.SeedDue(t, pool, 3)
	roleURL, admin := restrictedRole(t, url)

	v := judge(t, roleURL)
	require.Equal(t, 0, v.check.code, v.check.stdout+v.check.stderr)
	require.Equal(t, http.StatusOK, v.status, "%+v", v.readyz)
	once := runCLI(t, []string{"DATABASE_URL=" + roleURL}, "once", "--json")
	require.Equal(t, 0, once.code, once.stderr)
	require.EqualValues(t, 3, decodeSummary(t, once.stdout)["transitioned"], "the README's grants are enough to sweep")

	role := strings.SplitN(strings.TrimPrefix(roleURL, "postgres://"), ":", 2)[0]
	_, err := admin.Exec(context.Background(), `REVOKE UPDATE ON tasker.workflow_steps FROM `+role)
	require.NoError(t, err)
	requireNotReady(t, judge(t, roleURL), "privileges", "role "+role+" lacks UPDATE on tasker.workflow_steps")

	// A schema the role may not use is a missing grant too, not a failed probe.
	_, err = admin.Exec(context.Background(), `GRANT UPDATE ON tasker.workflow_steps TO `+role+`;
		REVOKE USAGE ON SCHEMA tasker_sweeper FROM `+role)
	require.NoError(t, err)
	requireNotReady(t, judge(t, roleURL), "privileges", "role "+role+" lacks USAGE on schema tasker_sweeper")
}

// After the database goes down, /readyz turns 503 within about a second
// (the preflight's facts are at most a second old), and back to 200 when
// it returns.
func TestReadyzTurnsWithinASecondOfTheDatabaseGoingDown(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	srv, err := pgserver.Start(context.Background(), pgserver.Options{Port: port})
	require.NoError(t, err)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			require.NoError(t, srv.Stop())
		}
	})
	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=2", port)
	migrated := runCLI(t, []string{"DATABASE_URL=" + url}, "migrate", "--tasker-schema")
	require.Equal(t, 0, migrated.code, migrated.stderr)

	d := startDaemon(t, []string{"DATABASE_URL=" + url},
		"--http-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0", "--schedule", "@every 1h", "--log-format", "json")
	ops := "http://" + receive(t, d.ops, 10*time.Second, "the ops listener")
	status, body := waitForReadyz(t, ops, http.StatusOK, 10*time.Second)
	require.Equal(t, http.StatusOK, status, body)
	// Keep the facts fresh, as a probe every few hundred milliseconds would.
	status, _ = httpGet(t, ops+"/readyz")
	require.Equal(t, http.StatusOK, status)

	require.NoError(t, srv.Stop())
	stopped = true
	down := time.Now()
	status, body = waitForReadyz(t, ops, http.StatusServiceUnavailable, 5*time.Second)
	took := time.Since(down)
	t.Logf("503 %s after the database stopped", took.Round(time.Millisecond))
	require.Equal(t, http.StatusServiceUnavailable, status, body)
	require.Less(t, took, 1500*time.Millisecond, "/readyz stayed 200 for %s after the database went down", took)
	r := decodeReadyz(t, body)
	require.Contains(t, r.Error, "database: unreachable")
	require.Equal(t, 0, d.stop(t), d.logs.String())
}

// The facts are gathered at most once per maxAge, however many probes ask
// at once; a new gathering starts once they are older.
func TestReadinessGathersOncePerMaxAge(t *testing.T) {
	t.Parallel()
	var gathered atomic.Int32
	release := make(chan struct{})
	r := &readiness{
		gather: func(context.Context) preflight.Facts {
			gathered.Add(1)
			<-release
			return preflight.Facts{Err: fmt.Errorf("gathering %d", gathered.Load())}
		},
		opts:    func() preflight.Options { return preflight.Options{} },
		maxAge:  time.Hour,
		timeout: time.Second,
	}
	var reports sync.WaitGroup
	summaries := make(chan string, 8)
	for range 8 {
		reports.Go(func() { summaries <- r.Report(context.Background()).Summary() })
	}
	deadline := time.Now().Add(5 * time.Second)
	for gathered.Load() == 0 {
		require.True(t, time.Now().Before(deadline), "no gathering started")
		receive(t, time.After(time.Millisecond), time.Second, "the next look")
	}
	close(release)
	reports.Wait()
	close(summaries)
	for s := range summaries {
		require.Equal(t, "not ready: database: unreachable: gathering 1", s)
	}
	require.EqualValues(t, 1, gathered.Load(), "8 concurrent probes, one gathering")
	require.Equal(t, "not ready: database: unreachable: gathering 1", r.Report(context.Background()).Summary(), "cached")

	r.mu.Lock()
	r.at = time.Now().Add(-2 * time.Hour) // the facts aged past maxAge
	r.mu.Unlock()
	require.Equal(t, "not ready: database: unreachable: gathering 2", r.Report(context.Background()).Summary())

	// A probe that gives up waiting gets its own answer; the gathering
	// carries on for the others.
	r.mu.Lock()
	r.at = time.Time{}
	r.mu.Unlock()
	slow := make(chan struct{})
	r.gather = func(context.Context) preflight.Facts { <-slow; return preflight.Facts{ServerVersion: "15"} }
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.Contains(t, r.Report(ctx).Summary(), "context canceled")
	close(slow)
}

// The sweeps check counts real sweeps: dry runs and interrupted sweeps are
// neither successes nor failures.
func TestSweepRecorder(t *testing.T) {
	t.Parallel()
	var s sweepRecorder
	boom := fmt.Errorf("batch 1: %w", context.DeadlineExceeded)
	for range 2 {
		s.sweepDone(sweeper.Summary{}, boom)
	}
	s.sweepDone(sweeper.Summary{DryRun: true}, nil)
	s.sweepDone(sweeper.Summary{Interrupted: true}, nil)
	s.sweepDone(sweeper.Summary{}, context.Canceled)
	require.Equal(t, preflight.SweepRecord{Sweeps: 2, ConsecutiveFailures: 2, LastError: boom.Error()}, *s.record())
	s.sweepDone(sweeper.Summary{}, boom)
	rep := preflight.Evaluate(preflight.Facts{Err: fmt.Errorf("x")}, preflight.Options{Sweeps: s.record()})
	require.Contains(t, rep.Summary(), "sweeps: the last 3 sweeps failed: batch 1: context deadline exceeded")
	s.sweepDone(sweeper.Summary{Transitioned: 1}, nil)
	require.Equal(t, preflight.SweepRecord{Sweeps: 4}, *s.record())
}

// The ops listener serves the probes and /metrics with no token, nothing
// else; the admin API keeps serving them too. The backlog gauges are there
// after the first health check, and promtool accepts the live exposition.
func TestOpsListener(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	_ = pool
	d := startDaemon(t, []string{"DATABASE_URL=" + url}, "--http-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0",
		"--admin-token", "s3cret", "--schedule", "@every 1h")
	ops := "http://" + receive(t, d.ops, 10*time.Second, "the ops listener")
	admin := "http://" + receive(t, d.addr, 10*time.Second, "the admin API")

	for _, base := range []string{ops, admin} {
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			status, body := httpGet(t, base+path)
			require.Equal(t, http.StatusOK, status, "%s%s: %s", base, path, body)
		}
	}
	status, body := httpGet(t, admin+"/v1/status")
	require.Equal(t, http.StatusOK, status, body)
	for _, path := range []string{"/v1/status", "/v1/steps/" + uuid.NewString()} {
		status, body := httpGet(t, ops+path)
		require.Equal(t, http.StatusNotFound, status, "%s: %s", path, body)
	}
	resp, err := http.Post(ops+"/v1/sweeps", "application/json", nil)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "no state change through the ops port")

	_, metrics := httpGet(t, ops+"/metrics")
	require.Contains(t, metrics, "tasker_sweeper_ready 1", "the probe's verdict")
	require.Contains(t, metrics, `tasker_sweeper_build_info{goversion=`)
	promtool(t, metrics)
	require.Equal(t, 0, d.stop(t), d.logs.String())
	require.Contains(t, d.logs.String(), `"ops_addr":"127.0.0.1:`)
}

// The backlog gauges follow the due rule and are refreshed once the
// database answers, off the sweep's path.
func TestBacklogGauges(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURLFor(t, testdb.TaskerOnly)
	testdb.SeedDue(t, pool, 4)
	notDue := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, notDue, "waiting_for_retry", time.Minute)
	testdb.SetColumns(t, pool, notDue, testdb.StepColumns{
		Attempts:         testdb.Ptr[int32](1),
		LastAttemptedAgo: testdb.Ptr(time.Duration(0)), BackoffRequestSeconds: testdb.Ptr[int32](3600),
	})
	d := startDaemon(t, []string{"DATABASE_URL=" + url}, "--http-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0",
		"--schedule", "@every 1h")
	ops := "http://" + receive(t, d.ops, 10*time.Second, "the ops listener")
	deadline := time.Now().Add(10 * time.Second)
	var metrics string
	for !strings.Contains(metrics, "tasker_sweeper_waiting_steps 5\n") {
		require.True(t, time.Now().Before(deadline), "the backlog gauges were not refreshed within 10 s:\n%s", metrics)
		receive(t, time.After(20*time.Millisecond), time.Second, "the next look")
		_, metrics = httpGet(t, ops+"/metrics")
	}
	require.Contains(t, metrics, "tasker_sweeper_due_steps 4\n")
	var age float64
	for line := range strings.Lines(metrics) {
		if v, ok := strings.CutPrefix(line, "tasker_sweeper_oldest_due_age_seconds "); ok {
			_, err := fmt.Sscan(v, &age)
			require.NoError(t, err)
		}
	}
	require.InDelta(t, 3600, age, 60, "due since the backoff expired an hour ago")
	require.Equal(t, 0, d.stop(t), d.logs.String())
}

// promtool lints an exposition: when it is installed, and always under
// CI=true.
func promtool(t *testing.T, exposition string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("promtool is required under CI=true: %v", err)
		}
		t.Logf("promtool not found (%v): the live /metrics is not linted (CI=true makes this a failure)", err)
		return
	}
	cmd := exec.CommandContext(t.Context(), bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(exposition)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "promtool check metrics:\n%s", out)
}

// --ops-addr: the default, the environment, bad values (exit 2 naming the
// flag), a taken port (exit 1 naming the flag).
func TestOpsAddrConfiguration(t *testing.T) {
	t.Parallel()
	parse := func(vars []string, args ...string) (daemonConfig, error) {
		f := newFlags("run", env{getenv: getenvOf(vars)})
		build := daemonFlags(f)
		require.NoError(t, f.parse(args))
		return build()
	}
	base := []string{"DATABASE_URL=postgres://u@127.0.0.1:1/x"}
	cfg, err := parse(base)
	require.NoError(t, err)
	require.Equal(t, ":9464", cfg.opsAddr, "on every interface by default: probes and Prometheus come from outside")
	cfg, err = parse(append(base, "SWEEPER_OPS_ADDR=127.0.0.1:9999"))
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:9999", cfg.opsAddr)
	cfg, err = parse(append(base, "SWEEPER_OPS_ADDR=127.0.0.1:9999"), "--ops-addr=")
	require.NoError(t, err)
	require.Empty(t, cfg.opsAddr, "empty on the command line: no ops listener")
	require.NoError(t, checkOpsAddr("0.0.0.0:0", "127.0.0.1:0"))

	for _, tc := range []struct{ args, env []string }{
		{[]string{"--ops-addr", "nonsense"}, nil},
		{[]string{"--ops-addr", "127.0.0.1:99999"}, nil},
		{[]string{"--ops-addr", ":http"}, nil},
		{nil, []string{"SWEEPER_OPS_ADDR=9464"}},
		{[]string{"--ops-addr", "127.0.0.1:9090", "--http-addr", "127.0.0.1:9090"}, nil},
	} {
		res := runCLI(t, append(base, tc.env...), append([]string{"run"}, tc.args...)...)
		require.Equal(t, 2, res.code, "%v %v: %s", tc.args, tc.env, res.stderr)
		require.Contains(t, res.stderr, "--ops-addr")
		require.Len(t, strings.Split(strings.TrimSpace(res.stderr), "\n"), 1, res.stderr)
	}

	taken := freeListener(t)
	res := runCLI(t, base, "run", "--http-addr", "127.0.0.1:0", "--ops-addr", taken)
	require.Equal(t, 1, res.code, res.stderr)
	require.Contains(t, res.stderr, "sweeper run: listen on "+taken+" (--ops-addr)")
}
