//go:build browser

package cli

// The web page in a real browser: headless Chromium driven over the
// DevTools protocol against the daemon (in-process, as `sweeper run`) on a
// database of the test's own. Run by `make ui-test`; it fails, never skips,
// when no Chromium is found.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

const uiToken = "ui-test-token"

// A hostile step name: if the page did not escape it, the browser would
// build an image (whose load fails: a console error) and run its handler.
const hostileName = `<img src=/nope onerror="window.pwned=1">`

func TestBrowserPage(t *testing.T) {
	exe := chromium(t) // first: without a browser, fail at once, by name
	pool, url := testdb.NewWithURL(t)
	ctx := context.Background()
	// No timer gate and an hourly schedule: nothing moves unless the test
	// (or the page) asks.
	d := startDaemon(t, []string{"DATABASE_URL=" + url},
		"--http-addr", "127.0.0.1:0", "--schedule", "@every 1h", "--wake-at-due=false",
		"--admin-token", uiToken, "--log-format", "json")
	addr := receive(t, d.addr, 10*time.Second, "the admin API")
	receive(t, d.up, 10*time.Second, "the first successful health check")
	base := "http://" + addr

	// A few real sweeps for the sweeps table and the lag chart.
	for i := range 3 {
		testdb.SeedDue(t, pool, 2+3*i)
		status, body := httpPost(t, base+"/v1/sweeps", uiToken)
		require.Equal(t, http.StatusOK, status, body)
	}
	require.Zero(t, countWaiting(t, pool))

	// The steps the page shows: two due, one waiting for its backoff, two
	// stranded (out of attempts), one in error.
	dueA, dueB := waitingUIStep(t, pool, 1, 5), waitingUIStep(t, pool, 1, 5)
	later := waitingUIStep(t, pool, 1, 3600)
	strandedA, strandedB := waitingUIStep(t, pool, 3, 5), waitingUIStep(t, pool, 3, 5)
	failed := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, failed, statemachine.Error, 0)
	_, err := pool.Exec(ctx, `UPDATE tasker.named_steps ns SET name = $2 FROM tasker.workflow_steps ws
		WHERE ws.named_step_uuid = ns.named_step_uuid AND ws.workflow_step_uuid = $1`, dueB, hostileName)
	require.NoError(t, err)
	// Into the schedule, which the listing reads (the adoption loop is off).
	res := runCLI(t, []string{"DATABASE_URL=" + url}, "reconcile")
	require.Equal(t, 0, res.code, res.stderr)

	b := newBrowser(t, exe)
	b.open(base + "/ui")

	// The numbers shown are the database's.
	for state, n := range countsByState(t, pool) {
		require.Equal(t, fmt.Sprint(n), b.text(`td[data-state="`+state+`"]`), "steps in %s", state)
	}
	require.Equal(t, "5", b.text(`td[data-state="waiting_for_retry"]`))
	require.Equal(t, "2", b.text("#due-now"))
	require.Equal(t, "1", b.text("#not-yet-due"))
	require.Equal(t, "2", b.text("#stranded"))
	require.Equal(t, 5, b.count("#waiting tr[data-step]"))
	require.Equal(t, 2, b.count("#stranded-steps tr[data-step]"))
	for _, s := range []uuid.UUID{strandedA, strandedB} {
		require.Equal(t, 1, b.count(`#stranded-steps tr[data-step="`+s.String()+`"]`))
	}
	require.Regexp(t, `^in (4[0-9]|50)m[0-5][0-9]s$`, b.text(`#waiting tr[data-step="`+later.String()+`"] .countdown`))
	require.Equal(t, 3, b.count("#sweeps tr[data-sweep]"))
	require.Equal(t, 3, b.count("#lag-chart rect"))
	// Escaped: the name is text, no element came of it.
	require.Equal(t, hostileName, b.text(`#waiting tr[data-step="`+dueB.String()+`"] .name`))
	require.Equal(t, 0, b.count("#live img"))
	require.False(t, chromedpEval[bool](b, `window.pwned === 1`))

	// The token, typed once, goes in session storage and every action.
	require.NoError(t, chromedp.Do(b.ctx, chromedp.SendKeys(chromedp.CSS("#token"), uiToken)))
	b.screenshot()

	// Retry a due step: confirm, and it is pending in the database.
	b.act(`#waiting button[data-action="retry"][data-step="`+dueA.String()+`"]`, nil)
	b.eventually("the retried step to be pending", func() bool { return uiStateOf(t, pool, dueA) == statemachine.Pending })
	require.Equal(t, statemachine.WaitingForRetry, uiStateOf(t, pool, dueB), "only the clicked step moved")
	b.flashSays("Retry")

	// Grant two more attempts to a stranded step: eligible again (it moves
	// by the normal rule once its backoff has passed).
	b.act(`#stranded-steps button[data-action="grant"][data-step="`+strandedA.String()+`"]`,
		map[string]string{"#confirm-attempts": "2", "#confirm-reason": "quota raised"})
	b.eventually("the granted attempts", func() bool { return maxAttemptsOf(t, pool, strandedA) == 5 })
	require.Equal(t, statemachine.WaitingForRetry, uiStateOf(t, pool, strandedA))

	// Resolve the other by hand.
	b.act(`#stranded-steps button[data-action="resolve"][data-step="`+strandedB.String()+`"]`,
		map[string]string{"#confirm-reason": "fixed by hand"})
	b.eventually("the resolved step", func() bool { return uiStateOf(t, pool, strandedB) == statemachine.ResolvedManually })
	var reason string
	require.NoError(t, pool.QueryRow(ctx, `SELECT metadata::text FROM tasker.workflow_step_transitions
		WHERE workflow_step_uuid = $1 AND most_recent`, strandedB).Scan(&reason))
	require.Contains(t, reason, "fixed by hand", "the page's reason is in the audit")

	// Pause every replica, with a reason; the page shows it; resume.
	b.act("#pause-button", map[string]string{"#confirm-reason": "deploy in progress"})
	b.eventually("the pause switch on", func() bool { return paused(t, pool) })
	b.waitFor(`#pause-state[data-paused="true"]`)
	require.Contains(t, b.text("#pause-state"), "deploy in progress")
	b.act("#resume", nil)
	b.eventually("the pause switch off", func() bool { return !paused(t, pool) })
	b.waitFor(`#pause-state[data-paused="false"]`)

	// After the changes, the refreshed page still shows the database's
	// numbers (the status counts are cached for up to 2 s).
	b.eventually("the page to show the new counts", func() bool {
		for state, n := range countsByState(t, pool) {
			if b.text(`td[data-state="`+state+`"]`) != fmt.Sprint(n) {
				return false
			}
		}
		return b.count("#waiting tr[data-step]") == 3
	})
	require.Equal(t, "1", b.text(`td[data-state="resolved_manually"]`))
	// The granted step is eligible again, and due (its backoff passed long
	// ago); nothing is stranded any more.
	require.Equal(t, "2", b.text("#due-now"))
	require.Equal(t, "0", b.text("#stranded"))
	require.Equal(t, "due now", b.text(`#waiting tr[data-step="`+strandedA.String()+`"] td:nth-child(4)`))
	require.Equal(t, "No stranded step.", b.text("#stranded-steps .empty"))

	b.requireCleanConsole()
	require.Equal(t, 0, d.stop(t), d.logs.String())
}

// waitingUIStep creates a step in waiting_for_retry after `attempts`
// attempts (of 3) 10 minutes ago, with the given backoff.
func waitingUIStep(t *testing.T, pool *pgxpool.Pool, attempts, backoffSeconds int32) uuid.UUID {
	t.Helper()
	step := testdb.CreateTask(t, pool, testdb.TaskSpec{Steps: 1}).Steps[0]
	testdb.PlaceInState(t, pool, step, statemachine.WaitingForRetry, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{
		Attempts: testdb.Ptr(attempts), MaxAttempts: testdb.Ptr[int32](3),
		LastAttemptedAgo: testdb.Ptr(10 * time.Minute), BackoffRequestSeconds: testdb.Ptr(backoffSeconds),
	})
	return step
}

// countsByState counts the steps per current state straight from the
// tables (no transition: pending), every known state included.
func countsByState(t *testing.T, pool *pgxpool.Pool) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, s := range statemachine.States() {
		out[string(s)] = 0
	}
	rows, err := pool.Query(context.Background(), `
SELECT coalesce(t.to_state, 'pending'), count(*)
FROM tasker.workflow_steps ws
LEFT JOIN tasker.workflow_step_transitions t ON t.workflow_step_uuid = ws.workflow_step_uuid AND t.most_recent
GROUP BY 1`)
	require.NoError(t, err)
	defer rows.Close()
	for rows.Next() {
		var state string
		var n int64
		require.NoError(t, rows.Scan(&state, &n))
		out[state] = n
	}
	require.NoError(t, rows.Err())
	return out
}

func uiStateOf(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) statemachine.State {
	t.Helper()
	var s string
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT to_state FROM tasker.workflow_step_transitions
		WHERE workflow_step_uuid = $1 AND most_recent`, step).Scan(&s))
	return statemachine.State(s)
}

func maxAttemptsOf(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) int32 {
	t.Helper()
	var n int32
	require.NoError(t, pool.QueryRow(context.Background(),
		`SELECT coalesce(max_attempts, 0) FROM tasker.workflow_steps WHERE workflow_step_uuid = $1`, step).Scan(&n))
	return n
}

func paused(t *testing.T, pool *pgxpool.Pool) bool {
	t.Helper()
	var p bool
	require.NoError(t, pool.QueryRow(context.Background(),
		`SELECT coalesce((SELECT paused FROM tasker_sweeper.pause WHERE id = 1), false)`).Scan(&p))
	return p
}

func httpPost(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// browser is one headless Chromium tab and what its console said.
type browser struct {
	t   *testing.T
	ctx context.Context
	mu  sync.Mutex
	msg []chromedp.ConsoleMessage
}

// chromium finds the browser: $CHROMIUM, else the usual names on PATH.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no Chromium found: the browser test needs one (Debian: apt-get install chromium; or set CHROMIUM to its path)")
	return ""
}

func newBrowser(t *testing.T, exe string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 1400),
		chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	b := &browser{t: t, ctx: ctx}
	// Start the browser now, so a broken one fails here, by name.
	require.NoError(t, chromedp.Do(ctx), "start Chromium")
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.msg = append(b.msg, m)
			b.mu.Unlock()
		}
	}()
	return b
}

func (b *browser) open(url string) {
	b.t.Helper()
	require.NoError(b.t, chromedp.Do(b.ctx, chromedp.Navigate(url), chromedp.WaitReady(chromedp.CSS(`body[data-ready="true"]`))),
		"open %s", url)
}

func (b *browser) waitFor(sel string) {
	b.t.Helper()
	require.NoError(b.t, chromedp.Do(b.ctx, chromedp.WaitReady(chromedp.CSS(sel))), "wait for %s", sel)
}

// text is the trimmed text of the first element sel matches ("" if none).
func (b *browser) text(sel string) string {
	b.t.Helper()
	return strings.TrimSpace(chromedpEval[string](b, fmt.Sprintf(
		`(document.querySelector(%q) || {textContent: ""}).textContent`, sel)))
}

func (b *browser) count(sel string) int {
	b.t.Helper()
	return chromedpEval[int](b, fmt.Sprintf(`document.querySelectorAll(%q).length`, sel))
}

func chromedpEval[T any](b *browser, expr string) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr))
	require.NoError(b.t, err, "evaluate %s", expr)
	return v
}

// act clicks an action button, fills the confirmation's fields and
// confirms it.
func (b *browser) act(button string, fields map[string]string) {
	b.t.Helper()
	// The page swaps its data in every few seconds: a button found just
	// before a swap is gone when clicked. Try again on the fresh one.
	var err error
	for range 5 {
		err = chromedp.Do(b.ctx, chromedp.Click(chromedp.CSS(button)), chromedp.WaitVisible(chromedp.CSS("#confirm-ok")))
		if err == nil {
			break
		}
	}
	require.NoError(b.t, err, "click %s", button)
	for sel, v := range fields {
		require.NoError(b.t, chromedp.Do(b.ctx, chromedp.SetValue(chromedp.CSS(sel), v)), "fill %s", sel)
	}
	require.NoError(b.t, chromedp.Do(b.ctx,
		chromedp.Click(chromedp.CSS("#confirm-ok")),
		chromedp.WaitNotVisible(chromedp.CSS("#confirm-ok")),
		// Done once the answer came and the page was refreshed with it.
		chromedp.WaitReady(chromedp.CSS("body:not([data-busy])")),
	), "confirm %s", button)
}

// flashSays waits for the status line to report an action done.
func (b *browser) flashSays(verb string) {
	b.t.Helper()
	b.eventually("the page to report the "+verb, func() bool {
		s := b.text("#flash")
		return strings.HasPrefix(s, verb) && strings.HasSuffix(s, ": done")
	})
}

func (b *browser) eventually(what string, cond func() bool) {
	b.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out waiting for %s; the page says: %q", what, b.text("#flash"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// screenshot saves the page as a PNG: to $UI_SCREENSHOT when set, else in
// the test's temporary directory.
func (b *browser) screenshot() {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	require.NoError(b.t, err)
	path := os.Getenv("UI_SCREENSHOT")
	if path == "" {
		path = filepath.Join(b.t.TempDir(), "ui.png")
	}
	require.NoError(b.t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(b.t, os.WriteFile(path, png, 0o644))
	b.t.Logf("screenshot: %s (%d bytes)", path, len(png))
}

// requireCleanConsole fails on any error or warning the page wrote to the
// console, any uncaught exception and any error of the browser's log (a
// failed load, a blocked resource).
func (b *browser) requireCleanConsole() {
	b.t.Helper()
	// What the console said has arrived once a later call returns.
	_ = chromedpEval[bool](b, `true`)
	b.mu.Lock()
	defer b.mu.Unlock()
	var bad []string
	for _, m := range b.msg {
		switch m.Type {
		case chromedp.ConsoleError, chromedp.ConsoleWarning, chromedp.ConsoleException, "assert":
			bad = append(bad, m.String()+" at "+m.URL)
		}
	}
	require.Empty(b.t, bad, "the console")
}
