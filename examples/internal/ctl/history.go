package ctl

import (
	"context"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/guptarohit/asciigraph"

	"github.com/fwplane/fwplane/control"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/diagnose"
	"github.com/fwplane/fwplane/history"
	"github.com/fwplane/fwplane/render"
)

// defaultSince is what history shows without --since.
const defaultSince = 5 * time.Minute

// historyChart prints a row's fill over time. The chart is drawn by
// asciigraph (maintained, no dependencies, x-axis labels): utilisation in
// percent on a fixed 0-100 scale with the warning and critical levels as
// lines, so a glance says how close the row came to them.
func historyChart(ctx context.Context, c *control.Client, a args, name string, w io.Writer) error {
	if name == "" {
		r, err := c.HistoryRows(ctx)
		if err != nil {
			return fmt.Errorf("show system buffers history: %w", err)
		}
		if a.json {
			return printJSON(w, r)
		}
		rows := [][]string{{"Resource", "Scope", "Capacity"}}
		for _, s := range r.Rows {
			rows = append(rows, []string{s.Name, s.Scope, strconv.FormatUint(s.Capacity, 10)})
		}
		writeColumns(w, rows, []bool{false, false, true})
		_, err = fmt.Fprintf(w, "\n%d rows kept (%s of memory, at most %d rows); history NAME [--scope S] charts one.\n",
			r.Stats.Rows, bytesString(r.Stats.MemoryBytes), r.Stats.MaxRows)
		return err
	}
	since := a.since
	if since == 0 {
		since = defaultSince
	}
	r, err := c.History(ctx, name, a.scope, since)
	if err != nil {
		return fmt.Errorf("show system buffers history %s: %w", name, err)
	}
	if a.json {
		return printJSON(w, r)
	}
	return writeChart(w, *r.Series, since, a.thresholds)
}

// writeChart draws s (already cut to since).
func writeChart(w io.Writer, s history.Series, since time.Duration, th dataplane.Thresholds) error {
	fmt.Fprintf(w, "%s (%s): capacity %d, last %s, one point per %s\n\n", s.Name, s.Scope, s.Capacity, since, s.Step)
	if len(s.Points) < 2 || s.Capacity == 0 {
		_, err := fmt.Fprintf(w, "%d sample%s so far: nothing to chart yet.\n", len(s.Points), plural(len(s.Points)))
		return err
	}
	warn, crit := th.Warning, th.Critical
	if warn == 0 {
		warn = dataplane.DefaultWarningPercent
	}
	if crit == 0 {
		crit = dataplane.DefaultCriticalPercent
	}
	// Resample onto a fixed width, by time, so gaps (a restart, a row
	// missing from some reports) stay gaps in time, not squeezed away.
	const width = 60
	end := s.Points[len(s.Points)-1].Time
	start := end.Add(-since)
	if first := s.Points[0].Time; first.After(start) {
		start = first
	}
	span := end.Sub(start)
	pct := make([]float64, width)
	have := make([]bool, width)
	for _, p := range s.Points {
		i := int(float64(width-1) * float64(p.Time.Sub(start)) / float64(max(span, 1)))
		if i < 0 || i >= width {
			continue
		}
		// The bucket's peak: a chart of fill must not hide a spike.
		v := float64(p.Max) * 100 / float64(s.Capacity)
		if !have[i] || v > pct[i] {
			pct[i], have[i] = v, true
		}
	}
	last := math.NaN()
	for i := range pct {
		if have[i] {
			last = pct[i]
		} else {
			pct[i] = last // carry the last value across sub-step gaps
		}
	}
	for i := range pct {
		if math.IsNaN(pct[i]) {
			pct[i] = pct[firstHave(have)]
		}
	}
	line := func(v float64) []float64 {
		out := make([]float64, width)
		for i := range out {
			out[i] = v
		}
		return out
	}
	mins := span.Minutes()
	// The threshold lines first: a later series draws over an earlier
	// one, and the row's own line must stay visible where it crosses them.
	chart := asciigraph.PlotMany([][]float64{line(warn), line(crit), pct},
		// Ten rows: one per 10 %, so the 80 % and 90 % lines sit on
		// their labels.
		asciigraph.Height(10), asciigraph.LowerBound(0), asciigraph.UpperBound(100), asciigraph.Precision(0),
		asciigraph.SeriesChars(asciigraph.CreateCharSet("·"), asciigraph.CreateCharSet("-"), asciigraph.DefaultCharSet),
		asciigraph.XAxisRange(-mins, 0), asciigraph.XAxisTickCount(6),
		asciigraph.XAxisValueFormatter(func(v float64) string { return minutesLabel(v) }),
		asciigraph.YAxisValueFormatter(func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) + "%" }))
	// asciigraph's legends always carry colour codes: write our own.
	fmt.Fprintln(w, chart)
	fmt.Fprintf(w, "\n      ── used (peak per point)   ··· warning %g%%   --- critical %g%%\n", warn, crit)
	lo, hi := s.Points[0].Min, s.Points[0].Max
	for _, p := range s.Points {
		lo, hi = min(lo, p.Min), max(hi, p.Max)
	}
	lp := s.Points[len(s.Points)-1]
	_, err := fmt.Fprintf(w, "\nnow %d (%.1f%%), lowest %d, highest %d over %s; x axis: minutes before the last sample (%s)\n",
		lp.Used, float64(lp.Used)*100/float64(s.Capacity), lo, hi, render.Duration(span), lp.Time.Format(time.TimeOnly))
	return err
}

func firstHave(have []bool) int {
	for i, h := range have {
		if h {
			return i
		}
	}
	return 0
}

func minutesLabel(v float64) string {
	if v == 0 {
		return "now"
	}
	if math.Abs(v) < 0.995 {
		return strconv.FormatFloat(v*60, 'f', 0, 64) + "s"
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + "m"
}

func bytesString(n uint64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func events(ctx context.Context, c *control.Client, a args, w io.Writer) error {
	r, err := c.Events(ctx)
	if err != nil {
		return fmt.Errorf("show system buffers events: %w", err)
	}
	if a.json {
		return printJSON(w, r)
	}
	if len(r.Events) == 0 {
		_, err := fmt.Fprintln(w, "No threshold event since the daemon started (rows enter WARNING at 80 %, CRITICAL at 90 %, and leave 5 points below).")
		return err
	}
	rows := [][]string{{"Time", "Resource", "Scope", "From", "To", "Used", "Capacity", "Usage%", "Full in"}}
	for _, e := range r.Events {
		full := "-"
		if e.FullInSeconds != nil {
			full = render.Duration(time.Duration(*e.FullInSeconds * float64(time.Second)))
		}
		rows = append(rows, []string{e.Time.Local().Format(time.DateTime), e.Name, e.Scope, e.From.String(), e.To.String(),
			strconv.FormatUint(e.Used, 10), strconv.FormatUint(e.Capacity, 10), strconv.FormatFloat(math.Floor(e.Percent*10)/10, 'f', 1, 64) + "%", full})
	}
	writeColumns(w, rows, []bool{false, false, false, false, false, true, true, true, true})
	_, err = fmt.Fprintf(w, "\n%d event%s kept (the last %d at most).\n", len(r.Events), plural(len(r.Events)), history.DefaultMaxEvents)
	return err
}

func diagnoseCmd(ctx context.Context, c *control.Client, a args, w io.Writer) (bool, error) {
	r, err := c.Diagnose(ctx, a.window)
	if err != nil {
		return false, fmt.Errorf("diagnose: %w", err)
	}
	if a.json {
		return r.Failed(), printJSON(w, r)
	}
	fmt.Fprintf(w, "Diagnose: %s backend, counters over %s\n\n", r.Mode, r.Window.Round(time.Millisecond))
	for _, ch := range r.Checks {
		fmt.Fprintf(w, "%-8s %-9s %s\n", verdictLabel(ch.Verdict), ch.ID, ch.Question)
		for _, f := range ch.Figures {
			fmt.Fprintf(w, "                   %s\n", f)
		}
		if ch.Next != "" {
			fmt.Fprintf(w, "                   next: %s\n", ch.Next)
		}
	}
	fmt.Fprintf(w, "\n%d ok, %d suspect, %d failing.\n", r.OK, r.Suspect, r.Failing)
	return r.Failed(), nil
}

func verdictLabel(v diagnose.Verdict) string {
	return strings.ToUpper(string(v))
}
