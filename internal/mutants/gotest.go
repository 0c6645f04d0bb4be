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
	// A process group of its own, so stopping it kills the test binaries
	// too (their PostgreSQL servers die with them).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Outcome{}, fmt.Errorf("run go test %s: %w", pkg, err)
	}
	if err := cmd.Start(); err != nil {
		return Outcome{}, fmt.Errorf("run go test %s: %w", pkg, err)
	}
	// The first failing test decides the mutant: the rest of the package
	// (a parallel test the mutant made hang, say) is not waited for.
	var p testParser
	stopped := false
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1024*1024), 16*1024*1024)
	for sc.Scan() {
		p.feed(sc.Bytes())
		if p.out.By != "" && !stopped {
			stopped = true
			cancel()
		}
	}
	_, _ = io.Copy(io.Discard, stdout)
	runErr := cmd.Wait()
	out := p.outcome()
	switch {
	case parent.Err() != nil:
		return Outcome{}, fmt.Errorf("go test %s: %w", pkg, parent.Err())
	case stopped:
	case ctx.Err() != nil:
		return Outcome{Failed: true, By: fmt.Sprintf("killed after %s (%s)", limit, pkg)}, nil
	case runErr == nil && !out.Failed:
		return Outcome{}, nil
	case runErr != nil && !errors.As(runErr, new(*exec.ExitError)):
		return Outcome{}, fmt.Errorf("run go test %s: %w", pkg, runErr)
	}
	if r.Log != nil {
		fmt.Fprintf(r.Log, "--- go test %s\n%s%s", pkg, p.text.String(), stderr.String())
	}
	if out.By == "" && (strings.Contains(p.text.String(), "[build failed]") || strings.Contains(p.text.String(), "[setup failed]")) {
		// A change to a string constant cannot break the build: the tree
		// changed under the run, and nothing can be said of this mutant.
		return Outcome{}, fmt.Errorf("go test %s did not build: %s", pkg, lastLine(stderr.String()))
	}
	if out.By == "" {
		why := lastLine(stderr.String())
		if why == "" {
			why = lastLine(p.text.String())
		}
		out.By = "package " + pkg + ": " + why
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

// testParser reads go test -json output as it comes: the first test to
// fail, else a timeout panic and the tests it names, else a failed package.
type testParser struct {
	out       Outcome
	timedOut  bool
	inRunning bool
	running   []string
	text      strings.Builder // the output go test would print without -json
}

func (p *testParser) feed(line []byte) {
	var ev testEvent
	if json.Unmarshal(line, &ev) != nil {
		return
	}
	switch ev.Action {
	case "fail", "build-fail":
		p.out.Failed = true
		if ev.Test != "" && p.out.By == "" {
			p.out.By = ev.Test
			if p.timedOut {
				p.out.By = p.timeout()
			}
		}
	case "output", "build-output":
		p.text.WriteString(ev.Output)
		text := strings.TrimRight(ev.Output, "\n")
		switch {
		case strings.HasPrefix(text, "panic: test timed out"):
			p.timedOut = true
		case p.timedOut && strings.TrimSpace(text) == "running tests:":
			p.inRunning = true
		case p.inRunning && strings.HasPrefix(text, "\t") && strings.TrimSpace(text) != "":
			p.running = append(p.running, strings.Fields(text)[0])
		default:
			p.inRunning = false
		}
	}
}

func (p *testParser) timeout() string {
	if len(p.running) == 0 {
		return "timeout"
	}
	return "timeout: " + strings.Join(p.running, ", ")
}

func (p *testParser) outcome() Outcome {
	out := p.out
	if p.timedOut && out.By == "" {
		out.Failed, out.By = true, p.timeout()
	}
	return out
}

// parseTestJSON is testParser over a whole output.
func parseTestJSON(raw []byte) Outcome {
	var p testParser
	for _, line := range bytes.Split(raw, []byte("\n")) {
		p.feed(line)
	}
	return p.outcome()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
