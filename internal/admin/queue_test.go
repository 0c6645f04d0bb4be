package admin_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/admin"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// queueHarness is the admin API with the queue on a database of the given
// shape, with a token (named) on the POST endpoints.
func queueHarness(t *testing.T, objects testdb.Objects) *adminHarness {
	t.Helper()
	pool := testdb.NewFor(t, objects)
	store := db.NewStore(pool)
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	sw, err := sweeper.New(store, sweeper.DefaultConfig(), logger, sweeper.Hooks{})
	require.NoError(t, err)
	sched, err := sweeper.NewScheduler(sw, "@every 1h", logger, sweeper.SchedulerOptions{})
	require.NoError(t, err)
	handler, err := handling.NewService(store, handling.DefaultConfig())
	require.NoError(t, err)
	srv := httptest.NewServer(admin.New(admin.Deps{
		Sweeps: sched, Steps: sw, Failures: handler, StepStatus: store, Status: store,
		Queue: sweeper.NewOperator(store, sw, logger), Token: "s3cret", TokenName: "oncall-bot", Logger: logger,
	}))
	t.Cleanup(srv.Close)
	return &adminHarness{pool: pool, store: store, url: srv.URL, client: srv.Client()}
}

var bearer = []string{"Authorization", "Bearer s3cret"}

// parked creates a waiting step (attempts of maxAttempts, backoff expired
// an hour ago) and puts it on the schedule, as a daemon's adoption would.
func (h *adminHarness) parked(t *testing.T, attempts, maxAttempts int32) uuid.UUID {
	t.Helper()
	step := testdb.CreateTask(t, h.pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, h.pool, step, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, h.pool, step, testdb.StepColumns{
		Attempts: testdb.Ptr(attempts), MaxAttempts: testdb.Ptr(maxAttempts),
		LastAttemptedAgo: testdb.Ptr(time.Hour), BackoffRequestSeconds: testdb.Ptr[int32](5),
	})
	_, err := h.store.Reconcile(context.Background(), 0)
	if err != nil {
		require.ErrorIs(t, err, sweeper.ErrNoSchedule)
	}
	return step
}

func currentMetadata(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) (string, map[string]any) {
	t.Helper()
	var state string
	var meta map[string]any
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT to_state, metadata FROM tasker.workflow_step_transitions
WHERE workflow_step_uuid = $1 AND most_recent`, step).Scan(&state, &meta))
	return state, meta
}

func keysOf(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestQueueEndpoints(t *testing.T) {
	t.Parallel()
	testdb.BothPaths(t, func(t *testing.T, objects testdb.Objects) {
		h := queueHarness(t, objects)
		due1, due2 := h.parked(t, 1, 3), h.parked(t, 1, 3)
		stranded := h.parked(t, 3, 3)

		// The listing, page by page.
		var got []string
		cursor := ""
		for range 10 {
			res := h.request(t, http.MethodGet, "/v1/steps?state=waiting_for_retry&limit=1&cursor="+cursor, "")
			require.Equal(t, http.StatusOK, res.status, string(res.body))
			var page struct {
				Steps      []map[string]any `json:"steps"`
				NextCursor string           `json:"next_cursor"`
			}
			require.NoError(t, json.Unmarshal(res.body, &page))
			for _, it := range page.Steps {
				require.Equal(t, []string{
					"attempts", "due", "due_at", "entered_at", "last_error", "max_attempts", "name",
					"namespace", "parked_by", "retryable", "state", "step_uuid", "task_name", "task_uuid", "why_not_due",
				}, keysOf(it))
				got = append(got, it["step_uuid"].(string))
			}
			if page.NextCursor == "" {
				break
			}
			cursor = page.NextCursor
		}
		require.ElementsMatch(t, []string{due1.String(), due2.String(), stranded.String()}, got)
		res := h.request(t, http.MethodGet, "/v1/steps?state=stranded", "")
		require.Contains(t, string(res.body), stranded.String())
		require.NotContains(t, string(res.body), due1.String())

		// Bad input: 400 with the API's error body.
		for _, q := range []string{
			"state=running", "limit=0", "limit=1001", "limit=x", "cursor=zzz", "older_than=soon",
			"task=nope", "colour=red", "cursor=" + sweeper.Cursor{State: sweeper.ListError, Step: due1}.Encode(),
		} {
			h.request(t, http.MethodGet, "/v1/steps?"+q, "").requireError(t, http.StatusBadRequest, "bad_request")
		}

		// The detail: the due status, the listing's fields and the history.
		detail := h.request(t, http.MethodGet, "/v1/steps/"+due1.String(), "").json(t)
		require.Equal(t, true, detail["due"])
		require.Len(t, detail["history"], 5)
		for _, k := range []string{"reason", "db_now", "task_uuid", "parked_by", "last_error", "entered_at", "why_not_due"} {
			require.Contains(t, detail, k)
		}

		// Resolve: the change, audited with the caller and the token's name.
		h.request(t, http.MethodPost, "/v1/steps/"+stranded.String()+"/resolve", `{"reason":"x"}`).
			requireError(t, http.StatusUnauthorized, "unauthorized")
		h.request(t, http.MethodPost, "/v1/steps/"+stranded.String()+"/resolve", `{}`, bearer...).
			requireError(t, http.StatusBadRequest, "bad_request")
		res = h.request(t, http.MethodPost, "/v1/steps/"+stranded.String()+"/resolve", `{"reason":"data fixed by hand"}`, bearer...)
		require.Equal(t, http.StatusOK, res.status, string(res.body))
		require.Equal(t, map[string]any{
			"step_uuid": stranded.String(), "operation": "resolve", "from": "waiting_for_retry",
			"to": "resolved_manually", "changed": true, "detail": "moved waiting_for_retry -> resolved_manually",
		}, res.json(t))
		state, meta := currentMetadata(t, h.pool, stranded)
		require.Equal(t, "resolved_manually", state)
		require.Equal(t, "data fixed by hand", meta["why"])
		require.Equal(t, "oncall-bot", meta["token_name"])
		require.NotEmpty(t, meta["remote_addr"])
		require.Contains(t, meta["actor"], "oncall-bot")
		// Again: terminal, 409 with the change.
		out := h.request(t, http.MethodPost, "/v1/steps/"+stranded.String()+"/resolve", `{"reason":"again"}`, bearer...).
			requireError(t, http.StatusConflict, "conflict")
		require.Equal(t, false, out["changed"])
		require.Equal(t, "resolved_manually", out["from"])
		h.request(t, http.MethodPost, "/v1/steps/"+stranded.String()+"/cancel", `{"reason":"again"}`, bearer...).
			requireError(t, http.StatusConflict, "conflict")
		h.request(t, http.MethodPost, "/v1/steps/"+uuid.NewString()+"/cancel", `{"reason":"r"}`, bearer...).
			requireError(t, http.StatusNotFound, "not_found")

		// Grant: attempts must be positive; the grant is recorded.
		for _, body := range []string{`{"attempts":0,"reason":"r"}`, `{"attempts":-1,"reason":"r"}`, `{"reason":"r"}`, `{"attempts":1}`} {
			h.request(t, http.MethodPost, "/v1/steps/"+due2.String()+"/grant", body, bearer...).
				requireError(t, http.StatusBadRequest, "bad_request")
		}
		res = h.request(t, http.MethodPost, "/v1/steps/"+due2.String()+"/grant", `{"attempts":2,"reason":"more tries"}`, bearer...)
		require.Equal(t, http.StatusOK, res.status, string(res.body))
		require.Equal(t, "grant", res.json(t)["operation"])
		_, meta = currentMetadata(t, h.pool, due2)
		require.Len(t, meta["manual_changes"], 1)

		// Cancel, and a retry with a reason.
		res = h.request(t, http.MethodPost, "/v1/steps/"+due2.String()+"/cancel", `{"reason":"not needed"}`, bearer...)
		require.Equal(t, http.StatusOK, res.status, string(res.body))
		require.Equal(t, "cancelled", res.json(t)["to"])
		res = h.request(t, http.MethodPost, "/v1/steps/"+due1.String()+"/retry", `{"reason":"go now"}`, bearer...)
		require.Equal(t, http.StatusOK, res.status, string(res.body))
		require.Equal(t, true, res.json(t)["moved"])
		state, meta = currentMetadata(t, h.pool, due1)
		require.Equal(t, "pending", state)
		require.Equal(t, "go now", meta["why"])
		require.Equal(t, "retry", meta["operation"])

		// Pause and resume: only with the sweeper's objects.
		res = h.request(t, http.MethodPost, "/v1/pause", `{"reason":"incident 7"}`, bearer...)
		if objects == testdb.TaskerOnly {
			res.requireError(t, http.StatusConflict, "conflict")
			status := h.request(t, http.MethodGet, "/v1/status", "").json(t)
			require.Equal(t, map[string]any{"paused": false, "by": "", "reason": "", "since": nil}, status["pause"])
			return
		}
		require.Equal(t, http.StatusOK, res.status, string(res.body))
		require.Equal(t, true, res.json(t)["changed"])
		status := h.request(t, http.MethodGet, "/v1/status", "").json(t)
		pause := status["pause"].(map[string]any)
		require.Equal(t, true, pause["paused"])
		require.Equal(t, "incident 7", pause["reason"])
		require.Contains(t, pause["by"], "oncall-bot")
		require.NotNil(t, pause["since"])
		res = h.request(t, http.MethodPost, "/v1/resume", "", bearer...)
		require.Equal(t, http.StatusOK, res.status, string(res.body))
		require.Equal(t, false, res.json(t)["paused"])
		h.request(t, http.MethodPost, "/v1/pause", "", "Authorization", "Bearer wrong").requireError(t, http.StatusUnauthorized, "unauthorized")
	})
}
