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
//     by default).
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
	"unicode/utf8"

	"github.com/fwplane/fwplane/dataplane"
)

// Options change what is printed. Nil means the aggregate view with the
// default thresholds.
type Options struct {
	// Detail adds per-binding, per-queue and per-shard rows, sorted by
	// utilisation, and the counters table.
	Detail     bool
	Thresholds dataplane.Thresholds
}

// Buffers writes the `show system buffers` view of r to w.
func Buffers(w io.Writer, r dataplane.ResourceReport, opts *Options) error {
	if opts == nil {
		opts = &Options{}
	}
	ew := &errWriter{w: w}
	fmt.Fprintf(ew, "Dataplane: %s  generation %d  read in %s\n\n", r.Mode, r.Generation, r.Took.Round(1000))

	rows := r.Aggregate()
	table(ew, "", rows, opts.Thresholds, false)
	if opts.Detail {
		var detail []dataplane.Resource
		for _, res := range r.Resources {
			if res.Detail {
				detail = append(detail, res)
			}
		}
		if len(detail) > 0 {
			sortByUtilization(detail)
			fmt.Fprintln(ew)
			table(ew, "Detail (per binding, queue, shard; highest utilisation first):", detail, opts.Thresholds, true)
		}
	}

	fmt.Fprintln(ew)
	all := rows
	if opts.Detail {
		all = r.Resources
	}
	warn, crit := 0, 0
	for _, res := range all {
		switch opts.Thresholds.Level(res) {
		case dataplane.LevelWarning:
			warn++
		case dataplane.LevelCritical:
			crit++
		}
	}
	if warn+crit == 0 {
		fmt.Fprintln(ew, "No resource at or above the warning threshold.")
	} else {
		fmt.Fprintf(ew, "%d resource%s at high utilisation (%d critical, %d warning).\n", warn+crit, plural(warn+crit), crit, warn)
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

func table(w io.Writer, title string, rows []dataplane.Resource, th dataplane.Thresholds, breakdown bool) {
	if title != "" {
		fmt.Fprintln(w, title)
	}
	t := &columns{right: []bool{false, false, false, true, true, true, false}}
	t.add("Resource", "Kind", "Scope", "Capacity", "Used", "Usage%", "Status")
	for _, res := range rows {
		capacity, used, pct, status := Cells(res, th)
		t.add(res.Name, res.Kind, res.Scope, capacity, used, pct, status)
		if breakdown && len(res.Breakdown) > 0 {
			parts := make([]string, len(res.Breakdown))
			for i, p := range res.Breakdown {
				parts[i] = p.Name + " " + strconv.FormatUint(p.Value, 10)
			}
			t.note("  by state: " + strings.Join(parts, ", "))
		}
	}
	t.write(w)
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
