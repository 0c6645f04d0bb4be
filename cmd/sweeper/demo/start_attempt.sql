-- A worker claims the step: the attempt it is about to make counts at once,
-- which is what the inline handler expects of attempts (SPEC §6).
UPDATE tasker.workflow_steps
SET attempts = coalesce(attempts, 0) + 1,
    in_process = true,
    last_attempted_at = now(),
    updated_at = now()
WHERE workflow_step_uuid = @step_uuid;
