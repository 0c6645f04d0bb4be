package admin_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/admin"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// lockedBuffer is a log sink the server's goroutines write while the test
// reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	all strings.Builder // everything ever written
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.all.Write(p)
	return b.buf.Write(p)
}

// take returns the records written since the last take.
func (b *lockedBuffer) take(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), line)
		out = append(out, rec)
	}
	b.buf.Reset()
	return out
}

// requests keeps the "admin API request" records.
func requests(recs []map[string]any) []map[string]any {
	var out []map[string]any
	for _, r := range recs {
		if r["msg"] == "admin API request" {
			out = append(out, r)
		}
	}
	return out
}

// Every state-changing request is logged at info: the action, the step,
// the options, the outcome and the remote address; reads stay at debug.
func TestAdminLogsStateChangingRequestsAtInfo(t *testing.T) {
	t.Parallel()
	const token = "audit-token-value"
	logs := &lockedBuffer{}
	h := newAdminHarness(t, func(d *admin.Deps) {
		d.Token = token
		d.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	auth := []string{"Authorization", "Bearer " + token}
	one := func(t *testing.T) map[string]any {
		t.Helper()
		recs := requests(logs.take(t))
		require.Len(t, recs, 1)
		r := recs[0]
		require.Equal(t, "INFO", r["level"])
		require.Regexp(t, `^127\.0\.0\.1:\d+$`, r["remote_addr"])
		return r
	}

	require.Equal(t, http.StatusOK, h.request(t, http.MethodGet, "/v1/status", "").status)
	require.Empty(t, requests(logs.take(t)), "a read is not an info line")

	require.Equal(t, http.StatusOK, h.request(t, http.MethodPost, "/v1/sweeps?dry_run=true", "", auth...).status)
	sweep := one(t)
	require.Equal(t, "sweep", sweep["action"])
	require.Equal(t, "true", sweep["dry_run"])
	require.Equal(t, "dry_run", sweep["outcome"])
	require.EqualValues(t, 200, sweep["status"])
	require.Contains(t, sweep, "sweep_id")

	failing := testdb.CreateTask(t, h.pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, h.pool, failing, statemachine.EnqueuedAsErrorForOrchestration, 0)
	testdb.SetColumns(t, h.pool, failing, testdb.StepColumns{Attempts: testdb.Ptr[int32](1)})
	res := h.request(t, http.MethodPost, "/v1/steps/"+failing.String()+"/failures",
		`{"message": "upstream 503", "http_status": 503, "kind": "Transient"}`, auth...)
	require.Equal(t, http.StatusOK, res.status, string(res.body))
	failure := one(t)
	require.Equal(t, "failure", failure["action"])
	require.Equal(t, failing.String(), failure["step_uuid"])
	require.Equal(t, "Transient", failure["kind"])
	require.EqualValues(t, 503, failure["http_status"])
	require.Equal(t, "TransitionedToWaitingForRetry", failure["outcome"])
	require.Equal(t, "waiting_for_retry", failure["final_state"])

	waiting := h.waitingStep(t, 3600)
	require.Equal(t, http.StatusOK, h.request(t, http.MethodPost, "/v1/steps/"+waiting.String()+"/retry?force=true", "", auth...).status)
	retry := one(t)
	require.Equal(t, "retry", retry["action"])
	require.Equal(t, waiting.String(), retry["step_uuid"])
	require.Equal(t, "true", retry["force"])
	require.Equal(t, "moved", retry["outcome"])

	unknown := uuid.NewString()
	require.Equal(t, http.StatusNotFound, h.request(t, http.MethodPost, "/v1/steps/"+unknown+"/retry", "", auth...).status)
	notFound := one(t)
	require.Equal(t, "refused", notFound["outcome"])
	require.Equal(t, "not_found", notFound["code"])
	require.Equal(t, unknown, notFound["step_uuid"])

	require.Equal(t, http.StatusUnauthorized, h.request(t, http.MethodPost, "/v1/sweeps", "").status)
	denied := one(t)
	require.Equal(t, "refused", denied["outcome"])
	require.Equal(t, "unauthorized", denied["code"])

	h.ready.Store(false)
	require.Equal(t, http.StatusServiceUnavailable, h.request(t, http.MethodPost, "/v1/sweeps", "", auth...).status)
	paused := one(t)
	require.Equal(t, "failed", paused["outcome"])
	require.Equal(t, "unavailable", paused["code"])

	require.Equal(t, http.StatusNotFound, h.request(t, http.MethodPost, "/v1/nothing", "", auth...).status)
	require.Empty(t, requests(logs.take(t)), "a POST no endpoint takes changes nothing")
	logs.mu.Lock()
	defer logs.mu.Unlock()
	require.NotContains(t, logs.all.String(), token, "never the token")
	require.Contains(t, logs.all.String(), `"action":"sweep"`)
}
