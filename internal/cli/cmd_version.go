package cli

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/tasker-sweeper/retrysweeper/internal/buildinfo"
)

// runVersion is `sweeper version` (and `sweeper --version`): the release
// version, the VCS revision and time, the Go version.
func runVersion(_ context.Context, e env, args []string) error {
	f := newFlags("version", e)
	asJSON := f.fs.Bool("json", false, "print the build information as one JSON object")
	if err := f.parse(args); err != nil {
		return err
	}
	info := buildinfo.Get()
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(info)
	}
	revision := info.Revision
	if info.Modified {
		revision += " (modified)"
	}
	fmt.Fprintf(e.stdout, "sweeper %s\n", info.Version)
	fmt.Fprintf(e.stdout, "  revision: %s\n", revision)
	fmt.Fprintf(e.stdout, "  time:     %s\n", info.Time)
	fmt.Fprintf(e.stdout, "  go:       %s\n", info.GoVersion)
	if info.Module != "" {
		fmt.Fprintf(e.stdout, "  module:   %s\n", info.Module)
	}
	return nil
}
