package statemachine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// EventType names an event that drives a step transition. The string values
// are the variant names of tasker-core's StepEvent, because they are written
// verbatim into transition metadata that the orchestrator also reads.
type EventType string

// The twelve step event types of tasker-core.
const (
	EventEnqueue                        EventType = "Enqueue"
	EventStart                          EventType = "Start"
	EventEnqueueForOrchestration        EventType = "EnqueueForOrchestration"
	EventEnqueueAsErrorForOrchestration EventType = "EnqueueAsErrorForOrchestration"
	EventComplete                       EventType = "Complete"
	EventFail                           EventType = "Fail"
	EventWaitForRetry                   EventType = "WaitForRetry"
	EventRetry                          EventType = "Retry"
	EventResetForRetry                  EventType = "ResetForRetry"
	EventCancel                         EventType = "Cancel"
	EventCompleteManually               EventType = "CompleteManually"
	EventResolveManually                EventType = "ResolveManually"
)

// EventTypes returns every event type in a stable order, so exhaustive tests
// and validation need not repeat the list. It returns a fresh slice each
// time; callers may modify it.
func EventTypes() []EventType {
	return []EventType{
		EventEnqueue,
		EventStart,
		EventEnqueueForOrchestration,
		EventEnqueueAsErrorForOrchestration,
		EventComplete,
		EventFail,
		EventWaitForRetry,
		EventRetry,
		EventResetForRetry,
		EventCancel,
		EventCompleteManually,
		EventResolveManually,
	}
}

// Valid reports whether t is one of the twelve event types, so decoded or
// caller-built events can be rejected before they reach the table or the
// database.
func (t EventType) Valid() bool {
	switch t {
	case EventEnqueue, EventStart, EventEnqueueForOrchestration,
		EventEnqueueAsErrorForOrchestration, EventComplete, EventFail,
		EventWaitForRetry, EventRetry, EventResetForRetry, EventCancel,
		EventCompleteManually, EventResolveManually:
		return true
	}
	return false
}

// String returns the tasker-core variant name, so an EventType logs the way
// it is stored.
func (t EventType) String() string { return string(t) }

// carriesMessage reports whether events of type t must carry a message. Only
// Fail and WaitForRetry do; tasker-core declares them as String variants and
// refuses to decode them without one.
func (t EventType) carriesMessage() bool {
	return t == EventFail || t == EventWaitForRetry
}

// Event is a step event as recorded in transition metadata. Data is the
// failure message for Fail and WaitForRetry and nil for every other type;
// it is a pointer so "no data" and "empty message" stay distinct, as they are
// in tasker-core's encoding.
//
// tasker-core's Complete, CompleteManually and the two EnqueueFor*
// variants may carry an arbitrary JSON payload; this sidecar never writes
// one, so Event models them as unit events.
type Event struct {
	Type EventType
	Data *string
}

// RetryEvent is the event the sweep records when a step's backoff has expired
// and it goes back to pending.
func RetryEvent() Event { return Event{Type: EventRetry} }

// WaitForRetryEvent is the event the failure handler records when a retryable
// failure parks a step until its backoff expires; msg is the failure that
// caused it, kept for operators reading the history.
func WaitForRetryEvent(msg string) Event { return Event{Type: EventWaitForRetry, Data: &msg} }

// FailEvent is the event the failure handler records when a failure is
// permanent or the step is out of attempts; msg is the failure that caused it.
func FailEvent(msg string) Event { return Event{Type: EventFail, Data: &msg} }

// validate rejects events tasker-core could not decode, so a malformed event
// fails here instead of poisoning the transition history.
func (e Event) validate() error {
	if !e.Type.Valid() {
		return fmt.Errorf("unknown event type %q", string(e.Type))
	}
	if e.Type.carriesMessage() && e.Data == nil {
		return fmt.Errorf("%s event needs a message", e.Type)
	}
	if !e.Type.carriesMessage() && e.Data != nil {
		return fmt.Errorf("%s event takes no data", e.Type)
	}
	return nil
}

// MarshalJSON encodes e the way tasker-core's serde(tag = "type",
// content = "data") does: {"type":"Retry"} for unit events and
// {"type":"Fail","data":"<msg>"} for events with a message, keys in that
// order and without spaces. HTML characters are not escaped, matching
// serde_json; note that the standard encoder re-escapes them when e is
// encoded through json.Marshal rather than by calling this method directly.
// Invalid UTF-8 in the message is replaced with U+FFFD, as jsonb requires
// valid UTF-8 anyway.
func (e Event) MarshalJSON() ([]byte, error) {
	if err := e.validate(); err != nil {
		return nil, fmt.Errorf("encode step event: %w", err)
	}
	var buf bytes.Buffer
	buf.WriteString(`{"type":`)
	if err := writeJSONString(&buf, string(e.Type)); err != nil {
		return nil, fmt.Errorf("encode step event: %w", err)
	}
	if e.Data != nil {
		buf.WriteString(`,"data":`)
		if err := writeJSONString(&buf, *e.Data); err != nil {
			return nil, fmt.Errorf("encode step event: %w", err)
		}
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// UnmarshalJSON decodes the adjacently tagged form written by MarshalJSON or
// by tasker-core. A null or absent "data" is accepted for events without a
// message; Fail and WaitForRetry require a string. Unknown types and
// non-string payloads are errors rather than silently dropped, because a
// caller acting on a half-understood event is worse than one that stops.
// Keys are matched exactly (unlike encoding/json's default) and unknown keys
// are ignored, as serde does. A bare JSON null leaves e unchanged, following
// the encoding/json convention.
func (e *Event) UnmarshalJSON(b []byte) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		return nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return fmt.Errorf("decode step event: %w", err)
	}
	rawType, ok := fields["type"]
	if !ok {
		return errors.New("decode step event: missing \"type\"")
	}
	var typ string
	if err := json.Unmarshal(rawType, &typ); err != nil || isJSONNull(rawType) {
		return fmt.Errorf("decode step event: \"type\" is not a string: %s", rawType)
	}
	ev := Event{Type: EventType(typ)}
	if !ev.Type.Valid() {
		return fmt.Errorf("decode step event: unknown event type %q", typ)
	}
	rawData, hasData := fields["data"]
	hasData = hasData && !isJSONNull(rawData)
	switch {
	case ev.Type.carriesMessage() && !hasData:
		return fmt.Errorf("decode step event: %s event needs a message", ev.Type)
	case ev.Type.carriesMessage():
		var msg string
		if err := json.Unmarshal(rawData, &msg); err != nil {
			return fmt.Errorf("decode step event: %s message is not a string: %w", ev.Type, err)
		}
		ev.Data = &msg
	case hasData:
		return fmt.Errorf("decode step event: %s event takes no data, got %s", ev.Type, rawData)
	}
	*e = ev
	return nil
}

// writeJSONString appends s as a JSON string without HTML escaping, so the
// bytes match what serde_json writes for the same text.
func writeJSONString(buf *bytes.Buffer, s string) error {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		return err
	}
	buf.Truncate(buf.Len() - 1) // Encode appends a newline.
	return nil
}

func isJSONNull(raw json.RawMessage) bool {
	return bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}
