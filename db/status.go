package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// StepDue is every condition of the due rule (SPEC §7) for one step, so an
// operator can see why it is or is not due.
type StepDue struct {
	StepUUID      uuid.UUID
	State         statemachine.State
	Processed     bool
	InProcess     bool
	RetryEligible bool
	Retryable     bool
	Attempts      *int32
	MaxAttempts   *int32
	// UnmetParents counts parents not complete or resolved_manually.
	UnmetParents int
	// DueAt is when the backoff expires; when neither the backoff columns
	// nor an error transition exist it is the time the step entered its
	// current state (due at once).
	DueAt time.Time
	// DueFromBackoff says DueAt came from last_attempted_at +
	// backoff_request_seconds rather than the error-time fallback.
	DueFromBackoff bool
	DBNow          time.Time
}

// Due reports whether a sweep would move the step now, and if not, why.
func (d StepDue) Due() (bool, string) {
	switch {
	case d.State != statemachine.WaitingForRetry:
		return false, "step is " + string(d.State) + ", not waiting_for_retry"
	case d.Processed:
		return false, "step is already processed"
	case d.InProcess:
		return false, "step is in process"
	case !d.RetryEligible:
		return false, "step is not retry-eligible (attempts exhausted or not retryable): stranded until an operator acts"
	case d.UnmetParents > 0:
		return false, fmt.Sprintf("%d parent step(s) not complete or resolved_manually", d.UnmetParents)
	case d.DueAt.After(d.DBNow):
		return false, "backoff expires at " + d.DueAt.UTC().Format(time.RFC3339)
	}
	return true, "backoff expired: the next sweep moves it to pending"
}

// StepDueStatus evaluates the due rule for one step;
// statemachine.ErrStepNotFound when it does not exist.
func (s *Store) StepDueStatus(ctx context.Context, step uuid.UUID) (StepDue, error) {
	row, err := s.q.StepDueStatus(ctx, step)
	if errors.Is(err, pgx.ErrNoRows) {
		return StepDue{}, fmt.Errorf("step %s: %w", step, statemachine.ErrStepNotFound)
	}
	if err != nil {
		return StepDue{}, fmt.Errorf("step %s due status: %w", step, translate(err))
	}
	state, err := statemachine.ParseState(row.CurrentState)
	if err != nil {
		return StepDue{}, fmt.Errorf("step %s: %w", step, err)
	}
	return StepDue{
		StepUUID:       step,
		State:          state,
		Processed:      row.Processed,
		InProcess:      row.InProcess,
		RetryEligible:  row.RetryEligible,
		Retryable:      row.Retryable,
		Attempts:       row.Attempts,
		MaxAttempts:    row.MaxAttempts,
		UnmetParents:   int(row.UnmetParents),
		DueAt:          row.DueAt,
		DueFromBackoff: row.DueFromBackoff,
		DBNow:          row.DbNow,
	}, nil
}

// StepCountsByState counts steps per current state; every state is present.
func (s *Store) StepCountsByState(ctx context.Context) (map[statemachine.State]int64, error) {
	rows, err := s.q.StepCountsByState(ctx)
	if err != nil {
		return nil, fmt.Errorf("count steps by state: %w", translate(err))
	}
	counts := make(map[statemachine.State]int64, len(statemachine.States()))
	for _, st := range statemachine.States() {
		counts[st] = 0
	}
	for _, r := range rows {
		counts[statemachine.State(r.State)] = r.Steps
	}
	return counts, nil
}

// Ping checks the database answers, for readiness.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping database: %w", err)
	}
	return nil
}
