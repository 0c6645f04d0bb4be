package handling_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/backoff"
	"github.com/tasker-sweeper/retrysweeper/handling"
)

// orderFulfillment is tasker's order_fulfillment/business_workflow example
// template as the orchestrator serialises it into named_tasks.configuration
// (JSON, every field present, absent options as null), with production
// overrides added: one for every step ("ALL") and one naming
// process_payment, and the example's own test overrides.
const orderFulfillment = `{
  "name": "business_workflow",
  "namespace_name": "order_fulfillment",
  "version": "1.0.0",
  "description": "Complete order fulfillment business workflow: validate → reserve → payment → shipping",
  "metadata": {"author": "Ruby FFI Implementation", "tags": ["namespace:order_fulfillment", "pattern:business_workflow"],
               "documentation_url": null, "created_at": "2025-09-24T00:00:00Z", "updated_at": "2025-09-24T00:00:00Z"},
  "task_handler": {"callable": "OrderFulfillment::OrderFulfillmentHandler",
                   "initialization": {"input_validation": {"required_fields": ["customer", "items", "payment", "shipping"]}}},
  "system_dependencies": {"primary": "default", "secondary": []},
  "domain_events": [],
  "input_schema": {"type": "object", "required": ["customer", "items", "payment", "shipping"]},
  "steps": [
    {"name": "validate_order", "description": "Validate customer information, order items, and calculate totals",
     "handler": {"callable": "OrderFulfillment::StepHandlers::ValidateOrderHandler",
                 "initialization": {"error_handling": {"calculation_errors": "retry_once"}}},
     "system_dependency": null, "dependencies": [],
     "retry": {"retryable": true, "max_attempts": 3, "backoff": "exponential", "backoff_base_ms": 1000, "max_backoff_ms": 30000},
     "timeout_seconds": 45, "publishes_events": []},
    {"name": "reserve_inventory", "description": "Check inventory availability and create reservations",
     "handler": {"callable": "OrderFulfillment::StepHandlers::ReserveInventoryHandler", "initialization": {}},
     "system_dependency": null, "dependencies": ["validate_order"],
     "retry": {"retryable": true, "max_attempts": 3, "backoff": "linear", "backoff_base_ms": 1500, "max_backoff_ms": null},
     "timeout_seconds": 60, "publishes_events": []},
    {"name": "process_payment", "description": "Process payment using customer payment information",
     "handler": {"callable": "OrderFulfillment::StepHandlers::ProcessPaymentHandler", "initialization": {}},
     "system_dependency": null, "dependencies": ["validate_order", "reserve_inventory"],
     "retry": {"retryable": true, "max_attempts": 2, "backoff": "exponential", "backoff_base_ms": 2000, "max_backoff_ms": 30000},
     "timeout_seconds": 90, "publishes_events": []},
    {"name": "ship_order", "description": "Create shipment and schedule delivery",
     "handler": {"callable": "OrderFulfillment::StepHandlers::ShipOrderHandler", "initialization": {}},
     "system_dependency": null, "dependencies": ["validate_order", "reserve_inventory", "process_payment"],
     "retry": {"retryable": true, "max_attempts": 3, "backoff": "none", "backoff_base_ms": null, "max_backoff_ms": null},
     "timeout_seconds": 60, "publishes_events": []}
  ],
  "environments": {
    "test": {"steps": [
      {"name": "validate_order", "timeout_seconds": 20, "retry": {"max_attempts": 2}},
      {"name": "process_payment", "timeout_seconds": 45, "retry": {"max_attempts": 1}}
    ]},
    "production": {"steps": [
      {"name": "ALL", "handler": null, "timeout_seconds": null,
       "retry": {"retryable": null, "max_attempts": null, "backoff": "linear", "backoff_base_ms": null, "max_backoff_ms": 60000}},
      {"name": "process_payment", "handler": null, "timeout_seconds": 120,
       "retry": {"retryable": null, "max_attempts": null, "backoff": "fibonacci", "backoff_base_ms": 3000, "max_backoff_ms": null}}
    ]}
  }
}`

func dur(d time.Duration) *time.Duration { return &d }

func TestTaskerTemplateWithEnvironmentOverrides(t *testing.T) {
	t.Parallel()
	tmpl, err := handling.ParseTaskTemplate("order_fulfillment/business_workflow", []byte(orderFulfillment))
	require.NoError(t, err)
	tests := []struct {
		env, step string
		want      handling.TemplatePolicy
	}{
		// No environment: the steps as declared.
		{"", "validate_order", handling.TemplatePolicy{Strategy: backoff.StrategyExponential, Base: dur(time.Second), Cap: dur(30 * time.Second)}},
		{"", "reserve_inventory", handling.TemplatePolicy{Strategy: backoff.StrategyLinear, Base: dur(1500 * time.Millisecond)}},
		{"", "process_payment", handling.TemplatePolicy{Strategy: backoff.StrategyExponential, Base: dur(2 * time.Second), Cap: dur(30 * time.Second)}},
		{"", "ship_order", handling.TemplatePolicy{Strategy: backoff.StrategyNone}},
		// test overrides only max_attempts: the backoff stays.
		{"test", "validate_order", handling.TemplatePolicy{
			Strategy: backoff.StrategyExponential, Base: dur(time.Second), Cap: dur(30 * time.Second),
			Overrides: []string{"environments.test.validate_order"},
		}},
		// An environment the template does not know: as declared.
		{"staging", "process_payment", handling.TemplatePolicy{Strategy: backoff.StrategyExponential, Base: dur(2 * time.Second), Cap: dur(30 * time.Second)}},
		// production's ALL: linear, a 60 s cap, the step's base (its null leaves it).
		{"production", "validate_order", handling.TemplatePolicy{
			Strategy: backoff.StrategyLinear, Base: dur(time.Second), Cap: dur(time.Minute),
			Overrides: []string{"environments.production.ALL"},
		}},
		{"production", "ship_order", handling.TemplatePolicy{
			Strategy: backoff.StrategyLinear, Cap: dur(time.Minute),
			Overrides: []string{"environments.production.ALL"},
		}},
		// The named override wins over ALL where both set a field; ALL's cap stays.
		{"production", "process_payment", handling.TemplatePolicy{
			Strategy: backoff.StrategyFibonacci, Base: dur(3 * time.Second), Cap: dur(time.Minute),
			Overrides: []string{"environments.production.ALL", "environments.production.process_payment"},
		}},
	}
	for _, tt := range tests {
		got, err := tmpl.StepPolicy(tt.step, tt.env)
		require.NoError(t, err, "%s/%s", tt.env, tt.step)
		tt.want.Template, tt.want.Step = "order_fulfillment/business_workflow", tt.step
		require.Equal(t, tt.want, got, "env %q step %s", tt.env, tt.step)
	}
	_, err = tmpl.StepPolicy("refund", "production")
	require.ErrorIs(t, err, handling.ErrNoTemplateEntry)
}

// The delays the template's policies give through Decide, attempt by
// attempt, with the flags' values where the template declares nothing.
func TestTemplatePolicyDelays(t *testing.T) {
	t.Parallel()
	tmpl, err := handling.ParseTaskTemplate("order_fulfillment/business_workflow", []byte(orderFulfillment))
	require.NoError(t, err)
	cfg := jitterOff()
	cfg.Backoff.Base = 5 * time.Second  // used where no base is declared
	cfg.Backoff.Max = 100 * time.Second // used where no cap is declared
	tests := []struct {
		env, step string
		seconds   []int32 // attempt 1, 2, ...
	}{
		{"", "validate_order", []int32{2, 4, 8, 16, 30, 30}},                   // 1 s × 2ⁿ, cap 30 s
		{"", "reserve_inventory", []int32{2, 3, 5, 6, 8, 9, 11}},               // 1.5 s × n rounded up, cap from the flag (100 s)
		{"", "ship_order", []int32{0, 0, 0}},                                   // none
		{"production", "validate_order", []int32{1, 2, 3, 4}},                  // linear 1 s
		{"production", "ship_order", []int32{5, 10, 15, 20}},                   // linear, base from the flag
		{"production", "process_payment", []int32{3, 3, 6, 9, 15, 24, 39, 60}}, // fibonacci 3 s, cap 60 s
	}
	for _, tt := range tests {
		tp, err := tmpl.StepPolicy(tt.step, tt.env)
		require.NoError(t, err)
		for i, want := range tt.seconds {
			step := failedStep(int32(i+1), 100)
			step.Name = tt.step
			d := handling.DecideWithPolicy(cfg, handling.PolicyInput{Template: &tp, Env: tt.env}, step,
				handling.Failure{Message: "boom"}, classify(t, step, "boom"), time.Now(), nil)
			require.Equal(t, handling.ActionTransitionedToWaitingForRetry, d.Action)
			require.Equal(t, want, *d.BackoffSeconds, "%s/%s attempt %d", tt.env, tt.step, i+1)
			require.Equal(t, handling.PolicySourceTemplate, d.Policy.Source)
			require.Equal(t, "order_fulfillment/business_workflow", d.Policy.Template)
			require.Equal(t, tt.env, d.Policy.TaskerEnv)
			meta := d.Provenance["retry_policy"].(map[string]any)
			require.Equal(t, "template", meta["source"])
			require.Equal(t, want, meta["applied_delay_seconds"])
		}
	}
}

func TestTemplateConfigurationsThatDoNotParse(t *testing.T) {
	t.Parallel()
	for name, config := range map[string]string{
		"not JSON":          `{"steps": [`,
		"steps not a list":  `{"steps": {"name": "a"}}`,
		"unknown backoff":   `{"steps": [{"name": "a", "retry": {"backoff": "constant"}}]}`,
		"base too small":    `{"steps": [{"name": "a", "retry": {"backoff_base_ms": 50}}]}`,
		"cap too large":     `{"steps": [{"name": "a", "retry": {"max_backoff_ms": 3600001}}]}`,
		"base as a string":  `{"steps": [{"name": "a", "retry": {"backoff_base_ms": "1000"}}]}`,
		"step without name": `{"steps": [{"retry": {"backoff": "linear"}}]}`,
		"bad override":      `{"steps": [{"name": "a"}], "environments": {"prod": {"steps": [{"name": "ALL", "retry": {"backoff": "cubic"}}]}}}`,
	} {
		_, err := handling.ParseTaskTemplate("ns/t", []byte(config))
		require.Error(t, err, name)
		require.Contains(t, err.Error(), `"ns/t"`, name)
	}
	// Empty, {} and null are templates without steps, not errors.
	for _, config := range []string{``, `{}`, `null`} {
		tmpl, err := handling.ParseTaskTemplate("ns/t", []byte(config))
		require.NoError(t, err, config)
		_, err = tmpl.StepPolicy("a", "")
		require.ErrorIs(t, err, handling.ErrNoTemplateEntry)
	}
	// A step without a retry object is exponential with the flags' base and cap.
	tmpl, err := handling.ParseTaskTemplate("ns/t", []byte(`{"steps": [{"name": "a"}]}`))
	require.NoError(t, err)
	got, err := tmpl.StepPolicy("a", "")
	require.NoError(t, err)
	require.Equal(t, handling.TemplatePolicy{Template: "ns/t", Step: "a", Strategy: backoff.StrategyExponential}, got)
}

// classify is the standard classification of message for step.
func classify(t *testing.T, step handling.Step, message string) handling.Classification {
	t.Helper()
	return handling.StandardClassifier{}.Classify(handling.ErrorContext{
		StepName: step.Name, Message: message, AttemptNumber: int(*step.Attempts), MaxAttempts: int(*step.MaxAttempts),
	})
}
