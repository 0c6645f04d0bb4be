// Package migrations embeds the goose migration files, so the binary can
// migrate a database without the source tree.
//
// There are two independent sets, each with its own goose version table.
// TaskerSubset is the tasker-compatible subset of the orchestrator's schema
// (for tests, the demo and standalone use); the orchestrator's own
// migrations create the real thing in production, and this set must never
// run there. SweeperObjects are the sweeper's own objects, safe to apply on
// top of an orchestrator-created database.
package migrations

import "embed"

// FS holds every migration set, one directory each.
//
//go:embed tasker/*.sql sweeper/*.sql
var FS embed.FS

// Set is one directory of migrations with its own goose version table.
type Set struct {
	// Dir is the directory inside FS.
	Dir string
	// VersionTable is the goose bookkeeping table for this set.
	VersionTable string
}

// TaskerSubset creates the subset of tasker's schema the sweeper uses.
var TaskerSubset = Set{Dir: "tasker", VersionTable: "public.sweeper_tasker_subset_version"}

// SweeperObjects creates the sweeper-owned schedule and index.
var SweeperObjects = Set{Dir: "sweeper", VersionTable: "public.tasker_sweeper_schema_version"}

// Sets lists the migration sets `sweeper migrate` applies, in order. The
// tasker subset is included only on request: on an orchestrator's database
// its tables already exist and are not ours to touch.
func Sets(withTaskerSubset bool) []Set {
	if withTaskerSubset {
		return []Set{TaskerSubset, SweeperObjects}
	}
	return []Set{SweeperObjects}
}
