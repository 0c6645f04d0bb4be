package sweeper

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// The retry queue as an operator sees it: which steps wait, which are due,
// which are stranded or in error, why each one is (not) due, and what last
// failed. The store lists them (StepLister); Operator changes them.

// ListState is what a listing selects.
type ListState string

const (
	// ListWaiting is every step in waiting_for_retry.
	ListWaiting ListState = "waiting_for_retry"
	// ListDue is the waiting steps the due rule calls due now.
	ListDue ListState = "due"
	// ListStranded is the waiting steps that are not retry-eligible.
	ListStranded ListState = "stranded"
	// ListError is every step in error.
	ListError ListState = "error"
)

// ListStates are the states a listing accepts, in the order help texts
// name them.
func ListStates() []ListState {
	return []ListState{ListWaiting, ListDue, ListStranded, ListError}
}

// Listing limits.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
	// HistoryLimit is how many transitions a step's detail shows.
	HistoryLimit = 20
)

// StepQuery asks for one page of a listing.
type StepQuery struct {
	State ListState
	// Task and Name, when set, keep the steps of that task, of that step name.
	Task *uuid.UUID
	Name string
	// OlderThan, when positive, keeps the steps that entered their current
	// state at least this long ago.
	OlderThan time.Duration
	// Limit is the page size (1..MaxListLimit; 0 means DefaultListLimit).
	Limit int
	// Cursor is a page's NextCursor: the listing goes on after it.
	Cursor string
}

// InputError is a request that cannot be answered as asked (an unknown
// state, a bad cursor, a limit out of range, no attempts to grant): a 400,
// or exit 2. Field names the parameter.
type InputError struct {
	Field   string
	Problem string
}

func (e *InputError) Error() string { return e.Field + ": " + e.Problem }

// Normalize checks q and fills its defaults.
func (q StepQuery) Normalize() (StepQuery, error) {
	switch q.State {
	case "":
		q.State = ListWaiting
	case ListWaiting, ListDue, ListStranded, ListError:
	default:
		return q, &InputError{Field: "state", Problem: fmt.Sprintf("unknown state %q: want one of %s", q.State, listStateNames())}
	}
	switch {
	case q.Limit == 0:
		q.Limit = DefaultListLimit
	case q.Limit < 1 || q.Limit > MaxListLimit:
		return q, &InputError{Field: "limit", Problem: fmt.Sprintf("must be between 1 and %d, got %d", MaxListLimit, q.Limit)}
	}
	if q.OlderThan < 0 {
		return q, &InputError{Field: "older_than", Problem: fmt.Sprintf("must not be negative, got %s", q.OlderThan)}
	}
	if q.Cursor != "" {
		if _, err := DecodeCursor(q.Cursor, q.State); err != nil {
			return q, err
		}
	}
	return q, nil
}

func listStateNames() string {
	names := make([]string, 0, 4)
	for _, s := range ListStates() {
		names = append(names, string(s))
	}
	return strings.Join(names, ", ")
}

// Cursor is the sort key of the last step of a page: the next page starts
// after it. Steps listed in due order carry their due time (as the
// database spells it, ±infinity included), the others only their uuid.
type Cursor struct {
	State ListState `json:"s"`
	DueAt string    `json:"d,omitempty"`
	Step  uuid.UUID `json:"id"`
}

// Encode is the opaque form a page hands out: base64 of the sort key.
func (c Cursor) Encode() string {
	raw, _ := json.Marshal(c) // strings and a uuid: cannot fail
	return base64.RawURLEncoding.EncodeToString(raw)
}

// DecodeCursor reads a cursor a listing of state handed out; anything
// else is an *InputError.
func DecodeCursor(s string, state ListState) (Cursor, error) {
	bad := func(why string) (Cursor, error) {
		return Cursor{}, &InputError{Field: "cursor", Problem: "invalid cursor: " + why + " (pass a page's next_cursor unchanged)"}
	}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return bad("not base64")
	}
	var c Cursor
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return bad("not a sort key")
	}
	if c.State != state {
		return bad(fmt.Sprintf("it continues a listing of %q, not %q", c.State, state))
	}
	if c.DueAt != "" && c.DueAt != "infinity" && c.DueAt != "-infinity" {
		if _, err := time.Parse("2006-01-02T15:04:05.000000", c.DueAt); err != nil {
			return bad("its due time does not parse")
		}
	}
	return c, nil
}

// LastError is a step's latest failure: from the metadata of its latest
// failure transition (the inline handler's category and code, the event's
// message), else from the orchestrator's step results.
type LastError struct {
	Category string `json:"category"`
	Code     string `json:"code"`
	Message  string `json:"message"`
}

// StepItem is one step of a listing.
type StepItem struct {
	StepUUID    uuid.UUID          `json:"step_uuid"`
	TaskUUID    uuid.UUID          `json:"task_uuid"`
	Name        string             `json:"name"`
	Namespace   string             `json:"namespace"`
	TaskName    string             `json:"task_name"`
	State       statemachine.State `json:"state"`
	Attempts    *int32             `json:"attempts"`
	MaxAttempts *int32             `json:"max_attempts"`
	Retryable   bool               `json:"retryable"`
	// DueAt is when the backoff expires (waiting steps only).
	DueAt *time.Time `json:"due_at"`
	Due   bool       `json:"due"`
	// WhyNotDue is the due rule's reason, empty when due.
	WhyNotDue string `json:"why_not_due"`
	// ParkedBy says who parked a waiting step: "handler" (the inline
	// handler), else the actor its transition names, else "other".
	ParkedBy  string     `json:"parked_by"`
	LastError *LastError `json:"last_error"`
	// EnteredAt is when the step entered its current state.
	EnteredAt *time.Time `json:"entered_at"`

	// The rule's conditions and the row as read, for the operations.
	Rule    StepDue `json:"-"`
	SortKey int32   `json:"-"`
}

// StepPage is one page of a listing; NextCursor is empty on the last.
type StepPage struct {
	Steps      []StepItem `json:"steps"`
	NextCursor string     `json:"next_cursor,omitempty"`
}

// HistoryEntry is one transition of a step, with who wrote it and why.
type HistoryEntry struct {
	SortKey    int32               `json:"sort_key"`
	From       *statemachine.State `json:"from_state"`
	To         statemachine.State  `json:"to_state"`
	At         *time.Time          `json:"at"`
	Event      string              `json:"event"`
	Message    string              `json:"message,omitempty"`
	Who        string              `json:"who"`
	Why        string              `json:"why"`
	Operation  string              `json:"operation,omitempty"`
	MostRecent bool                `json:"most_recent"`
	// Manual are the manual changes recorded on this row without a state
	// change (grants).
	Manual []map[string]any `json:"manual_changes,omitempty"`
}

// StepDetail is a step with its latest transitions, newest first.
type StepDetail struct {
	StepItem
	History []HistoryEntry `json:"history"`
}

// Pause is the replicas' pause switch: while Paused, no daemon moves a step
// (the inline handler still records failures, and an operator's retry of
// one step still works).
type Pause struct {
	Paused bool       `json:"paused"`
	By     string     `json:"by"`
	Reason string     `json:"reason"`
	Since  *time.Time `json:"since"`
}

// PauseReader is implemented by stores that know the pause switch. A
// store without the switch installed reads "not paused".
type PauseReader interface {
	PauseState(ctx context.Context) (Pause, error)
}

// ErrRefused means an operation is not legal for the step as it is (a
// terminal step resolved or cancelled, a grant on a step not waiting): a
// 409, or exit 3. The error says why.
var ErrRefused = errors.New("refused")
