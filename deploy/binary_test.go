package deploy

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// sweeperBin is the sweeper binary built from the parent module by TestMain.
var sweeperBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "create temp dir:", err)
		os.Exit(1)
	}
	sweeperBin = filepath.Join(dir, "sweeper")
	build := exec.Command("go", "build", "-o", sweeperBin, "./cmd/sweeper")
	build.Dir = ".." // the sweeper's module
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build the sweeper binary: %v\n%s", err, out)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// flagHelp is one flag as `sweeper <command> -h` prints it.
type flagHelp struct {
	name     string
	typ      string // empty for a boolean flag
	env      string // the environment variable it falls back to, if any
	defValue string // the default as printed, quotes removed
}

// commandHelp is what `sweeper <command> -h` says about a command's flags.
type commandHelp struct {
	flags map[string]flagHelp
	// envs maps each environment variable to its flag.
	envs map[string]string
}

var (
	flagLine    = regexp.MustCompile(`^  -([a-z0-9][a-z0-9-]*)(?: (\S+))?$`)
	envInUsage  = regexp.MustCompile(`\[\$([A-Z][A-Z0-9_]*)\]`)
	defInUsage  = regexp.MustCompile(`\(default (.*)\)$`)
	commandLine = regexp.MustCompile(`^  ([a-z][a-z0-9-]*)\s{2,}\S`)
)

var helpCache = map[string]commandHelp{}

// helpOf runs `sweeper <command> -h` and parses the flag package's listing:
// "  -name type" then "    \tusage [$VAR] (default ...)".
func helpOf(t *testing.T, command string) commandHelp {
	t.Helper()
	if h, ok := helpCache[command]; ok {
		return h
	}
	out, err := exec.Command(sweeperBin, command, "-h").CombinedOutput()
	if err != nil {
		t.Fatalf("sweeper %s -h: %v\n%s", command, err, out)
	}
	h := commandHelp{flags: map[string]flagHelp{}, envs: map[string]string{}}
	var cur *flagHelp
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		if m := flagLine.FindStringSubmatch(line); m != nil {
			f := flagHelp{name: m[1], typ: m[2]}
			h.flags[f.name] = f
			cur = &f
			continue
		}
		if cur == nil || !strings.HasPrefix(line, "    \t") {
			continue
		}
		usage := strings.TrimPrefix(line, "    \t")
		if m := envInUsage.FindStringSubmatch(usage); m != nil {
			cur.env = m[1]
			h.envs[m[1]] = cur.name
		}
		if m := defInUsage.FindStringSubmatch(usage); m != nil {
			cur.defValue = strings.Trim(m[1], `"`)
		}
		h.flags[cur.name] = *cur
	}
	if len(h.flags) == 0 {
		t.Fatalf("sweeper %s -h listed no flags:\n%s", command, out)
	}
	helpCache[command] = h
	return h
}

// commands lists the subcommands `sweeper help` prints.
func commands(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command(sweeperBin, "help").CombinedOutput()
	if err != nil {
		t.Fatalf("sweeper help: %v\n%s", err, out)
	}
	cmds := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if m := commandLine.FindStringSubmatch(line); m != nil {
			cmds[m[1]] = true
		}
	}
	if !cmds["run"] || !cmds["once"] || !cmds["migrate"] {
		t.Fatalf("sweeper help does not list run, once and migrate:\n%s", out)
	}
	return cmds
}

// envAllowed are variables a sweeper container may set that are not the
// sweeper's flags: the Go runtime's.
var envAllowed = map[string]bool{"GOMEMLIMIT": true, "GOMAXPROCS": true}

// checkInvocation checks that args (subcommand, then flags) and the
// environment variable names are ones the binary accepts for that
// subcommand. where names the manifest and container for messages.
func checkInvocation(t *testing.T, where string, args, envNames []string) {
	t.Helper()
	if len(args) == 0 {
		t.Errorf("%s: no subcommand given (the image's default is run; say it)", where)
		return
	}
	if !commands(t)[args[0]] {
		t.Errorf("%s: sweeper has no command %q", where, args[0])
		return
	}
	help := helpOf(t, args[0])
	rest := args[1:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if !strings.HasPrefix(a, "-") {
			t.Errorf("%s: unexpected argument %q (sweeper %s takes flags only)", where, a, args[0])
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f, ok := help.flags[name]
		if !ok {
			t.Errorf("%s: sweeper %s has no flag --%s", where, args[0], name)
			continue
		}
		if f.typ != "" && !hasValue {
			i++ // the value is the next argument
		}
	}
	for _, name := range envNames {
		if envAllowed[name] {
			continue
		}
		if _, ok := help.envs[name]; !ok {
			t.Errorf("%s: sweeper %s reads no environment variable %s", where, args[0], name)
		}
	}
}

func TestHelpParsing(t *testing.T) {
	// The parser must see what the README documents, or every check built
	// on it is vacuous.
	run := helpOf(t, "run")
	for env, flag := range map[string]string{
		"DATABASE_URL": "database-url", "SWEEPER_SCHEDULE": "schedule", "SWEEPER_HTTP_ADDR": "http-addr",
	} {
		if run.envs[env] != flag {
			t.Errorf("run -h: %s belongs to --%s, want --%s", env, run.envs[env], flag)
		}
	}
	if got := run.flags["http-addr"].defValue; got != "127.0.0.1:9090" {
		t.Errorf("run -h: --http-addr default %q, want 127.0.0.1:9090", got)
	}
	if typ := helpOf(t, "once").flags["json"].typ; typ != "" {
		t.Errorf("once -h: --json has type %q, want a boolean flag", typ)
	}
}

// opsPort is the port of the ops listener configured by addr (the value of
// SWEEPER_OPS_ADDR, or "" for the default).
func opsPort(t *testing.T, addr string) string {
	t.Helper()
	if addr == "" {
		f, ok := helpOf(t, "run").flags["ops-addr"]
		if !ok {
			t.Fatal("sweeper run has no --ops-addr flag (the ops listener: /metrics, /healthz, /readyz)")
		}
		addr = f.defValue
	}
	i := strings.LastIndex(addr, ":")
	if i < 0 || i == len(addr)-1 {
		t.Fatalf("ops address %q has no port", addr)
	}
	return addr[i+1:]
}

func TestOpsListenerDefault(t *testing.T) {
	f, ok := helpOf(t, "run").flags["ops-addr"]
	if !ok {
		t.Fatal("sweeper run has no --ops-addr flag")
	}
	if f.env != "SWEEPER_OPS_ADDR" {
		t.Errorf("--ops-addr falls back to $%s, want $SWEEPER_OPS_ADDR", f.env)
	}
	if f.defValue != ":9464" {
		t.Errorf("--ops-addr default %q, want :9464 (the image's EXPOSE and the manifests' port)", f.defValue)
	}
}
