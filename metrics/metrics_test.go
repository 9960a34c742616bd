package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/history"
)

func report() dataplane.ResourceReport {
	return dataplane.ResourceReport{
		Mode: dataplane.ModeEBPF, Generation: 4, Took: 250 * time.Microsecond,
		Resources: []dataplane.Resource{
			{Name: "sessions", Kind: dataplane.KindLRUHash, Scope: "global", Capacity: 1000, Used: dataplane.Uint64(850)},
			{Name: "counters", Kind: dataplane.KindPerCPUArray, Scope: "global", Capacity: 16},
			{Name: "broken", Kind: dataplane.KindHash, Scope: "global", Capacity: 8, Error: "EPERM"},
			{Name: "walked", Kind: dataplane.KindHash, Scope: "global", Capacity: 100, Used: dataplane.Uint64(40), Partial: true},
		},
		Counters: []dataplane.Counter{{Name: "forwarded", Scope: "global", Value: 99}},
		Sessions: &dataplane.SessionCounts{IPv4: 800, IPv6: 50, Total: 850},
	}
}

// scrape serves the collector over HTTP and parses the answer with
// Prometheus' own text parser, as a Prometheus server would.
func scrape(t *testing.T, c prometheus.Collector) map[string]*dto {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape status %d: %s", resp.StatusCode, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse scrape: %v\n%s", err, body)
	}
	out := map[string]*dto{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(labels)
			v := m.GetGauge().GetValue()
			if m.GetCounter() != nil {
				v = m.GetCounter().GetValue()
			}
			out[name+"{"+strings.Join(labels, ",")+"}"] = &dto{v}
		}
	}
	return out
}

type dto struct{ v float64 }

func TestScrape(t *testing.T) {
	got := scrape(t, NewCollector(func(context.Context) (dataplane.ResourceReport, error) { return report(), nil }, nil))
	want := map[string]float64{
		"fwplane_resource_capacity{kind=lru_hash,mode=ebpf,resource=sessions,scope=global}":          1000,
		"fwplane_resource_used{kind=lru_hash,mode=ebpf,resource=sessions,scope=global}":              850,
		"fwplane_resource_utilization_ratio{kind=lru_hash,mode=ebpf,resource=sessions,scope=global}": 0.85,
		"fwplane_resource_capacity{kind=percpu_array,mode=ebpf,resource=counters,scope=global}":      16,
		"fwplane_resource_capacity{kind=hash,mode=ebpf,resource=broken,scope=global}":                8,
		"fwplane_dataplane_events_total{counter=forwarded,mode=ebpf,scope=global}":                   99,
		"fwplane_sessions_active{family=ipv4,mode=ebpf}":                                             800,
		"fwplane_sessions_active{family=ipv6,mode=ebpf}":                                             50,
		"fwplane_sessions_active{family=total,mode=ebpf}":                                            850,
		"fwplane_resource_report_duration_seconds{mode=ebpf}":                                        0.00025,
		"fwplane_config_generation{mode=ebpf}":                                                       4,
		"fwplane_resource_count_partial{kind=lru_hash,mode=ebpf,resource=sessions,scope=global}":     0,
		"fwplane_resource_error{kind=hash,mode=ebpf,resource=broken,scope=global}":                   1,
		"fwplane_resource_error{kind=lru_hash,mode=ebpf,resource=sessions,scope=global}":             0,
		"fwplane_resource_error{kind=percpu_array,mode=ebpf,resource=counters,scope=global}":         0,
		// A capped walk: exported, and marked as a lower bound.
		"fwplane_resource_capacity{kind=hash,mode=ebpf,resource=walked,scope=global}":          100,
		"fwplane_resource_used{kind=hash,mode=ebpf,resource=walked,scope=global}":              40,
		"fwplane_resource_utilization_ratio{kind=hash,mode=ebpf,resource=walked,scope=global}": 0.4,
		"fwplane_resource_count_partial{kind=hash,mode=ebpf,resource=walked,scope=global}":     1,
		"fwplane_resource_error{kind=hash,mode=ebpf,resource=walked,scope=global}":             0,
	}
	gotV := map[string]float64{}
	for k, v := range got {
		gotV[k] = v.v
	}
	// Arrays and failed counts export capacity only: no false used or
	// utilisation sample.
	if diff := cmp.Diff(want, gotV); diff != "" {
		t.Errorf("scrape (-want +got):\n%s", diff)
	}
}

func TestScrapeError(t *testing.T) {
	c := NewCollector(func(context.Context) (dataplane.ResourceReport, error) {
		return dataplane.ResourceReport{}, errors.New("boom")
	}, nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("Gather error = %v, want the source error", err)
	}
}

// Label sets must not change as fill changes: every value is a sample,
// never a label (issue 14: the fullest-shard row's scope carried its skew
// and made a new series on every change).
func TestLabelSetsStableAsFillChanges(t *testing.T) {
	fill := uint64(10)
	src := func(context.Context) (dataplane.ResourceReport, error) {
		return dataplane.ResourceReport{Mode: dataplane.ModeUserspace, Resources: []dataplane.Resource{
			{Name: "sessions", Kind: dataplane.KindTable, Scope: "global", Capacity: 4096, Used: dataplane.Uint64(fill * 8)},
			{Name: "sessions", Kind: dataplane.KindTable, Scope: "shard/03", Detail: true, Capacity: 64, Used: dataplane.Uint64(fill % 64)},
			{Name: "sessions_fullest_shard", Kind: dataplane.KindTable, Scope: "global", Detail: true, Capacity: 64, Used: dataplane.Uint64(fill % 64),
				Figures: []dataplane.Figure{{Name: "shard", Value: float64(fill % 7)}, {Name: "max_skew", Value: float64(fill) / 3}}},
		}, Counters: []dataplane.Counter{{Name: "forwarded", Scope: "global", Value: fill * 100}}}, nil
	}
	c := NewCollector(src, nil)
	keys := func() []string {
		var out []string
		for k := range scrape(t, c) {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	before := keys()
	fill = 37
	after := keys()
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("label sets changed with the fill (-before +after):\n%s", diff)
	}
	got := scrape(t, c)
	if v := got["fwplane_resource_figure{figure=max_skew,kind=table,mode=userspace,resource=sessions_fullest_shard,scope=global}"]; v == nil || v.v != 37.0/3 {
		t.Errorf("max_skew figure = %v, want %v", v, 37.0/3)
	}
}

func TestHistoryCollector(t *testing.T) {
	rec := history.New(nil, nil)
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	for i, v := range []uint64{50, 85, 95, 70} {
		rec.Record(&dataplane.ResourceReport{Resources: []dataplane.Resource{
			{Name: "sessions", Scope: "global", Capacity: 100, Used: dataplane.Uint64(v)}}}, t0.Add(time.Duration(i)*time.Second))
	}
	got := scrape(t, NewHistoryCollector(rec, nil))
	for k, want := range map[string]float64{
		"fwplane_threshold_events_total{level=warning,resource=sessions,scope=global}":  1,
		"fwplane_threshold_events_total{level=critical,resource=sessions,scope=global}": 1,
		"fwplane_threshold_events_total{level=ok,resource=sessions,scope=global}":       1,
		"fwplane_history_rows{}": 1,
	} {
		if v := got[k]; v == nil || v.v != want {
			t.Errorf("%s = %v, want %v", k, v, want)
		}
	}
	if v := got["fwplane_history_memory_bytes{}"]; v == nil || v.v != float64(rec.Stats().MemoryBytes) || v.v == 0 {
		t.Errorf("memory bytes = %v, want the recorder's figure", v)
	}
}
