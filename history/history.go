package history

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/fwplane/fwplane/dataplane"
)

// Defaults of Options.
const (
	DefaultInterval    = time.Second
	DefaultFine        = 300
	DefaultRetention   = time.Hour
	DefaultMaxRows     = 4096
	DefaultTrendWindow = time.Minute
	DefaultHysteresis  = 5.0
	DefaultMaxEvents   = 256
)

// TrendIntervals is the least span of the trend window, in sampling
// intervals: the minTrendSamples (10) a trend needs, and two to spare for
// a late or missed tick.
const TrendIntervals = minTrendSamples + 2

// bucketSpan is the width of a coarse bucket.
const bucketSpan = time.Minute

// ErrNoRow means the recorder keeps no history for the requested row.
var ErrNoRow = errors.New("no history for this row")

// Source writes a fresh report into *rep (reusing its arrays where it
// can); see [FromDataPlane].
type Source func(ctx context.Context, rep *dataplane.ResourceReport) error

// FromDataPlane reads dp's reports with dataplane.ReadResourceStats: in
// place where the backend supports it.
func FromDataPlane(dp dataplane.DataPlane) Source {
	return func(ctx context.Context, rep *dataplane.ResourceReport) error {
		return dataplane.ReadResourceStats(ctx, dp, rep)
	}
}

// Options tune a Recorder; nil means defaults, and so does each zero field.
type Options struct {
	// Interval between samples.
	Interval time.Duration
	// Fine is how many samples at the interval each row keeps.
	Fine int
	// Retention is how far back the per-minute buckets go.
	Retention time.Duration
	// MaxRows bounds the rows kept.
	MaxRows int
	// TrendWindow is the span the trend is fitted over. New raises it to
	// at least TrendIntervals sampling intervals (so it can hold the
	// samples a trend needs) and caps it at what the fine ring holds
	// (Fine intervals); Options() returns the window in force.
	TrendWindow time.Duration
	// Thresholds set the levels of events (80 % and 90 % by default).
	Thresholds dataplane.Thresholds
	// Hysteresis, in percentage points: how far below a level's
	// threshold a row must fall to leave that level.
	Hysteresis float64
	// MaxEvents bounds the events kept for Events.
	MaxEvents int
	// Logger receives one line per event and per run of read failures;
	// nil discards.
	Logger *slog.Logger
}

// absent marks a fine slot without a sample.
const absent = math.MaxUint64

type rowKey struct{ name, scope string }

type bucket struct {
	min, max, last uint64
	n              uint32
}

type row struct {
	key      rowKey
	detail   bool
	capacity uint64
	fine     []uint64 // aligned with Recorder.fineTimes
	coarse   []bucket // aligned with Recorder.coarseStart
	tick     uint64   // last tick that had a sample
	seen     time.Time
	level    dataplane.Level
}

// Recorder samples reports and keeps their history. See the package
// documentation.
type Recorder struct {
	src  Source
	opts Options
	log  *slog.Logger

	mu          sync.Mutex
	rows        map[rowKey]*row
	all         []*row // the rows of the map, for fast iteration
	order       []*row // rows in the order of the last report
	fineTimes   []int64
	fineHead    int // next slot to write
	fineCount   int
	coarseStart []int64 // bucket start, unix ns; 0 = unused
	tick        uint64
	events      []Event
	eventHead   int
	eventTotal  uint64
	counts      map[countKey]uint64
	stats       Stats
	rep         dataplane.ResourceReport // reused between samples (Run only)
}

type countKey struct {
	rowKey
	level dataplane.Level
}

// Stats describe the recorder itself.
type Stats struct {
	// Rows kept, and the bytes their rings use.
	Rows        int    `json:"rows"`
	MemoryBytes uint64 `json:"memory_bytes"`
	// MaxRows is the bound on Rows; RowsRefused counts rows not kept
	// because it was reached.
	MaxRows     int    `json:"max_rows"`
	RowsRefused uint64 `json:"rows_refused"`
	// Samples taken, reads that failed, and the last sample's cost: the
	// report's read and the recording.
	Samples    uint64        `json:"samples"`
	ReadErrors uint64        `json:"read_errors"`
	LastRead   time.Duration `json:"last_read_ns"`
	LastRecord time.Duration `json:"last_record_ns"`
	// Interval between samples, and what is kept.
	Interval  time.Duration `json:"interval_ns"`
	Fine      int           `json:"fine"`
	Retention time.Duration `json:"retention_ns"`
	// TrendWindow is the span trends are fitted over (see Options).
	TrendWindow time.Duration `json:"trend_window_ns"`
}

// New returns a Recorder over src. It samples only when Run (or Record)
// is called.
func New(src Source, opts *Options) *Recorder {
	o := Options{}
	if opts != nil {
		o = *opts
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Fine <= 0 {
		o.Fine = DefaultFine
	}
	if o.Retention <= 0 {
		o.Retention = DefaultRetention
	}
	if o.MaxRows <= 0 {
		o.MaxRows = DefaultMaxRows
	}
	if o.TrendWindow <= 0 {
		o.TrendWindow = DefaultTrendWindow
	}
	// A trend needs minTrendSamples in its window: a fixed window would
	// hold too few at a long interval (60 s at 7 s holds 9) and trends
	// would silently never appear; the fine ring must hold the window.
	o.Fine = max(o.Fine, TrendIntervals)
	o.TrendWindow = max(o.TrendWindow, TrendIntervals*o.Interval)
	o.TrendWindow = min(o.TrendWindow, time.Duration(o.Fine)*o.Interval)
	if o.Hysteresis <= 0 {
		o.Hysteresis = DefaultHysteresis
	}
	if o.MaxEvents <= 0 {
		o.MaxEvents = DefaultMaxEvents
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nb := int((o.Retention + bucketSpan - 1) / bucketSpan)
	return &Recorder{
		src: src, opts: o, log: log,
		rows:        map[rowKey]*row{},
		fineTimes:   make([]int64, o.Fine),
		coarseStart: make([]int64, max(nb, 1)),
		counts:      map[countKey]uint64{},
	}
}

// Options returns the options in force (defaults filled in).
func (r *Recorder) Options() Options { return r.opts }

// Run samples at the interval until ctx ends, then returns ctx's error.
// Run must not be called twice at once.
func (r *Recorder) Run(ctx context.Context) error {
	t := time.NewTicker(r.opts.Interval)
	defer t.Stop()
	failing := false
	for {
		if err := r.sample(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !failing {
				r.log.Warn("history: cannot read the resource report; sampling goes on", "err", err)
			}
			failing = true
		} else if failing {
			r.log.Info("history: resource report readable again")
			failing = false
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (r *Recorder) sample(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, max(r.opts.Interval, time.Second))
	defer cancel()
	start := time.Now()
	err := r.src(ctx, &r.rep)
	took := time.Since(start)
	r.mu.Lock()
	r.stats.LastRead = took
	if err != nil {
		r.stats.ReadErrors++
		r.mu.Unlock()
		return err
	}
	r.mu.Unlock()
	r.Record(&r.rep, start)
	return nil
}

// Record adds one report, taken at now, to the history. Run calls it;
// tests and embedders with their own loop may call it instead of Run
// (never both). rep is not retained.
func (r *Recorder) Record(rep *dataplane.ResourceReport, now time.Time) {
	start := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tick++
	slot := r.fineHead
	r.fineTimes[slot] = now.UnixNano()
	r.fineHead = (r.fineHead + 1) % len(r.fineTimes)
	r.fineCount = min(r.fineCount+1, len(r.fineTimes))
	bi, fresh := r.bucketFor(now)

	var pending []Event
	i := 0
	for _, res := range rep.Resources {
		if res.Used == nil || res.Capacity == 0 {
			continue
		}
		var rw *row
		// Reports list their rows in the same order every time: check
		// the row at this position before the map.
		if i < len(r.order) {
			if o := r.order[i]; o != nil && o.key.name == res.Name && o.key.scope == res.Scope {
				rw = o
			}
		}
		if rw == nil {
			rw = r.lookup(res)
			if rw == nil {
				continue
			}
			if i < len(r.order) {
				r.order[i] = rw
			} else {
				r.order = append(r.order, rw)
			}
		}
		i++
		if rw.tick == r.tick {
			continue // a duplicate row in one report: keep the first
		}
		if rw.capacity != res.Capacity {
			rw.reset(res.Capacity)
		}
		if fresh {
			rw.coarse[bi] = bucket{}
		}
		v := *res.Used
		rw.fine[slot] = v
		b := &rw.coarse[bi]
		if b.n == 0 || v < b.min {
			b.min = v
		}
		if b.n == 0 || v > b.max {
			b.max = v
		}
		b.last = v
		b.n++
		rw.tick, rw.seen, rw.detail = r.tick, now, res.Detail
		if ev, ok := r.level(rw, res, now); ok {
			pending = append(pending, ev)
		}
	}
	r.order = r.order[:i]
	// Rows missing from this report get no sample in this slot.
	for j := 0; j < len(r.all); j++ {
		rw := r.all[j]
		if rw.tick == r.tick {
			continue
		}
		rw.fine[slot] = absent
		if fresh {
			rw.coarse[bi] = bucket{}
		}
		if now.Sub(rw.seen) > r.opts.Retention {
			delete(r.rows, rw.key)
			last := len(r.all) - 1
			r.all[j], r.all[last] = r.all[last], nil
			r.all = r.all[:last]
			j--
			// order may still point at it: drop those references.
			for oi, o := range r.order {
				if o == rw {
					r.order[oi] = nil
				}
			}
		}
	}
	r.stats.Samples++
	r.stats.LastRecord = time.Since(start)
	for _, ev := range pending {
		r.emit(ev)
	}
}

// bucketFor returns the coarse bucket index for now, and whether it was
// (re)started by this call.
func (r *Recorder) bucketFor(now time.Time) (int, bool) {
	start := now.Truncate(bucketSpan).UnixNano()
	idx := int((start / int64(bucketSpan)) % int64(len(r.coarseStart)))
	if r.coarseStart[idx] == start {
		return idx, false
	}
	r.coarseStart[idx] = start
	return idx, true
}

func (r *Recorder) lookup(res dataplane.Resource) *row {
	k := rowKey{res.Name, res.Scope}
	if rw, ok := r.rows[k]; ok {
		return rw
	}
	if len(r.rows) >= r.opts.MaxRows {
		r.stats.RowsRefused++
		return nil
	}
	rw := &row{key: k, fine: make([]uint64, len(r.fineTimes)), coarse: make([]bucket, len(r.coarseStart)), level: dataplane.LevelOK}
	rw.reset(res.Capacity)
	r.rows[k] = rw
	r.all = append(r.all, rw)
	return rw
}

func (rw *row) reset(capacity uint64) {
	rw.capacity = capacity
	for i := range rw.fine {
		rw.fine[i] = absent
	}
	clear(rw.coarse)
	rw.level = dataplane.LevelOK
}

// rowBytes is the memory one row's rings use.
func (r *Recorder) rowBytes() uint64 {
	return uint64(len(r.fineTimes))*8 + uint64(len(r.coarseStart))*32
}

// Stats returns the recorder's own figures.
func (r *Recorder) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.Rows = len(r.rows)
	s.MemoryBytes = uint64(len(r.rows))*r.rowBytes() + uint64(len(r.fineTimes)+len(r.coarseStart))*8
	s.MaxRows = r.opts.MaxRows
	s.Interval, s.Fine, s.Retention, s.TrendWindow = r.opts.Interval, r.opts.Fine, r.opts.Retention, r.opts.TrendWindow
	return s
}

// Point is one sample of a row, or one per-minute bucket.
type Point struct {
	Time time.Time `json:"time"`
	// Used is the sample (the bucket's last one).
	Used uint64 `json:"used"`
	// Min and Max over the bucket (equal to Used for a single sample).
	Min uint64 `json:"min"`
	Max uint64 `json:"max"`
}

// Series is the history of one row.
type Series struct {
	Name     string `json:"name"`
	Scope    string `json:"scope"`
	Detail   bool   `json:"detail,omitempty"`
	Capacity uint64 `json:"capacity"`
	// Step is the time between points: the sampling interval, or a
	// minute when the request reached past the fine samples.
	Step   time.Duration `json:"step_ns"`
	Points []Point       `json:"points"`
}

// Rows lists the rows kept, sorted by name then scope.
func (r *Recorder) Rows() []Series {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Series, 0, len(r.rows))
	for _, rw := range r.rows {
		out = append(out, Series{Name: rw.key.name, Scope: rw.key.scope, Detail: rw.detail, Capacity: rw.capacity, Step: r.opts.Interval})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Scope < out[j].Scope
	})
	return out
}

// Series returns the samples of a row over the last since (0 = all that
// is kept): fine samples when they reach back that far, per-minute
// buckets otherwise. An unknown row is an error matching ErrNoRow.
func (r *Recorder) Series(name, scope string, since time.Duration) (Series, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rw, ok := r.rows[rowKey{name, scope}]
	if !ok {
		return Series{}, fmt.Errorf("%s (scope %q): %w", name, scope, ErrNoRow)
	}
	s := Series{Name: name, Scope: scope, Detail: rw.detail, Capacity: rw.capacity}
	var newest int64
	if r.fineCount > 0 {
		newest = r.fineTimes[(r.fineHead-1+len(r.fineTimes))%len(r.fineTimes)]
	}
	// Fine samples serve a request they cover, and every request while
	// the fine ring has not wrapped yet (they are then all there is).
	fineSpan := time.Duration(r.fineCount) * r.opts.Interval
	if (since > 0 && since <= fineSpan) || r.fineCount < len(r.fineTimes) {
		s.Step = r.opts.Interval
		cut := newest - int64(since)
		for i := r.fineCount; i > 0; i-- {
			j := (r.fineHead - i + len(r.fineTimes)) % len(r.fineTimes)
			if r.fineTimes[j] <= cut || rw.fine[j] == absent {
				continue
			}
			v := rw.fine[j]
			s.Points = append(s.Points, Point{Time: time.Unix(0, r.fineTimes[j]), Used: v, Min: v, Max: v})
		}
		return s, nil
	}
	s.Step = bucketSpan
	cut := int64(math.MinInt64)
	if since > 0 {
		cut = newest - int64(since)
	}
	idx := make([]int, 0, len(r.coarseStart))
	for i, st := range r.coarseStart {
		if st != 0 && st+int64(bucketSpan) > cut && rw.coarse[i].n > 0 {
			idx = append(idx, i)
		}
	}
	sort.Slice(idx, func(a, b int) bool { return r.coarseStart[idx[a]] < r.coarseStart[idx[b]] })
	for _, i := range idx {
		b := rw.coarse[i]
		s.Points = append(s.Points, Point{Time: time.Unix(0, r.coarseStart[i]), Used: b.last, Min: b.min, Max: b.max})
	}
	return s, nil
}
