package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// runPause is `sweeper pause`: every replica stops moving steps within one
// tick (the switch lives in the sweeper's own schema). Exit 2 when the
// switch is not installed.
func runPause(ctx context.Context, e env, args []string) error {
	return pauseCommand(ctx, e, args, true)
}

// runResume is `sweeper resume`.
func runResume(ctx context.Context, e env, args []string) error {
	return pauseCommand(ctx, e, args, false)
}

func pauseCommand(ctx context.Context, e env, args []string, pause bool) error {
	name := "resume"
	if pause {
		name = "pause"
	}
	f := newFlags(name, e)
	dbURL := databaseFlag(f)
	reason := new(string)
	if pause {
		reason = f.fs.String("reason", "", "why (shown by status, /v1/status and the daemons' logs)")
	}
	actor := f.fs.String("actor", "", "who (default: the OS user)")
	asJSON := f.fs.Bool("json", false, "print the switch as one JSON object")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := checkDatabaseURL(*dbURL); err != nil {
		return err
	}
	if *actor == "" {
		*actor = osUser(e)
	}
	op, store, err := openOperator(ctx, *dbURL, e)
	if err != nil {
		return err
	}
	defer store.Pool().Close()
	var (
		p       sweeper.Pause
		changed bool
	)
	if pause {
		p, changed, err = op.Pause(ctx, *actor, *reason)
	} else {
		p, changed, err = op.Resume(ctx, *actor)
	}
	if errors.Is(err, sweeper.ErrNoSchedule) {
		return usageErrorf("the pause switch is not installed: the sweeper-owned objects are missing or older than it (run 'sweeper migrate')")
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(struct {
			sweeper.Pause
			Changed bool `json:"changed"`
		}{p, changed})
	}
	fmt.Fprintln(e.stdout, pauseLine(p, changed))
	return nil
}

// pauseLine says what the switch is, for pause, resume and status.
func pauseLine(p sweeper.Pause, changed bool) string {
	if !p.Paused {
		if changed {
			return "resumed: every replica sweeps again"
		}
		return "not paused"
	}
	s := "paused"
	if !changed {
		s = "already paused"
	}
	s += " by " + p.By
	if p.Since != nil {
		s += " since " + p.Since.Format(time.RFC3339)
	}
	if p.Reason != "" {
		s += ": " + p.Reason
	}
	return s
}
