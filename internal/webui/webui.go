// Package webui is the daemon's web page, GET /ui on the admin listener:
// the counts per state, the waiting and stranded steps, pause and resume,
// and the recent sweeps with a lag chart. It is rendered on the server with
// html/template from the admin API's own JSON answers (GET /v1/status,
// /v1/steps, /v1/sweeps/recent, asked in-process), so the page and the API
// show the same numbers; its buttons call the API's POST endpoints from
// the browser. Its script and style sheet are embedded: no CDN, no build
// step, nothing fetched from elsewhere.
package webui

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"time"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// Page defaults.
const (
	// DefaultRefresh is how often the page reloads its data.
	DefaultRefresh = 5 * time.Second
	// listLimit is how many steps each list shows.
	listLimit = 50
	// sweepRows is how many of the recent sweeps the table shows (the
	// chart shows every kept one).
	sweepRows = 10
)

//go:embed page.html.tmpl
var pageSource string

//go:embed static
var static embed.FS

// Options configure the page.
type Options struct {
	// TokenRequired says the admin API's POST endpoints need a bearer
	// token: the page then asks for one (kept in the browser's session
	// storage) and sends it with every action.
	TokenRequired bool
	// Refresh is how often the page reloads its data; zero means
	// DefaultRefresh.
	Refresh time.Duration
	// Logger gets the failures of the page's own reads; nil discards them.
	Logger *slog.Logger
	// now is the page's clock (tests pin it).
	now func() time.Time
}

// Page serves the web page.
type Page struct {
	opts Options
	tmpl *template.Template
}

// New builds the page.
func New(opts Options) *Page {
	if opts.Refresh <= 0 {
		opts.Refresh = DefaultRefresh
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	return &Page{opts: opts, tmpl: template.Must(template.New("page").Funcs(funcs).Parse(pageSource))}
}

// Routes returns the page's routes (GET only), reading its data from api,
// the admin API's handler; it fits admin.Deps.Page. Every other path under
// /ui is the admin API's own JSON 404.
func (p *Page) Routes(api http.Handler) map[string]http.Handler {
	routes := map[string]http.Handler{
		"GET /ui": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.serve(w, r, api) }),
	}
	files, _ := fs.Sub(static, "static")
	for _, f := range []struct{ name, contentType string }{
		{"app.js", "text/javascript; charset=utf-8"},
		{"app.css", "text/css; charset=utf-8"},
	} {
		body, err := fs.ReadFile(files, f.name)
		if err != nil {
			panic("webui: embedded " + f.name + " missing: " + err.Error())
		}
		routes["GET /ui/"+f.name] = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			securityHeaders(w.Header())
			w.Header().Set("Content-Type", f.contentType)
			w.Header().Set("Cache-Control", "no-cache")
			_, _ = w.Write(body)
		})
	}
	return routes
}

// securityHeaders: nothing but the page's own files may load or run, and
// the page may not be framed.
func securityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
}

func (p *Page) serve(w http.ResponseWriter, r *http.Request, api http.Handler) {
	now := p.opts.now().UTC()
	data := pageData{
		Now: now, RefreshMS: p.opts.Refresh.Milliseconds(), RefreshSeconds: max(int64(p.opts.Refresh.Seconds()), 1),
		TokenRequired: p.opts.TokenRequired,
	}
	var st status
	if err := p.get(r.Context(), api, "/v1/status", nil, &st); err != nil {
		data.StatusErr = err.Error()
	} else {
		data.Status = &st
		data.States = stateCounts(st.CountsByState)
	}
	data.Waiting = p.list(r.Context(), api, "waiting_for_retry", now)
	data.Stranded = p.list(r.Context(), api, "stranded", now)
	var sw sweeps
	if err := p.get(r.Context(), api, "/v1/sweeps/recent", nil, &sw); err != nil {
		data.SweepsErr = err.Error()
	} else {
		data.Sweeps = sw.Sweeps[:min(len(sw.Sweeps), sweepRows)]
		data.Chart = lagChart(sw.Sweeps)
	}

	var buf bytes.Buffer
	if err := p.tmpl.Execute(&buf, data); err != nil {
		p.opts.Logger.LogAttrs(r.Context(), slog.LevelError, "web page: render failed", slog.Any("error", err))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte(`{"error":"internal error: render the web page","code":"internal"}` + "\n"))
		return
	}
	securityHeaders(w.Header())
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}

// list reads one state's steps for a list on the page.
func (p *Page) list(ctx context.Context, api http.Handler, state string, now time.Time) stepList {
	var resp stepsResponse
	q := url.Values{"state": {state}, "limit": {strconv.Itoa(listLimit)}}
	if err := p.get(ctx, api, "/v1/steps", q, &resp); err != nil {
		return stepList{Err: err.Error()}
	}
	l := stepList{More: resp.NextCursor != ""}
	for _, it := range resp.Steps {
		l.Items = append(l.Items, stepRow{
			step: it, DueIn: dueIn(it, now), Counting: !it.Due && it.DueAt != nil && it.DueAt.After(now),
		})
	}
	return l
}

// get asks the admin API in-process and decodes its JSON answer; an error
// answer becomes an error carrying the API's own message.
func (p *Page) get(ctx context.Context, api http.Handler, path string, query url.Values, dst any) error {
	u := path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.RemoteAddr = "web page"
	rec := &recorder{header: http.Header{}}
	api.ServeHTTP(rec, req)
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	if rec.code != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(rec.body.Bytes(), &e) == nil && e.Error != "" {
			return fmt.Errorf("%s: %s", path, e.Error)
		}
		return fmt.Errorf("%s: HTTP %d", path, rec.code)
	}
	if err := json.Unmarshal(rec.body.Bytes(), dst); err != nil {
		p.opts.Logger.LogAttrs(ctx, slog.LevelError, "web page: cannot decode the admin API's answer",
			slog.String("path", path), slog.Any("error", err))
		return fmt.Errorf("%s: undecodable answer: %w", path, err)
	}
	return nil
}

// recorder is the response writer of an in-process API call.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.body.Write(b)
}

// The admin API's answers, as far as the page reads them.
type (
	status struct {
		Ready         bool             `json:"ready"`
		CountsByState map[string]int64 `json:"counts_by_state"`
		DueNow        int64            `json:"due_now"`
		Stranded      int64            `json:"stranded"`
		NotYetDue     int64            `json:"not_yet_due"`
		NextDueAt     *time.Time       `json:"next_due_at"`
		WakeMode      string           `json:"wake_mode"`
		Pause         *pause           `json:"pause"`
	}
	pause struct {
		Paused bool       `json:"paused"`
		By     string     `json:"by"`
		Reason string     `json:"reason"`
		Since  *time.Time `json:"since"`
	}
	stepsResponse struct {
		Steps      []step `json:"steps"`
		NextCursor string `json:"next_cursor"`
	}
	step struct {
		StepUUID    string     `json:"step_uuid"`
		TaskUUID    string     `json:"task_uuid"`
		Name        string     `json:"name"`
		Namespace   string     `json:"namespace"`
		TaskName    string     `json:"task_name"`
		State       string     `json:"state"`
		Attempts    *int64     `json:"attempts"`
		MaxAttempts *int64     `json:"max_attempts"`
		Retryable   *bool      `json:"retryable"`
		DueAt       *time.Time `json:"due_at"`
		Due         bool       `json:"due"`
		WhyNotDue   string     `json:"why_not_due"`
		ParkedBy    string     `json:"parked_by"`
		LastError   *lastError `json:"last_error"`
		EnteredAt   *time.Time `json:"entered_at"`
	}
	lastError struct {
		Category string `json:"category"`
		Code     string `json:"code"`
		Message  string `json:"message"`
	}
	sweeps struct {
		Sweeps []sweep `json:"sweeps"`
	}
	sweep struct {
		SweepID    string    `json:"sweep_id"`
		Trigger    string    `json:"trigger"`
		Path       string    `json:"path"`
		StartedAt  time.Time `json:"started_at"`
		Moved      int       `json:"moved"`
		LostRaces  int       `json:"lost_races"`
		DurationMS float64   `json:"duration_ms"`
		MaxLagMS   float64   `json:"max_lag_ms"`
		Outcome    string    `json:"outcome"`
		Error      string    `json:"error"`
	}
)

// pageData is what the template renders.
type pageData struct {
	Now            time.Time
	RefreshMS      int64
	RefreshSeconds int64
	TokenRequired  bool
	Status         *status
	StatusErr      string
	States         []stateCount
	Waiting        stepList
	Stranded       stepList
	Sweeps         []sweep
	SweepsErr      string
	Chart          chart
}

type stateCount struct {
	State string
	Count int64
}

// stateCounts lists every known state in the state machine's order (zeros
// too), then any state the database holds that this binary does not know.
func stateCounts(m map[string]int64) []stateCount {
	var out []stateCount
	seen := map[string]bool{}
	for _, s := range statemachine.States() {
		out = append(out, stateCount{State: string(s), Count: m[string(s)]})
		seen[string(s)] = true
	}
	var extra []string
	for s := range m {
		if !seen[s] {
			extra = append(extra, s)
		}
	}
	sort.Strings(extra)
	for _, s := range extra {
		out = append(out, stateCount{State: s, Count: m[s]})
	}
	return out
}

type stepList struct {
	Items []stepRow
	// More: the API had more than the page shows.
	More bool
	Err  string
}

type stepRow struct {
	step
	// DueIn is the countdown as rendered; Counting says the script keeps
	// it running.
	DueIn    string
	Counting bool
}

// dueIn is a waiting step's countdown: "due now", "in 4m05s", or why it
// will not come due by itself.
func dueIn(s step, now time.Time) string {
	switch {
	case s.Due:
		return "due now"
	case s.DueAt == nil:
		return "–"
	case s.DueAt.After(now):
		return "in " + countdown(s.DueAt.Sub(now))
	}
	return "not due"
}

// countdown formats a positive duration as 1h02m03s, 4m05s or 12s (the
// script's countdown() writes the same).
func countdown(d time.Duration) string {
	secs := int64((d + time.Second - 1) / time.Second)
	h, m, s := secs/3600, secs/60%60, secs%60
	switch {
	case h > 0:
		return fmt.Sprintf("%dh%02dm%02ds", h, m, s)
	case m > 0:
		return fmt.Sprintf("%dm%02ds", m, s)
	}
	return fmt.Sprintf("%ds", s)
}

// chart is the lag chart: one bar per kept sweep, oldest on the left.
type chart struct {
	Width, Height int
	Bars          []bar
	// Max is the tallest bar's lag, formatted; empty when no sweep moved
	// anything.
	Max string
}

type bar struct {
	X, Y, W, H int
	Class      string
	Title      string
}

// Chart geometry, in SVG user units.
const (
	chartWidth  = 600
	chartHeight = 120
	chartTop    = 16 // room for the label of the scale
)

func lagChart(newestFirst []sweep) chart {
	c := chart{Width: chartWidth, Height: chartHeight}
	n := len(newestFirst)
	if n == 0 {
		return c
	}
	var top float64
	for _, s := range newestFirst {
		top = max(top, s.MaxLagMS)
	}
	if top > 0 {
		c.Max = formatMS(top)
	}
	slot := chartWidth / max(n, chartSlots)
	for i := range n {
		s := newestFirst[n-1-i]
		h := 1 // a sweep that moved nothing still shows
		if top > 0 {
			h = max(h, int(s.MaxLagMS/top*float64(chartHeight-chartTop)))
		}
		class := "bar"
		if s.Outcome != "success" {
			class = "bar bar-" + s.Outcome
		}
		c.Bars = append(c.Bars, bar{
			X: i * slot, Y: chartHeight - h, W: max(slot-1, 1), H: h, Class: class,
			Title: fmt.Sprintf("%s %s: moved %d, lag %s, took %s (%s)",
				s.StartedAt.UTC().Format(time.TimeOnly), s.Trigger, s.Moved, formatMS(s.MaxLagMS),
				formatMS(s.DurationMS), s.Outcome),
		})
	}
	return c
}

// chartSlots is the fewest bar slots the chart divides its width into, so
// a few sweeps do not make a few wide bars.
const chartSlots = 50

// formatMS formats milliseconds for people: 850 ms, 4.2 s, 3m12s.
func formatMS(ms float64) string {
	switch {
	case ms < 1000:
		return strconv.FormatFloat(ms, 'f', 1, 64) + " ms"
	case ms < 60_000:
		return strconv.FormatFloat(ms/1000, 'f', 1, 64) + " s"
	}
	return countdown(time.Duration(ms * float64(time.Millisecond)))
}

var funcs = template.FuncMap{
	"ms":      formatMS,
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) },
	"clock":   func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
	"num": func(p *int64) string {
		if p == nil {
			return "–"
		}
		return strconv.FormatInt(*p, 10)
	},
}
