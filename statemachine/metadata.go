package statemachine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ErrReservedMetadataKey reports an extra metadata key that would overwrite
// one of the keys tasker-core itself reads ("event", "timestamp").
var ErrReservedMetadataKey = errors.New("reserved transition metadata key")

// Metadata builds the transitions.metadata jsonb document. "event" holds the
// event's JSON as a JSON string, not a nested object, because that is what
// tasker-core writes and parses; "timestamp" is at in UTC formatted with
// time.RFC3339Nano. extra adds this sidecar's provenance keys (who, why,
// sweep_id, backoff_source, ...); it may not use "event" or "timestamp".
// The clock is the caller's so that tests can pin it; a zero at is rejected
// because it always means a caller forgot to set it. Output is deterministic
// (keys sorted) so identical inputs produce identical rows.
func Metadata(ev Event, at time.Time, extra map[string]any) ([]byte, error) {
	if at.IsZero() {
		return nil, errors.New("encode transition metadata: zero timestamp")
	}
	evJSON, err := ev.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encode transition metadata: %w", err)
	}
	doc := make(map[string]any, len(extra)+2)
	for k, v := range extra {
		if k == "event" || k == "timestamp" {
			return nil, fmt.Errorf("encode transition metadata: key %q: %w", k, ErrReservedMetadataKey)
		}
		doc[k] = v
	}
	doc["event"] = string(evJSON)
	doc["timestamp"] = at.UTC().Format(time.RFC3339Nano)

	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("encode transition metadata: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
