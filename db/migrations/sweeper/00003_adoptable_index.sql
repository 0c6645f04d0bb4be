-- Narrows adoption's partial index to the waiting rows the schedule may be
-- missing. The inline handler writes its schedule row in the same statement
-- as the waiting_for_retry transition and marks that transition's metadata
-- with "sweeper_scheduled": true; those rows stay out of the index, so an
-- incremental adoption pass reads only the steps other writers parked, not
-- every step the handler parked in the last minute (at 1,600 parks/s that
-- was ~100k rows and ~250 ms per sweep). A handler running without the
-- sweeper-owned objects does not mark its rows: they are adopted once the
-- objects are installed.
-- Built CONCURRENTLY: the orchestrator keeps writing while it builds.

-- +goose NO TRANSACTION
-- +goose Up
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasker_sweeper_waiting_unscheduled
    ON tasker.workflow_step_transitions (created_at)
    WHERE most_recent AND to_state = 'waiting_for_retry' AND (metadata ->> 'sweeper_scheduled') IS NULL;

DROP INDEX CONCURRENTLY IF EXISTS tasker.tasker_sweeper_waiting_for_retry;

-- +goose Down
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasker_sweeper_waiting_for_retry
    ON tasker.workflow_step_transitions (created_at)
    WHERE most_recent AND to_state = 'waiting_for_retry';

DROP INDEX CONCURRENTLY IF EXISTS tasker.tasker_sweeper_waiting_unscheduled;
