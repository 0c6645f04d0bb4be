package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// seededDB is a tasker-only database with the suite's catalog and three
// tasks of one parked, due child each; the first child has been moved to
// pending once, as a sweep would.
func seededDB(t *testing.T) (*pgxpool.Pool, []uuid.UUID) {
	t.Helper()
	ctx := context.Background()
	pool, err := connect(ctx, testdb.NewURLWith(t, testdb.TaskerOnly), harnessApp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, seedCatalogSQL); err != nil {
		t.Fatal(err)
	}
	var steps []uuid.UUID
	for range 3 { // a task each, so one's parent does not block another
		got, err := seed(ctx, pool, dueGroup(1))
		if err != nil {
			t.Fatal(err)
		}
		steps = append(steps, got...)
	}
	if _, err := pool.Exec(ctx, appendTransitionSQL, steps[:1], "pending", "Retry"); err != nil {
		t.Fatal(err)
	}
	return pool, steps
}

func TestCheckerFindsEachViolation(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name   string
		breakk string // SQL with $1 = the moved step
		want   string
	}{
		{"a second retry from the same waiting row", `
INSERT INTO tasker.workflow_step_transitions
    (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
SELECT $1, 'pending', 'waiting_for_retry', '{}', 7, false, now(), now()`, "moved twice in one waiting episode"},
		{"no current row", `
UPDATE tasker.workflow_step_transitions SET most_recent = false WHERE workflow_step_uuid = $1`, "not exactly one most_recent"},
		{"a gap in the sort keys", `
UPDATE tasker.workflow_step_transitions SET sort_key = 9 WHERE workflow_step_uuid = $1 AND most_recent`, "sort_keys not contiguous"},
		{"a stale from_state", `
UPDATE tasker.workflow_step_transitions SET from_state = 'error' WHERE workflow_step_uuid = $1 AND most_recent`, "from_state is not the previous row's state"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pool, steps := seededDB(t)
			// Before the damage only the two unmoved due steps are wrong.
			got := check(ctx, pool, steps[1:])
			if len(got) != 0 {
				t.Fatalf("clean history: want no problem, got %v", got)
			}
			if _, err := pool.Exec(ctx, tc.breakk, steps[0]); err != nil {
				t.Fatal(err)
			}
			got = check(ctx, pool, steps[1:])
			if !strings.Contains(joinProblems(got), tc.want) {
				t.Fatalf("want a problem %q, got %v", tc.want, got)
			}
		})
	}
}

func TestCheckerFindsDueStepsLeftWaiting(t *testing.T) {
	ctx := context.Background()
	pool, steps := seededDB(t)
	got := check(ctx, pool, nil)
	if len(got) != 1 || !strings.Contains(got[0], "2 due step(s) left waiting") {
		t.Fatalf("want the two unmoved due steps reported, got %v", got)
	}
	// A step whose backoff has not expired, or whose parent is not done,
	// is not due by tasker's rule.
	if _, err := pool.Exec(ctx, `UPDATE tasker.workflow_steps SET last_attempted_at = now(), backoff_request_seconds = 3600
WHERE workflow_step_uuid = $1`, steps[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, appendTransitionSQL, []uuid.UUID{rootOf(t, pool, steps[2])}, "error", "Fail"); err != nil {
		t.Fatal(err)
	}
	if got := check(ctx, pool, nil); len(got) != 0 {
		t.Fatalf("not-yet-due and blocked steps are not left waiting, got %v", got)
	}
	// -infinity + backoff is due; infinity never.
	for _, tc := range []struct {
		at   string
		want int64
	}{{"-infinity", 1}, {"infinity", 0}} {
		if _, err := pool.Exec(ctx, `UPDATE tasker.workflow_steps SET last_attempted_at = $2::timestamp WHERE workflow_step_uuid = $1`,
			steps[1], tc.at); err != nil {
			t.Fatal(err)
		}
		n, _, err := dueWaiting(ctx, pool, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if n != tc.want {
			t.Fatalf("last_attempted_at %s: want %d due, got %d", tc.at, tc.want, n)
		}
	}
	// Looking ahead counts the steps due within the horizon.
	if _, err := pool.Exec(ctx, `UPDATE tasker.workflow_steps SET last_attempted_at = now(), backoff_request_seconds = 30
WHERE workflow_step_uuid = $1`, steps[1]); err != nil {
		t.Fatal(err)
	}
	for ahead, want := range map[float64]int64{0: 0, 60: 1} {
		if n, _, err := dueWaiting(ctx, pool, ahead, nil); err != nil || n != want {
			t.Fatalf("%gs ahead: want %d due, got %d (%v)", ahead, want, n, err)
		}
	}
	if _, err := waitStates(ctx, pool, steps[1:2], "pending", 200*time.Millisecond); err == nil {
		t.Fatal("waitStates: a waiting step reported pending")
	}
}

func rootOf(t *testing.T, pool *pgxpool.Pool, step uuid.UUID) uuid.UUID {
	t.Helper()
	var root uuid.UUID
	if err := pool.QueryRow(context.Background(), `SELECT from_step_uuid FROM tasker.workflow_step_edges WHERE to_step_uuid = $1`,
		step).Scan(&root); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestParsePostmasterOpts(t *testing.T) {
	bin, args, err := parsePostmasterOpts(`/usr/lib/postgresql/15/bin/postgres "-D" "/dev/shm/x/data" "-c" "timezone=America/New_York" "-c" "port=5432"` + "\n")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"-D", "/dev/shm/x/data", "-c", "timezone=America/New_York", "-c", "port=5432"}
	if bin != "/usr/lib/postgresql/15/bin/postgres" || strings.Join(args, " ") != strings.Join(want, " ") {
		t.Fatalf("got %q %q", bin, args)
	}
	if _, _, err := parsePostmasterOpts("garbage"); err == nil {
		t.Fatal("want an error for a file that is not postmaster.opts")
	}
}
