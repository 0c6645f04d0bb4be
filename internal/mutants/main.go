// Command mutants is the mutation test of the SQL (`make mutants`): it
// changes one condition of one query at a time in the sqlc-generated code,
// runs the tests against the changed query, and reports every change the
// tests did not notice. The changes are listed in one data file beside the
// queries (db/queries/mutants.txt); a change that no longer applies to its
// query counts as a failure, so the list cannot rot silently.
//
// The working tree is never written: each mutant is a copy of one generated
// file, handed to go test with -overlay.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// defaultPackages are the tests a mutant runs unless its line names others,
// in the order they run: the sweep's parity tests first, they kill most.
var defaultPackages = []string{"./sweeper/...", "./db/...", "./handling/...", "./internal/admin/..."}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Result is what became of one mutant.
type Result struct {
	Mutation Mutation
	// Status is killed, survived or not applicable.
	Status string
	// Detail is the first failing test, or why the mutant did not apply.
	Detail string
	Took   time.Duration
}

const (
	statusKilled        = "killed"
	statusSurvived      = "survived"
	statusNotApplicable = "not applicable"
)

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mutants", flag.ContinueOnError)
	fs.SetOutput(stderr)
	list := fs.String("list", "db/queries/mutants.txt", "the mutation list")
	dir := fs.String("generated", "db/internal/dbsqlc", "the sqlc-generated code")
	only := fs.String("run", "", "only the mutants whose Query/id matches this regular expression")
	check := fs.Bool("check", false, "only check that every mutant applies to its query; run no tests")
	timeout := fs.Duration("timeout", 120*time.Second, "go test -timeout for each package: a hanging test kills the mutant")
	verbose := fs.Bool("v", false, "print go test's output of every failing run")
	show := fs.Bool("show", false, "print what each mutant replaces, and with what")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "mutants:", err)
		return 2
	}
	root, err := moduleRoot()
	if err != nil {
		return fail(err)
	}
	mutations, err := readList(filepath.Join(root, *list))
	if err != nil {
		return fail(err)
	}
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			return fail(fmt.Errorf("-run: %w", err))
		}
		var keep []Mutation
		for _, m := range mutations {
			if re.MatchString(m.Key()) {
				keep = append(keep, m)
			}
		}
		mutations = keep
	}
	if len(mutations) == 0 {
		return fail(errors.New("no mutants selected"))
	}
	queries, err := FindQueries(filepath.Join(root, *dir))
	if err != nil {
		return fail(err)
	}
	before, err := fingerprint(queries)
	if err != nil {
		return fail(err)
	}
	cleanBefore, _ := gitClean(root, *dir)

	tmp, err := os.MkdirTemp("", "mutants-")
	if err != nil {
		return fail(fmt.Errorf("create work directory: %w", err))
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	// Ctrl-C stops the go test in flight (its process group) and still
	// prints what was found so far.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// Every mutant's overlay first: one that does not apply is reported
	// even when the run is cut short.
	overlays := make([]string, len(mutations))
	results := make([]Result, len(mutations))
	for i, m := range mutations {
		results[i].Mutation = m
		var replaced string
		overlays[i], replaced, err = writeOverlay(tmp, i, queries, m)
		if err != nil {
			results[i].Status, results[i].Detail = statusNotApplicable, err.Error()
		} else if *show {
			fmt.Fprintf(stdout, "%s: %q -> %q\n", m.Key(), strings.Join(strings.Fields(replaced), " "), m.Replace)
		}
	}
	if *check {
		return checkReport(stdout, results)
	}

	var log io.Writer
	if *verbose {
		log = stderr
	}
	runner := Runner{Go: goCommand(), Dir: root, Timeout: *timeout, Log: log}
	start := time.Now()
	all := allPackages(mutations)
	fmt.Fprintf(stdout, "baseline: the unmutated tests (%s)\n", strings.Join(all, " "))
	base, err := runner.Run(ctx, all, "")
	if err != nil {
		return fail(err)
	}
	if base.Failed {
		return fail(fmt.Errorf("the tests fail without any mutant (%s): fix them first", base.By))
	}
	fmt.Fprintf(stdout, "baseline passed in %s\n", time.Since(start).Round(time.Second))

	var runErr error
	for i := range results {
		r := &results[i]
		if r.Status != "" {
			fmt.Fprintf(stdout, "[%d/%d] %s: %s: %s\n", i+1, len(results), r.Mutation.Key(), r.Status, r.Detail)
			continue
		}
		pkgs := r.Mutation.Packages
		if pkgs == nil {
			pkgs = defaultPackages
		}
		t0 := time.Now()
		out, err := runner.Run(ctx, pkgs, overlays[i])
		r.Took = time.Since(t0)
		if err != nil {
			runErr = err
			break
		}
		r.Status, r.Detail = statusSurvived, ""
		if out.Failed {
			r.Status, r.Detail = statusKilled, out.By
		}
		fmt.Fprintf(stdout, "[%d/%d] %s: %s %s (%s)\n", i+1, len(results), r.Mutation.Key(), r.Status, r.Detail, r.Took.Round(time.Second))
	}
	code := report(stdout, results, runErr)
	fmt.Fprintf(stdout, "took %s\n", time.Since(start).Round(time.Second))
	// The overlays never touch the working tree; make sure of it.
	after, err := fingerprint(queries)
	switch {
	case err != nil:
		return fail(err)
	case after != before:
		return fail(errors.New("the generated code changed during the run"))
	}
	if clean, ok := gitClean(root, *dir); cleanBefore && ok && !clean {
		return fail(fmt.Errorf("git diff: %s changed during the run", *dir))
	}
	return code
}

func readList(path string) ([]Mutation, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open mutation list: %w", err)
	}
	defer func() { _ = f.Close() }()
	ms, err := ParseList(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ms, nil
}

// writeOverlay writes m applied to its query's file into dir and a go
// build -overlay file that puts it in place of the original.
func writeOverlay(dir string, i int, queries map[string]Query, m Mutation) (overlay, replaced string, err error) {
	q, ok := queries[m.Query]
	if !ok {
		return "", "", fmt.Errorf("no query %s in the generated code", m.Query)
	}
	src, err := os.ReadFile(q.File)
	if err != nil {
		return "", "", fmt.Errorf("read generated file: %w", err)
	}
	mutated, replaced, err := Apply(src, q, m)
	if err != nil {
		return "", "", err
	}
	file := filepath.Join(dir, fmt.Sprintf("mutant-%03d-%s", i, filepath.Base(q.File)))
	if err := os.WriteFile(file, mutated, 0o600); err != nil {
		return "", "", fmt.Errorf("write mutant: %w", err)
	}
	raw, err := json.Marshal(map[string]map[string]string{"Replace": {q.File: file}})
	if err != nil {
		return "", "", fmt.Errorf("encode overlay: %w", err)
	}
	overlay = file + ".overlay.json"
	if err := os.WriteFile(overlay, raw, 0o600); err != nil {
		return "", "", fmt.Errorf("write overlay: %w", err)
	}
	return overlay, replaced, nil
}

// allPackages is every package some mutant runs, for the baseline.
func allPackages(ms []Mutation) []string {
	out := append([]string(nil), defaultPackages...)
	seen := map[string]bool{}
	for _, p := range out {
		seen[p] = true
	}
	for _, m := range ms {
		for _, p := range m.Packages {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// report prints the table and the closing line; the exit code is 1 when a
// mutant survived, did not apply or did not run.
func report(w io.Writer, results []Result, runErr error) int {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nMUTANT\tRESULT\tFIRST FAILING TEST / REASON\tTIME")
	var killed, survived, notApplicable, notRun int
	for _, r := range results {
		status, took := r.Status, ""
		if r.Took > 0 {
			took = r.Took.Round(100 * time.Millisecond).String()
		}
		switch status {
		case statusKilled:
			killed++
		case statusSurvived:
			survived++
		case statusNotApplicable:
			notApplicable++
		default:
			notRun++
			status = "not run"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Mutation.Key(), status, r.Detail, took)
	}
	_ = tw.Flush()
	if runErr != nil {
		fmt.Fprintln(w, "stopped:", runErr)
	}
	line := fmt.Sprintf("%d killed, %d survived", killed, survived)
	if notApplicable > 0 {
		line += fmt.Sprintf(", %d not applicable", notApplicable)
	}
	if notRun > 0 {
		line += fmt.Sprintf(", %d not run", notRun)
	}
	fmt.Fprintln(w, line)
	if survived > 0 || notApplicable > 0 || notRun > 0 || runErr != nil {
		return 1
	}
	return 0
}

// checkReport prints the mutants that do not apply; the exit code is 1
// when there is one.
func checkReport(w io.Writer, results []Result) int {
	bad := 0
	for _, r := range results {
		if r.Status == statusNotApplicable {
			bad++
			fmt.Fprintf(w, "%s (line %d): not applicable: %s\n", r.Mutation.Key(), r.Mutation.Line, r.Detail)
		}
	}
	fmt.Fprintf(w, "%d mutants apply, %d not applicable\n", len(results)-bad, bad)
	if bad > 0 {
		return 1
	}
	return 0
}

// moduleRoot is the directory of the main module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command(goCommand(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the module root: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

func goCommand() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// fingerprint hashes every generated file that holds a query.
func fingerprint(queries map[string]Query) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	files := map[string]bool{}
	for _, q := range queries {
		files[q.File] = true
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, name := range names {
		src, err := os.ReadFile(name)
		if err != nil {
			return sum, fmt.Errorf("read generated file: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", name, len(src))
		h.Write(src)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// gitClean says whether git sees no changes in dir; ok is false when git
// cannot tell (no git, not a repository).
func gitClean(root, dir string) (clean, ok bool) {
	cmd := exec.Command("git", "diff", "--quiet", "--", dir)
	cmd.Dir = root
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return true, true
	case errors.As(err, &exitErr) && exitErr.ExitCode() == 1:
		return false, true
	default:
		return false, false
	}
}
