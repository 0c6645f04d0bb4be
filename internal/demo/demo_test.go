package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/demo/demosqlc"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

func TestMain(m *testing.M) { testdb.Main(m) }

func TestPlanLayout(t *testing.T) {
	t.Parallel()
	const n = 7
	p := newPlan(n)
	require.Len(t, p.tasks, n)
	require.Len(t, p.steps, n*len(stepNames))
	require.Len(t, p.failing, n, "one failing step per task")
	for i, f := range p.failing {
		st := f.step
		require.Equal(t, p.tasks[i], st.task)
		require.Equal(t, i%3, st.pos, "task %d fails at step i%%3", i+1)
		require.Equal(t, statemachine.EnqueuedAsErrorForOrchestration, st.state)
		switch i {
		case n - 1:
			require.EqualValues(t, 3, st.attempts, "the last task has used all its attempts")
			require.Equal(t, failTimeout, f.failure)
		case n - 2:
			require.False(t, st.retryable, "the one before is not retryable")
		default:
			require.EqualValues(t, 1, st.attempts)
			require.True(t, st.retryable)
			require.Equal(t, failureMix[i%len(failureMix)], f.failure)
		}
	}
	for _, st := range p.steps {
		failPos := (st.taskNo - 1) % 3
		switch {
		case st.pos < failPos:
			require.Equal(t, statemachine.Complete, st.state)
			require.Positive(t, st.endedAgo)
		case st.pos > failPos:
			require.Equal(t, statemachine.Pending, st.state)
			require.Zero(t, st.attempts)
		}
	}
}

func TestReportTableAlignsSections(t *testing.T) {
	t.Parallel()
	var tbl reportTable
	tbl.section("FIRST", "STEPS")
	tbl.row("a", 5, "note")
	tbl.row("longer label", 12345, "")
	tbl.section("SECOND", "")
	tbl.row("b", 7, "")
	var out bytes.Buffer
	require.NoError(t, tbl.write(&out))
	require.Equal(t, ""+
		"FIRST          STEPS\n"+
		"a                  5   note\n"+
		"longer label   12345\n"+
		"\n"+
		"SECOND\n"+
		"b                  7\n", out.String())
}

func TestRunOnAThrowawayServer(t *testing.T) {
	t.Parallel()
	var stdout bytes.Buffer
	logs := &syncBuffer{}
	var got DaemonConfig
	err := Run(context.Background(), Options{
		Duration: time.Minute, // a deadline: the daemon below returns once a sweep moved steps
		HTTPAddr: "127.0.0.1:0",
		Tasks:    5,
		Out:      &stdout,
		Logger:   slog.New(slog.NewJSONHandler(logs, nil)),
		RunDaemon: func(ctx context.Context, c DaemonConfig) error {
			got = c
			c.Started("admin.test:9090")
			return sweepUntilMovedDaemon(ctx, c)
		},
	})
	require.NoError(t, err, "stdout:\n%s\nlogs:\n%s", stdout.String(), logs.String())
	out := stdout.String()

	require.Equal(t, schedule, got.Schedule)
	require.Equal(t, "127.0.0.1:0", got.HTTPAddr)
	require.Equal(t, grace, got.Grace)
	require.Equal(t, time.Second, got.Handler.Backoff.Base)
	require.Equal(t, backoffMax, got.Handler.Backoff.Max)

	require.Contains(t, out, "Seeded 5 tasks × 4 steps into the throwaway database (20 steps, 15 edges, ")
	require.Contains(t, out, "Admin API on http://admin.test:9090 ")
	// The seeded failures cover every decision the handler makes.
	for _, action := range []string{"TransitionedToWaitingForRetry", "MarkedAsPermanentFailure", "MarkedAsError"} {
		require.Regexp(t, `(?m)^  `+action+`\s+[1-9]`, out)
	}
	// The final table: every state has a row, and the sweep moved steps back.
	require.Contains(t, out, "What happened (ran ")
	require.Contains(t, out, "\nSTEP STATE ", "a throwaway database holds only the demo's steps")
	for _, state := range statemachine.States() {
		require.Regexp(t, `(?m)^`+string(state)+`\s+\d+`, out)
	}
	require.Equal(t, 20, tableCount(t, out, "total"))
	require.Positive(t, tableCount(t, out, "steps swept back to pending"), out)
	require.Positive(t, tableCount(t, out, "sweeps run"), out)

	port := 0
	for _, r := range jsonRecords(t, logs.String()) {
		if r["msg"] == "throwaway PostgreSQL ready" {
			port = int(r["port"].(float64))
		}
	}
	require.NotZero(t, port, "the demo logs its server's port:\n%s", logs.String())
	require.Contains(t, logs.String(), "throwaway PostgreSQL stopped and its data removed")
	// The server is stopped and its data removed: pgserver names its log
	// after the port, and the postmaster's command line carries it.
	for _, parent := range []string{"/dev/shm", os.TempDir()} {
		left, err := filepath.Glob(filepath.Join(parent, "sweeper-pgserver-*", fmt.Sprintf("server-%d.log", port)))
		require.NoError(t, err)
		require.Empty(t, left, "the demo's data directory is removed")
	}
	require.Empty(t, postgresOnPort(t, port), "the demo's server is stopped")
}

func TestRunOnADatabaseURLCreatesTheTaskerSchemaOnlyOnce(t *testing.T) {
	t.Parallel()
	url := testdb.NewEmptyURL(t)
	noDaemon := func(context.Context, DaemonConfig) error { return nil }
	const tasks = 3

	runOnce := func() (stdout, logs string) {
		var out bytes.Buffer
		logBuf := &syncBuffer{}
		err := Run(context.Background(), Options{
			DatabaseURL: url, Duration: time.Minute, HTTPAddr: "127.0.0.1:0", Tasks: tasks,
			Out: &out, Logger: slog.New(slog.NewJSONHandler(logBuf, nil)), RunDaemon: noDaemon,
		})
		require.NoError(t, err, "stdout:\n%s\nlogs:\n%s", out.String(), logBuf.String())
		return out.String(), logBuf.String()
	}

	out, logs := runOnce()
	require.Contains(t, out, "into the --database-url database")
	require.Contains(t, out, "STEP STATE (every step in the database)")
	require.Contains(t, logs, `"msg":"migrations applied","set":"tasker"`)
	require.NotContains(t, logs, "tasker schema found")

	out, logs = runOnce()
	require.Contains(t, logs, "tasker schema found: using it as it is")
	require.NotContains(t, logs, `"set":"tasker"`, "an existing tasker schema is not migrated")
	require.Equal(t, 2*tasks*len(stepNames), tableCount(t, out, "total"), "the report counts every step in the database")

	pool := connect(t, url)
	var namespaces, namedTasks, namedSteps, taskRows int
	require.NoError(t, pool.QueryRow(context.Background(), `
SELECT (SELECT count(*) FROM tasker.task_namespaces WHERE name = $1),
       (SELECT count(*) FROM tasker.named_tasks WHERE name = $2),
       (SELECT count(*) FROM tasker.named_steps WHERE name = ANY($3)),
       (SELECT count(*) FROM tasker.tasks)`,
		namespace, taskName, stepNames[:]).Scan(&namespaces, &namedTasks, &namedSteps, &taskRows))
	require.Equal(t, 1, namespaces, "the second run reuses the namespace")
	require.Equal(t, 1, namedTasks)
	require.Equal(t, len(stepNames), namedSteps)
	require.Equal(t, 2*tasks, taskRows)
}

func TestFeederRerunsTheStepsTheSweepHandsBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	store := db.NewStore(pool)
	q := queries{q: demosqlc.New(pool)}
	logger := slog.New(slog.DiscardHandler)

	p := newPlan(6)
	seededRows, err := q.seed(ctx, p)
	require.NoError(t, err)
	// Histories: five rows to complete, four to a failed attempt, none
	// for pending.
	var wantTransitions int64
	for _, st := range p.steps {
		switch st.state {
		case statemachine.Complete:
			wantTransitions += 5
		case statemachine.EnqueuedAsErrorForOrchestration:
			wantTransitions += 4
		}
	}
	require.Equal(t, seeded{tasks: 6, steps: 24, edges: 18, transitions: wantTransitions}, seededRows)

	handlerCfg := handling.DefaultConfig()
	handlerCfg.Backoff.Base, handlerCfg.Backoff.Max = time.Second, backoffMax
	handler, err := handling.NewService(store, handlerCfg)
	require.NoError(t, err)
	w := newWorld(store, q, handler, logger, p)
	require.NoError(t, w.reportSeededFailures(ctx, p))
	_, decisions, _ := w.tally.snapshot()
	require.Equal(t, 4, decisions[handling.ActionTransitionedToWaitingForRetry].total)
	require.Equal(t, 1, decisions[handling.ActionMarkedAsPermanentFailure].total)
	require.Equal(t, 1, decisions[handling.ActionMarkedAsError].total)

	sweepCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	moved, err := sweepUntilMoved(sweepCtx, store, sweeper.DefaultConfig(), logger, nil)
	require.NoError(t, err)
	require.True(t, moved, "a sweep moved a step before the deadline")

	pending, err := q.sweptBackPending(ctx, p.tasks)
	require.NoError(t, err)
	require.Positive(t, pending)
	rerun, err := w.feedOnce(ctx, 50)
	require.NoError(t, err)
	require.EqualValues(t, pending, rerun, "every swept-back step is re-run")
	left, err := q.sweptBackPending(ctx, p.tasks)
	require.NoError(t, err)
	require.Zero(t, left)

	_, decisions, succeeded := w.tally.snapshot()
	require.Equal(t, rerun/3, succeeded, "every third retry succeeds")
	total := 0
	for _, c := range decisions {
		total += c.total
	}
	require.Equal(t, 6+rerun-succeeded, total, "every other retry fails again through the inline handler")

	// A success is enqueue, start, enqueue for orchestration, complete; a
	// failure stops at enqueue as error (the handler writes the rest).
	var orchestratorRows int
	require.NoError(t, pool.QueryRow(ctx,
		`SELECT count(*) FROM tasker.workflow_step_transitions WHERE metadata->>'actor' = $1`, actor).Scan(&orchestratorRows))
	require.Equal(t, 4*succeeded+3*(rerun-succeeded), orchestratorRows)
	counts, err := store.StepCountsByState(ctx)
	require.NoError(t, err)
	require.GreaterOrEqual(t, counts[statemachine.Complete], int64(succeeded))
}

func TestRunInterruptedStillReportsAndSucceeds(t *testing.T) {
	t.Parallel()
	url := testdb.NewURL(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	err := Run(ctx, Options{
		DatabaseURL: url, Duration: time.Minute, HTTPAddr: "127.0.0.1:0", Tasks: 2,
		Out: &out, Logger: slog.New(slog.DiscardHandler),
		RunDaemon: func(ctx context.Context, _ DaemonConfig) error {
			cancel() // Ctrl-C while the daemon runs
			<-ctx.Done()
			return nil
		},
	})
	require.NoError(t, err, "Ctrl-C is a normal way to end the demo")
	require.Contains(t, out.String(), "What happened (interrupted after ")
	require.Equal(t, 2*len(stepNames), tableCount(t, out.String(), "total"))
}

func TestRunReturnsTheDaemonsError(t *testing.T) {
	t.Parallel()
	url := testdb.NewURL(t)
	var out bytes.Buffer
	boom := errors.New("listen on 127.0.0.1:1: address in use")
	err := Run(context.Background(), Options{
		DatabaseURL: url, Duration: time.Minute, HTTPAddr: "127.0.0.1:1", Tasks: 1,
		Out: &out, Logger: slog.New(slog.DiscardHandler),
		RunDaemon: func(context.Context, DaemonConfig) error { return boom },
	})
	require.ErrorIs(t, err, boom)
	require.NotContains(t, out.String(), "What happened", "no report after the daemon failed")
}

func TestRunRejectsIncompleteOptions(t *testing.T) {
	t.Parallel()
	good := Options{
		Duration: time.Second, HTTPAddr: "127.0.0.1:0", Tasks: 1, Out: &bytes.Buffer{},
		Logger:    slog.New(slog.DiscardHandler),
		RunDaemon: func(context.Context, DaemonConfig) error { return errors.New("must not run") },
	}
	for name, mutate := range map[string]func(*Options){
		"no daemon":     func(o *Options) { o.RunDaemon = nil },
		"no output":     func(o *Options) { o.Out = nil },
		"zero duration": func(o *Options) { o.Duration = 0 },
		"no tasks":      func(o *Options) { o.Tasks = 0 },
		"too many":      func(o *Options) { o.Tasks = MaxTasks + 1 },
	} {
		o := good
		mutate(&o)
		err := Run(context.Background(), o)
		require.ErrorContains(t, err, "configure the demo", name)
	}
}

// sweepUntilMovedDaemon stands in for the CLI's daemon: the production
// sweeper on the demo's schedule over the production store, without the
// admin API (the CLI's tests cover that), returning once a sweep moved a
// step so the test does not wait out the demo's duration.
func sweepUntilMovedDaemon(ctx context.Context, c DaemonConfig) error {
	pool, err := db.Connect(ctx, c.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	moved, err := sweepUntilMoved(ctx, db.NewStore(pool), c.Sweep, c.Logger, c.SweepDone)
	if err != nil {
		return err
	}
	if !moved {
		return errors.New("no sweep moved a step before the demo's deadline")
	}
	return nil
}

// sweepUntilMoved runs the production sweeper on the demo's schedule until a
// sweep moves a step (true) or ctx ends (false). done, if set, sees every
// sweep.
func sweepUntilMoved(ctx context.Context, store *db.Store, cfg sweeper.Config, logger *slog.Logger,
	done func(sweeper.Summary, error),
) (bool, error) {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var moved atomic.Bool
	sw, err := sweeper.New(store, cfg, logger, sweeper.Hooks{SweepDone: func(sum sweeper.Summary, err error) {
		if done != nil {
			done(sum, err)
		}
		if err == nil && sum.Transitioned > 0 {
			moved.Store(true)
			stop()
		}
	}})
	if err != nil {
		return false, err
	}
	sched, err := sweeper.NewScheduler(sw, schedule, logger, sweeper.SchedulerOptions{})
	if err != nil {
		return false, err
	}
	sched.Run(ctx)
	return moved.Load(), nil
}

func connect(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := db.Connect(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// syncBuffer is a bytes.Buffer the demo's goroutines may log into at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
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
func jsonRecords(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(logs))
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
