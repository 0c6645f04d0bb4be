package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// QueueOperator lists and changes the retry queue (*sweeper.Operator).
type QueueOperator interface {
	List(ctx context.Context, q sweeper.StepQuery) (sweeper.StepPage, error)
	Show(ctx context.Context, step uuid.UUID) (sweeper.StepDetail, error)
	Apply(ctx context.Context, r sweeper.Request) (sweeper.Change, error)
	Pause(ctx context.Context, by, reason string) (sweeper.Pause, bool, error)
	Resume(ctx context.Context, by string) (sweeper.Pause, bool, error)
	PauseState(ctx context.Context) (sweeper.Pause, error)
}

// auditedMover is a StepMover that also records who asked and why
// (*sweeper.Sweeper).
type auditedMover interface {
	MoveStepAudited(ctx context.Context, step uuid.UUID, force bool, prov map[string]any) (sweeper.Moved, error)
}

// routeQueue adds the queue's endpoints (Deps.Queue set).
func (a *server) routeQueue() {
	a.mux.HandleFunc("GET /v1/steps", a.listSteps)
	a.mux.Handle("POST /v1/steps/{uuid}/resolve", a.authorized(a.changeStep(sweeper.OpResolve)))
	a.mux.Handle("POST /v1/steps/{uuid}/cancel", a.authorized(a.changeStep(sweeper.OpCancel)))
	a.mux.Handle("POST /v1/steps/{uuid}/grant", a.authorized(a.changeStep(sweeper.OpGrant)))
	a.mux.Handle("POST /v1/pause", a.authorized(a.setPause(true)))
	a.mux.Handle("POST /v1/resume", a.authorized(a.setPause(false)))
}

// listParams are GET /v1/steps's query parameters.
var listParams = map[string]bool{"state": true, "task": true, "name": true, "older_than": true, "limit": true, "cursor": true}

func (a *server) listSteps(w http.ResponseWriter, r *http.Request) {
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		writeError(w, http.StatusBadRequest, codeBadRequest, "invalid query string: "+err.Error())
		return
	}
	for k := range query {
		if !listParams[k] {
			writeError(w, http.StatusBadRequest, codeBadRequest,
				fmt.Sprintf("unknown parameter %q (want state, task, name, older_than, limit, cursor)", k))
			return
		}
	}
	q := sweeper.StepQuery{State: sweeper.ListState(query.Get("state")), Name: query.Get("name"), Cursor: query.Get("cursor")}
	if raw := query.Get("task"); raw != "" {
		id, err := uuid.Parse(raw)
		if err != nil {
			writeError(w, http.StatusBadRequest, codeBadRequest, fmt.Sprintf("invalid task %q: not a uuid", raw))
			return
		}
		q.Task = &id
	}
	if raw := query.Get("older_than"); raw != "" {
		d, err := time.ParseDuration(raw)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, codeBadRequest, fmt.Sprintf("invalid older_than %q: want a duration such as 10m or 2h", raw))
			return
		}
		q.OlderThan = d
	}
	if raw := query.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > sweeper.MaxListLimit {
			writeError(w, http.StatusBadRequest, codeBadRequest,
				fmt.Sprintf("invalid limit %q: want a number from 1 to %d", raw, sweeper.MaxListLimit))
			return
		}
		q.Limit = n
	}
	page, err := a.Queue.List(r.Context(), q)
	var in *sweeper.InputError
	switch {
	case errors.As(err, &in):
		writeError(w, http.StatusBadRequest, codeBadRequest, "invalid "+in.Error())
	case err != nil:
		a.internalError(w, r, "list steps", err)
	default:
		writeJSON(w, http.StatusOK, page)
	}
}

// stepDetailResponse is GET /v1/steps/{uuid} with the queue: the due
// status of stepStatusResponse plus the listing's fields, the last error
// and the latest transitions.
type stepDetailResponse struct {
	stepStatusResponse
	TaskUUID  uuid.UUID              `json:"task_uuid"`
	Name      string                 `json:"name"`
	Namespace string                 `json:"namespace"`
	TaskName  string                 `json:"task_name"`
	WhyNotDue string                 `json:"why_not_due"`
	ParkedBy  string                 `json:"parked_by"`
	LastError *sweeper.LastError     `json:"last_error"`
	EnteredAt *time.Time             `json:"entered_at"`
	History   []sweeper.HistoryEntry `json:"history"`
}

// showStep answers GET /v1/steps/{uuid} from the queue's detail.
func (a *server) showStep(w http.ResponseWriter, r *http.Request, step uuid.UUID, status stepStatusResponse) {
	d, err := a.Queue.Show(r.Context(), step)
	if errors.Is(err, statemachine.ErrStepNotFound) {
		writeError(w, http.StatusNotFound, codeNotFound, "step "+step.String()+" not found")
		return
	}
	if err != nil {
		a.internalError(w, r, "read step", err, slog.String("step_uuid", step.String()))
		return
	}
	writeJSON(w, http.StatusOK, stepDetailResponse{
		stepStatusResponse: status, TaskUUID: d.TaskUUID, Name: d.Name, Namespace: d.Namespace, TaskName: d.TaskName,
		WhyNotDue: d.WhyNotDue, ParkedBy: d.ParkedBy, LastError: d.LastError, EnteredAt: d.EnteredAt, History: d.History,
	})
}

// changeRequest is the body of POST …/resolve, …/cancel and …/grant.
type changeRequest struct {
	Reason   string `json:"reason"`
	Attempts *int   `json:"attempts"`
}

// changeRefused is a change that was not made: the error and the change.
type changeRefused struct {
	Error string `json:"error"`
	Code  string `json:"code"`
	sweeper.Change
}

// auditOf is who asks for a change over the API: the client's address
// and, when one is configured, the token's name.
func (a *server) auditOf(r *http.Request, reason string) sweeper.Audit {
	actor := "api " + r.RemoteAddr
	if a.TokenName != "" {
		actor = a.TokenName + " (api " + r.RemoteAddr + ")"
	}
	return sweeper.Audit{Actor: actor, Reason: reason, Via: "api", RemoteAddr: r.RemoteAddr, TokenName: a.TokenName}
}

func (a *server) changeStep(op sweeper.Operation) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		step, ok := stepParam(w, r)
		if !ok {
			return
		}
		var req changeRequest
		if !decodeJSON(w, r, &req) {
			return
		}
		if op != sweeper.OpGrant && req.Attempts != nil {
			writeError(w, http.StatusBadRequest, codeBadRequest, "invalid JSON body: attempts is for grant only")
			return
		}
		auditNote(r, slog.String("reason", req.Reason))
		sr := sweeper.Request{Step: step, Op: op, Audit: a.auditOf(r, req.Reason)}
		if req.Attempts != nil {
			sr.Attempts = *req.Attempts
			auditNote(r, slog.Int("attempts", sr.Attempts))
		} else if op == sweeper.OpGrant {
			writeError(w, http.StatusBadRequest, codeBadRequest, "invalid JSON body: attempts is required (how many more attempts)")
			return
		}
		ch, err := a.Queue.Apply(r.Context(), sr)
		a.answerChange(w, r, ch, err)
	}
}

// answerChange maps an operation's outcome to the API's answers.
func (a *server) answerChange(w http.ResponseWriter, r *http.Request, ch sweeper.Change, err error) {
	var in *sweeper.InputError
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, ch)
	case errors.As(err, &in):
		writeError(w, http.StatusBadRequest, codeBadRequest, "invalid "+in.Error())
	case errors.Is(err, statemachine.ErrStepNotFound):
		writeError(w, http.StatusNotFound, codeNotFound, "step "+ch.StepUUID.String()+" not found")
	case sweeper.StepScoped(err):
		writeJSON(w, http.StatusConflict, changeRefused{Error: ch.Detail, Code: codeConflict, Change: ch})
	default:
		a.internalError(w, r, string(ch.Operation)+" step", err, slog.String("step_uuid", ch.StepUUID.String()))
	}
}

// pauseRequest is the optional body of POST /v1/pause.
type pauseRequest struct {
	Reason string `json:"reason"`
}

// pauseResponse is POST /v1/pause's and /v1/resume's answer.
type pauseResponse struct {
	sweeper.Pause
	Changed bool `json:"changed"`
}

func (a *server) setPause(pause bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req pauseRequest
		if pause && r.ContentLength > 0 && !decodeJSON(w, r, &req) {
			return
		}
		au := a.auditOf(r, req.Reason)
		auditNote(r, slog.String("reason", req.Reason))
		var (
			p       sweeper.Pause
			changed bool
			err     error
		)
		if pause {
			p, changed, err = a.Queue.Pause(r.Context(), au.Actor, req.Reason)
		} else {
			p, changed, err = a.Queue.Resume(r.Context(), au.Actor)
		}
		switch {
		case errors.Is(err, sweeper.ErrNoSchedule):
			writeError(w, http.StatusConflict, codeConflict,
				"the pause switch is not installed: the sweeper-owned objects are missing or older than it (run 'sweeper migrate')")
		case err != nil:
			a.internalError(w, r, "set the pause switch", err)
		default:
			writeJSON(w, http.StatusOK, pauseResponse{Pause: p, Changed: changed})
		}
	}
}
