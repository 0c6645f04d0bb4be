package handling_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/tasker-sweeper/retrysweeper/handling"
)

func TestStandardClassifierRules(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name       string
		kind       string
		status     int
		message    string
		wantCat    handling.Category
		wantRetry  bool
		wantCode   string
		wantReason string
	}{
		// Rule 1: explicit kind.
		{"kind permanent", "Permanent", 0, "", "Permanent", false, "KIND_PERMANENT", "explicit_kind"},
		{"kind snake case", "rate_limit", 0, "", "RateLimit", true, "KIND_RATE_LIMIT", "explicit_kind"},
		{"kind configuration", "configuration", 0, "", "Configuration", false, "KIND_CONFIGURATION", "explicit_kind"},
		{"kind unknown is retryable", "Unknown", 0, "", "Unknown", true, "KIND_UNKNOWN", "explicit_kind"},
		{"kind dependency failure", "DEPENDENCY_FAILURE", 0, "", "DependencyFailure", true, "KIND_DEPENDENCY_FAILURE", "explicit_kind"},
		{"kind beats status", "Permanent", 429, "", "Permanent", false, "KIND_PERMANENT", "explicit_kind"},
		{"kind beats keyword", "Transient", 0, "permission denied", "Transient", true, "KIND_TRANSIENT", "explicit_kind"},
		{"invalid kind falls to status", "bogus", 503, "", "Transient", true, "HTTP_503", "http_status"},
		{"invalid kind falls to keyword", "bogus", 0, "disk full", "ResourceExhaustion", true, "RESOURCE_EXHAUSTION", "keyword:disk"},
		{"invalid kind falls to default", "bogus", 0, "", "Transient", true, "TRANSIENT", "default"},

		// Rule 2: HTTP status.
		{"status 429", "", 429, "", "RateLimit", true, "HTTP_429", "http_status"},
		{"status 408", "", 408, "", "Timeout", true, "HTTP_408", "http_status"},
		{"status 504", "", 504, "", "Timeout", true, "HTTP_504", "http_status"},
		{"status 502", "", 502, "", "Transient", true, "HTTP_502", "http_status"},
		{"status 503", "", 503, "", "Transient", true, "HTTP_503", "http_status"},
		{"status 400", "", 400, "", "Permanent", false, "HTTP_400", "http_status"},
		{"status 404", "", 404, "", "Permanent", false, "HTTP_404", "http_status"},
		{"status 499", "", 499, "", "Permanent", false, "HTTP_499", "http_status"},
		{"status beats keyword", "", 429, "validation failed", "RateLimit", true, "HTTP_429", "http_status"},
		{"4xx beats retryable keyword", "", 404, "connection reset", "Permanent", false, "HTTP_404", "http_status"},
		{"status 500 falls to keyword", "", 500, "timeout", "Timeout", true, "TIMEOUT", "keyword:timeout"},
		{"status 500 falls to default", "", 500, "boom", "Transient", true, "TRANSIENT", "default"},
		{"status 200 falls through", "", 200, "", "Transient", true, "TRANSIENT", "default"},
		{"status 399 falls through", "", 399, "", "Transient", true, "TRANSIENT", "default"},
		{"status 501 falls through", "", 501, "", "Transient", true, "TRANSIENT", "default"},

		// Rule 3: every keyword, case-insensitive.
		{"keyword timeout", "", 0, "read TIMEOUT", "Timeout", true, "TIMEOUT", "keyword:timeout"},
		{"keyword network", "", 0, "Network unreachable", "Network", true, "NETWORK", "keyword:network"},
		{"keyword connection", "", 0, "connection refused", "Network", true, "NETWORK", "keyword:connection"},
		{"keyword rate", "", 0, "rate limited", "RateLimit", true, "RATE_LIMIT", "keyword:rate"},
		{"keyword limit", "", 0, "quota LIMIT reached", "RateLimit", true, "RATE_LIMIT", "keyword:limit"},
		{"keyword resource", "", 0, "Resource busy", "ResourceExhaustion", true, "RESOURCE_EXHAUSTION", "keyword:resource"},
		{"keyword memory", "", 0, "out of memory", "ResourceExhaustion", true, "RESOURCE_EXHAUSTION", "keyword:memory"},
		{"keyword disk", "", 0, "DISK full", "ResourceExhaustion", true, "RESOURCE_EXHAUSTION", "keyword:disk"},
		{"keyword permission", "", 0, "Permission denied", "Configuration", false, "CONFIGURATION", "keyword:permission"},
		{"keyword auth", "", 0, "auth token expired", "Configuration", false, "CONFIGURATION", "keyword:auth"},
		{"keyword constraint", "", 0, "unique constraint", "Permanent", false, "PERMANENT", "keyword:constraint"},
		{"keyword violation", "", 0, "policy Violation", "Permanent", false, "PERMANENT", "keyword:violation"},
		{"keyword validation", "", 0, "validation failed", "Permanent", false, "PERMANENT", "keyword:validation"},

		// Rule 3: keyword order.
		{"timeout before connection", "", 0, "Connection timeout", "Timeout", true, "TIMEOUT", "keyword:timeout"},
		{"network before rate", "", 0, "network rate exceeded", "Network", true, "NETWORK", "keyword:network"},
		{"rate before memory", "", 0, "memory allocation rate", "RateLimit", true, "RATE_LIMIT", "keyword:rate"},
		{"resource before auth", "", 0, "auth service out of resources", "ResourceExhaustion", true, "RESOURCE_EXHAUSTION", "keyword:resource"},
		{"auth before validation", "", 0, "auth validation failed", "Configuration", false, "CONFIGURATION", "keyword:auth"},
		{"substring match", "", 0, "unauthorized", "Configuration", false, "CONFIGURATION", "keyword:auth"},

		// Rule 4: default.
		{"default", "", 0, "something odd", "Transient", true, "TRANSIENT", "default"},
		{"empty message", "", 0, "", "Transient", true, "TRANSIENT", "default"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			got := handling.StandardClassifier{}.Classify(handling.ErrorContext{
				StepUUID:      "0190f2a0-0000-7000-8000-000000000001",
				TaskUUID:      "0190f2a0-0000-7000-8000-000000000002",
				StepName:      "fetch",
				AttemptNumber: 1,
				MaxAttempts:   3,
				ErrorSource:   "worker",
				Message:       tt.message,
				Kind:          tt.kind,
				HTTPStatus:    tt.status,
			})

			require.Equal(t, handling.Classification{
				Category:     tt.wantCat,
				Retryable:    tt.wantRetry,
				ErrorCode:    tt.wantCode,
				Message:      tt.message,
				FinalAttempt: false,
				Reason:       tt.wantReason,
			}, got)
		})
	}
}

func TestStandardClassifierFinalAttempt(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name      string
		attempt   int
		max       int
		wantFinal bool
	}{
		{"first of three", 1, 3, false},
		{"second of three", 2, 3, false},
		{"third of three", 3, 3, true},
		{"past the limit", 4, 3, true},
		{"single attempt allowed", 1, 1, true},
		{"zero max means no attempts left", 0, 0, true},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			got := handling.StandardClassifier{}.Classify(handling.ErrorContext{
				AttemptNumber: tt.attempt,
				MaxAttempts:   tt.max,
				Message:       "connection reset",
			})

			require.Equal(t, tt.wantFinal, got.FinalAttempt)
			// FinalAttempt must not change the category's own verdict.
			require.Equal(t, handling.CategoryNetwork, got.Category)
			require.True(t, got.Retryable)
		})
	}
}

func TestClassificationJSON(t *testing.T) {
	t.Parallel()

	got, err := json.Marshal(handling.StandardClassifier{}.Classify(handling.ErrorContext{
		AttemptNumber: 3,
		MaxAttempts:   3,
		Message:       "slow down",
		HTTPStatus:    429,
	}))
	require.NoError(t, err)
	require.JSONEq(t, `{
		"category": "RateLimit",
		"retryable": true,
		"error_code": "HTTP_429",
		"message": "slow down",
		"final_attempt": true,
		"reason": "http_status"
	}`, string(got))
}

func TestCategoryRetryable(t *testing.T) {
	t.Parallel()

	tests := []struct {
		category handling.Category
		want     bool
	}{
		{handling.CategoryPermanent, false},
		{handling.CategoryTransient, true},
		{handling.CategoryTimeout, true},
		{handling.CategoryRateLimit, true},
		{handling.CategoryNetwork, true},
		{handling.CategoryConfiguration, false},
		{handling.CategoryResourceExhaustion, true},
		{handling.CategoryDependencyFailure, true},
		{handling.CategoryStateInconsistency, true},
		{handling.CategoryUnknown, true},
	}

	for _, tt := range tests {
		t.Run(string(tt.category), func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, tt.category.Retryable())
		})
	}
}

// wireCategories pins every category's string value, a wire format (JSON
// results, step metadata), literally.
var wireCategories = map[handling.Category]string{
	handling.CategoryPermanent:          "Permanent",
	handling.CategoryTransient:          "Transient",
	handling.CategoryTimeout:            "Timeout",
	handling.CategoryRateLimit:          "RateLimit",
	handling.CategoryNetwork:            "Network",
	handling.CategoryConfiguration:      "Configuration",
	handling.CategoryResourceExhaustion: "ResourceExhaustion",
	handling.CategoryDependencyFailure:  "DependencyFailure",
	handling.CategoryStateInconsistency: "StateInconsistency",
	handling.CategoryUnknown:            "Unknown",
}

func TestCategoryValues(t *testing.T) {
	t.Parallel()

	require.Len(t, wireCategories, 10)
	for c, wire := range wireCategories {
		require.Equal(t, wire, string(c))
		parsed, err := handling.ParseCategory(wire)
		require.NoError(t, err, wire)
		require.Equal(t, c, parsed, "every category parses from its own name")
	}
}

func TestParseCategory(t *testing.T) {
	t.Parallel()

	tests := []struct {
		in   string
		want handling.Category
	}{
		{"Permanent", "Permanent"},
		{"permanent", "Permanent"},
		{"PERMANENT", "Permanent"},
		{"Transient", "Transient"},
		{"timeout", "Timeout"},
		{"RateLimit", "RateLimit"},
		{"ratelimit", "RateLimit"},
		{"rate_limit", "RateLimit"},
		{"RATE_LIMIT", "RateLimit"},
		{"Network", "Network"},
		{"configuration", "Configuration"},
		{"ResourceExhaustion", "ResourceExhaustion"},
		{"resource_exhaustion", "ResourceExhaustion"},
		{"DependencyFailure", "DependencyFailure"},
		{"dependency_failure", "DependencyFailure"},
		{"StateInconsistency", "StateInconsistency"},
		{"state_inconsistency", "StateInconsistency"},
		{"unknown", "Unknown"},
		{"  Timeout\n", "Timeout"},
	}

	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()

			got, err := handling.ParseCategory(tt.in)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestParseCategoryRejects(t *testing.T) {
	t.Parallel()

	for _, in := range []string{"", "bogus", "rate limit", "rate-limit", "r_a_t_e_limit", "_timeout", "Timeouts"} {
		t.Run(in, func(t *testing.T) {
			t.Parallel()

			got, err := handling.ParseCategory(in)
			require.ErrorIs(t, err, handling.ErrUnknownCategory)
			require.Equal(t, handling.Category(""), got)
		})
	}
}

func TestParseCategoryErrorNamesInput(t *testing.T) {
	t.Parallel()

	_, err := handling.ParseCategory("bogus")
	require.EqualError(t, err, `parse category "bogus": unknown error category`)
	require.ErrorIs(t, err, handling.ErrUnknownCategory)
}

// TestStandardClassifierProperties checks invariants that hold for any
// input: no panic, a known category, and a retryable verdict that only
// Permanent and Configuration deny.
func TestStandardClassifierProperties(t *testing.T) {
	t.Parallel()

	rapid.Check(t, func(t *rapid.T) {
		ec := handling.ErrorContext{
			AttemptNumber: rapid.IntRange(0, 10).Draw(t, "attempt"),
			MaxAttempts:   rapid.IntRange(0, 10).Draw(t, "max"),
			Message:       rapid.String().Draw(t, "message"),
			Kind:          rapid.SampledFrom([]string{"", "bogus", "Permanent", "rate_limit", "CONFIGURATION", "Unknown"}).Draw(t, "kind"),
			HTTPStatus:    rapid.IntRange(0, 599).Draw(t, "status"),
		}

		got := handling.StandardClassifier{}.Classify(ec)

		if _, known := wireCategories[got.Category]; !known {
			t.Fatalf("unknown category %q", got.Category)
		}
		wantRetry := got.Category != "Permanent" && got.Category != "Configuration"
		if got.Retryable != wantRetry {
			t.Fatalf("category %q: retryable %v, want %v", got.Category, got.Retryable, wantRetry)
		}
		if got.FinalAttempt != (ec.AttemptNumber >= ec.MaxAttempts) {
			t.Fatalf("attempt %d of %d: final %v", ec.AttemptNumber, ec.MaxAttempts, got.FinalAttempt)
		}
		if got.Message != ec.Message {
			t.Fatalf("message %q not kept, got %q", ec.Message, got.Message)
		}
		if got.ErrorCode == "" || got.Reason == "" {
			t.Fatalf("empty code %q or reason %q", got.ErrorCode, got.Reason)
		}
	})
}
