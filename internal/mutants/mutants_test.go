package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseList(t *testing.T) {
	t.Parallel()
	ms, err := ParseList(strings.NewReader(`
# a comment

drop-it  | QueryA QueryB | AND NOT ws.processed |
change   | QueryA        | x < y                 | x <= y | ./db/... ./sweeper/...
`))
	require.NoError(t, err)
	require.Equal(t, []Mutation{
		{ID: "drop-it", Query: "QueryA", Find: "AND NOT ws.processed", Replace: "", Line: 4},
		{ID: "drop-it", Query: "QueryB", Find: "AND NOT ws.processed", Replace: "", Line: 4},
		{ID: "change", Query: "QueryA", Find: "x < y", Replace: "x <= y", Packages: []string{"./db/...", "./sweeper/..."}, Line: 5},
	}, ms)
	require.Equal(t, "QueryB/drop-it", ms[1].Key())
}

func TestParseListRejects(t *testing.T) {
	t.Parallel()
	for line, want := range map[string]string{
		"a | Q | x":                    "want 4 or 5 fields",
		"a | Q | x | y | p | q":        "want 4 or 5 fields",
		"Bad_ID | Q | x | y":           "id",
		"a |  | x | y":                 "no query",
		"a | Q |  | y":                 "empty find",
		"a | Q | x  y | x y":           "equals the find text",
		"a | Q | x | `y`":              "backquote",
		"a | Q | {{x | y":              "pair",
		"a | Q | x}} {{y | z":          "pair",
		"a | Q | {{}} x | z":           "empty",
		"a | Q | x | y |  ":            "empty package",
		"a | Q | x | y\na | Q | x | z": "already defined on line 1",
	} {
		_, err := ParseList(strings.NewReader(line))
		require.ErrorContains(t, err, want, "line %q", line)
	}
}

// generated is a file in the shape sqlc writes: the query text is a raw
// string constant whose first line names the query.
const generated = "package dbsqlc\n\n" +
	"const claim = `-- name: Claim :many\nSELECT ws.id\nFROM steps ws\nWHERE NOT ws.processed\n  AND ws.attempts <\n      coalesce(ws.max_attempts, 3)\n  AND ws.id = $1\n  AND ws.due <= now() AND ws.due <= now() + interval '1 hour'\n`\n\n" +
	"const other = `-- name: Other :one\nSELECT 1 WHERE NOT ws.processed AND NOT ws.processed\n`\n\n" +
	"const notAQuery = `SELECT 2`\n"

func queriesOf(t *testing.T) map[string]Query {
	t.Helper()
	qs, err := queriesIn("gen.sql.go", []byte(generated))
	require.NoError(t, err)
	out := map[string]Query{}
	for _, q := range qs {
		out[q.Name] = q
	}
	return out
}

func TestQueriesIn(t *testing.T) {
	t.Parallel()
	qs := queriesOf(t)
	require.Len(t, qs, 2, "only constants that start with a name line")
	claim := qs["Claim"]
	sql := generated[claim.Start:claim.End]
	require.True(t, strings.HasPrefix(sql, "-- name: Claim :many\n"), sql)
	require.True(t, strings.HasSuffix(sql, "interval '1 hour'\n"), sql)
}

func TestApply(t *testing.T) {
	t.Parallel()
	qs := queriesOf(t)
	apply := func(query, find, replace string) (string, string, error) {
		out, replaced, err := Apply([]byte(generated), qs[query], Mutation{Query: query, Find: find, Replace: replace})
		return string(out), replaced, err
	}

	// Whitespace runs match any whitespace, also across lines.
	out, replaced, err := apply("Claim", "ws.attempts < coalesce(ws.max_attempts, 3)", "true")
	require.NoError(t, err)
	require.Equal(t, "ws.attempts <\n      coalesce(ws.max_attempts, 3)", replaced)
	require.Contains(t, out, "WHERE NOT ws.processed\n  AND true\n  AND ws.id = $1")
	require.Equal(t, strings.Replace(generated, replaced, "true", 1), out, "nothing else changes")

	// A parameter as the .sql file writes it matches its $n.
	out, _, err = apply("Claim", "AND ws.id = @step_id", "")
	require.NoError(t, err)
	require.NotContains(t, out, "ws.id = $1")
	_, _, err = apply("Claim", "AND ws.id = sqlc.arg(step_id)", "AND true")
	require.NoError(t, err)

	// The marked part is replaced; the context picks the occurrence.
	out, replaced, err = apply("Claim", "ws.due {{<= now()}} AND", "< now() - interval '1 hour'")
	require.NoError(t, err)
	require.Equal(t, "<= now()", replaced)
	require.Contains(t, out, "ws.due < now() - interval '1 hour' AND ws.due <= now() + interval")

	// Exactly once inside the named query, whatever the other queries hold.
	_, _, err = apply("Claim", "ws.due <= now()", "true")
	require.ErrorContains(t, err, "occurs 2 times in Claim")
	_, _, err = apply("Claim", "ws.retryable", "true")
	require.ErrorContains(t, err, "occurs 0 times in Claim")
	_, _, err = apply("Other", "NOT ws.processed", "true")
	require.ErrorContains(t, err, "occurs 2 times in Other")
	_, _, err = apply("Claim", "const other", "x")
	require.ErrorContains(t, err, "occurs 0 times", "text outside the query's constant is not the query")
}

// The real generated code: every query is found by its name line.
func TestFindQueriesInTheGeneratedCode(t *testing.T) {
	t.Parallel()
	qs, err := FindQueries(filepath.Join("..", "..", "db", "internal", "dbsqlc"))
	require.NoError(t, err)
	for _, name := range []string{"SweepClaimDue", "ScheduleClaimDue", "StepClaimForRetry", "SweepMoveToPending", "TransitionWrite"} {
		q, ok := qs[name]
		require.True(t, ok, name)
		src, err := os.ReadFile(q.File)
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(string(src[q.Start:q.End]), "-- name: "+name+" :"), name)
	}
}

func TestParseTestJSON(t *testing.T) {
	t.Parallel()
	require.Equal(t, Outcome{}, parseTestJSON([]byte(`{"Action":"run","Test":"TestA"}
{"Action":"pass","Test":"TestA"}
{"Action":"pass"}`)))
	require.Equal(t, Outcome{Failed: true, By: "TestA/sub_two"}, parseTestJSON([]byte(`{"Action":"run","Test":"TestA"}
not json: ignored
{"Action":"fail","Test":"TestA/sub_two"}
{"Action":"fail","Test":"TestA"}
{"Action":"fail","Test":"TestB"}
{"Action":"fail"}`)))
	require.Equal(t, Outcome{Failed: true, By: "timeout: TestHang, TestOther"}, parseTestJSON([]byte(`{"Action":"output","Output":"panic: test timed out after 2s\n"}
{"Action":"output","Output":"\trunning tests:\n"}
{"Action":"output","Output":"\t\tTestHang (2s)\n"}
{"Action":"output","Output":"\t\tTestOther (2s)\n"}
{"Action":"output","Output":"\n"}
{"Action":"output","Output":"goroutine 1 [running]:\n"}
{"Action":"fail"}`)))
}

// Runner against a real go test: a passing package passes, a hanging test
// is a failure named by its timeout, and an overlay changes what is built.
func TestRunner(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, []byte(body), 0o644))
		return path
	}
	write("go.mod", "module example.com/m\n\ngo 1.22\n")
	queryFile := write("q/q.go", "package q\n\nconst Q = `SELECT 1`\n")
	write("q/q_test.go", "package q\n\nimport \"testing\"\n\nfunc TestQuery(t *testing.T) {\n\tif Q != `SELECT 1` {\n\t\tt.Fatal(Q)\n\t}\n}\n")
	write("hang/hang_test.go", "package hang\n\nimport \"testing\"\n\nfunc TestHang(t *testing.T) { <-make(chan struct{}) }\n")
	mutant := write("mutant/q.go", "package q\n\nconst Q = `SELECT 2`\n")
	overlay := write("overlay.json", `{"Replace":{"`+queryFile+`":"`+mutant+`"}}`)

	r := Runner{Go: goCommand(), Dir: dir, Timeout: 3 * time.Second}
	ctx := context.Background()
	out, err := r.Run(ctx, []string{"./q"}, "")
	require.NoError(t, err)
	require.Equal(t, Outcome{}, out)

	out, err = r.Run(ctx, []string{"./q", "./hang"}, overlay)
	require.NoError(t, err)
	require.Equal(t, Outcome{Failed: true, By: "TestQuery"}, out, "the overlay's file is the one tested; the first failing package stops the run")
	src, err := os.ReadFile(queryFile)
	require.NoError(t, err)
	require.Contains(t, string(src), "SELECT 1", "the overlay never writes the original")

	out, err = r.Run(ctx, []string{"./hang"}, "")
	require.NoError(t, err)
	require.True(t, out.Failed)
	require.Contains(t, out.By, "timeout")
	require.Contains(t, out.By, "TestHang")
}
