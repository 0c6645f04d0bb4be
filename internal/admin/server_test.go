package admin_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/admin"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// newServedHarness is the harness served by admin.Server with the given
// limits on a loopback listener, as the daemon serves it.
func newServedHarness(t *testing.T, limits admin.Limits, tweak func(*admin.Deps)) (*adminHarness, string) {
	t.Helper()
	h, deps := newHarnessDeps(t, tweak)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := admin.NewServer(admin.New(deps), limits, deps.Logger)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
		require.ErrorIs(t, <-served, http.ErrServerClosed)
	})
	addr := l.Addr().String()
	h.url = "http://" + addr
	h.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	return h, addr
}

// dial opens a raw connection to the server, closed when the test ends.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// rawResponse reads one response from a raw connection (within 10 s), its
// body included.
func rawResponse(t *testing.T, c net.Conn, br *bufio.Reader) apiResponse {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return apiResponse{status: resp.StatusCode, header: resp.Header, body: body}
}

// A client that trickles its body is cut off at the read timeout with a
// JSON 408, however steadily it trickles.
func TestServerCutsOffASlowBody(t *testing.T) {
	t.Parallel()
	const readTimeout = 500 * time.Millisecond
	_, addr := newServedHarness(t, admin.Limits{ReadTimeout: readTimeout}, nil)
	c := dial(t, addr)
	start := time.Now()
	_, err := fmt.Fprintf(c, "POST /v1/steps/%s/failures HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
		"Content-Length: 1000\r\n\r\n{", uuid.New())
	require.NoError(t, err)
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
			}
		}
	}()
	res := rawResponse(t, c, bufio.NewReader(c))
	elapsed := time.Since(start)
	close(stop)
	<-trickled
	res.requireError(t, http.StatusRequestTimeout, "request_timeout")
	require.Less(t, elapsed, readTimeout+time.Second, "cut off within the read timeout")
}

// An idle keep-alive connection is closed after the idle timeout.
func TestServerClosesIdleConnections(t *testing.T) {
	t.Parallel()
	const idle = 500 * time.Millisecond
	_, addr := newServedHarness(t, admin.Limits{IdleTimeout: idle}, nil)
	c := dial(t, addr)
	br := bufio.NewReader(c)
	_, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	res := rawResponse(t, c, br)
	require.Equal(t, http.StatusOK, res.status)
	require.Empty(t, res.header.Get("Connection"), "kept alive")

	answered := time.Now()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = br.ReadByte()
	require.ErrorIs(t, err, io.EOF, "the server closed the idle connection (not our read deadline)")
	waited := time.Since(answered)
	require.GreaterOrEqual(t, waited, idle-100*time.Millisecond)
	require.Less(t, waited, idle+time.Second)
}

// Connections beyond the limit get a JSON 503 at once; a closed connection
// frees its slot.
func TestServerBoundsConnections(t *testing.T) {
	t.Parallel()
	h, addr := newServedHarness(t, admin.Limits{MaxConns: 2}, nil)
	held := make([]net.Conn, 2)
	for i := range held {
		held[i] = dial(t, addr)
		_, err := io.WriteString(held[i], "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, rawResponse(t, held[i], bufio.NewReader(held[i])).status, "connection %d served", i)
	}

	for range 3 {
		res := h.request(t, http.MethodGet, "/healthz", "")
		res.requireError(t, http.StatusServiceUnavailable, "unavailable")
		require.Equal(t, "1", res.header.Get("Retry-After"))
	}

	require.NoError(t, held[0].Close())
	deadline := time.Now().Add(10 * time.Second)
	for {
		res := h.request(t, http.MethodGet, "/healthz", "")
		if res.status == http.StatusOK {
			break
		}
		require.Equal(t, http.StatusServiceUnavailable, res.status)
		require.True(t, time.Now().Before(deadline), "the closed connection's slot never came back")
	}
	// The other held connection still counts: the limit is still 2.
	_, err := io.WriteString(held[1], "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, rawResponse(t, held[1], bufio.NewReader(held[1])).status)
}

// Headers over MaxHeaderBytes are refused by net/http itself, before any
// handler runs, so the 431 is plain text: only the status is ours to test.
func TestServerRefusesHugeHeaders(t *testing.T) {
	t.Parallel()
	_, addr := newServedHarness(t, admin.Limits{}, nil)
	for _, tc := range []struct {
		size   int
		status int
	}{{32 << 10, http.StatusOK}, {100 << 10, http.StatusRequestHeaderFieldsTooLarge}} {
		c := dial(t, addr)
		_, err := fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", tc.size))
		require.NoError(t, err)
		require.Equal(t, tc.status, rawResponse(t, c, bufio.NewReader(c)).status, "%d bytes of headers", tc.size)
	}
}

// slowTrigger makes a manual sweep take longer than the server's read and
// write timeouts; a sweep whose request context is cancelled meanwhile
// fails.
type slowTrigger struct {
	admin.SweepTrigger
	delay time.Duration
}

func (s slowTrigger) Trigger(ctx context.Context, dryRun bool) (sweeper.Summary, error) {
	timer := time.NewTimer(s.delay)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
		return sweeper.Summary{}, fmt.Errorf("the request was cancelled before the sweep: %w", ctx.Err())
	}
	return s.SweepTrigger.Trigger(ctx, dryRun)
}

// POST /v1/sweeps outlives the server's read and write timeouts: a manual
// sweep of a backlog takes longer than any quick request.
func TestManualSweepOutlivesTheServerTimeouts(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	h, _ := newServedHarness(t, admin.Limits{ReadTimeout: timeout, WriteTimeout: timeout}, func(d *admin.Deps) {
		d.Sweeps = slowTrigger{SweepTrigger: d.Sweeps, delay: 4 * timeout}
	})
	step := h.waitingStep(t, 5)
	res := h.request(t, http.MethodPost, "/v1/sweeps", "")
	require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
	require.Equal(t, float64(1), res.json(t)["transitioned"])
	require.Equal(t, statemachine.Pending, h.stateOf(t, step))

	// The extension is the sweep's alone: a slow body elsewhere is still cut off.
	c := dial(t, strings.TrimPrefix(h.url, "http://"))
	_, err := fmt.Fprintf(c, "POST /v1/steps/%s/failures HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{", uuid.New())
	require.NoError(t, err)
	rawResponse(t, c, bufio.NewReader(c)).requireError(t, http.StatusRequestTimeout, "request_timeout")
}

// countingStatus counts the status queries; the first StepCountsByState
// call runs gate before it counts.
type countingStatus struct {
	admin.StatusCounter
	byState, due atomic.Int32
	gate         func()
}

func (c *countingStatus) StepCountsByState(ctx context.Context) (map[statemachine.State]int64, error) {
	if c.byState.Add(1) == 1 && c.gate != nil {
		c.gate()
	}
	return c.StatusCounter.StepCountsByState(ctx)
}

func (c *countingStatus) CountDue(ctx context.Context) (sweeper.DueCounts, error) {
	c.due.Add(1)
	return c.StatusCounter.CountDue(ctx)
}

// countingReadiness tells arrived about every status request that reached
// the handler (the handler asks readiness first).
type countingReadiness struct {
	admin.Readiness
	arrived chan struct{}
}

func (c countingReadiness) Ready() bool {
	c.arrived <- struct{}{}
	return c.Readiness.Ready()
}

// Concurrent status requests share one computation, and later ones within
// the max age are served from it: the open endpoint costs one count.
func TestStatusIsComputedOncePerMaxAge(t *testing.T) {
	t.Parallel()
	const clients = 20
	var counter *countingStatus
	arrived := make(chan struct{}, 2*clients)
	h := newAdminHarness(t, func(d *admin.Deps) {
		d.StatusMaxAge = time.Hour
		counter = &countingStatus{StatusCounter: d.Status}
		d.Status = counter
		d.Readiness = countingReadiness{Readiness: d.Readiness, arrived: arrived}
	})
	h.waitingStep(t, 5)
	// The first computation waits until every client is in the handler.
	counter.gate = func() {
		for i := range clients {
			select {
			case <-arrived:
			case <-time.After(10 * time.Second):
				t.Errorf("only %d of %d status requests arrived", i, clients)
				return
			}
		}
	}

	var wg sync.WaitGroup
	bodies := make([]map[string]any, clients)
	for i := range clients {
		wg.Go(func() {
			res := h.request(t, http.MethodGet, "/v1/status", "")
			require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
			require.NoError(t, json.Unmarshal(res.body, &bodies[i]))
		})
	}
	wg.Wait()
	require.Equal(t, int32(1), counter.byState.Load(), "one count by state for all concurrent requests")
	require.Equal(t, int32(1), counter.due.Load(), "one due count for all concurrent requests")
	for _, b := range bodies {
		require.Equal(t, float64(1), b["due_now"])
	}

	h.waitingStep(t, 5)
	res := h.request(t, http.MethodGet, "/v1/status", "")
	require.Equal(t, http.StatusOK, res.status)
	require.Equal(t, float64(1), res.json(t)["due_now"], "served from the cache within its max age")
	require.Equal(t, int32(1), counter.byState.Load())
}

// A status count that fails is shared by its waiters but not cached: the
// next request counts again.
func TestStatusFailureIsNotCached(t *testing.T) {
	t.Parallel()
	var fail atomic.Bool
	fail.Store(true)
	h := newAdminHarness(t, func(d *admin.Deps) {
		d.StatusMaxAge = time.Hour
		d.Status = failingStatus{StatusCounter: d.Status, fail: &fail}
	})
	h.request(t, http.MethodGet, "/v1/status", "").requireError(t, http.StatusInternalServerError, "internal")
	fail.Store(false)
	require.Equal(t, http.StatusOK, h.request(t, http.MethodGet, "/v1/status", "").status)
}

type failingStatus struct {
	admin.StatusCounter
	fail *atomic.Bool
}

func (f failingStatus) CountDue(ctx context.Context) (sweeper.DueCounts, error) {
	if f.fail.Load() {
		return sweeper.DueCounts{}, errors.New("injected count failure")
	}
	return f.StatusCounter.CountDue(ctx)
}

// Unclean paths get a JSON 404, never the mux's redirect (a client that
// follows a redirected POST sends a request it never meant); a malformed
// query is a JSON 400 rather than an absent parameter.
func TestAdminUncleanPathsAndMalformedQueries(t *testing.T) {
	t.Parallel()
	h := newAdminHarness(t, nil)
	h.client = &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	step := h.waitingStep(t, 5)
	for _, tc := range []struct{ method, path string }{
		{http.MethodPost, "//v1/sweeps"},
		{http.MethodPost, "/v1/./sweeps"},
		{http.MethodGet, "/v1/../healthz"},
		{http.MethodGet, "/v1//status"},
	} {
		res := h.request(t, tc.method, tc.path, "")
		out := res.requireError(t, http.StatusNotFound, "not_found")
		require.Empty(t, res.header.Get("Location"), "%s %s", tc.method, tc.path)
		require.Contains(t, out["error"], "not clean", "%s %s", tc.method, tc.path)
	}
	require.Equal(t, statemachine.WaitingForRetry, h.stateOf(t, step), "no unclean POST swept")

	res := h.request(t, http.MethodPost, "/v1/sweeps?dry_run=%ZZ", "")
	res.requireError(t, http.StatusBadRequest, "bad_request")
	res = h.request(t, http.MethodPost, "/v1/steps/"+step.String()+"/retry?force=%ZZ", "")
	res.requireError(t, http.StatusBadRequest, "bad_request")
	require.Equal(t, statemachine.WaitingForRetry, h.stateOf(t, step), "a malformed dry_run never reads as a real sweep")

	// An asterisk target reaches the mux, which refuses it: JSON too.
	c := dial(t, strings.TrimPrefix(h.url, "http://"))
	br := bufio.NewReader(c)
	_, err := io.WriteString(c, "GET * HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	rawResponse(t, c, br).requireError(t, http.StatusBadRequest, "bad_request")

	// A malformed escape in the path fails net/http's parse of the request
	// line, before any handler runs: a plain-text 400 that cannot be JSON.
	c = dial(t, strings.TrimPrefix(h.url, "http://"))
	_, err = io.WriteString(c, "GET /v1/steps/%ZZ HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	require.Equal(t, http.StatusBadRequest, rawResponse(t, c, bufio.NewReader(c)).status)
}
