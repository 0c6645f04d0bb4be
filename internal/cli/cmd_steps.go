package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/statemachine"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// defaultBulkLimit caps how many steps one bulk operation changes.
const defaultBulkLimit = 1000

// runSteps is `sweeper steps`: list, show and change steps of the retry
// queue, straight against the database (no daemon needed).
func runSteps(ctx context.Context, e env, args []string) error {
	subs := map[string]func(context.Context, env, []string) error{
		"list": stepsList, "show": stepsShow,
		"retry":   stepsChange(sweeper.OpRetry),
		"resolve": stepsChange(sweeper.OpResolve),
		"cancel":  stepsChange(sweeper.OpCancel),
		"grant":   stepsChange(sweeper.OpGrant),
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		w := e.stderr
		if len(args) > 0 {
			w = e.stdout
		}
		fmt.Fprintln(w, "usage: sweeper steps <list|show|retry|resolve|cancel|grant> [flags] [UUID...]")
		fmt.Fprintln(w, "  list     list waiting, due, stranded or error steps (--state, --task, --name, --older-than, --limit, --cursor)")
		fmt.Fprintln(w, "  show     one step: why it is (not) due, its last error and its latest transitions")
		fmt.Fprintln(w, "  retry    move steps to pending now by the sweep's rule (--force: before their backoff has passed)")
		fmt.Fprintln(w, "  resolve  move steps to resolved_manually (--reason required)")
		fmt.Fprintln(w, "  cancel   move steps to cancelled (--reason required)")
		fmt.Fprintln(w, "  grant    give waiting steps --attempts N more attempts (--reason required)")
		if len(args) == 0 {
			return usageErrorf("a subcommand is required")
		}
		return errHelp
	}
	sub, ok := subs[args[0]]
	if !ok {
		return usageErrorf("unknown subcommand %q (try 'sweeper steps -h')", args[0])
	}
	return sub(ctx, e, args[1:])
}

// openOperator connects for one `steps` or `pause` command.
// Changes are logged at info (the audit), on stderr.
func openOperator(ctx context.Context, url string, e env) (*sweeper.Operator, *db.Store, error) {
	store, err := openStore(ctx, url)
	if err != nil {
		return nil, nil, err
	}
	logger, err := (&logConfig{format: "auto", level: "info"}).logger(e.stderr)
	if err != nil {
		store.Pool().Close()
		return nil, nil, err
	}
	sw, err := sweeper.New(store, sweeper.DefaultConfig(), logger, sweeper.Hooks{})
	if err != nil {
		store.Pool().Close()
		return nil, nil, configError(err)
	}
	return sweeper.NewOperator(store, sw, logger), store, nil
}

// queryFlags registers the selection flags of list and the bulk forms.
type queryFlags struct {
	state, task, name, cursor *string
	olderThan                 *time.Duration
}

func registerQueryFlags(f *flags, defaultState string) queryFlags {
	return queryFlags{
		state: f.fs.String("state", defaultState, "which steps: waiting_for_retry, due, stranded or error"),
		task:  f.fs.String("task", "", "only the steps of this task (uuid)"),
		name:  f.fs.String("name", "", "only the steps of this name"),
		olderThan: f.fs.Duration("older-than", 0,
			"only steps that entered their state at least this long ago (e.g. 30m)"),
		cursor: f.fs.String("cursor", "", "continue a listing after a page's next_cursor"),
	}
}

func (qf queryFlags) query() (sweeper.StepQuery, error) {
	q := sweeper.StepQuery{State: sweeper.ListState(*qf.state), Name: *qf.name, OlderThan: *qf.olderThan, Cursor: *qf.cursor}
	if *qf.task != "" {
		id, err := uuid.Parse(*qf.task)
		if err != nil {
			return q, usageErrorf("invalid --task %q: not a uuid", *qf.task)
		}
		q.Task = &id
	}
	if *qf.olderThan < 0 {
		return q, usageErrorf("invalid --older-than %s: must not be negative", *qf.olderThan)
	}
	return q, nil
}

// inputError turns an *InputError into a usage error naming the flag.
func inputError(err error) error {
	var in *sweeper.InputError
	if errors.As(err, &in) {
		return usageErrorf("invalid --%s: %s", strings.ReplaceAll(in.Field, "_", "-"), in.Problem)
	}
	return err
}

func stepsList(ctx context.Context, e env, args []string) error {
	f := newFlags("steps list", e)
	dbURL := databaseFlag(f)
	qf := registerQueryFlags(f, string(sweeper.ListWaiting))
	limit := f.fs.Int("limit", sweeper.DefaultListLimit, fmt.Sprintf("most steps to list (1-%d)", sweeper.MaxListLimit))
	asJSON := f.fs.Bool("json", false, "print the page as one JSON object: steps and next_cursor")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := checkDatabaseURL(*dbURL); err != nil {
		return err
	}
	q, err := qf.query()
	if err != nil {
		return err
	}
	q.Limit = *limit
	if q.Limit == 0 {
		return usageErrorf("invalid --limit: must be between 1 and %d, got 0", sweeper.MaxListLimit)
	}
	if _, err := q.Normalize(); err != nil {
		return inputError(err)
	}
	op, store, err := openOperator(ctx, *dbURL, e)
	if err != nil {
		return err
	}
	defer store.Pool().Close()
	page, err := op.List(ctx, q)
	if err != nil {
		return inputError(err)
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(page)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "STEP\tTASK\tNAME\tSTATE\tATTEMPTS\tDUE AT\tDUE\tWHY NOT DUE / LAST ERROR")
	for _, it := range page.Steps {
		due := "-"
		if it.DueAt != nil {
			due = it.DueAt.Format(time.RFC3339)
		}
		note := it.WhyNotDue
		if it.Due {
			note = "due"
		}
		if it.LastError != nil && it.LastError.Message != "" {
			note += " | " + oneLine(it.LastError.Message, 60)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s/%s\t%s\t%t\t%s\n", it.StepUUID, it.TaskUUID, it.Name, it.State,
			fmtInt(it.Attempts), fmtInt(it.MaxAttempts), due, it.Due, note)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%d step(s)", len(page.Steps))
	if page.NextCursor != "" {
		fmt.Fprintf(e.stdout, "; more: --cursor %s", page.NextCursor)
	}
	fmt.Fprintln(e.stdout)
	return nil
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func stepsShow(ctx context.Context, e env, args []string) error {
	f := newFlags("steps show", e)
	dbURL := databaseFlag(f)
	asJSON := f.fs.Bool("json", false, "print the step as one JSON object")
	ids, err := parseWithUUIDs(f, args)
	if err != nil {
		return err
	}
	if len(ids) != 1 {
		return usageErrorf("want exactly one step uuid, got %d", len(ids))
	}
	if err := checkDatabaseURL(*dbURL); err != nil {
		return err
	}
	op, store, err := openOperator(ctx, *dbURL, e)
	if err != nil {
		return err
	}
	defer store.Pool().Close()
	d, err := op.Show(ctx, ids[0])
	if errors.Is(err, statemachine.ErrStepNotFound) {
		return &exitError{code: exitRejected, err: err}
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(d)
	}
	printDetail(e.stdout, d)
	return nil
}

func printDetail(w io.Writer, d sweeper.StepDetail) {
	fmt.Fprintf(w, "step      %s (%s)\n", d.StepUUID, d.Name)
	task := d.TaskUUID.String()
	if d.TaskName != "" {
		task += " (" + d.Namespace + "/" + d.TaskName + ")"
	}
	fmt.Fprintf(w, "task      %s\n", task)
	fmt.Fprintf(w, "state     %s", d.State)
	if d.EnteredAt != nil {
		fmt.Fprintf(w, " since %s", d.EnteredAt.Format(time.RFC3339))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "attempts  %s of %s, retryable %t\n", fmtInt(d.Attempts), fmtInt(d.MaxAttempts), d.Retryable)
	if d.DueAt != nil {
		fmt.Fprintf(w, "due at    %s\n", d.DueAt.Format(time.RFC3339))
	}
	if d.Due {
		fmt.Fprintln(w, "due       yes")
	} else {
		fmt.Fprintf(w, "due       no: %s\n", d.WhyNotDue)
	}
	if d.ParkedBy != "" {
		fmt.Fprintf(w, "parked by %s\n", d.ParkedBy)
	}
	if le := d.LastError; le != nil {
		fmt.Fprintf(w, "last error %s %s: %s\n", le.Category, le.Code, le.Message)
	}
	fmt.Fprintln(w, "\nhistory (newest first):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tAT\tFROM\tTO\tEVENT\tWHO\tWHY")
	for _, h := range d.History {
		at, from := "-", "-"
		if h.At != nil {
			at = h.At.Format(time.RFC3339)
		}
		if h.From != nil {
			from = string(*h.From)
		}
		why := h.Why
		if h.Operation != "" {
			why = h.Operation + ": " + why
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", h.SortKey, at, from, h.To, h.Event, h.Who, oneLine(why, 70))
		for _, m := range h.Manual {
			fmt.Fprintf(tw, "\t\t\t\t%v\t%v\t%v: %v (max_attempts %v -> %v)\n", "manual", m["actor"], m["operation"], m["why"],
				fmtAny(m["max_attempts_from"]), fmtAny(m["max_attempts_to"]))
		}
	}
	_ = tw.Flush()
}

func fmtAny(v any) string {
	if v == nil {
		return "NULL"
	}
	return fmt.Sprint(v)
}

// parseWithUUIDs parses flags and step uuids in any order.
func parseWithUUIDs(f *flags, args []string) ([]uuid.UUID, error) {
	var flagArgs []string
	var ids []uuid.UUID
	for i := 0; i < len(args); i++ {
		a := args[i]
		if strings.HasPrefix(a, "-") {
			flagArgs = append(flagArgs, a)
			// A flag's separate value: the next argument, unless the flag
			// is boolean or carries its value after "=".
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && i+1 < len(args) {
				if fl := f.fs.Lookup(name); fl != nil {
					if bf, ok := fl.Value.(interface{ IsBoolFlag() bool }); !ok || !bf.IsBoolFlag() {
						i++
						flagArgs = append(flagArgs, args[i])
					}
				}
			}
			continue
		}
		id, err := uuid.Parse(a)
		if err != nil {
			return nil, usageErrorf("invalid step %q: not a uuid", a)
		}
		ids = append(ids, id)
	}
	if err := f.parse(flagArgs); err != nil {
		return nil, err
	}
	return ids, nil
}

// osUser is who runs the command, the default --actor.
func osUser(e env) string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	for _, v := range []string{"USER", "LOGNAME"} {
		if s := e.getenv(v); s != "" {
			return s
		}
	}
	if h, err := os.Hostname(); err == nil {
		return "unknown@" + h
	}
	return "unknown"
}

// changeOutput is what a change command prints with --json.
type changeOutput struct {
	DryRun    bool             `json:"dry_run"`
	Changes   []sweeper.Change `json:"changes"`
	Changed   int              `json:"changed"`
	Unchanged int              `json:"unchanged"`
}

func stepsChange(op sweeper.Operation) func(context.Context, env, []string) error {
	return func(ctx context.Context, e env, args []string) error {
		f := newFlags("steps "+string(op), e)
		dbURL := databaseFlag(f)
		reason := f.fs.String("reason", "", "why (recorded in the transition metadata)")
		actor := f.fs.String("actor", "", "who (recorded in the transition metadata; default: the OS user)")
		dryRun := f.fs.Bool("dry-run", false, "print what would change, write nothing")
		asJSON := f.fs.Bool("json", false, "print the changes as one JSON object")
		force := new(bool)
		attempts := new(int)
		if op == sweeper.OpRetry {
			force = f.fs.Bool("force", false, "also move steps whose backoff has not passed yet")
		}
		if op == sweeper.OpGrant {
			attempts = f.fs.Int("attempts", 0, "how many more attempts each step gets (at least 1)")
		}
		allStranded := f.fs.Bool("all-stranded", false, "select every stranded step (with the filters below)")
		qf := registerQueryFlags(f, "")
		limit := f.fs.Int("limit", defaultBulkLimit, "most steps a bulk selection changes")
		ids, err := parseWithUUIDs(f, args)
		if err != nil {
			return err
		}
		if err := checkDatabaseURL(*dbURL); err != nil {
			return err
		}
		bulk := *allStranded || *qf.task != "" || *qf.name != "" || *qf.olderThan != 0 || *qf.state != ""
		switch {
		case bulk && len(ids) > 0:
			return usageErrorf("give step uuids or a selection (--all-stranded, --task, --name, --older-than, --state), not both")
		case !bulk && len(ids) == 0:
			return usageErrorf("give step uuids or a selection (--all-stranded, --task, --name, --older-than, --state)")
		case *allStranded && *qf.state != "" && *qf.state != string(sweeper.ListStranded):
			return usageErrorf("--all-stranded selects --state stranded, not %q", *qf.state)
		case *limit < 1:
			return usageErrorf("invalid --limit %d: must be at least 1", *limit)
		case *qf.cursor != "":
			return usageErrorf("--cursor is for 'steps list'")
		}
		if *actor == "" {
			*actor = osUser(e)
		}
		req := sweeper.Request{
			Op: op, Force: *force, Attempts: *attempts, DryRun: *dryRun,
			Audit: sweeper.Audit{Actor: *actor, Reason: *reason, Via: "cli"},
		}
		if err := req.Check(); err != nil {
			return inputError(err)
		}
		var q sweeper.StepQuery
		if bulk {
			if *allStranded {
				*qf.state = string(sweeper.ListStranded)
			}
			if *qf.state == "" {
				*qf.state = string(sweeper.ListWaiting)
			}
			if q, err = qf.query(); err != nil {
				return err
			}
			if _, err := q.Normalize(); err != nil {
				return inputError(err)
			}
		}
		opr, store, err := openOperator(ctx, *dbURL, e)
		if err != nil {
			return err
		}
		defer store.Pool().Close()

		out := changeOutput{DryRun: *dryRun, Changes: []sweeper.Change{}}
		refused := 0
		var tw *tabwriter.Writer
		if !*asJSON {
			tw = tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "STEP\tOPERATION\tFROM\tTO\tCHANGED\tDETAIL")
		}
		record := func(ch sweeper.Change, err error) {
			out.Changes = append(out.Changes, ch)
			if ch.Changed {
				out.Changed++
			} else {
				out.Unchanged++
			}
			if err != nil {
				refused++
				if ch.Detail == "" {
					ch.Detail = err.Error()
				}
			}
			if tw != nil {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\t%s\n", ch.StepUUID, ch.Operation, ch.From, ch.To, ch.Changed, ch.Detail)
			}
		}
		var fatal error
		if bulk {
			_, _, fatal = opr.Bulk(ctx, q, *limit, req, func(changes []sweeper.Change, errs []error) {
				for i := range changes {
					record(changes[i], errs[i])
				}
				if tw != nil {
					_ = tw.Flush()
				}
			})
			fatal = inputError(fatal)
		} else {
			for _, id := range ids {
				req.Step = id
				ch, err := opr.Apply(ctx, req)
				if err != nil && !sweeper.StepScoped(err) {
					fatal = inputError(err)
					break
				}
				if errors.Is(err, statemachine.ErrStepNotFound) {
					ch.Detail = "no such step"
				}
				record(ch, err)
			}
		}
		if *asJSON {
			if err := json.NewEncoder(e.stdout).Encode(out); err != nil {
				return err
			}
		} else {
			_ = tw.Flush()
			verb := "changed"
			if *dryRun {
				verb = "would change (dry run)"
			}
			fmt.Fprintf(e.stdout, "%d %s, %d refused or unchanged\n", countWould(out, *dryRun, refused), verb, refused)
		}
		if fatal != nil {
			return fatal
		}
		if refused > 0 {
			return &exitError{code: exitRejected, err: fmt.Errorf("%d of %d step(s) refused: unknown, illegal for their state, not due, or moved by another writer",
				refused, len(out.Changes))}
		}
		return nil
	}
}

func countWould(out changeOutput, dryRun bool, refused int) int {
	if dryRun {
		return len(out.Changes) - refused
	}
	return out.Changed
}
