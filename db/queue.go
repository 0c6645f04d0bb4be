package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tasker-sweeper/retrysweeper/db/internal/dbsqlc"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

var (
	_ sweeper.QueueStore  = (*Store)(nil)
	_ sweeper.PauseReader = (*Store)(nil)
)

// queueState is what the queue's reads remember between calls: whether
// the pause switch is installed (once seen, for good) and whether this role
// may read the task tables (asked once).
type queueState struct {
	pauseInstalled atomic.Bool
	taskNames      atomic.Int32 // 0: not asked yet, 1: readable, 2: not
}

// ListSteps implements sweeper.QueueStore for a normalized query: on the
// schedule path the waiting, due and stranded steps come from the retry
// schedule (its due_at index, its partial index of stranded rows), so a
// page costs in proportion to its limit; errors, and everything on the scan
// path, come from the current transitions in step order.
func (s *Store) ListSteps(ctx context.Context, q sweeper.StepQuery) (sweeper.StepPage, error) {
	p, err := s.choose(ctx)
	if err != nil {
		return sweeper.StepPage{}, err
	}
	var cur sweeper.Cursor
	if q.Cursor != "" {
		if cur, err = sweeper.DecodeCursor(q.Cursor, q.State); err != nil {
			return sweeper.StepPage{}, err
		}
	}
	var older *float64
	if q.OlderThan > 0 {
		secs := q.OlderThan.Seconds()
		older = &secs
	}
	var name *string
	if q.Name != "" {
		name = &q.Name
	}
	limit := int32(q.Limit)
	kind := p.listing(q.State)
	byDue := kind == listByDue
	if byDue != (cur.DueAt != "") && q.Cursor != "" {
		return sweeper.StepPage{}, &sweeper.InputError{
			Field:   "cursor",
			Problem: "invalid cursor: it was handed out by a listing in another order (pass a page's next_cursor unchanged)",
		}
	}
	var (
		items []sweeper.StepItem
		dues  []string
	)
	switch kind {
	case listByDue:
		var after *string
		if cur.DueAt != "" {
			after = &cur.DueAt
		}
		rows, err := s.q.StepListSchedule(ctx, dbsqlc.StepListScheduleParams{
			Now: s.now(), AfterDue: after, AfterStep: cur.Step, OnlyDue: q.State == sweeper.ListDue,
			TaskUUID: q.Task, StepName: name, OlderThanSeconds: older, RowLimit: limit,
		})
		if err != nil {
			return sweeper.StepPage{}, fmt.Errorf("list steps: %w", asSentinel(err))
		}
		for _, r := range rows {
			items = append(items, stepItem(dbsqlc.StepShowRow(stepRowOf(r))))
			dues = append(dues, r.SortDueAt)
		}
	case listStranded:
		rows, err := s.q.StepListStranded(ctx, dbsqlc.StepListStrandedParams{
			Now: s.now(), AfterStep: cur.Step, TaskUUID: q.Task, StepName: name, OlderThanSeconds: older, RowLimit: limit,
		})
		if err != nil {
			return sweeper.StepPage{}, fmt.Errorf("list steps: %w", asSentinel(err))
		}
		for _, r := range rows {
			items = append(items, stepItem(dbsqlc.StepShowRow(r)))
		}
	default:
		state := string(q.State)
		if q.State == sweeper.ListDue || q.State == sweeper.ListStranded {
			state = string(statemachine.WaitingForRetry)
		}
		rows, err := s.q.StepListByState(ctx, dbsqlc.StepListByStateParams{
			Now: s.now(), State: state, AfterStep: cur.Step,
			OnlyDue: q.State == sweeper.ListDue, OnlyStranded: q.State == sweeper.ListStranded,
			TaskUUID: q.Task, StepName: name, OlderThanSeconds: older, RowLimit: limit,
		})
		if err != nil {
			return sweeper.StepPage{}, fmt.Errorf("list steps: %w", asSentinel(err))
		}
		for _, r := range rows {
			items = append(items, stepItem(dbsqlc.StepShowRow(r)))
		}
	}
	if err := s.nameTasks(ctx, items); err != nil {
		return sweeper.StepPage{}, err
	}
	page := sweeper.StepPage{Steps: items}
	if page.Steps == nil {
		page.Steps = []sweeper.StepItem{}
	}
	if len(items) == q.Limit {
		last := sweeper.Cursor{State: q.State, Step: items[len(items)-1].StepUUID}
		if byDue {
			last.DueAt = dues[len(dues)-1]
		}
		page.NextCursor = last.Encode()
	}
	return page, nil
}

// listing is the query a step listing reads.
type listing int

const (
	listByState  listing = iota // tasker's index of current transitions, in step order
	listByDue                   // the retry schedule in due order (schedule path)
	listStranded                // the schedule's index of stranded rows (schedule path)
)

// The scan path keeps no schedule: every listing reads the transitions,
// and a manual change or a grant has nothing to keep in step.
func (*scanStore) listing(sweeper.ListState) listing { return listByState }

func (*scanStore) afterManualChange(context.Context, *dbsqlc.Queries, uuid.UUID, statemachine.State) error {
	return nil
}

func (*scanStore) afterGrant(context.Context, *dbsqlc.Queries, uuid.UUID) error { return nil }

// On the schedule path the waiting and due steps are listed from the
// schedule in due order and the stranded ones from its stranded index.
func (*scheduleStore) listing(state sweeper.ListState) listing {
	switch state {
	case sweeper.ListWaiting, sweeper.ListDue:
		return listByDue
	case sweeper.ListStranded:
		return listStranded
	default:
		return listByState
	}
}

// afterManualChange drops the schedule row of a step a manual change took
// out of waiting_for_retry.
func (*scheduleStore) afterManualChange(ctx context.Context, q *dbsqlc.Queries, step uuid.UUID, to statemachine.State) error {
	if to == statemachine.WaitingForRetry {
		return nil
	}
	if err := q.ScheduleDrop(ctx, step); err != nil {
		return fmt.Errorf("drop step %s from the schedule: %w", step, asSentinel(err))
	}
	return nil
}

// afterGrant re-times a granted step's schedule row (no longer stranded;
// due when its backoff has passed) and tells every daemon's timer, as a
// park does.
func (s *scheduleStore) afterGrant(ctx context.Context, q *dbsqlc.Queries, step uuid.UUID) error {
	due, err := q.ScheduleRetime(ctx, dbsqlc.ScheduleRetimeParams{Now: s.now(), WorkflowStepUUID: step})
	if err != nil {
		return fmt.Errorf("re-time step %s on the schedule: %w", step, asSentinel(err))
	}
	if due == "" {
		return nil
	}
	return asSentinel(q.SweepNotify(ctx, dbsqlc.SweepNotifyParams{Channel: ParkedChannel, Payload: due}))
}

// stepRowOf drops the schedule listing's sort key.
func stepRowOf(r dbsqlc.StepListScheduleRow) dbsqlc.StepListStrandedRow {
	return dbsqlc.StepListStrandedRow{
		WorkflowStepUUID: r.WorkflowStepUUID, TaskUUID: r.TaskUUID, StepName: r.StepName,
		CurrentState: r.CurrentState, CurrentSortKey: r.CurrentSortKey, Attempts: r.Attempts,
		MaxAttempts: r.MaxAttempts, Retryable: r.Retryable, Processed: r.Processed, InProcess: r.InProcess,
		RetryEligible: r.RetryEligible, UnmetParents: r.UnmetParents, Due: r.Due, NeverDue: r.NeverDue,
		DueAt: r.DueAt, DueFromBackoff: r.DueFromBackoff, EnteredAt: r.EnteredAt, FailureMetadata: r.FailureMetadata,
		ResultErrorMessage: r.ResultErrorMessage, ResultErrorCategory: r.ResultErrorCategory,
		ResultErrorCode: r.ResultErrorCode, DbNow: r.DbNow,
	}
}

// handlerActor is the actor the inline handler writes into its transitions.
const handlerActor = "tasker-sweeper/inline-handler"

// stepItem maps one listed row; the rule's verdict explains itself through
// sweeper.StepDue.
func stepItem(r dbsqlc.StepShowRow) sweeper.StepItem {
	state := statemachine.State(r.CurrentState)
	it := sweeper.StepItem{
		StepUUID: r.WorkflowStepUUID, TaskUUID: r.TaskUUID, Name: r.StepName, State: state,
		Attempts: r.Attempts, MaxAttempts: r.MaxAttempts, Retryable: r.Retryable,
		EnteredAt: timeOf(r.EnteredAt), SortKey: r.CurrentSortKey,
	}
	it.Rule = sweeper.StepDue{
		StepUUID: r.WorkflowStepUUID, State: state, Processed: r.Processed, InProcess: r.InProcess,
		RetryEligible: r.RetryEligible, Retryable: r.Retryable, Attempts: r.Attempts, MaxAttempts: r.MaxAttempts,
		UnmetParents: int(r.UnmetParents), IsDue: r.Due, NeverDue: r.NeverDue, DueAt: r.DueAt,
		DueFromBackoff: r.DueFromBackoff, DBNow: r.DbNow,
		MovableButForTime: state == statemachine.WaitingForRetry && !r.Processed && !r.InProcess &&
			r.UnmetParents == 0 && r.RetryEligible,
	}
	due, why := it.Rule.Due()
	it.Due = due
	if !due {
		it.WhyNotDue = why
	}
	if state == statemachine.WaitingForRetry {
		at := r.DueAt.UTC()
		it.DueAt = &at
	}
	meta := map[string]any{}
	if len(r.FailureMetadata) > 0 {
		_ = json.Unmarshal(r.FailureMetadata, &meta) // a document another writer mangled just says less
	}
	if state == statemachine.WaitingForRetry {
		switch actor, _ := meta["actor"].(string); {
		case actor == handlerActor:
			it.ParkedBy = "handler"
		case actor != "":
			it.ParkedBy = actor
		default:
			it.ParkedBy = "other"
		}
	}
	le := sweeper.LastError{Category: str(meta["category"]), Code: str(meta["error_code"])}
	le.Message = eventMessage(meta)
	if le.Message == "" {
		le.Message = first(str(meta["error_message"]), str(meta["message"]), r.ResultErrorMessage)
	}
	le.Category = first(le.Category, r.ResultErrorCategory)
	le.Code = first(le.Code, r.ResultErrorCode)
	if le != (sweeper.LastError{}) {
		it.LastError = &le
	}
	return it
}

// eventMessage is the message of the event a transition's metadata holds
// (tasker stores the event's JSON as a string), empty when there is none.
func eventMessage(meta map[string]any) string {
	raw, ok := meta["event"].(string)
	if !ok {
		return ""
	}
	var ev statemachine.Event
	if err := json.Unmarshal([]byte(raw), &ev); err != nil || ev.Data == nil {
		return ""
	}
	return *ev.Data
}

func eventType(meta map[string]any) string {
	raw, ok := meta["event"].(string)
	if !ok {
		return ""
	}
	var ev struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal([]byte(raw), &ev)
	return ev.Type
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func first(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// timeOf reads a timestamp a query may return as NULL (not finite).
func timeOf(v any) *time.Time {
	t, ok := v.(time.Time)
	if !ok {
		return nil
	}
	t = t.UTC()
	return &t
}

// nameTasks fills the namespace and name of each item's task, when this
// role may read the task tables (they are not among the grants the sweeper
// needs; without them the names stay empty).
func (s *Store) nameTasks(ctx context.Context, items []sweeper.StepItem) error {
	if len(items) == 0 {
		return nil
	}
	if s.queue.taskNames.Load() == 0 {
		readable, err := s.q.TaskNamesReadable(ctx)
		if err != nil {
			return fmt.Errorf("look up the task tables: %w", asSentinel(err))
		}
		v := int32(2)
		if readable {
			v = 1
		}
		s.queue.taskNames.Store(v)
	}
	if s.queue.taskNames.Load() != 1 {
		return nil
	}
	ids := make([]uuid.UUID, 0, len(items))
	for _, it := range items {
		ids = append(ids, it.TaskUUID)
	}
	rows, err := s.q.TaskNames(ctx, ids)
	if err != nil {
		return fmt.Errorf("name the tasks: %w", asSentinel(err))
	}
	names := make(map[uuid.UUID]dbsqlc.TaskNamesRow, len(rows))
	for _, r := range rows {
		names[r.TaskUUID] = r
	}
	for i := range items {
		if n, ok := names[items[i].TaskUUID]; ok {
			items[i].Namespace, items[i].TaskName = n.Namespace, n.TaskName
		}
	}
	return nil
}

// StepDetail implements sweeper.QueueStore.
func (s *Store) StepDetail(ctx context.Context, step uuid.UUID) (sweeper.StepDetail, error) {
	row, err := s.q.StepShow(ctx, dbsqlc.StepShowParams{Now: s.now(), WorkflowStepUUID: step})
	if errors.Is(err, pgx.ErrNoRows) {
		return sweeper.StepDetail{}, fmt.Errorf("step %s: %w", step, statemachine.ErrStepNotFound)
	}
	if err != nil {
		return sweeper.StepDetail{}, fmt.Errorf("read step %s: %w", step, asSentinel(err))
	}
	d := sweeper.StepDetail{StepItem: stepItem(row), History: []sweeper.HistoryEntry{}}
	items := []sweeper.StepItem{d.StepItem}
	if err := s.nameTasks(ctx, items); err != nil {
		return sweeper.StepDetail{}, err
	}
	d.StepItem = items[0]
	hist, err := s.q.StepHistory(ctx, dbsqlc.StepHistoryParams{WorkflowStepUUID: step, RowLimit: sweeper.HistoryLimit})
	if err != nil {
		return sweeper.StepDetail{}, fmt.Errorf("read step %s history: %w", step, asSentinel(err))
	}
	for _, h := range hist {
		meta := map[string]any{}
		_ = json.Unmarshal(h.Metadata, &meta)
		e := sweeper.HistoryEntry{
			SortKey: h.SortKey, To: statemachine.State(h.ToState), At: timeOf(h.CreatedAt),
			Event: eventType(meta), Message: eventMessage(meta), Who: str(meta["actor"]), Why: str(meta["why"]),
			Operation: str(meta["operation"]), MostRecent: h.MostRecent,
		}
		if h.FromState != nil {
			from := statemachine.State(*h.FromState)
			e.From = &from
		}
		if list, ok := meta["manual_changes"].([]any); ok {
			for _, c := range list {
				if m, ok := c.(map[string]any); ok {
					e.Manual = append(e.Manual, m)
				}
			}
		}
		d.History = append(d.History, e)
	}
	return d, nil
}

// ManualTransition implements sweeper.QueueStore: the compare-and-swap
// write of TransitionWrite, and on the schedule path the step's schedule
// row dropped in the same transaction (it no longer waits).
func (s *Store) ManualTransition(ctx context.Context, t sweeper.ManualTransition) error {
	p, err := s.choose(ctx)
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		res, err := writeTransition(ctx, q, Transition{StepUUID: t.Step, From: t.From, Event: t.Event, Provenance: t.Provenance})
		if err != nil {
			return err
		}
		return p.afterManualChange(ctx, q, t.Step, res.To)
	})
}

// GrantAttempts implements sweeper.QueueStore: max_attempts raised as a
// compare-and-swap on the step as read (its retry columns and its current
// waiting_for_retry row), the grant recorded in that row's metadata, and on
// the schedule path its schedule row re-timed (no longer stranded; due when
// its backoff has passed), all in one transaction.
func (s *Store) GrantAttempts(ctx context.Context, g sweeper.Grant) error {
	p, err := s.choose(ctx)
	if err != nil {
		return err
	}
	change, err := json.Marshal(g.Provenance)
	if err != nil {
		return fmt.Errorf("encode the grant: %w", err)
	}
	step := g.Read.StepUUID
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		_, err := q.StepGrantAttempts(ctx, dbsqlc.StepGrantAttemptsParams{
			NewMaxAttempts: g.NewMaxAttempts, WorkflowStepUUID: step, ReadMaxAttempts: g.Read.MaxAttempts,
			ReadAttempts: g.Read.Attempts, ReadRetryable: g.Read.Retryable, ReadSortKey: g.Read.SortKey,
		})
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("grant step %s: it changed since it was read: %w", step, statemachine.ErrLostRace)
		}
		if err != nil {
			return fmt.Errorf("grant step %s: %w", step, asSentinel(err))
		}
		_, err = q.StepGrantMark(ctx, dbsqlc.StepGrantMarkParams{Change: change, WorkflowStepUUID: step, ReadSortKey: g.Read.SortKey})
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("grant step %s: its state changed since it was read: %w", step, statemachine.ErrLostRace)
		}
		if err != nil {
			return fmt.Errorf("record the grant on step %s: %w", step, asSentinel(err))
		}
		return p.afterGrant(ctx, q, step)
	})
}

// PauseState implements sweeper.PauseReader: not paused when the switch is
// not installed (the scan path, or objects older than the switch).
func (s *Store) PauseState(ctx context.Context) (sweeper.Pause, error) {
	installed, err := s.pauseInstalled(ctx)
	if err != nil || !installed {
		return sweeper.Pause{}, err
	}
	row, err := s.q.PauseGet(ctx)
	if errors.Is(err, pgx.ErrNoRows) {
		return sweeper.Pause{}, nil
	}
	if err != nil {
		return sweeper.Pause{}, fmt.Errorf("read the pause switch: %w", asSentinel(err))
	}
	return pauseOf(row.Paused, row.PausedBy, row.Reason, row.Since), nil
}

func (s *Store) pauseInstalled(ctx context.Context) (bool, error) {
	if s.queue.pauseInstalled.Load() {
		return true, nil
	}
	present, err := s.q.PausePresent(ctx)
	if err != nil {
		return false, fmt.Errorf("look for the pause switch: %w", asSentinel(err))
	}
	if present {
		s.queue.pauseInstalled.Store(true)
	}
	return present, nil
}

// SetPause implements sweeper.QueueStore; sweeper.ErrNoSchedule when the
// switch is not installed.
func (s *Store) SetPause(ctx context.Context, paused bool, by, reason string) (sweeper.Pause, bool, error) {
	installed, err := s.pauseInstalled(ctx)
	if err != nil {
		return sweeper.Pause{}, false, err
	}
	if !installed {
		return sweeper.Pause{}, false, sweeper.ErrNoSchedule
	}
	row, err := s.q.PauseSet(ctx, dbsqlc.PauseSetParams{Paused: paused, PausedBy: by, Reason: reason})
	if errors.Is(err, pgx.ErrNoRows) {
		return sweeper.Pause{}, false, sweeper.ErrNoSchedule
	}
	if err != nil {
		return sweeper.Pause{}, false, fmt.Errorf("set the pause switch: %w", asSentinel(err))
	}
	return pauseOf(row.Paused, row.PausedBy, row.Reason, row.Since), row.Changed, nil
}

func pauseOf(paused bool, by, reason *string, since *time.Time) sweeper.Pause {
	if !paused {
		return sweeper.Pause{}
	}
	p := sweeper.Pause{Paused: true}
	if by != nil {
		p.By = *by
	}
	if reason != nil {
		p.Reason = *reason
	}
	if since != nil {
		t := since.UTC()
		p.Since = &t
	}
	return p
}
