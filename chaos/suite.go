package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"
)

// The two sweep paths. The schedule path is a database after `sweeper
// migrate`; the scan path has the tasker tables only.
const (
	pathSchedule = "schedule"
	pathScan     = "scan"
)

// sizes are the backlogs and hold times of one mode (full or -short).
type sizes struct {
	killBacklog                  int           // scenarios 1 and 2
	restartBacklog               int           // scenario 3
	outage                       time.Duration // scenario 3: how long the server stays down
	terminateBacklog             int           // scenario 4
	terminations                 int
	lockHold                     time.Duration // scenario 5
	lockDue, lockLate, lockBatch int
	daemons                      int // scenario 6
	streamFor                    time.Duration
	streamBacklog                int
	sigtermWait                  time.Duration // scenario 7: how long to wait for the exit before killing
	poisonDue                    int           // scenario 8
	scenarioTimeout              time.Duration
}

var fullSizes = sizes{
	killBacklog: 50_000, restartBacklog: 20_000, outage: 30 * time.Second,
	terminateBacklog: 20_000, terminations: 5,
	lockHold: time.Minute, lockDue: 5_000, lockLate: 500, lockBatch: 200,
	daemons: 6, streamFor: time.Minute, streamBacklog: 10_000,
	sigtermWait: 45 * time.Second, poisonDue: 2_000,
	scenarioTimeout: 6 * time.Minute,
}

var shortSizes = sizes{
	killBacklog: 4_000, restartBacklog: 3_000, outage: 3 * time.Second,
	terminateBacklog: 3_000, terminations: 3,
	lockHold: 8 * time.Second, lockDue: 1_500, lockLate: 100, lockBatch: 200,
	daemons: 4, streamFor: 20 * time.Second, streamBacklog: 2_000,
	sigtermWait: 4500 * time.Millisecond, poisonDue: 500,
	scenarioTimeout: 2 * time.Minute,
}

// scenario is one fault and what must hold after it.
type scenario struct {
	id   string // the number in the table; 3a..3c are variants of one fault
	name string
	// paths the scenario runs on (both unless meaningless).
	paths []string
	// shortPaths are the paths the -short subset runs it on (none: left out).
	shortPaths []string
	// ownServer runs it on a server of its own that it may stop and start.
	ownServer bool
	run       func(ctx context.Context, r *run) error
}

// run is one scenario on one path: its database, its processes, and what
// it found.
type run struct {
	s     *suite
	c     *cluster
	d     *database
	sz    sizes
	procs []*proc
	// locked are steps the scenario's own locker still holds: the checker
	// does not count them as left waiting.
	locked []uuid.UUID
	// problems are failures found along the way; the scenario goes on.
	problems []string
	notes    []string
}

func (r *run) problem(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

func (r *run) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func (r *run) logf(format string, args ...any) {
	if r.s.opts.verbose {
		fmt.Fprintf(os.Stderr, "    "+format+"\n", args...)
	}
}

// suite holds what every scenario shares.
type suite struct {
	opts    options
	sz      sizes
	sweeper string
	logDir  string
	main    *cluster
	own     *cluster // the server scenario 3 restarts, started on first use
	procN   int
	procs   []*proc
}

func newSuite(ctx context.Context, opts options) (*suite, error) {
	s := &suite{opts: opts, sz: fullSizes}
	if opts.short {
		s.sz = shortSizes
	}
	s.sweeper = opts.sweeper
	if s.sweeper == "" {
		bin, err := buildSweeper(ctx)
		if err != nil {
			return nil, err
		}
		s.sweeper = bin
	}
	logDir, err := os.MkdirTemp("", "sweeper-chaos-")
	if err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	s.logDir = logDir
	s.main, err = startCluster(ctx, logDir)
	if err != nil {
		_ = os.RemoveAll(logDir)
		return nil, err
	}
	return s, nil
}

// close kills every process still running and removes the servers.
func (s *suite) close() {
	for _, p := range s.procs {
		if p.running() {
			p.kill()
		}
	}
	if s.own != nil {
		s.own.close()
	}
	if s.main != nil {
		s.main.close()
	}
}

func (s *suite) runAll(ctx context.Context) []result {
	var results []result
	anyFailed := false
	for _, sc := range scenarios() {
		paths := sc.paths
		if s.opts.short {
			paths = sc.shortPaths
		}
		for _, path := range paths {
			label := sc.id + " " + sc.name
			if s.opts.run != nil && !s.opts.run.MatchString(label+" "+path) {
				continue
			}
			if ctx.Err() != nil {
				return results
			}
			fmt.Fprintf(os.Stderr, "chaos: %s (%s path) ...\n", label, path)
			res := s.runOne(ctx, sc, path)
			res.scenario = label
			verdict := "PASS"
			if !res.ok {
				verdict = "FAIL"
				anyFailed = true
			}
			fmt.Fprintf(os.Stderr, "chaos: %s (%s path): %s in %.1fs: %s\n", label, path, verdict, res.duration.Seconds(), res.detail)
			results = append(results, res)
		}
	}
	if anyFailed {
		fmt.Fprintf(os.Stderr, "chaos: sweeper logs of this run are in %s\n", s.logDir)
	} else {
		_ = os.RemoveAll(s.logDir)
	}
	return results
}

func (s *suite) runOne(ctx context.Context, sc scenario, path string) result {
	start := time.Now()
	res := result{path: path}
	rctx, cancel := context.WithTimeout(ctx, s.sz.scenarioTimeout)
	defer cancel()
	r := &run{s: s, c: s.main, sz: s.sz}
	if sc.ownServer {
		if s.own == nil {
			c, err := startCluster(rctx, s.logDir)
			if err != nil {
				res.detail = "start a server of its own: " + err.Error()
				res.duration = time.Since(start)
				return res
			}
			s.own = c
		}
		r.c = s.own
	}
	d, err := r.c.createDB(rctx, s, fmt.Sprintf("chaos_%s_%s", sc.id, path), path)
	if err != nil {
		res.detail = "set up: " + err.Error()
		res.duration = time.Since(start)
		return res
	}
	r.d = d
	defer r.c.dropDB(d)

	runErr := sc.run(rctx, r)
	// Whatever the scenario left running is stopped before the checker
	// looks, so nothing moves under it.
	for _, p := range r.procs {
		if p.running() {
			p.kill()
		}
	}
	switch {
	case ctx.Err() != nil:
		runErr = errAbandoned
	case errors.Is(runErr, context.DeadlineExceeded) || rctx.Err() != nil:
		runErr = fmt.Errorf("scenario still running after %s: %w", s.sz.scenarioTimeout, runErr)
	}
	var detail []string
	if runErr != nil {
		detail = append(detail, runErr.Error())
	}
	if errors.Is(runErr, errAbandoned) {
		res.detail = runErr.Error()
		res.duration = time.Since(start)
		return res
	}
	detail = append(detail, r.problems...)
	detail = append(detail, check(ctx, d.pool, r.locked)...)
	res.ok = len(detail) == 0
	if res.ok {
		detail = r.notes
	}
	res.detail = strings.Join(detail, "; ")
	res.duration = time.Since(start)
	return res
}

// daemon starts `sweeper run` for this run (killed when the run ends).
func (r *run) daemon(ctx context.Context, name string, extra ...string) (*proc, error) {
	p, err := r.s.startDaemon(ctx, r.d, name, extra...)
	if err != nil {
		return nil, err
	}
	r.procs = append(r.procs, p)
	return p, nil
}

// start starts a sweeper command for this run (killed when the run ends).
func (r *run) start(name string, args ...string) (*proc, error) {
	p, err := r.s.startProc(r.d, name, args...)
	if err != nil {
		return nil, err
	}
	r.procs = append(r.procs, p)
	return p, nil
}

// once runs `sweeper once --json` to the end and checks that it exited 0
// with no failed batch; it returns the summary.
func (r *run) once(ctx context.Context, extra ...string) (onceSummary, cmdResult, error) {
	args := append([]string{"once", "--json", "--log-level", "warn"}, extra...)
	res := r.s.sweeperCmd(ctx, r.d, 5*time.Minute, args...)
	if res.err != nil || res.code != 0 {
		return onceSummary{}, res, fmt.Errorf("sweeper once: %s", res.describe())
	}
	sum, err := parseSummary(res.stdout)
	if err != nil {
		return sum, res, fmt.Errorf("sweeper once: %w", err)
	}
	if sum.FailedBatches > 0 {
		return sum, res, fmt.Errorf("sweeper once: %d failed batch(es): %s", sum.FailedBatches, lastErrorLine(res.stderr))
	}
	return sum, res, nil
}

// stopDaemons sends SIGTERM to each daemon and records any that does not
// exit 0.
func (r *run) stopDaemons(daemons ...*proc) {
	for _, p := range daemons {
		if !p.running() {
			r.problem("%s had exited before the end (code %d): %s", p.name, p.exitCode(), p.lastError())
			continue
		}
		if err := p.stop(); err != nil {
			r.problem("%v", err)
		}
	}
}
