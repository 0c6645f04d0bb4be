// Package migrations embeds the goose migration files, so the binary can
// migrate a database without the source tree.
//
// There are two independent sets, each with its own goose version table.
// TaskerSubset is the tasker-compatible subset of the orchestrator's schema
// (for tests, the demo and standalone use); the orchestrator's own
// migrations create the real thing in production, and this set must never
// run there. SweeperObjects are the sweeper's own objects, safe to apply on
// top of an orchestrator-created database.
//
// Both version tables live in the sweeper's own schema (Schema), never in
// public: on PostgreSQL 15 an ordinary role may not create tables in public.
package migrations

import "embed"

// FS holds every migration set, one directory each.
//
//go:embed tasker/*.sql sweeper/*.sql
var FS embed.FS

// Schema is the sweeper's own schema: the sweeper-owned objects and both
// sets' goose version tables.
const Schema = "tasker_sweeper"

// Set is one directory of migrations with its own goose version table.
type Set struct {
	// Dir is the directory inside FS.
	Dir string
	// VersionTable is the goose bookkeeping table for this set,
	// schema-qualified.
	VersionTable string
	// LegacyVersionTable is where earlier releases kept the version table;
	// a migration run carries its rows over to VersionTable and drops it.
	LegacyVersionTable string
	// NeedsTasker lists the tasker tables (without the schema) that must
	// exist before this set can be applied.
	NeedsTasker []string
	// IndexesTasker is the tasker table (without the schema) this set
	// builds indexes on, which needs its owner's privileges.
	IndexesTasker string
}

// TaskerTables are the orchestrator's tables the sweeper reads and writes.
var TaskerTables = []string{"workflow_steps", "workflow_step_transitions", "workflow_step_edges", "named_steps"}

// TaskerSubset creates the subset of tasker's schema the sweeper uses.
var TaskerSubset = Set{
	Dir:                "tasker",
	VersionTable:       Schema + ".goose_tasker_subset_version",
	LegacyVersionTable: "public.sweeper_tasker_subset_version",
}

// SweeperObjects creates the sweeper-owned schedule and index; it builds an
// index on the tasker transition table, and the sweeper needs the rest.
var SweeperObjects = Set{
	Dir:                "sweeper",
	VersionTable:       Schema + ".goose_version",
	LegacyVersionTable: "public.tasker_sweeper_schema_version",
	NeedsTasker:        TaskerTables,
	IndexesTasker:      "workflow_step_transitions",
}

// Sets lists the migration sets `sweeper migrate` applies, in order. The
// tasker subset is included only on request: on an orchestrator's database
// its tables already exist and are not ours to touch.
func Sets(withTaskerSubset bool) []Set {
	if withTaskerSubset {
		return []Set{TaskerSubset, SweeperObjects}
	}
	return []Set{SweeperObjects}
}
