package admin

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
)

// The audit log: every state-changing request (the POST endpoints) is logged
// at info with what was asked and what came of it, whoever asked; the other
// requests are logged at debug.

// auditBodyLimit is how much of a state-changing request's answer is kept
// to say what came of it: the answers are small JSON objects.
const auditBodyLimit = 8 << 10

// auditActions names the state-changing endpoints.
var auditActions = map[string]string{
	"POST /v1/sweeps":                "sweep",
	"POST /v1/steps/{uuid}/failures": "failure",
	"POST /v1/steps/{uuid}/retry":    "retry",
	"POST /v1/steps/{uuid}/resolve":  "resolve",
	"POST /v1/steps/{uuid}/cancel":   "cancel",
	"POST /v1/steps/{uuid}/grant":    "grant",
	"POST /v1/pause":                 "pause",
	"POST /v1/resume":                "resume",
}

// audit collects what a handler adds to its request's audit line.
type audit struct {
	mu    sync.Mutex
	attrs []slog.Attr
}

type auditKey struct{}

// withAudit gives r an audit record its handler can add to.
func withAudit(r *http.Request) (*http.Request, *audit) {
	au := &audit{}
	return r.WithContext(context.WithValue(r.Context(), auditKey{}, au)), au
}

// auditNote adds attrs to r's audit line (options the handler parsed from
// the body); a request without one ignores them.
func auditNote(r *http.Request, attrs ...slog.Attr) {
	au, _ := r.Context().Value(auditKey{}).(*audit)
	if au == nil {
		return
	}
	au.mu.Lock()
	defer au.mu.Unlock()
	au.attrs = append(au.attrs, attrs...)
}

// lineAttrs is the audit line of r, answered with status and body: the
// action, the step, the options, the outcome and who asked. ok is false
// for a request no state-changing endpoint took (an unknown path).
func (au *audit) lineAttrs(r *http.Request, status int, body []byte) (attrs []slog.Attr, ok bool) {
	action := auditActions[r.Pattern]
	if action == "" {
		return nil, false
	}
	attrs = []slog.Attr{slog.String("action", action)}
	if step := r.PathValue("uuid"); step != "" {
		attrs = append(attrs, slog.String("step_uuid", step))
	}
	q := r.URL.Query()
	for _, opt := range []string{"dry_run", "force"} {
		if q.Has(opt) {
			attrs = append(attrs, slog.String(opt, q.Get(opt)))
		}
	}
	au.mu.Lock()
	attrs = append(attrs, au.attrs...)
	au.mu.Unlock()
	attrs = append(attrs, outcomeAttrs(action, status, body)...)
	return append(attrs, slog.String("remote_addr", r.RemoteAddr)), true
}

// outcomeAttrs says what came of a state-changing request, from its answer.
func outcomeAttrs(action string, status int, body []byte) []slog.Attr {
	var ans map[string]any
	_ = json.Unmarshal(body, &ans) // an answer cut at the limit just says less
	pick := func(keys ...string) []slog.Attr {
		var out []slog.Attr
		for _, k := range keys {
			if v, ok := ans[k]; ok && v != nil {
				out = append(out, slog.Any(k, v))
			}
		}
		return out
	}
	if status >= 400 {
		outcome := "refused"
		if status >= 500 {
			outcome = "failed"
		}
		out := []slog.Attr{slog.String("outcome", outcome)}
		out = append(out, pick("code", "error", "reason")...)
		if sum, ok := ans["summary"].(map[string]any); ok { // a failed sweep: what it did first
			if id, ok := sum["sweep_id"].(string); ok {
				out = append(out, slog.String("sweep_id", id))
			}
			out = append(out, slog.Any("transitioned", sum["transitioned"]))
		}
		return out
	}
	switch action {
	case "sweep":
		outcome := "swept"
		if dry, _ := ans["dry_run"].(bool); dry {
			outcome = "dry_run"
		}
		return append([]slog.Attr{slog.String("outcome", outcome)},
			pick("sweep_id", "transitioned", "stranded", "lost_races", "skipped_locked", "interrupted")...)
	case "failure":
		outcome, _ := ans["action"].(string) // the handler's decision
		return append([]slog.Attr{slog.String("outcome", outcome)},
			pick("final_state", "backoff_applied_seconds", "next_retry_at", "attempts")...)
	case "retry":
		return append([]slog.Attr{slog.String("outcome", "moved")}, pick("forced", "due_at", "moved_at")...)
	case "resolve", "cancel", "grant":
		return append([]slog.Attr{slog.String("outcome", "changed")}, pick("from", "to", "detail")...)
	case "pause", "resume":
		outcome := "unchanged"
		if changed, _ := ans["changed"].(bool); changed {
			outcome = action + "d"
		}
		return append([]slog.Attr{slog.String("outcome", outcome)}, pick("paused", "by", "since")...)
	}
	return []slog.Attr{slog.String("outcome", "ok")}
}
