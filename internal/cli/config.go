package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"time"

	"github.com/lmittmann/tint"

	"github.com/tasker-sweeper/retrysweeper/db"
	"github.com/tasker-sweeper/retrysweeper/handling"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// errHelp ends a command that only printed its help: exit 0.
var errHelp = errors.New("help requested")

// flags is a subcommand's flag set where every flag may fall back to an
// environment variable. Flags win over the environment; either way a bad
// value is one line naming the flag (and the variable), exit 2.
type flags struct {
	fs    *flag.FlagSet
	e     env
	envOf map[string]string
}

func newFlags(name string, e env) *flags {
	fs := flag.NewFlagSet("sweeper "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &flags{fs: fs, e: e, envOf: map[string]string{}}
}

// env records the environment variable a flag falls back to, and says so in
// the flag's help text.
func (f *flags) env(name, variable string) {
	f.envOf[name] = variable
	if fl := f.fs.Lookup(name); fl != nil {
		fl.Usage += " [$" + variable + "]"
	}
}

func (f *flags) parse(args []string) error {
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			f.printHelp()
			return errHelp
		}
		return usageErrorf("%v (see '%s -h')", err, f.fs.Name())
	}
	if f.fs.NArg() > 0 {
		return usageErrorf("unexpected argument %q (see '%s -h')", f.fs.Arg(0), f.fs.Name())
	}
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	names := make([]string, 0, len(f.envOf))
	for name := range f.envOf {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		variable := f.envOf[name]
		value := f.e.getenv(variable)
		if set[name] || value == "" {
			continue
		}
		if err := f.fs.Set(name, value); err != nil {
			return usageErrorf("invalid --%s from $%s: %v", name, variable, err)
		}
	}
	return nil
}

func (f *flags) printHelp() {
	fmt.Fprintf(f.e.stdout, "usage: %s [flags]\n\n", f.fs.Name())
	f.fs.SetOutput(f.e.stdout)
	f.fs.PrintDefaults()
	f.fs.SetOutput(io.Discard)
}

// databaseFlag registers --database-url.
func databaseFlag(f *flags) *string {
	url := f.fs.String("database-url", "", "PostgreSQL connection URL of the tasker database")
	f.env("database-url", "DATABASE_URL")
	return url
}

// checkDatabaseURL validates the URL without connecting; the message never
// contains the password (pgx redacts it).
func checkDatabaseURL(url string) error {
	if url == "" {
		return usageErrorf("--database-url is required (or set $DATABASE_URL)")
	}
	if _, err := db.PoolConfig(url); err != nil {
		return usageErrorf("invalid --database-url: %v", err)
	}
	return nil
}

type logConfig struct {
	format string
	level  string
}

func logFlags(f *flags) *logConfig {
	c := &logConfig{}
	f.fs.StringVar(&c.format, "log-format", "auto", "log format: text, json, or auto (text on a terminal, json otherwise)")
	f.fs.StringVar(&c.level, "log-level", "info", "log level: debug, info, warn, error")
	f.env("log-format", "SWEEPER_LOG_FORMAT")
	f.env("log-level", "SWEEPER_LOG_LEVEL")
	return c
}

// logger builds the process logger on stderr: tint's coloured text on a
// terminal, JSON lines otherwise (what log shippers expect).
func (c *logConfig) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.level)); err != nil {
		return nil, usageErrorf("invalid --log-level %q: want debug, info, warn or error", c.level)
	}
	format := c.format
	if format == "auto" {
		format = "json"
		if isTerminal(w) {
			format = "text"
		}
	}
	switch format {
	case "text":
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly, NoColor: !isTerminal(w)})), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})), nil
	default:
		return nil, usageErrorf("invalid --log-format %q: want text, json or auto", c.format)
	}
}

// oneShotLogger is logger for a command that prints its result on stdout:
// its info records are debug records, so by default it logs only what is
// wrong (see quietInfo).
func (c *logConfig) oneShotLogger(w io.Writer) (*slog.Logger, error) {
	l, err := c.logger(w)
	if err != nil {
		return nil, err
	}
	return slog.New(quietInfo{l.Handler()}), nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// handlerFlags registers the inline handler's configuration.
func handlerFlags(f *flags) *handling.Config {
	c := handling.DefaultConfig()
	f.fs.BoolVar(&c.UseErrorClassification, "use-error-classification", c.UseErrorClassification,
		"classify errors; off makes every error permanent")
	f.fs.BoolVar(&c.UseWaitingForRetryState, "use-waiting-for-retry-state", c.UseWaitingForRetryState,
		"move retryable failures to waiting_for_retry; off (legacy) writes the backoff only")
	f.fs.DurationVar(&c.Backoff.Base, "backoff-base", c.Backoff.Base, "first retry delay")
	f.fs.Float64Var(&c.Backoff.Multiplier, "backoff-multiplier", c.Backoff.Multiplier, "delay growth per attempt")
	f.fs.DurationVar(&c.Backoff.Max, "backoff-max", c.Backoff.Max, "longest retry delay (also caps Retry-After)")
	f.fs.BoolVar(&c.Backoff.Jitter, "backoff-jitter", c.Backoff.Jitter, "randomise delays to spread retries")
	f.fs.Float64Var(&c.Backoff.JitterFraction, "backoff-jitter-fraction", c.Backoff.JitterFraction,
		"largest jitter as a fraction of the delay")
	f.fs.StringVar(&c.TaskerEnv, "tasker-env", "", "tasker environment whose task-template overrides apply (environments.<env>)")
	f.fs.Var(policyFileFlag{&c.Policy}, "policy-file", "retry policy file (YAML or JSON): ordered rules by error, step and task")
	for flagName, variable := range map[string]string{
		"tasker-env":                  "TASKER_ENV",
		"policy-file":                 "SWEEPER_POLICY_FILE",
		"use-error-classification":    "SWEEPER_USE_ERROR_CLASSIFICATION",
		"use-waiting-for-retry-state": "SWEEPER_USE_WAITING_FOR_RETRY_STATE",
		"backoff-base":                "SWEEPER_BACKOFF_BASE",
		"backoff-multiplier":          "SWEEPER_BACKOFF_MULTIPLIER",
		"backoff-max":                 "SWEEPER_BACKOFF_MAX",
		"backoff-jitter":              "SWEEPER_BACKOFF_JITTER",
		"backoff-jitter-fraction":     "SWEEPER_BACKOFF_JITTER_FRACTION",
	} {
		f.env(flagName, variable)
	}
	return &c
}

// checkSweepConfig validates the sweep flags: the limits are the sweeper's.
func checkSweepConfig(c *sweeper.Config) error { return configError(c.Validate()) }

// checkHandlerConfig validates the handler flags: the limits are the
// handler's.
func checkHandlerConfig(c *handling.Config) error { return configError(c.Validate()) }

// Flag names of the config fields whose Validate errors name them.
var (
	sweepFlagOf = map[string]string{
		"batch_size":     "batch-size",
		"workers":        "workers",
		"batch_timeout":  "batch-timeout",
		"notify_channel": "notify-channel",
	}
	handlerFlagOf = map[string]string{
		"backoff_base":            "backoff-base",
		"backoff_multiplier":      "backoff-multiplier",
		"backoff_max":             "backoff-max",
		"backoff_jitter_fraction": "backoff-jitter-fraction",
	}
)

// configError turns an error of sweeper.Config.Validate or
// handling.Config.Validate (also as returned by their constructors) into a
// usage error naming the flag; nil stays nil.
func configError(err error) error {
	if err == nil {
		return nil
	}
	var sweepErr *sweeper.FieldError
	if errors.As(err, &sweepErr) {
		if name, ok := sweepFlagOf[sweepErr.Field]; ok {
			return usageErrorf("invalid --%s: %s", name, sweepErr.Problem)
		}
	}
	var handlerErr *handling.FieldError
	if errors.As(err, &handlerErr) {
		if name, ok := handlerFlagOf[handlerErr.Field]; ok {
			return usageErrorf("invalid --%s: %s", name, handlerErr.Problem)
		}
	}
	return usageErrorf("invalid configuration: %v", err)
}
