package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// runFail is `sweeper fail`: the inline handler from a shell. Exit 0 when the
// failure was handled (including NoActionTaken), 3 when the step is unknown
// or in a state that cannot take a failure.
func runFail(ctx context.Context, e env, args []string) error {
	f := newFlags("fail", e)
	dbURL := databaseFlag(f)
	cfg := handlerFlags(f)
	stepArg := f.fs.String("step", "", "uuid of the failed workflow step (required)")
	message := f.fs.String("message", "", "the error message")
	kind := f.fs.String("kind", "", "explicit error category (Permanent, Transient, Timeout, RateLimit, ...)")
	retryable := f.fs.String("retryable", "", "the worker's verdict, true or false; empty lets the classifier decide")
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
	if step == uuid.Nil {
		// A well-formed uuid that names no step (tasker generates v7 ids):
		// unknown, like any other step that is not there.
		return &exitError{code: exitRejected, err: fmt.Errorf("step %s: %w", step, statemachine.ErrStepNotFound)}
	}
	failure := handling.Failure{
		StepUUID: step, Message: *message, Kind: *kind, RetryAfter: *retryAfter,
		HTTPStatus: *httpStatus, Source: "cli",
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
	fmt.Fprintf(e.stdout, "step %s: %s, now %s (%s, %s)\n",
		res.StepUUID, res.Action, res.FinalState, res.Classification.Category, res.Reason)
	if res.BackoffSeconds != nil {
		fmt.Fprintf(e.stdout, "backoff %ds (%s)", *res.BackoffSeconds, res.BackoffSource)
		if res.NextRetryAt != nil {
			fmt.Fprintf(e.stdout, ", due at %s", res.NextRetryAt.UTC().Format("2006-01-02T15:04:05Z"))
		}
		fmt.Fprintln(e.stdout)
	}
	return nil
}
