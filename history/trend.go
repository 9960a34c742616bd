package history

import (
	"math"
	"sort"
	"time"

	"github.com/fwplane/fwplane/dataplane"
)

// Estimates: which case of the time-to-full rule applies to a row.
const (
	EstimateRising    = "rising"     // rising steadily: FullInSeconds is set
	EstimateFull      = "full"       // at capacity
	EstimateFlat      = "flat"       // moves less than the significance bound
	EstimateFalling   = "falling"    // going down steadily
	EstimateUnsteady  = "unsteady"   // moves, but a line does not fit (R² < 0.8)
	EstimateWarmingUp = "warming up" // too few samples in the window yet
)

// Trend rule constants (see the package documentation).
const (
	minTrendSamples = 10
	minR2           = 0.8
	minRiseEntries  = 1.0
	minRiseShare    = 0.001
)

// Trend is where one row is going.
type Trend struct {
	Name     string `json:"name"`
	Scope    string `json:"scope"`
	Detail   bool   `json:"detail,omitempty"`
	Capacity uint64 `json:"capacity"`
	// Used is the last sample.
	Used uint64 `json:"used"`
	// Samples in the window the trend was fitted over, and its span.
	Samples int           `json:"samples"`
	Window  time.Duration `json:"window_ns"`
	// PerMinute is the fitted change in entries per minute, and
	// PercentPerMinute the same in percentage points of the capacity;
	// nil while warming up.
	PerMinute        *float64 `json:"per_minute,omitempty"`
	PercentPerMinute *float64 `json:"percent_per_minute,omitempty"`
	// R2 is how well the line fits (1 = exactly), where defined.
	R2 *float64 `json:"r2,omitempty"`
	// FullInSeconds is the time until the row reaches its capacity at
	// this rate, set only when Estimate is "rising" (or 0 when "full").
	FullInSeconds *float64 `json:"full_in_seconds,omitempty"`
	// Estimate names the case of the rule: one of the Estimate*
	// constants.
	Estimate string `json:"estimate"`
}

// FullIn returns the time to full and whether there is one.
func (t Trend) FullIn() (time.Duration, bool) {
	if t.FullInSeconds == nil {
		return 0, false
	}
	return time.Duration(*t.FullInSeconds * float64(time.Second)), true
}

// Trends returns the trend of every row kept, sorted by name then scope.
func (r *Recorder) Trends() []Trend {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Trend, 0, len(r.rows))
	for _, rw := range r.rows {
		out = append(out, r.trend(rw))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Scope < out[j].Scope
	})
	return out
}

// Trend returns one row's trend.
func (r *Recorder) Trend(name, scope string) (Trend, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rw, ok := r.rows[rowKey{name, scope}]
	if !ok {
		return Trend{}, false
	}
	return r.trend(rw), true
}

// trend fits the row's fine samples within the trend window. r.mu held.
func (r *Recorder) trend(rw *row) Trend {
	t := Trend{Name: rw.key.name, Scope: rw.key.scope, Detail: rw.detail, Capacity: rw.capacity, Estimate: EstimateWarmingUp}
	if r.fineCount == 0 {
		return t
	}
	n := len(r.fineTimes)
	newestIdx := (r.fineHead - 1 + n) % n
	newest := r.fineTimes[newestIdx]
	cut := newest - int64(r.opts.TrendWindow)
	var xs, ys []float64
	var buf [2][128]float64
	xs, ys = buf[0][:0], buf[1][:0]
	var first, last int64
	haveLast := false
	for i := 1; i <= r.fineCount; i++ {
		j := (r.fineHead - i + n) % n
		ts := r.fineTimes[j]
		if ts <= cut {
			break
		}
		v := rw.fine[j]
		if v == absent {
			continue
		}
		if !haveLast {
			t.Used, haveLast, last = v, true, ts
		}
		first = ts
		xs = append(xs, float64(ts-newest)/1e9)
		ys = append(ys, float64(v))
	}
	if !haveLast {
		return t
	}
	t.Samples = len(xs)
	t.Window = time.Duration(last - first)
	if t.Used >= t.Capacity {
		zero := 0.0
		t.FullInSeconds, t.Estimate = &zero, EstimateFull
	}
	if len(xs) < minTrendSamples || t.Window < r.opts.TrendWindow/2 {
		return t
	}
	slope, r2, ok := fit(xs, ys)
	perMin := slope * 60
	pct := perMin * 100 / float64(rw.capacity)
	t.PerMinute, t.PercentPerMinute = &perMin, &pct
	if ok {
		t.R2 = &r2
	}
	if t.Estimate == EstimateFull {
		return t
	}
	rise := slope * t.Window.Seconds()
	bound := math.Max(minRiseEntries, minRiseShare*float64(rw.capacity))
	switch {
	case math.Abs(rise) < bound:
		t.Estimate = EstimateFlat
	case !ok || r2 < minR2:
		t.Estimate = EstimateUnsteady
	case slope < 0:
		t.Estimate = EstimateFalling
	default:
		t.Estimate = EstimateRising
		full := (float64(rw.capacity) - float64(t.Used)) / slope
		t.FullInSeconds = &full
	}
	return t
}

// fit returns the least-squares slope of ys over xs and the coefficient
// of determination; ok is false when ys do not vary (R² undefined).
func fit(xs, ys []float64) (slope, r2 float64, ok bool) {
	n := float64(len(xs))
	var sx, sy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
	}
	mx, my := sx/n, sy/n
	var sxx, sxy, syy float64
	for i := range xs {
		dx, dy := xs[i]-mx, ys[i]-my
		sxx += dx * dx
		sxy += dx * dy
		syy += dy * dy
	}
	if sxx == 0 {
		return 0, 0, false
	}
	slope = sxy / sxx
	if syy == 0 {
		return slope, 0, false
	}
	return slope, sxy * sxy / (sxx * syy), true
}

// Event is a row changing level.
type Event struct {
	Time   time.Time       `json:"time"`
	Name   string          `json:"name"`
	Scope  string          `json:"scope"`
	Detail bool            `json:"detail,omitempty"`
	From   dataplane.Level `json:"from"`
	To     dataplane.Level `json:"to"`
	// The figures that made the change.
	Used     uint64  `json:"used"`
	Capacity uint64  `json:"capacity"`
	Percent  float64 `json:"percent"`
	// FullInSeconds is the row's time to full when the event happened,
	// where the trend rule gives one.
	FullInSeconds *float64 `json:"full_in_seconds,omitempty"`
}

// Up reports whether the event raised the row's level.
func (e Event) Up() bool { return e.To > e.From }

// EventCount is how often a row entered a level.
type EventCount struct {
	Name  string          `json:"name"`
	Scope string          `json:"scope"`
	Level dataplane.Level `json:"level"`
	Count uint64          `json:"count"`
}

// level updates rw's level from res and returns the event, if the level
// changed. r.mu held.
func (r *Recorder) level(rw *row, res dataplane.Resource, now time.Time) (Event, bool) {
	u, ok := res.Utilization()
	if !ok {
		return Event{}, false
	}
	warn, crit := r.opts.Thresholds.Warning, r.opts.Thresholds.Critical
	if warn == 0 {
		warn = dataplane.DefaultWarningPercent
	}
	if crit == 0 {
		crit = dataplane.DefaultCriticalPercent
	}
	h := r.opts.Hysteresis
	cur := rw.level
	next := cur
	switch {
	case u >= crit:
		next = dataplane.LevelCritical
	case u >= warn && cur < dataplane.LevelWarning:
		next = dataplane.LevelWarning
	case cur == dataplane.LevelCritical && u < crit-h:
		next = dataplane.LevelWarning
		if u < warn-h {
			next = dataplane.LevelOK
		}
	case cur == dataplane.LevelWarning && u < warn-h:
		next = dataplane.LevelOK
	}
	if next == cur {
		return Event{}, false
	}
	rw.level = next
	ev := Event{Time: now, Name: rw.key.name, Scope: rw.key.scope, Detail: rw.detail, From: cur, To: next,
		Used: *res.Used, Capacity: res.Capacity, Percent: u}
	// The trend includes this sample: it was written before.
	if tr := r.trend(rw); tr.FullInSeconds != nil {
		ev.FullInSeconds = tr.FullInSeconds
	}
	return ev, true
}

// emit keeps, counts and logs one event. r.mu held.
func (r *Recorder) emit(ev Event) {
	if len(r.events) < r.opts.MaxEvents {
		r.events = append(r.events, ev)
	} else {
		r.events[r.eventHead] = ev
		r.eventHead = (r.eventHead + 1) % len(r.events)
	}
	r.eventTotal++
	r.counts[countKey{rowKey{ev.Name, ev.Scope}, ev.To}]++
	attrs := []any{"resource", ev.Name, "scope", ev.Scope, "from", ev.From.String(), "to", ev.To.String(),
		"used", ev.Used, "capacity", ev.Capacity, "percent", math.Round(ev.Percent*10) / 10}
	if ev.FullInSeconds != nil {
		attrs = append(attrs, "full_in", time.Duration(*ev.FullInSeconds*float64(time.Second)).Round(time.Second).String())
	}
	if ev.Up() {
		r.log.Warn("resource entered "+ev.To.String(), attrs...)
	} else {
		r.log.Info("resource left "+ev.From.String(), attrs...)
	}
}

// Events returns the events kept, oldest first.
func (r *Recorder) Events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Event, 0, len(r.events))
	out = append(out, r.events[r.eventHead:]...)
	return append(out, r.events[:r.eventHead]...)
}

// EventCounts returns how often each row entered each level since the
// recorder started, sorted by name, scope and level.
func (r *Recorder) EventCounts() []EventCount {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]EventCount, 0, len(r.counts))
	for k, n := range r.counts {
		out = append(out, EventCount{Name: k.name, Scope: k.scope, Level: k.level, Count: n})
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if a.Scope != b.Scope {
			return a.Scope < b.Scope
		}
		return a.Level < b.Level
	})
	return out
}
