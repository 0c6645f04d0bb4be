package handling_test

import (
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/tasker-sweeper/retrysweeper/backoff"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// The decision tests need no database: Decide is pure.

var decideNow = time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)

// transient is the standard verdict for "upstream hiccup".
var transient = handling.Classification{
	Category: handling.CategoryTransient, Retryable: true, ErrorCode: "TRANSIENT", Reason: "default",
}

// permanent is the standard verdict for "validation failed".
var permanent = handling.Classification{
	Category: handling.CategoryPermanent, Retryable: false, ErrorCode: "PERMANENT", Reason: "keyword:validation",
}

// disabled is the verdict when classification is off.
var disabled = handling.Classification{
	Category: handling.CategoryPermanent, Retryable: false, ErrorCode: "CLASSIFICATION_DISABLED",
	Reason: "classification_disabled",
}

// failedStep is a retryable step that just failed its attempts-th attempt
// and waits in enqueued_as_error_for_orchestration, with max attempts.
func failedStep(attempts, maxAttempts int32) handling.Step {
	return handling.Step{
		StepUUID:    uuid.MustParse("0190f2a0-0000-7000-8000-000000000001"),
		TaskUUID:    uuid.MustParse("0190f2a0-0000-7000-8000-000000000002"),
		Name:        "fetch",
		State:       statemachine.EnqueuedAsErrorForOrchestration,
		Retryable:   true,
		Attempts:    &attempts,
		MaxAttempts: &maxAttempts,
		DBNow:       decideNow,
	}
}

func TestDecide(t *testing.T) {
	t.Parallel()
	const msg = "upstream hiccup"
	wait := statemachine.WaitForRetryEvent(msg)
	fail := statemachine.FailEvent(msg)
	type want struct {
		action      handling.Action
		state       statemachine.State
		event       *statemachine.Event
		backoff     int32 // 0: no backoff
		source      backoff.Source
		jitter      int64
		reason      string
		attempts    int
		maxAttempts int
		conflict    statemachine.EventType // "": no conflict
	}
	tests := []struct {
		name           string
		cfg            func(*handling.Config)
		step           handling.Step
		failure        handling.Failure
		classification handling.Classification
		rnd            backoff.Rand
		want           want
	}{
		// A repeated report: the first one already parked or failed the step.
		{
			name: "repeated report on a parked step", step: withState(failedStep(1, 3), statemachine.WaitingForRetry),
			classification: transient,
			want: want{
				action: handling.ActionNoActionTaken, state: statemachine.WaitingForRetry,
				reason: "step already in waiting_for_retry: failure already handled", attempts: 1, maxAttempts: 3,
			},
		},
		{
			name: "repeated report on a failed step", step: withState(failedStep(3, 3), statemachine.Error),
			classification: transient,
			want: want{
				action: handling.ActionNoActionTaken, state: statemachine.Error,
				reason: "step already in error: failure already handled", attempts: 3, maxAttempts: 3,
			},
		},

		// Not eligible: each reason.
		{
			name: "classification off", cfg: func(c *handling.Config) { c.UseErrorClassification = false },
			step: failedStep(1, 3), classification: disabled,
			want: want{
				action: handling.ActionMarkedAsPermanentFailure, state: statemachine.Error, event: &fail,
				reason: "error classification disabled: every error is permanent", attempts: 1, maxAttempts: 3,
			},
		},
		{
			name: "classification off ignores the worker's retryable", cfg: func(c *handling.Config) { c.UseErrorClassification = false },
			step: failedStep(1, 3), failure: handling.Failure{Retryable: testdb.Ptr(true)}, classification: disabled,
			want: want{
				action: handling.ActionMarkedAsPermanentFailure, state: statemachine.Error, event: &fail,
				reason: "error classification disabled: every error is permanent", attempts: 1, maxAttempts: 3,
			},
		},
		{
			name: "worker says not retryable", step: failedStep(1, 3),
			failure: handling.Failure{Retryable: testdb.Ptr(false)}, classification: transient,
			want: want{
				action: handling.ActionMarkedAsPermanentFailure, state: statemachine.Error, event: &fail,
				reason: "worker reported the error as not retryable", attempts: 1, maxAttempts: 3,
			},
		},
		{
			name: "category not retryable", step: failedStep(1, 3), classification: permanent,
			want: want{
				action: handling.ActionMarkedAsPermanentFailure, state: statemachine.Error, event: &fail,
				reason: "Permanent errors are not retryable", attempts: 1, maxAttempts: 3,
			},
		},
		{
			name: "step not retryable", step: notRetryable(failedStep(1, 3)), classification: transient,
			want: want{
				action: handling.ActionMarkedAsPermanentFailure, state: statemachine.Error, event: &fail,
				reason: "step is not retryable", attempts: 1, maxAttempts: 3,
			},
		},
		{
			name: "attempts exhausted", step: failedStep(3, 3), classification: transient,
			want: want{
				action: handling.ActionMarkedAsError, state: statemachine.Error, event: &fail,
				reason: "attempts exhausted (3 of 3)", attempts: 3, maxAttempts: 3,
			},
		},
		{
			name: "null max_attempts is tasker's 3: exhausted at 3", step: nullMax(failedStep(3, 0)), classification: transient,
			want: want{
				action: handling.ActionMarkedAsError, state: statemachine.Error, event: &fail,
				reason: "attempts exhausted (3 of 3)", attempts: 3, maxAttempts: 3,
			},
		},
		{
			name: "exhausted in legacy mode still fails", cfg: func(c *handling.Config) { c.UseWaitingForRetryState = false },
			step: failedStep(3, 3), classification: transient,
			want: want{
				action: handling.ActionMarkedAsError, state: statemachine.Error, event: &fail,
				reason: "attempts exhausted (3 of 3)", attempts: 3, maxAttempts: 3,
			},
		},

		// Eligible: a retry.
		{
			name: "exponential backoff", step: failedStep(1, 3), classification: transient,
			want: want{
				action: handling.ActionTransitionedToWaitingForRetry, state: statemachine.WaitingForRetry, event: &wait,
				backoff: 2, source: backoff.SourceExponential,
				reason: "retryable Transient failure, attempt 1 of 3", attempts: 1, maxAttempts: 3,
			},
		},
		{
			name: "null attempts count as zero", step: nullAttempts(failedStep(0, 3)), classification: transient,
			want: want{
				action: handling.ActionTransitionedToWaitingForRetry, state: statemachine.WaitingForRetry, event: &wait,
				backoff: 1, source: backoff.SourceExponential,
				reason: "retryable Transient failure, attempt 0 of 3", attempts: 0, maxAttempts: 3,
			},
		},
		{
			name: "null max_attempts is tasker's 3: retried at 2", step: nullMax(failedStep(2, 0)), classification: transient,
			want: want{
				action: handling.ActionTransitionedToWaitingForRetry, state: statemachine.WaitingForRetry, event: &wait,
				backoff: 4, source: backoff.SourceExponential,
				reason: "retryable Transient failure, attempt 2 of 3", attempts: 2, maxAttempts: 3,
			},
		},
		{
			name: "jitter from the injected rand", cfg: func(c *handling.Config) { c.Backoff.Jitter, c.Backoff.JitterFraction = true, 0.5 },
			step: failedStep(3, 5), classification: transient, rnd: fixedRand(0.75),
			// 1 s × 2³ = 8 s; a draw of 0.75 is +0.5 × 0.5 × 8 s = +2 s.
			want: want{
				action: handling.ActionTransitionedToWaitingForRetry, state: statemachine.WaitingForRetry, event: &wait,
				backoff: 10, source: backoff.SourceExponential, jitter: 2,
				reason: "retryable Transient failure, attempt 3 of 5", attempts: 3, maxAttempts: 5,
			},
		},
		{
			name: "worker says retryable beats the category", step: failedStep(1, 3),
			failure: handling.Failure{Retryable: testdb.Ptr(true)}, classification: permanent,
			want: want{
				action: handling.ActionTransitionedToWaitingForRetry, state: statemachine.WaitingForRetry, event: &wait,
				backoff: 2, source: backoff.SourceExponential,
				reason: "retryable Permanent failure, attempt 1 of 3", attempts: 1, maxAttempts: 3,
			},
		},
		{
			name: "retry-after seconds", step: failedStep(1, 3),
			failure: handling.Failure{RetryAfter: "120"}, classification: transient,
			want: want{
				action: handling.ActionTransitionedToWaitingForRetry, state: statemachine.WaitingForRetry, event: &wait,
				backoff: 120, source: backoff.SourceRetryAfter,
				reason: "retryable Transient failure, attempt 1 of 3", attempts: 1, maxAttempts: 3,
			},
		},
		{
			name: "retry-after date judged against now", step: failedStep(1, 3),
			failure: handling.Failure{RetryAfter: "Tue, 06 May 2031 07:10:09 GMT"}, classification: transient,
			want: want{
				action: handling.ActionTransitionedToWaitingForRetry, state: statemachine.WaitingForRetry, event: &wait,
				backoff: 120, source: backoff.SourceRetryAfter,
				reason: "retryable Transient failure, attempt 1 of 3", attempts: 1, maxAttempts: 3,
			},
		},
		{
			name: "retry-after capped at max", step: failedStep(1, 3),
			failure: handling.Failure{RetryAfter: "100000"}, classification: transient,
			want: want{
				action: handling.ActionTransitionedToWaitingForRetry, state: statemachine.WaitingForRetry, event: &wait,
				backoff: 300, source: backoff.SourceRetryAfter,
				reason: "retryable Transient failure, attempt 1 of 3", attempts: 1, maxAttempts: 3,
			},
		},
		{
			name: "legacy mode: backoff only, the real state", cfg: func(c *handling.Config) { c.UseWaitingForRetryState = false },
			step: failedStep(1, 3), classification: transient,
			want: want{
				action: handling.ActionNoActionTaken, state: statemachine.EnqueuedAsErrorForOrchestration,
				backoff: 2, source: backoff.SourceExponential,
				reason: "legacy mode: backoff written, state left to the orchestrator", attempts: 1, maxAttempts: 3,
			},
		},

		// Illegal states.
		{
			name: "WaitForRetry illegal after a success", step: withState(failedStep(1, 3), statemachine.EnqueuedForOrchestration),
			classification: transient,
			want:           want{state: statemachine.EnqueuedForOrchestration, attempts: 1, maxAttempts: 3, conflict: statemachine.EventWaitForRetry},
		},
		{
			name: "WaitForRetry illegal on a complete step", step: withState(failedStep(1, 3), statemachine.Complete),
			classification: transient,
			want:           want{state: statemachine.Complete, attempts: 1, maxAttempts: 3, conflict: statemachine.EventWaitForRetry},
		},
		{
			name: "Fail illegal on a cancelled step", step: withState(failedStep(3, 3), statemachine.Cancelled),
			classification: transient,
			want:           want{state: statemachine.Cancelled, attempts: 3, maxAttempts: 3, conflict: statemachine.EventFail},
		},
		{
			name: "Fail illegal on a resolved step", step: withState(failedStep(1, 3), statemachine.ResolvedManually),
			classification: permanent,
			want:           want{state: statemachine.ResolvedManually, attempts: 1, maxAttempts: 3, conflict: statemachine.EventFail},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := jitterOff()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			f := tc.failure
			f.StepUUID, f.Message, f.Source = tc.step.StepUUID, msg, "worker"
			rnd := tc.rnd
			if rnd == nil {
				rnd = fixedRand(0.99) // should jitter be applied by mistake, the delay moves
			}

			d := handling.Decide(cfg, tc.step, f, tc.classification, decideNow, rnd)

			w := tc.want
			require.Equal(t, w.action, d.Action)
			require.Equal(t, w.state, d.FinalState)
			require.Equal(t, w.event, d.Event)
			require.Equal(t, w.reason, d.Reason)
			require.Equal(t, w.attempts, d.Attempts)
			require.Equal(t, w.maxAttempts, d.MaxAttempts)
			require.Equal(t, w.source, d.BackoffSource)
			require.Equal(t, w.jitter, d.JitterSeconds)
			if w.backoff == 0 {
				require.Nil(t, d.BackoffSeconds)
			} else {
				require.NotNil(t, d.BackoffSeconds)
				require.Equal(t, w.backoff, *d.BackoffSeconds)
			}

			if w.conflict != "" {
				require.ErrorIs(t, d.Conflict, handling.ErrConflict)
				var ce *handling.ConflictError
				require.ErrorAs(t, d.Conflict, &ce)
				require.Equal(t, w.conflict, ce.Event)
				require.Equal(t, tc.step.State, ce.Step.State)
				require.Contains(t, d.Conflict.Error(), string(w.conflict))
				require.Contains(t, d.Conflict.Error(), string(tc.step.State))
				require.False(t, d.Writes(), "a conflict writes nothing")
				return
			}
			require.NoError(t, d.Conflict)
			require.Equal(t, w.event != nil || w.backoff != 0, d.Writes())
			if !d.Writes() {
				require.Nil(t, d.Provenance, "nothing written, no provenance")
				return
			}

			p := d.Provenance
			require.Equal(t, "tasker-sweeper/inline-handler", p["actor"])
			require.Equal(t, "worker", p["error_source"])
			require.Equal(t, string(tc.classification.Category), p["category"])
			require.Equal(t, tc.classification.ErrorCode, p["error_code"])
			require.Equal(t, tc.classification.Reason, p["classification_reason"])
			require.Equal(t, w.attempts, p["attempts"])
			require.Equal(t, w.maxAttempts, p["max_attempts"])
			require.NotContains(t, p, "http_status")
			if w.backoff != 0 {
				require.Equal(t, w.backoff, p["backoff_seconds"])
				require.Equal(t, string(w.source), p["backoff_source"])
				require.Equal(t, w.jitter, p["jitter_seconds"])
			} else {
				require.NotContains(t, p, "backoff_seconds")
			}
			if w.source == backoff.SourceRetryAfter {
				require.Equal(t, f.RetryAfter, p["retry_after"])
			} else {
				require.NotContains(t, p, "retry_after")
			}
			switch {
			case w.event == nil: // legacy mode: no transition, so no why
				require.NotContains(t, p, "why")
			case w.event.Type == statemachine.EventFail:
				require.Equal(t, w.reason, p["why"])
			default:
				require.Equal(t, "retryable failure, backoff scheduled", p["why"])
			}
		})
	}
}

func TestDecideRecordsHTTPStatus(t *testing.T) {
	t.Parallel()
	d := handling.Decide(jitterOff(), failedStep(1, 3),
		handling.Failure{Message: "x", HTTPStatus: 503}, transient, decideNow, fixedRand(0.5))
	require.Equal(t, 503, d.Provenance["http_status"])
}

// For any step, failure and verdict, Decide never writes a transition the
// state machine forbids, parks only a step with attempts left, and refuses
// with a conflict exactly when the transition it needs is illegal.
func TestDecideProperties(t *testing.T) {
	t.Parallel()
	categories := slices.Sorted(maps.Keys(wireCategories)) // a fixed order, so failures replay
	optionalInt32 := func(t *rapid.T, label string) *int32 {
		if rapid.Bool().Draw(t, label+"_null") {
			return nil
		}
		return testdb.Ptr(rapid.Int32Range(-1, 8).Draw(t, label))
	}

	rapid.Check(t, func(t *rapid.T) {
		cfg := handling.DefaultConfig()
		cfg.UseErrorClassification = rapid.Bool().Draw(t, "classification")
		cfg.UseWaitingForRetryState = rapid.Bool().Draw(t, "waiting_for_retry")
		cfg.Backoff.Jitter = rapid.Bool().Draw(t, "jitter")
		step := handling.Step{
			StepUUID:    uuid.New(),
			State:       rapid.SampledFrom(statemachine.States()).Draw(t, "state"),
			Retryable:   rapid.Bool().Draw(t, "step_retryable"),
			Attempts:    optionalInt32(t, "attempts"),
			MaxAttempts: optionalInt32(t, "max_attempts"),
			DBNow:       decideNow,
		}
		f := handling.Failure{
			StepUUID:   step.StepUUID,
			Message:    rapid.String().Draw(t, "message"),
			RetryAfter: rapid.SampledFrom([]string{"", "0", "30", "100000", "soon", "Tue, 06 May 2031 07:10:09 GMT"}).Draw(t, "retry_after"),
		}
		if rapid.Bool().Draw(t, "worker_has_verdict") {
			f.Retryable = testdb.Ptr(rapid.Bool().Draw(t, "worker_retryable"))
		}
		category := rapid.SampledFrom(categories).Draw(t, "category")
		c := handling.Classification{Category: category, Retryable: category.Retryable(), ErrorCode: "X", Reason: "r"}
		if !cfg.UseErrorClassification {
			c = disabled
		}

		d := handling.Decide(cfg, step, f, c, decideNow, fixedRand(rapid.Float64Range(0, 0.999).Draw(t, "draw")))

		wantMax := int32(handling.TaskerDefaultMaxAttempts)
		if step.MaxAttempts != nil {
			wantMax = *step.MaxAttempts
		}
		if d.MaxAttempts != int(wantMax) {
			t.Fatalf("max attempts %d, want %d", d.MaxAttempts, wantMax)
		}
		if d.Event != nil {
			to, err := statemachine.Next(step.State, d.Event.Type)
			if err != nil {
				t.Fatalf("%s from %s: a transition the state machine forbids: %v", d.Event.Type, step.State, err)
			}
			if to != d.FinalState {
				t.Fatalf("%s from %s goes to %s, decision says %s", d.Event.Type, step.State, to, d.FinalState)
			}
		} else if d.FinalState != step.State {
			t.Fatalf("no transition, yet the final state %s is not the real %s", d.FinalState, step.State)
		}
		if d.Conflict != nil {
			var ce *handling.ConflictError
			if !errors.As(d.Conflict, &ce) || !errors.Is(d.Conflict, handling.ErrConflict) {
				t.Fatalf("conflict %v is not a *ConflictError matching ErrConflict", d.Conflict)
			}
			if statemachine.CanTransition(step.State, ce.Event) {
				t.Fatalf("conflict over %s, which is legal from %s", ce.Event, step.State)
			}
			if d.Writes() || d.Action != "" {
				t.Fatalf("a conflict decided %q and writes %v", d.Action, d.Writes())
			}
			return
		}
		repeated := step.State == statemachine.WaitingForRetry || step.State == statemachine.Error
		if repeated != (d.Action == handling.ActionNoActionTaken && !d.Writes()) {
			t.Fatalf("state %s: action %s, writes %v", step.State, d.Action, d.Writes())
		}
		if repeated {
			return
		}
		eligible := handling.Eligible(cfg, step, f, c)
		if eligible != (d.BackoffSeconds != nil) {
			t.Fatalf("eligible %v but backoff %v", eligible, d.BackoffSeconds)
		}
		if eligible {
			if d.Attempts >= d.MaxAttempts || !step.Retryable {
				t.Fatalf("eligible with attempts %d of %d, step retryable %v", d.Attempts, d.MaxAttempts, step.Retryable)
			}
			if *d.BackoffSeconds < 0 || time.Duration(*d.BackoffSeconds)*time.Second > cfg.Backoff.Max {
				t.Fatalf("backoff %d s outside [0, %s]", *d.BackoffSeconds, cfg.Backoff.Max)
			}
			wantAction := handling.ActionTransitionedToWaitingForRetry
			if !cfg.UseWaitingForRetryState {
				wantAction = handling.ActionNoActionTaken
			}
			if d.Action != wantAction {
				t.Fatalf("eligible, legacy %v: action %s", !cfg.UseWaitingForRetryState, d.Action)
			}
			return
		}
		if d.Event == nil || d.Event.Type != statemachine.EventFail {
			t.Fatalf("not eligible, yet event %v", d.Event)
		}
		if (d.Action == handling.ActionMarkedAsError) != (d.Attempts >= d.MaxAttempts && step.Retryable &&
			cfg.UseErrorClassification && (f.Retryable == nil && c.Retryable || f.Retryable != nil && *f.Retryable)) {
			t.Fatalf("action %s: MarkedAsError is for exhausted attempts only", d.Action)
		}
	})
}

func withState(s handling.Step, state statemachine.State) handling.Step {
	s.State = state
	return s
}

func notRetryable(s handling.Step) handling.Step {
	s.Retryable = false
	return s
}

func nullMax(s handling.Step) handling.Step {
	s.MaxAttempts = nil
	return s
}

func nullAttempts(s handling.Step) handling.Step {
	s.Attempts = nil
	return s
}
