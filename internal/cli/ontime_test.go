package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// onTimeTolerance is what a timer-driven move may take past its due time
// beyond the coalescing gap: the wake-up, two probes and the batch's BEGIN
// on a shared, loaded test machine under -race. The cron bound it beats is
// seconds (the default schedule ticks every 5 s).
const onTimeTolerance = 300 * time.Millisecond

// cronBound is the latest the default schedule moves a due step.
const cronBound = 5 * time.Second

// parkable creates a step whose first attempt failed and that awaits the
// inline handler's decision.
func parkable(t *testing.T, pool *pgxpool.Pool) uuid.UUID {
	t.Helper()
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.EnqueuedAsErrorForOrchestration, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3)})
	return step
}

// parkViaAPI reports a failure with Retry-After through the daemon's admin
// API.
func parkViaAPI(t *testing.T, addr string, step uuid.UUID, retryAfter int) {
	t.Helper()
	body, err := json.Marshal(map[string]any{"message": "connection reset by peer", "retry_after": retryAfter})
	require.NoError(t, err)
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Post("http://"+addr+"/v1/steps/"+step.String()+"/failures", "application/json", bytes.NewReader(body))
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	var res handling.Result
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&res))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, handling.ActionTransitionedToWaitingForRetry, res.Action)
}

// parkAsOrchestrator parks a step the way the orchestrator's own error
// handling does: the backoff columns and a waiting_for_retry transition with
// no sweeper metadata (so only adoption finds it).
func parkAsOrchestrator(t *testing.T, pool *pgxpool.Pool, backoff int32) uuid.UUID {
	t.Helper()
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{
		Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](3),
		LastAttemptedAgo: testdb.Ptr(time.Duration(0)), BackoffRequestSeconds: testdb.Ptr(backoff),
	})
	return step
}

// move is one pending transition out of waiting_for_retry, with the step's
// due time, both on the database clock.
type move struct {
	due, at time.Time
	sweepID string
}

// movesOf returns every step's moves out of waiting_for_retry.
func movesOf(t *testing.T, pool *pgxpool.Pool, steps []uuid.UUID) map[uuid.UUID][]move {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
SELECT p.workflow_step_uuid, ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second',
       p.created_at, coalesce(p.metadata ->> 'sweep_id', '')
FROM tasker.workflow_step_transitions p
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = p.workflow_step_uuid
WHERE p.workflow_step_uuid = ANY($1) AND p.to_state = 'pending' AND p.from_state = 'waiting_for_retry'`, steps)
	require.NoError(t, err)
	defer rows.Close()
	out := map[uuid.UUID][]move{}
	for rows.Next() {
		var step uuid.UUID
		var m move
		require.NoError(t, rows.Scan(&step, &m.due, &m.at, &m.sweepID))
		out[step] = append(out[step], m)
	}
	require.NoError(t, rows.Err())
	return out
}

// waitMoved waits, on the daemons' sweep summaries, until every step has
// moved, and returns the moves.
func waitMoved(t *testing.T, pool *pgxpool.Pool, steps []uuid.UUID, timeout time.Duration, daemons ...*daemon) map[uuid.UUID][]move {
	t.Helper()
	deadline := time.After(timeout)
	cases := []reflect.SelectCase{{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(deadline)}}
	for _, d := range daemons {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(d.sweeps)})
	}
	for {
		moves := movesOf(t, pool, steps)
		if len(moves) == len(steps) {
			return moves
		}
		if chosen, _, _ := reflect.Select(cases); chosen == 0 {
			t.Fatalf("after %s, %d of %d step(s) moved", timeout, len(moves), len(steps))
		}
	}
}

// requireOnTime checks a move happened at or after its due time (database
// clock) and no later than the gap plus the tolerance.
func requireOnTime(t *testing.T, m move, what string) {
	t.Helper()
	lag := m.at.Sub(m.due)
	require.GreaterOrEqual(t, lag, time.Duration(0), "%s moved %s before its due time", what, -lag)
	require.LessOrEqual(t, lag, sweeper.DefaultWakeGap+onTimeTolerance, "%s moved %s after its due time", what, lag)
	t.Logf("%s: moved %s after its due time", what, lag.Round(100*time.Microsecond))
}

func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}

// metricValue reads one sample of the exposition text (0 when absent).
func metricValue(t *testing.T, body, series string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	return v
}

// startOnTime starts a daemon with the default schedule (@every 5 s) and
// the timer gate, waits until it serves, reaches the database and listens,
// and returns it with its admin address and metrics handler.
func startOnTime(t *testing.T, url string, args ...string) (*daemon, string, http.Handler) {
	t.Helper()
	d := startDaemon(t, []string{"DATABASE_URL=" + url},
		append([]string{"--http-addr", "127.0.0.1:0", "--log-format", "json"}, args...)...)
	addr := receive(t, d.addr, 10*time.Second, "the admin API")
	metrics := receive(t, d.metrics, 10*time.Second, "the metrics handler")
	receive(t, d.up, 10*time.Second, "the first successful health check")
	return d, addr, metrics
}

func waitListening(t *testing.T, d *daemon) {
	t.Helper()
	for !receive(t, d.listener, 10*time.Second, "the park listener to connect") {
	}
}

// waitAdoptionStarted waits for the first adoption pass (a new database's
// reconciles and sets the watermark), so a park after it is adopted as one.
func waitAdoptionStarted(t *testing.T, pool *pgxpool.Pool, d *daemon) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		var set bool
		require.NoError(t, pool.QueryRow(context.Background(),
			`SELECT watermark IS NOT NULL FROM tasker_sweeper.adoption`).Scan(&set))
		if set {
			return
		}
		select {
		case <-d.sweeps:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatal("no adoption pass within 10 s")
		}
	}
}

// On the default schedule, a step parked through each path moves at its due
// time (within the coalescing gap and a small tolerance), never before it,
// and the lag histogram names what armed the timer.
func TestOnTimeEveryParkPathMovesAtItsDueTime(t *testing.T) {
	t.Parallel()
	paths := []struct {
		name    string
		trigger sweeper.Trigger
		park    func(t *testing.T, pool *pgxpool.Pool, url, addr string) uuid.UUID
	}{
		{"handler via the API", sweeper.TriggerNotify, func(t *testing.T, pool *pgxpool.Pool, _, addr string) uuid.UUID {
			step := parkable(t, pool)
			parkViaAPI(t, addr, step, 2)
			return step
		}},
		{"sweeper fail", sweeper.TriggerNotify, func(t *testing.T, pool *pgxpool.Pool, url, _ string) uuid.UUID {
			step := parkable(t, pool)
			res := runCLI(t, []string{"DATABASE_URL=" + url}, "fail", "--step", step.String(),
				"--message", "connection reset by peer", "--retry-after", "2")
			require.Equal(t, 0, res.code, res.stderr)
			require.Contains(t, res.stdout, "TransitionedToWaitingForRetry")
			return step
		}},
		{"orchestrator SQL", sweeper.TriggerAdoption, func(t *testing.T, pool *pgxpool.Pool, _, _ string) uuid.UUID {
			return parkAsOrchestrator(t, pool, 2)
		}},
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			pool, url := testdb.NewWithURL(t)
			d, addr, metrics := startOnTime(t, url)
			waitListening(t, d)
			waitAdoptionStarted(t, pool, d)
			step := p.park(t, pool, url, addr)
			moves := waitMoved(t, pool, []uuid.UUID{step}, 3*cronBound, d)
			require.Len(t, moves[step], 1)
			requireOnTime(t, moves[step][0], p.name)
			body := scrape(t, metrics)
			require.Equal(t, 1.0, metricValue(t, body,
				fmt.Sprintf(`tasker_sweeper_due_to_pending_lag_seconds_count{trigger=%q}`, p.trigger)), body)
			require.Zero(t, metricValue(t, body, `tasker_sweeper_due_to_pending_lag_seconds_count{trigger="cron"}`))
			require.GreaterOrEqual(t, metricValue(t, body, fmt.Sprintf(`tasker_sweeper_wakeups_total{reason=%q}`, p.trigger)), 1.0)
			require.Equal(t, 1.0, metricValue(t, body, "tasker_sweeper_listener_up"))
			require.Equal(t, 0, d.stop(t), d.logs.String())
		})
	}
}

// A park announced by one daemon's handler pulls in another daemon's timer:
// B learns of the step only from A's notification (a handler-parked step
// is scheduled by its own statement, so adoption never sees it, and B's
// cron tick is seconds away), and moves it at its due time.
func TestOnTimeNotifyFromOneDaemonPullsInAnother(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	a, addrA, _ := startOnTime(t, url, "--wake-at-due=false", "--schedule", "@every 1h")
	b, addrB, metricsB := startOnTime(t, url)
	waitListening(t, b)
	waitAdoptionStarted(t, pool, b)
	step := parkable(t, pool)
	parkViaAPI(t, addrA, step, 2)

	moves := waitMoved(t, pool, []uuid.UUID{step}, 3*cronBound, b)
	requireOnTime(t, moves[step][0], "a step parked through daemon A")
	body := scrape(t, metricsB)
	require.Equal(t, 1.0, metricValue(t, body, `tasker_sweeper_due_to_pending_lag_seconds_count{trigger="notify"}`), body)
	require.Empty(t, a.sweeps, "daemon A (cron @every 1h, no timer) never swept")
	for _, c := range []struct {
		addr, mode string
		d          *daemon
	}{{addrA, sweeper.WakeModeCron, a}, {addrB, sweeper.WakeModeAtDue, b}} {
		status, body := httpGet(t, "http://"+c.addr+"/v1/status")
		require.Equal(t, http.StatusOK, status, body)
		require.Contains(t, body, `"wake_mode":"`+c.mode+`"`)
		require.Contains(t, c.d.logs.String(), `"wake_mode":"`+c.mode+`"`, "the start-up log says it too")
	}
	require.Equal(t, 0, a.stop(t), a.logs.String())
	require.Equal(t, 0, b.stop(t), b.logs.String())
}

// With its listening connection killed, the daemon reconnects (the gauge
// goes down and up again), no step parked meanwhile is later than the cron
// bound, and notifications pull the timer in again afterwards.
func TestOnTimeListenerComesBackAfterItsConnectionIsKilled(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	d, addr, metrics := startOnTime(t, url)
	waitListening(t, d)
	waitAdoptionStarted(t, pool, d)

	var killed bool
	require.NoError(t, pool.QueryRow(context.Background(), `
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = $1`, "tasker-sweeper"+db.ListenerAppName).Scan(&killed))
	require.True(t, killed, "the listener's backend, found by its application_name")
	during := parkable(t, pool)
	parkViaAPI(t, addr, during, 1)

	require.False(t, receive(t, d.listener, 10*time.Second, "the listener to notice"), "the gauge went down")
	require.True(t, receive(t, d.listener, 10*time.Second, "the listener to reconnect"), "and up again")
	require.Equal(t, 1.0, metricValue(t, scrape(t, metrics), "tasker_sweeper_listener_up"))

	moves := waitMoved(t, pool, []uuid.UUID{during}, 3*cronBound, d)
	m := moves[during][0]
	require.GreaterOrEqual(t, m.at, m.due, "never before its due time")
	require.LessOrEqual(t, m.at.Sub(m.due), cronBound+onTimeTolerance, "no later than the cron bound")

	after := parkable(t, pool)
	parkViaAPI(t, addr, after, 2)
	moves = waitMoved(t, pool, []uuid.UUID{after}, 3*cronBound, d)
	requireOnTime(t, moves[after][0], "a step parked after the reconnection")
	require.Equal(t, 0, d.stop(t), d.logs.String())
}

// Two daemons on one stream of due steps: both wake for the same due times,
// and every step moves exactly once, at or after its due time.
func TestOnTimeTwoDaemonsMoveEveryStepExactlyOnce(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	a, _, _ := startOnTime(t, url)
	b, _, _ := startOnTime(t, url)
	waitListening(t, a)
	waitListening(t, b)
	waitAdoptionStarted(t, pool, a)

	handler, err := handling.NewService(db.NewStore(pool), handling.DefaultConfig())
	require.NoError(t, err)
	const n = 60
	steps := make([]uuid.UUID, n)
	for i := range steps {
		steps[i] = parkable(t, pool)
	}
	for i, step := range steps {
		res, err := handler.Handle(context.Background(), handling.Failure{
			StepUUID: step, Message: "connection reset by peer", RetryAfter: strconv.Itoa(1 + i%2), Source: "test",
		})
		require.NoError(t, err)
		require.Equal(t, handling.ActionTransitionedToWaitingForRetry, res.Action)
	}

	moves := waitMoved(t, pool, steps, 3*cronBound, a, b)
	sweepsOf := map[string]bool{}
	for _, step := range steps {
		require.Len(t, moves[step], 1, "step %s moved exactly once", step)
		m := moves[step][0]
		require.GreaterOrEqual(t, m.at, m.due, "never before its due time")
		sweepsOf[m.sweepID] = true
	}
	t.Logf("%d steps moved by %d sweeps", n, len(sweepsOf))
	require.Equal(t, 0, a.stop(t), a.logs.String())
	require.Equal(t, 0, b.stop(t), b.logs.String())
}

// On the scan path (no sweeper-owned objects) there is no schedule to time
// sweeps by: the gate turns itself off, the listener stops, and the status
// says cron.
func TestOnTimeIsOffOnTheScanPath(t *testing.T) {
	t.Parallel()
	_, url := testdb.NewWithURLFor(t, testdb.TaskerOnly)
	d, addr, _ := startOnTime(t, url)
	// The listener may connect before the path is known, or not at all:
	// what counts is that it ends down once the gate has turned itself off.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.logs.String(), "park listener and adoption loop off") {
		require.True(t, time.Now().Before(deadline), "the gate turns itself off on the scan path:\n%s", d.logs.String())
		time.Sleep(20 * time.Millisecond)
	}
	up := false
	for drained := false; !drained; {
		select {
		case up = <-d.listener:
		case <-time.After(200 * time.Millisecond):
			drained = true
		}
	}
	require.False(t, up, "nothing is announced on the scan path: the listener ends down")

	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post("http://"+addr+"/v1/sweeps", "application/json", nil)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)
	status, body := httpGet(t, "http://"+addr+"/v1/status")
	require.Equal(t, http.StatusOK, status, body)
	require.Contains(t, body, `"wake_mode":"cron"`)
	require.Equal(t, 0, d.stop(t), d.logs.String())
	require.Contains(t, d.logs.String(), "park listener and adoption loop off")
}
