package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
)

// sweeperEnv is the environment of a sweeper process: the suite's own, less
// any SWEEPER_* or DATABASE_URL setting that would change what is tested,
// plus the database.
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

// cmdResult is one finished sweeper command.
type cmdResult struct {
	code           int
	stdout, stderr string
	wall           time.Duration
	err            error // the command could not run, or ran past its limit
}

// sweeperCmd runs the sweeper binary with args against d and waits at most
// limit (SIGTERM, then SIGKILL 5 s later).
func (s *suite) sweeperCmd(ctx context.Context, d *database, limit time.Duration, args ...string) cmdResult {
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(cctx, s.sweeper, args...)
	cmd.Env = sweeperEnv(d.url)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := cmdResult{stdout: stdout.String(), stderr: stderr.String(), wall: time.Since(start)}
	var exit *exec.ExitError
	switch {
	case cctx.Err() != nil:
		res.code = -1
		res.err = fmt.Errorf("sweeper %s still running after %s", args[0], limit)
	case errors.As(err, &exit):
		res.code = exit.ExitCode()
	case err != nil:
		res.code = -1
		res.err = fmt.Errorf("run sweeper %s: %w", args[0], err)
	}
	return res
}

// describe is a one-line account of a failed command.
func (r cmdResult) describe() string {
	if r.err != nil {
		return r.err.Error()
	}
	msg := lastErrorLine(r.stderr)
	if msg == "" {
		msg = lastLines(r.stdout, 1)
	}
	return fmt.Sprintf("exit %d: %s", r.code, msg)
}

// lastErrorLine picks the most telling line of a sweeper's stderr: the last
// JSON log record at error level (its msg and error), else the last line.
func lastErrorLine(stderr string) string {
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var rec map[string]any
		if json.Unmarshal([]byte(lines[i]), &rec) != nil {
			continue
		}
		if lvl, _ := rec["level"].(string); lvl == "ERROR" {
			msg, _ := rec["msg"].(string)
			if e, ok := rec["error"]; ok {
				msg += ": " + fmt.Sprint(e)
			}
			return truncate(msg, 300)
		}
	}
	return truncate(lastLines(stderr, 1), 300)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// onceSummary is the part of `sweeper once --json` the suite reads.
type onceSummary struct {
	Transitioned  int    `json:"transitioned"`
	LostRaces     int    `json:"lost_races"`
	FailedBatches int    `json:"failed_batches"`
	Path          string `json:"path"`
	Adopted       int    `json:"adopted"`
}

func parseSummary(stdout string) (onceSummary, error) {
	var sum onceSummary
	if err := json.Unmarshal([]byte(lastLines(stdout, 1)), &sum); err != nil {
		return sum, fmt.Errorf("unreadable summary %q: %w", truncate(stdout, 200), err)
	}
	return sum, nil
}

// proc is a sweeper process the suite started and may kill.
type proc struct {
	cmd     *exec.Cmd
	name    string
	logPath string
	exited  chan struct{}
	waitErr error
	endedAt atomic.Pointer[time.Time]
	addr    string // admin API address (daemons only)
}

// startProc starts the sweeper with args against d, its stdout and stderr
// in a log file.
func (s *suite) startProc(d *database, name string, args ...string) (*proc, error) {
	s.procN++
	logPath := filepath.Join(s.logDir, fmt.Sprintf("%03d-%s.log", s.procN, name))
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create log: %w", err)
	}
	cmd := exec.Command(s.sweeper, args...)
	cmd.Env = sweeperEnv(d.url)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("start sweeper %s: %w", args[0], err)
	}
	p := &proc{cmd: cmd, name: name, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		now := time.Now()
		p.endedAt.Store(&now)
		_ = logFile.Close()
		close(p.exited)
	}()
	s.procs = append(s.procs, p)
	return p, nil
}

// startDaemon starts `sweeper run` on a free loopback port with a 1 s
// schedule (plus extra flags) and waits until /readyz answers 200. The ops
// listener gets a free port of its own: several daemons run at once.
func (s *suite) startDaemon(ctx context.Context, d *database, name string, extra ...string) (*proc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	opsAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := append([]string{
		"run", "--schedule", "@every 1s", "--http-addr", addr, "--ops-addr", opsAddr,
		"--log-format", "json", "--log-level", "info",
	}, extra...)
	p, err := s.startProc(d, name, args...)
	if err != nil {
		return nil, err
	}
	p.addr = addr
	if err := p.waitReady(ctx, 30*time.Second, http.StatusOK); err != nil {
		p.kill()
		return nil, err
	}
	return p, nil
}

// running says whether the process has not exited.
func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// exitCode is the process's exit code (-1 when killed by a signal).
func (p *proc) exitCode() int {
	var exit *exec.ExitError
	if errors.As(p.waitErr, &exit) {
		return exit.ExitCode()
	}
	if p.waitErr != nil {
		return -1
	}
	return 0
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// terminate sends SIGTERM and waits up to limit for the exit; it reports
// how long the exit took and whether it came in time. A process still
// running at the limit is killed.
func (p *proc) terminate(limit time.Duration) (time.Duration, bool) {
	start := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return p.endedAt.Load().Sub(start), true
	case <-time.After(limit):
		p.kill()
		return time.Since(start), false
	}
}

// stop is terminate with a generous limit that must exit 0.
func (p *proc) stop() error {
	took, ok := p.terminate(40 * time.Second)
	if !ok {
		return fmt.Errorf("%s still running %.0fs after SIGTERM (killed)", p.name, took.Seconds())
	}
	if code := p.exitCode(); code != 0 {
		return fmt.Errorf("%s exited %d after SIGTERM: %s", p.name, code, p.lastError())
	}
	return nil
}

// lastError is the telling line of the process's log.
func (p *proc) lastError() string {
	raw, _ := os.ReadFile(p.logPath)
	return lastErrorLine(string(raw))
}

// waitReady polls /readyz until it answers want, within limit.
func (p *proc) waitReady(ctx context.Context, limit time.Duration, want int) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	last := 0
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr+"/readyz", nil)
		if err != nil {
			return fmt.Errorf("build readyz request: %w", err)
		}
		if resp, err := client.Do(req); err == nil {
			last = resp.StatusCode
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if last == want {
				return nil
			}
		}
		if !p.running() {
			return fmt.Errorf("%s exited (code %d) before /readyz answered %d: %s", p.name, p.exitCode(), want, p.lastError())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: /readyz answered %d, not %d, for %s", p.name, last, want, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// postFailure reports a failure through the daemon's admin API.
func (p *proc) postFailure(ctx context.Context, client *http.Client, step uuid.UUID, message string) error {
	body, _ := json.Marshal(map[string]any{"message": message})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		"http://"+p.addr+"/v1/steps/"+step.String()+"/failures", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("post failure of %s: %w", step, err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("post failure of %s: HTTP %d: %s", step, resp.StatusCode, truncate(strings.TrimSpace(string(raw)), 200))
	}
	var res struct {
		Action string `json:"action"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return fmt.Errorf("post failure of %s: unreadable answer %q: %w", step, truncate(string(raw), 200), err)
	}
	if res.Action != "TransitionedToWaitingForRetry" {
		return fmt.Errorf("post failure of %s: action %s, want TransitionedToWaitingForRetry", step, res.Action)
	}
	return nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String(), nil
}
