package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// onceSummary is the part of `sweeper once --json` the benchmark reads.
type onceSummary struct {
	SweepID       string  `json:"sweep_id"`
	Transitioned  int     `json:"transitioned"`
	Stranded      int64   `json:"stranded"`
	LostRaces     int     `json:"lost_races"`
	Batches       int     `json:"batches"`
	FailedBatches int     `json:"failed_batches"`
	DurationMS    float64 `json:"duration_ms"`
	// Path and Adopted are reported by sweepers that keep a schedule
	// (empty and 0 otherwise).
	Path    string `json:"path"`
	Adopted int    `json:"adopted"`
}

func (s onceSummary) describe() string {
	d := fmt.Sprintf("moved %d, stranded %d, batches %d", s.Transitioned, s.Stranded, s.Batches)
	if s.Path != "" {
		d += fmt.Sprintf(", path %s, adopted %d", s.Path, s.Adopted)
	}
	return d
}

// onceResult is one `sweeper once` process.
type onceResult struct {
	summary onceSummary
	wall    time.Duration
	// maxRSSKiB is the process's peak resident set size (see peakRSS).
	maxRSSKiB int64
}

// sweeperEnv is the environment of a sweeper process: the harness's own,
// minus any SWEEPER_* or DATABASE_URL setting that would change what is
// measured, plus the database.
func sweeperEnv(dbURL string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "SWEEPER_") || strings.HasPrefix(kv, "DATABASE_URL=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "DATABASE_URL="+dbURL)
}

// errTimedOut marks a sweeper process the benchmark stopped at its time
// limit.
var errTimedOut = errors.New("timed out")

// errSweeperFailed marks a `sweeper once` that failed by itself: a non-zero
// exit, failed batches or an unreadable summary.
var errSweeperFailed = errors.New("sweeper failed")

// sweeperTrouble says whether err is the sweeper's failure (a time-out or
// errSweeperFailed), which a scenario records and reports, rather than the
// harness's, which ends the benchmark.
func sweeperTrouble(err error) bool {
	return errors.Is(err, errTimedOut) || errors.Is(err, errSweeperFailed)
}

// runOnce runs `sweeper once --json --log-level warn` against database and
// returns its summary, wall time and peak RSS. A process still running
// after limit gets SIGTERM (the sweeper cancels its statements and stops),
// then SIGKILL 5 s later; the error then wraps errTimedOut, and the result
// still carries the wall time and the peak RSS so far.
func (b *bench) runOnce(ctx context.Context, database string, limit time.Duration) (onceResult, error) {
	var res onceResult
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(cctx, b.sweeper, "once", "--json", "--log-level", "warn")
	cmd.Env = sweeperEnv(b.url(database))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start sweeper once: %w", err)
	}
	stopPolling := make(chan struct{})
	peak := make(chan int64, 1)
	go func() { peak <- peakRSS(cmd.Process.Pid, stopPolling) }()
	err := cmd.Wait()
	res.wall = time.Since(start)
	close(stopPolling)
	res.maxRSSKiB = <-peak
	if ctx.Err() == nil && cctx.Err() != nil {
		// Statements the sweeper left running would hold locks and CPU.
		b.terminateBackends(database)
		return res, fmt.Errorf("sweeper once on %s: %w after %s", database, errTimedOut, limit)
	}
	if err != nil {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		return res, fmt.Errorf("%w: sweeper once: %w: %s", errSweeperFailed, err, lastLine(stderr.String()))
	}
	if err := json.Unmarshal([]byte(lastLine(stdout.String())), &res.summary); err != nil {
		return res, fmt.Errorf("%w: unreadable summary from sweeper once %q: %w", errSweeperFailed, stdout.String(), err)
	}
	if res.summary.FailedBatches > 0 {
		return res, fmt.Errorf("%w: sweeper once: %d failed batch(es): %s", errSweeperFailed, res.summary.FailedBatches, lastLine(stderr.String()))
	}
	return res, nil
}

// peakRSS samples a running process's VmHWM (the high-water mark of its
// resident set, in KiB) every 10 ms until stop closes, and returns the last
// value seen. VmHWM belongs to the memory the process has had since its
// exec, so it is the sweeper's own. The child's rusage (ru_maxrss) is not:
// Go starts children with vfork semantics (CLONE_VM), and at exec Linux
// folds the parent's high-water mark into the child's, so ru_maxrss would
// report the harness's own memory whenever it is larger.
func peakRSS(pid int, stop <-chan struct{}) int64 {
	path := fmt.Sprintf("/proc/%d/status", pid)
	var peak int64
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if raw, err := os.ReadFile(path); err == nil {
			for _, line := range strings.Split(string(raw), "\n") {
				if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
					if kib, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64); err == nil {
						peak = max(peak, kib)
					}
				}
			}
		}
		select {
		case <-stop:
			return peak
		case <-tick.C:
		}
	}
}

// terminateBackends ends every session on database (best effort).
func (b *bench) terminateBackends(database string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = b.admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", database)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// daemon is a running `sweeper run`.
type daemon struct {
	cmd    *exec.Cmd
	addr   string
	exited chan struct{}
	err    error
	stderr *lockedBuffer
}

// startDaemon starts `sweeper run` on a free loopback port with extra
// flags and waits until /readyz answers 200.
func (b *bench) startDaemon(ctx context.Context, dbURL string, extra ...string) (*daemon, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	// No ops listener: replicas would all want its default port.
	args := append([]string{"run", "--http-addr", addr, "--ops-addr=", "--log-level", "warn"}, extra...)
	cmd := exec.CommandContext(ctx, b.sweeper, args...)
	cmd.Env = sweeperEnv(dbURL)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	d := &daemon{cmd: cmd, addr: addr, exited: make(chan struct{}), stderr: &lockedBuffer{}}
	cmd.Stderr = d.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sweeper run: %w", err)
	}
	go func() {
		d.err = cmd.Wait()
		close(d.exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		if ok := d.ready(ctx, client); ok {
			return d, nil
		}
		select {
		case <-d.exited:
			return nil, fmt.Errorf("sweeper run exited before it was ready: %w: %s", d.err, lastLine(d.stderr.String()))
		case <-ctx.Done():
			d.kill()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.kill()
			return nil, fmt.Errorf("sweeper run not ready after 30s: %s", lastLine(d.stderr.String()))
		}
	}
}

func (d *daemon) ready(ctx context.Context, client *http.Client) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.addr+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// stop sends SIGTERM and waits for a clean exit (0).
func (d *daemon) stop() error {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(40 * time.Second):
		d.kill()
		return errors.New("sweeper run did not stop within 40s of SIGTERM")
	}
	if d.err != nil {
		return fmt.Errorf("sweeper run exited with %w: %s", d.err, lastLine(d.stderr.String()))
	}
	return nil
}

func (d *daemon) kill() {
	_ = d.cmd.Process.Kill()
	<-d.exited
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String(), nil
}

// lockedBuffer is a bytes.Buffer safe to read while a process writes to it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
