package userspacebackend

import (
	"bytes"
	"context"
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
	deadline := time.Now().Add(5 * time.Second)
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

// TestIntegrationUMEMAfterTraffic: traffic of both families and
// protocols goes through the shim to the sockets, and afterwards every
// binding's frame ledger adds up and holds nothing in flight outside the
// fill ring. (Verdicts and counters common to every backend are checked by
// the conformance suite, internal/dptest.)
func TestIntegrationUMEMAfterTraffic(t *testing.T) {
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
	if v := counter(t, b, "shim_redirected"); v < 24 {
		t.Errorf("shim_redirected = %d: the shim did not steer the traffic to the sockets", v)
	}
	waitDrained(t, b)
	checkUMEM(t, b, true)
}

// TestIntegrationSessionShardRows: the per-shard session rows add up to
// the sessions row (the flow count itself is checked by the conformance
// suite).
func TestIntegrationSessionShardRows(t *testing.T) {
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
	var shardSum uint64
	for _, r := range rep.Resources {
		if r.Name == "sessions" && r.Detail {
			shardSum += *r.Used
		}
	}
	if shardSum != flows {
		t.Errorf("per-shard rows sum to %d, want %d", shardSum, flows)
	}
}
