package handling

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
)

// TemplateRecord is a task template's row: its name, namespace,
// configuration (JSON, nil when NULL) and updated_at.
type TemplateRecord struct {
	Name, Namespace string
	Configuration   []byte
	UpdatedAt       time.Time
}

// ErrTemplateNotFound means the named task row is gone.
var ErrTemplateNotFound = errors.New("task template not found")

// TemplateStore reads task templates. A Store that implements it gives the
// Service template policies; one that does not gives only the flags and the
// policy file.
type TemplateStore interface {
	// TaskTemplate reads one named task; ErrTemplateNotFound when absent.
	TaskTemplate(ctx context.Context, namedTask uuid.UUID) (TemplateRecord, error)
}

// maxCachedTemplates bounds the cache; past it, it starts over.
const maxCachedTemplates = 10_000

// templateCache keeps each template's parsed configuration by named task,
// with the updated_at it was read at: the step's read says when it is stale,
// so a hit costs no query.
type templateCache struct {
	store   TemplateStore
	mu      sync.Mutex
	entries map[uuid.UUID]templateEntry
}

type templateEntry struct {
	updatedAt time.Time
	template  *TaskTemplate
	err       error // the configuration does not parse
}

func newTemplateCache(store TemplateStore) *templateCache {
	return &templateCache{store: store, entries: map[uuid.UUID]templateEntry{}}
}

// get returns the template as of updatedAt (or newer), reading it on a miss.
// fresh is true when this call parsed it (so a parse error is logged once).
func (c *templateCache) get(ctx context.Context, named uuid.UUID, updatedAt time.Time) (e templateEntry, fresh bool, err error) {
	c.mu.Lock()
	e, ok := c.entries[named]
	c.mu.Unlock()
	if ok && !e.updatedAt.Before(updatedAt) {
		return e, false, nil
	}
	rec, err := c.store.TaskTemplate(ctx, named)
	if err != nil {
		return templateEntry{}, false, err
	}
	e = templateEntry{updatedAt: rec.UpdatedAt}
	e.template, e.err = ParseTaskTemplate(rec.Namespace+"/"+rec.Name, rec.Configuration)
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.entries[named]; ok && !cur.updatedAt.Before(e.updatedAt) {
		return cur, false, nil // another failure read the same version first
	}
	if len(c.entries) >= maxCachedTemplates {
		clear(c.entries)
	}
	c.entries[named] = e
	return e, true, nil
}

// templatePolicy finds step's template policy: the policy, or nil and why
// not; invalid names a template whose configuration does not parse.
func (s *Service) templatePolicy(ctx context.Context, step Step) (tp *TemplatePolicy, note, invalid string) {
	if s.templates == nil {
		return nil, "", ""
	}
	if step.NamedTaskUUID == uuid.Nil {
		return nil, "no task template: the step's task has no template row", ""
	}
	e, fresh, err := s.templates.get(ctx, step.NamedTaskUUID, step.TemplateUpdatedAt)
	switch {
	case errors.Is(err, ErrTemplateNotFound):
		return nil, "no task template: the template row is gone", ""
	case err != nil:
		// Never an error for the failure: the flags decide, and the next
		// failure reads the template again.
		s.logger.LogAttrs(ctx, slog.LevelWarn, "cannot read the task template: the global policy applies",
			slog.String("named_task_uuid", step.NamedTaskUUID.String()), slog.Any("error", err))
		return nil, "task template unreadable (" + err.Error() + "): the global policy applies", ""
	case e.err != nil:
		name := step.TaskNamespace + "/" + step.TaskName
		if fresh {
			s.logger.LogAttrs(ctx, slog.LevelWarn, "task template configuration does not parse: its steps get the global policy",
				slog.String("template", name), slog.String("named_task_uuid", step.NamedTaskUUID.String()),
				slog.Time("updated_at", e.updatedAt), slog.Any("error", e.err))
		}
		return nil, e.err.Error() + ": the global policy applies", name
	}
	p, err := e.template.StepPolicy(step.Name, s.cfg.TaskerEnv)
	if err != nil {
		return nil, err.Error(), ""
	}
	return &p, "", ""
}

// observe feeds a written decision to the hooks.
func (s *Service) observe(d Decision, invalidTemplate string) {
	if d.Rule != nil && s.hooks.RuleMatched != nil {
		s.hooks.RuleMatched(d.Rule.ID)
	}
	if invalidTemplate != "" && s.hooks.TemplateInvalid != nil {
		s.hooks.TemplateInvalid(invalidTemplate)
	}
}
