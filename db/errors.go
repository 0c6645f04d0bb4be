package db

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// ErrSerialization means the database aborted the transaction to keep it
// serializable (SQLSTATE 40001) or to break a deadlock (40P01); the whole
// transaction may be retried.
var ErrSerialization = errors.New("transaction aborted by the database, retry it")

// ErrQueryCanceled means the server cancelled a statement (SQLSTATE 57014),
// usually because a timeout or the caller's context expired.
var ErrQueryCanceled = errors.New("query canceled")

// SQLSTATE codes the store gives a meaning of its own.
const (
	codeUniqueViolation      = "23505"
	codeSerializationFailure = "40001"
	codeDeadlockDetected     = "40P01"
	codeQueryCanceled        = "57014"
)

// translate is the one error funnel at the database boundary: driver errors
// with a meaning for callers become the project's sentinels (still wrapping
// the original for logs); everything else passes through unchanged.
func translate(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch pgErr.Code {
	case codeUniqueViolation:
		// The partial unique index on (workflow_step_uuid, most_recent) is how
		// the schema says "another writer appended a current transition first".
		if pgErr.TableName == "workflow_step_transitions" && strings.Contains(pgErr.ConstraintName, "most_recent") {
			return fmt.Errorf("%w (%s)", statemachine.ErrLostRace, pgErr.ConstraintName)
		}
	case codeSerializationFailure, codeDeadlockDetected:
		return fmt.Errorf("%w: %w", ErrSerialization, err)
	case codeQueryCanceled:
		return fmt.Errorf("%w: %w", ErrQueryCanceled, err)
	}
	return err
}
