-- A worker's attempt succeeded: the step is processed and released.
UPDATE tasker.workflow_steps
SET in_process = false,
    processed = true,
    processed_at = now(),
    results = '{"ok": true}'::jsonb,
    updated_at = now()
WHERE workflow_step_uuid = @step_uuid;
