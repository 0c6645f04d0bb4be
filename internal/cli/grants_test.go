package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/db/migrations"
	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
)

// The README's grants, as it prints them: the test runs these statements,
// and only these, with the README's role and database names replaced by the
// test's, and checks each one is in the README word for word.
var (
	readmeMigrateGrants = []string{
		`GRANT CREATE ON DATABASE tasker TO sweeper_migrate;`,
		`GRANT tasker_owner TO sweeper_migrate;`,
	}
	readmeTaskerGrants = []string{
		`GRANT USAGE ON SCHEMA tasker TO sweeper;`,
		`GRANT SELECT ON tasker.workflow_steps, tasker.workflow_step_transitions,
                tasker.workflow_step_edges, tasker.named_steps,
                tasker.tasks, tasker.named_tasks, tasker.task_namespaces TO sweeper;`,
		`GRANT INSERT, UPDATE ON tasker.workflow_step_transitions TO sweeper;`,
		`GRANT UPDATE ON tasker.workflow_steps TO sweeper;`,
	}
	readmeSweeperGrants = []string{
		`GRANT USAGE ON SCHEMA tasker_sweeper TO sweeper;`,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA tasker_sweeper TO sweeper;`,
	}
)

var spaces = regexp.MustCompile(`\s+`)

func TestReadmeShowsTheGrantsTheTestUses(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	text := spaces.ReplaceAllString(string(readme), " ")
	for _, stmts := range [][]string{readmeMigrateGrants, readmeTaskerGrants, readmeSweeperGrants} {
		for _, stmt := range stmts {
			require.Contains(t, text, spaces.ReplaceAllString(stmt, " "))
		}
	}
}

// grantRoles are the test's stand-ins for the README's roles.
type grantRoles struct {
	owner, migrate, sweeper string
	password                string
}

// rename puts the test's role and database names into a README statement.
func (r grantRoles) rename(stmt, database string) string {
	stmt = strings.ReplaceAll(stmt, "DATABASE tasker ", "DATABASE "+pgx.Identifier{database}.Sanitize()+" ")
	for readmeName, name := range map[string]string{
		"tasker_owner": r.owner, "sweeper_migrate": r.migrate, "sweeper": r.sweeper,
	} {
		stmt = regexp.MustCompile(`\b`+readmeName+`\b`).ReplaceAllString(stmt, name)
	}
	return stmt
}

// createGrantRoles creates three login roles on the test server, dropped
// when the test ends (after its database: call it before creating that).
func createGrantRoles(t *testing.T) grantRoles {
	t.Helper()
	suffix := make([]byte, 4)
	_, err := rand.Read(suffix)
	require.NoError(t, err)
	s := hex.EncodeToString(suffix)
	r := grantRoles{owner: "tasker_owner_" + s, migrate: "sweeper_migrate_" + s, sweeper: "sweeper_" + s, password: "pw" + s}
	ctx := context.Background()
	server := testdb.Server(t)
	admin, err := pgx.Connect(ctx, server.URL())
	require.NoError(t, err)
	defer func() { _ = admin.Close(ctx) }()
	for _, role := range []string{r.owner, r.migrate, r.sweeper} {
		_, err := admin.Exec(ctx, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s'`, role, r.password))
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, server.URL())
		if err != nil {
			t.Logf("drop test roles: %v", err)
			return
		}
		defer func() { _ = conn.Close(ctx) }()
		for _, role := range []string{r.sweeper, r.migrate, r.owner} {
			if _, err := conn.Exec(ctx, `DROP ROLE `+role); err != nil {
				t.Logf("drop role %s: %v", role, err)
			}
		}
	})
	return r
}

// asRole is the database URL with role's credentials.
func asRole(t *testing.T, dbURL, role, password string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	u.User = url.UserPassword(role, password)
	return u.String()
}

func execAll(t *testing.T, pool *pgxpool.Pool, stmts ...string) {
	t.Helper()
	for _, stmt := range stmts {
		_, err := pool.Exec(context.Background(), stmt)
		require.NoError(t, err, stmt)
	}
}

// taskerUpSQL is the tasker subset's Up section: what the orchestrator's own
// migrations create, run here as the orchestrator's role.
func taskerUpSQL(t *testing.T) string {
	t.Helper()
	raw, err := migrations.FS.ReadFile("tasker/00001_tasker_schema.sql")
	require.NoError(t, err)
	_, up, ok := strings.Cut(string(raw), "-- +goose Up")
	require.True(t, ok)
	up, _, ok = strings.Cut(up, "-- +goose Down")
	require.True(t, ok)
	return up
}

// The README's grants are enough: a role holding exactly the migrate grants
// installs the sweeper-owned objects on a database whose tasker schema
// another role created, and a role holding exactly the sweeper's grants
// sweeps, reports failures, reconciles and reads the status.
func TestReadmeGrantsMigrateAndRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	roles := createGrantRoles(t)
	ownerURL := testdb.NewEmptyURL(t) // the database's owner
	u, err := url.Parse(ownerURL)
	require.NoError(t, err)
	database := strings.TrimPrefix(u.Path, "/")
	connect := func(role string) (*pgxpool.Pool, string) {
		roleURL := asRole(t, ownerURL, role, roles.password)
		pool, err := db.Connect(ctx, roleURL)
		require.NoError(t, err)
		t.Cleanup(pool.Close)
		return pool, roleURL
	}
	dbOwner, err := db.Connect(ctx, ownerURL)
	require.NoError(t, err)
	defer dbOwner.Close()

	// The orchestrator's role creates the tasker schema.
	execAll(t, dbOwner, `GRANT CREATE ON DATABASE `+pgx.Identifier{database}.Sanitize()+` TO `+roles.owner)
	orchestrator, _ := connect(roles.owner)
	execAll(t, orchestrator, taskerUpSQL(t))

	// The README's migrate grants, the membership last (it needs a role
	// admin): without it the role is refused before any migration runs.
	admin, err := pgx.Connect(ctx, testdb.Server(t).URL())
	require.NoError(t, err)
	defer func() { _ = admin.Close(ctx) }()
	require.Len(t, readmeMigrateGrants, 2)
	execAll(t, dbOwner, roles.rename(readmeMigrateGrants[0], database))
	_, migrateURL := connect(roles.migrate)
	refused := runCLI(t, nil, "migrate", "--database-url", migrateURL)
	require.Equal(t, 2, refused.code, "stdout: %s\nstderr: %s", refused.stdout, refused.stderr)
	require.Equal(t, 1, strings.Count(refused.stderr, "\n"), refused.stderr)
	require.Contains(t, refused.stderr, "nothing applied")
	require.Contains(t, refused.stderr, "is not the owner of tasker.workflow_step_transitions ("+roles.owner+")")
	var scheduled bool
	require.NoError(t, dbOwner.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_tables
		WHERE schemaname = 'tasker_sweeper' AND tablename = 'retry_schedule')`).Scan(&scheduled))
	require.False(t, scheduled, "a refused migrate applies nothing")

	_, err = admin.Exec(ctx, roles.rename(readmeMigrateGrants[1], database))
	require.NoError(t, err)
	mig := runCLI(t, nil, "migrate", "--database-url", migrateURL)
	require.Equal(t, 0, mig.code, "stdout: %s\nstderr: %s", mig.stdout, mig.stderr)
	require.Contains(t, mig.stdout, "sweeper: applied")

	// The sweeper's grants: on the tasker tables from their owner, on its
	// own objects from the role that migrated.
	for _, stmt := range readmeTaskerGrants {
		execAll(t, orchestrator, roles.rename(stmt, database))
	}
	migrator, _ := connect(roles.migrate)
	for _, stmt := range readmeSweeperGrants {
		execAll(t, migrator, roles.rename(stmt, database))
	}

	task := testdb.SeedDue(t, orchestrator, 3)
	_, sweeperURL := connect(roles.sweeper)
	env := []string{"DATABASE_URL=" + sweeperURL}

	once := runCLI(t, env, "once", "--json")
	require.Equal(t, 0, once.code, once.stderr)
	sum := decodeSummary(t, once.stdout)
	require.Equal(t, "schedule", sum["path"])
	require.EqualValues(t, 3, sum["transitioned"])

	var step string
	require.NoError(t, orchestrator.QueryRow(ctx,
		`SELECT workflow_step_uuid::text FROM tasker.workflow_steps WHERE task_uuid = $1 LIMIT 1`, task).Scan(&step))
	// Back to in_progress, as the orchestrator would run it again.
	execAll(t, orchestrator, fmt.Sprintf(`
		UPDATE tasker.workflow_step_transitions SET most_recent = false WHERE workflow_step_uuid = '%[1]s';
		INSERT INTO tasker.workflow_step_transitions
		    (workflow_step_uuid, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
		SELECT '%[1]s', 'in_progress', 'pending', '{}', max(sort_key) + 1, true, now(), now()
		FROM tasker.workflow_step_transitions WHERE workflow_step_uuid = '%[1]s'`, step))
	fail := runCLI(t, env, "fail", "--step", step, "--message", "connection reset", "--json")
	require.Equal(t, 0, fail.code, fail.stderr)
	var res map[string]any
	require.NoError(t, json.Unmarshal([]byte(fail.stdout), &res), fail.stdout)
	require.Equal(t, "waiting_for_retry", res["final_state"])

	for _, args := range [][]string{{"status"}, {"reconcile"}, {"migrate"}} {
		out := runCLI(t, env, args...)
		require.Equal(t, 0, out.code, "%v: %s", args, out.stderr)
	}
}

func TestMigrateWithoutTaskerSchemaAppliesNothing(t *testing.T) {
	t.Parallel()
	url := testdb.NewEmptyURL(t)
	out := runCLI(t, nil, "migrate", "--database-url", url)
	require.Equal(t, 2, out.code, "stdout: %s\nstderr: %s", out.stdout, out.stderr)
	require.Empty(t, out.stdout)
	require.Equal(t, 1, strings.Count(out.stderr, "\n"), out.stderr)
	for _, want := range []string{
		"nothing applied", "no tasker schema", "tasker.workflow_steps",
		"tasker.workflow_step_transitions", "tasker.workflow_step_edges", "tasker.named_steps", "--tasker-schema",
	} {
		require.Contains(t, out.stderr, want)
	}
	pool, err := db.Connect(context.Background(), url)
	require.NoError(t, err)
	defer pool.Close()
	var schemas int
	require.NoError(t, pool.QueryRow(context.Background(),
		`SELECT count(*) FROM pg_namespace WHERE nspname IN ('tasker', 'tasker_sweeper')`).Scan(&schemas))
	require.Zero(t, schemas)

	// The standalone way the message suggests works.
	ok := runCLI(t, nil, "migrate", "--database-url", url, "--tasker-schema")
	require.Equal(t, 0, ok.code, ok.stderr)
	require.Contains(t, ok.stdout, "tasker: applied")
	require.Contains(t, ok.stdout, "sweeper: applied")
}
