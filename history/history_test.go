package history

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
)

var t0 = time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)

func report(rows ...dataplane.Resource) *dataplane.ResourceReport {
	return &dataplane.ResourceReport{Mode: dataplane.ModeUserspace, Resources: rows}
}

func tableRow(name string, capacity, used uint64) dataplane.Resource {
	return dataplane.Resource{Name: name, Kind: dataplane.KindTable, Scope: "global", Capacity: capacity, Used: dataplane.Uint64(used)}
}

func within(got, want, frac float64) bool { return math.Abs(got-want) <= math.Abs(want)*frac }

func TestTrendOfALinearRise(t *testing.T) {
	r := New(nil, nil)
	const capacity, perSec = 65536, 20.0 // 1200 per minute
	var used float64 = 10000
	for i := range 120 {
		r.Record(report(tableRow("sessions", capacity, uint64(used))), t0.Add(time.Duration(i)*time.Second))
		used += perSec
	}
	tr, ok := r.Trend("sessions", "global")
	if !ok {
		t.Fatal("no trend for sessions")
	}
	if tr.Estimate != EstimateRising || tr.PerMinute == nil || tr.FullInSeconds == nil {
		t.Fatalf("trend %+v, want rising with a rate and a time to full", tr)
	}
	if !within(*tr.PerMinute, 1200, 0.05) {
		t.Errorf("per minute %.1f, want 1200 within 5 %%", *tr.PerMinute)
	}
	last := 10000 + 119*perSec
	wantFull := (capacity - last) / perSec
	if !within(*tr.FullInSeconds, wantFull, 0.05) {
		t.Errorf("full in %.1f s, want %.1f s within 5 %%", *tr.FullInSeconds, wantFull)
	}
	if !within(*tr.PercentPerMinute, 1200*100.0/capacity, 0.05) {
		t.Errorf("percent per minute %.3f", *tr.PercentPerMinute)
	}
	if tr.Samples != 60 {
		t.Errorf("samples %d, want the 60 of the window", tr.Samples)
	}
}

// A rise with noise on top is still rising when the line explains it.
func TestTrendOfANoisyRise(t *testing.T) {
	r := New(nil, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 60 {
		v := 1000 + 30*float64(i) + rng.NormFloat64()*20
		r.Record(report(tableRow("flow_cache", 8192, uint64(v))), t0.Add(time.Duration(i)*time.Second))
	}
	tr, _ := r.Trend("flow_cache", "global")
	if tr.Estimate != EstimateRising || !within(*tr.PerMinute, 1800, 0.05) {
		t.Errorf("trend %+v (per minute %v), want rising at 1800/min within 5 %%", tr, deref(tr.PerMinute))
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestNoTimeToFullForFlatNoisyOrFallingRows(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	tests := []struct {
		name  string
		value func(i int) float64
		want  string
	}{
		{"flat", func(int) float64 { return 5000 }, EstimateFlat},
		{"one step", func(i int) float64 { return 5000 + float64(i/59) }, EstimateFlat},
		{"noisy", func(int) float64 { return 5000 + rng.NormFloat64()*800 }, EstimateUnsteady},
		{"sawtooth", func(i int) float64 { return 2000 + float64(i%10)*500 }, EstimateUnsteady},
		{"falling", func(i int) float64 { return 9000 - 50*float64(i) }, EstimateFalling},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(nil, nil)
			for i := range 90 {
				r.Record(report(tableRow("sessions", 10000, uint64(tt.value(i)))), t0.Add(time.Duration(i)*time.Second))
			}
			tr, _ := r.Trend("sessions", "global")
			if tr.Estimate != tt.want || tr.FullInSeconds != nil {
				t.Errorf("estimate %q, full in %v; want %q and no time to full (r2 %v)", tr.Estimate, deref(tr.FullInSeconds), tt.want, deref(tr.R2))
			}
		})
	}
}

func TestTrendWarmsUpAndFull(t *testing.T) {
	r := New(nil, nil)
	for i := range 5 {
		r.Record(report(tableRow("sessions", 100, uint64(10*i))), t0.Add(time.Duration(i)*time.Second))
	}
	if tr, _ := r.Trend("sessions", "global"); tr.Estimate != EstimateWarmingUp || tr.PerMinute != nil {
		t.Errorf("after 5 samples: %+v, want warming up without a rate", tr)
	}
	r.Record(report(tableRow("sessions", 100, 100)), t0.Add(5*time.Second))
	if tr, _ := r.Trend("sessions", "global"); tr.Estimate != EstimateFull || tr.FullInSeconds == nil || *tr.FullInSeconds != 0 {
		t.Errorf("at capacity: %+v, want full", tr)
	}
}

// The trend window scales with the sampling interval, so a long interval
// still gives trends (a fixed 60 s window holds 6 samples at 10 s, fewer
// than the 10 a trend needs), and a short one is capped at the fine ring.
func TestTrendWindowScalesWithInterval(t *testing.T) {
	tests := []struct {
		interval   time.Duration
		fine       int
		wantWindow time.Duration
	}{
		{time.Second, 0, time.Minute},
		{6 * time.Second, 0, 72 * time.Second},
		{10 * time.Second, 0, 2 * time.Minute},
		{time.Minute, 0, 12 * time.Minute},
		{100 * time.Millisecond, 0, 30 * time.Second}, // capped at 300 fine samples
		{time.Second, 5, 12 * time.Second},            // Fine raised to 12
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/fine%d", tt.interval, tt.fine), func(t *testing.T) {
			r := New(nil, &Options{Interval: tt.interval, Fine: tt.fine})
			if got := r.Options().TrendWindow; got != tt.wantWindow {
				t.Errorf("trend window %s, want %s", got, tt.wantWindow)
			}
			if got := r.Stats().TrendWindow; got != tt.wantWindow {
				t.Errorf("Stats().TrendWindow %s, want %s", got, tt.wantWindow)
			}
			// A row rising 1000 entries per sample, sampled at
			// the interval for as long as the window.
			const capacity = 10_000_000
			n := int(tt.wantWindow / tt.interval)
			for i := range n {
				r.Record(report(tableRow("sessions", capacity, uint64(1000+1000*i))), t0.Add(time.Duration(i)*tt.interval))
			}
			tr, _ := r.Trend("sessions", "global")
			if tr.Estimate != EstimateRising || tr.PerMinute == nil {
				t.Fatalf("after %d samples at %s: %+v, want rising", n, tt.interval, tr)
			}
			want := 1000 * float64(time.Minute) / float64(tt.interval)
			if !within(*tr.PerMinute, want, 0.05) {
				t.Errorf("per minute %.1f, want %.1f", *tr.PerMinute, want)
			}
		})
	}
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestEventsWithHysteresis(t *testing.T) {
	var logs logBuf
	r := New(nil, &Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	// Percent of a 1000-entry table, one sample a second.
	seq := []uint64{700, 790, 800, 820, 780, 810, 760, 740, 850, 910, 880, 840, 700, 799, 750}
	for i, v := range seq {
		r.Record(report(tableRow("sessions", 1000, v)), t0.Add(time.Duration(i)*time.Second))
	}
	type step struct {
		From, To dataplane.Level
		Used     uint64
	}
	var got []step
	for _, e := range r.Events() {
		got = append(got, step{e.From, e.To, e.Used})
	}
	W, C, OK := dataplane.LevelWarning, dataplane.LevelCritical, dataplane.LevelOK
	want := []step{
		{OK, W, 800}, // enters WARNING at 80 %
		{W, OK, 740}, // 78, 81, 76 stay WARNING; 74 < 80 - 5 leaves
		{OK, W, 850}, // back
		{W, C, 910},  // CRITICAL at 90 %
		{C, W, 840},  // 88 stays (>= 85); 84 leaves CRITICAL
		{W, OK, 700}, // 70 < 75
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	counts := map[string]uint64{}
	for _, c := range r.EventCounts() {
		counts[c.Name+"/"+c.Level.String()] = c.Count
	}
	if diff := cmp.Diff(map[string]uint64{"sessions/WARNING": 3, "sessions/CRITICAL": 1, "sessions/OK": 2}, counts); diff != "" {
		t.Errorf("event counts (-want +got):\n%s", diff)
	}
	// Logged once each: as many lines as events, up WARN, down INFO.
	out := logs.String()
	if n := strings.Count(out, "msg=\"resource entered "); n != 3 {
		t.Errorf("%d 'entered' lines, want 3:\n%s", n, out)
	}
	if n := strings.Count(out, "msg=\"resource left "); n != 3 {
		t.Errorf("%d 'left' lines, want 3:\n%s", n, out)
	}
	if !strings.Contains(out, `level=WARN msg="resource entered CRITICAL" resource=sessions scope=global from=WARNING to=CRITICAL used=910 capacity=1000 percent=91`) {
		t.Errorf("the CRITICAL line lacks its figures:\n%s", out)
	}
}

func TestEventCarriesTimeToFull(t *testing.T) {
	r := New(nil, nil)
	for i := range 100 {
		r.Record(report(tableRow("sessions", 1000, uint64(10*i))), t0.Add(time.Duration(i)*time.Second))
	}
	evs := r.Events()
	if len(evs) != 2 || evs[0].To != dataplane.LevelWarning || evs[0].FullInSeconds == nil {
		t.Fatalf("events %+v, want WARNING then CRITICAL with a time to full", evs)
	}
	// At 800 entries, rising 10 per second: 20 s to full.
	if !within(*evs[0].FullInSeconds, 20, 0.05) {
		t.Errorf("full in %.1f s at the WARNING event, want 20", *evs[0].FullInSeconds)
	}
}

func TestMemoryIsBounded(t *testing.T) {
	r := New(nil, &Options{MaxRows: 10})
	var rows []dataplane.Resource
	for i := range 25 {
		rows = append(rows, dataplane.Resource{Name: "sessions", Scope: fmt.Sprintf("shard/%02d", i), Capacity: 100, Used: dataplane.Uint64(uint64(i))})
	}
	for i := range 3 {
		r.Record(report(rows...), t0.Add(time.Duration(i)*time.Second))
	}
	s := r.Stats()
	if s.Rows != 10 || s.RowsRefused != 45 {
		t.Errorf("rows %d, refused %d; want 10 kept and 15 refused on each of 3 samples", s.Rows, s.RowsRefused)
	}
	perRow := uint64(DefaultFine*8 + 60*32)
	if want := 10*perRow + (DefaultFine+60)*8; s.MemoryBytes != want {
		t.Errorf("memory %d bytes, want %d", s.MemoryBytes, want)
	}
	if perRow != 4320 {
		t.Errorf("a row costs %d bytes; the package documentation says 4 320", perRow)
	}
}

func TestRowsWithoutUtilisationAreNotKept(t *testing.T) {
	r := New(nil, nil)
	r.Record(report(
		dataplane.Resource{Name: "fw_rules", Kind: dataplane.KindArray, Scope: "global", Capacity: 64},
		dataplane.Resource{Name: "broken", Scope: "global", Capacity: 64, Error: "count failed"},
		dataplane.Resource{Name: "queue", Scope: "global", Used: dataplane.Uint64(3)},
		tableRow("sessions", 10, 1),
	), t0)
	if got := r.Rows(); len(got) != 1 || got[0].Name != "sessions" {
		t.Errorf("rows %+v, want only sessions", got)
	}
	if _, err := r.Series("fw_rules", "global", 0); !errors.Is(err, ErrNoRow) {
		t.Errorf("Series of an array = %v, want ErrNoRow", err)
	}
}

func TestSeriesFineAndCoarse(t *testing.T) {
	r := New(nil, &Options{Fine: 60})
	// Five minutes at 1 s: the fine ring holds the last minute.
	for i := range 300 {
		rows := []dataplane.Resource{tableRow("sessions", 1000, uint64(i))}
		if i >= 100 && i < 110 {
			rows = nil // the row is missing from ten reports
		}
		r.Record(report(rows...), t0.Add(time.Duration(i)*time.Second))
	}
	s, err := r.Series("sessions", "global", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if s.Step != time.Second || len(s.Points) != 30 || s.Points[29].Used != 299 || s.Points[0].Used != 270 {
		t.Errorf("30 s: step %v, %d points, first %+v; want 30 one-second points 270..299", s.Step, len(s.Points), s.Points[0])
	}
	s, err = r.Series("sessions", "global", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := []Point{
		{Time: t0, Used: 59, Min: 0, Max: 59},
		{Time: t0.Add(time.Minute), Used: 119, Min: 60, Max: 119},
		{Time: t0.Add(2 * time.Minute), Used: 179, Min: 120, Max: 179},
		{Time: t0.Add(3 * time.Minute), Used: 239, Min: 180, Max: 239},
		{Time: t0.Add(4 * time.Minute), Used: 299, Min: 240, Max: 299},
	}
	if diff := cmp.Diff(want, s.Points, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); s.Step != time.Minute || diff != "" {
		t.Errorf("10 min: step %v, points (-want +got):\n%s", s.Step, diff)
	}
}

// Before the fine ring wraps, every request gets the fine samples: they
// are all the history there is.
func TestSeriesBeforeTheFineRingWraps(t *testing.T) {
	r := New(nil, nil)
	for i := range 90 {
		r.Record(report(tableRow("sessions", 1000, uint64(i))), t0.Add(time.Duration(i)*time.Second))
	}
	s, _ := r.Series("sessions", "global", time.Hour)
	if s.Step != time.Second || len(s.Points) != 90 {
		t.Errorf("an hour after 90 s of samples: step %v, %d points; want the 90 one-second samples", s.Step, len(s.Points))
	}
}

func TestCapacityChangeRestartsTheRow(t *testing.T) {
	r := New(nil, nil)
	for i := range 30 {
		r.Record(report(tableRow("sessions", 1000, 950)), t0.Add(time.Duration(i)*time.Second))
	}
	r.Record(report(tableRow("sessions", 4000, 950)), t0.Add(30*time.Second))
	s, _ := r.Series("sessions", "global", time.Minute)
	if len(s.Points) != 1 || s.Capacity != 4000 {
		t.Errorf("after a resize: %d points, capacity %d; want 1 point of the new capacity", len(s.Points), s.Capacity)
	}
	evs := r.Events()
	if len(evs) != 1 || evs[0].To != dataplane.LevelCritical {
		t.Errorf("events %+v, want the one CRITICAL before the resize (a restarted row is OK without an event)", evs)
	}
}

func TestRunSamplesAndCountsReadErrors(t *testing.T) {
	var mu sync.Mutex
	n := 0
	src := func(ctx context.Context, rep *dataplane.ResourceReport) error {
		mu.Lock()
		defer mu.Unlock()
		n++
		if n%2 == 0 {
			return errors.New("read failed")
		}
		*rep = *report(tableRow("sessions", 100, uint64(n)))
		return nil
	}
	var logs logBuf
	r := New(src, &Options{Interval: 5 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for r.Stats().Samples < 5 {
		if time.Now().After(deadline) {
			t.Fatal("Run took no 5 samples in 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", err)
	}
	s := r.Stats()
	if s.ReadErrors == 0 || s.Samples == 0 {
		t.Errorf("stats %+v, want samples and read errors", s)
	}
	if !strings.Contains(logs.String(), "cannot read the resource report") {
		t.Errorf("read failure not logged:\n%s", logs.String())
	}
}

// BenchmarkRecord measures recording one report of a userspace backend's
// shape (4 bindings, 64 session shards, 16 neighbour shards): the cost
// the sampler adds to each ResourceStats read.
func BenchmarkRecord(b *testing.B) {
	var rows []dataplane.Resource
	for _, n := range []string{"umem_frames", "fill_ring_empty", "worker_queue", "pending_tx", "sessions", "flow_cache", "neighbors"} {
		rows = append(rows, tableRow(n, 4096, 100))
	}
	for q := range 4 {
		for _, n := range []string{"umem_frames", "fill_ring_empty", "rx_ring", "tx_ring", "completion_ring", "flow_cache"} {
			rows = append(rows, dataplane.Resource{Name: n, Scope: fmt.Sprintf("fw%d/q0", q), Detail: true, Capacity: 4096, Used: dataplane.Uint64(100)})
		}
	}
	for i := range 64 {
		rows = append(rows, dataplane.Resource{Name: "sessions", Scope: fmt.Sprintf("shard/%02d", i), Detail: true, Capacity: 1024, Used: dataplane.Uint64(10)})
	}
	for i := range 16 {
		rows = append(rows, dataplane.Resource{Name: "neighbors", Scope: fmt.Sprintf("shard/%02d", i), Detail: true, Capacity: 256, Used: dataplane.Uint64(1)})
	}
	rep := report(rows...)
	r := New(nil, nil)
	now := t0
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		now = now.Add(time.Second)
		r.Record(rep, now)
	}
	b.ReportMetric(float64(len(rows)), "rows")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(rows)), "ns/row")
}

// BenchmarkRowMemory measures what a row costs on the heap, not what its
// rings should cost: it fills MaxRows (4096) rows with the default options
// for the whole retention (an hour of one-second samples, so every ring
// and bucket has been written), and reads HeapAlloc after a GC before and
// after. The figure includes the row struct, its map entry, the slices'
// headers and the allocator's size classes; ring-B/row is the recorder's
// own account (Stats.MemoryBytes) for comparison.
// scripts/bench-history.sh runs it with -benchtime 1x.
func BenchmarkRowMemory(b *testing.B) {
	const rows = DefaultMaxRows
	res := make([]dataplane.Resource, rows)
	for i := range res {
		res[i] = dataplane.Resource{Name: "sessions", Scope: fmt.Sprintf("shard/%04d", i), Detail: true, Capacity: 1 << 20, Used: dataplane.Uint64(uint64(i))}
	}
	rep := report(res...)
	samples := int(DefaultRetention/DefaultInterval) + DefaultFine
	var perRow, ringPerRow float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		r := New(nil, nil)
		now := t0
		for range samples {
			now = now.Add(DefaultInterval)
			r.Record(rep, now)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		s := r.Stats()
		if s.Rows != rows {
			b.Fatalf("%d rows kept, want %d", s.Rows, rows)
		}
		perRow = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / rows
		ringPerRow = float64(s.MemoryBytes) / rows
		runtime.KeepAlive(r)
	}
	b.ReportMetric(perRow, "B/row")
	b.ReportMetric(ringPerRow, "ring-B/row")
	b.ReportMetric(perRow*rows/(1<<20), "MiB@4096rows")
	b.ReportMetric(float64(samples), "samples")
}
