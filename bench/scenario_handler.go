package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

// handlerBody is a retryable (network) failure, as a worker reports it.
const handlerBody = `{"message":"connection reset by peer"}`

// handler: POST /v1/steps/{uuid}/failures from handlerClients concurrent
// clients, each step reported once, for handlerDuration or until the steps
// run out. Every step is in enqueued_as_error_for_orchestration after its
// first attempt, so every report is a real retry decision with a write
// (backoff + transition to waiting_for_retry in one transaction).
func (b *bench) handler(ctx context.Context) error {
	err := b.buildTemplate(ctx, templateSpec{
		name: "handler",
		seed: func(ctx context.Context, pool *pgxpool.Pool) error {
			return seedGroups(ctx, b.log, pool, []seedSpec{{kindAwaitingDecision, b.sz.handlerSteps}})
		},
	})
	if err != nil {
		return err
	}
	var rates, p50s, p99s []float64
	var failed int
	for run := 1; run <= b.opts.runs; run++ {
		err := b.onClone(ctx, "handler", func(name string) error {
			res, err := b.handlerRun(ctx, name)
			if err != nil {
				return err
			}
			failed += res.failed
			rate := float64(res.ok) / res.elapsed.Seconds()
			rates = append(rates, rate)
			p50s = append(p50s, percentile(res.latencies, 50))
			p99s = append(p99s, percentile(res.latencies, 99))
			b.log.printf("  run %d: %d failures handled in %.1fs: %.0f/s, p50 %.1f ms, p99 %.1f ms, errors %d",
				run, res.ok, res.elapsed.Seconds(), rate, percentile(res.latencies, 50), percentile(res.latencies, 99), res.failed)
			return nil
		})
		if err != nil {
			return err
		}
	}
	r := b.res
	desc := fmt.Sprintf("POST /v1/steps/{uuid}/failures, %d clients, timer gate on, task templates", b.sz.handlerClients)
	r.add(row{scenario: "handler", metric: desc, unit: "failures/s", value: median(rates), runs: rates, target: atLeast(1500)})
	r.add(row{scenario: "handler", metric: desc + ": p50", unit: "ms", value: median(p50s), runs: p50s})
	r.add(row{scenario: "handler", metric: desc + ": p99", unit: "ms", value: median(p99s), runs: p99s, target: atMost(25)})
	r.set("handler_per_s", median(rates))
	r.set("handler_p50_ms", median(p50s))
	r.set("handler_p99_ms", median(p99s))
	r.set("handler_errors", failed)
	if failed > 0 {
		r.note("handler: %d request(s) failed or did not answer 200 with action TransitionedToWaitingForRetry", failed)
	}
	return nil
}

type handlerResult struct {
	ok        int
	failed    int
	elapsed   time.Duration
	latencies []float64 // ms, every answered request
}

func (b *bench) handlerRun(ctx context.Context, database string) (handlerResult, error) {
	var res handlerResult
	steps, err := b.awaitingSteps(ctx, database)
	if err != nil {
		return res, err
	}
	// The daemon as operators run it: the timer gate on (each park may
	// notify the listeners and pull the timer in), the task template's
	// retry policy with its production overrides applied to every failure,
	// the cron schedule out of the way.
	d, err := b.startDaemon(ctx, b.url(database), "--schedule", quietSchedule, "--tasker-env", "production")
	if err != nil {
		return res, err
	}
	transport := &http.Transport{MaxIdleConnsPerHost: b.sz.handlerClients * 2, DisableCompression: true}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	// One sweep first: the daemon under load is one that has been running
	// (and has swept at least once), not one answering its first requests.
	if _, err := postSweep(ctx, client, d.addr); err != nil {
		_ = d.stop()
		return res, fmt.Errorf("warm-up sweep: %w", err)
	}

	var (
		next     atomic.Int64
		mu       sync.Mutex
		wg       sync.WaitGroup
		firstErr error // the first request that failed outright
	)
	start := time.Now()
	deadline := start.Add(b.sz.handlerDuration)
	for range b.sz.handlerClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []float64
			var ok, failed int
			for ctx.Err() == nil && time.Now().Before(deadline) {
				i := next.Add(1) - 1
				if i >= int64(len(steps)) {
					break
				}
				t0 := time.Now()
				good, err := reportFailure(ctx, client, d.addr, steps[i])
				lat = append(lat, ms(time.Since(t0)))
				if err != nil && ctx.Err() == nil {
					// A request that fails outright (a timeout, say) is
					// counted, and its time stays in the latencies.
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
				if good {
					ok++
				} else {
					failed++
				}
			}
			mu.Lock()
			res.latencies = append(res.latencies, lat...)
			res.ok += ok
			res.failed += failed
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	if err := d.stop(); err != nil {
		return res, err
	}
	sort.Float64s(res.latencies)
	if firstErr != nil {
		b.log.printf("  handler: %d request(s) failed; the first: %v", res.failed, firstErr)
	}
	return res, ctx.Err()
}

// reportFailure posts one failure; false when the answer is not a 200
// TransitionedToWaitingForRetry or the request itself failed (err).
func reportFailure(ctx context.Context, client *http.Client, addr string, step uuid.UUID) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		"http://"+addr+"/v1/steps/"+step.String()+"/failures", bytes.NewReader([]byte(handlerBody)))
	if err != nil {
		return false, fmt.Errorf("build failure request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return false, fmt.Errorf("POST failures: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return false, fmt.Errorf("read failure response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return false, nil
	}
	var out struct {
		Action string `json:"action"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return false, nil
	}
	return out.Action == "TransitionedToWaitingForRetry", nil
}

// awaitingSteps lists the steps waiting for the handler's decision, in a
// random order (so concurrent clients do not hit neighbouring rows in
// lockstep).
func (b *bench) awaitingSteps(ctx context.Context, database string) ([]uuid.UUID, error) {
	pool, err := b.connect(ctx, database)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	rows, err := pool.Query(ctx, `
SELECT cur.workflow_step_uuid FROM tasker.workflow_step_transitions cur
WHERE cur.most_recent AND cur.to_state = 'enqueued_as_error_for_orchestration'
ORDER BY md5(cur.workflow_step_uuid::text)`)
	if err != nil {
		return nil, fmt.Errorf("list awaiting steps: %w", err)
	}
	var steps []uuid.UUID
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("scan step: %w", err)
		}
		steps = append(steps, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list awaiting steps: %w", err)
	}
	return steps, nil
}
