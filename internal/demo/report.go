package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
)

// printDecisions is the line per handler action after the seeded failures.
func (d *demo) printDecisions(failures int, t *tally) {
	fmt.Fprintf(d.opts.Out, "Reported %d failures to the inline handler:\n", failures)
	tw := tabwriter.NewWriter(d.opts.Out, 0, 0, 2, ' ', 0)
	actions, counts, _ := t.snapshot()
	for _, a := range actions {
		if counts[a].total == 0 {
			continue
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\n", a, counts[a].total, counts[a].categories())
	}
	_ = tw.Flush()
}

// printReport is the final status table.
func (d *demo) printReport(ctx context.Context, store *db.Store, q queries, w *world, ran time.Duration, interrupted bool) error {
	states, err := store.StepCountsByState(ctx)
	if err != nil {
		return err
	}
	moves, err := q.sweepMoves(ctx, w.tasks)
	if err != nil {
		return err
	}
	sweptBackPending, err := q.sweptBackPending(ctx, w.tasks)
	if err != nil {
		return err
	}
	due, err := store.CountDue(ctx)
	if err != nil {
		return err
	}
	policies, err := q.retryPolicies(ctx, w.tasks)
	if err != nil {
		return err
	}
	actions, decisions, succeeded := w.tally.snapshot()

	var t reportTable
	stateLabel := "STEP STATE"
	if d.opts.DatabaseURL != "" {
		stateLabel = "STEP STATE (every step in the database)"
	}
	t.section(stateLabel, "STEPS")
	var total int64
	for _, st := range statemachine.States() {
		note := ""
		if st == statemachine.Pending {
			note = fmt.Sprintf("%d swept back, not yet re-run; the rest wait for their parents", sweptBackPending)
		}
		t.row(string(st), states[st], note)
		total += states[st]
	}
	t.row("total", total, "")
	t.section("INLINE HANDLER ACTION", "FAILURES")
	for _, a := range actions {
		t.row(string(a), int64(decisions[a].total), decisions[a].categories())
	}
	t.section("RETRY POLICY (step: where the delay came from)", "PARKED")
	for _, p := range policies {
		label := p.step + ": " + p.source
		if p.source != "retry_after" && p.strategy != "" {
			label += " " + p.strategy
		}
		delays := fmt.Sprintf("delays %d s", p.minSeconds)
		if p.maxSeconds != p.minSeconds {
			delays = fmt.Sprintf("delays %d–%d s", p.minSeconds, p.maxSeconds)
		}
		t.row(label, p.parked, delays)
	}
	t.section("SWEEPER", "")
	t.row("sweeps run", d.sweeps.Load(), "schedule "+schedule)
	t.row("steps swept back to pending", moves.moves, fmt.Sprintf("%d distinct steps", moves.steps))
	t.row("retries that then succeeded", int64(succeeded), "run by the demo orchestrator")
	t.row("stranded (waiting, not retry-eligible)", due.Stranded, "")
	t.row("due now, not yet swept", due.Due, "")

	how := "ran"
	if interrupted {
		how = "interrupted after"
	}
	fmt.Fprintf(d.opts.Out, "\nWhat happened (%s %s, %d tasks):\n\n", how, ran.Round(100*time.Millisecond), d.opts.Tasks)
	return t.write(d.opts.Out)
}

// reportTable is a text table with left-aligned labels and right-aligned
// counts, the sections sharing one set of columns.
type reportTable struct {
	rows [][3]string
}

func (t *reportTable) section(label, unit string) {
	if len(t.rows) > 0 {
		t.rows = append(t.rows, [3]string{})
	}
	t.rows = append(t.rows, [3]string{label, unit, ""})
}

func (t *reportTable) row(label string, n int64, note string) {
	t.rows = append(t.rows, [3]string{label, strconv.FormatInt(n, 10), note})
}

func (t *reportTable) write(w io.Writer) error {
	width := 0
	for _, r := range t.rows {
		width = max(width, len(r[1]))
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 3, ' ', 0)
	for _, r := range t.rows {
		// Every line has the tabs, blank ones too, so all sections align.
		fmt.Fprintf(tw, "%s\t%*s\t%s\n", r[0], width, r[1], r[2])
	}
	_ = tw.Flush() // writes to a bytes.Buffer cannot fail
	var out strings.Builder
	for line := range strings.Lines(buf.String()) {
		out.WriteString(strings.TrimRight(line, " \n") + "\n")
	}
	if _, err := io.WriteString(w, out.String()); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}
