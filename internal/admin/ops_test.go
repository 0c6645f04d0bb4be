package admin_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/admin"
	"github.com/tasker-sweeper/retrysweeper/internal/preflight"
	"github.com/tasker-sweeper/retrysweeper/internal/telemetry"
)

// stubPreflight answers /readyz with a report the test sets.
type stubPreflight struct {
	report atomic.Pointer[preflight.Report]
	calls  atomic.Int32
}

func (s *stubPreflight) Report(context.Context) preflight.Report {
	s.calls.Add(1)
	return *s.report.Load()
}

func (s *stubPreflight) set(r preflight.Report) { s.report.Store(&r) }

var (
	passing = preflight.Report{Ready: true, Path: "schedule", Checks: []preflight.Check{
		{Name: preflight.CheckDatabase, OK: true, Detail: "PostgreSQL 15.18 as sweeper, answered in 1ms"},
		{Name: preflight.CheckPrivileges, OK: true, Detail: "role sweeper holds the 13 grants the sweeper needs"},
	}}
	failing = preflight.Report{Ready: false, Path: "schedule", Checks: []preflight.Check{
		{Name: preflight.CheckDatabase, OK: true, Detail: "PostgreSQL 15.18 as sweeper, answered in 1ms"},
		{Name: preflight.CheckPrivileges, OK: false, Detail: "role sweeper lacks UPDATE on tasker.workflow_steps"},
		{Name: preflight.CheckSweeperSchema, OK: false, Detail: "database migrated by a newer sweeper: version 9, this binary knows up to 3"},
	}}
)

// With a preflight, /readyz lists the checks: 200 when all pass, 503 with
// the API's error body naming each failed check and why.
func TestReadyzReportsThePreflight(t *testing.T) {
	t.Parallel()
	pf := &stubPreflight{}
	pf.set(passing)
	h := newAdminHarness(t, func(d *admin.Deps) { d.Preflight = pf })

	res := h.request(t, http.MethodGet, "/readyz", "")
	require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
	out := res.json(t)
	require.Equal(t, "ready", out["status"])
	require.Equal(t, true, out["ready"])
	require.Equal(t, "schedule", out["path"])
	require.Len(t, out["checks"], 2)

	pf.set(failing)
	out = h.request(t, http.MethodGet, "/readyz", "").requireError(t, http.StatusServiceUnavailable, "unavailable")
	require.Equal(t, false, out["ready"])
	require.Equal(t, "not ready: privileges: role sweeper lacks UPDATE on tasker.workflow_steps; "+
		"sweeper_schema: database migrated by a newer sweeper: version 9, this binary knows up to 3", out["error"])
	checks := out["checks"].([]any)
	require.Len(t, checks, 3)
	require.Equal(t, map[string]any{"name": "privileges", "ok": false, "detail": "role sweeper lacks UPDATE on tasker.workflow_steps"}, checks[1])

	// The database flag alone (manual sweeps) no longer decides readiness.
	h.ready.Store(false)
	pf.set(passing)
	require.Equal(t, http.StatusOK, h.request(t, http.MethodGet, "/readyz", "").status)
}

// The ops handler serves the probes and the metrics, with no token, and
// nothing else: no step data, no state change, whatever the method.
func TestOpsHandlerServesOnlyProbesAndMetrics(t *testing.T) {
	t.Parallel()
	pf := &stubPreflight{}
	pf.set(passing)
	metrics := telemetry.New()
	srv := admin.NewServer(admin.NewOps(admin.OpsDeps{Preflight: pf, Metrics: metrics.Handler()}), admin.DefaultLimits(), nil)
	addr := serve(t, srv)
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(method, path string) apiResponse {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, "http://"+addr+path, strings.NewReader("{}"))
		require.NoError(t, err)
		resp, err := client.Do(req)
		require.NoError(t, err)
		defer func() { _ = resp.Body.Close() }()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return apiResponse{status: resp.StatusCode, header: resp.Header, body: body}
	}

	res := get(http.MethodGet, "/healthz")
	require.Equal(t, http.StatusOK, res.status)
	require.Equal(t, map[string]any{"status": "ok"}, res.json(t))
	res = get(http.MethodGet, "/readyz")
	require.Equal(t, http.StatusOK, res.status)
	require.Equal(t, true, res.json(t)["ready"])
	res = get(http.MethodGet, "/metrics")
	require.Equal(t, http.StatusOK, res.status)
	require.Contains(t, string(res.body), `tasker_sweeper_sweeps_total{outcome="success"} 0`)

	pf.set(failing)
	get(http.MethodGet, "/readyz").requireError(t, http.StatusServiceUnavailable, "unavailable")

	for _, path := range []string{
		"/v1/status", "/v1/steps/0195a0c4-33ab-7aa0-8a44-7d1f7c2e0001", "/v1/sweeps",
		"/v1/steps/0195a0c4-33ab-7aa0-8a44-7d1f7c2e0001/retry", "/debug/pprof/",
	} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			get(method, path).requireError(t, http.StatusNotFound, "not_found")
		}
	}
	res = get(http.MethodPost, "/readyz")
	res.requireError(t, http.StatusMethodNotAllowed, "method_not_allowed")
	require.Equal(t, "GET, HEAD", res.header.Get("Allow"))
}

// The ops server keeps the admin server's limits: one connection over
// MaxConns is refused with the JSON 503.
func TestOpsServerKeepsTheLimits(t *testing.T) {
	t.Parallel()
	srv := admin.NewServer(admin.NewOps(admin.OpsDeps{}), admin.Limits{MaxConns: 1}, nil)
	addr := serve(t, srv)
	held := dial(t, addr)
	_, err := io.WriteString(held, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, rawResponse(t, held, bufio.NewReader(held)).status)

	extra := dial(t, addr)
	_, err = io.WriteString(extra, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	rawResponse(t, extra, bufio.NewReader(extra)).requireError(t, http.StatusServiceUnavailable, "unavailable")
}

// serve runs srv on a loopback port until the test ends.
func serve(t *testing.T, srv *admin.Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
		require.ErrorIs(t, <-served, http.ErrServerClosed)
	})
	return l.Addr().String()
}
