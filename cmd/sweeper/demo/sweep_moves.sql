-- How often the sweep moved the demo's steps back to pending, and how many
-- distinct steps that was.
SELECT count(*) AS moves, count(DISTINCT t.workflow_step_uuid) AS steps
FROM tasker.workflow_step_transitions t
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = t.workflow_step_uuid
WHERE ws.task_uuid = ANY(@task_uuids::uuid[])
  AND t.metadata->>'actor' = 'tasker-sweeper/sweep';
