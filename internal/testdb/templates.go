package testdb

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

// TemplateSpec is a task template and a task made from it: the template's
// namespace, name and configuration (JSON; "" stores NULL), and the names of
// the task's steps.
type TemplateSpec struct {
	Namespace, Name string
	Configuration   string
	Steps           []string
}

// TemplatedTask is a created template task: the template's uuid, the task
// and its steps in the order of TemplateSpec.Steps.
type TemplatedTask struct {
	NamedTaskUUID uuid.UUID
	Task
}

// CreateTemplatedTask inserts the namespace (or reuses it), the named task
// with its configuration, a task of it and its steps, every step pending.
func CreateTemplatedTask(t testing.TB, pool *pgxpool.Pool, spec TemplateSpec) TemplatedTask {
	t.Helper()
	ctx := context.Background()
	var out TemplatedTask
	var config *string
	if spec.Configuration != "" {
		config = &spec.Configuration
	}
	err := pool.QueryRow(ctx, `
WITH ns AS (
    INSERT INTO tasker.task_namespaces (name, created_at, updated_at) VALUES ($1, now(), now())
    ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at
    RETURNING task_namespace_uuid
), nt AS (
    INSERT INTO tasker.named_tasks (task_namespace_uuid, name, version, configuration, created_at, updated_at)
    SELECT task_namespace_uuid, $2, left(gen_random_uuid()::text, 16), $3::jsonb, now(), now() FROM ns
    RETURNING named_task_uuid
), task AS (
    INSERT INTO tasker.tasks (named_task_uuid, requested_at, identity_hash, created_at, updated_at, correlation_id)
    SELECT named_task_uuid, now(), gen_random_uuid()::text, now(), now(), gen_random_uuid() FROM nt
    RETURNING task_uuid, named_task_uuid
)
SELECT named_task_uuid, task_uuid FROM task`, spec.Namespace, spec.Name, config).Scan(&out.NamedTaskUUID, &out.TaskUUID)
	if err != nil {
		t.Fatalf("create templated task: %v", err)
	}
	for _, name := range spec.Steps {
		var step uuid.UUID
		err := pool.QueryRow(ctx, `
WITH ns AS (
    INSERT INTO tasker.named_steps (name, created_at, updated_at) VALUES ($2, now(), now())
    ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at
    RETURNING named_step_uuid
)
INSERT INTO tasker.workflow_steps (task_uuid, named_step_uuid, created_at, updated_at)
SELECT $1, named_step_uuid, now(), now() FROM ns
RETURNING workflow_step_uuid`, out.TaskUUID, name).Scan(&step)
		if err != nil {
			t.Fatalf("create step %s: %v", name, err)
		}
		out.Steps = append(out.Steps, step)
	}
	return out
}
