package main

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// Mutation is one change to the SQL of one query.
type Mutation struct {
	// ID names the mutation; with Query it is unique in the list.
	ID string
	// Query is the sqlc query name (`-- name: X`).
	Query string
	// Find is the text to change, as written in the .sql file: any run of
	// whitespace in it matches any run of whitespace in the query (a line
	// of the list can name a condition the query spreads over several
	// lines), and @name matches the $n sqlc renders it as. When part of it
	// is marked {{like this}}, only that part is replaced; the rest is
	// context that pins down which occurrence is meant.
	Find string
	// Replace is what Find becomes; empty drops it.
	Replace string
	// Packages are the go test package patterns to run, in order; nil means
	// the default set.
	Packages []string
	// Line is where the mutation is written in the list.
	Line int
}

// Key identifies a mutation in the output and for -run.
func (m Mutation) Key() string { return m.Query + "/" + m.ID }

// fieldSep separates the fields of a list line. SQL's || never contains it.
const fieldSep = " | "

var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// ParseList reads a mutation list. Each line that is not blank or a #
// comment is
//
//	id | Query [Query...] | find | replace [| package...]
//
// A line naming several queries stands for one mutation of each. An empty
// replace field (the line may end in " |") drops the found text.
func ParseList(r io.Reader) ([]Mutation, error) {
	var out []Mutation
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, " |") {
			line += " "
		}
		fields := strings.Split(line, fieldSep)
		if len(fields) != 4 && len(fields) != 5 {
			return nil, fmt.Errorf("line %d: want 4 or 5 fields separated by %q, got %d", n, fieldSep, len(fields))
		}
		for i := range fields {
			fields[i] = strings.TrimSpace(fields[i])
		}
		id, queries, find, replace := fields[0], strings.Fields(fields[1]), fields[2], fields[3]
		if !idPattern.MatchString(id) {
			return nil, fmt.Errorf("line %d: id %q: want lower-case letters, digits and dashes", n, id)
		}
		if len(queries) == 0 {
			return nil, fmt.Errorf("line %d: no query named", n)
		}
		if find == "" {
			return nil, fmt.Errorf("line %d: empty find text", n)
		}
		if _, err := findPattern(find); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if strings.Join(strings.Fields(find), " ") == strings.Join(strings.Fields(replace), " ") {
			return nil, fmt.Errorf("line %d: the replacement equals the find text", n)
		}
		if strings.Contains(replace, "`") {
			return nil, fmt.Errorf("line %d: a replacement cannot contain a backquote", n)
		}
		var pkgs []string
		if len(fields) == 5 {
			pkgs = strings.Fields(fields[4])
			if len(pkgs) == 0 {
				return nil, fmt.Errorf("line %d: empty package field", n)
			}
		}
		for _, q := range queries {
			m := Mutation{ID: id, Query: q, Find: find, Replace: replace, Packages: pkgs, Line: n}
			if prev, dup := seen[m.Key()]; dup {
				return nil, fmt.Errorf("line %d: %s is already defined on line %d", n, m.Key(), prev)
			}
			seen[m.Key()] = n
			out = append(out, m)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mutation list: %w", err)
	}
	return out, nil
}
