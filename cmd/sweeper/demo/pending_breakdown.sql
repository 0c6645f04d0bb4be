-- The demo's pending steps the sweep handed back and nobody has re-run yet;
-- the other pending steps are waiting for their parents to complete.
SELECT count(*)
FROM tasker.workflow_steps ws
JOIN tasker.workflow_step_transitions cur
    ON cur.workflow_step_uuid = ws.workflow_step_uuid AND cur.most_recent
WHERE ws.task_uuid = ANY(@task_uuids::uuid[])
  AND cur.to_state = 'pending'
  AND cur.from_state = 'waiting_for_retry';
