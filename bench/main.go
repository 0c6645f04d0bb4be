// Command bench is the retry sweeper's benchmark harness (`make bench`).
//
// It is test tooling, not part of the product. It starts its own durable
// PostgreSQL (fsync, synchronous_commit and full_page_writes on, data on
// disk under /var/tmp), seeds tasker-shaped template databases set-based,
// and runs every scenario several times, each run on a fresh clone of its
// template (CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY), reporting the
// median. The sweeper is driven as a black box through its binary (`sweeper
// once`, `sweeper run` and its admin API) and its public migration API, so
// the numbers are what an operator gets and stay valid while the sweep's
// internals change.
//
// The hand-written SQL in this package is deliberate and is the one
// exception to "no SQL outside db/queries": the seeding is test data, and
// the baselines (the set-based limit and the naive one-transaction-per-step
// approach) are by definition hand-written.
//
// Output: progress on stderr; on stdout a table of every scenario (medians
// and individual runs) and, as the last line, one JSON object of results.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the command-line flags.
type options struct {
	scenarios []string
	runs      int
	scale     float64
	jsonOnly  bool
	markdown  bool
	sweeper   string
	parent    string
	hold      bool
}

// allScenarios lists the scenarios in the order they run.
var allScenarios = []string{"backlog", "idle", "reconcile", "lag", "memory", "handler", "orchestrator"}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scenarios := fs.String("scenarios", strings.Join(allScenarios, ","), "comma-separated scenarios to run: "+strings.Join(allScenarios, ", "))
	fs.IntVar(&o.runs, "runs", 3, "runs per scenario, each on a fresh clone of its template; the median is reported")
	fs.Float64Var(&o.scale, "scale", 1.0, "multiplies every data size (and the fixed measurement windows, up to 1); 0.01 is a quick smoke run")
	fs.BoolVar(&o.jsonOnly, "json-only", false, "print only the JSON line on stdout (no table)")
	fs.BoolVar(&o.markdown, "markdown", false, "print the table as Markdown (for BENCHMARKS.md)")
	fs.StringVar(&o.sweeper, "sweeper", "", "path of a sweeper binary to benchmark (default: build ./cmd/sweeper)")
	fs.StringVar(&o.parent, "data-parent", "/var/tmp", "directory the PostgreSQL data directory is created in (must be on disk, not tmpfs)")
	fs.BoolVar(&o.hold, "hold", false, "after the scenarios, keep the server and its templates up until Ctrl-C (to investigate plans with psql)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.runs < 1 {
		return o, fmt.Errorf("-runs must be >= 1, got %d", o.runs)
	}
	if o.scale <= 0 || o.scale > 10 {
		return o, fmt.Errorf("-scale must be in (0, 10], got %g", o.scale)
	}
	known := map[string]bool{}
	for _, s := range allScenarios {
		known[s] = true
	}
	seen := map[string]bool{}
	for _, s := range strings.Split(*scenarios, ",") {
		s = strings.TrimSpace(s)
		if s == "" || seen[s] {
			continue
		}
		if !known[s] {
			return o, fmt.Errorf("-scenarios: unknown scenario %q (want %s)", s, strings.Join(allScenarios, ", "))
		}
		seen[s] = true
	}
	for _, s := range allScenarios { // keep the canonical order
		if seen[s] {
			o.scenarios = append(o.scenarios, s)
		}
	}
	if len(o.scenarios) == 0 {
		return o, errors.New("-scenarios: nothing to run")
	}
	return o, nil
}

// sizes are the data sizes and measurement windows of one invocation, at
// the chosen scale.
type sizes struct {
	backlogDue int

	idleWaiting  int
	idleComplete int
	idleError    int
	idleSweeps   int // consecutive sweeps per clone; the first is the cold one

	lagRate       float64 // steps becoming due per second
	lagWindow     time.Duration
	lagBackground int // not-yet-due waiting steps and complete steps around the lag steps
	lagDrain      time.Duration

	onTimeRate       float64       // steps parked per second (handler and orchestrator alternately)
	onTimeWindow     time.Duration // how long they keep arriving
	onTimeIdleWindow time.Duration // how long an idle replica's statements are counted

	memoryDue int

	handlerSteps    int
	handlerClients  int
	handlerDuration time.Duration

	orchestratorConns    int
	orchestratorDuration time.Duration

	naiveWorkers int
	naiveCap     time.Duration
	limitBatch   int

	// Time limits of one `sweeper once`, so that a pathologically slow
	// sweeper makes the benchmark report a time-out instead of running
	// for hours. A scenario whose sweep times out skips its remaining runs.
	firstSweepLimit time.Duration // the template's first sweep
	backlogLimit    time.Duration
	idleLimit       time.Duration
	memoryLimit     time.Duration
	// backlogOneRun: a backlog sweep slower than this (a third of the
	// limit's speed, or worse) clearly misses its target; it is reported
	// from that one run instead of three.
	backlogOneRun time.Duration
}

// fullSizes are the sizes the issue asks for (scale 1).
var fullSizes = sizes{
	backlogDue:           100_000,
	idleWaiting:          1_000_000,
	idleComplete:         1_000_000,
	idleError:            100_000,
	idleSweeps:           5,
	lagRate:              400,
	lagWindow:            5 * time.Second,
	lagBackground:        100_000,
	lagDrain:             10 * time.Second,
	onTimeRate:           200,
	onTimeWindow:         10 * time.Second,
	onTimeIdleWindow:     time.Minute,
	memoryDue:            1_000_000,
	handlerSteps:         40_000,
	handlerClients:       8,
	handlerDuration:      8 * time.Second,
	orchestratorConns:    8,
	orchestratorDuration: 8 * time.Second,
	naiveWorkers:         4,
	naiveCap:             5 * time.Second,
	limitBatch:           1000,
	firstSweepLimit:      120 * time.Second,
	backlogLimit:         90 * time.Second,
	idleLimit:            60 * time.Second,
	memoryLimit:          120 * time.Second,
	backlogOneRun:        30 * time.Second,
}

// scaled multiplies every data size by scale; measurement windows shrink
// with it (never grow), with floors so a smoke run still measures something.
func scaled(scale float64) sizes {
	s := fullSizes
	n := func(v int, floor int) int { return max(floor, int(float64(v)*scale+0.5)) }
	d := func(v, floor time.Duration) time.Duration {
		return max(floor, time.Duration(float64(v)*min(scale, 1)))
	}
	s.backlogDue = n(s.backlogDue, 100)
	s.idleWaiting = n(s.idleWaiting, 100)
	s.idleComplete = n(s.idleComplete, 100)
	s.idleError = n(s.idleError, 10)
	s.lagWindow = d(s.lagWindow, time.Second)
	s.lagBackground = n(s.lagBackground, 100)
	s.lagDrain = d(s.lagDrain, 6*time.Second)
	s.onTimeWindow = d(s.onTimeWindow, 3*time.Second)
	s.onTimeIdleWindow = d(s.onTimeIdleWindow, 15*time.Second)
	s.memoryDue = n(s.memoryDue, 100)
	s.handlerSteps = n(s.handlerSteps, 100)
	s.handlerDuration = d(s.handlerDuration, time.Second/2)
	s.orchestratorDuration = d(s.orchestratorDuration, time.Second/2)
	s.naiveCap = d(s.naiveCap, time.Second/2)
	return s
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parseOptions(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 2
	}
	b := &bench{opts: opts, sz: scaled(opts.scale), log: newProgress(stderr), res: newResults()}
	if err := b.execute(ctx); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "bench: interrupted; the server and its data were removed")
			return 130
		}
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	switch {
	case opts.jsonOnly:
	case opts.markdown:
		b.res.printMarkdown(stdout, b.machine)
	default:
		b.res.printTable(stdout, b.machine)
	}
	if err := b.res.printJSON(stdout); err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	return 0
}

// progress writes timestamped progress lines to stderr.
type progress struct {
	w     io.Writer
	start time.Time
}

func newProgress(w io.Writer) *progress { return &progress{w: w, start: time.Now()} }

func (p *progress) printf(format string, args ...any) {
	fmt.Fprintf(p.w, "[%6.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}
