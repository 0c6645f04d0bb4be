package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
)

// target is a goal from the issue: the value must be at least (or at
// most) limit.
type target struct {
	atLeast bool
	limit   float64
}

func atLeast(v float64) *target { return &target{atLeast: true, limit: v} }
func atMost(v float64) *target  { return &target{limit: v} }

func (t *target) String() string {
	if t.atLeast {
		return "≥ " + formatValue(t.limit)
	}
	return "≤ " + formatValue(t.limit)
}

func (t *target) met(v float64) bool {
	if math.IsNaN(v) {
		return false
	}
	if t.atLeast {
		return v >= t.limit
	}
	return v <= t.limit
}

// row is one line of the results table.
type row struct {
	scenario string
	metric   string
	unit     string
	value    float64
	runs     []float64
	target   *target
	note     string
}

// cells are the row's columns: scenario, metric, median, unit, runs,
// target, met.
func (rw row) cells() []string {
	runs := make([]string, len(rw.runs))
	for i, v := range rw.runs {
		runs[i] = formatValue(v)
	}
	tgt, met := "", ""
	if rw.target != nil {
		tgt = rw.target.String()
		met = "no"
		if rw.target.met(rw.value) {
			met = "yes"
		}
	}
	metric := rw.metric
	if rw.note != "" {
		metric += " (" + rw.note + ")"
	}
	return []string{rw.scenario, metric, formatValue(rw.value), rw.unit, strings.Join(runs, " "), tgt, met}
}

// results collects the table rows, the JSON keys (in insertion order) and
// notes printed under the table.
type results struct {
	rows  []row
	keys  []string
	json  map[string]any
	notes []string
}

func newResults() *results { return &results{json: map[string]any{}} }

// add records a table row.
func (r *results) add(rw row) { r.rows = append(r.rows, rw) }

// set records a JSON key; floats are rounded to two decimals.
func (r *results) set(key string, v any) {
	if f, ok := v.(float64); ok {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			v = nil
		} else {
			v = math.Round(f*100) / 100
		}
	}
	if _, ok := r.json[key]; !ok {
		r.keys = append(r.keys, key)
	}
	r.json[key] = v
}

func (r *results) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func (r *results) printTable(w io.Writer, m machineInfo) {
	fmt.Fprintf(w, "\nretry sweeper benchmark: %d CPU (%s), %.0f GiB RAM, PostgreSQL %s (fsync=%s, synchronous_commit=%s, full_page_writes=%s, shared_buffers=%s)\n\n",
		m.cpus, m.cpuModel, m.memGiB, m.pgVersion, m.settings["fsync"], m.settings["synchronous_commit"],
		m.settings["full_page_writes"], m.settings["shared_buffers"])
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tmetric\tmedian\tunit\truns\ttarget\tmet")
	for _, rw := range r.rows {
		fmt.Fprintln(tw, strings.Join(rw.cells(), "\t"))
	}
	_ = tw.Flush()
	if len(r.notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range r.notes {
			fmt.Fprintln(w, "note: "+n)
		}
	}
	fmt.Fprintln(w)
}

// printMarkdown writes the table as GitHub Markdown, ready to paste into
// BENCHMARKS.md.
func (r *results) printMarkdown(w io.Writer, m machineInfo) {
	fmt.Fprintf(w, "\nMachine: %d CPU (%s), %.0f GiB RAM; PostgreSQL %s (fsync=%s, synchronous_commit=%s, full_page_writes=%s, shared_buffers=%s).\n\n",
		m.cpus, m.cpuModel, m.memGiB, m.pgVersion, m.settings["fsync"], m.settings["synchronous_commit"],
		m.settings["full_page_writes"], m.settings["shared_buffers"])
	fmt.Fprintln(w, "| scenario | metric | median | unit | runs | target | met |")
	fmt.Fprintln(w, "|---|---|---:|---|---|---|---|")
	for _, rw := range r.rows {
		cells := rw.cells()
		for i, c := range cells {
			cells[i] = strings.ReplaceAll(c, "|", "\\|")
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
	if len(r.notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range r.notes {
			fmt.Fprintln(w, "- "+n)
		}
	}
	fmt.Fprintln(w)
}

// printJSON writes the one-line JSON object, keys in the order they were set.
func (r *results) printJSON(w io.Writer) error {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, k := range r.keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		key, _ := json.Marshal(k)
		val, err := json.Marshal(r.json[k])
		if err != nil {
			return fmt.Errorf("encode %s: %w", k, err)
		}
		buf.Write(key)
		buf.WriteByte(':')
		buf.Write(val)
	}
	buf.WriteString("}\n")
	_, err := w.Write(buf.Bytes())
	return err
}

func formatValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case v == 0:
		return "0"
	case math.Abs(v) >= 1000:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.1f", v)
	case math.Abs(v) >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// median of vs (NaN for none); vs is not modified.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	mid := len(s) / 2
	if len(s)%2 == 1 {
		return s[mid]
	}
	return (s[mid-1] + s[mid]) / 2
}

// percentile is the nearest-rank p-th percentile (0 < p <= 100) of vs.
func percentile(vs []float64, p float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

func maxOf(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	m := vs[0]
	for _, v := range vs[1:] {
		m = max(m, v)
	}
	return m
}
