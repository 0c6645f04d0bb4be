package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// lagLead is how long after seeding the first lag step becomes due.
const lagLead = 1.0 // seconds

// lagTemplate is background data only: lagBackground waiting steps not yet
// due and as many complete ones; each run adds its own lag steps.
func (b *bench) lagTemplate(ctx context.Context) error {
	return b.buildTemplate(ctx, templateSpec{
		name: "lag",
		seed: func(ctx context.Context, pool *pgxpool.Pool) error {
			return seedGroups(ctx, b.log, pool, []seedSpec{
				{kindNotDue, b.sz.lagBackground},
				{kindComplete, b.sz.lagBackground},
			})
		},
	})
}

// lagSchedule is one daemon configuration of the lag scenario.
type lagSchedule struct {
	name string
	args []string
	key  string // JSON key prefix
}

// lagSchedules are the cron-timed configurations (the timer gate off):
// what the schedule alone gives. The on-time part below measures the gate.
var lagSchedules = []lagSchedule{
	{name: "@every 1s, --wake-at-due=false", args: []string{"--schedule", "@every 1s", "--wake-at-due=false"}, key: "lag"},
	{name: "default (@every 5s), --wake-at-due=false", args: []string{"--wake-at-due=false"}, key: "lag_default"},
}

// lag: steps become due at a steady rate while `sweeper run` sweeps on its
// schedule; the lag of each step is its pending transition's created_at
// minus its due time (last_attempted_at + backoff), both database clock.
func (b *bench) lag(ctx context.Context) error {
	if err := b.lagTemplate(ctx); err != nil {
		return err
	}
	steps := max(1, int(b.sz.lagRate*b.sz.lagWindow.Seconds()+0.5))
	type perRun struct{ p50, p99, max []float64 }
	stats := make([]perRun, len(lagSchedules))
	unmovedTotal := make([]int, len(lagSchedules))
	for run := 1; run <= b.opts.runs; run++ {
		for i, sch := range lagSchedules { // interleaved: drift hits both alike
			err := b.onClone(ctx, "lag", func(name string) error {
				lags, unmoved, err := b.lagRun(ctx, name, sch, steps)
				if err != nil {
					return err
				}
				unmovedTotal[i] += unmoved
				st := &stats[i]
				st.p50 = append(st.p50, percentile(lags, 50))
				st.p99 = append(st.p99, percentile(lags, 99))
				st.max = append(st.max, maxOf(lags))
				b.log.printf("  run %d %s: %d steps, lag p50 %.0f ms, p99 %.0f ms, max %.0f ms, not moved %d",
					run, sch.name, len(lags), percentile(lags, 50), percentile(lags, 99), maxOf(lags), unmoved)
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	r := b.res
	for i, sch := range lagSchedules {
		st := stats[i]
		var tgt *target
		if sch.key == "lag" {
			tgt = atMost(1500)
		}
		desc := fmt.Sprintf("%s, %d steps due over %s", sch.name, steps, b.sz.lagWindow)
		r.add(row{scenario: "lag", metric: desc + ": p50", unit: "ms", value: median(st.p50), runs: st.p50})
		r.add(row{scenario: "lag", metric: desc + ": p99", unit: "ms", value: median(st.p99), runs: st.p99, target: tgt})
		r.add(row{scenario: "lag", metric: desc + ": max", unit: "ms", value: median(st.max), runs: st.max})
		r.set(sch.key+"_p50_ms", median(st.p50))
		r.set(sch.key+"_p99_ms", median(st.p99))
		r.set(sch.key+"_max_ms", median(st.max))
		if unmovedTotal[i] > 0 {
			r.note("lag %s: %d step(s) were still waiting %s after their due time; their lag is counted up to that moment",
				sch.name, unmovedTotal[i], b.sz.lagDrain)
		}
	}
	return b.onTime(ctx)
}

// lagRun starts the daemon on database, seeds steps due over lagWindow,
// waits until all moved (or lagDrain after the last due time), stops the
// daemon and returns every step's lag in ms, and how many never moved.
func (b *bench) lagRun(ctx context.Context, database string, sch lagSchedule, steps int) ([]float64, int, error) {
	d, err := b.startDaemon(ctx, b.url(database), sch.args...)
	if err != nil {
		return nil, 0, err
	}
	stopped := false
	defer func() {
		if !stopped {
			d.kill()
		}
	}()
	pool, err := b.connect(ctx, database)
	if err != nil {
		return nil, 0, err
	}
	defer pool.Close()
	every := b.sz.lagWindow.Seconds() / float64(steps)
	seeded := time.Now()
	if err := seedGroup(ctx, pool, kindLag, steps, 0, false, lagLead, every); err != nil {
		return nil, 0, err
	}
	deadline := seeded.Add(time.Duration((lagLead+b.sz.lagWindow.Seconds())*float64(time.Second)) + b.sz.lagDrain)
	for {
		var waiting int
		if err := pool.QueryRow(ctx, lagWaitingSQL).Scan(&waiting); err != nil {
			return nil, 0, fmt.Errorf("count waiting lag steps: %w", err)
		}
		if waiting == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	stopped = true
	if err := d.stop(); err != nil {
		return nil, 0, err
	}
	var lags []float64
	var unmoved int
	if err := pool.QueryRow(ctx, lagResultsSQL).Scan(&lags, &unmoved); err != nil {
		return nil, 0, fmt.Errorf("read lags: %w", err)
	}
	if len(lags) != steps {
		return nil, 0, fmt.Errorf("lag: %d steps seeded, %d accounted for", steps, len(lags))
	}
	return lags, unmoved, nil
}

// Lag steps are the only steps with a 60 s backoff (the background's are
// at least an hour).
const lagWaitingSQL = `
SELECT count(*)
FROM tasker.workflow_step_transitions cur
JOIN tasker.workflow_steps ws ON ws.workflow_step_uuid = cur.workflow_step_uuid
WHERE cur.most_recent AND cur.to_state = 'waiting_for_retry' AND ws.backoff_request_seconds = 60`

// lagResultsSQL: moved steps' lag is their pending row's created_at minus
// their due time; a step never moved counts until now().
const lagResultsSQL = `
SELECT coalesce(array_agg(extract(epoch FROM coalesce(moved.created_at, now()::timestamp)
                                       - (ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second')) * 1000
                          ORDER BY ws.workflow_step_uuid), '{}')::float8[],
       count(*) FILTER (WHERE moved.created_at IS NULL)::int
FROM tasker.workflow_steps ws
LEFT JOIN tasker.workflow_step_transitions moved
    ON moved.workflow_step_uuid = ws.workflow_step_uuid
   AND moved.to_state = 'pending' AND moved.from_state = 'waiting_for_retry'
WHERE ws.backoff_request_seconds = 60`

// On time: the timer gate on the default schedule. Steps arrive at
// onTimeRate per second for onTimeWindow, half parked by the inline handler
// (POST /v1/steps/{uuid}/failures with a Retry-After of 2 to 5 s, spread over
// the replicas) and half by the orchestrator (one SQL statement: the backoff
// columns, 2 to 5 s, and a waiting_for_retry transition with no sweeper
// metadata, found by adoption). Lag as above. With 1 and with 4 replicas,
// the sweep side's database statements (pg_stat_statements, when the server
// has it) and transactions (xact_commit, less the parks' and the harness's
// own) are counted per moved step. Then one replica on the same data with
// nothing due for an hour: statements and transactions per minute.

// onTimeParkSQL is the orchestrator parking one step (its error handling):
// the backoff columns and the waiting_for_retry transition, one statement.
const onTimeParkSQL = `/* bench */
WITH step AS (
    UPDATE tasker.workflow_steps
    SET attempts = 1, last_attempted_at = now(), backoff_request_seconds = $2, in_process = false, updated_at = now()
    WHERE workflow_step_uuid = $1
    RETURNING workflow_step_uuid
), retired AS (
    UPDATE tasker.workflow_step_transitions t
    SET most_recent = false, updated_at = now()
    FROM step
    WHERE t.workflow_step_uuid = step.workflow_step_uuid AND t.most_recent
    RETURNING t.sort_key, t.to_state
)
INSERT INTO tasker.workflow_step_transitions
    (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
SELECT $1, 'waiting_for_retry', retired.to_state,
       '{"event": "{\"type\":\"WaitForRetry\"}", "actor": "tasker-orchestration"}'::jsonb,
       retired.sort_key + 1, true, now(), now()
FROM retired`

// onTimeLagSQL: every step of the run (the ones seeded in the clone, in
// enqueued_as_error_for_orchestration until parked) with its lag, whether
// the handler parked it, and whether it moved.
const onTimeLagSQL = `/* bench */
SELECT coalesce(array_agg(extract(epoch FROM coalesce(moved.created_at, now()::timestamp)
                                       - (ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second')) * 1000
                          ORDER BY ws.workflow_step_uuid), '{}')::float8[],
       coalesce(array_agg(cur.metadata ? 'sweeper_scheduled' ORDER BY ws.workflow_step_uuid), '{}')::bool[],
       count(*) FILTER (WHERE moved.created_at IS NULL)::int,
       count(*) FILTER (WHERE moved.created_at < ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second')::int,
       count(*) FILTER (WHERE twice.n > 1)::int
FROM tasker.workflow_steps ws
JOIN tasker.workflow_step_transitions cur
    ON cur.workflow_step_uuid = ws.workflow_step_uuid AND cur.to_state = 'waiting_for_retry'
LEFT JOIN LATERAL (
    SELECT min(p.created_at) AS created_at FROM tasker.workflow_step_transitions p
    WHERE p.workflow_step_uuid = ws.workflow_step_uuid AND p.to_state = 'pending' AND p.from_state = 'waiting_for_retry'
) moved ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS n FROM tasker.workflow_step_transitions p
    WHERE p.workflow_step_uuid = ws.workflow_step_uuid AND p.to_state = 'pending' AND p.from_state = 'waiting_for_retry'
) twice ON true
WHERE ws.workflow_step_uuid = ANY($1)`

// onTimeWaitingSQL counts the run's steps still waiting.
const onTimeWaitingSQL = `/* bench */
SELECT count(*) FROM tasker.workflow_step_transitions
WHERE workflow_step_uuid = ANY($1) AND most_recent AND to_state = 'waiting_for_retry'`

// onTimeResult is one on-time run.
type onTimeResult struct {
	lags, handlerLags, orchLags  []float64 // ms
	moved, unmoved, early, twice int
	// stmts (-1: not counted) and xacts are the sweep side's.
	stmts, xacts int64
	parksFailed  int
}

func (b *bench) onTime(ctx context.Context) error {
	steps := max(2, int(b.sz.onTimeRate*b.sz.onTimeWindow.Seconds()+0.5))
	type perRun struct {
		p50, p99, max, hp99, op99, stmts, xacts []float64
	}
	replicaCounts := []int{1, 4}
	stats := make([]perRun, len(replicaCounts))
	for run := 1; run <= b.opts.runs; run++ {
		for i, n := range replicaCounts {
			err := b.onClone(ctx, "lag", func(name string) error {
				res, err := b.onTimeRun(ctx, name, n, steps)
				if err != nil {
					return err
				}
				st := &stats[i]
				st.p50 = append(st.p50, percentile(res.lags, 50))
				st.p99 = append(st.p99, percentile(res.lags, 99))
				st.max = append(st.max, maxOf(res.lags))
				st.hp99 = append(st.hp99, percentile(res.handlerLags, 99))
				st.op99 = append(st.op99, percentile(res.orchLags, 99))
				moved := float64(max(res.moved, 1))
				if res.stmts >= 0 {
					st.stmts = append(st.stmts, float64(res.stmts)/moved)
				}
				st.xacts = append(st.xacts, float64(res.xacts)/moved)
				b.log.printf("  run %d on time, %d replica(s): %d steps, lag p50 %.1f ms, p99 %.1f ms (handler %.1f, orchestrator %.1f), "+
					"max %.1f ms; not moved %d, early %d, twice %d; %s statements and %.2f transactions per moved step",
					run, n, len(res.lags), percentile(res.lags, 50), percentile(res.lags, 99),
					percentile(res.handlerLags, 99), percentile(res.orchLags, 99), maxOf(res.lags),
					res.unmoved, res.early, res.twice, perStep(res.stmts, moved), float64(res.xacts)/moved)
				if res.early > 0 || res.twice > 0 {
					return fmt.Errorf("on time: %d step(s) moved before their due time, %d twice", res.early, res.twice)
				}
				if res.unmoved > 0 {
					b.res.note("lag on time, %d replica(s): %d step(s) not moved %s after the last due time", n, res.unmoved, b.sz.lagDrain)
				}
				if res.parksFailed > 0 {
					b.res.note("lag on time, %d replica(s): %d park request(s) failed", n, res.parksFailed)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	r := b.res
	for i, n := range replicaCounts {
		st := stats[i]
		desc := fmt.Sprintf("on time (default schedule, timer gate), %d replica(s), %d steps at %.0f/s (handler + orchestrator)",
			n, steps, b.sz.onTimeRate)
		key := fmt.Sprintf("lag_ontime_%dr", n)
		r.add(row{scenario: "lag", metric: desc + ": p50", unit: "ms", value: median(st.p50), runs: st.p50, target: atMost(10)})
		r.add(row{scenario: "lag", metric: desc + ": p99", unit: "ms", value: median(st.p99), runs: st.p99, target: atMost(50)})
		r.add(row{scenario: "lag", metric: desc + ": max", unit: "ms", value: median(st.max), runs: st.max})
		r.add(row{
			scenario: "lag", metric: fmt.Sprintf("on time, %d replica(s): p99 of handler-parked steps", n), unit: "ms",
			value: median(st.hp99), runs: st.hp99,
		})
		r.add(row{
			scenario: "lag", metric: fmt.Sprintf("on time, %d replica(s): p99 of orchestrator-parked steps", n), unit: "ms",
			value: median(st.op99), runs: st.op99,
		})
		if len(st.stmts) > 0 {
			r.add(row{
				scenario: "lag", metric: fmt.Sprintf("on time, %d replica(s): sweep-side statements per moved step", n),
				unit: "stmts", value: median(st.stmts), runs: st.stmts,
			})
			r.set(key+"_stmts_per_step", median(st.stmts))
		}
		r.add(row{
			scenario: "lag", metric: fmt.Sprintf("on time, %d replica(s): sweep-side transactions per moved step", n),
			unit: "xacts", value: median(st.xacts), runs: st.xacts,
		})
		r.set(key+"_p50_ms", median(st.p50))
		r.set(key+"_p99_ms", median(st.p99))
		r.set(key+"_max_ms", median(st.max))
		r.set(key+"_xacts_per_step", median(st.xacts))
	}
	one, four := stats[0], stats[1]
	if len(one.stmts) > 0 && len(four.stmts) > 0 {
		ratio := median(four.stmts) / median(one.stmts)
		r.add(row{
			scenario: "lag", metric: "on time: statements per moved step, 4 replicas / 1", unit: "×", value: ratio,
			runs: ratios(four.stmts, one.stmts), target: atMost(1.5),
		})
		r.set("lag_ontime_stmts_ratio_4r", ratio)
	}
	xratio := median(four.xacts) / median(one.xacts)
	r.add(row{
		scenario: "lag", metric: "on time: transactions per moved step, 4 replicas / 1", unit: "×", value: xratio,
		runs: ratios(four.xacts, one.xacts), target: atMost(1.5),
	})
	r.set("lag_ontime_xacts_ratio_4r", xratio)
	return b.onTimeIdle(ctx)
}

func perStep(stmts int64, moved float64) string {
	if stmts < 0 {
		return "(uncounted)"
	}
	return fmt.Sprintf("%.2f", float64(stmts)/moved)
}

// onTimeRun seeds steps awaiting the handler's decision in database,
// starts replicas daemons, parks the steps at onTimeRate (alternately
// handler and orchestrator, 2 to 5 s backoffs), waits until they moved
// and returns the lags and the sweep side's statement counts.
//
// Transaction counts are flushed by a backend at most every second, and an
// idle one may sit on them for 10 s; an exiting one flushes them. So the
// counters are read only while no session is connected: the daemons start
// once and stop (their start-up: first reconcile pass, adoption), the
// counters are read, they start again for the measured part and stop, and
// the counters are read again. The harness's own transactions in the clone
// (parks, polls) are counted and subtracted.
func (b *bench) onTimeRun(ctx context.Context, database string, replicas, steps int) (onTimeResult, error) {
	res := onTimeResult{stmts: -1}
	var ids []uuid.UUID
	err := b.withPool(ctx, database, func(pool *pgxpool.Pool) error {
		if err := seedGroup(ctx, pool, kindAwaitingDecision, steps, 0, false, 0, 0); err != nil {
			return err
		}
		var err error
		ids, err = b.awaitingSteps(ctx, database)
		return err
	})
	if err != nil {
		return res, err
	}
	if err := b.countStatementsIn(ctx, database); err != nil {
		return res, err
	}
	if err := b.warmUp(ctx, database, replicas); err != nil {
		return res, err
	}
	// The clone's copy and the seeding leave dirty pages behind: write
	// them out now rather than under the measured part.
	if _, err := b.admin.Exec(ctx, "CHECKPOINT"); err != nil {
		return res, fmt.Errorf("checkpoint: %w", err)
	}
	before, err := b.sweepCounters(ctx, database)
	if err != nil {
		return res, err
	}
	daemons, err := b.startDaemons(ctx, database, replicas)
	defer func() {
		for _, d := range daemons {
			d.kill()
		}
	}()
	if err != nil {
		return res, err
	}
	pool, err := b.connect(ctx, database)
	if err != nil {
		return res, err
	}
	defer pool.Close()
	harness := int64(0) // the harness's own transactions in database
	select {            // the daemons' first look at the schedule, adoption pass, listener
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(time.Second):
	}

	transport := &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	var (
		handlerOK, orchOK, failed atomic.Int64
		wg                        sync.WaitGroup
	)
	jobs := make(chan int, 64)
	for range 8 {
		wg.Go(func() {
			for i := range jobs {
				backoff := 2 + rand.IntN(4)
				if i%2 == 0 {
					ok, err := reportFailureAfter(ctx, client, daemons[(i/2)%replicas].addr, ids[i], backoff)
					if ok && err == nil {
						handlerOK.Add(1)
					} else {
						failed.Add(1)
					}
					continue
				}
				if _, err := pool.Exec(ctx, onTimeParkSQL, ids[i], backoff); err != nil {
					failed.Add(1)
					continue
				}
				orchOK.Add(1)
			}
		})
	}
	start := time.Now()
	every := time.Duration(float64(time.Second) / b.sz.onTimeRate)
	for i := range ids {
		if wait := time.Until(start.Add(time.Duration(i) * every)); wait > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
		if ctx.Err() != nil {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	deadline := time.Now().Add(5*time.Second + b.sz.lagDrain)
	for {
		var waiting int
		if err := pool.QueryRow(ctx, onTimeWaitingSQL, ids).Scan(&waiting); err != nil {
			return res, fmt.Errorf("count waiting steps: %w", err)
		}
		harness++
		if waiting == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	for _, d := range daemons {
		if err := d.stop(); err != nil {
			return res, err
		}
	}
	daemons = nil
	pool.Close()
	after, err := b.sweepCounters(ctx, database)
	if err != nil {
		return res, err
	}
	if before.stmts >= 0 {
		res.stmts = after.stmts - before.stmts
	}
	// Each handled failure is two single-statement transactions (the read
	// and the park), each orchestrator park one.
	res.xacts = after.xacts - before.xacts - 2*handlerOK.Load() - orchOK.Load() - harness
	res.parksFailed = int(failed.Load())

	var handlerParked []bool
	err = b.withPool(ctx, database, func(pool *pgxpool.Pool) error {
		return pool.QueryRow(ctx, onTimeLagSQL, ids).Scan(&res.lags, &handlerParked, &res.unmoved, &res.early, &res.twice)
	})
	if err != nil {
		return res, fmt.Errorf("read lags: %w", err)
	}
	for i, lag := range res.lags {
		if handlerParked[i] {
			res.handlerLags = append(res.handlerLags, lag)
		} else {
			res.orchLags = append(res.orchLags, lag)
		}
	}
	res.moved = len(res.lags) - res.unmoved
	return res, nil
}

// startDaemons starts n daemons on database with extra flags; on error the
// ones started are returned too (the caller kills them).
func (b *bench) startDaemons(ctx context.Context, database string, n int, extra ...string) ([]*daemon, error) {
	var ds []*daemon
	for range n {
		d, err := b.startDaemon(ctx, b.url(database), extra...)
		if err != nil {
			return ds, err
		}
		ds = append(ds, d)
	}
	return ds, nil
}

// warmUp runs n daemons on database through their start-up (the first
// adoption pass reconciles a new database) and stops them.
func (b *bench) warmUp(ctx context.Context, database string, n int, extra ...string) error {
	ds, err := b.startDaemons(ctx, database, n, extra...)
	defer func() {
		for _, d := range ds {
			d.kill()
		}
	}()
	if err != nil {
		return err
	}
	err = b.withPool(ctx, database, func(pool *pgxpool.Pool) error {
		return waitFor(ctx, 30*time.Second, func() (bool, error) {
			var set bool
			err := pool.QueryRow(ctx, `/* bench */ SELECT last_full_pass IS NOT NULL FROM tasker_sweeper.adoption`).Scan(&set)
			return set, err
		})
	})
	if err != nil {
		return fmt.Errorf("wait for the first reconcile pass: %w", err)
	}
	for _, d := range ds {
		if err := d.stop(); err != nil {
			return err
		}
	}
	ds = nil
	return nil
}

// reportFailureAfter posts a retryable failure with a Retry-After.
func reportFailureAfter(ctx context.Context, client *http.Client, addr string, step uuid.UUID, seconds int) (bool, error) {
	body := fmt.Sprintf(`{"message":"connection reset by peer","retry_after":%d}`, seconds)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		"http://"+addr+"/v1/steps/"+step.String()+"/failures", strings.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("build failure request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return false, fmt.Errorf("POST failures: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	var out struct {
		Action string `json:"action"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&out) != nil {
		return false, nil
	}
	return out.Action == "TransitionedToWaitingForRetry", nil
}

// onTimeIdle: one replica (then one with --wake-at-due=false) on the lag
// data with nothing due for at least an hour; its statements and
// transactions per minute, over onTimeIdleWindow (its start-up included:
// connections, the first look at the schedule and adoption pass).
func (b *bench) onTimeIdle(ctx context.Context) error {
	for _, mode := range []struct {
		name, key string
		args      []string
	}{
		{"timer gate (default)", "idle_ontime", nil},
		{"--wake-at-due=false", "idle_cron", []string{"--wake-at-due=false"}},
	} {
		err := b.onClone(ctx, "lag", func(name string) error {
			if err := b.countStatementsIn(ctx, name); err != nil {
				return err
			}
			if err := b.warmUp(ctx, name, 1, mode.args...); err != nil {
				return err
			}
			before, err := b.sweepCounters(ctx, name)
			if err != nil {
				return err
			}
			d, err := b.startDaemon(ctx, b.url(name), mode.args...)
			if err != nil {
				return err
			}
			defer d.kill()
			start := time.Now()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(b.sz.onTimeIdleWindow):
			}
			if err := d.stop(); err != nil {
				return err
			}
			elapsed := time.Since(start)
			after, err := b.sweepCounters(ctx, name)
			if err != nil {
				return err
			}
			perMin := func(n int64) float64 { return float64(n) / elapsed.Minutes() }
			xacts := perMin(after.xacts - before.xacts)
			desc := fmt.Sprintf("idle replica (nothing due for an hour), %s", mode.name)
			if before.stmts >= 0 {
				stmts := perMin(after.stmts - before.stmts)
				b.res.add(row{scenario: "lag", metric: desc + ": statements per minute", unit: "stmts/min", value: stmts, runs: []float64{stmts}})
				b.res.set(mode.key+"_stmts_per_min", stmts)
				b.log.printf("  idle, %s: %.0f statements and %.0f transactions per minute", mode.name, stmts, xacts)
			} else {
				b.log.printf("  idle, %s: %.0f transactions per minute", mode.name, xacts)
			}
			b.res.add(row{scenario: "lag", metric: desc + ": transactions per minute", unit: "xacts/min", value: xacts, runs: []float64{xacts}})
			b.res.set(mode.key+"_xacts_per_min", xacts)
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// counters are a database's statement and transaction counts.
type counters struct {
	stmts int64 // -1: pg_stat_statements is not available
	xacts int64
}

// countStatementsIn makes the daemons' sessions in database tracked by
// pg_stat_statements (when the server loads it); call it before they
// connect.
func (b *bench) countStatementsIn(ctx context.Context, database string) error {
	if !b.pgss {
		return nil
	}
	_, err := b.admin.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{database}.Sanitize()+" SET pg_stat_statements.track = 'top'")
	if err != nil {
		return fmt.Errorf("track statements in %s: %w", database, err)
	}
	return nil
}

// sweepCounters reads, from the admin database (so the reads count in
// neither), database's committed transactions and the statements of the
// sweep side: everything but the inline handler's (StepGet,
// FailureApplyScheduled) and the harness's own (tagged /* bench */).
// Transactions a session has not flushed yet are missed: read them while no
// session is connected (an exiting backend flushes its own).
func (b *bench) sweepCounters(ctx context.Context, database string) (counters, error) {
	c := counters{stmts: -1}
	err := waitFor(ctx, 30*time.Second, func() (bool, error) {
		var sessions int
		err := b.admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1`, database).Scan(&sessions)
		return sessions == 0, err
	})
	if err != nil {
		return c, fmt.Errorf("wait for the sessions on %s to end: %w", database, err)
	}
	if err := b.admin.QueryRow(ctx, `SELECT xact_commit FROM pg_stat_database WHERE datname = $1`, database).Scan(&c.xacts); err != nil {
		return c, fmt.Errorf("read xact_commit: %w", err)
	}
	if !b.pgss {
		return c, nil
	}
	err = b.admin.QueryRow(ctx, `
SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)
  AND query NOT LIKE '/* bench */%'
  AND query NOT LIKE '-- name: StepGet %'
  AND query NOT LIKE '-- name: FailureApplyScheduled %'`, database).Scan(&c.stmts)
	if err != nil {
		return c, fmt.Errorf("read pg_stat_statements: %w", err)
	}
	return c, nil
}

// waitFor polls cond every 50 ms until it holds, for at most limit.
func waitFor(ctx context.Context, limit time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
