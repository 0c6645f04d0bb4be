// Package cli is the sweeper binary's composition root: the subcommands,
// their flags with environment fallbacks, the logger, the exit codes, and the
// wiring of the database store, the sweeper, the failure handler, the admin
// API and the metrics into the daemon. Only cmd/sweeper imports it.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Main runs the sweeper command line args (without the program name) and
// returns the process exit code. Every input is explicit, so tests can call
// it in-process; cancelling ctx is how a signal stops the daemon.
func Main(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return run(ctx, env{getenv: getenv, stdout: stdout, stderr: stderr}, args)
}

// Exit codes shared by every subcommand.
const (
	exitOK       = 0
	exitRuntime  = 1
	exitUsage    = 2
	exitRejected = 3 // the request was valid but refused: unknown step, illegal state
)

// exitError carries the exit code an error should end the process with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf reports bad flags, arguments or configuration: exit 2.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// env is what a subcommand may touch of the outside world.
type env struct {
	getenv func(string) string
	stdout io.Writer
	stderr io.Writer
	// daemon lets an in-process test observe `sweeper run`; Main leaves it
	// empty.
	daemon daemonHooks
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e env, args []string) error
}

func commands() []command {
	return []command{
		{"run", "run the daemon: scheduled sweeps and the HTTP admin API", runDaemon},
		{"once", "run one sweep now and print its summary", runOnce},
		{"status", "print step counts per state, due and stranded steps", runStatus},
		{"check", "check the database is ready for the sweeper: tables, grants, schema version", runCheck},
		{"fail", "report one step failure to the inline handler", runFail},
		{"steps", "list, show, retry, resolve, cancel or grant steps of the retry queue (no daemon needed)", runSteps},
		{"pause", "pause sweeping on every replica (the switch is in the database)", runPause},
		{"resume", "resume sweeping on every replica", runResume},
		{"reconcile", "make the retry schedule match the tasker tables now, and say what it corrected", runReconcile},
		{"migrate", "apply the sweeper's database migrations", runMigrate},
		{"demo", "run the daemon against a throwaway PostgreSQL with demo data", runDemo},
		{"version", "print the version, VCS revision and Go version (also --version)", runVersion},
	}
}

// run dispatches to the subcommand and maps its error to an exit code.
func run(ctx context.Context, e env, args []string) int {
	if len(args) == 0 {
		// No command is a usage error: the usage goes where errors go.
		printUsage(e.stderr)
		return exitUsage
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printUsage(e.stdout)
		return exitOK
	}
	if args[0] == "--version" || args[0] == "-version" {
		args = append([]string{"version"}, args[1:]...)
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, e, args[1:])
		if err == nil || errors.Is(err, errHelp) {
			return exitOK
		}
		fmt.Fprintf(e.stderr, "sweeper %s: %v\n", c.name, err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return exitRuntime
	}
	fmt.Fprintf(e.stderr, "sweeper: unknown command %q (try 'sweeper help')\n", args[0])
	return exitUsage
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: sweeper <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "'sweeper <command> -h' lists a command's flags and the environment variable each configuration flag falls back to.")
}
