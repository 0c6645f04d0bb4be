-- Sweeper-owned objects (issue: O(due) sweeps). Everything here lives in the
-- tasker_sweeper schema, except one partial index on the orchestrator's
-- transition table (next file); nothing changes a tasker table's columns,
-- constraints or triggers, and every statement is safe to re-run.
--
-- retry_schedule is the sweep's work list: one row per step parked in
-- waiting_for_retry, keyed by the time its backoff expires. The inline handler
-- writes it in the same transaction as the transition; the sweep adopts steps
-- parked by other writers. Rows are hints: the sweep re-checks the full due
-- rule against the tasker tables before moving anything.

-- +goose Up
-- `sweeper migrate` creates the schema before goose writes its version table
-- there; the statement stays so the file (and sqlc, which reads it) is
-- complete on its own.
CREATE SCHEMA IF NOT EXISTS tasker_sweeper;

CREATE TABLE IF NOT EXISTS tasker_sweeper.retry_schedule (
    workflow_step_uuid uuid PRIMARY KEY,
    -- When the step's backoff expires (database clock, UTC).
    due_at             timestamp NOT NULL,
    -- Not retry-eligible when last evaluated: only an operator can move it.
    stranded           boolean NOT NULL DEFAULT false,
    updated_at         timestamp NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS retry_schedule_due_at ON tasker_sweeper.retry_schedule (due_at);
CREATE INDEX IF NOT EXISTS retry_schedule_stranded
    ON tasker_sweeper.retry_schedule (workflow_step_uuid) WHERE stranded;

-- Where adoption of other writers' waiting steps has got to (one row).
CREATE TABLE IF NOT EXISTS tasker_sweeper.adoption (
    id             integer PRIMARY KEY CHECK (id = 1),
    -- Waiting transitions created before this (minus a safety margin) have
    -- been adopted.
    watermark      timestamp,
    -- The last pass over every waiting step.
    last_full_pass timestamp
);
INSERT INTO tasker_sweeper.adoption (id) VALUES (1) ON CONFLICT DO NOTHING;

-- +goose Down
-- The schema stays: goose's version tables live in it.
DROP TABLE IF EXISTS tasker_sweeper.adoption;
DROP TABLE IF EXISTS tasker_sweeper.retry_schedule;
