package capability

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/fwplane/fwplane/dataplane"
)

// perSession is a synthetic memory function: bytes per session slot.
func perSession(bytes uint64) MemoryFunc {
	return func(cfg *dataplane.Config, _ *Host) (dataplane.MemoryCost, error) {
		n := uint64(cfg.Tables.SessionsOrDefault())
		return dataplane.MemoryCost{Parts: []dataplane.MemoryPart{
			{Name: "sessions", Bytes: n * bytes, Detail: fmt.Sprintf("%d x %d B", n, bytes)},
			{Name: "fixed", Bytes: 1 << 20},
		}}, nil
	}
}

func TestDecideMemoryBudget(t *testing.T) {
	eb, us := ebpfDecl, userDecl
	eb.Limits = dataplane.Limits{PolicyTermsPerZonePair: 256}
	eb.Memory = perSession(360)
	us.Limits = dataplane.Limits{}
	us.Memory = perSession(100)
	host := fullHost()
	host.MemoryBytes = 24 << 30

	big := baseCfg()
	big.Tables.Sessions = dataplane.MaxTableEntries // 67108864: 22.5 GiB on "ebpf", 6.25 GiB on "userspace"
	d, err := Decide(big, host, []Backend{eb, us}, Request{})
	if err != nil {
		t.Fatalf("Decide: %v\n%s", err, d.Explain())
	}
	if d.Mode != dataplane.ModeUserspace || !d.FellBack {
		t.Errorf("auto chose %q (fell back %v), want userspace, the backend that fits\n%s", d.Mode, d.FellBack, d.Explain())
	}
	v, _ := d.Verdict(dataplane.ModeEBPF)
	want := "memory: the config needs 22.5 GiB on the ebpf backend, over the budget of 12.0 GiB (50 % of the host's 24.0 GiB); largest part sessions: 22.5 GiB (67108864 x 360 B)"
	if len(v.Reasons) != 1 || v.Reasons[0] != want {
		t.Errorf("ebpf reasons %q, want %q", v.Reasons, want)
	}
	if u, _ := d.Verdict(dataplane.ModeUserspace); len(u.Notes) == 0 || !strings.Contains(strings.Join(u.Notes, "\n"), "memory: 6.3 GiB of a 12.0 GiB budget") {
		t.Errorf("userspace notes lack the cost: %q", u.Notes)
	}

	// A smaller budget refuses both, with the figures; a larger one
	// admits eBPF again.
	_, err = Decide(big, host, []Backend{eb, us}, Request{MemoryBudget: 1 << 30})
	var nse *dataplane.NotSupportedError
	if !errors.As(err, &nse) || len(nse.Reasons) != 2 || !strings.Contains(nse.Reasons[1], "over the budget of 1.0 GiB (the requested budget)") {
		t.Errorf("1 GiB budget: %v, want both refused with the figures", err)
	}
	if d, err := Decide(big, host, []Backend{eb, us}, Request{MemoryBudget: 30 << 30}); err != nil || d.Mode != dataplane.ModeEBPF {
		t.Errorf("30 GiB budget: %q, %v; want ebpf", d.Mode, err)
	}
	// Unknown host memory and no budget: no refusal, a note.
	host.MemoryBytes = 0
	d, err = Decide(big, host, []Backend{eb, us}, Request{})
	if err != nil || d.Mode != dataplane.ModeEBPF {
		t.Fatalf("unknown memory: %q, %v", d.Mode, err)
	}
	if v, _ := d.Verdict(dataplane.ModeEBPF); !strings.Contains(strings.Join(v.Notes, "\n"), "host memory unknown") {
		t.Errorf("no note on the unknown budget: %q", v.Notes)
	}
	// A failing estimate is a note, not a refusal.
	eb.Memory = func(*dataplane.Config, *Host) (dataplane.MemoryCost, error) {
		return dataplane.MemoryCost{}, errors.New("no spec")
	}
	if d, err := Decide(big, host, []Backend{eb, us}, Request{}); err != nil || d.Mode != dataplane.ModeEBPF {
		t.Errorf("estimate error: %q, %v", d.Mode, err)
	}
}

func TestDecideLimits(t *testing.T) {
	eb, us := ebpfDecl, userDecl
	eb.Limits = dataplane.Limits{PolicyTermsPerZonePair: 256, PolicyTerms: 4096, Zones: 63}
	us.Limits = dataplane.Limits{}
	cfg := baseCfg()
	for i := range 1000 {
		cfg.Policies = append(cfg.Policies, dataplane.Policy{FromZone: "in", ToZone: "out", Protocol: dataplane.ProtoUDP,
			DestinationPorts: []dataplane.PortRange{{First: uint16(1000 + i), Last: uint16(1000 + i)}}, Action: dataplane.ActionAllow})
	}
	d, err := Decide(cfg, fullHost(), []Backend{eb, us}, Request{})
	if err != nil || d.Mode != dataplane.ModeUserspace || !d.FellBack {
		t.Fatalf("1001 policies: %q (fell back %v), %v; want userspace", d.Mode, d.FellBack, err)
	}
	v, _ := d.Verdict(dataplane.ModeEBPF)
	if len(v.Reasons) != 1 || !strings.Contains(v.Reasons[0], "zone pair in -> out expands to 1001 terms") || !strings.Contains(v.Reasons[0], "at most 256 per zone pair") {
		t.Errorf("ebpf reasons %q", v.Reasons)
	}
	if !strings.Contains(d.Explain(), "expands to 1001 terms") {
		t.Errorf("Explain lacks the limit:\n%s", d.Explain())
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 12 << 30: "12.0 GiB", 3 << 40: "3.0 TiB"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
