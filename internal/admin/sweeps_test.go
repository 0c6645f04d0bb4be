package admin_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/internal/admin"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/internal/webui"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// The log keeps the last N real sweeps, newest first, with their outcome;
// dry runs are left out.
func TestSweepLogKeepsTheLastSweepsNewestFirst(t *testing.T) {
	l := admin.NewSweepLog(3)
	require.Empty(t, l.Recent())
	for i := range 5 {
		l.SweepDone(sweeper.Summary{SweepID: uuid.New(), Transitioned: i, Trigger: sweeper.TriggerCron}, nil)
	}
	l.SweepDone(sweeper.Summary{SweepID: uuid.New(), DryRun: true, Transitioned: 99}, nil)
	got := l.Recent()
	require.Len(t, got, 3)
	require.Equal(t, []int{4, 3, 2}, []int{got[0].Moved, got[1].Moved, got[2].Moved})

	l.SweepDone(sweeper.Summary{Transitioned: 5, MaxLagMS: 1500, DurationMS: 7}, errors.New("batch failed"))
	l.SweepDone(sweeper.Summary{Transitioned: 6, Interrupted: true}, sweeper.ErrInterrupted)
	l.SweepDone(sweeper.Summary{Transitioned: 7}, context.Canceled)
	got = l.Recent()
	require.Equal(t, "interrupted", got[0].Outcome)
	require.Equal(t, "interrupted", got[1].Outcome)
	require.Equal(t, "failure", got[2].Outcome)
	require.Equal(t, "batch failed", got[2].Error)
	require.InDelta(t, 1500, got[2].MaxLagMS, 0)
	require.Equal(t, 5, got[2].Moved)
}

// GET /v1/sweeps/recent serves the log: a real sweep through the admin API
// shows up with what it moved and its lag.
func TestRecentSweepsEndpoint(t *testing.T) {
	t.Parallel()
	log := admin.NewSweepLog(0)
	h, deps := newHarnessDeps(t, func(d *admin.Deps) { d.SweepLog = log })
	sw, err := sweeper.New(h.store, sweeper.DefaultConfig(), slog.New(slog.DiscardHandler), sweeper.Hooks{SweepDone: log.SweepDone})
	require.NoError(t, err)
	sched, err := sweeper.NewScheduler(sw, "@every 1h", slog.New(slog.DiscardHandler), sweeper.SchedulerOptions{})
	require.NoError(t, err)
	deps.Sweeps = sched
	serveDeps(t, h, deps)

	resp := h.request(t, http.MethodGet, "/v1/sweeps/recent", "")
	require.Equal(t, http.StatusOK, resp.status)
	require.Empty(t, resp.json(t)["sweeps"])

	testdb.SeedDue(t, h.pool, 2)
	require.Equal(t, http.StatusOK, h.request(t, http.MethodPost, "/v1/sweeps", "").status)
	resp = h.request(t, http.MethodGet, "/v1/sweeps/recent", "")
	require.Equal(t, http.StatusOK, resp.status)
	sweeps := resp.json(t)["sweeps"].([]any)
	require.Len(t, sweeps, 1)
	got := sweeps[0].(map[string]any)
	require.InDelta(t, 2, got["moved"], 0)
	require.Equal(t, "success", got["outcome"])
	require.Equal(t, "manual", got["trigger"])
	require.GreaterOrEqual(t, got["max_lag_ms"], float64((time.Hour - time.Second).Milliseconds()))

	h.request(t, http.MethodPost, "/v1/sweeps/recent", "").requireError(t, http.StatusMethodNotAllowed, "method_not_allowed")
}

// The web page is served on the admin API's routes and rules: GET /ui is
// HTML built from the API's own answers; any other path under /ui, or
// another method, is the API's JSON error.
func TestPageUnderTheAdminRules(t *testing.T) {
	t.Parallel()
	h, deps := newHarnessDeps(t, func(d *admin.Deps) {
		d.SweepLog = admin.NewSweepLog(0)
		d.Page = webui.New(webui.Options{}).Routes
		d.Queue = sweeper.NewOperator(d.Status.(*db.Store), d.Steps.(*sweeper.Sweeper), d.Logger)
	})
	serveDeps(t, h, deps)
	testdb.SeedDue(t, h.pool, 3)
	// The listing reads the schedule: let it adopt the seeded steps, as the
	// daemon's adoption loop would.
	_, err := h.store.Adopt(t.Context())
	require.NoError(t, err)
	var due uuid.UUID
	require.NoError(t, h.pool.QueryRow(t.Context(), `SELECT workflow_step_uuid FROM tasker.workflow_steps LIMIT 1`).Scan(&due))

	resp := h.request(t, http.MethodGet, "/ui", "")
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	require.Equal(t, "text/html; charset=utf-8", resp.header.Get("Content-Type"))
	require.Contains(t, string(resp.body), `<td class="num" data-state="waiting_for_retry">3</td>`)
	require.Contains(t, string(resp.body), `<span class="n" id="due-now">3</span>`)
	require.Contains(t, string(resp.body), "No sweep yet.")
	require.Contains(t, string(resp.body), `<button type="button" data-action="retry" data-step="`+due.String()+`"`)
	require.Contains(t, string(resp.body), "No stranded step.")
	require.Equal(t, http.StatusOK, h.request(t, http.MethodGet, "/ui/app.js", "").status)
	require.Equal(t, http.StatusOK, h.request(t, http.MethodHead, "/ui", "").status)

	for _, path := range []string{"/ui/", "/ui/nope", "/ui/app.js/x", "/ui/static/app.js", "/uix"} {
		h.request(t, http.MethodGet, path, "").requireError(t, http.StatusNotFound, "not_found")
	}
	h.request(t, http.MethodGet, "/ui/../ui", "").requireError(t, http.StatusNotFound, "not_found")
	out := h.request(t, http.MethodPost, "/ui", "").requireError(t, http.StatusMethodNotAllowed, "method_not_allowed")
	require.Contains(t, out["error"], "GET")
}

// serveDeps serves deps for the harness h.
func serveDeps(t *testing.T, h *adminHarness, deps admin.Deps) {
	t.Helper()
	srv := httptest.NewServer(admin.New(deps))
	t.Cleanup(srv.Close)
	h.url, h.client = srv.URL, srv.Client()
}
