package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/telemetry"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// policyFileFlag is --policy-file: setting it reads and validates the file,
// so a bad file is a bad flag (exit 2, one line naming the file, the line
// and the problem) in every command that takes it.
type policyFileFlag struct{ policy **handling.Policy }

func (p policyFileFlag) String() string {
	if p.policy == nil || *p.policy == nil {
		return ""
	}
	return (*p.policy).Path
}

func (p policyFileFlag) Set(path string) error {
	if path == "" {
		*p.policy = nil
		return nil
	}
	pol, err := loadPolicyFile(path)
	if err != nil {
		return err
	}
	*p.policy = pol
	return nil
}

// loadPolicyFile reads and validates a policy file.
func loadPolicyFile(path string) (*handling.Policy, error) {
	content, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return handling.ParsePolicy(path, content)
}

// policyAttrs describe the policy file in force for the logs.
func policyAttrs(p *handling.Policy) []slog.Attr {
	if p == nil {
		return []slog.Attr{slog.String("policy_file", "")}
	}
	return []slog.Attr{slog.String("policy_file", p.Path), slog.String("policy_file_hash", p.Hash), slog.Int("policy_rules", len(p.Rules))}
}

// handlerOptions are the inline handler's options in the daemon: the
// policy's metrics and the logger.
func handlerOptions(metrics *telemetry.Metrics, logger *slog.Logger) []handling.Option {
	return []handling.Option{handling.WithPolicyHooks(metrics.PolicyHooks()), handling.WithLogger(logger)}
}

// watchPolicyReloads re-reads the policy file on every SIGHUP until ctx
// ends: a good file replaces the rules for the failures handled from then
// on; a bad one keeps the rules in force and logs why. Without a policy
// file at start-up a SIGHUP only logs that there is nothing to reload. The
// returned channel closes once it stopped listening.
func watchPolicyReloads(ctx context.Context, handler *handling.Service, metrics *telemetry.Metrics, logger *slog.Logger) <-chan struct{} {
	metrics.PolicyLoaded(handler.CurrentPolicy())
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			current := handler.CurrentPolicy()
			if current == nil {
				logger.LogAttrs(ctx, slog.LevelWarn, "SIGHUP: no --policy-file to reload")
				continue
			}
			next, err := loadPolicyFile(current.Path)
			if err != nil {
				metrics.PolicyReloaded(false)
				logger.LogAttrs(ctx, slog.LevelError, "policy reload failed: the policy in force stays",
					append(policyAttrs(current), slog.Any("error", err))...)
				continue
			}
			handler.SetPolicy(next)
			metrics.PolicyLoaded(next)
			metrics.PolicyReloaded(true)
			logger.LogAttrs(ctx, slog.LevelInfo, "policy file reloaded",
				append(policyAttrs(next), slog.String("previous_hash", current.Hash))...)
		}
	}()
	return done
}

// runPolicy is `sweeper policy explain`.
func runPolicy(ctx context.Context, e env, args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		return runExplain(ctx, e, args) // its one subcommand's help
	}
	if len(args) == 0 || args[0] != "explain" {
		return usageErrorf("want 'sweeper policy explain --step UUID --message M [flags]' (see 'sweeper policy explain -h')")
	}
	return runExplain(ctx, e, args[1:])
}

// runExplain prints the decision the inline handler would take for a
// failure, and why, writing nothing. Exit 0 when decided, 3 when the step is
// unknown or in a state that cannot take a failure.
func runExplain(ctx context.Context, e env, args []string) error {
	f := newFlags("policy explain", e)
	dbURL := databaseFlag(f)
	cfg := handlerFlags(f)
	stepArg := f.fs.String("step", "", "uuid of the workflow step (required)")
	message := f.fs.String("message", "", "the error message")
	kind := f.fs.String("kind", "", "explicit error category (Permanent, Transient, Timeout, RateLimit, ...)")
	retryable := f.fs.String("retryable", "", "the worker's verdict, true or false; empty lets the policy decide")
	retryAfter := f.fs.String("retry-after", "", "Retry-After value: seconds or an HTTP date")
	httpStatus := f.fs.Int("http-status", 0, "HTTP status of the failed call (0: none)")
	asJSON := f.fs.Bool("json", false, "print the result as one JSON object")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := checkDatabaseURL(*dbURL); err != nil {
		return err
	}
	if err := checkHandlerConfig(cfg); err != nil {
		return err
	}
	if *stepArg == "" {
		return usageErrorf("--step is required")
	}
	step, err := uuid.Parse(*stepArg)
	if err != nil {
		return usageErrorf("invalid --step %q: not a uuid", *stepArg)
	}
	failure := handling.Failure{
		StepUUID: step, Message: *message, Kind: *kind, RetryAfter: *retryAfter,
		HTTPStatus: *httpStatus, Source: "cli", DryRun: true,
	}
	if *retryable != "" {
		v, err := strconv.ParseBool(*retryable)
		if err != nil {
			return usageErrorf("invalid --retryable %q: want true or false", *retryable)
		}
		failure.Retryable = &v
	}
	if *httpStatus != 0 && (*httpStatus < 100 || *httpStatus > 599) {
		return usageErrorf("invalid --http-status %d: want 100-599 or 0 for none", *httpStatus)
	}
	if step == uuid.Nil {
		return &exitError{code: exitRejected, err: fmt.Errorf("step %s: %w", step, statemachine.ErrStepNotFound)}
	}
	store, err := openStore(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer store.Pool().Close()
	handler, err := handling.NewService(store, *cfg)
	if err != nil {
		return configError(err)
	}
	res, err := handler.Handle(ctx, failure)
	switch {
	case errors.Is(err, statemachine.ErrStepNotFound), errors.Is(err, handling.ErrConflict):
		return &exitError{code: exitRejected, err: err}
	case err != nil:
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(res)
	}
	printExplanation(e, res, cfg.Policy)
	return nil
}

func printExplanation(e env, res handling.Result, pol *handling.Policy) {
	w := e.stdout
	fmt.Fprintf(w, "step %s: would be %s, then %s\n", res.StepUUID, res.Action, res.FinalState)
	fmt.Fprintf(w, "  reason:         %s\n", res.Reason)
	c := res.Classification
	fmt.Fprintf(w, "  classification: %s (%s, by %s), retryable %v\n", c.Category, c.ErrorCode, c.Reason, c.Retryable)
	fmt.Fprintf(w, "  attempts:       %d of %d\n", res.Attempts, res.MaxAttempts)
	p := res.Policy
	if pol != nil {
		fmt.Fprintf(w, "  policy file:    %s (%s, %d rules)\n", pol.Path, pol.Hash, len(pol.Rules))
	}
	if p != nil {
		if p.Rule != "" {
			fmt.Fprintf(w, "  rule:           %s\n", p.Rule)
		}
		if p.Template != "" {
			fmt.Fprintf(w, "  template:       %s (tasker env %q)\n", p.Template, p.TaskerEnv)
		}
		if res.BackoffSeconds != nil {
			jitter := "off"
			if p.Jitter {
				jitter = fmt.Sprintf("±%g, %+ds", p.JitterFraction, p.JitterSeconds)
			}
			fmt.Fprintf(w, "  delay:          %ds from %s: %s, base %s, cap %s, raw %s, jitter %s\n",
				*res.BackoffSeconds, p.Source, p.Strategy, time.Duration(p.BaseMs)*time.Millisecond,
				time.Duration(p.CapMs)*time.Millisecond, time.Duration(p.RawDelayMs)*time.Millisecond, jitter)
		}
		if len(p.Why) > 0 {
			fmt.Fprintf(w, "  why:\n    - %s\n", strings.Join(p.Why, "\n    - "))
		}
	}
	fmt.Fprintln(w, "nothing was written")
}
