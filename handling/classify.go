// Package handling classifies step failures and applies the inline failure
// decision: retry with backoff (waiting_for_retry) or fail (error).
package handling

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Category is the kind of failure a step reported. It is a string so it
// travels unchanged through JSON results, logs and step metadata.
type Category string

// The categories a classifier may return. Only Permanent and Configuration
// stop retries: everything else, Unknown included, is worth another attempt
// because giving up on an error we do not understand loses work.
const (
	CategoryPermanent          Category = "Permanent"
	CategoryTransient          Category = "Transient"
	CategoryTimeout            Category = "Timeout"
	CategoryRateLimit          Category = "RateLimit"
	CategoryNetwork            Category = "Network"
	CategoryConfiguration      Category = "Configuration"
	CategoryResourceExhaustion Category = "ResourceExhaustion"
	CategoryDependencyFailure  Category = "DependencyFailure"
	CategoryStateInconsistency Category = "StateInconsistency"
	CategoryUnknown            Category = "Unknown"
)

// allCategories lists every category once; ParseCategory's names are built
// from it, so a new category cannot be forgotten there.
var allCategories = [...]Category{
	CategoryPermanent,
	CategoryTransient,
	CategoryTimeout,
	CategoryRateLimit,
	CategoryNetwork,
	CategoryConfiguration,
	CategoryResourceExhaustion,
	CategoryDependencyFailure,
	CategoryStateInconsistency,
	CategoryUnknown,
}

// categoryByName accepts both spellings reporters use: the Rust original's
// PascalCase names and the snake_case forms common in JSON payloads.
var categoryByName = func() map[string]Category {
	m := make(map[string]Category, 2*len(allCategories))
	for _, c := range allCategories {
		m[strings.ToLower(string(c))] = c
		m[strings.ToLower(c.upperSnake())] = c
	}
	return m
}()

// ErrUnknownCategory is returned by ParseCategory so callers can tell a
// misspelled kind from other errors with errors.Is.
var ErrUnknownCategory = errors.New("unknown error category")

// ParseCategory reads a category from untrusted input (a worker's reported
// kind, config). It ignores case and surrounding space and accepts
// snake_case ("rate_limit") because reporters are not consistent.
func ParseCategory(s string) (Category, error) {
	if c, ok := categoryByName[strings.ToLower(strings.TrimSpace(s))]; ok {
		return c, nil
	}
	return "", fmt.Errorf("parse category %q: %w", s, ErrUnknownCategory)
}

// Retryable reports whether another attempt could succeed. Permanent and
// Configuration failures repeat identically until a human changes the input
// or the setup, so retrying them only burns attempts.
func (c Category) Retryable() bool {
	return c != CategoryPermanent && c != CategoryConfiguration
}

// upperSnake gives the stable machine form used in error codes, e.g.
// ResourceExhaustion → RESOURCE_EXHAUSTION.
func (c Category) upperSnake() string {
	var b strings.Builder
	for i, r := range string(c) {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

// ErrorContext carries what a classifier may use to judge a failure. The
// handler builds it from the step row so classifiers never touch the
// database and stay pure.
type ErrorContext struct {
	// StepUUID and TaskUUID identify the failing step, as uuid text.
	StepUUID string
	TaskUUID string
	// StepName comes from named_steps; "unknown_step" when it is missing.
	StepName string
	// AttemptNumber is the attempts column as stored: it already counts the
	// attempt that just failed (the original's +1 was an off-by-one).
	AttemptNumber int
	// MaxAttempts is coalesce(max_attempts, TaskerDefaultMaxAttempts),
	// resolved by the handler so a NULL never reaches a classifier.
	MaxAttempts int
	// ExecutionDuration is now - last_attempted_at when known, else 0.
	ExecutionDuration time.Duration
	// ErrorSource names the reporter, e.g. "worker", "http_api", "cli".
	ErrorSource string
	// Message is the error text the reporter sent.
	Message string
	// Kind is the reporter's explicit category, "" when it gave none.
	Kind string
	// HTTPStatus is the status of the failed call, 0 when there was none.
	HTTPStatus int
	// Metadata is free-form context for custom classifiers.
	Metadata map[string]any
}

// Classification is a classifier's verdict, serialised into the handler's
// result and the step's metadata so operators can see why a step was
// retried or failed.
type Classification struct {
	// Category is what kind of failure this is.
	Category Category `json:"category"`
	// Retryable is the category's verdict, before any worker hint.
	Retryable bool `json:"retryable"`
	// ErrorCode is a stable machine code for dashboards and alerts:
	// "HTTP_<status>" when the HTTP status decided, "KIND_<CATEGORY>" when
	// the reporter's explicit kind decided, else the category in upper
	// snake case ("RATE_LIMIT", "TRANSIENT").
	ErrorCode string `json:"error_code"`
	// Message is the reporter's error text, kept beside the verdict.
	Message string `json:"message"`
	// FinalAttempt is true when no attempts are left, whatever the category.
	FinalAttempt bool `json:"final_attempt"`
	// Reason names the rule that decided: "explicit_kind", "http_status",
	// "keyword:<word>" or "default".
	Reason string `json:"reason"`
}

// Reasons recorded in Classification.Reason by StandardClassifier.
const (
	reasonExplicitKind  = "explicit_kind"
	reasonHTTPStatus    = "http_status"
	reasonKeywordPrefix = "keyword:"
	reasonDefault       = "default"
)

// Classifier lets a deployment replace the standard rules with its own
// knowledge of its workers' errors without touching the handler.
type Classifier interface {
	// Classify must be pure and safe for concurrent use: the handler calls
	// it from many goroutines and may call it again for a repeated report.
	Classify(ErrorContext) Classification
}

// StandardClassifier applies the standard rules, first match wins: the
// reporter's explicit kind, then the HTTP status, then message keywords,
// then Transient. It only judges the error;
// the worker's explicit retryable hint is applied by the handler after
// classification, because the hint is about this attempt, not the category.
type StandardClassifier struct{}

var _ Classifier = StandardClassifier{}

// messageKeywords is ordered: the first match wins, so "connection timeout"
// is a Timeout. Matching is a case-insensitive substring test, as in the
// original, so "rate" also matches words like "generated".
var messageKeywords = []struct {
	word     string
	category Category
}{
	{"timeout", CategoryTimeout},
	{"network", CategoryNetwork},
	{"connection", CategoryNetwork},
	{"rate", CategoryRateLimit},
	{"limit", CategoryRateLimit},
	{"resource", CategoryResourceExhaustion},
	{"memory", CategoryResourceExhaustion},
	{"disk", CategoryResourceExhaustion},
	{"permission", CategoryConfiguration},
	{"auth", CategoryConfiguration},
	{"constraint", CategoryPermanent},
	{"violation", CategoryPermanent},
	{"validation", CategoryPermanent},
}

// Classify decides the category of ec's failure. An unparseable Kind is
// ignored rather than rejected: a worker's typo should not stop the error
// being classified by the remaining rules.
func (StandardClassifier) Classify(ec ErrorContext) Classification {
	category, code, reason := standardCategory(ec)
	return Classification{
		Category:     category,
		Retryable:    category.Retryable(),
		ErrorCode:    code,
		Message:      ec.Message,
		FinalAttempt: ec.AttemptNumber >= ec.MaxAttempts,
		Reason:       reason,
	}
}

// standardCategory returns the category with the error code and reason of
// the rule that decided it.
func standardCategory(ec ErrorContext) (Category, string, string) {
	if ec.Kind != "" {
		if c, err := ParseCategory(ec.Kind); err == nil {
			return c, "KIND_" + c.upperSnake(), reasonExplicitKind
		}
	}
	if c, ok := httpStatusCategory(ec.HTTPStatus); ok {
		return c, "HTTP_" + strconv.Itoa(ec.HTTPStatus), reasonHTTPStatus
	}
	msg := strings.ToLower(ec.Message)
	for _, k := range messageKeywords {
		if strings.Contains(msg, k.word) {
			return k.category, k.category.upperSnake(), reasonKeywordPrefix + k.word
		}
	}
	return CategoryTransient, CategoryTransient.upperSnake(), reasonDefault
}

// httpStatusCategory maps the statuses whose meaning is clear; other 5xx
// (e.g. 500) say too little and fall through to the message.
func httpStatusCategory(status int) (Category, bool) {
	switch {
	case status == 429:
		return CategoryRateLimit, true
	case status == 408, status == 504:
		return CategoryTimeout, true
	case status == 502, status == 503:
		return CategoryTransient, true
	case status >= 400 && status <= 499:
		return CategoryPermanent, true
	default:
		return "", false
	}
}
