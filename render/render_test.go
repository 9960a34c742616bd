package render

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/history"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func u(v uint64) *uint64 { return &v }

// Fixtures shaped like what each backend reports.
func ebpfFixture() dataplane.ResourceReport {
	return dataplane.ResourceReport{
		Mode: dataplane.ModeEBPF, Generation: 2, Took: 143 * time.Microsecond,
		Resources: []dataplane.Resource{
			{Name: "sessions", Kind: dataplane.KindLRUHash, Scope: "global", Capacity: 1048576, Used: u(943718), Method: dataplane.MethodKfunc, KeySize: 40, ValueSize: 32},
			{Name: "policy_rules", Kind: dataplane.KindArray, Scope: "global", Capacity: 4096},
			{Name: "counters", Kind: dataplane.KindPerCPUArray, Scope: "global", Capacity: 32},
			{Name: "egress", Kind: dataplane.KindDevMap, Scope: "global", Capacity: 64},
			{Name: "zone_of_ifindex", Kind: dataplane.KindHash, Scope: "global", Capacity: 1024, Used: u(840), Method: dataplane.MethodBatch},
			{Name: "mirror_config", Kind: dataplane.KindHash, Scope: "global", Capacity: 64, Error: "count: operation not permitted"},
			{Name: "walked", Kind: dataplane.KindHash, Scope: "global", Capacity: 100, Used: u(12), Method: dataplane.MethodWalk, Partial: true},
		},
		Counters: []dataplane.Counter{{Name: "forwarded", Scope: "global", Value: 123456}, {Name: "drop_policy", Scope: "global", Value: 42}},
		Sessions: &dataplane.SessionCounts{IPv4: 900000, IPv6: 43718, Total: 943718},
	}
}

func userspaceFixture() dataplane.ResourceReport {
	return dataplane.ResourceReport{
		Mode: dataplane.ModeUserspace, Generation: 1, Took: 9 * time.Microsecond,
		Resources: []dataplane.Resource{
			{Name: "umem_frames", Kind: dataplane.KindUMEM, Scope: "all bindings", Capacity: 16384, Used: u(8300), Method: dataplane.MethodCounter},
			{Name: "session_table", Kind: dataplane.KindTable, Scope: "64 shards", Capacity: 65536, Used: u(1200), Method: dataplane.MethodCounter},
			{Name: "flow_cache", Kind: dataplane.KindCache, Scope: "2 workers", Capacity: 8192, Used: u(7400), Method: dataplane.MethodCounter},
			{Name: "neighbors", Kind: dataplane.KindTable, Scope: "global", Capacity: 4096, Used: u(3)},
			{Name: "worker_queue", Kind: dataplane.KindQueue, Scope: "all workers", Used: u(17)},
			{Name: "umem_frames", Kind: dataplane.KindUMEM, Scope: "fw-c/q0", Detail: true, Capacity: 8192, Used: u(7500),
				Breakdown: []dataplane.Part{{Name: "free", Value: 692}, {Name: "fill", Value: 4096}, {Name: "rx", Value: 3000}, {Name: "tx", Value: 400}, {Name: "completion", Value: 4}}},
			{Name: "umem_frames", Kind: dataplane.KindUMEM, Scope: "fw-s/q0", Detail: true, Capacity: 8192, Used: u(800)},
			{Name: "fill_ring_empty", Kind: dataplane.KindRing, Scope: "fw-c/q0", Detail: true, Capacity: 4096, Used: u(4096), Method: dataplane.MethodRing},
			{Name: "session_shard", Kind: dataplane.KindTable, Scope: "shard 7", Detail: true, Capacity: 1024, Used: u(30)},
			{Name: "sessions_fullest_shard", Kind: dataplane.KindTable, Scope: "global", Detail: true, Capacity: 1024, Used: u(30),
				Figures: []dataplane.Figure{{Name: "shard", Value: 7}, {Name: "max_skew", Value: 1.5}}},
		},
		Counters: []dataplane.Counter{{Name: "rx_fill_ring_empty_descs", Scope: "fw-c/q0", Detail: true, Value: 5}, {Name: "tx_ring_full", Scope: "global", Value: 0}},
		Sessions: &dataplane.SessionCounts{IPv4: 1000, IPv6: 200, Total: 1200},
	}
}

func TestGolden(t *testing.T) {
	noSessions := ebpfFixture()
	noSessions.Sessions = nil
	th := dataplane.Thresholds{Warning: 50, Critical: 95}
	tests := []struct {
		name string
		r    dataplane.ResourceReport
		opts *Options
	}{
		{"ebpf", ebpfFixture(), nil},
		{"ebpf_detail", ebpfFixture(), &Options{Detail: true}},
		{"userspace", userspaceFixture(), nil},
		{"userspace_detail", userspaceFixture(), &Options{Detail: true}},
		{"missing_sessions", noSessions, nil},
		{"custom_thresholds", userspaceFixture(), &Options{Thresholds: th}},
		{"trends", userspaceFixture(), &Options{Trends: trendFixture()}},
		{"many_hot_detail_rows", manyHot(), &Options{MaxHot: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := String(tt.r, tt.opts)
			path := filepath.Join("testdata", tt.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./render -update)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("render (-want +got):\n%s", diff)
			}
		})
	}
}

func f(v float64) *float64 { return &v }

func trendFixture() []history.Trend {
	return []history.Trend{
		{Name: "session_table", Scope: "64 shards", PerMinute: f(1200), FullInSeconds: f(3217), Estimate: history.EstimateRising},
		{Name: "flow_cache", Scope: "2 workers", PerMinute: f(-3.04), Estimate: history.EstimateFalling},
		{Name: "umem_frames", Scope: "all bindings", PerMinute: f(0.02), Estimate: history.EstimateFlat},
		{Name: "fill_ring_empty", Scope: "fw-c/q0", Detail: true, FullInSeconds: f(0), Estimate: history.EstimateFull},
		{Name: "neighbors", Scope: "global", Estimate: history.EstimateWarmingUp},
	}
}

// manyHot has one aggregate row and five critical detail rows.
func manyHot() dataplane.ResourceReport {
	r := dataplane.ResourceReport{Mode: dataplane.ModeUserspace, Generation: 1,
		Resources: []dataplane.Resource{{Name: "umem_frames", Kind: dataplane.KindUMEM, Scope: "global", Capacity: 4096, Used: u(100)}}}
	for i := range 5 {
		r.Resources = append(r.Resources, dataplane.Resource{Name: "fill_ring_empty", Kind: dataplane.KindRing,
			Scope: "fw/q" + string(rune('0'+i)), Detail: true, Capacity: 100, Used: u(uint64(91 + i))})
	}
	return r
}

// The default view must not say all is well while a detail row is
// critical (issue 14): the row is listed and counted.
func TestDefaultViewFlagsCriticalDetailRow(t *testing.T) {
	r := dataplane.ResourceReport{Mode: dataplane.ModeUserspace, Resources: []dataplane.Resource{
		{Name: "umem_frames", Kind: dataplane.KindUMEM, Scope: "global", Capacity: 8192, Used: u(100)},
		{Name: "fill_ring_empty", Kind: dataplane.KindRing, Scope: "global", Capacity: 4096, Used: u(2048)},
		{Name: "fill_ring_empty", Kind: dataplane.KindRing, Scope: "fwc/q0", Detail: true, Capacity: 2048, Used: u(2040)},
		{Name: "fill_ring_empty", Kind: dataplane.KindRing, Scope: "fws/q0", Detail: true, Capacity: 2048, Used: u(8)},
	}}
	out := String(r, nil)
	if strings.Contains(out, "No resource at or above the warning threshold") {
		t.Errorf("default view says all is well with a CRITICAL detail row:\n%s", out)
	}
	if !strings.Contains(out, "1 resource at high utilisation (1 critical, 0 warning; 1 in detail rows).") {
		t.Errorf("summary does not count the detail row:\n%s", out)
	}
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "fwc/q0") {
			line = l
		}
	}
	if !strings.HasSuffix(line, "CRITICAL") {
		t.Errorf("the critical detail row is not listed as CRITICAL (line %q):\n%s", line, out)
	}
	if strings.Contains(out, "fws/q0") {
		t.Errorf("a detail row at OK is listed in the default view:\n%s", out)
	}
}

// TestNeverFalseNumbers checks the rules independently of the golden files.
func TestNeverFalseNumbers(t *testing.T) {
	tests := []struct {
		name                    string
		res                     dataplane.Resource
		cap_, used, pct, status string
	}{
		{"array", dataplane.Resource{Kind: dataplane.KindArray, Capacity: 16}, "16", "n/a", "-", "-"},
		{"count failed", dataplane.Resource{Capacity: 16, Error: "EPERM"}, "16", "unavailable", "-", "-"},
		{"real zero", dataplane.Resource{Capacity: 16, Used: u(0)}, "16", "0", "0.0%", "OK"},
		{"no capacity", dataplane.Resource{Used: u(5)}, "-", "5", "-", "-"},
		{"partial walk", dataplane.Resource{Capacity: 10, Used: u(9), Partial: true}, "10", ">=9", "90.0%", "CRITICAL"},
		{"80 warns", dataplane.Resource{Capacity: 10, Used: u(8)}, "10", "8", "80.0%", "WARNING"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, us, p, s := Cells(tt.res, dataplane.Thresholds{})
			if diff := cmp.Diff([]string{tt.cap_, tt.used, tt.pct, tt.status}, []string{c, us, p, s}); diff != "" {
				t.Errorf("cells (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDetailSortedByUtilization(t *testing.T) {
	out := String(userspaceFixture(), &Options{Detail: true})
	_, detail, ok := strings.Cut(out, "Detail")
	if !ok {
		t.Fatal("no detail section")
	}
	order := []string{"fill_ring_empty", "fw-c/q0", "fw-s/q0", "shard 7"}
	last := -1
	for _, s := range order {
		i := strings.Index(detail, s)
		if i < 0 || i < last {
			t.Fatalf("detail rows out of order (want %v):\n%s", order, detail)
		}
		last = i
	}
}

func TestFixturesAreJSONStable(t *testing.T) {
	// The CLI's --json prints the report itself; the renderer must give
	// the same table for a report that went through JSON.
	for _, r := range []dataplane.ResourceReport{ebpfFixture(), userspaceFixture()} {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var back dataplane.ResourceReport
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(String(r, &Options{Detail: true}), String(back, &Options{Detail: true})); diff != "" {
			t.Errorf("render after JSON differs:\n%s", diff)
		}
	}
}
