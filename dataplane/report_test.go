package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestUtilizationAndLevels(t *testing.T) {
	tests := []struct {
		name    string
		r       Resource
		th      Thresholds
		wantPct float64
		wantOK  bool
		want    Level
	}{
		{"array has no utilisation", Resource{Kind: KindArray, Capacity: 256}, Thresholds{}, 0, false, LevelNone},
		{"no capacity", Resource{Kind: KindQueue, Used: Uint64(5)}, Thresholds{}, 0, false, LevelNone},
		{"empty hash is 0%", Resource{Capacity: 100, Used: Uint64(0)}, Thresholds{}, 0, true, LevelOK},
		{"79%", Resource{Capacity: 100, Used: Uint64(79)}, Thresholds{}, 79, true, LevelOK},
		{"80% warns", Resource{Capacity: 100, Used: Uint64(80)}, Thresholds{}, 80, true, LevelWarning},
		{"90% critical", Resource{Capacity: 1000, Used: Uint64(900)}, Thresholds{}, 90, true, LevelCritical},
		{"over capacity", Resource{Capacity: 10, Used: Uint64(12)}, Thresholds{}, 120, true, LevelCritical},
		{"custom thresholds", Resource{Capacity: 100, Used: Uint64(60)}, Thresholds{Warning: 50, Critical: 70}, 60, true, LevelWarning},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pct, ok := tt.r.Utilization()
			if pct != tt.wantPct || ok != tt.wantOK {
				t.Errorf("Utilization() = %v, %v; want %v, %v", pct, ok, tt.wantPct, tt.wantOK)
			}
			if got := tt.th.Level(tt.r); got != tt.want {
				t.Errorf("Level = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestReportJSON(t *testing.T) {
	r := ResourceReport{
		Mode: ModeEBPF, Generation: 3,
		Resources: []Resource{
			{Name: "sessions", Kind: KindLRUHash, Scope: "global", Capacity: 10, Used: Uint64(0), Method: MethodKfunc},
			{Name: "counters", Kind: KindPerCPUArray, Scope: "global", Capacity: 16},
			{Name: "umem", Kind: KindUMEM, Scope: "eth0/q0", Detail: true, Capacity: 4, Used: Uint64(3),
				Breakdown: []Part{{"free", 1}, {"fill", 3}}},
		},
		Counters: []Counter{{Name: "forwarded", Scope: "global", Value: 7}},
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back ResourceReport
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r, back); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	// A zero count is present in JSON; a missing count is absent (never a
	// false zero).
	var raw struct {
		Resources []map[string]any `json:"resources"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := raw.Resources[0]["used"]; !ok {
		t.Error("used=0 was dropped from JSON")
	}
	if _, ok := raw.Resources[1]["used"]; ok {
		t.Error("array row carries a used value")
	}
	if got := len(r.Aggregate()); got != 2 {
		t.Errorf("Aggregate() has %d rows, want 2", got)
	}
	if v, ok := r.Counter("forwarded", "global"); !ok || v != 7 {
		t.Errorf("Counter lookup = %d, %v", v, ok)
	}
	if _, ok := r.Find("umem", "eth0/q0"); !ok {
		t.Error("Find failed")
	}
}

func TestErrors(t *testing.T) {
	ns := fmt.Errorf("apply: %w", &NotSupportedError{What: "backend ebpf", Reasons: []string{"port_mirroring: not implemented"}})
	if !errors.Is(ns, ErrNotSupported) {
		t.Error("NotSupportedError does not match ErrNotSupported")
	}
	if got, want := ns.Error(), "apply: backend ebpf: not supported: port_mirroring: not implemented"; got != want {
		t.Errorf("got %q want %q", got, want)
	}
	var nse *NotSupportedError
	if !errors.As(ns, &nse) || len(nse.Reasons) != 1 {
		t.Error("errors.As failed")
	}
	ce := fmt.Errorf("load: %w", &ConfigError{Problems: []Problem{{"a", "b"}}})
	if !errors.Is(ce, ErrInvalidConfig) || errors.Is(ce, ErrNotSupported) {
		t.Error("ConfigError matching is wrong")
	}
	if got := (&ConfigError{Problems: []Problem{{"a", "b"}}}).Error(); got != "invalid config: 1 problem; a: b" {
		t.Errorf("got %q", got)
	}
}

type freshOnly struct {
	DataPlane
	rep ResourceReport
	err error
}

func (f freshOnly) ResourceStats(context.Context) (ResourceReport, error) { return f.rep, f.err }

// ReadResourceStats falls back to ResourceStats for a backend that cannot
// reuse a report, and leaves the report alone on error.
func TestReadResourceStatsFallback(t *testing.T) {
	var rep ResourceReport
	dp := freshOnly{rep: ResourceReport{Mode: ModeEBPF, Resources: []Resource{{Name: "m"}}}}
	if err := ReadResourceStats(context.Background(), dp, &rep); err != nil || rep.Mode != ModeEBPF || len(rep.Resources) != 1 {
		t.Fatalf("fallback: %+v, %v", rep, err)
	}
	dp.err = ErrClosed
	dp.rep = ResourceReport{Mode: ModeUserspace, Resources: make([]Resource, 2)}
	if err := ReadResourceStats(context.Background(), dp, &rep); !errors.Is(err, ErrClosed) || rep.Mode != ModeEBPF || len(rep.Resources) != 1 {
		t.Errorf("on error: %+v, %v", rep, err)
	}
}
