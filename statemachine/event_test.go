package statemachine_test

import (
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

func ptr(s string) *string { return &s }

func TestEventMarshalExactBytes(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		ev   statemachine.Event
		want string
	}{
		{"retry", statemachine.RetryEvent(), `{"type":"Retry"}`},
		{"wait for retry with quotes", statemachine.WaitForRetryEvent(`boom "x"`), `{"type":"WaitForRetry","data":"boom \"x\""}`},
		{"fail", statemachine.FailEvent("x"), `{"type":"Fail","data":"x"}`},
		{"fail empty message", statemachine.FailEvent(""), `{"type":"Fail","data":""}`},
		{"html not escaped, like serde_json", statemachine.FailEvent("a<b>&c"), `{"type":"Fail","data":"a<b>&c"}`},
		{"control chars escaped", statemachine.FailEvent("l1\nl2\t\\"), `{"type":"Fail","data":"l1\nl2\t\\"}`},
		{"reset for retry", statemachine.Event{Type: statemachine.EventResetForRetry}, `{"type":"ResetForRetry"}`},
		{"complete", statemachine.Event{Type: statemachine.EventComplete}, `{"type":"Complete"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := tt.ev.MarshalJSON()
			require.NoError(t, err)
			require.Equal(t, tt.want, string(got))

			var back statemachine.Event
			require.NoError(t, json.Unmarshal(got, &back))
			require.Equal(t, tt.ev, back)
		})
	}
}

func TestEventMarshalRejectsMalformed(t *testing.T) {
	t.Parallel()

	for name, ev := range map[string]statemachine.Event{
		"unknown type":         {Type: "Explode"},
		"empty type":           {},
		"fail without message": {Type: statemachine.EventFail},
		"wait without message": {Type: statemachine.EventWaitForRetry},
		"retry with data":      {Type: statemachine.EventRetry, Data: ptr("x")},
	} {
		_, err := ev.MarshalJSON()
		require.Error(t, err, name)
		_, err = json.Marshal(ev)
		require.Error(t, err, name)
	}
}

func TestEventUnmarshal(t *testing.T) {
	t.Parallel()

	good := map[string]statemachine.Event{
		`{"type":"Retry"}`:                        statemachine.RetryEvent(),
		`{"type":"Complete","data":null}`:         {Type: statemachine.EventComplete},
		` { "data" : "m" , "type" : "Fail" } `:    statemachine.FailEvent("m"),
		`{"type":"WaitForRetry","data":"\u00e9"}`: statemachine.WaitForRetryEvent("é"),
		`{"type":"Cancel","extra":1}`:             {Type: statemachine.EventCancel},
	}
	for in, want := range good {
		var got statemachine.Event
		require.NoError(t, json.Unmarshal([]byte(in), &got), in)
		require.Equal(t, want, got, in)
	}

	bad := []string{
		`{"type":"Explode"}`,
		`{"type":"retry"}`,
		`{"TYPE":"Retry"}`,
		`{}`,
		`{"type":null}`,
		`{"type":1}`,
		`{"type":"Fail"}`,
		`{"type":"Fail","data":null}`,
		`{"type":"Fail","data":42}`,
		`{"type":"WaitForRetry","data":{"msg":"x"}}`,
		`{"type":"Retry","data":"x"}`,
		`{"type":"Complete","data":{"ok":true}}`,
		`"Retry"`,
		`[]`,
		`{"type":"Retry"`,
		``,
	}
	for _, in := range bad {
		got := statemachine.RetryEvent()
		require.Error(t, json.Unmarshal([]byte(in), &got), "%q", in)
		require.Error(t, got.UnmarshalJSON([]byte(in)), "%q", in)
		require.Equal(t, statemachine.RetryEvent(), got, "failed decode must not modify the event: %q", in)
	}
}

func TestEventJSONRoundTrip(t *testing.T) {
	t.Parallel()

	rapid.Check(t, func(t *rapid.T) {
		var ev statemachine.Event
		switch rapid.IntRange(0, 2).Draw(t, "kind") {
		case 0:
			ev = statemachine.Event{Type: rapid.SampledFrom([]statemachine.EventType{
				statemachine.EventEnqueue, statemachine.EventStart, statemachine.EventEnqueueForOrchestration,
				statemachine.EventEnqueueAsErrorForOrchestration, statemachine.EventComplete,
				statemachine.EventRetry, statemachine.EventResetForRetry, statemachine.EventCancel,
				statemachine.EventCompleteManually, statemachine.EventResolveManually,
			}).Draw(t, "unit")}
		case 1:
			ev = statemachine.FailEvent(rapid.String().Draw(t, "msg"))
		default:
			ev = statemachine.WaitForRetryEvent(rapid.String().Draw(t, "msg"))
		}
		b, err := ev.MarshalJSON()
		if err != nil {
			t.Fatalf("marshal %+v: %v", ev, err)
		}
		if !json.Valid(b) || !utf8.Valid(b) {
			t.Fatalf("invalid JSON %q", b)
		}
		var back statemachine.Event
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("unmarshal %s: %v", b, err)
		}
		if back.Type != ev.Type || (back.Data == nil) != (ev.Data == nil) ||
			(ev.Data != nil && *back.Data != *ev.Data) {
			t.Fatalf("round trip %+v -> %s -> %+v", ev, b, back)
		}
	})
}
