// Package admin owns the daemon's HTTP surfaces: the admin API (health and
// readiness, metrics, manual sweeps, the inline failure handler, per-step
// status and retries, and the status counts, with JSON errors for every
// failure), the ops handler (only the probes and metrics, for an open
// port), and the server that serves either within limits (timeouts, header
// size, connections). It defines small interfaces for what it calls; the
// sweeper, the scheduler, the failure handler, the database store and the
// readiness preflight satisfy them.
package admin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/preflight"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// SweepTrigger runs one sweep now, after any sweep in flight
// (*sweeper.Scheduler).
type SweepTrigger interface {
	Trigger(ctx context.Context, dryRun bool) (sweeper.Summary, error)
}

// StepMover moves one step to pending with a sweep's rules
// (*sweeper.Sweeper): sweeper.ErrNotDue or statemachine.ErrLostRace when
// it cannot.
type StepMover interface {
	MoveStep(ctx context.Context, step uuid.UUID, force bool) (sweeper.Moved, error)
}

// FailureHandler is the inline failure handler (*handling.Service).
type FailureHandler interface {
	Handle(ctx context.Context, f handling.Failure) (handling.Result, error)
}

// StepStatusReader evaluates the due rule for one step;
// statemachine.ErrStepNotFound when it does not exist.
type StepStatusReader interface {
	StepDueStatus(ctx context.Context, step uuid.UUID) (sweeper.StepDue, error)
}

// StatusCounter counts steps per state and what a sweep would do now.
type StatusCounter interface {
	StepCountsByState(ctx context.Context) (map[statemachine.State]int64, error)
	CountDue(ctx context.Context) (sweeper.DueCounts, error)
}

// Readiness reports whether the database answers, as of the last check.
type Readiness interface {
	Ready() bool
}

// Preflight runs the readiness preflight (database, tasker schema,
// privileges, the sweeper's own objects, recent sweeps) for GET /readyz.
type Preflight interface {
	Report(ctx context.Context) preflight.Report
}

// Deps is what the admin API calls. Sweeps, Steps, Failures, StepStatus
// and Status are required; the rest are optional.
type Deps struct {
	Sweeps     SweepTrigger
	Steps      StepMover
	Failures   FailureHandler
	StepStatus StepStatusReader
	Status     StatusCounter
	// Readiness refuses sweeps while the database is down, and decides
	// /readyz when Preflight is nil; nil means always ready.
	Readiness Readiness
	// Preflight, when set, decides /readyz: 200 with the checks when all
	// pass, 503 naming each failed one.
	Preflight Preflight
	// Metrics serves GET /metrics; nil leaves the route out.
	Metrics http.Handler
	// WakeMode says how sweeps are timed (GET /v1/status "wake_mode",
	// *sweeper.Scheduler.WakeMode); nil leaves the field out.
	WakeMode func() string
	// Queue, when set, serves the retry queue: GET /v1/steps, the detail
	// of GET /v1/steps/{uuid}, resolve, cancel and grant, pause and resume,
	// and the pause switch in GET /v1/status.
	Queue QueueOperator
	// SweepLog, when set, serves GET /v1/sweeps/recent.
	SweepLog *SweepLog
	// Page, when set, gives the web page's routes (GET patterns under
	// /ui, internal/webui), handed the admin API itself to read from; they
	// are served with the API's rules (logs, JSON errors, clean paths).
	Page func(api http.Handler) map[string]http.Handler
	// Token, when set, is the bearer token every POST endpoint requires.
	Token string
	// TokenName, when set, names the token's holder in the audit of every
	// manual change.
	TokenName string
	// Logger gets request and failure logs; nil discards them.
	Logger *slog.Logger
	// StatusMaxAge is how long GET /v1/status serves one computed answer:
	// the counts cost a scan of the waiting steps, and the endpoint is
	// open. Zero means DefaultStatusMaxAge; negative, a fresh count per
	// request (concurrent requests still share one).
	StatusMaxAge time.Duration
	// SweepTimeout replaces the server's read and write deadlines for POST
	// /v1/sweeps, which waits for a running sweep and then sweeps; zero
	// means DefaultSweepTimeout.
	SweepTimeout time.Duration
}

// Defaults of the Deps durations.
const (
	DefaultStatusMaxAge = 2 * time.Second
	DefaultSweepTimeout = 15 * time.Minute
)

// statusComputeTimeout bounds one computation of GET /v1/status, which runs
// detached from the request that started it.
const statusComputeTimeout = 30 * time.Second

// alwaysReady is the Readiness of a Deps without one.
type alwaysReady struct{}

func (alwaysReady) Ready() bool { return true }

// maxFailureBody bounds a failure report's body: the message is cut to 4 KiB
// anyway, so anything near this is a mistake or an attack.
const maxFailureBody = 1 << 20

// Error codes of the admin API's JSON error bodies.
const (
	codeBadRequest       = "bad_request"
	codeUnauthorized     = "unauthorized"
	codeNotFound         = "not_found"
	codeMethodNotAllowed = "method_not_allowed"
	codeConflict         = "conflict"
	codeTooLarge         = "request_too_large"
	codeTimeout          = "request_timeout"
	codeUnavailable      = "unavailable"
	codeInternal         = "internal"
)

// server serves the admin endpoints.
type server struct {
	Deps
	mux    *http.ServeMux
	status *statusCache
}

// New builds the admin API's routes. GET endpoints are open; POST
// endpoints need the bearer token when one is set. Every error, including an
// unknown route or a wrong method, is a JSON body with "error" and "code".
// A missing required dependency is a wiring bug: New panics.
func New(d Deps) http.Handler {
	for _, dep := range []struct {
		name    string
		missing bool
	}{
		{"Sweeps", d.Sweeps == nil},
		{"Steps", d.Steps == nil},
		{"Failures", d.Failures == nil},
		{"StepStatus", d.StepStatus == nil},
		{"Status", d.Status == nil},
	} {
		if dep.missing {
			panic("admin.New: Deps." + dep.name + " is required")
		}
	}
	if d.StatusMaxAge == 0 {
		d.StatusMaxAge = DefaultStatusMaxAge
	}
	if d.SweepTimeout <= 0 {
		d.SweepTimeout = DefaultSweepTimeout
	}
	a := newServer(d)
	a.status = &statusCache{maxAge: d.StatusMaxAge}
	a.mux.HandleFunc("GET /v1/status", a.getStatus)
	a.mux.HandleFunc("GET /v1/steps/{uuid}", a.stepStatus)
	a.mux.Handle("POST /v1/sweeps", a.authorized(a.triggerSweep))
	a.mux.Handle("POST /v1/steps/{uuid}/failures", a.authorized(a.reportFailure))
	a.mux.Handle("POST /v1/steps/{uuid}/retry", a.authorized(a.retryStep))
	if d.Queue != nil {
		a.routeQueue()
	}
	if d.SweepLog != nil {
		a.mux.HandleFunc("GET /v1/sweeps/recent", a.recentSweeps)
	}
	if d.Page != nil {
		for pattern, h := range d.Page(a) {
			a.mux.Handle(pattern, h)
		}
	}
	return a
}

// OpsDeps is what the ops handler serves; every field is optional, as in
// Deps.
type OpsDeps struct {
	Readiness Readiness
	Preflight Preflight
	Metrics   http.Handler
	Logger    *slog.Logger
}

// NewOps builds the ops handler: GET /healthz, /readyz and /metrics only,
// answered as the admin API answers them, with no token, so probes and
// Prometheus can reach it on an open port; everything else is a JSON 404
// (or 405). It changes nothing and shows no step.
func NewOps(d OpsDeps) http.Handler {
	return newServer(Deps{Readiness: d.Readiness, Preflight: d.Preflight, Metrics: d.Metrics, Logger: d.Logger})
}

// newServer fills the optional dependencies and routes the probes and
// metrics, which both handlers serve.
func newServer(d Deps) *server {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Readiness == nil {
		d.Readiness = alwaysReady{}
	}
	a := &server{Deps: d, mux: http.NewServeMux()}
	a.mux.HandleFunc("GET /healthz", a.healthz)
	a.mux.HandleFunc("GET /readyz", a.readyz)
	if d.Metrics != nil {
		a.mux.Handle("GET /metrics", d.Metrics)
	}
	return a
}

// ServeHTTP logs the request, turns a handler panic into a 500 and gives the
// mux's own 400/404/405 answers a JSON body. A path that is not clean
// ("//v1/sweeps", "/v1/../healthz") is a 404, never the mux's redirect:
// a redirected POST would be a second request the client never meant.
func (a *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	var au *audit
	if r.Method == http.MethodPost {
		// State-changing: logged at info, with what came of it (audit.go).
		r, au = withAudit(r)
		rec.keep = auditBodyLimit
	}
	defer func() {
		if p := recover(); p != nil {
			if err, ok := p.(error); ok && errors.Is(err, http.ErrAbortHandler) {
				// net/http's own way to abort a response: let it through.
				panic(p)
			}
			a.Logger.LogAttrs(r.Context(), slog.LevelError, "admin API handler panicked",
				slog.String("method", r.Method), slog.String("path", r.URL.Path),
				slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
			if !rec.wroteHeader {
				writeError(rec, http.StatusInternalServerError, codeInternal, "internal error: handler panicked")
			}
		}
		level, attrs := slog.LevelDebug, []slog.Attr{
			slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.Int("status", rec.status()),
			slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
		}
		if au != nil {
			if line, ok := au.lineAttrs(r, rec.status(), rec.body); ok {
				level, attrs = slog.LevelInfo, append(attrs, line...)
			}
		}
		a.Logger.LogAttrs(r.Context(), level, "admin API request", attrs...)
	}()

	if !strings.HasPrefix(r.URL.Path, "/") {
		// "*" (OPTIONS * HTTP/1.1) or an absolute form without a path.
		writeError(rec, http.StatusBadRequest, codeBadRequest, "bad request target: "+r.RequestURI)
		return
	}
	if clean := cleanPath(r.URL.Path); clean != r.URL.Path {
		writeError(rec, http.StatusNotFound, codeNotFound,
			fmt.Sprintf("no such endpoint: %s (the path is not clean; did you mean %s?)", r.URL.Path, clean))
		return
	}
	if _, pattern := a.mux.Handler(r); pattern != "" {
		a.mux.ServeHTTP(rec, r)
		return
	}
	// No route: let the mux decide between 400, 404, 405 (with its Allow
	// header) and a redirect to the clean path, then answer in JSON.
	probe := &headerProbe{header: http.Header{}}
	a.mux.ServeHTTP(probe, r)
	switch {
	case probe.code == http.StatusMethodNotAllowed:
		rec.Header().Set("Allow", probe.header.Get("Allow"))
		writeError(rec, http.StatusMethodNotAllowed, codeMethodNotAllowed,
			fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, probe.header.Get("Allow")))
	case probe.code >= 300 && probe.code < 400:
		msg := "no such endpoint: " + r.URL.Path + " (the path is not clean"
		if loc := probe.header.Get("Location"); loc != "" {
			msg += "; did you mean " + loc + "?"
		}
		writeError(rec, http.StatusNotFound, codeNotFound, msg+")")
	case probe.code == http.StatusBadRequest:
		writeError(rec, http.StatusBadRequest, codeBadRequest, "bad request target: "+r.RequestURI)
	default:
		writeError(rec, http.StatusNotFound, codeNotFound, "no such endpoint: "+r.URL.Path)
	}
}

// cleanPath is the path the mux would redirect p (which starts with "/")
// to: no "." or ".." segments, no doubled slashes, a trailing slash kept.
func cleanPath(p string) string {
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}

func (a *server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyzResponse is GET /readyz's body. When not ready it carries the
// API's error and code too, so a client reading only those still learns why.
type readyzResponse struct {
	Status string            `json:"status"`
	Ready  bool              `json:"ready"`
	Error  string            `json:"error,omitempty"`
	Code   string            `json:"code,omitempty"`
	Path   string            `json:"path,omitempty"`
	Checks []preflight.Check `json:"checks,omitempty"`
}

func (a *server) readyz(w http.ResponseWriter, r *http.Request) {
	if a.Preflight == nil {
		if !a.Readiness.Ready() {
			writeError(w, http.StatusServiceUnavailable, codeUnavailable, "database unreachable")
			return
		}
		writeJSON(w, http.StatusOK, readyzResponse{Status: "ready", Ready: true})
		return
	}
	rep := a.Preflight.Report(r.Context())
	if !rep.Ready {
		writeJSON(w, http.StatusServiceUnavailable, readyzResponse{
			Status: "not ready", Error: rep.Summary(), Code: codeUnavailable, Path: rep.Path, Checks: rep.Checks,
		})
		return
	}
	writeJSON(w, http.StatusOK, readyzResponse{Status: "ready", Ready: true, Path: rep.Path, Checks: rep.Checks})
}

// sweepError is a failed sweep's body: the error and what was done before it.
type sweepError struct {
	Error   string          `json:"error"`
	Code    string          `json:"code"`
	Summary sweeper.Summary `json:"summary"`
}

func (a *server) triggerSweep(w http.ResponseWriter, r *http.Request) {
	dryRun, ok := boolQuery(w, r, "dry_run")
	if !ok {
		return
	}
	// The server's deadlines suit quick requests; a sweep waits for the one
	// in flight and then moves a backlog. Without a later read deadline the
	// server's background read would time out and cancel the sweep.
	deadline := time.Now().Add(a.SweepTimeout)
	rc := http.NewResponseController(w)
	if err := errors.Join(rc.SetReadDeadline(deadline), rc.SetWriteDeadline(deadline)); err != nil {
		a.Logger.LogAttrs(r.Context(), slog.LevelWarn, "admin API: cannot extend the deadlines of a manual sweep",
			slog.Any("error", err))
	}
	// Like a scheduled tick, a manual sweep is refused while the database is
	// known to be down rather than left to hang on connection attempts.
	if !a.Readiness.Ready() {
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, "database unreachable: sweeps are paused until it answers")
		return
	}
	sum, err := a.Sweeps.Trigger(r.Context(), dryRun)
	if err != nil {
		status, code := http.StatusInternalServerError, codeInternal
		if !a.Readiness.Ready() {
			status, code = http.StatusServiceUnavailable, codeUnavailable
		}
		writeJSON(w, status, sweepError{Error: "sweep failed: " + err.Error(), Code: code, Summary: sum})
		return
	}
	writeJSON(w, http.StatusOK, sum)
}

// failureRequest is the body of POST /v1/steps/{uuid}/failures.
type failureRequest struct {
	Message    string         `json:"message"`
	Kind       string         `json:"kind"`
	Retryable  *bool          `json:"retryable"`
	RetryAfter retryAfter     `json:"retry_after"`
	HTTPStatus int            `json:"http_status"`
	Metadata   map[string]any `json:"metadata"`
}

// retryAfter accepts a Retry-After value as the header's text ("120" or an
// HTTP date) or as a JSON number of whole seconds.
type retryAfter string

func (ra *retryAfter) UnmarshalJSON(b []byte) error {
	var v any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("retry_after: %w", err)
	}
	switch v := v.(type) {
	case nil:
		*ra = ""
	case string:
		*ra = retryAfter(v)
	case json.Number:
		// Same path as the header text: the backoff caps or rejects huge values.
		secs, err := strconv.ParseUint(v.String(), 10, 64)
		if err != nil {
			return fmt.Errorf("retry_after: the number %s is not a whole, non-negative number of seconds", v)
		}
		*ra = retryAfter(strconv.FormatUint(secs, 10))
	default:
		return errors.New("retry_after: want a string (seconds or an HTTP date) or a number of seconds")
	}
	return nil
}

func (a *server) reportFailure(w http.ResponseWriter, r *http.Request) {
	step, ok := stepParam(w, r)
	if !ok {
		return
	}
	dryRun, ok := boolQuery(w, r, "dry_run")
	if !ok {
		return
	}
	var req failureRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	auditNote(r, slog.Bool("dry_run", dryRun), slog.String("kind", req.Kind), slog.Any("retryable", req.Retryable),
		slog.String("retry_after", string(req.RetryAfter)), slog.Int("http_status", req.HTTPStatus))
	if req.HTTPStatus != 0 && (req.HTTPStatus < 100 || req.HTTPStatus > 599) {
		writeError(w, http.StatusBadRequest, codeBadRequest,
			fmt.Sprintf("invalid http_status %d: want 100-599, or 0 for none", req.HTTPStatus))
		return
	}
	res, err := a.Failures.Handle(r.Context(), handling.Failure{
		StepUUID:   step,
		Message:    req.Message,
		Kind:       req.Kind,
		Retryable:  req.Retryable,
		RetryAfter: string(req.RetryAfter),
		HTTPStatus: req.HTTPStatus,
		Source:     "http_api",
		Metadata:   req.Metadata,
		DryRun:     dryRun,
	})
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, res)
	case errors.Is(err, statemachine.ErrStepNotFound):
		writeError(w, http.StatusNotFound, codeNotFound, "step "+step.String()+" not found")
	case errors.Is(err, handling.ErrConflict):
		writeError(w, http.StatusConflict, codeConflict, err.Error())
	case errors.Is(err, handling.ErrInvalidFailure):
		writeError(w, http.StatusBadRequest, codeBadRequest, err.Error())
	case errors.Is(err, statemachine.ErrLostRace):
		writeError(w, http.StatusConflict, codeConflict, "the step kept changing under the handler; try again: "+err.Error())
	default:
		a.internalError(w, r, "handle failure", err, slog.String("step_uuid", step.String()))
	}
}

// stepStatusResponse is GET /v1/steps/{uuid}: every condition of the due rule.
type stepStatusResponse struct {
	StepUUID       uuid.UUID          `json:"step_uuid"`
	State          statemachine.State `json:"state"`
	Due            bool               `json:"due"`
	Reason         string             `json:"reason"`
	DueAt          time.Time          `json:"due_at"`
	DueFromBackoff bool               `json:"due_from_backoff"`
	Processed      bool               `json:"processed"`
	InProcess      bool               `json:"in_process"`
	RetryEligible  bool               `json:"retry_eligible"`
	Retryable      bool               `json:"retryable"`
	Attempts       *int32             `json:"attempts"`
	MaxAttempts    *int32             `json:"max_attempts"`
	UnmetParents   int                `json:"unmet_parents"`
	DBNow          time.Time          `json:"db_now"`
}

func (a *server) stepStatus(w http.ResponseWriter, r *http.Request) {
	step, ok := stepParam(w, r)
	if !ok {
		return
	}
	sd, err := a.StepStatus.StepDueStatus(r.Context(), step)
	if errors.Is(err, statemachine.ErrStepNotFound) {
		writeError(w, http.StatusNotFound, codeNotFound, "step "+step.String()+" not found")
		return
	}
	if err != nil {
		a.internalError(w, r, "read step due status", err, slog.String("step_uuid", step.String()))
		return
	}
	due, reason := sd.Due()
	status := stepStatusResponse{
		StepUUID: sd.StepUUID, State: sd.State, Due: due, Reason: reason,
		DueAt: sd.DueAt.UTC(), DueFromBackoff: sd.DueFromBackoff,
		Processed: sd.Processed, InProcess: sd.InProcess, RetryEligible: sd.RetryEligible, Retryable: sd.Retryable,
		Attempts: sd.Attempts, MaxAttempts: sd.MaxAttempts, UnmetParents: sd.UnmetParents, DBNow: sd.DBNow.UTC(),
	}
	if a.Queue != nil {
		a.showStep(w, r, step, status)
		return
	}
	writeJSON(w, http.StatusOK, status)
}

// retryResponse is POST /v1/steps/{uuid}/retry's answer.
type retryResponse struct {
	StepUUID uuid.UUID `json:"step_uuid"`
	Moved    bool      `json:"moved"`
	DueAt    time.Time `json:"due_at"`
	MovedAt  time.Time `json:"moved_at"`
	Forced   bool      `json:"forced"`
}

// notMovedError is a refused retry: why, in the due rule's words.
type notMovedError struct {
	Error  string `json:"error"`
	Code   string `json:"code"`
	Reason string `json:"reason"`
}

func (a *server) retryStep(w http.ResponseWriter, r *http.Request) {
	step, ok := stepParam(w, r)
	if !ok {
		return
	}
	force, ok := boolQuery(w, r, "force")
	if !ok {
		return
	}
	// An optional body gives the reason, recorded with who asked.
	var req pauseRequest
	if r.ContentLength > 0 && !decodeJSON(w, r, &req) {
		return
	}
	var (
		mv  sweeper.Moved
		err error
	)
	if am, ok := a.Steps.(auditedMover); ok {
		auditNote(r, slog.String("reason", req.Reason))
		au := a.auditOf(r, req.Reason)
		prov := map[string]any{
			"actor": au.Actor, "why": au.Reason, "operation": string(sweeper.OpRetry), "manual": true,
			"via": au.Via, "remote_addr": au.RemoteAddr,
		}
		if au.TokenName != "" {
			prov["token_name"] = au.TokenName
		}
		mv, err = am.MoveStepAudited(r.Context(), step, force, prov)
	} else {
		mv, err = a.Steps.MoveStep(r.Context(), step, force)
	}
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, retryResponse{
			StepUUID: mv.StepUUID, Moved: true, DueAt: mv.DueAt.UTC(), MovedAt: mv.MovedAt.UTC(), Forced: force,
		})
	case errors.Is(err, sweeper.ErrNotDue):
		a.explainNotMoved(w, r, step, force)
	case errors.Is(err, statemachine.ErrLostRace):
		writeError(w, http.StatusConflict, codeConflict, "another writer moved the step first")
	default:
		a.internalError(w, r, "move step", err, slog.String("step_uuid", step.String()))
	}
}

// explainNotMoved answers a retry the claim refused: 404 for an unknown step,
// else 409 with the due rule's reason.
func (a *server) explainNotMoved(w http.ResponseWriter, r *http.Request, step uuid.UUID, force bool) {
	sd, err := a.StepStatus.StepDueStatus(r.Context(), step)
	if errors.Is(err, statemachine.ErrStepNotFound) {
		writeError(w, http.StatusNotFound, codeNotFound, "step "+step.String()+" not found")
		return
	}
	if err != nil {
		a.internalError(w, r, "read step due status", err, slog.String("step_uuid", step.String()))
		return
	}
	due, reason := sd.Due()
	// The claim skips locked rows, so a step that is movable by the rule was
	// held by a concurrent sweep or the orchestrator at that moment.
	if due || (force && sd.MovableButForTime) {
		reason = "step is locked by another writer right now; try again"
	}
	writeJSON(w, http.StatusConflict, notMovedError{Error: "step not moved: " + reason, Code: codeConflict, Reason: reason})
}

// statusResponse is GET /v1/status.
type statusResponse struct {
	Ready         bool                         `json:"ready"`
	CountsByState map[statemachine.State]int64 `json:"counts_by_state"`
	DueNow        int64                        `json:"due_now"`
	Stranded      int64                        `json:"stranded"`
	NotYetDue     int64                        `json:"not_yet_due"`
	NextDueAt     *time.Time                   `json:"next_due_at"`
	// WakeMode is at_due (the timer gate, cron as the safety net) or cron.
	WakeMode string `json:"wake_mode,omitempty"`
	// Pause is the replicas' pause switch (with the queue).
	Pause *sweeper.Pause `json:"pause,omitempty"`
}

// getStatus answers GET /v1/status from the status cache; readiness is
// always current.
func (a *server) getStatus(w http.ResponseWriter, r *http.Request) {
	ready := a.Readiness.Ready()
	resp, err := a.status.get(r.Context(), a.computeStatus)
	if err != nil {
		var se *statusError
		if errors.As(err, &se) {
			a.internalError(w, r, se.what, se.err)
			return
		}
		a.internalError(w, r, "wait for the status counts", err)
		return
	}
	resp.Ready = ready
	if a.WakeMode != nil {
		resp.WakeMode = a.WakeMode()
	}
	if a.Queue != nil {
		// Read at every request, not cached: one row by primary key.
		p, err := a.Queue.PauseState(r.Context())
		if err != nil {
			a.internalError(w, r, "read the pause switch", err)
			return
		}
		resp.Pause = &p
	}
	writeJSON(w, http.StatusOK, resp)
}

// statusError names the count of a status computation that failed.
type statusError struct {
	what string
	err  error
}

func (e *statusError) Error() string { return e.what + ": " + e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }

func (a *server) computeStatus(ctx context.Context) (statusResponse, error) {
	counts, err := a.Status.StepCountsByState(ctx)
	if err != nil {
		return statusResponse{}, &statusError{"count steps by state", err}
	}
	due, err := a.Status.CountDue(ctx)
	if err != nil {
		return statusResponse{}, &statusError{"count due steps", err}
	}
	resp := statusResponse{
		CountsByState: counts, DueNow: due.Due, Stranded: due.Stranded, NotYetDue: due.NotYetDue,
	}
	if due.NotYetDue > 0 {
		next := due.NextDueAt.UTC()
		resp.NextDueAt = &next
	}
	return resp, nil
}

// statusCache serves one computed status for maxAge, and lets concurrent
// requests share one computation (single flight), so the open status
// endpoint costs at most one count per maxAge however often it is asked.
// Failures are shared by the requests waiting for them, never cached.
type statusCache struct {
	maxAge time.Duration
	mu     sync.Mutex
	val    statusResponse
	at     time.Time // when val was computed; zero: nothing cached
	flight *statusFlight
}

// statusFlight is one computation in progress; done closes when val and
// err are set.
type statusFlight struct {
	done chan struct{}
	val  statusResponse
	err  error
}

func (c *statusCache) get(ctx context.Context, compute func(context.Context) (statusResponse, error)) (statusResponse, error) {
	c.mu.Lock()
	if c.maxAge > 0 && !c.at.IsZero() && time.Since(c.at) < c.maxAge {
		v := c.val
		c.mu.Unlock()
		return v, nil
	}
	f := c.flight
	if f == nil {
		f = &statusFlight{done: make(chan struct{})}
		c.flight = f
		// Detached from the request that started it: its client going away
		// must not fail the others waiting.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), statusComputeTimeout)
		go func() {
			defer cancel()
			v, err := compute(cctx)
			c.mu.Lock()
			f.val, f.err = v, err
			if err == nil {
				c.val, c.at = v, time.Now()
			}
			c.flight = nil
			c.mu.Unlock()
			close(f.done)
		}()
	}
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		return statusResponse{}, ctx.Err()
	}
}

// authorized requires the bearer token on next when one is configured.
func (a *server) authorized(next http.HandlerFunc) http.Handler {
	if a.Token == "" {
		return next
	}
	want := sha256.Sum256([]byte(a.Token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, token, found := strings.Cut(r.Header.Get("Authorization"), " ")
		if !found || !strings.EqualFold(scheme, "Bearer") {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tasker-sweeper"`)
			writeError(w, http.StatusUnauthorized, codeUnauthorized, "missing bearer token: send Authorization: Bearer <token>")
			return
		}
		// Hashing first makes the comparison constant-time in the length too.
		got := sha256.Sum256([]byte(strings.TrimSpace(token)))
		if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tasker-sweeper", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, codeUnauthorized, "invalid bearer token")
			return
		}
		next(w, r)
	})
}

// internalError answers an unexpected failure: 503 when the database is
// known to be down (the caller can retry later), 500 otherwise, logged.
func (a *server) internalError(w http.ResponseWriter, r *http.Request, what string, err error, attrs ...slog.Attr) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		// The client went away; nobody reads the answer.
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, what+": request cancelled")
		return
	}
	if !a.Readiness.Ready() {
		a.Logger.LogAttrs(r.Context(), slog.LevelWarn, "admin API: database unreachable",
			append(attrs, slog.String("operation", what), slog.Any("error", err))...)
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, "database unreachable: "+what+": "+err.Error())
		return
	}
	a.Logger.LogAttrs(r.Context(), slog.LevelError, "admin API request failed",
		append(attrs, slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.String("operation", what), slog.Any("error", err))...)
	writeError(w, http.StatusInternalServerError, codeInternal, "internal error: "+what+": "+err.Error())
}

// stepParam parses the {uuid} path segment, answering 400 when it is not one.
func stepParam(w http.ResponseWriter, r *http.Request) (uuid.UUID, bool) {
	raw := r.PathValue("uuid")
	id, err := uuid.Parse(raw)
	if err != nil {
		writeError(w, http.StatusBadRequest, codeBadRequest, fmt.Sprintf("invalid step uuid %q", raw))
		return uuid.Nil, false
	}
	return id, true
}

// boolQuery parses an optional boolean query parameter (absent: false),
// answering 400 when it is not a boolean or the query does not parse (a
// malformed escape must not read as "absent").
func boolQuery(w http.ResponseWriter, r *http.Request, name string) (bool, bool) {
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		writeError(w, http.StatusBadRequest, codeBadRequest, "invalid query string: "+err.Error())
		return false, false
	}
	raw := query.Get(name)
	if raw == "" {
		return false, true
	}
	v, err := strconv.ParseBool(raw)
	if err != nil {
		writeError(w, http.StatusBadRequest, codeBadRequest, fmt.Sprintf("invalid %s %q: want true or false", name, raw))
		return false, false
	}
	return v, true
}

// decodeJSON strictly decodes one JSON object from the body into dst:
// unknown fields, trailing data and bodies over maxFailureBody are refused
// with a 400 or 413 answered here.
func decodeJSON(w http.ResponseWriter, r *http.Request, dst any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxFailureBody)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(dst)
	if err == nil {
		// Exactly one value: anything after it but whitespace is an error.
		var extra json.RawMessage
		if err = dec.Decode(&extra); errors.Is(err, io.EOF) {
			return true
		}
		if err == nil {
			err = errors.New("trailing data after the JSON object")
		}
	}
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		writeError(w, http.StatusRequestEntityTooLarge, codeTooLarge,
			fmt.Sprintf("request body larger than %d bytes", tooLarge.Limit))
		return false
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// The server's read timeout: the body came in too slowly. Give the
		// answer a moment to go out even if the write deadline is as near.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(time.Second))
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusRequestTimeout, codeTimeout, "request body not received within the read timeout")
		return false
	}
	writeError(w, http.StatusBadRequest, codeBadRequest, "invalid JSON body: "+describeDecodeError(err))
	return false
}

func describeDecodeError(err error) string {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return "empty body: want a JSON object"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected end of JSON"
	case errors.As(err, &syntax):
		return fmt.Sprintf("%s (at byte %d)", syntax.Error(), syntax.Offset)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fmt.Sprintf("want a JSON object, got %s", typ.Value)
		}
		return fmt.Sprintf("field %s: want %s, got %s", typ.Field, jsonKind(typ.Type.Kind().String()), typ.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// jsonKind names a Go kind as the JSON type a client should send.
func jsonKind(kind string) string {
	switch {
	case kind == "bool":
		return "a boolean"
	case kind == "string":
		return "a string"
	case kind == "map" || kind == "struct":
		return "an object"
	case strings.HasPrefix(kind, "int") || strings.HasPrefix(kind, "uint") || strings.HasPrefix(kind, "float"):
		return "a number"
	}
	return kind
}

// errorBody is every error answer of the admin API.
type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, errorBody{Error: msg, Code: code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only our own response types get here; none can fail to marshal.
		status = http.StatusInternalServerError
		body = []byte(`{"error":"internal error: encode response","code":"internal"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// statusRecorder remembers the status a handler wrote, for the request log
// and so a panic after the header went out is not answered twice.
type statusRecorder struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
	// keep is how much of the body to keep in body (the audit log's).
	keep int
	body []byte
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wroteHeader {
		s.code, s.wroteHeader = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if !s.wroteHeader {
		s.WriteHeader(http.StatusOK)
	}
	if room := s.keep - len(s.body); room > 0 {
		s.body = append(s.body, b[:min(room, len(b))]...)
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) status() int {
	if !s.wroteHeader {
		return http.StatusOK
	}
	return s.code
}

// Unwrap lets http.ResponseController reach the real writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// headerProbe captures the mux's answer to an unrouted request (status and
// headers) and discards its plain-text body.
type headerProbe struct {
	header http.Header
	code   int
}

func (p *headerProbe) Header() http.Header { return p.header }

func (p *headerProbe) WriteHeader(code int) {
	if p.code == 0 {
		p.code = code
	}
}

func (p *headerProbe) Write(b []byte) (int, error) {
	if p.code == 0 {
		p.code = http.StatusOK
	}
	return len(b), nil
}
