package telemetry

import (
	"errors"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The deployment files that query the metrics: the alerting rules and the
// Grafana dashboard.
var deployFiles = []string{
	"../../deploy/prometheus/alerts.yaml",
	"../../deploy/grafana/sweeper.json",
}

// familyKind says whether a family is a histogram or summary (its series
// carry _bucket, _sum and _count suffixes) or a plain one.
type familyKind int

const (
	plainFamily familyKind = iota
	histogramFamily
)

// exportedFamilies returns every metric family New's registry exports: the
// ones Gather returns, plus the labelled vectors held by Metrics that have
// no series until first used (found by describing each collector field that
// the registry holds, which Register reports as already registered).
func exportedFamilies(t *testing.T) map[string]familyKind {
	t.Helper()
	m := New()
	families := map[string]familyKind{}

	gathered, err := m.registry.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range gathered {
		kind := plainFamily
		if f.GetType() == dto.MetricType_HISTOGRAM || f.GetType() == dto.MetricType_SUMMARY ||
			f.GetType() == dto.MetricType_GAUGE_HISTOGRAM {
			kind = histogramFamily
		}
		families[f.GetName()] = kind
	}

	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		field := v.Field(i)
		// The fields are unexported: read them through their address.
		value := reflect.NewAt(field.Type(), unsafe.Pointer(field.UnsafeAddr())).Elem().Interface()
		c, ok := value.(prometheus.Collector)
		if !ok || isNil(c) {
			continue
		}
		if _, isRegistry := value.(*prometheus.Registry); isRegistry {
			continue
		}
		var already prometheus.AlreadyRegisteredError
		if err := m.registry.Register(c); !errors.As(err, &already) {
			if err == nil {
				m.registry.Unregister(c)
			}
			continue // held but not exported
		}
		kind := plainFamily
		switch value.(type) {
		case prometheus.Histogram, *prometheus.HistogramVec, prometheus.Summary, *prometheus.SummaryVec:
			kind = histogramFamily
		}
		descs := make(chan *prometheus.Desc, 16)
		go func() {
			c.Describe(descs)
			close(descs)
		}()
		for d := range descs {
			if match := fqName.FindStringSubmatch(d.String()); match != nil {
				families[match[1]] = kind
			}
		}
	}
	return families
}

func isNil(c prometheus.Collector) bool {
	if c == nil {
		return true
	}
	rv := reflect.ValueOf(c)
	switch rv.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan:
		return rv.IsNil()
	}
	return false
}

// unknownMetrics returns the tasker_sweeper_* names in text that are not
// exported families (a histogram's _bucket, _sum and _count series count as
// their family's).
func unknownMetrics(text string, families map[string]familyKind) (names, unknown []string) {
	seen := map[string]bool{}
	for _, name := range regexp.MustCompile(`tasker_sweeper_[a-z_]+`).FindAllString(text, -1) {
		if seen[name] {
			continue
		}
		seen[name] = true
		names = append(names, name)
		if _, ok := families[name]; ok {
			continue
		}
		known := false
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok {
				if kind, exists := families[base]; exists && kind == histogramFamily {
					known = true
				}
			}
		}
		if !known {
			unknown = append(unknown, name)
		}
	}
	sort.Strings(unknown)
	return names, unknown
}

// TestDeployFilesNameExportedMetrics: every metric the alerts and the
// dashboard query is one the daemon exports, so neither can silently watch
// a series that never exists.
func TestDeployFilesNameExportedMetrics(t *testing.T) {
	t.Parallel()
	families := exportedFamilies(t)
	for _, path := range deployFiles {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		names, unknown := unknownMetrics(string(data), families)
		if len(names) < 5 {
			t.Errorf("%s names only %d tasker_sweeper_* metrics: the extraction is broken", path, len(names))
		}
		for _, name := range unknown {
			t.Errorf("%s queries %s, which the daemon does not export", path, name)
		}
	}
}

// TestExportedFamiliesIncludeVectors guards the helper: labelled vectors
// appear before first use, histograms are known as such, and an unknown
// name or a suffix on a counter is reported.
func TestExportedFamiliesIncludeVectors(t *testing.T) {
	t.Parallel()
	families := exportedFamilies(t)
	for _, name := range []string{
		"tasker_sweeper_sweeps_total", "tasker_sweeper_handler_decisions_total", "tasker_sweeper_schedule_drift_total",
		"tasker_sweeper_database_up", "tasker_sweeper_stranded_steps",
	} {
		if _, ok := families[name]; !ok {
			t.Errorf("%s is missing from the exported families", name)
		}
	}
	if families["tasker_sweeper_due_to_pending_lag_seconds"] != histogramFamily {
		t.Error("the lag histogram is not known as a histogram")
	}
	_, unknown := unknownMetrics(`rate(tasker_sweeper_due_to_pending_lag_seconds_bucket[5m])
		tasker_sweeper_sweeps_total_count tasker_sweeper_no_such_metric`, families)
	if want := []string{"tasker_sweeper_no_such_metric", "tasker_sweeper_sweeps_total_count"}; !slices.Equal(unknown, want) {
		t.Errorf("unknown = %v, want %v", unknown, want)
	}
}
