package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/admin"
	"github.com/tasker-sweeper/retrysweeper/internal/telemetry"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// readyFlag is a Readiness the test flips.
type readyFlag struct{ atomic.Bool }

func (r *readyFlag) Ready() bool { return r.Load() }

// adminHarness is the admin API over the real pieces (store, sweeper,
// scheduler, failure handler, metrics) on a database of the test's own,
// served by an httptest server (or, in the server tests, by admin.Server).
type adminHarness struct {
	pool   *pgxpool.Pool
	store  *db.Store
	url    string // http://host:port
	client *http.Client
	ready  *readyFlag
}

// newAdminHarness builds the API; tweak, if given, may change the deps
// before the handler is built (a failing handler, a token, ...).
func newAdminHarness(t *testing.T, tweak func(*admin.Deps)) *adminHarness {
	t.Helper()
	h, deps := newHarnessDeps(t, tweak)
	srv := httptest.NewServer(admin.New(deps))
	t.Cleanup(srv.Close)
	h.url, h.client = srv.URL, srv.Client()
	return h
}

// newHarnessDeps builds the harness's pieces and deps, not yet served.
func newHarnessDeps(t *testing.T, tweak func(*admin.Deps)) (*adminHarness, admin.Deps) {
	t.Helper()
	pool := testdb.New(t)
	store := db.NewStore(pool)
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	metrics := telemetry.New()
	ready := &readyFlag{}
	ready.Store(true)
	sw, err := sweeper.New(store, sweeper.DefaultConfig(), logger, metrics.SweepHooks())
	require.NoError(t, err)
	sched, err := sweeper.NewScheduler(sw, "@every 1h", logger, sweeper.SchedulerOptions{
		DatabaseReady: ready.Ready, OnSkippedTick: metrics.SkippedTick,
	})
	require.NoError(t, err)
	cfg := handling.DefaultConfig()
	cfg.Backoff.Jitter = false
	handler, err := handling.NewService(store, cfg)
	require.NoError(t, err)
	deps := admin.Deps{
		Sweeps:     sched,
		Steps:      sw,
		Failures:   metrics.CountDecisions(handler),
		StepStatus: store,
		Status:     store,
		Readiness:  ready,
		Metrics:    metrics.Handler(),
		Logger:     logger,
	}
	if tweak != nil {
		tweak(&deps)
	}
	return &adminHarness{pool: pool, store: store, ready: ready}, deps
}

type apiResponse struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the body as one JSON object.
func (r apiResponse) json(t *testing.T) map[string]any {
	t.Helper()
	var out map[string]any
	require.NoError(t, json.Unmarshal(r.body, &out), "body: %s", r.body)
	return out
}

// requireError checks an error answer: status, JSON content type, an
// "error" message and the given code.
func (r apiResponse) requireError(t *testing.T, status int, code string) map[string]any {
	t.Helper()
	require.Equal(t, status, r.status, "body: %s", r.body)
	require.Equal(t, "application/json", r.header.Get("Content-Type"))
	out := r.json(t)
	require.NotEmpty(t, out["error"], "body: %s", r.body)
	require.Equal(t, code, out["code"], "body: %s", r.body)
	return out
}

// request sends one request; headers are name, value pairs.
func (h *adminHarness) request(t *testing.T, method, path, body string, headers ...string) apiResponse {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, h.url+path, rd)
	require.NoError(t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := h.client.Do(req)
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return apiResponse{status: resp.StatusCode, header: resp.Header, body: raw}
}

// waitingStep creates a step in waiting_for_retry after one attempt 10
// minutes ago, with the given backoff: 5 s is long expired (due), 3600 s is
// not yet.
func (h *adminHarness) waitingStep(t *testing.T, backoffSeconds int32) uuid.UUID {
	t.Helper()
	step := testdb.CreateTask(t, h.pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, h.pool, step, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, h.pool, step, testdb.StepColumns{
		Attempts:              testdb.Ptr[int32](1),
		LastAttemptedAgo:      testdb.Ptr(10 * time.Minute),
		BackoffRequestSeconds: testdb.Ptr(backoffSeconds),
	})
	return step
}

// stepIn creates a step whose history ends in state.
func (h *adminHarness) stepIn(t *testing.T, state statemachine.State) uuid.UUID {
	t.Helper()
	step := testdb.CreateTask(t, h.pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, h.pool, step, state, 0)
	return step
}

func (h *adminHarness) stateOf(t *testing.T, step uuid.UUID) statemachine.State {
	t.Helper()
	rec, err := h.store.GetStep(t.Context(), step)
	require.NoError(t, err)
	return rec.State
}

func (h *adminHarness) metricsText(t *testing.T) string {
	t.Helper()
	res := h.request(t, http.MethodGet, "/metrics", "")
	require.Equal(t, http.StatusOK, res.status)
	return string(res.body)
}

func TestAdminHealthAndReadiness(t *testing.T) {
	t.Parallel()
	h := newAdminHarness(t, nil)

	res := h.request(t, http.MethodGet, "/healthz", "")
	require.Equal(t, http.StatusOK, res.status)
	require.Equal(t, "application/json", res.header.Get("Content-Type"))
	require.Equal(t, map[string]any{"status": "ok"}, res.json(t))

	res = h.request(t, http.MethodGet, "/readyz", "")
	require.Equal(t, http.StatusOK, res.status)
	require.Equal(t, map[string]any{"status": "ready", "ready": true}, res.json(t))

	h.ready.Store(false)
	out := h.request(t, http.MethodGet, "/readyz", "").requireError(t, http.StatusServiceUnavailable, "unavailable")
	require.Equal(t, "database unreachable", out["error"])

	// Liveness does not depend on the database.
	require.Equal(t, http.StatusOK, h.request(t, http.MethodGet, "/healthz", "").status)
}

func TestAdminSweep(t *testing.T) {
	t.Parallel()
	h := newAdminHarness(t, nil)
	due := h.waitingStep(t, 5)
	notDue := h.waitingStep(t, 3600)

	t.Run("dry run reports the due step and writes nothing", func(t *testing.T) {
		res := h.request(t, http.MethodPost, "/v1/sweeps?dry_run=true", "")
		require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
		sum := res.json(t)
		require.Equal(t, float64(1), sum["transitioned"])
		require.Equal(t, true, sum["dry_run"])
		require.Equal(t, statemachine.WaitingForRetry, h.stateOf(t, due))
	})

	t.Run("bad dry_run is a 400", func(t *testing.T) {
		h.request(t, http.MethodPost, "/v1/sweeps?dry_run=maybe", "").requireError(t, http.StatusBadRequest, "bad_request")
		require.Equal(t, statemachine.WaitingForRetry, h.stateOf(t, due))
	})

	t.Run("database down is a 503", func(t *testing.T) {
		h.ready.Store(false)
		defer h.ready.Store(true)
		h.request(t, http.MethodPost, "/v1/sweeps", "").requireError(t, http.StatusServiceUnavailable, "unavailable")
		require.Equal(t, statemachine.WaitingForRetry, h.stateOf(t, due))
	})

	t.Run("sweep moves the due step only", func(t *testing.T) {
		res := h.request(t, http.MethodPost, "/v1/sweeps", "")
		require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
		sum := res.json(t)
		require.Equal(t, float64(1), sum["transitioned"])
		require.Equal(t, false, sum["dry_run"])
		for _, key := range []string{"stranded", "lost_races", "batches", "duration_ms", "sweep_id"} {
			require.Contains(t, sum, key)
		}
		require.Equal(t, statemachine.Pending, h.stateOf(t, due))
		require.Equal(t, statemachine.WaitingForRetry, h.stateOf(t, notDue))
	})
}

func TestAdminReportFailure(t *testing.T) {
	t.Parallel()
	h := newAdminHarness(t, nil)
	failing := func(t *testing.T) uuid.UUID {
		step := h.stepIn(t, statemachine.EnqueuedAsErrorForOrchestration)
		testdb.SetColumns(t, h.pool, step, testdb.StepColumns{Attempts: testdb.Ptr[int32](1)})
		return step
	}
	path := func(step uuid.UUID) string { return "/v1/steps/" + step.String() + "/failures" }

	t.Run("bad input is a 400 and writes nothing", func(t *testing.T) {
		step := failing(t)
		cases := map[string]string{
			"malformed JSON":           `{"message": "boom"`,
			"not JSON":                 `message=boom`,
			"unknown field":            `{"message": "boom", "retryable_typo": true}`,
			"trailing garbage":         `{"message": "boom"} {"message": "again"}`,
			"trailing text":            `{"message": "boom"}x`,
			"wrong type":               `{"retryable": "yes"}`,
			"metadata not an object":   `{"metadata": [1, 2]}`,
			"http_status out of range": `{"http_status": 42}`,
			"http_status too high":     `{"http_status": 600}`,
			"fractional retry_after":   `{"retry_after": 1.5}`,
			"negative retry_after":     `{"retry_after": -5}`,
			"boolean retry_after":      `{"retry_after": true}`,
			"empty body":               ``,
			"array body":               `[]`,
		}
		for name, body := range cases {
			out := h.request(t, http.MethodPost, path(step), body).requireError(t, http.StatusBadRequest, "bad_request")
			require.NotEmpty(t, out["error"], name)
		}
		require.Equal(t, statemachine.EnqueuedAsErrorForOrchestration, h.stateOf(t, step))
	})

	t.Run("unknown field error names the field", func(t *testing.T) {
		out := h.request(t, http.MethodPost, path(failing(t)), `{"bogus": 1}`).requireError(t, http.StatusBadRequest, "bad_request")
		require.Contains(t, out["error"], "bogus")
	})

	t.Run("body over 1 MiB is a 413", func(t *testing.T) {
		body := `{"message": "` + strings.Repeat("a", 1<<20) + `"}`
		h.request(t, http.MethodPost, path(failing(t)), body).requireError(t, http.StatusRequestEntityTooLarge, "request_too_large")
	})

	t.Run("bad uuid is a 400", func(t *testing.T) {
		h.request(t, http.MethodPost, "/v1/steps/not-a-uuid/failures", `{"message": "boom"}`).
			requireError(t, http.StatusBadRequest, "bad_request")
	})

	t.Run("nil uuid is an invalid failure, 400", func(t *testing.T) {
		h.request(t, http.MethodPost, path(uuid.Nil), `{"message": "boom"}`).requireError(t, http.StatusBadRequest, "bad_request")
	})

	t.Run("unknown step is a 404", func(t *testing.T) {
		h.request(t, http.MethodPost, path(uuid.New()), `{"message": "boom"}`).requireError(t, http.StatusNotFound, "not_found")
	})

	t.Run("complete step is a 409", func(t *testing.T) {
		step := h.stepIn(t, statemachine.Complete)
		h.request(t, http.MethodPost, path(step), `{"message": "boom"}`).requireError(t, http.StatusConflict, "conflict")
		require.Equal(t, statemachine.Complete, h.stateOf(t, step))
	})

	t.Run("retryable failure schedules a retry", func(t *testing.T) {
		step := failing(t)
		res := h.request(t, http.MethodPost, path(step),
			`{"message": "upstream 503", "http_status": 503, "retryable": null, "metadata": {"host": "api"}}`)
		require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
		out := res.json(t)
		require.Equal(t, string(handling.ActionTransitionedToWaitingForRetry), out["action"])
		require.Equal(t, string(statemachine.WaitingForRetry), out["final_state"])
		require.Equal(t, float64(2), out["backoff_applied_seconds"])
		require.Equal(t, statemachine.WaitingForRetry, h.stateOf(t, step))

		// A repeated report changes nothing.
		again := h.request(t, http.MethodPost, path(step), `{"message": "upstream 503"}`)
		require.Equal(t, http.StatusOK, again.status, "body: %s", again.body)
		require.Equal(t, string(handling.ActionNoActionTaken), again.json(t)["action"])
	})

	t.Run("dry_run decides and writes nothing", func(t *testing.T) {
		step := failing(t)
		res := h.request(t, http.MethodPost, path(step)+"?dry_run=true", `{"message": "upstream 503", "http_status": 503}`)
		require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
		out := res.json(t)
		require.Equal(t, true, out["dry_run"])
		require.Equal(t, string(handling.ActionTransitionedToWaitingForRetry), out["action"])
		require.Equal(t, float64(2), out["backoff_applied_seconds"])
		require.Equal(t, "global", out["policy"].(map[string]any)["source"])
		require.Equal(t, statemachine.EnqueuedAsErrorForOrchestration, h.stateOf(t, step), "nothing written")
		h.request(t, http.MethodPost, path(step)+"?dry_run=maybe", `{"message": "x"}`).requireError(t, http.StatusBadRequest, "bad_request")
	})

	t.Run("retry_after as a number of seconds", func(t *testing.T) {
		res := h.request(t, http.MethodPost, path(failing(t)), `{"message": "slow down", "http_status": 429, "retry_after": 120}`)
		require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
		out := res.json(t)
		require.Equal(t, float64(120), out["backoff_applied_seconds"])
		require.Equal(t, "retry_after", out["backoff_source"])
	})

	t.Run("retry_after as a string", func(t *testing.T) {
		res := h.request(t, http.MethodPost, path(failing(t)), `{"message": "slow down", "http_status": 429, "retry_after": "90"}`)
		require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
		require.Equal(t, float64(90), res.json(t)["backoff_applied_seconds"])
	})

	t.Run("worker's permanent verdict fails the step", func(t *testing.T) {
		step := failing(t)
		res := h.request(t, http.MethodPost, path(step), `{"message": "bad input", "retryable": false}`)
		require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
		require.Equal(t, string(handling.ActionMarkedAsPermanentFailure), res.json(t)["action"])
		require.Equal(t, statemachine.Error, h.stateOf(t, step))
	})
}

// scriptedHandler is a FailureHandler from a function: a handler that fails on
// purpose, where the real one would need a broken database.
type scriptedHandler func(context.Context, handling.Failure) (handling.Result, error)

func (f scriptedHandler) Handle(ctx context.Context, failure handling.Failure) (handling.Result, error) {
	return f(ctx, failure)
}

func TestAdminReportFailureErrorMapping(t *testing.T) {
	t.Parallel()
	type failMode struct {
		err   error
		panic string
	}
	var mode atomic.Pointer[failMode]
	h := newAdminHarness(t, func(d *admin.Deps) {
		d.Failures = scriptedHandler(func(context.Context, handling.Failure) (handling.Result, error) {
			m := mode.Load()
			if m.panic != "" {
				panic(m.panic)
			}
			return handling.Result{}, m.err
		})
	})
	failWith := func(err error) { mode.Store(&failMode{err: err}) }
	path := "/v1/steps/" + uuid.NewString() + "/failures"

	failWith(errors.New("connection reset by peer"))
	out := h.request(t, http.MethodPost, path, `{}`).requireError(t, http.StatusInternalServerError, "internal")
	require.Contains(t, out["error"], "internal error")
	require.Contains(t, out["error"], "connection reset by peer")

	h.ready.Store(false)
	h.request(t, http.MethodPost, path, `{}`).requireError(t, http.StatusServiceUnavailable, "unavailable")
	h.ready.Store(true)

	failWith(errors.Join(errors.New("handle failure"), statemachine.ErrLostRace))
	h.request(t, http.MethodPost, path, `{}`).requireError(t, http.StatusConflict, "conflict")

	mode.Store(&failMode{panic: "handler bug"})
	h.request(t, http.MethodPost, path, `{}`).requireError(t, http.StatusInternalServerError, "internal")
	// The server survived the panic.
	require.Equal(t, http.StatusOK, h.request(t, http.MethodGet, "/healthz", "").status)
}

// scriptedMover is a StepMover from a function.
type scriptedMover func(context.Context, uuid.UUID, bool) (sweeper.Moved, error)

func (f scriptedMover) MoveStep(ctx context.Context, step uuid.UUID, force bool) (sweeper.Moved, error) {
	return f(ctx, step, force)
}

// A retry that another writer beat is a conflict: the sweeper reports it as
// statemachine.ErrLostRace, wrapped.
func TestAdminRetryLostRaceIsConflict(t *testing.T) {
	t.Parallel()
	h := newAdminHarness(t, func(d *admin.Deps) {
		d.Steps = scriptedMover(func(_ context.Context, step uuid.UUID, _ bool) (sweeper.Moved, error) {
			return sweeper.Moved{}, fmt.Errorf("move step %s: %w", step, statemachine.ErrLostRace)
		})
	})
	out := h.request(t, http.MethodPost, "/v1/steps/"+uuid.NewString()+"/retry", "").
		requireError(t, http.StatusConflict, "conflict")
	require.Contains(t, out["error"], "another writer moved the step first")
}

func TestAdminStepStatus(t *testing.T) {
	t.Parallel()
	h := newAdminHarness(t, nil)

	t.Run("due step", func(t *testing.T) {
		step := h.waitingStep(t, 5)
		res := h.request(t, http.MethodGet, "/v1/steps/"+step.String(), "")
		require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
		out := res.json(t)
		require.Equal(t, step.String(), out["step_uuid"])
		require.Equal(t, "waiting_for_retry", out["state"])
		require.Equal(t, true, out["due"])
		require.Equal(t, true, out["due_from_backoff"])
		require.Equal(t, true, out["retry_eligible"])
		require.Equal(t, float64(1), out["attempts"])
		require.Equal(t, float64(0), out["unmet_parents"])
		for _, key := range []string{"reason", "processed", "in_process", "retryable", "max_attempts", "db_now"} {
			require.Contains(t, out, key)
		}
	})

	t.Run("not yet due step says when", func(t *testing.T) {
		step := h.waitingStep(t, 3600)
		res := h.request(t, http.MethodGet, "/v1/steps/"+step.String(), "")
		require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
		out := res.json(t)
		require.Equal(t, false, out["due"])
		require.Contains(t, out["reason"], "backoff expires")
		dueAt, err := time.Parse(time.RFC3339, out["due_at"].(string))
		require.NoError(t, err)
		dbNow, err := time.Parse(time.RFC3339, out["db_now"].(string))
		require.NoError(t, err)
		require.InDelta(t, 50*time.Minute, dueAt.Sub(dbNow), float64(time.Minute))
	})

	t.Run("unknown step is a 404", func(t *testing.T) {
		h.request(t, http.MethodGet, "/v1/steps/"+uuid.NewString(), "").requireError(t, http.StatusNotFound, "not_found")
	})

	t.Run("bad uuid is a 400", func(t *testing.T) {
		h.request(t, http.MethodGet, "/v1/steps/12345", "").requireError(t, http.StatusBadRequest, "bad_request")
	})
}

func TestAdminRetryStep(t *testing.T) {
	t.Parallel()
	h := newAdminHarness(t, nil)
	path := func(step uuid.UUID) string { return "/v1/steps/" + step.String() + "/retry" }

	t.Run("due step moves", func(t *testing.T) {
		step := h.waitingStep(t, 5)
		res := h.request(t, http.MethodPost, path(step), "")
		require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
		out := res.json(t)
		require.Equal(t, step.String(), out["step_uuid"])
		require.Equal(t, true, out["moved"])
		require.Equal(t, false, out["forced"])
		require.Equal(t, statemachine.Pending, h.stateOf(t, step))
	})

	t.Run("not due is a 409 until forced", func(t *testing.T) {
		step := h.waitingStep(t, 3600)
		out := h.request(t, http.MethodPost, path(step), "").requireError(t, http.StatusConflict, "conflict")
		require.Contains(t, out["error"], "backoff expires")
		require.Equal(t, statemachine.WaitingForRetry, h.stateOf(t, step))

		res := h.request(t, http.MethodPost, path(step)+"?force=true", "")
		require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
		moved := res.json(t)
		require.Equal(t, true, moved["moved"])
		require.Equal(t, true, moved["forced"])
		for _, key := range []string{"due_at", "moved_at"} {
			_, err := time.Parse(time.RFC3339, moved[key].(string))
			require.NoError(t, err, key)
		}
		require.Equal(t, statemachine.Pending, h.stateOf(t, step))

		var forced bool
		require.NoError(t, h.pool.QueryRow(t.Context(), `
SELECT (metadata->>'forced')::boolean FROM tasker.workflow_step_transitions
WHERE workflow_step_uuid = $1 AND most_recent AND to_state = 'pending'`, step).Scan(&forced))
		require.True(t, forced)
	})

	t.Run("force cannot move a step that is not waiting", func(t *testing.T) {
		step := h.stepIn(t, statemachine.Complete)
		out := h.request(t, http.MethodPost, path(step)+"?force=true", "").requireError(t, http.StatusConflict, "conflict")
		require.Contains(t, out["reason"], "not waiting_for_retry")
		require.Equal(t, statemachine.Complete, h.stateOf(t, step))
	})

	t.Run("unknown step is a 404", func(t *testing.T) {
		h.request(t, http.MethodPost, path(uuid.New()), "").requireError(t, http.StatusNotFound, "not_found")
		h.request(t, http.MethodPost, path(uuid.New())+"?force=true", "").requireError(t, http.StatusNotFound, "not_found")
	})

	t.Run("bad force or uuid is a 400", func(t *testing.T) {
		step := h.waitingStep(t, 3600)
		h.request(t, http.MethodPost, path(step)+"?force=maybe", "").requireError(t, http.StatusBadRequest, "bad_request")
		h.request(t, http.MethodPost, "/v1/steps/xyz/retry", "").requireError(t, http.StatusBadRequest, "bad_request")
		require.Equal(t, statemachine.WaitingForRetry, h.stateOf(t, step))
	})
}

func TestAdminToken(t *testing.T) {
	t.Parallel()
	const token = "s3cret-token"
	h := newAdminHarness(t, func(d *admin.Deps) { d.Token = token })
	step := h.waitingStep(t, 5)

	for name, header := range map[string][]string{
		"no header":    nil,
		"wrong token":  {"Authorization", "Bearer not-the-token"},
		"token prefix": {"Authorization", "Bearer " + token[:5]},
		"basic auth":   {"Authorization", "Basic " + token},
		"bare token":   {"Authorization", token},
	} {
		for _, p := range []string{"/v1/sweeps", "/v1/steps/" + step.String() + "/retry", "/v1/steps/" + step.String() + "/failures"} {
			res := h.request(t, http.MethodPost, p, `{}`, header...)
			res.requireError(t, http.StatusUnauthorized, "unauthorized")
			require.Contains(t, res.header.Get("WWW-Authenticate"), "Bearer", "%s %s", name, p)
		}
	}
	require.Equal(t, statemachine.WaitingForRetry, h.stateOf(t, step), "no unauthorized request may write")

	res := h.request(t, http.MethodPost, "/v1/sweeps", "", "Authorization", "Bearer "+token)
	require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
	require.Equal(t, float64(1), res.json(t)["transitioned"])

	for _, p := range []string{"/v1/status", "/v1/steps/" + step.String(), "/healthz", "/readyz", "/metrics"} {
		require.Equal(t, http.StatusOK, h.request(t, http.MethodGet, p, "").status, p)
	}
}

func TestAdminStatus(t *testing.T) {
	t.Parallel()
	// Every request counts afresh: the test changes the data in between.
	h := newAdminHarness(t, func(d *admin.Deps) { d.StatusMaxAge = -1 })
	status := func(t *testing.T) map[string]any {
		t.Helper()
		res := h.request(t, http.MethodGet, "/v1/status", "")
		require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
		return res.json(t)
	}

	h.waitingStep(t, 5)
	out := status(t)
	require.Equal(t, true, out["ready"])
	require.Equal(t, float64(1), out["due_now"])
	require.Equal(t, float64(0), out["not_yet_due"])
	require.Contains(t, out, "next_due_at")
	require.Nil(t, out["next_due_at"], "no step is waiting for its backoff")

	h.waitingStep(t, 3600)
	stranded := h.waitingStep(t, 5)
	testdb.SetColumns(t, h.pool, stranded, testdb.StepColumns{Attempts: testdb.Ptr[int32](3), MaxAttempts: testdb.Ptr[int32](3)})
	h.stepIn(t, statemachine.Complete)

	out = status(t)
	counts, ok := out["counts_by_state"].(map[string]any)
	require.True(t, ok, "counts_by_state: %v", out["counts_by_state"])
	require.Equal(t, float64(3), counts["waiting_for_retry"])
	require.Equal(t, float64(1), counts["complete"])
	require.Equal(t, float64(0), counts["in_progress"], "every state is listed")
	require.Equal(t, float64(1), out["due_now"])
	require.Equal(t, float64(1), out["stranded"])
	require.Equal(t, float64(1), out["not_yet_due"])
	next, err := time.Parse(time.RFC3339, out["next_due_at"].(string))
	require.NoError(t, err)
	require.WithinDuration(t, time.Now().Add(50*time.Minute), next, 2*time.Minute)

	h.ready.Store(false)
	require.Equal(t, false, status(t)["ready"])
}

func TestAdminMetrics(t *testing.T) {
	t.Parallel()
	h := newAdminHarness(t, nil)

	before := h.metricsText(t)
	require.Contains(t, before, `tasker_sweeper_sweeps_total{outcome="success"} 0`, "known outcomes start at 0")
	require.NotContains(t, before, "tasker_sweeper_handler_decisions_total{")

	h.waitingStep(t, 5)
	require.Equal(t, http.StatusOK, h.request(t, http.MethodPost, "/v1/sweeps", "").status)
	require.Contains(t, h.metricsText(t), `tasker_sweeper_sweeps_total{outcome="success"} 1`)

	step := h.stepIn(t, statemachine.EnqueuedAsErrorForOrchestration)
	testdb.SetColumns(t, h.pool, step, testdb.StepColumns{Attempts: testdb.Ptr[int32](1)})
	res := h.request(t, http.MethodPost, "/v1/steps/"+step.String()+"/failures", `{"message": "upstream 503", "http_status": 503}`)
	require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
	require.Contains(t, h.metricsText(t), `tasker_sweeper_handler_decisions_total{action="TransitionedToWaitingForRetry"`)
}

func TestAdminUnknownRouteAndWrongMethod(t *testing.T) {
	t.Parallel()
	h := newAdminHarness(t, nil)

	for _, p := range []string{"/nope", "/v1", "/v1/steps/", "/v1/steps/" + uuid.NewString() + "/nope"} {
		h.request(t, http.MethodGet, p, "").requireError(t, http.StatusNotFound, "not_found")
	}

	for _, tc := range []struct{ method, path, allow string }{
		{http.MethodDelete, "/v1/sweeps", "POST"},
		{http.MethodGet, "/v1/sweeps", "POST"},
		{http.MethodPost, "/healthz", "GET, HEAD"},
		{http.MethodPut, "/v1/steps/" + uuid.NewString(), "GET, HEAD"},
		{http.MethodGet, "/v1/steps/" + uuid.NewString() + "/retry", "POST"},
	} {
		res := h.request(t, tc.method, tc.path, "")
		res.requireError(t, http.StatusMethodNotAllowed, "method_not_allowed")
		require.Equal(t, tc.allow, res.header.Get("Allow"), "%s %s", tc.method, tc.path)
	}
}

func TestNewRequiresItsDependencies(t *testing.T) {
	t.Parallel()
	require.PanicsWithValue(t, "admin.New: Deps.Sweeps is required", func() { admin.New(admin.Deps{}) })
}

func TestAdminWithoutMetricsHasNoMetricsRoute(t *testing.T) {
	t.Parallel()
	h := newAdminHarness(t, func(d *admin.Deps) { d.Metrics = nil })
	h.request(t, http.MethodGet, "/metrics", "").requireError(t, http.StatusNotFound, "not_found")
	require.Equal(t, http.StatusOK, h.request(t, http.MethodGet, "/healthz", "").status)
}
