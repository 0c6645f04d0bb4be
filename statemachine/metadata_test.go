package statemachine_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

func TestMetadata(t *testing.T) {
	t.Parallel()

	tokyo := time.FixedZone("JST", 9*60*60)
	at := time.Date(2025, 3, 4, 9, 30, 0, 123456789, tokyo)
	ev := statemachine.WaitForRetryEvent(`timeout "upstream" <503>`)

	b, err := statemachine.Metadata(ev, at, map[string]any{
		"who":            "retry-sweeper",
		"why":            "backoff expired",
		"sweep_id":       "0195b0c4-0000-7000-8000-000000000000",
		"backoff_source": "retry_after",
		"attempt":        2,
	})
	require.NoError(t, err)

	var doc map[string]any
	require.NoError(t, json.Unmarshal(b, &doc))

	// "event" is a JSON string whose content is the event's own JSON.
	evStr, ok := doc["event"].(string)
	require.True(t, ok, "event must be a JSON string, got %T", doc["event"])
	require.Equal(t, `{"type":"WaitForRetry","data":"timeout \"upstream\" <503>"}`, evStr)
	var back statemachine.Event
	require.NoError(t, json.Unmarshal([]byte(evStr), &back))
	require.Equal(t, ev, back)

	// The timestamp is the same instant, rendered in UTC.
	require.Equal(t, "2025-03-04T00:30:00.123456789Z", doc["timestamp"])
	parsed, err := time.Parse(time.RFC3339Nano, doc["timestamp"].(string))
	require.NoError(t, err)
	require.True(t, parsed.Equal(at))
	require.Equal(t, time.UTC, parsed.Location())

	require.Equal(t, "retry-sweeper", doc["who"])
	require.Equal(t, "backoff expired", doc["why"])
	require.Equal(t, "0195b0c4-0000-7000-8000-000000000000", doc["sweep_id"])
	require.Equal(t, "retry_after", doc["backoff_source"])
	require.EqualValues(t, 2, doc["attempt"])
	require.Len(t, doc, 7)
}

func TestMetadataExactAndDeterministic(t *testing.T) {
	t.Parallel()

	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	extra := map[string]any{"who": "sweeper", "sweep_id": "s1", "backoff_source": "exponential"}

	first, err := statemachine.Metadata(statemachine.RetryEvent(), at, extra)
	require.NoError(t, err)
	require.Equal(t,
		`{"backoff_source":"exponential","event":"{\"type\":\"Retry\"}","sweep_id":"s1","timestamp":"2025-01-02T03:04:05Z","who":"sweeper"}`,
		string(first))
	for range 20 {
		again, err := statemachine.Metadata(statemachine.RetryEvent(), at, extra)
		require.NoError(t, err)
		require.Equal(t, first, again)
	}

	// No extras at all is the plain tasker-core shape.
	plain, err := statemachine.Metadata(statemachine.FailEvent("x"), at, nil)
	require.NoError(t, err)
	require.Equal(t, `{"event":"{\"type\":\"Fail\",\"data\":\"x\"}","timestamp":"2025-01-02T03:04:05Z"}`, string(plain))
}

func TestMetadataRejects(t *testing.T) {
	t.Parallel()

	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

	for _, key := range []string{"event", "timestamp"} {
		b, err := statemachine.Metadata(statemachine.RetryEvent(), at, map[string]any{key: "forged", "who": "x"})
		require.ErrorIs(t, err, statemachine.ErrReservedMetadataKey, key)
		require.Nil(t, b)
	}

	_, err := statemachine.Metadata(statemachine.Event{Type: statemachine.EventFail}, at, nil)
	require.Error(t, err, "fail without message")

	_, err = statemachine.Metadata(statemachine.RetryEvent(), time.Time{}, nil)
	require.Error(t, err, "zero timestamp")

	_, err = statemachine.Metadata(statemachine.RetryEvent(), at, map[string]any{"bad": make(chan int)})
	require.Error(t, err, "unencodable extra")
}
