// Command chaos is the sweeper's fault suite: it runs the built sweeper
// binary against real, private PostgreSQL servers on both sweep paths,
// injects faults (kill -9, server restarts, terminated sessions, held locks,
// SIGTERM under blocked batches, poisoned rows, in-place edits, a stream of
// failures into several daemons) and checks after each scenario, in SQL,
// that no due step was left waiting and none was moved twice.
//
// It prints a table (scenario, path, result, duration, detail) and a closing
// line "N passed, N failed"; it exits 1 when any scenario failed. Run it from
// the module: `make chaos` (full), `make chaos-short` or `go run ./chaos
// -short` (the CI subset).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// options are the command-line settings.
type options struct {
	short   bool
	sweeper string
	run     *regexp.Regexp
	verbose bool
}

func main() {
	os.Exit(mainCode())
}

func mainCode() int {
	var opts options
	var runPattern string
	flag.BoolVar(&opts.short, "short", false, "the CI subset: smaller backlogs, shorter holds (at most 3 minutes)")
	flag.StringVar(&opts.sweeper, "sweeper", "", "sweeper binary to test (empty: build ./cmd/sweeper into bin/sweeper)")
	flag.StringVar(&runPattern, "run", "", "only the scenarios whose name matches this regular expression")
	flag.BoolVar(&opts.verbose, "v", false, "log each step of every scenario")
	flag.Parse()
	if runPattern != "" {
		re, err := regexp.Compile(runPattern)
		if err != nil {
			fmt.Fprintf(os.Stderr, "chaos: invalid -run: %v\n", err)
			return 2
		}
		opts.run = re
	}

	// Ctrl-C or SIGTERM cancels every wait; the deferred clean-ups then stop
	// the daemons and the servers and remove their data.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	s, err := newSuite(ctx, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos: %v\n", err)
		return 1
	}
	results := s.runAll(ctx)
	s.close()
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "chaos: interrupted; servers and data removed")
	}
	failed := printTable(os.Stdout, results)
	if failed > 0 || ctx.Err() != nil {
		return 1
	}
	return 0
}

// result is one row of the final table.
type result struct {
	scenario string
	path     string
	ok       bool
	duration time.Duration
	detail   string
}

// printTable writes the results and the closing line; it returns how many
// failed.
func printTable(w io.Writer, results []result) int {
	wScen, wPath := len("scenario"), len("path")
	for _, r := range results {
		wScen = max(wScen, len(r.scenario))
		wPath = max(wPath, len(r.path))
	}
	fmt.Fprintf(w, "%-*s  %-*s  %-6s  %8s  %s\n", wScen, "scenario", wPath, "path", "result", "duration", "detail")
	fmt.Fprintf(w, "%s  %s  %s  %s  %s\n", strings.Repeat("-", wScen), strings.Repeat("-", wPath),
		strings.Repeat("-", 6), strings.Repeat("-", 8), strings.Repeat("-", 6))
	passed, failed := 0, 0
	for _, r := range results {
		verdict := "PASS"
		if r.ok {
			passed++
		} else {
			verdict = "FAIL"
			failed++
		}
		fmt.Fprintf(w, "%-*s  %-*s  %-6s  %7.1fs  %s\n", wScen, r.scenario, wPath, r.path, verdict,
			r.duration.Seconds(), r.detail)
	}
	fmt.Fprintf(w, "%d passed, %d failed\n", passed, failed)
	return failed
}

// buildSweeper builds ./cmd/sweeper of the module into bin/sweeper, as
// `make build` does, and returns its path.
func buildSweeper(ctx context.Context) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(root, "bin", "sweeper")
	cmd := exec.CommandContext(ctx, goTool(), "build", "-o", out, "./cmd/sweeper")
	cmd.Dir = root
	if raw, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the sweeper: %w: %s", err, raw)
	}
	return out, nil
}

// goTool is $GOROOT/bin/go when `go run` or make set GOROOT, else "go".
func goTool() string {
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return "go"
}

// moduleRoot walks up from the working directory to the module's go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("read the working directory: %w", err)
	}
	for {
		raw, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(raw)), "module github.com/tasker-sweeper/retrysweeper") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run the suite from inside the github.com/tasker-sweeper/retrysweeper module (or pass -sweeper)")
		}
		dir = parent
	}
}
