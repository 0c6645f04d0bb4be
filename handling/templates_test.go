package handling_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// countingStore is the real store, counting the template reads it serves.
type countingStore struct {
	*db.Store
	reads atomic.Int64
}

func (c *countingStore) TaskTemplate(ctx context.Context, named uuid.UUID) (handling.TemplateRecord, error) {
	c.reads.Add(1)
	return c.Store.TaskTemplate(ctx, named)
}

// failAt puts step in enqueued_as_error_for_orchestration after its
// attempts-th attempt, with max_attempts 10.
func failAt(t *testing.T, pool *pgxpool.Pool, step uuid.UUID, attempts int32) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `DELETE FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = $1`, step)
	require.NoError(t, err)
	testdb.PlaceInState(t, pool, step, statemachine.EnqueuedAsErrorForOrchestration, 0)
	testdb.SetColumns(t, pool, step, testdb.StepColumns{Attempts: testdb.Ptr(attempts), MaxAttempts: testdb.Ptr[int32](10)})
}

// The handler finds the step's template through its task, applies the
// environment's overrides, caches the template until its updated_at moves,
// and records where the delay came from.
func TestServiceAppliesTheTemplatePolicy(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	task := testdb.CreateTemplatedTask(t, pool, testdb.TemplateSpec{
		Namespace: "order_fulfillment", Name: "business_workflow", Configuration: orderFulfillment,
		Steps: []string{"validate_order", "process_payment", "gift_wrap"},
	})
	store := &countingStore{Store: db.NewStore(pool)}
	cfg := jitterOff()
	cfg.TaskerEnv = "production"
	svc, err := handling.NewService(store, cfg, handling.WithRand(fixedRand(0.99)))
	require.NoError(t, err)
	ctx := context.Background()

	// process_payment in production: fibonacci 3 s (named override), 60 s cap (ALL).
	failAt(t, pool, task.Steps[1], 5)
	res, err := svc.Handle(ctx, handling.Failure{StepUUID: task.Steps[1], Message: "gateway hiccup"})
	require.NoError(t, err)
	require.Equal(t, int32(15), *res.BackoffSeconds)
	require.Equal(t, handling.PolicySourceTemplate, res.Policy.Source)
	meta := transitions(t, pool, task.Steps[1])[failedHistory].Metadata
	policy := meta["retry_policy"].(map[string]any)
	require.Equal(t, "template", policy["source"])
	require.Equal(t, "order_fulfillment/business_workflow", policy["template"])
	require.Equal(t, "production", policy["tasker_env"])
	require.Equal(t, "fibonacci", policy["strategy"])
	require.InDelta(t, 3000, policy["base_ms"], 0)
	require.InDelta(t, 60000, policy["cap_ms"], 0)
	require.InDelta(t, 15000, policy["raw_delay_ms"], 0)
	require.InDelta(t, 15, policy["applied_delay_seconds"], 0)
	require.InDelta(t, 15, meta["backoff_seconds"], 0)
	require.Equal(t, "fibonacci", meta["backoff_source"])
	require.Equal(t, int64(15), int64(*readStep(t, pool, task.Steps[1]).BackoffRequestSeconds))

	// validate_order: linear under ALL; the template is cached: no second read.
	failAt(t, pool, task.Steps[0], 4)
	res, err = svc.Handle(ctx, handling.Failure{StepUUID: task.Steps[0], Message: "boom"})
	require.NoError(t, err)
	require.Equal(t, int32(4), *res.BackoffSeconds)
	require.Equal(t, int64(1), store.reads.Load(), "one read per template version")

	// A step the template does not list: the flags (exponential 2⁴).
	failAt(t, pool, task.Steps[2], 4)
	res, err = svc.Handle(ctx, handling.Failure{StepUUID: task.Steps[2], Message: "boom"})
	require.NoError(t, err)
	require.Equal(t, int32(16), *res.BackoffSeconds)
	require.Equal(t, handling.PolicySourceGlobal, res.Policy.Source)
	require.Contains(t, strings.Join(res.Policy.Why, "; "), "no entry for the step")

	// The orchestrator updates the template: the next failure reads it again.
	_, err = pool.Exec(ctx, `UPDATE tasker.named_tasks SET configuration = $2::jsonb, updated_at = now() + interval '1 second'
WHERE named_task_uuid = $1`, task.NamedTaskUUID,
		`{"steps": [{"name": "validate_order", "retry": {"backoff": "none"}}]}`)
	require.NoError(t, err)
	failAt(t, pool, task.Steps[0], 4)
	res, err = svc.Handle(ctx, handling.Failure{StepUUID: task.Steps[0], Message: "boom"})
	require.NoError(t, err)
	require.Equal(t, int32(0), *res.BackoffSeconds)
	require.Equal(t, int64(2), store.reads.Load())
}

// A configuration that does not parse: the global policy, never an error;
// logged once per template version, counted per failure.
func TestServiceTemplateThatDoesNotParse(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	task := testdb.CreateTemplatedTask(t, pool, testdb.TemplateSpec{
		Namespace: "billing", Name: "broken", Configuration: `{"steps": [{"name": "charge", "retry": {"backoff": "cubic"}}]}`,
		Steps: []string{"charge", "refund"},
	})
	var logs bytes.Buffer
	var invalid []string
	svc, err := handling.NewService(db.NewStore(pool), jitterOff(),
		handling.WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))),
		handling.WithPolicyHooks(handling.PolicyHooks{TemplateInvalid: func(name string) { invalid = append(invalid, name) }}))
	require.NoError(t, err)
	for i, step := range task.Steps {
		failAt(t, pool, step, 3)
		res, err := svc.Handle(context.Background(), handling.Failure{StepUUID: step, Message: "boom"})
		require.NoError(t, err, "step %d", i)
		require.Equal(t, int32(8), *res.BackoffSeconds)
		require.Equal(t, handling.PolicySourceGlobal, res.Policy.Source)
		require.Contains(t, strings.Join(res.Policy.Why, "; "), `unknown backoff strategy "cubic"`)
	}
	require.Equal(t, 1, strings.Count(logs.String(), "task template configuration does not parse"), logs.String())
	require.Contains(t, logs.String(), `"template":"billing/broken"`)
	require.Equal(t, []string{"billing/broken", "billing/broken"}, invalid)
}

// A dry run decides exactly as the real thing would and writes nothing.
func TestServiceDryRunWritesNothing(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	task := testdb.CreateTemplatedTask(t, pool, testdb.TemplateSpec{
		Namespace: "order_fulfillment", Name: "business_workflow", Configuration: orderFulfillment,
		Steps: []string{"reserve_inventory"},
	})
	step := task.Steps[0]
	failAt(t, pool, step, 2)
	rules, err := handling.ParsePolicy("p.yaml", []byte("rules:\n  - {id: inventory, match: {step: reserve_*}, cap: 2s}\n"))
	require.NoError(t, err)
	cfg := jitterOff()
	cfg.Policy = rules
	var matched []string
	svc := newService(t, pool, cfg, handling.WithPolicyHooks(handling.PolicyHooks{RuleMatched: func(id string) { matched = append(matched, id) }}))
	before, beforeRows := readStep(t, pool, step), transitions(t, pool, step)

	dry, err := svc.Handle(context.Background(), handling.Failure{StepUUID: step, Message: "boom", DryRun: true})
	require.NoError(t, err)
	require.True(t, dry.DryRun)
	require.Equal(t, handling.ActionTransitionedToWaitingForRetry, dry.Action)
	require.Equal(t, int32(2), *dry.BackoffSeconds) // linear 1.5 s × 2 = 3 s, capped at 2 s by the rule
	require.Equal(t, "inventory", dry.Policy.Rule)
	require.Nil(t, dry.NextRetryAt)
	require.Equal(t, before, readStep(t, pool, step))
	require.Equal(t, beforeRows, transitions(t, pool, step))
	require.Empty(t, matched, "a dry run counts nothing")

	real, err := svc.Handle(context.Background(), handling.Failure{StepUUID: step, Message: "boom"})
	require.NoError(t, err)
	require.Equal(t, *dry.BackoffSeconds, *real.BackoffSeconds)
	require.Equal(t, dry.Policy.Source, real.Policy.Source)
	require.Len(t, transitions(t, pool, step), len(beforeRows)+1)
	require.Equal(t, []string{"inventory"}, matched)
}

// SetPolicy swaps the rules for the failures handled from then on.
func TestServiceSetPolicy(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	task := placeStep(t, pool, statemachine.EnqueuedAsErrorForOrchestration,
		testdb.StepColumns{Attempts: testdb.Ptr[int32](1), MaxAttempts: testdb.Ptr[int32](5)})
	svc := newService(t, pool, jitterOff())
	require.Nil(t, svc.CurrentPolicy())
	f := handling.Failure{StepUUID: task.Steps[0], Message: "boom", DryRun: true}
	res, err := svc.Handle(context.Background(), f)
	require.NoError(t, err)
	require.Equal(t, handling.ActionTransitionedToWaitingForRetry, res.Action)
	stop, err := handling.ParsePolicy("p.yaml", []byte("rules:\n  - {id: stop, retryable: false}\n"))
	require.NoError(t, err)
	svc.SetPolicy(stop)
	require.Same(t, stop, svc.CurrentPolicy())
	res, err = svc.Handle(context.Background(), f)
	require.NoError(t, err)
	require.Equal(t, handling.ActionMarkedAsPermanentFailure, res.Action)
	require.Equal(t, "policy rule stop: not retryable", res.Reason)
}
