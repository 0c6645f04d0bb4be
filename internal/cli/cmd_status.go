package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// strandedListSize is how many stranded steps `sweeper status` lists.
const strandedListSize = 20

// runStatus is `sweeper status`: steps per state, what is due now, what is
// stranded and when the next backoff expires.
func runStatus(ctx context.Context, e env, args []string) error {
	f := newFlags("status", e)
	dbURL := databaseFlag(f)
	asJSON := f.fs.Bool("json", false, "print the status as one JSON object")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := checkDatabaseURL(*dbURL); err != nil {
		return err
	}
	store, err := openStore(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer store.Pool().Close()

	counts, err := store.StepCountsByState(ctx)
	if err != nil {
		return err
	}
	due, err := store.CountDue(ctx)
	if err != nil {
		return err
	}
	stranded, err := store.StrandedSample(ctx, strandedListSize)
	if err != nil {
		return err
	}
	pause, err := store.PauseState(ctx)
	if err != nil {
		return err
	}

	var next *time.Time
	if due.NotYetDue > 0 {
		next = &due.NextDueAt
	}
	if *asJSON {
		ids := make([]string, len(stranded))
		for i, s := range stranded {
			ids[i] = s.StepUUID.String()
		}
		return json.NewEncoder(e.stdout).Encode(map[string]any{
			"counts_by_state": counts,
			"due_now":         due.Due,
			"not_yet_due":     due.NotYetDue,
			"next_due_at":     next,
			"stranded":        due.Stranded,
			"stranded_sample": ids,
			"pause":           pause,
		})
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "STATE\tSTEPS\t")
	for _, st := range statemachine.States() {
		fmt.Fprintf(w, "%s\t%d\t\n", st, counts[st])
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "\nsweeps: %s\n", pauseLine(pause, pause.Paused))
	fmt.Fprintf(e.stdout, "due now: %d\nwaiting, not yet due: %d\n", due.Due, due.NotYetDue)
	if next != nil {
		fmt.Fprintf(e.stdout, "next due at: %s\n", next.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(e.stdout, "stranded (waiting_for_retry, not retry-eligible): %d\n", due.Stranded)
	for _, s := range stranded {
		fmt.Fprintf(e.stdout, "  step %s task %s attempts=%s max_attempts=%s retryable=%t\n",
			s.StepUUID, s.TaskUUID, fmtInt(s.Attempts), fmtInt(s.MaxAttempts), s.Retryable)
	}
	return nil
}

func fmtInt(p *int32) string {
	if p == nil {
		return "NULL"
	}
	return fmt.Sprint(*p)
}
