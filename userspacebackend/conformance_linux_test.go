package userspacebackend

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/ebpfbackend"
	"github.com/fwplane/fwplane/internal/netlab"
)

// conformanceFlow is one probe: a round trip that succeeds when the flow
// and its replies are forwarded.
type conformanceFlow struct {
	name string
	run  func(l *netlab.Lab) error
}

func conformanceFlows() []conformanceFlow {
	const short = 400 * time.Millisecond
	unrouted4 := netip.MustParseAddr("203.0.113.7")
	unrouted6 := netip.MustParseAddr("2001:db8:dead::7")
	return []conformanceFlow{
		{"udp4 allowed", func(l *netlab.Lab) error { return udpRT(l, 0, l.ServerAddr4, portUDP, 3*time.Second) }},
		{"udp6 allowed", func(l *netlab.Lab) error { return udpRT(l, 0, l.ServerAddr6, portUDP, 3*time.Second) }},
		{"tcp4 allowed", func(l *netlab.Lab) error { return tcpRT(l, l.ServerAddr4, 3*time.Second) }},
		{"tcp6 allowed", func(l *netlab.Lab) error { return tcpRT(l, l.ServerAddr6, 3*time.Second) }},
		{"udp4 denied port", func(l *netlab.Lab) error { return udpRT(l, 0, l.ServerAddr4, portDenied, short) }},
		{"udp6 denied port", func(l *netlab.Lab) error { return udpRT(l, 0, l.ServerAddr6, portDenied, short) }},
		{"udp4 reverse without policy", func(l *netlab.Lab) error {
			ctx, cancel := context.WithTimeout(context.Background(), short)
			defer cancel()
			stop, err := netlab.UDPEcho(context.Background(), l.Client, netip.AddrPortFrom(l.ClientAddr4, portUDP))
			if err != nil {
				return err
			}
			defer stop()
			_, err = netlab.UDPRoundTrip(ctx, l.Server, netip.AddrPort{}, netip.AddrPortFrom(l.ClientAddr4, portUDP), []byte("x"))
			return err
		}},
		{"udp4 unrouted", func(l *netlab.Lab) error { return udpRT(l, 0, unrouted4, portUDP, short) }},
		{"udp6 unrouted", func(l *netlab.Lab) error { return udpRT(l, 0, unrouted6, portUDP, short) }},
		{"udp4 to the firewall itself", func(l *netlab.Lab) error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			stop, err := netlab.UDPEcho(ctx, l.Firewall, netip.AddrPortFrom(l.FwClientAddr4, 7001))
			if err != nil {
				return err
			}
			defer stop()
			_, err = netlab.UDPRoundTrip(ctx, l.Client, netip.AddrPort{}, netip.AddrPortFrom(l.FwClientAddr4, 7001), []byte("me"))
			return err
		}},
	}
}

// TestConformance runs identical traffic through the eBPF backend and this
// one, one after the other on the same lab and config, and compares the
// outcome of every flow (forwarded both ways or not) and the drop
// accounting for the denied and unrouted flows.
func TestConformance(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	// The unrouted destinations: the client sends everything to the
	// firewall (default routes); the firewall has no route for them.
	flows := conformanceFlows()
	run := func(dp dataplane.DataPlane) (map[string]bool, map[string]uint64) {
		out := map[string]bool{}
		before := dropCounters(t, dp)
		for _, f := range flows {
			out[f.name] = f.run(l) == nil
		}
		after := dropCounters(t, dp)
		delta := map[string]uint64{}
		for k, v := range after {
			delta[k] = v - before[k]
		}
		return out, delta
	}

	eb, err := ebpfbackend.New(context.Background(), &ebpfbackend.Options{NetNS: l.Firewall.Path})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eb.Apply(context.Background(), netlabConfig(l)); err != nil {
		eb.Close()
		t.Fatalf("ebpf Apply: %v", err)
	}
	ebpfOut, ebpfDrops := run(eb)
	if err := eb.Close(); err != nil {
		t.Fatal(err)
	}

	ub := newBackend(t, e, nil, nil)
	usOut, usDrops := run(ub)

	if diff := cmp.Diff(ebpfOut, usOut); diff != "" {
		t.Errorf("per-flow outcomes differ (-ebpf +userspace):\n%s", diff)
	}
	want := map[string]bool{
		"udp4 allowed": true, "udp6 allowed": true, "tcp4 allowed": true, "tcp6 allowed": true,
		"udp4 denied port": false, "udp6 denied port": false, "udp4 reverse without policy": false,
		"udp4 unrouted": false, "udp6 unrouted": false, "udp4 to the firewall itself": true,
	}
	if diff := cmp.Diff(want, usOut); diff != "" {
		t.Errorf("userspace outcomes (-want +got):\n%s", diff)
	}
	if ebpfDrops["dropped_policy"] != usDrops["dropped_policy"] {
		t.Errorf("dropped_policy: ebpf counted %d, userspace %d", ebpfDrops["dropped_policy"], usDrops["dropped_policy"])
	}
	// Unrouted: bpf_fib_lookup answers "not forwarded" for a destination
	// without a route, so the eBPF backend passes the packet to the kernel
	// (which drops it and may answer ICMP unreachable); this backend drops
	// it itself. Same verdict, different counter.
	if usDrops["dropped_no_route"] < 2 {
		t.Errorf("userspace dropped_no_route rose by %d, want >= 2", usDrops["dropped_no_route"])
	}
	t.Logf("drops: ebpf %v, userspace %v", ebpfDrops, usDrops)
}

func dropCounters(t testing.TB, dp dataplane.DataPlane) map[string]uint64 {
	t.Helper()
	rep, err := dp.ResourceStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, n := range []string{"dropped_policy", "dropped_no_route", "forwarded"} {
		out[n], _ = rep.Counter(n, "global")
	}
	return out
}
