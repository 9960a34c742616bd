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
)

func report() dataplane.ResourceReport {
	return dataplane.ResourceReport{
		Mode: dataplane.ModeEBPF, Generation: 4, Took: 250 * time.Microsecond,
		Resources: []dataplane.Resource{
			{Name: "sessions", Kind: dataplane.KindLRUHash, Scope: "global", Capacity: 1000, Used: dataplane.Uint64(850)},
			{Name: "counters", Kind: dataplane.KindPerCPUArray, Scope: "global", Capacity: 16},
			{Name: "broken", Kind: dataplane.KindHash, Scope: "global", Capacity: 8, Error: "EPERM"},
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
