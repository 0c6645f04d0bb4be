package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// promtool returns the path of promtool. Without it the PromQL checks skip,
// except under CI, where a missing promtool is a failure: CI must run them.
func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" && os.Getenv("CI") != "false" {
		t.Fatal("promtool not found, and CI is set: install it (apt-get install prometheus)")
	}
	t.Skip("promtool not found: skipping the PromQL checks (apt-get install prometheus); under CI this fails")
	return ""
}

func runPromtool(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Record      string            `json:"record"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

func loadAlerts(t *testing.T) ruleFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("prometheus", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	return f
}

func TestAlertsCheckRules(t *testing.T) {
	runPromtool(t, "check", "rules", filepath.Join("prometheus", "alerts.yaml"))
}

func TestAlertsUnitTests(t *testing.T) {
	runPromtool(t, "test", "rules", filepath.Join("prometheus", "alerts_test.yaml"))
}

// TestAlertsWellFormed needs no promtool: every alert says how bad it is,
// what happened and what to do, and its unit tests see it both fire and
// stay silent.
func TestAlertsWellFormed(t *testing.T) {
	f := loadAlerts(t)
	data, err := os.ReadFile(filepath.Join("prometheus", "alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var tests struct {
		RuleFiles          []string `json:"rule_files"`
		EvaluationInterval string   `json:"evaluation_interval"`
		Tests              []struct {
			Interval    string `json:"interval"`
			InputSeries []struct {
				Series string `json:"series"`
				Values string `json:"values"`
			} `json:"input_series"`
			AlertRuleTest []struct {
				EvalTime  string           `json:"eval_time"`
				Alertname string           `json:"alertname"`
				ExpAlerts []map[string]any `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.UnmarshalStrict(data, &tests); err != nil {
		t.Fatalf("alerts_test.yaml: %v", err)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	n := 0
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			switch r.Labels["severity"] {
			case "critical", "warning", "info":
			default:
				t.Errorf("%s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
			}
			for _, a := range []string{"summary", "description", "runbook"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", r.Alert, a)
				}
			}
			if !fires[r.Alert] {
				t.Errorf("%s: alerts_test.yaml never sees it fire", r.Alert)
			}
			if !silent[r.Alert] {
				t.Errorf("%s: alerts_test.yaml never sees it stay silent", r.Alert)
			}
		}
	}
	if n < 8 {
		t.Errorf("alerts.yaml has %d alerts, want at least the 8 documented", n)
	}
}

// grafanaVars are the dashboard's variables that are not PromQL, with
// values that make the expressions parse as Prometheus would see them.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "${__rate_interval}", "5m",
	"$__interval", "1m", "${__interval}", "1m",
	"$__range", "1h", "${__range}", "1h",
)

var labelValues = regexp.MustCompile(`^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// dashboardQueries are every PromQL expression of the dashboard: the
// panels' targets and the selectors of its label_values variables.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	d := loadDashboard(t)
	var exprs []string
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q target %s has no expr", p.Title, tg.RefID)
				continue
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		switch raw := v.Query.(type) {
		case string:
			q = raw
		case map[string]any:
			q, _ = raw["query"].(string)
		}
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(selector, label)", v.Name, q)
			continue
		}
		exprs = append(exprs, m[1])
	}
	return exprs
}

// TestDashboardExpressionsParse writes the dashboard's expressions as
// recording rules and has promtool check them.
func TestDashboardExpressionsParse(t *testing.T) {
	exprs := dashboardQueries(t)
	tool := promtool(t)
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		quoted, _ := json.Marshal(grafanaVars.Replace(e)) // JSON strings are YAML strings
		fmt.Fprintf(&b, "      - record: dashboard:expr_%d\n        expr: %s\n", i, quoted)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tool, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules on the dashboard's %d expressions: %v\n%s\n%s", len(exprs), err, out, b.String())
	}
	if !strings.Contains(string(out), fmt.Sprintf("%d rules found", len(exprs))) {
		t.Errorf("promtool checked fewer rules than the %d expressions:\n%s", len(exprs), out)
	}
}

// TestPrometheusConfig checks the example scrape configuration. Debian's
// promtool is built without Kubernetes service discovery, so the check runs
// on a copy whose kubernetes_sd_configs is a static target; everything else
// (relabelling, the rule file) is checked as written.
func TestPrometheusConfig(t *testing.T) {
	tool := promtool(t)
	data, err := os.ReadFile(filepath.Join("prometheus", "prometheus.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "job_name: tasker-sweeper\n") {
		t.Error("prometheus.yaml has no job tasker-sweeper (the job the alerts select)")
	}
	sd := regexp.MustCompile(`(?m)^(\s*)kubernetes_sd_configs:\n\s*- role: pod\n`)
	if !sd.Match(data) {
		t.Fatal("prometheus.yaml: no kubernetes_sd_configs with role pod")
	}
	static := sd.ReplaceAll(data, []byte("${1}static_configs:\n${1}  - targets: [\"127.0.0.1:9464\"]\n"))
	dir := t.TempDir()
	alerts, err := os.ReadFile(filepath.Join("prometheus", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{"prometheus.yaml": static, "alerts.yaml": alerts} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(tool, "check", "config", filepath.Join(dir, "prometheus.yaml")).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "1 rule files found") {
		t.Errorf("promtool did not load alerts.yaml from the configuration:\n%s", out)
	}
}
