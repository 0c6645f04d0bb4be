-- The demo's steps the sweep has moved back to pending and nobody has picked
-- up yet, oldest first: what the orchestrator would run next.
SELECT ws.workflow_step_uuid
FROM tasker.workflow_steps ws
JOIN tasker.workflow_step_transitions cur
    ON cur.workflow_step_uuid = ws.workflow_step_uuid AND cur.most_recent
WHERE ws.task_uuid = ANY(@task_uuids::uuid[])
  AND cur.to_state = 'pending'
  AND cur.from_state = 'waiting_for_retry'
ORDER BY cur.created_at, ws.workflow_step_uuid
LIMIT @pickup_limit;
