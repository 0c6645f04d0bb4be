package db

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// codeUniqueViolation is the one SQLSTATE the store gives a meaning of its
// own.
const codeUniqueViolation = "23505"

// asSentinel is the one error funnel at the database boundary: driver errors
// with a meaning for callers become the project's sentinels (still wrapping
// the original for logs); everything else passes through unchanged.
func asSentinel(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	// The partial unique index on (workflow_step_uuid, most_recent) is how the
	// schema says "another writer appended a current transition first".
	if pgErr.Code == codeUniqueViolation && pgErr.TableName == "workflow_step_transitions" &&
		strings.Contains(pgErr.ConstraintName, "most_recent") {
		return fmt.Errorf("%w: %w", statemachine.ErrLostRace, pgErr)
	}
	return err
}
