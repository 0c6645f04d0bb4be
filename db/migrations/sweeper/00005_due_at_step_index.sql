-- The schedule's due-time index gains the step as a second column, so a
-- listing of waiting steps in due order (GET /v1/steps, `sweeper steps
-- list`) walks it in the order of its keyset, (due_at, step), and a page
-- costs in proportion to its size whatever the schedule holds. Every query
-- that probes due_at alone uses the wider index as it used the old one,
-- which goes: the schedule keeps one due-time index. Built CONCURRENTLY:
-- the inline handler keeps parking steps while it builds.

-- +goose NO TRANSACTION
-- +goose Up
CREATE INDEX CONCURRENTLY IF NOT EXISTS retry_schedule_due_at_step
    ON tasker_sweeper.retry_schedule (due_at, workflow_step_uuid);

DROP INDEX CONCURRENTLY IF EXISTS tasker_sweeper.retry_schedule_due_at;

-- +goose Down
CREATE INDEX CONCURRENTLY IF NOT EXISTS retry_schedule_due_at ON tasker_sweeper.retry_schedule (due_at);

DROP INDEX CONCURRENTLY IF EXISTS tasker_sweeper.retry_schedule_due_at_step;
