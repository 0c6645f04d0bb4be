package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
)

// sweeperBin is the sweeper binary built once for the end-to-end tests,
// which run it as an operator would.
var sweeperBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sweeper-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sweeperBin = filepath.Join(dir, "sweeper")
	build := exec.Command("go", "build", "-o", sweeperBin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build sweeper:", err)
		os.Exit(1)
	}
	testdb.Main(m, func() { _ = os.RemoveAll(dir) })
}

type cmdResult struct {
	code   int
	stdout string
	stderr string
}

// runBinary runs the built sweeper with only the given environment.
func runBinary(t *testing.T, env []string, args ...string) cmdResult {
	t.Helper()
	cmd := exec.CommandContext(context.Background(), sweeperBin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			t.Fatalf("run sweeper %v: %v", args, err)
		}
		code = exitErr.ExitCode()
	}
	return cmdResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}
