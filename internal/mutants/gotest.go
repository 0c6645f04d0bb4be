package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Outcome is what one go test run says about the code under test.
type Outcome struct {
	// Failed is false when every package passed.
	Failed bool
	// By names what failed first: a test, a timeout, or a package.
	By string
}

// Runner runs go test over a set of packages, one package at a time in the
// given order, stopping at the first that fails.
type Runner struct {
	// Go is the go command.
	Go string
	// Dir is the module root the packages are relative to.
	Dir string
	// Timeout is go test's -timeout for each package: a mutant that makes a
	// test hang fails it.
	Timeout time.Duration
	// Log receives go test's output of failing runs, for -v.
	Log io.Writer
}

// Run runs the packages with the files of overlay (a go build -overlay
// file; empty for none) in place of the working tree's.
func (r Runner) Run(ctx context.Context, pkgs []string, overlay string) (Outcome, error) {
	for _, pkg := range pkgs {
		out, err := r.runPackage(ctx, pkg, overlay)
		if err != nil || out.Failed {
			return out, err
		}
	}
	return Outcome{}, nil
}

func (r Runner) runPackage(parent context.Context, pkg, overlay string) (Outcome, error) {
	// The test binary gets its own timeout; this one only covers a build or
	// a binary that will not die.
	limit := r.Timeout + 3*time.Minute
	ctx, cancel := context.WithTimeout(parent, limit)
	defer cancel()
	// vet has nothing to say about a changed string constant.
	args := []string{"test", "-json", "-count=1", "-failfast", "-vet=off", "-timeout", r.Timeout.String()}
	if overlay != "" {
		args = append(args, "-overlay", overlay)
	}
	args = append(args, pkg)
	cmd := exec.CommandContext(ctx, r.Go, args...)
	cmd.Dir = r.Dir
	// A process group of its own, so a timeout or Ctrl-C kills the test
	// binaries too (their PostgreSQL servers die with them).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	switch {
	case parent.Err() != nil:
		return Outcome{}, fmt.Errorf("go test %s: %w", pkg, parent.Err())
	case ctx.Err() != nil:
		return Outcome{Failed: true, By: fmt.Sprintf("killed after %s (%s)", limit, pkg)}, nil
	}
	out := parseTestJSON(stdout.Bytes())
	var exitErr *exec.ExitError
	switch {
	case runErr == nil && !out.Failed:
		return Outcome{}, nil
	case runErr != nil && !errors.As(runErr, &exitErr):
		return Outcome{}, fmt.Errorf("run go test %s: %w", pkg, runErr)
	}
	if r.Log != nil {
		fmt.Fprintf(r.Log, "--- go test %s\n%s%s", pkg, testOutput(stdout.Bytes()), stderr.String())
	}
	if out.By == "" {
		out.By = "package " + pkg + ": " + lastLine(stderr.String())
	}
	out.Failed = true
	return out, nil
}

// testEvent is the part of a go test -json event this program reads.
type testEvent struct {
	Action string
	Test   string
	Output string
}

// parseTestJSON reads go test -json output: the first test to fail, else a
// timeout panic and the tests it names, else a failed package.
func parseTestJSON(raw []byte) Outcome {
	var out Outcome
	var timedOut bool
	var running []string
	inRunning := false
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1024*1024), 16*1024*1024)
	for sc.Scan() {
		var ev testEvent
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		switch ev.Action {
		case "fail", "build-fail":
			out.Failed = true
			if ev.Test != "" && out.By == "" {
				out.By = ev.Test
			}
		case "output", "build-output":
			line := strings.TrimRight(ev.Output, "\n")
			switch {
			case strings.HasPrefix(line, "panic: test timed out"):
				timedOut = true
			case timedOut && strings.TrimSpace(line) == "running tests:":
				inRunning = true
			case inRunning && strings.HasPrefix(line, "\t"):
				running = append(running, strings.Fields(line)[0])
			default:
				inRunning = false
			}
		}
	}
	if timedOut {
		out.Failed = true
		out.By = "timeout"
		if len(running) > 0 {
			out.By += ": " + strings.Join(running, ", ")
		}
	}
	return out
}

// testOutput is the text go test would have printed without -json.
func testOutput(raw []byte) string {
	var b strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1024*1024), 16*1024*1024)
	for sc.Scan() {
		var ev testEvent
		if json.Unmarshal(sc.Bytes(), &ev) == nil && (ev.Action == "output" || ev.Action == "build-output") {
			b.WriteString(ev.Output)
		}
	}
	return b.String()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
