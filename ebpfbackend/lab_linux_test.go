package ebpfbackend

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/mapcount"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
)

const (
	portTCP    = 8080
	portUDP    = 5353
	portDenied = 9999
)

// netlabConfig attaches XDP: the tests that use it are about xdp_fw (its
// mirror stage, generic mode, counters at line rate); the TC path has
// tests of its own on kernel-default veths.
func netlabConfig(l *netlab.Lab) *dataplane.Config {
	return &dataplane.Config{
		Interfaces: []dataplane.Interface{{Name: l.FwClientIf, Zone: "clients", Attach: dataplane.AttachXDP}, {Name: l.FwServerIf, Zone: "servers", Attach: dataplane.AttachXDP}},
		Zones:      []dataplane.Zone{{Name: "clients"}, {Name: "servers"}},
		Policies: []dataplane.Policy{
			{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoTCP, DestinationPorts: []dataplane.PortRange{{First: portTCP, Last: portTCP}}, Action: dataplane.ActionAllow},
			{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoUDP, DestinationPorts: []dataplane.PortRange{{First: portUDP, Last: portUDP}}, Action: dataplane.ActionAllow},
			// No servers -> clients policy: replies must ride the sessions.
		},
	}
}

// newNetlab builds the client/firewall/server lab with echo servers on
// every test port, v4 and v6, and a backend in the firewall namespace.
func newNetlab(t testing.TB, opts *Options) (*netlab.Lab, *Backend) {
	t.Helper()
	l, b, _ := newNetlabSink(t, opts, 0)
	return l, b
}

// newNetlabSink is newNetlab whose server-side counter drops (and counts)
// UDP to sinkPort, so a flood never reaches the server's stack; 0 passes
// everything.
func newNetlabSink(t testing.TB, opts *Options, sinkPort uint16) (*netlab.Lab, *Backend, *netlab.Counter) {
	t.Helper()
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	l := netlab.NewT(t, nil)
	ctx := context.Background()
	var sink *netlab.Counter
	if err := l.ResolveNeighbors(ctx); err != nil {
		t.Fatalf("resolve neighbours: %v", err)
	}
	if err := l.Client.Do(func() error { return disableTxChecksum(l.ClientIf) }); err != nil {
		t.Fatal(err)
	}
	if err := l.Server.Do(func() error { return disableTxChecksum(l.ServerIf) }); err != nil {
		t.Fatal(err)
	}
	// The kernel redirects into a veth end only while it advertises
	// ndo-xmit. netlab turns the peers' GRO on before the links are up,
	// which does not set it (see capability.ChooseAttach); an XDP program
	// on the peer does, so each end gets netlab's pass-through counter.
	for _, end := range []struct {
		ns    *netlab.NS
		iface string
		opts  *netlab.CounterOptions
	}{{l.Client, l.ClientIf, nil}, {l.Server, l.ServerIf, &netlab.CounterOptions{Proto: 17, DstPort: sinkPort, Drop: true}}} {
		if sinkPort == 0 {
			end.opts = nil
		}
		c, err := netlab.AttachCounter(end.ns, end.iface, end.opts)
		if err != nil {
			t.Fatalf("attach counter to %s: %v", end.iface, err)
		}
		t.Cleanup(func() { c.Close() })
		sink = c
	}
	for _, a := range []netip.Addr{l.ServerAddr4, l.ServerAddr6} {
		for _, p := range []uint16{portUDP, portDenied} {
			stop, err := netlab.UDPEcho(ctx, l.Server, netip.AddrPortFrom(a, p))
			if err != nil {
				t.Fatalf("udp echo: %v", err)
			}
			t.Cleanup(stop)
		}
		stop, err := netlab.TCPEcho(ctx, l.Server, netip.AddrPortFrom(a, portTCP))
		if err != nil {
			t.Fatalf("tcp echo: %v", err)
		}
		t.Cleanup(stop)
	}
	o := Options{NetNS: l.Firewall.Path}
	if opts != nil {
		o = *opts
		o.NetNS = l.Firewall.Path
	}
	b, err := New(ctx, &o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	if _, err := b.Apply(ctx, netlabConfig(l)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return l, b, sink
}

func udpRT(l *netlab.Lab, srcPort uint16, dst netip.Addr, dport uint16, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	payload := []byte(fmt.Sprintf("hello %d", srcPort))
	got, err := netlab.UDPRoundTrip(ctx, l.Client, netip.AddrPortFrom(netip.Addr{}, srcPort), netip.AddrPortFrom(dst, dport), payload)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo returned %q, want %q", got, payload)
	}
	return nil
}

func tcpRT(l *netlab.Lab, dst netip.Addr, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	payload := bytes.Repeat([]byte("x"), 3000) // several segments each way
	got, err := netlab.TCPRoundTrip(ctx, l.Client, netip.AddrPort{}, netip.AddrPortFrom(dst, portTCP), payload)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo returned %d bytes, want %d", len(got), len(payload))
	}
	return nil
}

func counter(t testing.TB, b *Backend, name string) uint64 {
	t.Helper()
	rep, err := b.ResourceStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	v, ok := rep.Counter(name, "global")
	if !ok {
		t.Fatalf("no counter %s", name)
	}
	return v
}

// TestIntegrationSessionCounts: after N distinct flows the sessions
// resource equals what the program holds, for every count method, and
// equals a Map.Iterate count.
func TestIntegrationSessionCounts(t *testing.T) {
	const flows = 40
	for _, m := range []mapcount.Method{mapcount.MethodWalk, mapcount.MethodBatch, mapcount.MethodKfunc} {
		t.Run(string(m), func(t *testing.T) {
			l, b := newNetlab(t, &Options{CountMethod: m})
			for i := range flows {
				dst := l.ServerAddr4
				if i%4 == 3 {
					dst = l.ServerAddr6
				}
				if err := udpRT(l, uint16(20000+i), dst, portUDP, 3*time.Second); err != nil {
					t.Fatalf("flow %d: %v", i, err)
				}
			}
			rep, err := b.ResourceStats(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			iter := func(mp *ebpf.Map) uint64 {
				var n uint64
				var k, v []byte
				it := mp.Iterate()
				for it.Next(&k, &v) {
					n++
				}
				if err := it.Err(); err != nil {
					t.Fatal(err)
				}
				return n
			}
			want := map[string]uint64{"fw_sessions_v4": flows * 3 / 4, "fw_sessions_v6": flows / 4}
			held := map[string]uint64{"fw_sessions_v4": iter(b.objs.FwSessionsV4), "fw_sessions_v6": iter(b.objs.FwSessionsV6)}
			for name, w := range want {
				r, ok := rep.Find(name, "global")
				if !ok || r.Used == nil {
					t.Fatalf("%s: no count (%+v)", name, r)
				}
				if *r.Used != w || held[name] != w || r.Method != string(m) || r.Partial {
					t.Errorf("%s: used %d by %q (partial %v), Map.Iterate %d; want %d by %q", name, *r.Used, r.Method, r.Partial, held[name], w, m)
				}
			}
			if rep.Sessions == nil || rep.Sessions.IPv4 != flows*3/4 || rep.Sessions.IPv6 != flows/4 || rep.Sessions.Total != flows {
				t.Errorf("sessions = %+v, want %d flows", rep.Sessions, flows)
			}
		})
	}
}

// TestIntegrationCloseLeavesNothing: after Close no XDP program is attached
// to any lab interface (netlink) and no bpf_link of ours exists.
func TestIntegrationCloseLeavesNothing(t *testing.T) {
	l, b := newNetlab(t, nil)
	info, err := b.objs.XdpFw.Info()
	if err != nil {
		t.Fatal(err)
	}
	progID, ok := info.ID()
	if !ok {
		t.Fatal("program has no ID")
	}
	ours := func() int {
		n := 0
		var it link.Iterator
		defer it.Close()
		for it.Next() {
			li, err := it.Link.Info()
			if err == nil && li.Program == progID {
				n++
			}
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := ours(); n != 2 {
		t.Fatalf("%d links of ours before Close, want 2", n)
	}
	assertAttached(t, l.Firewall.Path, map[string]bool{l.FwClientIf: true, l.FwServerIf: true})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	assertAttached(t, l.Firewall.Path, map[string]bool{l.FwClientIf: false, l.FwServerIf: false})
	if n := ours(); n != 0 {
		t.Errorf("%d links of ours after Close", n)
	}
	// Nothing is pinned by design; make sure no map or program name of
	// ours turned up in bpffs.
	if pins, _ := filepath.Glob("/sys/fs/bpf/fw_*"); len(pins) != 0 {
		t.Errorf("pinned objects left: %v", pins)
	}
	// With the program gone the kernel forwards again, unfiltered: the lab
	// is back to its baseline.
	if err := udpRT(l, 0, l.ServerAddr4, portDenied, 3*time.Second); err != nil {
		t.Errorf("kernel forwarding after Close: %v", err)
	}
}
