package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

var bothPaths = []string{pathSchedule, pathScan}

func scenarios() []scenario {
	return []scenario{
		{id: "1", name: "kill -9 once mid-backlog", paths: bothPaths, shortPaths: bothPaths, run: killOnce},
		{id: "2", name: "kill -9 daemon mid-backlog", paths: bothPaths, shortPaths: bothPaths, run: killDaemon},
		{id: "3a", name: "postgres restart -m fast", paths: bothPaths, shortPaths: []string{pathSchedule}, ownServer: true, run: pgRestart("fast")},
		{id: "3b", name: "postgres restart -m immediate", paths: bothPaths, shortPaths: []string{pathScan}, ownServer: true, run: pgRestart("immediate")},
		{id: "3c", name: "postgres stopped", paths: bothPaths, shortPaths: []string{pathSchedule}, ownServer: true, run: pgRestart("stopped")},
		{id: "4", name: "pg_terminate_backend mid-sweep", paths: bothPaths, shortPaths: bothPaths, run: terminateSessions},
		{id: "5", name: "earliest-due rows locked", paths: bothPaths, shortPaths: bothPaths, run: lockedRows},
		{id: "6", name: "daemons + failure stream", paths: bothPaths, shortPaths: []string{pathSchedule}, run: failureStream},
		{id: "7", name: "SIGTERM with blocked batches", paths: bothPaths, shortPaths: bothPaths, run: sigtermBlocked},
		{id: "8", name: "poisoned rows (±infinity)", paths: bothPaths, shortPaths: bothPaths, run: poisonedRows},
		{id: "9", name: "in-place edits + reconcile", paths: bothPaths, shortPaths: bothPaths, run: inPlaceEdits},
	}
}

// killOnce: `sweeper once` killed with SIGKILL twice in the middle of a
// large backlog, then run to the end.
func killOnce(ctx context.Context, r *run) error {
	n := r.sz.killBacklog
	if _, err := seed(ctx, r.d.pool, dueGroup(n)); err != nil {
		return err
	}
	if _, err := seed(ctx, r.d.pool, laterGroup(200, 7200)); err != nil {
		return err
	}
	var killedAt []string
	for _, frac := range []float64{0.05, 0.5} {
		p, err := r.start("once", "once", "--json", "--log-level", "warn", "--batch-size", "500")
		if err != nil {
			return err
		}
		got, err := waitMoved(ctx, r.d.pool, int(frac*float64(n))+1, 2*time.Minute, p.running)
		if err != nil {
			return fmt.Errorf("before the kill: %w (once exit %d: %s)", err, p.exitCode(), p.lastError())
		}
		p.kill()
		killedAt = append(killedAt, fmt.Sprintf("%d", got))
		if err := waitSessionsGone(ctx, r.c.admin, r.d, 30*time.Second); err != nil {
			r.problem("%v", err)
		}
		r.logf("killed once with %d of %d moved", got, n)
	}
	before, err := movedCount(ctx, r.d.pool)
	if err != nil {
		return err
	}
	sum, _, err := r.once(ctx)
	if err != nil {
		r.problem("final run: %v", err)
	}
	r.note("killed with %s of %d moved; the rerun moved %d (had %d), exit 0", strings.Join(killedAt, " and "), n, sum.Transitioned, before)
	return nil
}

// killDaemon: `sweeper run` killed with SIGKILL twice mid-backlog, then
// started again; the last one must drain the backlog and stop cleanly.
func killDaemon(ctx context.Context, r *run) error {
	n := r.sz.killBacklog
	if _, err := seed(ctx, r.d.pool, dueGroup(n)); err != nil {
		return err
	}
	var killedAt []string
	for i, frac := range []float64{0.05, 0.5} {
		p, err := r.daemon(ctx, fmt.Sprintf("run-%d", i+1), "--batch-size", "500")
		if err != nil {
			return err
		}
		got, err := waitMoved(ctx, r.d.pool, int(frac*float64(n))+1, 2*time.Minute, p.running)
		if err != nil {
			return fmt.Errorf("before the kill: %w", err)
		}
		p.kill()
		killedAt = append(killedAt, fmt.Sprintf("%d", got))
		if err := waitSessionsGone(ctx, r.c.admin, r.d, 30*time.Second); err != nil {
			r.problem("%v", err)
		}
	}
	p, err := r.daemon(ctx, "run-3", "--batch-size", "500")
	if err != nil {
		return err
	}
	start := time.Now()
	if left, sample, err := waitDrained(ctx, r.d.pool, 2*time.Minute, 0, nil); err != nil || left > 0 {
		r.problem("restarted daemon left %d due steps waiting after 2m (e.g. %v; %v)", left, sample, err)
	}
	r.note("killed with %s of %d moved; restarted daemon drained the rest in %.1fs", strings.Join(killedAt, " and "), n,
		time.Since(start).Seconds())
	r.stopDaemons(p)
	return nil
}

// pgRestart: the server restarted (pg_ctl stop -m fast or immediate, then
// started again) or stopped for a while under a running daemon with a
// backlog; the daemon must recover by itself: drain the backlog, move steps
// parked after the restart, and serve its API again.
func pgRestart(mode string) func(ctx context.Context, r *run) error {
	return func(ctx context.Context, r *run) error {
		n := r.sz.restartBacklog
		if _, err := seed(ctx, r.d.pool, dueGroup(n)); err != nil {
			return err
		}
		running, err := seed(ctx, r.d.pool, runningGroup(20))
		if err != nil {
			return err
		}
		p, err := r.daemon(ctx, "run", "--batch-size", "200", "--backoff-max", "2s")
		if err != nil {
			return err
		}
		got, err := waitMoved(ctx, r.d.pool, n/10+1, 2*time.Minute, p.running)
		if err != nil {
			return fmt.Errorf("before the fault: %w", err)
		}
		switch mode {
		case "stopped":
			if err := r.c.stopServer(ctx, "fast"); err != nil {
				return err
			}
			if err := p.waitReady(ctx, 15*time.Second, http.StatusServiceUnavailable); err != nil {
				r.problem("while the server was down: %v", err)
			}
			// The outage itself is the fault, not a check.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(r.sz.outage):
			}
		default:
			if err := r.c.stopServer(ctx, mode); err != nil {
				return err
			}
		}
		if err := r.c.startServer(ctx); err != nil {
			return err
		}
		backAt := time.Now()
		r.d.pool.Reset()
		if !p.running() {
			return fmt.Errorf("the daemon exited (code %d) during the outage: %s", p.exitCode(), p.lastError())
		}
		if err := p.waitReady(ctx, 30*time.Second, http.StatusOK); err != nil {
			r.problem("after the restart: %v", err)
		}
		// Steps that fail after the restart: half parked by the
		// orchestrator, half reported through the daemon's API.
		if err := orchestratorPark(ctx, r.d.pool, running[:10], 0); err != nil {
			return fmt.Errorf("park after the restart: %w", err)
		}
		client := &http.Client{Timeout: 10 * time.Second}
		for _, step := range running[10:] {
			if err := p.postFailure(ctx, client, step, "read tcp: connection reset by peer"); err != nil {
				r.problem("API after the restart: %v", err)
				break
			}
		}
		if left, sample, err := waitDrained(ctx, r.d.pool, 90*time.Second, 0, nil); err != nil || left > 0 {
			r.problem("%d due steps still waiting 90s after the restart (e.g. %v; %v)", left, sample, err)
		}
		drained := time.Since(backAt)
		// The API's failures wait out a backoff of about 2 s first.
		if states, err := waitStates(ctx, r.d.pool, running, "pending", 30*time.Second); err != nil {
			r.problem("steps failed after the restart: %v, want all %d pending (%v)", states, len(running), err)
		}
		what := "restarted -m " + mode
		if mode == "stopped" {
			what = fmt.Sprintf("stopped for %s", r.sz.outage)
		}
		r.note("%s with %d of %d moved; the daemon drained the backlog %.1fs after the server was back and moved the %d steps failed after it",
			what, got, n, drained.Seconds(), len(running))
		r.stopDaemons(p)
		return nil
	}
}

// terminateSessions: pg_terminate_backend of every sweeper session while a
// daemon sweeps a backlog, several times; it must carry on and drain.
func terminateSessions(ctx context.Context, r *run) error {
	n := r.sz.terminateBacklog
	if _, err := seed(ctx, r.d.pool, dueGroup(n)); err != nil {
		return err
	}
	p, err := r.daemon(ctx, "run", "--batch-size", "100", "--workers", "2")
	if err != nil {
		return err
	}
	kills, ended := 0, 0
	for kills < r.sz.terminations {
		active, err := waitActive(ctx, r, 30*time.Second)
		if err != nil {
			return err
		}
		if !active {
			break // drained before every termination landed
		}
		var killed int
		err = r.c.admin.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
FROM pg_stat_activity
WHERE datname = $1 AND application_name = $2 AND pid <> pg_backend_pid()`, r.d.name, sweeperApp).Scan(&killed)
		if err != nil {
			return fmt.Errorf("terminate sweeper sessions: %w", err)
		}
		kills++
		ended += killed
		before, err := movedCount(ctx, r.d.pool)
		if err != nil {
			return err
		}
		// Progress after each termination: the daemon recovered.
		if before < n {
			if _, err := waitMoved(ctx, r.d.pool, before+1, 30*time.Second, p.running); err != nil {
				r.problem("no progress after termination %d: %v", kills, err)
				break
			}
		}
	}
	if kills == 0 {
		return errors.New("the backlog drained before any termination landed mid-sweep")
	}
	if left, sample, err := waitDrained(ctx, r.d.pool, 90*time.Second, 0, nil); err != nil || left > 0 {
		r.problem("%d due steps still waiting after the terminations (e.g. %v; %v)", left, sample, err)
	}
	r.note("%d terminations mid-sweep (%d sessions ended); backlog of %d drained", kills, ended, n)
	r.stopDaemons(p)
	return nil
}

// waitActive polls until one of the sweeper's sessions in the database is
// running a statement; false when the backlog drained first.
func waitActive(ctx context.Context, r *run, limit time.Duration) (bool, error) {
	deadline := time.Now().Add(limit)
	for {
		var active int
		err := r.c.admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE datname = $1 AND application_name = $2 AND state IN ('active', 'idle in transaction')`, r.d.name, sweeperApp).Scan(&active)
		if err == nil && active > 0 {
			return true, nil
		}
		if left, _, derr := dueWaiting(ctx, r.d.pool, 0, nil); derr == nil && left == 0 {
			return false, nil
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("no sweeper session active for %s", limit)
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// lockedRows: another session holds the earliest-due steps (their rows and
// current transitions, FOR UPDATE) for a while; every other due step,
// including those that become due meanwhile, must move in that time, and
// the locked ones after the release.
func lockedRows(ctx context.Context, r *run) error {
	hold := r.sz.lockHold
	locked := 3 * r.sz.lockBatch / 2 // more than one batch of the earliest
	due, err := seed(ctx, r.d.pool, group{
		children: r.sz.lockDue, history: "waiting", lastAgo: 3600, stagger: 0.01,
		backoff: ptr(int32(2)), attempts: 1, maxAttempts: 3, retryable: true,
	})
	if err != nil {
		return err
	}
	late, err := seed(ctx, r.d.pool, laterGroup(r.sz.lockLate, int32(hold.Seconds()/2)))
	if err != nil {
		return err
	}
	r.locked = due[:locked]
	conn, err := connectOne(ctx, r.d.url, harnessApp+"-locker")
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin locker: %w", err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	tag, err := tx.Exec(ctx, `
SELECT 1 FROM tasker.workflow_steps ws
JOIN tasker.workflow_step_transitions cur ON cur.workflow_step_uuid = ws.workflow_step_uuid AND cur.most_recent
WHERE ws.workflow_step_uuid = ANY($1::uuid[])
FOR UPDATE OF ws, cur`, r.locked)
	if err != nil {
		return fmt.Errorf("lock the earliest steps: %w", err)
	}
	if tag.RowsAffected() != int64(locked) {
		return fmt.Errorf("locked %d rows, want %d", tag.RowsAffected(), locked)
	}
	lockedAt := time.Now()
	p, err := r.daemon(ctx, "run", "--batch-size", fmt.Sprint(r.sz.lockBatch))
	if err != nil {
		return err
	}
	// Every unlocked due step moves while the lock is held, and so does
	// every late step once its backoff expires halfway through.
	var left int64
	var sample []uuid.UUID
	for {
		left, sample, err = dueWaiting(ctx, r.d.pool, 0, r.locked)
		if err != nil {
			return err
		}
		lateStates, err := stateCounts(ctx, r.d.pool, late)
		if err != nil {
			return err
		}
		if left == 0 && lateStates["pending"] == len(late) {
			break
		}
		if time.Since(lockedAt) > hold {
			r.problem("%d unlocked due step(s) still waiting after %s of locks on the %d earliest (e.g. %v); late steps: %v",
				left, hold, locked, sample, lateStates)
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	movedIn := time.Since(lockedAt)
	states, err := stateCounts(ctx, r.d.pool, r.locked)
	if err != nil {
		return err
	}
	if states["waiting_for_retry"] != locked {
		r.problem("locked steps moved under the lock: %v", states)
	}
	if err := tx.Rollback(ctx); err != nil {
		return fmt.Errorf("release the locks: %w", err)
	}
	releasedAt := time.Now()
	r.locked = nil
	if n, sample, err := waitDrained(ctx, r.d.pool, time.Minute, 0, nil); err != nil || n > 0 {
		r.problem("%d due step(s) still waiting 1m after the release (e.g. %v; %v)", n, sample, err)
	}
	r.note("%d earliest locked: the other %d due + %d late moved in %.1fs under the lock; the locked ones %.1fs after release",
		locked, len(due)-locked, len(late), movedIn.Seconds(), time.Since(releasedAt).Seconds())
	r.stopDaemons(p)
	return nil
}

// failureStream: several daemons sweep one database while failures keep
// arriving three ways (the orchestrator parking steps itself, `sweeper
// fail`, and the daemons' admin API); steps moved to pending are re-run
// (attempts + 1) and fail again, so the stream never dries up.
func failureStream(ctx context.Context, r *run) error {
	backlog := dueGroup(r.sz.streamBacklog)
	backlog.maxAttempts = 100_000
	if _, err := seed(ctx, r.d.pool, backlog); err != nil {
		return err
	}
	handlerFlags := []string{"--backoff-base", "1s", "--backoff-max", "2s"}
	var daemons []*proc
	for i := range r.sz.daemons {
		p, err := r.daemon(ctx, fmt.Sprintf("run-%d", i+1), append([]string{"--batch-size", "200"}, handlerFlags...)...)
		if err != nil {
			return err
		}
		daemons = append(daemons, p)
	}
	fctx, stopFeeding := context.WithTimeout(ctx, r.sz.streamFor)
	defer stopFeeding()
	var (
		mu       sync.Mutex
		counts   = map[string]int{}
		errCount int
		firstErr error
	)
	record := func(way string, n int, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errCount++
			if firstErr == nil {
				firstErr = fmt.Errorf("%s: %w", way, err)
			}
			return
		}
		counts[way] += n
	}
	// idle waits a little when nothing was pending, or stops with the feed.
	idle := func(d time.Duration) bool {
		select {
		case <-fctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { // the orchestrator's own parking
		for fctx.Err() == nil {
			steps, err := rerun(ctx, r.d.pool, 20)
			if err == nil && len(steps) > 0 {
				err = orchestratorPark(ctx, r.d.pool, steps, 1)
			}
			record("orchestrator", len(steps), err)
			if !idle(50 * time.Millisecond) {
				return
			}
		}
	})
	wg.Go(func() { // sweeper fail
		for fctx.Err() == nil {
			steps, err := rerun(ctx, r.d.pool, 1)
			if err != nil || len(steps) == 0 {
				record("cli", 0, err)
				if !idle(50 * time.Millisecond) {
					return
				}
				continue
			}
			args := append([]string{
				"fail", "--step", steps[0].String(), "--message", "upstream timeout after 30s",
				"--json",
			}, handlerFlags...)
			res := r.s.sweeperCmd(ctx, r.d, 30*time.Second, args...)
			if res.err != nil || res.code != 0 {
				record("cli", 0, errors.New(res.describe()))
				continue
			}
			var out struct {
				Action string `json:"action"`
			}
			if err := json.Unmarshal([]byte(lastLines(res.stdout, 1)), &out); err != nil || out.Action != "TransitionedToWaitingForRetry" {
				record("cli", 0, fmt.Errorf("sweeper fail answered %q", truncate(res.stdout, 200)))
				continue
			}
			record("cli", 1, nil)
		}
	})
	wg.Go(func() { // POST /v1/steps/{uuid}/failures, round-robin over the daemons
		client := &http.Client{Timeout: 10 * time.Second}
		next := 0
		for fctx.Err() == nil {
			steps, err := rerun(ctx, r.d.pool, 5)
			if err != nil || len(steps) == 0 {
				record("api", 0, err)
				if !idle(50 * time.Millisecond) {
					return
				}
				continue
			}
			for _, step := range steps {
				p := daemons[next%len(daemons)]
				next++
				record("api", 1, p.postFailure(ctx, client, step, "503 Service Unavailable from payments"))
			}
		}
	})
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// The feed has stopped: every parked step's backoff (at most 2 s)
	// expires, and the daemons must move them all.
	deadline := time.Now().Add(90 * time.Second)
	var waiting int
	for {
		err := r.d.pool.QueryRow(ctx, `SELECT count(*) FROM tasker.workflow_step_transitions
WHERE most_recent AND to_state = 'waiting_for_retry'`).Scan(&waiting)
		if err == nil && waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			r.problem("%d step(s) still waiting 90s after the feed stopped", waiting)
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	var moves int
	if err := r.d.pool.QueryRow(ctx, `SELECT count(*) FROM tasker.workflow_step_transitions
WHERE to_state = 'pending' AND from_state = 'waiting_for_retry'`).Scan(&moves); err != nil {
		return fmt.Errorf("count moves: %w", err)
	}
	if errCount > 0 {
		r.problem("%d failure report(s) went wrong, first: %v", errCount, firstErr)
	}
	if counts["orchestrator"] == 0 || counts["cli"] == 0 || counts["api"] == 0 {
		r.problem("the stream did not flow all three ways: %v", counts)
	}
	r.note("%d daemons for %s: %d moves; failures: %d orchestrator, %d CLI, %d API", len(daemons), r.sz.streamFor,
		moves, counts["orchestrator"], counts["cli"], counts["api"])
	r.stopDaemons(daemons...)
	return nil
}

// sigtermBlocked: SIGTERM to a daemon whose batches wait on a lock another
// session holds (SHARE on the transition table, as a plain CREATE INDEX
// takes: claims go through, the moves wait). With --shutdown-grace 3s it
// must exit 0 within grace + 1 s.
func sigtermBlocked(ctx context.Context, r *run) error {
	const grace = 3 * time.Second
	if _, err := seed(ctx, r.d.pool, dueGroup(5_000)); err != nil {
		return err
	}
	conn, err := connectOne(ctx, r.d.url, harnessApp+"-locker")
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin locker: %w", err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, "LOCK TABLE tasker.workflow_step_transitions IN SHARE MODE"); err != nil {
		return fmt.Errorf("lock the transition table: %w", err)
	}
	p, err := r.daemon(ctx, "run", "--shutdown-grace", grace.String())
	if err != nil {
		return err
	}
	if err := waitLockWaiters(ctx, r, 30*time.Second); err != nil {
		return err
	}
	took, exited := p.terminate(r.sz.sigtermWait)
	switch {
	case !exited:
		r.problem("still running %.1fs after SIGTERM (grace %s, allowed %s); killed", took.Seconds(), grace, grace+time.Second)
	case took > grace+time.Second:
		r.problem("exited %.1fs after SIGTERM (grace %s, allowed %s), code %d", took.Seconds(), grace, grace+time.Second, p.exitCode())
	case p.exitCode() != 0:
		r.problem("exited %d after SIGTERM: %s", p.exitCode(), p.lastError())
	}
	if err := tx.Rollback(ctx); err != nil {
		return fmt.Errorf("release the lock: %w", err)
	}
	if err := waitSessionsGone(ctx, r.c.admin, r.d, 30*time.Second); err != nil {
		r.problem("%v", err)
	}
	if _, _, err := r.once(ctx); err != nil {
		r.problem("sweep after the release: %v", err)
	}
	r.note("exited %.1fs after SIGTERM with batches blocked, code %d; a sweep after the release drained the rest",
		took.Seconds(), p.exitCode())
	return nil
}

// waitLockWaiters polls until a sweeper session waits on a heavyweight lock.
func waitLockWaiters(ctx context.Context, r *run, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		var n int
		err := r.c.admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE datname = $1 AND application_name = $2 AND wait_event_type = 'Lock'`, r.d.name, sweeperApp).Scan(&n)
		if err == nil && n > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no sweeper batch waited on the lock within %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// poisonedRows: among ordinary due steps, one waiting step last attempted
// at -infinity (tasker: -infinity + backoff is due) and one at infinity
// (never due). One `sweeper once` must exit 0, move every ordinary due step
// and the -infinity one, and leave the infinity one waiting.
func poisonedRows(ctx context.Context, r *run) error {
	ordinary, err := seed(ctx, r.d.pool, dueGroup(r.sz.poisonDue))
	if err != nil {
		return err
	}
	poison, err := seed(ctx, r.d.pool, dueGroup(2))
	if err != nil {
		return err
	}
	if _, err := r.d.pool.Exec(ctx, `UPDATE tasker.workflow_steps
SET last_attempted_at = CASE WHEN workflow_step_uuid = $1 THEN '-infinity'::timestamp ELSE 'infinity'::timestamp END
WHERE workflow_step_uuid = ANY(ARRAY[$1, $2]::uuid[])`, poison[0], poison[1]); err != nil {
		return fmt.Errorf("poison rows: %w", err)
	}
	sum, _, err := r.once(ctx)
	if err != nil {
		r.problem("%v", err)
	}
	states, err := stateCounts(ctx, r.d.pool, ordinary)
	if err != nil {
		return err
	}
	if states["pending"] != len(ordinary) {
		r.problem("ordinary due steps: %d of %d moved", states["pending"], len(ordinary))
	}
	for i, want := range []string{"pending", "waiting_for_retry"} {
		st, err := stateCounts(ctx, r.d.pool, poison[i:i+1])
		if err != nil {
			return err
		}
		if st[want] != 1 {
			r.problem("the %s step is not %s (%v)", []string{"-infinity", "infinity"}[i], want, st)
		}
	}
	r.note("once moved %d: every ordinary due step and the -infinity one; the infinity one stays waiting", sum.Transitioned)
	return nil
}

// inPlaceEdits: parked steps edited in place (backoff shortened,
// last_attempted_at moved earlier, max_attempts raised on a stranded step,
// retryable set on a non-retryable one), then `sweeper reconcile`, then a
// sweep: every step tasker's rule now calls due must move.
func inPlaceEdits(ctx context.Context, r *run) error {
	shorter, err := seed(ctx, r.d.pool, laterGroup(1, 3600))
	if err != nil {
		return err
	}
	earlier, err := seed(ctx, r.d.pool, laterGroup(1, 3600))
	if err != nil {
		return err
	}
	exhausted, err := seed(ctx, r.d.pool, group{
		children: 1, history: "waiting", lastAgo: 3600, backoff: ptr(int32(2)),
		attempts: 3, maxAttempts: 3, retryable: true,
	})
	if err != nil {
		return err
	}
	permanent, err := seed(ctx, r.d.pool, group{
		children: 1, history: "waiting", lastAgo: 3600, backoff: ptr(int32(2)),
		attempts: 1, maxAttempts: 3, retryable: false,
	})
	if err != nil {
		return err
	}
	// One parked by the inline handler (on the schedule path it writes its
	// own schedule row), later shortened too.
	handled, err := seed(ctx, r.d.pool, runningGroup(1))
	if err != nil {
		return err
	}
	if res := r.s.sweeperCmd(ctx, r.d, 30*time.Second, "fail", "--step", handled[0].String(),
		"--message", "429 Too Many Requests", "--retry-after", "3600"); res.err != nil || res.code != 0 {
		return fmt.Errorf("sweeper fail: %s", res.describe())
	}
	if _, err := seed(ctx, r.d.pool, laterGroup(5, 7200)); err != nil { // untouched, not due
		return err
	}
	if _, err := seed(ctx, r.d.pool, dueGroup(20)); err != nil {
		return err
	}
	// The sidecar has seen them all (adopted, evaluated, the stranded ones
	// set aside) before the edits.
	if _, _, err := r.once(ctx); err != nil {
		return fmt.Errorf("first sweep: %w", err)
	}
	edited := []uuid.UUID{shorter[0], earlier[0], exhausted[0], permanent[0], handled[0]}
	st, err := stateCounts(ctx, r.d.pool, edited)
	if err != nil {
		return err
	}
	if st["waiting_for_retry"] != len(edited) {
		return fmt.Errorf("before the edits the edited steps should all wait: %v", st)
	}
	err = pgx.BeginFunc(ctx, r.d.pool, func(tx pgx.Tx) error {
		for _, e := range []struct {
			sql  string
			step uuid.UUID
		}{
			{"UPDATE tasker.workflow_steps SET backoff_request_seconds = 1 WHERE workflow_step_uuid = $1", shorter[0]},
			{"UPDATE tasker.workflow_steps SET last_attempted_at = last_attempted_at - interval '2 hours' WHERE workflow_step_uuid = $1", earlier[0]},
			{"UPDATE tasker.workflow_steps SET max_attempts = 5 WHERE workflow_step_uuid = $1", exhausted[0]},
			{"UPDATE tasker.workflow_steps SET retryable = true WHERE workflow_step_uuid = $1", permanent[0]},
			{"UPDATE tasker.workflow_steps SET backoff_request_seconds = 1 WHERE workflow_step_uuid = $1", handled[0]},
		} {
			if _, err := tx.Exec(ctx, e.sql, e.step); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("edit parked steps: %w", err)
	}
	// A shortened backoff of 1 s counts from the last attempt: within a
	// second or two tasker's rule calls exactly the edited steps due.
	deadline := time.Now().Add(15 * time.Second)
	for {
		n, _, err := dueWaiting(ctx, r.d.pool, 0, nil)
		if err != nil {
			return err
		}
		if n == int64(len(edited)) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after the edits tasker's rule should call exactly the %d edited steps due, got %d", len(edited), n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	rec := r.s.sweeperCmd(ctx, r.d, 2*time.Minute, "reconcile")
	reconciled := ""
	switch {
	case rec.err == nil && rec.code == 2 && strings.Contains(rec.stderr, "unknown command"):
		r.problem("reconcile command missing")
	case r.d.path == "scan" && rec.err == nil && rec.code == 2 && strings.Contains(rec.stderr, "not installed"):
		// No schedule to reconcile: the scan path evaluates the tables on
		// every sweep, and says so.
		reconciled = "reconcile: nothing to reconcile on the scan path (exit 2); "
	case rec.err != nil || rec.code != 0:
		r.problem("sweeper reconcile: %s", rec.describe())
	default:
		reconciled = "reconcile: " + truncate(lastLines(rec.stdout, 1), 120) + "; "
	}
	if _, _, err := r.once(ctx); err != nil {
		r.problem("sweep after the edits: %v", err)
	}
	var stuck []string
	for i, step := range edited {
		st, err := stateCounts(ctx, r.d.pool, []uuid.UUID{step})
		if err != nil {
			return err
		}
		if st["pending"] != 1 {
			stuck = append(stuck, []string{
				"shortened backoff", "earlier last_attempted_at", "raised max_attempts",
				"retryable set", "shortened backoff (handler-parked)",
			}[i])
		}
	}
	if len(stuck) > 0 {
		r.problem("still waiting after the sweep: %s", strings.Join(stuck, ", "))
	} else if len(r.problems) > 0 {
		r.problem("a plain sweep then moved all %d edited steps", len(edited))
	}
	r.note("%sthe sweep moved all %d edited steps", reconciled, len(edited))
	return nil
}
