-- Pausing every replica at once: one row in the sweeper's own schema that
-- every daemon reads at the start of each sweep and before each batch, so
-- an operator's `sweeper pause` (or POST /v1/pause) stops every replica
-- moving steps within one tick, and `sweeper resume` starts them again. The
-- inline handler keeps recording failures meanwhile, and an operator's
-- explicit retry of one step still works.

-- +goose Up
CREATE TABLE IF NOT EXISTS tasker_sweeper.pause (
    id         integer PRIMARY KEY CHECK (id = 1),
    paused     boolean NOT NULL DEFAULT false,
    -- Who paused, why and since when (database clock, UTC); kept after a
    -- resume until the next pause, for the record.
    paused_by  text,
    reason     text,
    since      timestamp,
    updated_at timestamp NOT NULL DEFAULT now()
);
INSERT INTO tasker_sweeper.pause (id) VALUES (1) ON CONFLICT DO NOTHING;

-- +goose Down
DROP TABLE IF EXISTS tasker_sweeper.pause;
