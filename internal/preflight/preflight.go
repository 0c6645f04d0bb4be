// Package preflight owns the readiness rule: which tasker tables, columns
// and privileges the sweeper needs, which versions of its own objects a
// binary can work with, what that means for the sweep path, and whether the
// recent sweeps failed. Evaluate turns what the database said (Facts) into a
// Report of named checks; it does no I/O, so the daemon's /readyz and
// `sweeper check` give the same verdict for the same facts.
package preflight

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Check names, in the order a Report lists them.
const (
	CheckDatabase      = "database"
	CheckTaskerSchema  = "tasker_schema"
	CheckPrivileges    = "privileges"
	CheckSweeperSchema = "sweeper_schema"
	CheckSweepPath     = "sweep_path"
	CheckSweeps        = "sweeps"
)

// FailedSweepsLimit is how many sweeps in a row may fail before the process
// is not ready.
const FailedSweepsLimit = 3

// Need is one relation the sweeper uses: the columns its queries name and
// the privileges its role needs on it.
type Need struct {
	Schema, Table string
	Columns       []string
	Privileges    []string
}

// Qualified is schema.table.
func (n Need) Qualified() string { return n.Schema + "." + n.Table }

// TaskerSchema is the orchestrator's schema the sweeper reads and writes.
const TaskerSchema = "tasker"

// SweeperSchema holds the sweeper-owned objects (the retry schedule).
const SweeperSchema = "tasker_sweeper"

// TaskerNeeds are the orchestrator's tables: every column a query of the
// sweeper names, and the grants the README lists.
var TaskerNeeds = []Need{
	{TaskerSchema, "workflow_steps", []string{
		"workflow_step_uuid", "task_uuid", "named_step_uuid", "retryable", "max_attempts", "in_process",
		"processed", "attempts", "last_attempted_at", "backoff_request_seconds", "results", "created_at", "updated_at",
	}, []string{"SELECT", "UPDATE"}},
	{TaskerSchema, "workflow_step_transitions", []string{
		"workflow_step_transition_uuid", "workflow_step_uuid", "to_state", "from_state", "metadata",
		"sort_key", "most_recent", "created_at", "updated_at",
	}, []string{"SELECT", "INSERT", "UPDATE"}},
	{TaskerSchema, "workflow_step_edges", []string{"from_step_uuid", "to_step_uuid"}, []string{"SELECT"}},
	{TaskerSchema, "named_steps", []string{"named_step_uuid", "name"}, []string{"SELECT"}},
}

// SweeperNeeds are the sweeper-owned tables, checked when their schema is
// installed.
var SweeperNeeds = []Need{
	{
		SweeperSchema, "retry_schedule",
		[]string{"workflow_step_uuid", "due_at", "stranded", "updated_at"},
		[]string{"SELECT", "INSERT", "UPDATE", "DELETE"},
	},
	{SweeperSchema, "adoption", []string{"id", "watermark", "last_full_pass"}, []string{"SELECT", "UPDATE"}},
	{
		SweeperSchema, "pause",
		[]string{"id", "paused", "paused_by", "reason", "since", "updated_at"},
		[]string{"SELECT", "UPDATE"},
	},
}

// Relation is one table as the catalog describes it to the sweeper's role.
type Relation struct {
	Columns []string
	// Privileges the role holds on it, by name (SELECT, INSERT, ...).
	Privileges map[string]bool
}

// Facts are what the database said about itself, gathered in one probe.
type Facts struct {
	// Err is set when the probe failed (unreachable, timed out, refused):
	// nothing else is known. ServerError says the server answered it with
	// an error (authentication, a missing database, a privilege) rather
	// than not answering.
	Err         error
	ServerError bool
	// Elapsed is how long the probe took.
	Elapsed time.Duration
	// ServerVersion and User describe the session.
	ServerVersion, User string
	// Schemas maps each schema that exists (of those asked about) to
	// whether the role has USAGE on it.
	Schemas map[string]bool
	// Relations maps schema.table of each relation that exists (of those
	// asked about) to what the role sees of it.
	Relations map[string]Relation
	// VersionTable is the goose version table of the sweeper's objects.
	VersionTable string
	// VersionTableExists and VersionReadable say whether it exists and
	// whether the role may read it; SweeperVersion is the version it
	// records (meaningful only when readable).
	VersionTableExists, VersionReadable bool
	SweeperVersion                      int64
	// ScheduleInstalled says the objects the schedule path needs exist.
	ScheduleInstalled bool
}

// SweepRecord is how the recent sweeps of a daemon went.
type SweepRecord struct {
	// Sweeps is how many (real, not dry-run) sweeps finished so far.
	Sweeps int
	// ConsecutiveFailures counts the failed sweeps since the last success.
	ConsecutiveFailures int
	// LastError is the last failure's message.
	LastError string
}

// Options are what Evaluate needs beside the facts.
type Options struct {
	// KnownVersion is the highest sweeper migration this binary carries.
	KnownVersion int64
	// RunningPath, when set, is the sweep path this process already chose
	// (it keeps it until it restarts).
	RunningPath string
	// Sweeps, when set, adds the sweeps check (a daemon; not `sweeper check`).
	Sweeps *SweepRecord
}

// Check is one line of a Report.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// Report is the readiness verdict: ready when every check passed.
type Report struct {
	Ready  bool    `json:"ready"`
	Checks []Check `json:"checks"`
	// Path is the sweep path the facts mean ("schedule" or "scan"), empty
	// when the database could not be asked.
	Path      string    `json:"path,omitempty"`
	CheckedAt time.Time `json:"checked_at"`
}

// Failed lists the checks that did not pass.
func (r Report) Failed() []Check {
	var failed []Check
	for _, c := range r.Checks {
		if !c.OK {
			failed = append(failed, c)
		}
	}
	return failed
}

// Summary is one line: "ready", or each failed check and why.
func (r Report) Summary() string {
	failed := r.Failed()
	if len(failed) == 0 {
		return "ready"
	}
	parts := make([]string, len(failed))
	for i, c := range failed {
		parts[i] = c.Name + ": " + c.Detail
	}
	return "not ready: " + strings.Join(parts, "; ")
}

// Evaluate is the readiness rule over facts.
func Evaluate(f Facts, opts Options) Report {
	var checks []Check
	path := ""
	switch {
	case f.Err != nil && f.ServerError:
		checks = append(checks, Check{CheckDatabase, false, "the server refused the probe: " + f.Err.Error()})
	case f.Err != nil:
		checks = append(checks, Check{CheckDatabase, false, "unreachable: " + f.Err.Error()})
	default:
		checks = append(checks,
			Check{CheckDatabase, true, fmt.Sprintf("PostgreSQL %s as %s, answered in %s",
				f.ServerVersion, f.User, f.Elapsed.Round(100*time.Microsecond))},
			taskerSchema(f), privileges(f), sweeperSchema(f, opts.KnownVersion))
		var c Check
		path, c = sweepPath(f, opts.RunningPath)
		checks = append(checks, c)
	}
	if opts.Sweeps != nil {
		checks = append(checks, sweeps(*opts.Sweeps))
	}
	r := Report{Ready: true, Checks: checks, Path: path}
	for _, c := range checks {
		r.Ready = r.Ready && c.OK
	}
	return r
}

func taskerSchema(f Facts) Check {
	if _, ok := f.Schemas[TaskerSchema]; !ok {
		return Check{CheckTaskerSchema, false, "schema " + TaskerSchema + " not found: is this the orchestrator's database? " +
			"('sweeper migrate --tasker-schema' creates it for a standalone one)"}
	}
	var problems []string
	columns := 0
	for _, n := range TaskerNeeds {
		rel, ok := f.Relations[n.Qualified()]
		if !ok {
			problems = append(problems, "table "+n.Qualified()+" is missing")
			continue
		}
		var missing []string
		for _, col := range n.Columns {
			if !slices.Contains(rel.Columns, col) {
				missing = append(missing, col)
			}
		}
		if len(missing) > 0 {
			problems = append(problems, fmt.Sprintf("%s has no column %s", n.Qualified(), strings.Join(missing, ", ")))
		}
		columns += len(n.Columns) - len(missing)
	}
	if len(problems) > 0 {
		return Check{CheckTaskerSchema, false, strings.Join(problems, "; ")}
	}
	return Check{CheckTaskerSchema, true, fmt.Sprintf("%d tables, %d columns present", len(TaskerNeeds), columns)}
}

// privileges checks the grants on every needed relation that exists (a
// missing one is tasker_schema's or sweeper_schema's to report).
func privileges(f Facts) Check {
	var missing []string
	granted := 0
	check := func(schema string, needs []Need) {
		usage, ok := f.Schemas[schema]
		if !ok {
			return
		}
		if !usage {
			missing = append(missing, "USAGE on schema "+schema)
			return
		}
		for _, n := range needs {
			rel, ok := f.Relations[n.Qualified()]
			if !ok {
				continue
			}
			var lacks []string
			for _, p := range n.Privileges {
				if rel.Privileges[p] {
					granted++
				} else {
					lacks = append(lacks, p)
				}
			}
			if len(lacks) > 0 {
				missing = append(missing, strings.Join(lacks, ", ")+" on "+n.Qualified())
			}
		}
	}
	check(TaskerSchema, TaskerNeeds)
	check(SweeperSchema, SweeperNeeds)
	if len(missing) > 0 {
		return Check{CheckPrivileges, false, fmt.Sprintf("role %s lacks %s", f.User, strings.Join(missing, "; "))}
	}
	return Check{CheckPrivileges, true, fmt.Sprintf("role %s holds the %d grants the sweeper needs", f.User, granted)}
}

func sweeperSchema(f Facts, known int64) Check {
	switch {
	case !f.VersionTableExists:
		if _, ok := f.Schemas[SweeperSchema]; ok {
			return Check{CheckSweeperSchema, true, "schema " + SweeperSchema + " exists but " + f.VersionTable +
				" does not: not installed by 'sweeper migrate'"}
		}
		return Check{CheckSweeperSchema, true, "not installed ('sweeper migrate' installs the retry schedule)"}
	case !f.VersionReadable:
		return Check{CheckSweeperSchema, true, fmt.Sprintf("version unknown: role %s may not read %s "+
			"(GRANT SELECT on it so a schema migrated by a newer sweeper is caught)", f.User, f.VersionTable)}
	case f.SweeperVersion > known:
		return Check{CheckSweeperSchema, false, fmt.Sprintf("database migrated by a newer sweeper: version %d, "+
			"this binary knows up to %d (run that sweeper's version or newer)", f.SweeperVersion, known)}
	case f.SweeperVersion < known:
		return Check{CheckSweeperSchema, true, fmt.Sprintf("version %d of %d: 'sweeper migrate' installs the rest",
			f.SweeperVersion, known)}
	}
	for _, n := range SweeperNeeds {
		rel, ok := f.Relations[n.Qualified()]
		if !ok {
			return Check{CheckSweeperSchema, false, fmt.Sprintf("version %d recorded but table %s is missing",
				f.SweeperVersion, n.Qualified())}
		}
		for _, col := range n.Columns {
			if !slices.Contains(rel.Columns, col) {
				return Check{CheckSweeperSchema, false, fmt.Sprintf("version %d recorded but %s has no column %s",
					f.SweeperVersion, n.Qualified(), col)}
			}
		}
	}
	return Check{CheckSweeperSchema, true, fmt.Sprintf("version %d (current)", f.SweeperVersion)}
}

func sweepPath(f Facts, running string) (string, Check) {
	path, detail := "scan", "scan: every sweep evaluates every waiting step (the retry schedule is not installed)"
	if f.ScheduleInstalled {
		path, detail = "schedule", "schedule: sweeps read due steps from "+SweeperSchema+".retry_schedule"
	}
	if running != "" && running != path {
		detail += fmt.Sprintf("; this process sweeps on the %s path until it restarts", running)
	}
	return path, Check{CheckSweepPath, true, detail}
}

func sweeps(s SweepRecord) Check {
	switch {
	case s.ConsecutiveFailures >= FailedSweepsLimit:
		return Check{CheckSweeps, false, fmt.Sprintf("the last %d sweeps failed: %s", s.ConsecutiveFailures, s.LastError)}
	case s.ConsecutiveFailures > 0:
		return Check{CheckSweeps, true, fmt.Sprintf("%d failed sweep(s) in a row (not ready at %d): %s",
			s.ConsecutiveFailures, FailedSweepsLimit, s.LastError)}
	case s.Sweeps == 0:
		return Check{CheckSweeps, true, "no sweep finished yet"}
	}
	return Check{CheckSweeps, true, "the last sweep succeeded"}
}
