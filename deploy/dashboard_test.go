package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string         `json:"name"`
			Type       string         `json:"type"`
			Query      any            `json:"query"`
			Datasource *datasourceRef `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	GridPos    struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr       string         `json:"expr"`
		RefID      string         `json:"refId"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

func (d dashboard) allPanels() []panel {
	var all []panel
	for _, p := range d.Panels {
		all = append(all, p)
		all = append(all, p.Panels...)
	}
	return all
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("grafana", "sweeper.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("sweeper.json: %v", err)
	}
	return d
}

func TestDashboardStructure(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("the dashboard needs a uid and a title")
	}
	// The datasource is a variable, so the dashboard imports anywhere.
	var hasDS bool
	for _, v := range d.Templating.List {
		if v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus" {
			hasDS = true
		}
		if v.Type == "query" && (v.Datasource == nil || v.Datasource.UID != "${datasource}") {
			t.Errorf("variable %s does not query ${datasource}", v.Name)
		}
	}
	if !hasDS {
		t.Fatal("no datasource variable of type prometheus")
	}
	ids := map[int]bool{}
	for _, p := range d.allPanels() {
		if ids[p.ID] {
			t.Errorf("panel id %d is used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v leaves the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use ${datasource}", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Datasource != nil && tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q target %s does not use ${datasource}", p.Title, tg.RefID)
			}
		}
	}
}

// TestDashboardShowsWhatOperatorsNeed: each view the dashboard promises is
// a query on the metric that carries it.
func TestDashboardShowsWhatOperatorsNeed(t *testing.T) {
	exprs := strings.Join(dashboardQueries(t), "\n")
	for what, pattern := range map[string]string{
		"sweeps by outcome":      `by \(outcome\) \(rate\(tasker_sweeper_sweeps_total`,
		"steps moved per second": `rate\(tasker_sweeper_steps_transitioned_total`,
		"lag p50":                `histogram_quantile\(0\.5, sum by \(le\) \(rate\(tasker_sweeper_due_to_pending_lag_seconds_bucket`,
		"lag p99":                `histogram_quantile\(0\.99, sum by \(le\) \(rate\(tasker_sweeper_due_to_pending_lag_seconds_bucket`,
		"waiting steps":          `tasker_sweeper_waiting_steps\{`,
		"due steps":              `tasker_sweeper_due_steps\{`,
		"stranded steps":         `tasker_sweeper_stranded_steps\{`,
		"handler decisions by action and category": `by \(action, category\) \(rate\(tasker_sweeper_handler_decisions_total`,
		"database up":             `tasker_sweeper_database_up\{`,
		"reconcile drift by kind": `by \(kind\) \(increase\(tasker_sweeper_schedule_drift_total`,
	} {
		if !regexp.MustCompile(pattern).MatchString(exprs) {
			t.Errorf("the dashboard shows no %s (no query matches %s)", what, pattern)
		}
	}
}
