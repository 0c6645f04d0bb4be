// Package db is the PostgreSQL store: it runs the sqlc-generated queries over
// a pgx pool, maps rows into the domain types of statemachine, handling and
// sweeper, and maps driver errors into the project's sentinels. It also owns
// the park listener (LISTEN on a connection of its own). Generated types
// never leave this package.
package db

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tasker-sweeper/retrysweeper/db/internal/dbsqlc"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// Store reads and writes tasker steps through one pool. How it sweeps is
// chosen once, the first time the database answers (see Path): the schedule
// path when the sweeper-owned objects are installed, the scan path
// otherwise. Each path is its own type (scheduleStore, scanStore); Store
// hands every path-specific call to the chosen one.
type Store struct {
	base
	chosen atomic.Pointer[pathStore]
	queue  queueState
}

// base is what both paths share: the pool, the queries and the clock.
type base struct {
	pool *pgxpool.Pool
	q    *dbsqlc.Queries
	// clock, when set, pins the time every due decision is made at (tests).
	clock func() time.Time
	// adoptionMargin is how far behind its watermark adoption looks again.
	adoptionMargin time.Duration
}

// Option customises a Store.
type Option func(*Store)

// WithClock makes every due decision use clock instead of the database's
// now(), so tests can pin time instead of rewriting rows. Writes (created_at,
// last_attempted_at) still use the database clock.
func WithClock(clock func() time.Time) Option { return func(s *Store) { s.clock = clock } }

// WithAdoptionMargin sets how far behind its watermark each adoption pass
// looks again (default one minute: writers whose clock runs behind the
// database's). Tests set 0 to see the open-transaction bound alone.
func WithAdoptionMargin(d time.Duration) Option { return func(s *Store) { s.adoptionMargin = d } }

// NewStore wraps a pool; the pool should come from Connect (UTC sessions).
func NewStore(pool *pgxpool.Pool, opts ...Option) *Store {
	s := &Store{base: base{pool: pool, q: dbsqlc.New(pool), adoptionMargin: defaultAdoptionMargin}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Pool is the underlying pool, for health checks and shutdown.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// now is the pinned clock, or nil: the queries then use now().
func (b *base) now() *time.Time {
	if b.clock == nil {
		return nil
	}
	t := b.clock().UTC()
	return &t
}

// StepRecord is one workflow step as the sweeper sees it: the retry columns,
// the current state and the database clock at the moment it was read.
type StepRecord struct {
	StepUUID      uuid.UUID
	TaskUUID      uuid.UUID
	NamedStepUUID uuid.UUID
	Name          string
	Retryable     bool
	MaxAttempts   *int32
	InProcess     bool
	Processed     bool
	Attempts      *int32
	// LastAttemptedAt is nil when unset or not finite (±infinity).
	LastAttemptedAt       *time.Time
	BackoffRequestSeconds *int32
	State                 statemachine.State
	// SortKey is the sort_key of the current transition (0 when there is none).
	SortKey int32
	// DBNow is the database's now() when the row was read, in UTC.
	DBNow time.Time
}

// GetStep reads a step and its current state; statemachine.ErrStepNotFound
// when no such step exists.
func (s *base) GetStep(ctx context.Context, stepUUID uuid.UUID) (StepRecord, error) {
	row, err := s.q.StepGet(ctx, stepUUID)
	if errors.Is(err, pgx.ErrNoRows) {
		return StepRecord{}, fmt.Errorf("get step %s: %w", stepUUID, statemachine.ErrStepNotFound)
	}
	if err != nil {
		return StepRecord{}, fmt.Errorf("get step %s: %w", stepUUID, asSentinel(err))
	}
	state, err := statemachine.ParseState(row.CurrentState)
	if err != nil {
		return StepRecord{}, fmt.Errorf("get step %s: %w", stepUUID, err)
	}
	return StepRecord{
		StepUUID:              row.WorkflowStepUUID,
		TaskUUID:              row.TaskUUID,
		NamedStepUUID:         row.NamedStepUUID,
		Name:                  row.StepName,
		Retryable:             row.Retryable,
		MaxAttempts:           row.MaxAttempts,
		InProcess:             row.InProcess,
		Processed:             row.Processed,
		Attempts:              row.Attempts,
		LastAttemptedAt:       row.LastAttemptedAt,
		BackoffRequestSeconds: row.BackoffRequestSeconds,
		State:                 state,
		SortKey:               row.CurrentSortKey,
		DBNow:                 row.DbNow,
	}, nil
}

// Transition asks for one state change of one step: From is the state the
// caller read, and the write only happens if it is still current.
type Transition struct {
	StepUUID uuid.UUID
	From     statemachine.State
	Event    statemachine.Event
	// Provenance keys merged into the transition metadata (who, why, ...).
	Provenance map[string]any
}

// target is the state tr leads to and the metadata of its row; an illegal
// (state, event) pair is statemachine.ErrInvalidTransition.
func (tr Transition) target() (statemachine.State, []byte, error) {
	to, err := statemachine.Next(tr.From, tr.Event.Type)
	if err != nil {
		return "", nil, err
	}
	meta, err := statemachine.Metadata(tr.Event, time.Now(), tr.Provenance)
	return to, meta, err
}

// TransitionResult describes the row a successful Transition appended.
type TransitionResult struct {
	TransitionUUID uuid.UUID
	From           statemachine.State
	To             statemachine.State
	SortKey        int32
	CreatedAt      time.Time
}

// WriteTransition appends a transition as a compare-and-swap on tr.From, in
// one statement. An illegal (state, event) pair is rejected before any I/O
// (statemachine.ErrInvalidTransition); a state that changed since it was read,
// or a concurrent writer, gives statemachine.ErrLostRace and writes nothing.
func (s *base) WriteTransition(ctx context.Context, tr Transition) (TransitionResult, error) {
	return writeTransition(ctx, s.q, tr)
}

// writeTransition runs the CAS write on q, which may be bound to a larger
// transaction (the inline handler writes the backoff columns in the same one).
func writeTransition(ctx context.Context, q *dbsqlc.Queries, tr Transition) (TransitionResult, error) {
	to, meta, err := tr.target()
	if err != nil {
		return TransitionResult{}, fmt.Errorf("transition step %s: %w", tr.StepUUID, err)
	}
	row, err := q.TransitionWrite(ctx, dbsqlc.TransitionWriteParams{
		WorkflowStepUUID: tr.StepUUID,
		FromState:        string(tr.From),
		ToState:          string(to),
		Metadata:         meta,
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return TransitionResult{}, fmt.Errorf("transition step %s from %s: state changed: %w",
			tr.StepUUID, tr.From, statemachine.ErrLostRace)
	}
	if err != nil {
		return TransitionResult{}, fmt.Errorf("transition step %s from %s: %w", tr.StepUUID, tr.From, asSentinel(err))
	}
	return TransitionResult{
		TransitionUUID: row.WorkflowStepTransitionUUID,
		From:           tr.From,
		To:             to,
		SortKey:        row.SortKey,
		CreatedAt:      row.CreatedAt,
	}, nil
}
