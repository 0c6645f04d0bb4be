-- A partial index on the orchestrator's transition table over the current
-- waiting_for_retry rows only, by creation time: adoption finds steps other
-- writers parked without scanning every step. It does not touch
-- workflow_steps, so the orchestrator's backoff updates stay HOT-eligible.
-- Built CONCURRENTLY: the orchestrator keeps writing while it builds.

-- +goose NO TRANSACTION
-- +goose Up
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasker_sweeper_waiting_for_retry
    ON tasker.workflow_step_transitions (created_at)
    WHERE most_recent AND to_state = 'waiting_for_retry';

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS tasker.tasker_sweeper_waiting_for_retry;
