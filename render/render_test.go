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
