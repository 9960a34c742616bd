package userspacebackend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
)

const (
	portTCP    = 8080
	portUDP    = 5353
	portDenied = 9999
)

func netlabConfig(l *netlab.Lab) *dataplane.Config {
	return &dataplane.Config{
		Interfaces: []dataplane.Interface{{Name: l.FwClientIf, Zone: "clients"}, {Name: l.FwServerIf, Zone: "servers"}},
		Zones:      []dataplane.Zone{{Name: "clients"}, {Name: "servers"}},
		Policies: []dataplane.Policy{
			{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoTCP, DestinationPorts: []dataplane.PortRange{{First: portTCP, Last: portTCP}}, Action: dataplane.ActionAllow},
			{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoUDP, DestinationPorts: []dataplane.PortRange{{First: portUDP, Last: portUDP}}, Action: dataplane.ActionAllow},
			// No servers -> clients policy: replies must ride the sessions.
		},
	}
}

type labEnv struct {
	l          *netlab.Lab
	clientCnt  *netlab.Counter
	serverCnt  *netlab.Counter
	sinkPort   uint16
	stopEchoes []func()
}

// newLabEnv builds the client/firewall/server lab with resolved
// neighbours, pass-through counters on the client and server ends (a veth
// receives frames transmitted by AF_XDP on its peer only while it runs
// NAPI) and echo servers on every test port, v4 and v6. sinkPort != 0
// makes the server-side counter drop (and count) UDP to that port, so a
// flood never reaches the server's stack.
func newLabEnv(t testing.TB, sinkPort uint16) *labEnv {
	t.Helper()
	return newLabEnvWith(t, sinkPort, nil)
}

// newLabEnvWith is newLabEnv with lab options (e.g. a mirror sink).
func newLabEnvWith(t testing.TB, sinkPort uint16, lo *netlab.Options) *labEnv {
	t.Helper()
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	l := netlab.NewT(t, lo)
	ctx := context.Background()
	if err := l.ResolveNeighbors(ctx); err != nil {
		t.Fatalf("resolve neighbours: %v", err)
	}
	e := &labEnv{l: l, sinkPort: sinkPort}
	var err error
	if e.clientCnt, err = netlab.AttachCounter(l.Client, l.ClientIf, nil); err != nil {
		t.Fatalf("attach client counter: %v", err)
	}
	t.Cleanup(func() { e.clientCnt.Close() })
	var so *netlab.CounterOptions
	if sinkPort != 0 {
		so = &netlab.CounterOptions{Proto: 17, DstPort: sinkPort, Drop: true}
	}
	if e.serverCnt, err = netlab.AttachCounter(l.Server, l.ServerIf, so); err != nil {
		t.Fatalf("attach server counter: %v", err)
	}
	t.Cleanup(func() { e.serverCnt.Close() })
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
	return e
}

// newBackend starts a userspace backend in the lab's firewall namespace and
// applies cfg (netlabConfig when nil).
func newBackend(t testing.TB, e *labEnv, opts *Options, cfg *dataplane.Config) *Backend {
	t.Helper()
	o := Options{}
	if opts != nil {
		o = *opts
	}
	o.NetNS = e.l.Firewall.Path
	b, err := New(context.Background(), &o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	if cfg == nil {
		cfg = netlabConfig(e.l)
	}
	if _, err := b.Apply(context.Background(), cfg); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return b
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

func report(t testing.TB, b *Backend) dataplane.ResourceReport {
	t.Helper()
	rep, err := b.ResourceStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func counter(t testing.TB, b *Backend, name string) uint64 {
	t.Helper()
	v, ok := report(t, b).Counter(name, "global")
	if !ok {
		t.Fatalf("no counter %s", name)
	}
	return v
}

// checkUMEM asserts the UMEM invariant on every binding: the breakdown
// adds up to the capacity. With drained set it also asserts that nothing
// is in flight but the fill ring: no frame leaked in RX, TX or completion.
func checkUMEM(t testing.TB, b *Backend, drained bool) {
	t.Helper()
	rep := report(t, b)
	n := 0
	for _, r := range rep.Resources {
		if r.Name != "umem_frames" {
			continue
		}
		if r.Used == nil {
			t.Errorf("umem %s: no count (%s)", r.Scope, r.Error)
			continue
		}
		n++
		parts := map[string]uint64{}
		var sum uint64
		for _, p := range r.Breakdown {
			parts[p.Name] = p.Value
			sum += p.Value
		}
		if sum != r.Capacity {
			t.Errorf("umem %s: breakdown %v sums to %d, capacity %d", r.Scope, r.Breakdown, sum, r.Capacity)
		}
		if *r.Used != r.Capacity-parts["free"] {
			t.Errorf("umem %s: used %d, capacity %d, free %d", r.Scope, *r.Used, r.Capacity, parts["free"])
		}
		if drained && *r.Used != parts["fill"] {
			t.Errorf("umem %s: %d frames in flight after draining, %d of them in the fill ring: %v", r.Scope, *r.Used, parts["fill"], r.Breakdown)
		}
	}
	if n == 0 {
		t.Error("no umem rows")
	}
}

// waitDrained polls until the UMEM has nothing in flight outside the fill
// ring (TX completions are reaped by the next loop iterations).
func waitDrained(t testing.TB, b *Backend) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		ok := true
		for _, r := range report(t, b).Resources {
			if r.Name != "umem_frames" || r.Used == nil {
				continue
			}
			for _, p := range r.Breakdown {
				if p.Name != "free" && p.Name != "fill" && p.Value != 0 {
					ok = false
				}
			}
		}
		if ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIntegrationForwarding: allowed TCP and UDP flows pass both ways over
// IPv4 and IPv6 through the userspace datapath, replies pass without a
// reverse policy, denied flows are dropped and counted.
func TestIntegrationForwarding(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	b := newBackend(t, e, nil, nil)
	for _, dst := range []netip.Addr{l.ServerAddr4, l.ServerAddr6} {
		if err := udpRT(l, 0, dst, portUDP, 3*time.Second); err != nil {
			t.Errorf("allowed udp to %s: %v", dst, err)
		}
		if err := tcpRT(l, dst, 3*time.Second); err != nil {
			t.Errorf("allowed tcp to %s: %v", dst, err)
		}
	}
	if fwd := counter(t, b, "forwarded"); fwd < 24 {
		t.Errorf("forwarded = %d: the userspace datapath did not carry the traffic", fwd)
	}
	if v := counter(t, b, "session_hits"); v == 0 {
		t.Error("no session hits: replies did not ride the sessions")
	}
	if v := counter(t, b, "shim_redirected"); v < 24 {
		t.Errorf("shim_redirected = %d", v)
	}

	before := counter(t, b, "dropped_policy")
	for _, dst := range []netip.Addr{l.ServerAddr4, l.ServerAddr6} {
		if err := udpRT(l, 0, dst, portDenied, 300*time.Millisecond); err == nil {
			t.Errorf("denied udp to %s:%d got through", dst, portDenied)
		}
	}
	if got := counter(t, b, "dropped_policy") - before; got < 2 {
		t.Errorf("dropped_policy rose by %d, want >= 2", got)
	}

	// Server-initiated flows have no policy: denied.
	stop, err := netlab.UDPEcho(context.Background(), l.Client, netip.AddrPortFrom(l.ClientAddr4, portUDP))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := netlab.UDPRoundTrip(ctx, l.Server, netip.AddrPort{}, netip.AddrPortFrom(l.ClientAddr4, portUDP), []byte("x")); err == nil {
		t.Error("server -> client without a policy got through")
	}

	// The firewall's own addresses still answer (the shim passes them).
	ctx2, cancel2 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel2()
	stopFw, err := netlab.UDPEcho(ctx2, l.Firewall, netip.AddrPortFrom(l.FwClientAddr4, 7000))
	if err != nil {
		t.Fatal(err)
	}
	defer stopFw()
	if _, err := netlab.UDPRoundTrip(ctx2, l.Client, netip.AddrPort{}, netip.AddrPortFrom(l.FwClientAddr4, 7000), []byte("me")); err != nil {
		t.Errorf("udp to the firewall itself: %v", err)
	}
	waitDrained(t, b)
	checkUMEM(t, b, true)
}

// TestIntegrationSessionCounts: after N distinct flows the session table
// fill in ResourceStats equals N, by family, and Sessions lists them.
func TestIntegrationSessionCounts(t *testing.T) {
	const flows = 40
	e := newLabEnv(t, 0)
	l := e.l
	b := newBackend(t, e, nil, nil)
	for i := range flows {
		dst := l.ServerAddr4
		if i%4 == 3 {
			dst = l.ServerAddr6
		}
		if err := udpRT(l, uint16(20000+i), dst, portUDP, 3*time.Second); err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
	}
	rep := report(t, b)
	r, ok := rep.Find("sessions", "global")
	if !ok || r.Used == nil || *r.Used != flows {
		t.Errorf("sessions row = %+v, want used %d", r, flows)
	}
	if rep.Sessions == nil || *rep.Sessions != (dataplane.SessionCounts{IPv4: flows * 3 / 4, IPv6: flows / 4, Total: flows}) {
		t.Errorf("sessions = %+v, want %d flows", rep.Sessions, flows)
	}
	var shardSum uint64
	for _, r := range rep.Resources {
		if r.Name == "sessions" && r.Detail {
			shardSum += *r.Used
		}
	}
	if shardSum != flows {
		t.Errorf("per-shard rows sum to %d, want %d", shardSum, flows)
	}
	list, counts, err := b.Sessions(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != flows || counts.Total != flows {
		t.Errorf("Sessions() = %d entries, counts %+v", len(list), counts)
	}
}

// TestIntegrationBadConfigKeepsForwarding: invalid and unprogrammable
// configs fail with every problem named, and the running generation keeps
// forwarding exactly as before.
func TestIntegrationBadConfigKeepsForwarding(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	b := newBackend(t, e, nil, nil)
	ctx := context.Background()
	if err := udpRT(l, 0, l.ServerAddr4, portUDP, 3*time.Second); err != nil {
		t.Fatalf("before: %v", err)
	}
	bad := netlabConfig(l)
	bad.Interfaces[1].Name = ""
	bad.Policies[0].Action = "maybe"
	bad.Policies[1].Sources = []string{"not-an-address"}
	_, err := b.Apply(ctx, bad)
	var ce *dataplane.ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("invalid config: %v", err)
	}
	got := map[string]bool{}
	for _, p := range ce.Problems {
		got[p.Field] = true
	}
	for _, f := range []string{"interfaces[1].name", "policies[0].action", "policies[1].sources[0]"} {
		if !got[f] {
			t.Errorf("problem for %s not reported: %v", f, ce)
		}
	}

	missing := netlabConfig(l)
	missing.Interfaces[1].Name = "gone" + l.Suffix[:4]
	missing.Policies = nil // would deny everything if it were applied
	_, err = b.Apply(ctx, missing)
	if !errors.As(err, &ce) || ce.Problems[0].Field != "interfaces[1].name" {
		t.Fatalf("missing interface: %v", err)
	}

	unsup := netlabConfig(l)
	unsup.PortMirroring = []dataplane.MirrorRule{{Input: l.FwClientIf, Output: l.FwServerIf, Rate: 10}}
	unsup.Forwarding.Routes = []dataplane.Route{{Destination: "198.51.100.0/24", Interface: l.FwServerIf}}
	unsup.Tables.Sessions = 1000
	unsup.Policies = nil
	_, err = b.Apply(ctx, unsup)
	var nse *dataplane.NotSupportedError
	if !errors.Is(err, dataplane.ErrNotSupported) || !errors.As(err, &nse) || len(nse.Reasons) != 2 {
		t.Fatalf("unsupported features: want 2 reasons (routes, table size), got %v", err)
	}

	for _, dst := range []netip.Addr{l.ServerAddr4, l.ServerAddr6} {
		if err := udpRT(l, 0, dst, portUDP, 3*time.Second); err != nil {
			t.Errorf("after failed applies, allowed udp to %s: %v", dst, err)
		}
		if err := udpRT(l, 0, dst, portDenied, 300*time.Millisecond); err == nil {
			t.Errorf("after failed applies, denied udp to %s passed", dst)
		}
	}
	if rep := report(t, b); rep.Generation != 1 {
		t.Errorf("generation = %d, want 1", rep.Generation)
	}
	// A good config still applies: generation 2.
	res, err := b.Apply(ctx, netlabConfig(l))
	if err != nil || res.Generation != 2 {
		t.Errorf("reapply: %+v, %v", res, err)
	}
}
