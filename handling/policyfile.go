package handling

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tasker-sweeper/retrysweeper/backoff"
)

// Policy is a retry policy file: ordered rules, the first that matches a
// failure decides what it sets. It is immutable once parsed.
type Policy struct {
	// Path is the file it was read from; Hash is "sha256:" and the first 16
	// hex digits of its content's SHA-256, recorded in the metadata of every
	// decision made under it.
	Path, Hash string
	Rules      []Rule
}

// Rule is one rule of a policy file. Every Match field that is set must
// match; nil action fields leave the value to the template or the flags.
type Rule struct {
	// ID names the rule in metadata, logs and metrics; Line is its line in
	// the file.
	ID   string
	Line int
	// Match lists the conditions; a list matches when any of its items does.
	Match Match
	// Retryable overrides the classifier's verdict (not the worker's).
	Retryable *bool
	// MaxAttempts stops retrying after this many attempts when it is below the
	// step's max_attempts; it never raises it.
	MaxAttempts *int
	// The delay: strategy, base, multiplier (exponential), cap, jitter on or
	// off and its fraction (a fraction alone turns jitter on, 0 off).
	Strategy       backoff.Strategy
	Base, Cap      *time.Duration
	Multiplier     *float64
	Jitter         *bool
	JitterFraction *float64
}

// Match is a rule's conditions. Steps, Namespaces and Tasks are path.Match
// patterns ("charge_*"); ErrorCodes compare ignoring case.
type Match struct {
	Categories   []Category
	ErrorCodes   []string
	HTTPStatuses []StatusRange
	Steps        []string
	Namespaces   []string
	Tasks        []string
}

// StatusRange is an HTTP status or a class of them ("5xx": 500–599).
type StatusRange struct{ Low, High int }

func (r StatusRange) String() string {
	if r.Low == r.High {
		return strconv.Itoa(r.Low)
	}
	return strconv.Itoa(r.Low/100) + "xx"
}

// PolicyError is a policy file that does not validate: the file, the line
// and the problem, printed as one line "file:line: problem".
type PolicyError struct {
	Path    string
	Line    int
	Problem string
}

func (e *PolicyError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, e.Problem)
	}
	return e.Path + ": " + e.Problem
}

// ruleIDPattern keeps ids usable as metric label values and in logs.
var ruleIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$`)

// policy file limits: a typo should not build a huge rule list.
const (
	maxRules          = 1000
	maxPolicyDuration = time.Duration(math.MaxInt32) * time.Second
)

// ParsePolicy reads a policy file's content (YAML, or JSON, which is YAML):
//
//	rules:
//	  - id: payments-rate-limit
//	    match: {category: RateLimit, http_status: [429, 5xx], step: "charge_*", namespace: payments, task: refund}
//	    retryable: true
//	    strategy: linear            # none, linear, exponential, fibonacci
//	    base: 5s                    # Go durations
//	    multiplier: 3
//	    cap: 2m
//	    jitter: 0.2                 # a fraction, or true/false
//	    max_attempts: 2
//
// Unknown keys, bad values, duplicate ids and rules that set nothing are
// errors naming the line (a *PolicyError). A rule without an id is named
// rule-<its position>.
func ParsePolicy(file string, content []byte) (*Policy, error) {
	sum := sha256.Sum256(content)
	p := &Policy{Path: file, Hash: "sha256:" + hex.EncodeToString(sum[:8])}
	fail := func(n *yaml.Node, format string, args ...any) error {
		line := 0
		if n != nil {
			line = n.Line
		}
		return &PolicyError{Path: file, Line: line, Problem: fmt.Sprintf(format, args...)}
	}
	if err := jsonSyntax(file, content); err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(content, &doc); err != nil {
		return nil, yamlError(file, err)
	}
	if len(doc.Content) == 0 {
		return p, nil // an empty file: no rules
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fail(root, "want a mapping with a rules list at the top")
	}
	var rules *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		key, val := root.Content[i], root.Content[i+1]
		switch key.Value {
		case "rules":
			rules = val
		default:
			return nil, fail(key, "unknown key %q (want rules)", key.Value)
		}
	}
	if rules == nil || rules.Tag == "!!null" {
		return p, nil
	}
	if rules.Kind != yaml.SequenceNode {
		return nil, fail(rules, "rules: want a list of rules")
	}
	if len(rules.Content) > maxRules {
		return nil, fail(rules, "rules: %d rules, at most %d", len(rules.Content), maxRules)
	}
	seen := map[string]int{}
	for i, n := range rules.Content {
		r, err := parseRule(n, i, fail)
		if err != nil {
			return nil, err
		}
		if line, dup := seen[r.ID]; dup {
			return nil, fail(n, "rule id %q is already used by the rule on line %d", r.ID, line)
		}
		seen[r.ID] = r.Line
		p.Rules = append(p.Rules, r)
	}
	return p, nil
}

type failFunc func(n *yaml.Node, format string, args ...any) error

func parseRule(n *yaml.Node, index int, fail failFunc) (Rule, error) {
	r := Rule{ID: "rule-" + strconv.Itoa(index+1), Line: n.Line}
	if n.Kind != yaml.MappingNode {
		return r, fail(n, "rules[%d]: want a mapping", index)
	}
	sets := false
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		var err error
		switch key.Value {
		case "id":
			if !ruleIDPattern.MatchString(val.Value) || val.Kind != yaml.ScalarNode {
				return r, fail(val, "id %q: want 1–64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit", val.Value)
			}
			r.ID = val.Value
		case "match":
			err = parseMatch(val, &r.Match, fail)
		case "retryable":
			var b bool
			b, err = scalarBool(val, fail, "retryable")
			r.Retryable = &b
			sets = true
		case "max_attempts":
			var v int
			v, err = scalarInt(val, fail, "max_attempts", 1, 100)
			r.MaxAttempts = &v
			sets = true
		case "strategy":
			var st backoff.Strategy
			st, err = backoff.ParseStrategy(val.Value)
			if err != nil {
				err = fail(val, "strategy: %v", err)
			}
			r.Strategy = st
			sets = true
		case "base", "cap":
			var d time.Duration
			d, err = scalarDuration(val, fail, key.Value)
			if key.Value == "base" {
				r.Base = &d
			} else {
				r.Cap = &d
			}
			sets = true
		case "multiplier":
			var f float64
			f, err = scalarFloat(val, fail, "multiplier")
			if err == nil && (!(f >= 1) || f > 1000) {
				err = fail(val, "multiplier %v: want a number from 1 to 1000", f)
			}
			r.Multiplier = &f
			sets = true
		case "jitter":
			r.Jitter, r.JitterFraction, err = scalarJitter(val, fail)
			sets = true
		default:
			return r, fail(key, "rule %s: unknown key %q (want id, match, retryable, max_attempts, strategy, base, multiplier, cap, jitter)", r.ID, key.Value)
		}
		if err != nil {
			return r, err
		}
	}
	if !sets {
		return r, fail(n, "rule %s sets nothing: give retryable, max_attempts, strategy, base, multiplier, cap or jitter", r.ID)
	}
	if r.Base != nil && r.Cap != nil && *r.Cap < *r.Base {
		return r, fail(n, "rule %s: cap %s is below base %s", r.ID, *r.Cap, *r.Base)
	}
	return r, nil
}

func parseMatch(n *yaml.Node, m *Match, fail failFunc) error {
	if n.Kind != yaml.MappingNode {
		return fail(n, "match: want a mapping of conditions")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		items, err := scalarList(val, fail, key.Value)
		if err != nil {
			return err
		}
		switch key.Value {
		case "category":
			for _, it := range items {
				c, err := ParseCategory(it.Value)
				if err != nil {
					return fail(it, "category %q: not one of %s", it.Value, categoryNames())
				}
				m.Categories = append(m.Categories, c)
			}
		case "error_code":
			for _, it := range items {
				m.ErrorCodes = append(m.ErrorCodes, it.Value)
			}
		case "http_status":
			for _, it := range items {
				sr, ok := parseStatusRange(it.Value)
				if !ok {
					return fail(it, "http_status %q: want a status 100–599 or a class such as 5xx", it.Value)
				}
				m.HTTPStatuses = append(m.HTTPStatuses, sr)
			}
		case "step", "namespace", "task":
			var patterns []string
			for _, it := range items {
				if _, err := path.Match(it.Value, ""); err != nil {
					return fail(it, "%s pattern %q: %v", key.Value, it.Value, err)
				}
				patterns = append(patterns, it.Value)
			}
			switch key.Value {
			case "step":
				m.Steps = patterns
			case "namespace":
				m.Namespaces = patterns
			default:
				m.Tasks = patterns
			}
		default:
			return fail(key, "match: unknown condition %q (want category, error_code, http_status, step, namespace, task)", key.Value)
		}
	}
	return nil
}

func categoryNames() string {
	names := make([]string, len(allCategories))
	for i, c := range allCategories {
		names[i] = string(c)
	}
	return strings.Join(names, ", ")
}

func parseStatusRange(s string) (StatusRange, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	if len(s) == 3 && strings.HasSuffix(s, "xx") && s[0] >= '1' && s[0] <= '5' {
		low := int(s[0]-'0') * 100
		return StatusRange{low, low + 99}, true
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 100 || v > 599 {
		return StatusRange{}, false
	}
	return StatusRange{v, v}, true
}

// scalarList accepts one scalar or a list of them, none of them empty.
func scalarList(n *yaml.Node, fail failFunc, what string) ([]*yaml.Node, error) {
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
		if len(items) == 0 {
			return nil, fail(n, "%s: an empty list matches nothing", what)
		}
	}
	for _, it := range items {
		if it.Kind != yaml.ScalarNode || it.Tag == "!!null" || it.Value == "" {
			return nil, fail(it, "%s: want a value or a list of values", what)
		}
	}
	return items, nil
}

func scalarBool(n *yaml.Node, fail failFunc, what string) (bool, error) {
	var b bool
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&b) != nil {
		return false, fail(n, "%s %q: want true or false", what, n.Value)
	}
	return b, nil
}

func scalarInt(n *yaml.Node, fail failFunc, what string, lo, hi int) (int, error) {
	v, err := strconv.Atoi(n.Value)
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || err != nil || v < lo || v > hi {
		return 0, fail(n, "%s %q: want a whole number from %d to %d", what, n.Value, lo, hi)
	}
	return v, nil
}

func scalarFloat(n *yaml.Node, fail failFunc, what string) (float64, error) {
	v, err := strconv.ParseFloat(n.Value, 64)
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") || err != nil {
		return 0, fail(n, "%s %q: want a number", what, n.Value)
	}
	return v, nil
}

func scalarDuration(n *yaml.Node, fail failFunc, what string) (time.Duration, error) {
	d, err := time.ParseDuration(n.Value)
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" || err != nil {
		return 0, fail(n, "%s %q: want a duration such as 500ms, 5s or 2m", what, n.Value)
	}
	if d <= 0 && what == "base" || d < time.Second && what == "cap" || d > maxPolicyDuration {
		return 0, fail(n, "%s %s: want %s to %ds", what, d, map[string]string{"base": "more than 0s", "cap": "1s"}[what], int64(math.MaxInt32))
	}
	return d, nil
}

// scalarJitter is true (jitter with the flag's fraction), false (none), or a
// fraction in [0, 1] (jitter with it; 0 is none).
func scalarJitter(n *yaml.Node, fail failFunc) (*bool, *float64, error) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!bool" {
		b, err := scalarBool(n, fail, "jitter")
		return &b, nil, err
	}
	f, err := scalarFloat(n, fail, "jitter")
	if err != nil || !(f >= 0 && f <= 1) {
		return nil, nil, fail(n, "jitter %q: want a fraction from 0 to 1, or true or false", n.Value)
	}
	on := f > 0
	return &on, &f, nil
}

// jsonSyntax checks a JSON file's syntax with the JSON parser, whose errors
// say where the problem is (YAML's name the line where the JSON object
// starts); content that is not JSON passes.
func jsonSyntax(file string, content []byte) error {
	trimmed := bytes.TrimSpace(content)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil
	}
	var v any
	err := json.Unmarshal(content, &v)
	var se *json.SyntaxError
	if !errors.As(err, &se) {
		return nil
	}
	line := 1 + bytes.Count(content[:min(int(se.Offset), len(content))], []byte("\n"))
	return &PolicyError{Path: file, Line: line, Problem: "invalid JSON: " + se.Error()}
}

// yamlError turns a YAML syntax error into a *PolicyError with its line.
var yamlLine = regexp.MustCompile(`^yaml: (?:line (\d+): )?(.*)$`)

func yamlError(file string, err error) error {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &PolicyError{Path: file, Line: line, Problem: m[2]}
	}
	return &PolicyError{Path: file, Problem: msg}
}

// Matches reports whether the rule's conditions hold for a failure.
func (r Rule) Matches(mc MatchContext) bool {
	m := r.Match
	if len(m.Categories) > 0 && !slices.Contains(m.Categories, mc.Category) {
		return false
	}
	if len(m.ErrorCodes) > 0 && !slices.ContainsFunc(m.ErrorCodes, func(code string) bool { return strings.EqualFold(code, mc.ErrorCode) }) {
		return false
	}
	if len(m.HTTPStatuses) > 0 && !slices.ContainsFunc(m.HTTPStatuses, func(s StatusRange) bool {
		return mc.HTTPStatus >= s.Low && mc.HTTPStatus <= s.High
	}) {
		return false
	}
	return matchAny(m.Steps, mc.Step) && matchAny(m.Namespaces, mc.Namespace) && matchAny(m.Tasks, mc.Task)
}

func matchAny(patterns []string, s string) bool {
	if len(patterns) == 0 {
		return true
	}
	return slices.ContainsFunc(patterns, func(p string) bool {
		ok, _ := path.Match(p, s) // validated by ParsePolicy
		return ok
	})
}

// MatchContext is what a rule's conditions look at.
type MatchContext struct {
	Category   Category
	ErrorCode  string
	HTTPStatus int
	Step       string
	Namespace  string
	Task       string
}

// First returns the first rule that matches, or nil (also on a nil policy).
func (p *Policy) First(mc MatchContext) *Rule {
	if p == nil {
		return nil
	}
	for i := range p.Rules {
		if p.Rules[i].Matches(mc) {
			return &p.Rules[i]
		}
	}
	return nil
}

// setsDelay reports whether the rule sets any delay parameter.
func (r *Rule) setsDelay() bool {
	return r != nil && (r.Strategy != "" || r.Base != nil || r.Cap != nil || r.Multiplier != nil || r.Jitter != nil || r.JitterFraction != nil)
}
