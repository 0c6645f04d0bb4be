package webui

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeAPI answers the admin API's GET endpoints the page reads with fixed
// JSON in the API's shapes; a nil answer is the API's JSON 404.
type fakeAPI map[string]any

func (f fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Path
	if s := r.URL.Query().Get("state"); s != "" {
		key += "?state=" + s
	}
	v, ok := f[key]
	w.Header().Set("Content-Type", "application/json")
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "no such endpoint: " + r.URL.Path, "code": "not_found"})
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}

var pinned = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func render(t *testing.T, opts Options, api http.Handler) (*httptest.ResponseRecorder, string) {
	t.Helper()
	opts.now = func() time.Time { return pinned }
	routes := New(opts).Routes(api)
	h, ok := routes["GET /ui"]
	require.True(t, ok, "the page's route")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ui", nil))
	return rec, rec.Body.String()
}

const evil = `<script>alert("x")</script>&"'`

func fullAPI() fakeAPI {
	due := pinned.Add(-time.Minute)
	later := pinned.Add(4*time.Minute + 5*time.Second)
	return fakeAPI{
		"/v1/status": map[string]any{
			"ready": true, "counts_by_state": map[string]int64{"waiting_for_retry": 7, "error": 2, "from_the_future": 1},
			"due_now": 3, "stranded": 1, "not_yet_due": 3, "next_due_at": later, "wake_mode": "at_due",
			"pause": map[string]any{"paused": true, "by": evil, "reason": "deploy " + evil, "since": pinned},
		},
		"/v1/steps?state=waiting_for_retry": map[string]any{"steps": []map[string]any{
			{
				"step_uuid": "00000000-0000-0000-0000-000000000001", "task_uuid": "00000000-0000-0000-0000-0000000000aa",
				"name": evil, "namespace": "ns", "task_name": "t", "state": "waiting_for_retry", "attempts": 1,
				"max_attempts": 3, "due_at": due, "due": true,
				"last_error": map[string]any{"category": "transient", "code": "503", "message": "upstream " + evil},
			},
			{
				"step_uuid": "00000000-0000-0000-0000-000000000002", "task_uuid": "00000000-0000-0000-0000-0000000000aa",
				"name": "later", "namespace": "ns", "task_name": "t", "state": "waiting_for_retry", "attempts": 1,
				"max_attempts": 3, "due_at": later, "due": false, "why_not_due": "backoff not yet expired",
			},
		}, "next_cursor": "abc"},
		"/v1/steps?state=stranded": map[string]any{"steps": []map[string]any{
			{
				"step_uuid": "00000000-0000-0000-0000-000000000003", "task_uuid": "00000000-0000-0000-0000-0000000000bb",
				"name": "stuck", "namespace": "ns", "task_name": "t", "state": "waiting_for_retry", "attempts": 3,
				"max_attempts": 3, "due": false, "why_not_due": "out of attempts",
			},
		}, "next_cursor": ""},
		"/v1/sweeps/recent": map[string]any{"sweeps": []map[string]any{
			{
				"sweep_id": "s2", "trigger": "timer", "path": "schedule", "started_at": pinned, "moved": 4,
				"duration_ms": 12.5, "max_lag_ms": 2000, "outcome": "success",
			},
			{
				"sweep_id": "s1", "trigger": "cron", "path": "schedule", "started_at": pinned.Add(-5 * time.Second),
				"moved": 1, "duration_ms": 3, "max_lag_ms": 500, "outcome": "failure", "error": "boom " + evil,
			},
		}},
	}
}

// Everything the database supplies is escaped: step names, error messages,
// who paused and why.
func TestPageEscapesWhatItShows(t *testing.T) {
	rec, body := render(t, Options{}, fullAPI())
	require.Equal(t, http.StatusOK, rec.Code, body)
	require.NotContains(t, body, "<script>alert", "raw markup from the database reached the page")
	require.NotContains(t, body, `"x")</script>&"'`)
	require.Contains(t, body, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;&#34;&#39;")
	// In an attribute too (the buttons carry the name for the dialog).
	require.Contains(t, body, `data-name="&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;&#34;&#39;"`)
	require.Equal(t, "text/html; charset=utf-8", rec.Header().Get("Content-Type"))
	require.Contains(t, rec.Header().Get("Content-Security-Policy"), "script-src 'self'")
	require.Equal(t, "nosniff", rec.Header().Get("X-Content-Type-Options"))
}

// The page shows the API's numbers: counts per state (every known state,
// and one this binary does not know), due/stranded tiles, the lists with
// countdowns, the pause, and the sweeps with one bar each.
func TestPageShowsTheAPIsNumbers(t *testing.T) {
	_, body := render(t, Options{}, fullAPI())
	require.Contains(t, body, `<td class="num" data-state="waiting_for_retry">7</td>`)
	require.Contains(t, body, `<td class="num" data-state="error">2</td>`)
	require.Contains(t, body, `<td class="num" data-state="pending">0</td>`)
	require.Contains(t, body, `<td class="num" data-state="from_the_future">1</td>`)
	require.Contains(t, body, `<span class="n" id="due-now">3</span>`)
	require.Contains(t, body, `<span class="n" id="stranded">1</span>`)
	require.Contains(t, body, `data-due-at="2026-03-01T12:04:05Z">in 4m05s</span>`)
	require.Contains(t, body, `<span class="due">due now</span>`)
	require.Contains(t, body, `data-action="retry-force" data-step="00000000-0000-0000-0000-000000000002"`)
	require.Contains(t, body, `data-action="grant" data-step="00000000-0000-0000-0000-000000000003"`)
	require.Contains(t, body, `data-action="resolve" data-step="00000000-0000-0000-0000-000000000003"`)
	require.Contains(t, body, "showing the first 2", "a next cursor says there is more")
	require.Contains(t, body, `data-paused="true"`)
	require.Contains(t, body, `id="resume"`)
	require.Equal(t, 2, strings.Count(body, "<rect "), "one bar per sweep")
	require.Contains(t, body, `<rect class="bar bar-failure"`)
	require.Contains(t, body, "largest lag 2.0 s")
	require.NotContains(t, body, `id="token"`, "no token field without a token")
}

// A missing endpoint (or a failing one) leaves its section with the API's
// error and the rest of the page working.
func TestPageShowsWhatItCouldNotRead(t *testing.T) {
	api := fullAPI()
	delete(api, "/v1/steps?state=stranded")
	delete(api, "/v1/sweeps/recent")
	rec, body := render(t, Options{TokenRequired: true}, api)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Contains(t, body, "list unavailable: /v1/steps: no such endpoint: /v1/steps")
	require.Contains(t, body, "sweeps unavailable: /v1/sweeps/recent: no such endpoint")
	require.Contains(t, body, `data-state="waiting_for_retry">7<`)
	require.Contains(t, body, `id="token"`)
	require.Contains(t, body, `data-token-required="true"`)
}

func TestCountdownAndDurations(t *testing.T) {
	for d, want := range map[time.Duration]string{
		1500 * time.Millisecond:                   "2s",
		59 * time.Second:                          "59s",
		4*time.Minute + 5*time.Second:             "4m05s",
		time.Hour + 2*time.Minute + 3*time.Second: "1h02m03s",
		26*time.Hour + 200*time.Millisecond:       "26h00m01s",
	} {
		require.Equal(t, want, countdown(d), d.String())
	}
	require.Equal(t, "850.0 ms", formatMS(850))
	require.Equal(t, "4.2 s", formatMS(4200))
	require.Equal(t, "3m12s", formatMS(192_000))
}

// The embedded files are served with their types; they are the page's
// only other routes.
func TestStaticFiles(t *testing.T) {
	routes := New(Options{}).Routes(fakeAPI{})
	require.Len(t, routes, 3)
	for path, ct := range map[string]string{"/ui/app.js": "text/javascript", "/ui/app.css": "text/css"} {
		h := routes["GET "+path]
		require.NotNil(t, h, path)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		require.Equal(t, http.StatusOK, rec.Code)
		require.True(t, strings.HasPrefix(rec.Header().Get("Content-Type"), ct), rec.Header().Get("Content-Type"))
		require.NotEmpty(t, rec.Body.String())
		require.NotContains(t, rec.Body.String(), "http://", "no resource from elsewhere")
		require.NotContains(t, rec.Body.String(), "https://", "no resource from elsewhere")
	}
}
