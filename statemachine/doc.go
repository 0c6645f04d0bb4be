// Package statemachine owns the workflow step states, the events that move a
// step between them, the legal-transition table, and the encoding of the
// transition metadata written to tasker.workflow_step_transitions.
//
// It is pure: no I/O, no clock, no randomness. The sweeper and the inline
// failure handler ask it whether a move is legal before they touch the
// database, and the db package uses it to build the metadata document, so the
// tasker orchestrator and this sidecar agree on the shape of every row.
package statemachine
