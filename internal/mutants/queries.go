package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Query is where one query's SQL sits in the generated code: the body of a
// raw string constant that starts with its `-- name: X` line.
type Query struct {
	Name string
	File string // absolute path of the .sql.go file
	// Start and End are the byte offsets of the SQL in the file, inside the
	// backquotes.
	Start, End int
}

var nameLine = regexp.MustCompile(`^-- name: (\S+)`)

// FindQueries indexes the query constants of the sqlc-generated files in
// dir by query name. Only the constant's name line is trusted, not the Go
// identifier, so a renamed constant or a query moved to another file is
// still found.
func FindQueries(dir string) (map[string]Query, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.sql.go"))
	if err != nil {
		return nil, fmt.Errorf("list generated files: %w", err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no *.sql.go files in %s", dir)
	}
	sort.Strings(files)
	out := map[string]Query{}
	for _, file := range files {
		abs, err := filepath.Abs(file)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", file, err)
		}
		src, err := os.ReadFile(abs)
		if err != nil {
			return nil, fmt.Errorf("read generated file: %w", err)
		}
		queries, err := queriesIn(abs, src)
		if err != nil {
			return nil, err
		}
		for _, q := range queries {
			if prev, dup := out[q.Name]; dup {
				return nil, fmt.Errorf("query %s is defined in both %s and %s", q.Name, prev.File, q.File)
			}
			out[q.Name] = q
		}
	}
	return out, nil
}

// queriesIn lists the query constants of one generated file.
func queriesIn(path string, src []byte) ([]Query, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, src, parser.SkipObjectResolution)
	if err != nil {
		return nil, fmt.Errorf("parse generated file: %w", err)
	}
	var out []Query
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			for _, v := range spec.(*ast.ValueSpec).Values {
				lit, ok := v.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING || !strings.HasPrefix(lit.Value, "`") {
					continue
				}
				m := nameLine.FindStringSubmatch(lit.Value[1:])
				if m == nil {
					continue
				}
				start := fset.Position(lit.Pos()).Offset + 1
				out = append(out, Query{Name: m[1], File: path, Start: start, End: start + len(lit.Value) - 2})
			}
		}
	}
	return out, nil
}

// Markers in a find text delimit the part the replacement replaces; the text
// around them is context that must match too.
const (
	openMarker  = "{{"
	closeMarker = "}}"
)

// paramPattern is a query parameter as written in the .sql files; sqlc
// renders each as $n in the generated code.
var paramPattern = regexp.MustCompile(`^(@[a-zA-Z_][a-zA-Z0-9_]*|sqlc\.n?arg\('?[a-zA-Z_][a-zA-Z0-9_]*'?\))`)

// findPattern compiles a find text: every run of whitespace matches any run
// of whitespace, a parameter (@name, sqlc.arg(name), sqlc.narg(name)) also
// matches its $n, and the part between {{ and }}, if marked, is group 1.
func findPattern(find string) (*regexp.Regexp, error) {
	opens, closes := strings.Count(find, openMarker), strings.Count(find, closeMarker)
	if opens != closes || opens > 1 || (opens == 1 && strings.Index(find, openMarker) > strings.Index(find, closeMarker)) {
		return nil, fmt.Errorf("find %q: want at most one %s...%s pair", find, openMarker, closeMarker)
	}
	if opens == 0 {
		find = openMarker + find + closeMarker
	}
	// Whitespace next to a marker belongs outside the marked part.
	ws := regexp.MustCompile(`\s+`)
	find = strings.TrimSpace(ws.ReplaceAllString(find, " "))
	find = strings.ReplaceAll(find, openMarker+" ", " "+openMarker)
	find = strings.ReplaceAll(find, " "+closeMarker, closeMarker+" ")
	find = strings.TrimSpace(strings.ReplaceAll(find, "  ", " "))
	if strings.Contains(find, openMarker+closeMarker) {
		return nil, fmt.Errorf("find %q: the marked part is empty", find)
	}
	var b strings.Builder
	for i := 0; i < len(find); {
		rest := find[i:]
		switch {
		case strings.HasPrefix(rest, openMarker):
			b.WriteString("(")
			i += len(openMarker)
		case strings.HasPrefix(rest, closeMarker):
			b.WriteString(")")
			i += len(closeMarker)
		case rest[0] == ' ':
			b.WriteString(`\s+`)
			i++
		default:
			if m := paramPattern.FindString(rest); m != "" {
				b.WriteString(`(?:\$[0-9]+|` + regexp.QuoteMeta(m) + `)`)
				i += len(m)
				continue
			}
			b.WriteString(regexp.QuoteMeta(rest[:1]))
			i++
		}
	}
	return regexp.Compile(b.String())
}

// Apply returns src with m applied inside q's SQL. The find text must occur
// exactly once there: a mutation that no longer matches (the SQL changed)
// or that matches ambiguously is an error, never silently skipped. A find
// text starting with "*" is a fragment of the due rule rendered into the
// query more than once: every occurrence changes (at least one must exist),
// as a change to the fragment would change them all.
// It also returns the text it replaced.
func Apply(src []byte, q Query, m Mutation) (mutated []byte, replaced string, err error) {
	if q.Start < 0 || q.End > len(src) || q.Start > q.End {
		return nil, "", fmt.Errorf("query %s: offsets %d..%d outside the file", q.Name, q.Start, q.End)
	}
	find, all := strings.CutPrefix(strings.TrimSpace(m.Find), allMarker)
	re, err := findPattern(find)
	if err != nil {
		return nil, "", err
	}
	sql := src[q.Start:q.End]
	locs := re.FindAllSubmatchIndex(sql, -1)
	switch {
	case all && len(locs) == 0:
		return nil, "", fmt.Errorf("%q occurs 0 times in %s, want at least once", find, q.Name)
	case !all && len(locs) != 1:
		return nil, "", fmt.Errorf("%q occurs %d times in %s, want exactly once (prefix it with %s to change every occurrence)",
			find, len(locs), q.Name, allMarker)
	}
	out := append([]byte(nil), src...)
	for i := len(locs) - 1; i >= 0; i-- {
		at, end := q.Start+locs[i][2], q.Start+locs[i][3]
		out = append(out[:at:at], append([]byte(m.Replace), out[end:]...)...)
	}
	first := locs[0]
	return out, string(src[q.Start+first[2] : q.Start+first[3]]), nil
}

// allMarker starts a find text that changes every occurrence in the query.
const allMarker = "*"
