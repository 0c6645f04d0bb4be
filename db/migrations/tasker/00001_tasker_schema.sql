-- The tasker-compatible subset of the orchestrator's schema.
--
-- The orchestrator owns these tables and creates them with its own migrations;
-- this file exists so the sweeper can be tested, demonstrated and run standalone
-- against the same shapes: same names, columns, NOT NULLs, defaults, CHECKs,
-- foreign keys and the indexes the readiness rule relies on. `sweeper migrate`
-- applies it only when asked to (--tasker-schema); it never runs against a
-- database whose tasker tables were created by the orchestrator.

-- +goose Up
CREATE SCHEMA IF NOT EXISTS tasker;

-- PostgreSQL 15 has no built-in UUIDv7 generator. This one takes a random v4
-- UUID, overwrites the first 48 bits with the Unix time in milliseconds and
-- sets the version nibble to 7; the variant bits of v4 and v7 are the same.
-- +goose StatementBegin
CREATE FUNCTION tasker.uuid_generate_v7() RETURNS uuid
LANGUAGE plpgsql VOLATILE PARALLEL SAFE AS $$
DECLARE
    unix_ms bytea := substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3);
    raw     bytea := uuid_send(gen_random_uuid());
BEGIN
    raw := overlay(raw PLACING unix_ms FROM 1 FOR 6);
    raw := set_byte(raw, 6, (get_byte(raw, 6) & 15) | 112);
    RETURN encode(raw, 'hex')::uuid;
END
$$;
-- +goose StatementEnd

CREATE TABLE tasker.task_namespaces (
    task_namespace_uuid uuid DEFAULT tasker.uuid_generate_v7() NOT NULL PRIMARY KEY,
    name                varchar(64) NOT NULL,
    description         varchar(255),
    created_at          timestamp(6) without time zone NOT NULL,
    updated_at          timestamp(6) without time zone NOT NULL,
    CONSTRAINT task_namespaces_name_unique UNIQUE (name)
);

CREATE TABLE tasker.named_tasks (
    named_task_uuid     uuid DEFAULT tasker.uuid_generate_v7() NOT NULL PRIMARY KEY,
    task_namespace_uuid uuid NOT NULL REFERENCES tasker.task_namespaces (task_namespace_uuid),
    name                varchar(64) NOT NULL,
    description         varchar(255),
    version             varchar(16) DEFAULT '0.1.0' NOT NULL,
    configuration       jsonb DEFAULT '{}'::jsonb,
    created_at          timestamp(6) without time zone NOT NULL,
    updated_at          timestamp(6) without time zone NOT NULL,
    CONSTRAINT named_tasks_namespace_name_version_unique UNIQUE (task_namespace_uuid, name, version)
);

CREATE TABLE tasker.tasks (
    task_uuid             uuid DEFAULT tasker.uuid_generate_v7() NOT NULL PRIMARY KEY,
    named_task_uuid       uuid NOT NULL REFERENCES tasker.named_tasks (named_task_uuid),
    complete              boolean DEFAULT false NOT NULL,
    requested_at          timestamp without time zone NOT NULL,
    completed_at          timestamp without time zone,
    initiator             varchar(128),
    source_system         varchar(128),
    reason                varchar(128),
    tags                  jsonb,
    context               jsonb,
    identity_hash         varchar(128) NOT NULL,
    created_at            timestamp(6) without time zone NOT NULL,
    updated_at            timestamp(6) without time zone NOT NULL,
    priority              integer DEFAULT 0 NOT NULL,
    correlation_id        uuid NOT NULL,
    parent_correlation_id uuid
);

CREATE TABLE tasker.task_transitions (
    task_transition_uuid uuid DEFAULT tasker.uuid_generate_v7() NOT NULL PRIMARY KEY,
    task_uuid            uuid NOT NULL REFERENCES tasker.tasks (task_uuid),
    to_state             varchar NOT NULL,
    from_state           varchar,
    metadata             jsonb DEFAULT '{}'::jsonb,
    sort_key             integer NOT NULL,
    most_recent          boolean DEFAULT false NOT NULL,
    created_at           timestamp(6) without time zone NOT NULL,
    updated_at           timestamp(6) without time zone NOT NULL,
    processor_uuid       uuid,
    transition_metadata  jsonb DEFAULT '{}'::jsonb,
    CONSTRAINT chk_task_transitions_to_state CHECK (to_state IN (
        'pending', 'initializing', 'enqueuing_steps', 'steps_in_process', 'evaluating_results',
        'waiting_for_dependencies', 'waiting_for_retry', 'blocked_by_failures', 'complete', 'error',
        'cancelled', 'resolved_manually')),
    CONSTRAINT chk_task_transitions_from_state CHECK (from_state IS NULL OR from_state IN (
        'pending', 'initializing', 'enqueuing_steps', 'steps_in_process', 'evaluating_results',
        'waiting_for_dependencies', 'waiting_for_retry', 'blocked_by_failures', 'complete', 'error',
        'cancelled', 'resolved_manually'))
);

CREATE TABLE tasker.named_steps (
    named_step_uuid uuid DEFAULT tasker.uuid_generate_v7() NOT NULL PRIMARY KEY,
    name            varchar(128) NOT NULL,
    description     varchar(255),
    created_at      timestamp(6) without time zone NOT NULL,
    updated_at      timestamp(6) without time zone NOT NULL,
    CONSTRAINT named_steps_name_unique UNIQUE (name)
);

CREATE TABLE tasker.workflow_steps (
    workflow_step_uuid      uuid DEFAULT tasker.uuid_generate_v7() NOT NULL PRIMARY KEY,
    task_uuid               uuid NOT NULL REFERENCES tasker.tasks (task_uuid),
    named_step_uuid         uuid NOT NULL REFERENCES tasker.named_steps (named_step_uuid),
    retryable               boolean DEFAULT true NOT NULL,
    max_attempts            integer DEFAULT 3,
    in_process              boolean DEFAULT false NOT NULL,
    processed               boolean DEFAULT false NOT NULL,
    processed_at            timestamp without time zone,
    attempts                integer,
    last_attempted_at       timestamp without time zone,
    backoff_request_seconds integer,
    inputs                  jsonb,
    results                 jsonb,
    created_at              timestamp(6) without time zone NOT NULL,
    updated_at              timestamp(6) without time zone NOT NULL,
    priority                integer DEFAULT 0 NOT NULL,
    checkpoint              jsonb,
    CONSTRAINT workflow_steps_task_named_step_unique UNIQUE (task_uuid, named_step_uuid)
);

CREATE TABLE tasker.workflow_step_edges (
    workflow_step_edge_uuid uuid DEFAULT tasker.uuid_generate_v7() NOT NULL PRIMARY KEY,
    from_step_uuid          uuid NOT NULL REFERENCES tasker.workflow_steps (workflow_step_uuid),
    to_step_uuid            uuid NOT NULL REFERENCES tasker.workflow_steps (workflow_step_uuid),
    name                    varchar NOT NULL,
    created_at              timestamp(6) without time zone NOT NULL,
    updated_at              timestamp(6) without time zone NOT NULL
);

CREATE TABLE tasker.workflow_step_transitions (
    workflow_step_transition_uuid uuid DEFAULT tasker.uuid_generate_v7() NOT NULL PRIMARY KEY,
    workflow_step_uuid            uuid NOT NULL REFERENCES tasker.workflow_steps (workflow_step_uuid),
    to_state                      varchar NOT NULL,
    from_state                    varchar,
    metadata                      jsonb DEFAULT '{}'::jsonb,
    sort_key                      integer NOT NULL,
    most_recent                   boolean DEFAULT false NOT NULL,
    created_at                    timestamp(6) without time zone NOT NULL,
    updated_at                    timestamp(6) without time zone NOT NULL,
    CONSTRAINT chk_workflow_step_transitions_to_state CHECK (to_state IN (
        'pending', 'enqueued', 'in_progress', 'enqueued_for_orchestration',
        'enqueued_as_error_for_orchestration', 'waiting_for_retry', 'complete', 'error',
        'cancelled', 'resolved_manually')),
    CONSTRAINT chk_workflow_step_transitions_from_state CHECK (from_state IS NULL OR from_state IN (
        'pending', 'enqueued', 'in_progress', 'enqueued_for_orchestration',
        'enqueued_as_error_for_orchestration', 'waiting_for_retry', 'complete', 'error',
        'cancelled', 'resolved_manually'))
);

-- At most one current transition per step and per task: the sweeper relies on
-- this index to detect a concurrent writer (a unique violation is a lost race).
CREATE UNIQUE INDEX idx_workflow_step_transitions_uuid_most_recent
    ON tasker.workflow_step_transitions (workflow_step_uuid, most_recent) WHERE most_recent;
CREATE UNIQUE INDEX idx_task_transitions_uuid_most_recent
    ON tasker.task_transitions (task_uuid, most_recent) WHERE most_recent;

-- The orchestrator's lookup indexes that the readiness rule and the sweep use.
CREATE INDEX idx_workflow_step_transitions_most_recent
    ON tasker.workflow_step_transitions (most_recent) WHERE most_recent;
CREATE INDEX idx_workflow_step_transitions_step_uuid
    ON tasker.workflow_step_transitions (workflow_step_uuid);
CREATE INDEX idx_workflow_step_transitions_state_lookup
    ON tasker.workflow_step_transitions (workflow_step_uuid, to_state, most_recent) WHERE most_recent;
CREATE INDEX idx_workflow_step_transitions_uuid_sort_key
    ON tasker.workflow_step_transitions (workflow_step_uuid, sort_key);
CREATE INDEX idx_task_transitions_task_uuid ON tasker.task_transitions (task_uuid);
CREATE INDEX idx_workflow_step_edges_from_step ON tasker.workflow_step_edges (from_step_uuid);
CREATE INDEX idx_workflow_step_edges_to_step ON tasker.workflow_step_edges (to_step_uuid);
CREATE INDEX idx_workflow_steps_task_uuid ON tasker.workflow_steps (task_uuid);
CREATE INDEX idx_workflow_steps_named_step_uuid ON tasker.workflow_steps (named_step_uuid);
CREATE INDEX idx_workflow_steps_ready_covering
    ON tasker.workflow_steps (task_uuid, processed, in_process)
    INCLUDE (workflow_step_uuid, attempts, max_attempts, retryable) WHERE processed = false;
CREATE INDEX idx_workflow_steps_retry_logic ON tasker.workflow_steps (attempts, max_attempts, retryable);
CREATE INDEX idx_named_tasks_namespace_uuid ON tasker.named_tasks (task_namespace_uuid);
CREATE INDEX idx_tasks_named_task_uuid ON tasker.tasks (named_task_uuid);

-- +goose Down
DROP SCHEMA tasker CASCADE;
