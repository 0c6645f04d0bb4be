-- Whether the tasker tables exist already (an orchestrator's database, or a
-- previous demo): then the demo must not create them.
SELECT to_regclass('tasker.workflow_steps') IS NOT NULL;
