package fwplane

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/ebpfbackend"
	"github.com/fwplane/fwplane/internal/dptest"
	"github.com/fwplane/fwplane/internal/testutil"
)

// mapsWithMaxEntries counts the BPF maps on the host with max_entries n.
func mapsWithMaxEntries(t *testing.T, n uint32) int {
	t.Helper()
	found := 0
	var id ebpf.MapID
	for {
		next, err := ebpf.MapGetNextID(id)
		if err != nil {
			return found // ENOENT: the end
		}
		id = next
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue // gone meanwhile
		}
		if m.MaxEntries() == n {
			found++
		}
		m.Close()
	}
}

// TestIntegrationOpenOverBudget: tables.sessions at the validator's
// maximum is refused by Open on this host, with the real probe and the
// real backends, in under a second and with the figures; no map of that
// size is created (the kernel needed about 13 GB and a minute before it
// failed, when the gate let it through).
func TestIntegrationOpenOverBudget(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	l := dptest.NewLab(t, nil)
	cfg := dptest.Base(l)
	cfg.Tables.Sessions = dataplane.MaxTableEntries
	before := mapsWithMaxEntries(t, dataplane.MaxTableEntries)
	start := time.Now()
	// A stated budget (the default is half the host's memory): on a host
	// with more than twice what the table needs, the default would admit
	// it, and this test would allocate it.
	_, res, err := Open(context.Background(), cfg, &Options{NetNS: l.Firewall.Path, MemoryBudget: 4 << 30})
	took := time.Since(start)
	if !errors.Is(err, dataplane.ErrNotSupported) || res.Mode != "" {
		t.Fatalf("Open = %v (mode %q), want a refusal", err, res.Mode)
	}
	if took > time.Second {
		t.Errorf("refused after %v, want under a second", took)
	}
	for _, want := range []string{"ebpf: memory: the config needs", "over the budget of", "largest part fw_sessions_v", "userspace: tables.sessions: 67108864 entries"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if after := mapsWithMaxEntries(t, dataplane.MaxTableEntries); after != before {
		t.Errorf("%d map(s) of %d entries appeared", after-before, dataplane.MaxTableEntries)
	}
	t.Logf("refused in %v:\n%s", took, res.Explain())
}

// TestIntegrationOpenManyPolicies: 100 000 policies exceed what the eBPF
// datapath evaluates per zone pair; auto takes the userspace backend, and
// traffic is decided by the right ones of them.
func TestIntegrationOpenManyPolicies(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	l := dptest.NewLab(t, nil)
	cfg := dptest.Base(l)
	const n = 100_000
	cfg.Policies = make([]dataplane.Policy, 0, n)
	for i := range n {
		// Allow-alls for sources that are not the client: any matcher that
		// ignored the sources would let everything through at policy 0.
		src := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		cfg.Policies = append(cfg.Policies, dataplane.Policy{FromZone: "clients", ToZone: "servers",
			Sources: []string{src.String() + "/32"}, Action: dataplane.ActionAllow})
	}
	client := l.ClientAddr4.String()
	cfg.Policies[50_000] = dataplane.Policy{Name: "deny 9999", FromZone: "clients", ToZone: "servers", Sources: []string{client},
		Protocol: dataplane.ProtoUDP, DestinationPorts: []dataplane.PortRange{{First: dptest.PortDenied, Last: dptest.PortDenied}}, Action: dataplane.ActionDeny}
	cfg.Policies[99_990] = dataplane.Policy{Name: "udp", FromZone: "clients", ToZone: "servers", Sources: []string{client},
		Protocol: dataplane.ProtoUDP, Action: dataplane.ActionAllow}
	cfg.Policies[n-1] = dataplane.Policy{Name: "tcp 8080", FromZone: "clients", ToZone: "servers", Sources: []string{client},
		Protocol: dataplane.ProtoTCP, DestinationPorts: []dataplane.PortRange{{First: dptest.PortTCP, Last: dptest.PortTCP}}, Action: dataplane.ActionAllow}

	start := time.Now()
	dp, res, err := Open(context.Background(), cfg, &Options{NetNS: l.Firewall.Path})
	if err != nil {
		t.Fatalf("Open: %v\n%s", err, res.Explain())
	}
	t.Cleanup(func() { dp.Close() })
	t.Logf("Open with %d policies took %v", n, time.Since(start))
	if dp.Mode() != dataplane.ModeUserspace || !res.FellBack {
		t.Errorf("running %s (fell back %v), want userspace", dp.Mode(), res.FellBack)
	}
	// The gate refused the eBPF backend from its declared limits, before
	// building it (not "apply refused").
	if v, _ := res.Verdict(dataplane.ModeEBPF); len(v.Reasons) == 0 || !strings.HasPrefix(v.Reasons[0], "policies: zone pair clients -> servers expands to 100000 terms") {
		t.Errorf("eBPF verdict: %+v, want the gate's refusal with the figures", v)
	}
	dptest.Expect(t,
		dptest.Flow{Name: "udp 5353: allowed by policy 99990", Want: dptest.Answered, Run: func() dptest.Probe {
			return dptest.UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, dptest.PortUDP), dptest.UDPOptions{})
		}},
		dptest.Flow{Name: "udp 9999: denied by policy 50000", Want: dptest.Silent, Run: func() dptest.Probe {
			return dptest.UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, dptest.PortDenied), dptest.UDPOptions{Timeout: dptest.Silence})
		}},
		dptest.Flow{Name: "udp6: no policy (every source is IPv4)", Want: dptest.Silent, Run: func() dptest.Probe {
			return dptest.UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr6, dptest.PortUDP), dptest.UDPOptions{Timeout: dptest.Silence})
		}},
		dptest.Flow{Name: "tcp 8080: allowed by the last policy", Want: dptest.Answered, Run: func() dptest.Probe {
			if err := dptest.TCP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, dptest.PortTCP), 3*time.Second); err != nil {
				return dptest.Probe{Outcome: dptest.Failed, Err: err}
			}
			return dptest.Probe{Outcome: dptest.Answered}
		}},
	)
}

// TestIntegrationOpenApplyRefusalFallsBack: the eBPF backend, told through
// Options.EBPF to attach in generic mode, refuses to mirror (no metadata
// on generic redirects) at Apply, which the gate cannot see; Open then
// runs the userspace backend, which mirrors, and the decision says why.
func TestIntegrationOpenApplyRefusalFallsBack(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	l := dptest.NewLab(t, nil)
	cfg := dptest.Base(l)
	cfg.PortMirroring = []dataplane.MirrorRule{{Input: l.FwClientIf, Output: l.FwSinkIf}}
	// XDP forced (the lab's veths allow it; the gate would pick TC, where
	// mirroring works), and generic by the backend's options.
	for i := range cfg.Interfaces {
		cfg.Interfaces[i].Attach = dataplane.AttachXDP
	}
	dp, res, err := Open(context.Background(), cfg, &Options{NetNS: l.Firewall.Path,
		EBPF: &ebpfbackend.Options{ForceGenericXDP: true}})
	if err != nil {
		t.Fatalf("Open: %v\n%s", err, res.Explain())
	}
	t.Cleanup(func() { dp.Close() })
	ex := res.Explain()
	if dp.Mode() != dataplane.ModeUserspace || !res.FellBack || !strings.Contains(ex, "apply refused: ") ||
		!strings.Contains(ex, "generic") || !strings.Contains(ex, "chosen after Apply refused the config on the ebpf backend") {
		t.Errorf("running %s (fell back %v); want userspace after the eBPF refusal, explained:\n%s", dp.Mode(), res.FellBack, ex)
	}
	if p := dptest.UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, dptest.PortUDP), dptest.UDPOptions{}); p.Outcome != dptest.Answered {
		t.Errorf("udp through the userspace backend: %s", p)
	}
	// Strict eBPF: the refusal is the answer.
	dp.Close()
	_, res, err = Open(context.Background(), cfg, &Options{NetNS: l.Firewall.Path, Backend: capability.PreferEBPF, Strict: true,
		EBPF: &ebpfbackend.Options{ForceGenericXDP: true}})
	if !errors.Is(err, dataplane.ErrNotSupported) || res.Mode != "" {
		t.Errorf("strict ebpf: %v (mode %q), want the refusal", err, res.Mode)
	}
	if err := l.Firewall.Do(func() error { return checkNoXDP(l.FwClientIf, l.FwServerIf, l.FwSinkIf) }); err != nil {
		t.Error(err)
	}
}
