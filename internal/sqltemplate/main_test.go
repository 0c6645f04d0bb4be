package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

func TestRenderSharesFragmentsAndStripsTemplateNoise(t *testing.T) {
	tmpls := fstest.MapFS{
		fragmentsFile: {Data: []byte(`{{define "now"}}coalesce(sqlc.narg('now')::timestamptz, now()){{end}}
{{define "retry_at"}}ws.r{{end}}
{{define "due"}}{{template "retry_at"}} <= {{template "now"}}{{end}}
{{define "eligible"}}ws.e{{end}}
{{define "unblocked"}}ws.u{{end}}
{{define "movable"}}{{template "unblocked"}} AND {{template "due"}}{{end}}
{{define "claim_due_at"}}{{template "finite" "ws.x"}}{{end}}
{{define "finite"}}CASE WHEN isfinite({{.}}) THEN {{.}} END{{end}}`)},
		"a.sql.tmpl": {Data: []byte("-- name: A :many\nSELECT 1   \n\n\n\nWHERE {{template \"movable\"}};\n")},
	}
	out, err := render(tmpls)
	if err != nil {
		t.Fatal(err)
	}
	sql := string(out["a.sql"])
	if !strings.Contains(sql, "WHERE ws.u AND ws.r <= coalesce(sqlc.narg('now')::timestamptz, now());") {
		t.Fatalf("fragments not expanded:\n%s", sql)
	}
	if strings.Contains(sql, "1   \n") || strings.Contains(sql, "\n\n\n") {
		t.Fatalf("trailing spaces or blank runs left:\n%q", sql)
	}
	if !strings.HasPrefix(sql, "-- Code generated") {
		t.Fatalf("no generated-code header:\n%s", sql)
	}
	goSrc := string(out["rule_gen.go"])
	if !strings.Contains(goSrc, `const Due = "ws.r <= now()"`) {
		t.Fatalf("Go constants must use the database clock:\n%s", goSrc)
	}
	if !strings.Contains(goSrc, `const ClaimDueAt = "CASE WHEN isfinite(ws.x) THEN ws.x END"`) {
		t.Fatalf("a fragment called with an argument:\n%s", goSrc)
	}
}

func TestRenderRejectsAnUnknownFragment(t *testing.T) {
	tmpls := fstest.MapFS{
		fragmentsFile: {Data: []byte(`{{define "now"}}now(){{end}}`)},
		"a.sql.tmpl":  {Data: []byte(`SELECT {{template "nope"}};`)},
	}
	if _, err := render(tmpls); err == nil {
		t.Fatal("an unknown fragment must fail the render")
	}
}

// The checked-in rendered files match the templates, and -check notices a
// stale one without writing anything.
func TestCheckedInQueriesAreCurrentAndCheckCatchesStaleness(t *testing.T) {
	dir := filepath.Join("..", "..", "db", "queries")
	if err := run(dir, true); err != nil {
		t.Fatalf("the checked-in queries are stale: %v", err)
	}
	tmp := t.TempDir()
	if err := os.CopyFS(tmp, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(tmp, "sweep.sql")
	if err := os.WriteFile(stale, []byte("-- edited by hand\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := run(tmp, true)
	if err == nil || !strings.Contains(err.Error(), "sweep.sql") {
		t.Fatalf("want a stale sweep.sql error, got %v", err)
	}
	if raw, _ := os.ReadFile(stale); string(raw) != "-- edited by hand\n" {
		t.Fatal("-check must not write")
	}
}
