// Package render prints a dataplane.ResourceReport the way operators read
// it: the `show system buffers` table of the reference CLI, so embedders
// print the same columns whatever backend runs.
//
// Rules the renderer keeps:
//   - a percentage and a status appear only where the capacity is real and
//     the count exists (arrays show their capacity and no percentage);
//   - a count that is missing because counting failed reads "unavailable",
//     never 0;
//   - levels follow dataplane.Thresholds (WARNING >= 80 %, CRITICAL >= 90 %
//     by default);
//   - nothing is hidden: the default view lists every detail row at
//     WARNING or above or in error, the summary counts every row, and
//     every row's error is printed under it.
//
// Functions here are pure and safe for concurrent use.
package render

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/history"
)

// Options change what is printed. Nil means the aggregate view with the
// default thresholds.
type Options struct {
	// Detail adds per-binding, per-queue and per-shard rows, sorted by
	// utilisation, and the counters table.
	Detail     bool
	Thresholds dataplane.Thresholds
	// Trends, when not nil, adds the Trend/min and Full in columns (see
	// package history for how they are decided); rows without a trend
	// show "-".
	Trends []history.Trend
	// MaxHot bounds the detail rows the default view lists because they
	// are at WARNING or above or unavailable; 0 means 10.
	MaxHot int
}

// Buffers writes the `show system buffers` view of r to w.
//
// The default view lists the aggregate rows, then every detail row that
// is at WARNING or above or whose count failed (up to MaxHot, the rest
// counted with a pointer to the detail view), so that it never says all
// is well while a binding or shard is hot. The summary counts every row.
func Buffers(w io.Writer, r dataplane.ResourceReport, opts *Options) error {
	if opts == nil {
		opts = &Options{}
	}
	ew := &errWriter{w: w}
	fmt.Fprintf(ew, "Dataplane: %s  generation %d  read in %s\n\n", r.Mode, r.Generation, r.Took.Round(1000))

	trends := trendIndex(opts.Trends)
	rows := r.Aggregate()
	table(ew, "", rows, opts, trends, opts.Detail)
	var detail []dataplane.Resource
	for _, res := range r.Resources {
		if res.Detail {
			detail = append(detail, res)
		}
	}
	sortByUtilization(detail)
	if opts.Detail {
		if len(detail) > 0 {
			fmt.Fprintln(ew)
			table(ew, "Detail (per binding, queue, shard; highest utilisation first):", detail, opts, trends, true)
		}
	} else {
		var hot []dataplane.Resource
		for _, res := range detail {
			if opts.Thresholds.Level(res) >= dataplane.LevelWarning || res.Error != "" {
				hot = append(hot, res)
			}
		}
		maxHot := opts.MaxHot
		if maxHot <= 0 {
			maxHot = 10
		}
		if len(hot) > 0 {
			fmt.Fprintln(ew)
			table(ew, "Detail rows at WARNING or above, or unavailable:", hot[:min(len(hot), maxHot)], opts, trends, false)
			if len(hot) > maxHot {
				fmt.Fprintf(ew, "... and %d more detail row%s at WARNING or above or unavailable: see `show system buffers detail`.\n",
					len(hot)-maxHot, plural(len(hot)-maxHot))
			}
		}
	}

	fmt.Fprintln(ew)
	warn, crit, hotDetail, failed := 0, 0, 0, 0
	for _, res := range r.Resources {
		lv := opts.Thresholds.Level(res)
		switch lv {
		case dataplane.LevelWarning:
			warn++
		case dataplane.LevelCritical:
			crit++
		}
		if lv >= dataplane.LevelWarning && res.Detail {
			hotDetail++
		}
		if res.Error != "" {
			failed++
		}
	}
	if warn+crit == 0 {
		fmt.Fprintln(ew, "No resource at or above the warning threshold.")
	} else {
		fmt.Fprintf(ew, "%d resource%s at high utilisation (%d critical, %d warning", warn+crit, plural(warn+crit), crit, warn)
		if hotDetail > 0 {
			fmt.Fprintf(ew, "; %d in detail rows", hotDetail)
		}
		fmt.Fprintln(ew, ").")
	}
	if failed > 0 {
		fmt.Fprintf(ew, "%d row%s unavailable: counting failed (the error is printed under each).\n", failed, plural(failed))
	}
	if s := r.Sessions; s != nil {
		fmt.Fprintf(ew, "Active sessions: IPv4 %d, IPv6 %d, total %d\n", s.IPv4, s.IPv6, s.Total)
	} else {
		fmt.Fprintln(ew, "Active sessions: unavailable")
	}

	if opts.Detail && len(r.Counters) > 0 {
		fmt.Fprintln(ew)
		fmt.Fprintln(ew, "Counters:")
		counters := slices.Clone(r.Counters)
		slices.SortStableFunc(counters, func(a, b dataplane.Counter) int {
			return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Scope, b.Scope))
		})
		t := &columns{right: []bool{false, false, true}}
		t.add("Counter", "Scope", "Value")
		for _, c := range counters {
			t.add(c.Name, c.Scope, strconv.FormatUint(c.Value, 10))
		}
		t.write(ew)
	}
	return ew.err
}

type trendKey struct{ name, scope string }

func trendIndex(ts []history.Trend) map[trendKey]history.Trend {
	if ts == nil {
		return nil
	}
	m := make(map[trendKey]history.Trend, len(ts))
	for _, t := range ts {
		m[trendKey{t.Name, t.Scope}] = t
	}
	return m
}

// table prints rows; notes (breakdown, figures) only when notes is set,
// errors always.
func table(w io.Writer, title string, rows []dataplane.Resource, opts *Options, trends map[trendKey]history.Trend, notes bool) {
	if title != "" {
		fmt.Fprintln(w, title)
	}
	right := []bool{false, false, false, true, true, true, false}
	head := []string{"Resource", "Kind", "Scope", "Capacity", "Used", "Usage%", "Status"}
	if trends != nil {
		right = []bool{false, false, false, true, true, true, true, true, false}
		head = []string{"Resource", "Kind", "Scope", "Capacity", "Used", "Usage%", "Trend/min", "Full in", "Status"}
	}
	t := &columns{right: right}
	t.add(head...)
	for _, res := range rows {
		capacity, used, pct, status := Cells(res, opts.Thresholds)
		if trends != nil {
			rate, full := TrendCells(trends[trendKey{res.Name, res.Scope}])
			t.add(res.Name, res.Kind, res.Scope, capacity, used, pct, rate, full, status)
		} else {
			t.add(res.Name, res.Kind, res.Scope, capacity, used, pct, status)
		}
		if notes && len(res.Breakdown) > 0 {
			parts := make([]string, len(res.Breakdown))
			for i, p := range res.Breakdown {
				parts[i] = p.Name + " " + strconv.FormatUint(p.Value, 10)
			}
			t.note("  by state: " + strings.Join(parts, ", "))
		}
		if notes && len(res.Figures) > 0 {
			parts := make([]string, len(res.Figures))
			for i, f := range res.Figures {
				parts[i] = f.Name + " " + strconv.FormatFloat(f.Value, 'f', -1, 64)
				if f.Value != math.Trunc(f.Value) {
					parts[i] = f.Name + " " + strconv.FormatFloat(f.Value, 'f', 2, 64)
				}
			}
			t.note("  figures: " + strings.Join(parts, ", "))
		}
		if res.Error != "" {
			t.note("  error: " + res.Error)
		}
	}
	t.write(w)
}

// TrendCells returns the Trend/min and Full in cells of a row's trend
// ("-" where there is none: warming up, or the rule shows no estimate).
func TrendCells(t history.Trend) (rate, fullIn string) {
	rate, fullIn = "-", "-"
	if t.PerMinute != nil {
		v := *t.PerMinute
		switch {
		case math.Abs(v) >= 10:
			rate = strconv.FormatFloat(math.Round(v), 'f', 0, 64)
		default:
			rate = strconv.FormatFloat(math.Round(v*10)/10, 'f', 1, 64)
		}
		if rate == "0" || rate == "0.0" || rate == "-0.0" || rate == "-0" {
			rate = "0"
		} else if v > 0 {
			rate = "+" + rate
		}
	}
	if d, ok := t.FullIn(); ok {
		if d <= 0 {
			fullIn = "full"
		} else {
			fullIn = Duration(d)
		}
	}
	return rate, fullIn
}

// Duration prints d the way an operator reads a countdown: two units at
// most ("45s", "12m30s", "3h05m", "2d4h").
func Duration(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	switch {
	case s < 60:
		return strconv.FormatInt(s, 10) + "s"
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%dh", s/86400, s%86400/3600)
}

// columns lays out a table: text columns left-aligned, numbers right.
type columns struct {
	right []bool
	rows  [][]string // a row of one cell after the header is a note line
	notes map[int]string
}

func (c *columns) add(cells ...string) { c.rows = append(c.rows, cells) }

func (c *columns) note(s string) {
	if c.notes == nil {
		c.notes = map[int]string{}
	}
	c.notes[len(c.rows)-1] = s
}

func (c *columns) write(w io.Writer) {
	width := make([]int, len(c.right))
	for _, r := range c.rows {
		for i, cell := range r {
			width[i] = max(width[i], utf8.RuneCountInString(cell))
		}
	}
	for ri, r := range c.rows {
		var b strings.Builder
		for i, cell := range r {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(cell))
			if i > 0 {
				b.WriteString("  ")
			}
			if c.right[i] {
				b.WriteString(pad + cell)
			} else {
				b.WriteString(cell + pad)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
		if n, ok := c.notes[ri]; ok {
			fmt.Fprintln(w, n)
		}
	}
}

// Cells returns the Capacity, Used, Usage% and Status cells of a row.
func Cells(res dataplane.Resource, th dataplane.Thresholds) (capacity, used, pct, status string) {
	capacity = "-"
	if res.Capacity > 0 {
		capacity = strconv.FormatUint(res.Capacity, 10)
	}
	switch {
	case res.Used != nil:
		used = strconv.FormatUint(*res.Used, 10)
		if res.Partial {
			used = ">=" + used
		}
	case res.Error != "":
		used = "unavailable"
	default:
		used = "n/a"
	}
	pct, status = "-", "-"
	if u, ok := res.Utilization(); ok {
		// Truncate, not round: 89.99 % must not print as 90.0 % beside
		// WARNING.
		pct = strconv.FormatFloat(math.Floor(u*10)/10, 'f', 1, 64) + "%"
		status = th.Level(res).String()
	}
	return capacity, used, pct, status
}

func sortByUtilization(rows []dataplane.Resource) {
	slices.SortStableFunc(rows, func(a, b dataplane.Resource) int {
		ua, oka := a.Utilization()
		ub, okb := b.Utilization()
		switch {
		case oka && !okb:
			return -1
		case !oka && okb:
			return 1
		case oka && okb && ua != ub:
			return cmp.Compare(ub, ua)
		}
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Scope, b.Scope))
	})
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// errWriter keeps the first write error so rendering code stays linear.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return len(p), nil
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, nil
}

// String renders r to a string (for logs and tests).
func String(r dataplane.ResourceReport, opts *Options) string {
	var b strings.Builder
	_ = Buffers(&b, r, opts)
	return b.String()
}
