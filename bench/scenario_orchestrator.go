package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// orchestratorUpdateSQL is the orchestrator's write to a step when it
// records an attempt's backoff: one row, autocommit.
const orchestratorUpdateSQL = `
UPDATE tasker.workflow_steps
SET backoff_request_seconds = $2, last_attempted_at = now(), updated_at = now()
WHERE workflow_step_uuid = $1`

// orchestratorSlices is how many time slices each variant gets per run.
const orchestratorSlices = 8

// orchestrator: does the sweeper slow the orchestrator's own writes? The
// update above runs on random steps of the idle data from
// orchestratorConns connections. Each run clones both variants (without
// and with the sweeper-owned objects) and alternates short slices between
// them, orchestratorSlices each, so that drift in the machine's speed (a
// VM's neighbours, a checkpoint) hits both alike; the variant that goes
// first alternates from run to run.
func (b *bench) orchestrator(ctx context.Context) error {
	if err := b.idleTemplate(ctx); err != nil {
		return err
	}
	steps := b.idleSteps
	var without, with []float64
	for run := 1; run <= b.opts.runs; run++ {
		err := b.onClone(ctx, "idle_base", func(base string) error {
			return b.onClone(ctx, "idle", func(full string) error {
				wo, w, err := b.orchestratorRun(ctx, base, full, steps, run%2 == 0)
				if err != nil {
					return err
				}
				without, with = append(without, wo), append(with, w)
				b.log.printf("  run %d: %.0f updates/s without the sweeper-owned objects, %.0f with: slowdown %.1f %%",
					run, wo, w, (wo-w)/wo*100)
				return nil
			})
		})
		if err != nil {
			return err
		}
	}
	wo, w := median(without), median(with)
	slowdown := (wo - w) / wo * 100
	sets := "none"
	if names := sweeperSetNames(); len(names) > 0 {
		sets = strings.Join(names, ", ")
	}
	r := b.res
	desc := fmt.Sprintf("UPDATE workflow_steps by uuid, %d conns, %d steps", b.sz.orchestratorConns, len(steps))
	r.add(row{scenario: "orchestrator", metric: desc + ", tasker schema only", unit: "updates/s", value: wo, runs: without})
	r.add(row{scenario: "orchestrator", metric: desc + ", + sweeper-owned objects (" + sets + ")", unit: "updates/s", value: w, runs: with})
	r.add(row{
		scenario: "orchestrator", metric: "slowdown with the sweeper-owned objects", unit: "%", value: slowdown,
		runs: slowdowns(without, with), target: atMost(10),
	})
	r.set("orchestrator_update_slowdown_pct", slowdown)
	r.set("orchestrator_updates_per_s_without", wo)
	r.set("orchestrator_updates_per_s_with", w)
	return nil
}

func slowdowns(without, with []float64) []float64 {
	out := make([]float64, min(len(without), len(with)))
	for i := range out {
		out[i] = (without[i] - with[i]) / without[i] * 100
	}
	return out
}

// orchestratorRun alternates slices of updates between the two databases
// and returns each one's updates per second.
func (b *bench) orchestratorRun(ctx context.Context, without, with string, steps []uuid.UUID, withFirst bool) (float64, float64, error) {
	var conns [2][]*pgx.Conn
	for v, database := range []string{without, with} {
		for range b.sz.orchestratorConns {
			c, err := b.connectOne(ctx, database)
			if err != nil {
				return 0, 0, err
			}
			conns[v] = append(conns[v], c)
			defer func() { _ = c.Close(context.WithoutCancel(ctx)) }()
		}
	}
	for v := range conns {
		if err := prewarm(ctx, conns[v][0]); err != nil {
			return 0, 0, err
		}
	}
	slice := b.sz.orchestratorDuration / orchestratorSlices
	var updates [2]int64
	var elapsed [2]time.Duration
	first := 0
	if withFirst {
		first = 1
	}
	for i := range 2 * orchestratorSlices {
		v := (first + i) % 2
		n, d, err := updateSlice(ctx, conns[v], steps, slice, uint64(i))
		if err != nil {
			return 0, 0, err
		}
		updates[v] += n
		elapsed[v] += d
	}
	return float64(updates[0]) / elapsed[0].Seconds(), float64(updates[1]) / elapsed[1].Seconds(), nil
}

// prewarm reads the relations the update touches (the steps' heap and
// primary key) into the operating system's page cache, so neither variant
// starts with an advantage from what earlier scenarios left cached: the
// "with" template's clones are read by the idle scenario before this one,
// the tasker-only template's are not, and in one full run that alone made
// the variant with the sweeper's objects 10 % faster.
func prewarm(ctx context.Context, conn *pgx.Conn) error {
	for _, sql := range []string{
		`CREATE EXTENSION IF NOT EXISTS pg_prewarm`,
		`SELECT pg_prewarm('tasker.workflow_steps', 'read')`,
		`SELECT pg_prewarm('tasker.workflow_steps_pkey', 'read')`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("prewarm: %s: %w", sql, err)
		}
	}
	return nil
}

// updateSlice runs the orchestrator's update on random steps from every
// connection for d, and returns how many ran and how long it took.
func updateSlice(ctx context.Context, conns []*pgx.Conn, steps []uuid.UUID, d time.Duration, seed uint64) (int64, time.Duration, error) {
	var (
		total    atomic.Int64
		wg       sync.WaitGroup
		errMu    sync.Mutex
		firstErr error
	)
	start := time.Now()
	deadline := start.Add(d)
	for i, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed*1000+uint64(i)+1, uint64(start.UnixNano())))
			var n int64
			for ctx.Err() == nil && time.Now().Before(deadline) {
				step := steps[rng.IntN(len(steps))]
				tag, err := conn.Exec(ctx, orchestratorUpdateSQL, step, 1+rng.IntN(300))
				if err == nil && tag.RowsAffected() != 1 {
					err = fmt.Errorf("update of step %s touched %d rows", step, tag.RowsAffected())
				}
				if err != nil {
					errMu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("orchestrator update: %w", err)
					}
					errMu.Unlock()
					return
				}
				n++
			}
			total.Add(n)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return 0, 0, firstErr
	}
	return total.Load(), elapsed, ctx.Err()
}

// allSteps lists every step id of a database.
func allSteps(ctx context.Context, pool *pgxpool.Pool) ([]uuid.UUID, error) {
	rows, err := pool.Query(ctx, "SELECT workflow_step_uuid FROM tasker.workflow_steps")
	if err != nil {
		return nil, fmt.Errorf("list steps: %w", err)
	}
	steps, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("list steps: %w", err)
	}
	return steps, nil
}
