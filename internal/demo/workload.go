package demo

import (
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// stepNames are the four steps of every demo task, run in this order
// (edges a→b→c→d).
var stepNames = [4]string{"validate_order", "charge_payment", "reserve_inventory", "send_confirmation"}

// templateConfiguration is the demo task template as tasker stores it
// (named_tasks.configuration): each step declares its own retry policy, so
// the report shows linear, exponential, fibonacci and none at work. The
// rate-limited failures' Retry-After still wins, capped at the step's cap.
const templateConfiguration = `{
  "name": "process_order", "namespace_name": "sweeper_demo", "version": "0.1.0",
  "steps": [
    {"name": "validate_order", "dependencies": [],
     "retry": {"retryable": true, "max_attempts": 3, "backoff": "linear", "backoff_base_ms": 1000, "max_backoff_ms": 6000}},
    {"name": "charge_payment", "dependencies": ["validate_order"],
     "retry": {"retryable": true, "max_attempts": 3, "backoff": "exponential", "backoff_base_ms": 1000, "max_backoff_ms": 8000}},
    {"name": "reserve_inventory", "dependencies": ["charge_payment"],
     "retry": {"retryable": true, "max_attempts": 3, "backoff": "fibonacci", "backoff_base_ms": 1500, "max_backoff_ms": 5000}},
    {"name": "send_confirmation", "dependencies": ["reserve_inventory"],
     "retry": {"retryable": true, "max_attempts": 3, "backoff": "none"}}
  ]
}`

const (
	namespace = "sweeper_demo"
	taskName  = "process_order"
	// actor marks the transitions the demo's simulated orchestrator writes.
	actor = "sweeper-demo/orchestrator"
)

// failure is one kind of failure a worker reports, as it would reach the
// inline handler.
type failure struct {
	message    string
	httpStatus int
	retryAfter string
}

func (f failure) report(step uuid.UUID) handling.Failure {
	return handling.Failure{
		StepUUID: step, Message: f.message, HTTPStatus: f.httpStatus, RetryAfter: f.retryAfter, Source: "sweeper-demo",
	}
}

var (
	failNetwork     = failure{message: "read tcp 10.0.3.7:49152->10.0.9.2:443: connection reset by peer"}
	failUnavailable = failure{message: "inventory service: 503 Service Unavailable", httpStatus: 503}
	failTimeout     = failure{message: "payment gateway did not answer within 30s", httpStatus: 504}
	failRateLimit2  = failure{message: "payment gateway: 429 Too Many Requests", httpStatus: 429, retryAfter: "2"}
	failRateLimit3  = failure{message: "mail provider: 429 Too Many Requests", httpStatus: 429, retryAfter: "3"}
	failValidation  = failure{message: "validation failed: missing field customer_id", httpStatus: 422}
)

// failureMix is the failure of task i's failing step: mostly retryable
// (network, 503, timeouts, rate limits with Retry-After), one in ten
// permanent.
var failureMix = []failure{
	failNetwork, failRateLimit2, failTimeout, failUnavailable, failNetwork,
	failRateLimit3, failTimeout, failValidation, failNetwork, failRateLimit2,
}

// step is one seeded step.
type step struct {
	id     uuid.UUID
	task   uuid.UUID
	taskNo int
	pos    int
	// state is where the step starts: pending (no transition rows),
	// complete, or enqueued_as_error_for_orchestration (a worker's attempt
	// just failed and is waiting for the inline handler).
	state    statemachine.State
	attempts int32
	// retryable is the step's retryable column.
	retryable bool
	// endedAgo is how long ago the step reached its state.
	endedAgo time.Duration
}

// name is the step's named step, and how the demo names it in its logs.
func (s step) name() string { return stepNames[s.pos] }

// plan is the workload: which step of which task is where, and the failure
// each failing step reports.
type plan struct {
	tasks   []uuid.UUID
	steps   []step
	failing []plannedFailure
}

type plannedFailure struct {
	step    step
	failure failure
}

// newPlan lays out n tasks of four chained steps. Task i's failing step is
// step i%3: the steps before it are complete (so it is ready to run), the
// ones after it pending. The failing step has just failed its first attempt,
// except in the last task, where it has used all three attempts
// (MarkedAsError), and in the one before, whose step is not retryable
// (MarkedAsPermanentFailure whatever the error).
func newPlan(n int) plan {
	var p plan
	for i := range n {
		task := newUUID()
		p.tasks = append(p.tasks, task)
		failPos := i % 3
		f := failureMix[i%len(failureMix)]
		for pos := range stepNames {
			st := step{id: newUUID(), task: task, taskNo: i + 1, pos: pos, state: statemachine.Pending, retryable: true}
			switch {
			case pos < failPos:
				st.state, st.attempts, st.endedAgo = statemachine.Complete, 1, time.Duration(45*(failPos-pos))*time.Second
			case pos == failPos:
				st.state, st.attempts = statemachine.EnqueuedAsErrorForOrchestration, 1
				switch {
				case n >= 3 && i == n-1:
					st.attempts, f = 3, failTimeout
				case n >= 4 && i == n-2:
					st.retryable, f = false, failNetwork
				}
				p.failing = append(p.failing, plannedFailure{step: st, failure: f})
			}
			p.steps = append(p.steps, st)
		}
	}
	return p
}

func newUUID() uuid.UUID {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.New()
	}
	return id
}
