package handling

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tasker-sweeper/retrysweeper/backoff"
)

// The ranges tasker accepts for a template step's retry settings.
const (
	templateMinBaseMs = 100
	templateMaxBaseMs = 3_600_000
	templateMinCapMs  = 1_000
	templateMaxCapMs  = 3_600_000
)

// AllSteps is the step name of an environment override that applies to every
// step of the template; an override naming the step wins over it.
const AllSteps = "ALL"

// TaskTemplate is the retry part of a task template as tasker stores it in
// tasker.named_tasks.configuration: each step's retry settings and the
// environments' overrides. ParseTaskTemplate makes one; it is immutable.
type TaskTemplate struct {
	// Name is the template's name (named_tasks.name).
	Name  string
	steps map[string]templateRetry
	envs  map[string]templateEnv
}

// templateEnv is one environment's overrides: by step name, AllSteps for every step.
type templateEnv map[string]templateRetry

// templateRetry is a step's `retry` object; nil fields were not given.
type templateRetry struct {
	Retryable   *bool   `json:"retryable"`
	MaxAttempts *int    `json:"max_attempts"`
	Backoff     *string `json:"backoff"`
	BaseMs      *int64  `json:"backoff_base_ms"`
	CapMs       *int64  `json:"max_backoff_ms"`
}

type templateStepJSON struct {
	Name  *string        `json:"name"`
	Retry *templateRetry `json:"retry"`
}

type templateJSON struct {
	Steps        []templateStepJSON `json:"steps"`
	Environments map[string]struct {
		Steps []templateStepJSON `json:"steps"`
	} `json:"environments"`
}

// TemplatePolicy is one step's declared retry policy: its template entry with
// the environment's overrides applied. A nil Base or Cap was not declared (the
// global flag's value applies).
type TemplatePolicy struct {
	// Template is the template's name; Step the step's.
	Template, Step string
	Strategy       backoff.Strategy
	Base, Cap      *time.Duration
	// Overrides names the environment overrides applied, in order
	// (environments.<env>.ALL, then environments.<env>.<step>).
	Overrides []string
}

// ParseTaskTemplate reads a template's configuration (JSON). It fails when the
// JSON does not parse, a step has no name, or a retry setting is of the wrong
// type or out of tasker's ranges (a backoff other than none, linear,
// exponential, fibonacci; a base outside 100–3,600,000 ms; a cap outside
// 1,000–3,600,000 ms). An empty or JSON-null configuration is a template
// without steps.
func ParseTaskTemplate(name string, config []byte) (*TaskTemplate, error) {
	t := &TaskTemplate{Name: name, steps: map[string]templateRetry{}, envs: map[string]templateEnv{}}
	if len(config) == 0 {
		return t, nil
	}
	var raw templateJSON
	if err := json.Unmarshal(config, &raw); err != nil {
		return nil, fmt.Errorf("configuration of task template %q does not parse: %w", name, err)
	}
	for i, s := range raw.Steps {
		if s.Name == nil || *s.Name == "" {
			return nil, fmt.Errorf("task template %q: steps[%d] has no name", name, i)
		}
		r := templateRetry{}
		if s.Retry != nil {
			if err := s.Retry.validate(); err != nil {
				return nil, fmt.Errorf("task template %q: step %s: %w", name, *s.Name, err)
			}
			r = *s.Retry
		}
		t.steps[*s.Name] = r
	}
	for env, e := range raw.Environments {
		overrides := templateEnv{}
		for i, s := range e.Steps {
			if s.Name == nil || *s.Name == "" {
				return nil, fmt.Errorf("task template %q: environments.%s.steps[%d] has no name", name, env, i)
			}
			if s.Retry == nil {
				continue
			}
			if err := s.Retry.validate(); err != nil {
				return nil, fmt.Errorf("task template %q: environments.%s step %s: %w", name, env, *s.Name, err)
			}
			overrides[*s.Name] = s.Retry.merge(overrides[*s.Name])
		}
		t.envs[env] = overrides
	}
	return t, nil
}

func (r templateRetry) validate() error {
	if r.Backoff != nil {
		if _, err := backoff.ParseStrategy(*r.Backoff); err != nil {
			return err
		}
	}
	if r.BaseMs != nil && (*r.BaseMs < templateMinBaseMs || *r.BaseMs > templateMaxBaseMs) {
		return fmt.Errorf("backoff_base_ms %d is outside %d–%d", *r.BaseMs, templateMinBaseMs, templateMaxBaseMs)
	}
	if r.CapMs != nil && (*r.CapMs < templateMinCapMs || *r.CapMs > templateMaxCapMs) {
		return fmt.Errorf("max_backoff_ms %d is outside %d–%d", *r.CapMs, templateMinCapMs, templateMaxCapMs)
	}
	if r.MaxAttempts != nil && (*r.MaxAttempts < 1 || *r.MaxAttempts > 100) {
		return fmt.Errorf("max_attempts %d is outside 1–100", *r.MaxAttempts)
	}
	return nil
}

// merge returns r with the fields it lacks taken from under.
func (r templateRetry) merge(under templateRetry) templateRetry {
	if r.Retryable == nil {
		r.Retryable = under.Retryable
	}
	if r.MaxAttempts == nil {
		r.MaxAttempts = under.MaxAttempts
	}
	if r.Backoff == nil {
		r.Backoff = under.Backoff
	}
	if r.BaseMs == nil {
		r.BaseMs = under.BaseMs
	}
	if r.CapMs == nil {
		r.CapMs = under.CapMs
	}
	return r
}

// ErrNoTemplateEntry means the template has no entry for the step.
var ErrNoTemplateEntry = errors.New("no entry for the step in its task template")

// StepPolicy returns the declared policy of step under environment env (""
// for none): the step's retry settings, overridden field by field by
// environments.<env>'s ALL entry and then by its entry for the step (a field
// an override leaves out or sets to null keeps the value under it). A backoff
// declared nowhere is exponential, tasker's default. ErrNoTemplateEntry when
// the template lists no such step.
func (t *TaskTemplate) StepPolicy(step, env string) (TemplatePolicy, error) {
	r, ok := t.steps[step]
	if !ok {
		return TemplatePolicy{}, fmt.Errorf("task template %q, step %q: %w", t.Name, step, ErrNoTemplateEntry)
	}
	p := TemplatePolicy{Template: t.Name, Step: step}
	if e, ok := t.envs[env]; ok && env != "" {
		if all, ok := e[AllSteps]; ok {
			r = all.merge(r)
			p.Overrides = append(p.Overrides, "environments."+env+"."+AllSteps)
		}
		if named, ok := e[step]; ok && step != AllSteps {
			r = named.merge(r)
			p.Overrides = append(p.Overrides, "environments."+env+"."+step)
		}
	}
	p.Strategy = backoff.StrategyExponential
	if r.Backoff != nil {
		p.Strategy = backoff.Strategy(*r.Backoff) // validated by ParseTaskTemplate
	}
	if r.BaseMs != nil {
		d := time.Duration(*r.BaseMs) * time.Millisecond
		p.Base = &d
	}
	if r.CapMs != nil {
		d := time.Duration(*r.CapMs) * time.Millisecond
		p.Cap = &d
	}
	return p, nil
}
