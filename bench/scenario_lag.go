package main

import (
	"context"
	"fmt"
	"time"

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

var lagSchedules = []lagSchedule{
	{name: "@every 1s", args: []string{"--schedule", "@every 1s"}, key: "lag"},
	{name: "default (@every 5s)", key: "lag_default"},
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
	return nil
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
