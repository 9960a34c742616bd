package userspacebackend

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/userspacebackend/internal/xsk"
)

const sinkPort = 7777

// sinkConfig is netlabConfig that also allows UDP to sinkPort, the port
// the server-side counter drops.
func sinkConfig(l *netlab.Lab) *dataplane.Config {
	cfg := netlabConfig(l)
	cfg.Policies = append(cfg.Policies, dataplane.Policy{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoUDP,
		DestinationPorts: []dataplane.PortRange{{First: sinkPort, Last: sinkPort}}, Action: dataplane.ActionAllow})
	return cfg
}

// floodFrame is a 64-byte UDP frame client -> server:sinkPort as it leaves
// the client.
func floodFrame(l *netlab.Lab, sport uint16) []byte {
	return packet.UDP(packet.Spec{
		SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
		Src: netip.AddrPortFrom(l.ClientAddr4, sport), Dst: netip.AddrPortFrom(l.ServerAddr4, sinkPort),
		PayloadLen: 64 - packet.EthernetLen - packet.IPv4Len - packet.UDPLen,
	})
}

func flood(t testing.TB, l *netlab.Lab, frame []byte, n uint64) netlab.FloodResult {
	t.Helper()
	res, err := netlab.Flood{NS: l.Client, Iface: l.ClientIf, Frame: frame, Count: n}.Run(context.Background())
	if err != nil {
		t.Fatalf("flood: %v", err)
	}
	return res
}

func sinkCount(t testing.TB, c *netlab.Counter) uint64 {
	t.Helper()
	n, _, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestIntegrationMillionFrameFlood: a flood of over a million frames is
// forwarded (what reached the server equals the forwarded counter), and
// afterwards every frame is back: the breakdown sums to the capacity and
// nothing is in flight but the fill ring.
func TestIntegrationMillionFrameFlood(t *testing.T) {
	e := newLabEnv(t, sinkPort)
	b := newBackend(t, e, nil, sinkConfig(e.l))
	frame := floodFrame(e.l, 40000)
	flood(t, e.l, frame, 100) // the session
	time.Sleep(50 * time.Millisecond)
	before, fwdBefore := sinkCount(t, e.serverCnt), counter(t, b, "forwarded")
	const n = 1_200_000
	res := flood(t, e.l, frame, n)
	waitDrained(t, b)
	got, fwd := sinkCount(t, e.serverCnt)-before, counter(t, b, "forwarded")-fwdBefore
	t.Logf("offered %d frames at %.2f Mpps; forwarded %d, at the server %d", res.Sent, res.PPS/1e6, fwd, got)
	if got != fwd {
		t.Errorf("server counted %d frames, the backend forwarded %d", got, fwd)
	}
	// A floor, not a rate: under -race the worker is ~10x slower.
	if fwd < n/100 {
		t.Errorf("forwarded only %d of %d", fwd, n)
	}
	rep := report(t, b)
	var rx uint64
	for _, name := range []string{"forwarded", "backpressure_drops", "tx_ring_full", "dropped_policy", "dropped_parse_error"} {
		v, _ := rep.Counter(name, "global")
		rx += v
	}
	red, _ := rep.Counter("shim_redirected", "global")
	kd, _ := rep.Counter("xdp_rx_ring_full", "global")
	fe, _ := rep.Counter("xdp_rx_fill_ring_empty_descs", "global")
	t.Logf("shim redirected %d; xdp rx_ring_full %d, fill_ring_empty %d; worker outcomes %d", red, kd, fe, rx)
	checkUMEM(t, b, true)
	if err := udpRT(e.l, 0, e.l.ServerAddr4, portUDP, 3*time.Second); err != nil {
		t.Errorf("after the flood: %v", err)
	}
}

// TestIntegrationLinkFlaps: while a flood runs, the client-side link goes
// down and up three times. Each time the firewall-side bindings are torn
// down and rebound; forwarding resumes, nothing leaks, nothing crashes.
func TestIntegrationLinkFlaps(t *testing.T) {
	e := newLabEnv(t, sinkPort)
	l := e.l
	b := newBackend(t, e, &Options{CacheRefresh: 100 * time.Millisecond}, sinkConfig(l))
	frame := floodFrame(l, 40001)
	ctx, cancel := context.WithCancel(context.Background())
	floodDone := make(chan struct{})
	go func() {
		defer close(floodDone)
		for ctx.Err() == nil {
			// Errors while the client end is down are expected.
			_, _ = netlab.Flood{NS: l.Client, Iface: l.ClientIf, Frame: frame, Count: 200_000}.Run(ctx)
		}
	}()
	const flaps = 3
	for range flaps {
		time.Sleep(150 * time.Millisecond)
		setLink(t, l.Client, l.ClientIf, false)
		waitState(t, b, l.FwClientIf, stateDown)
		setLink(t, l.Client, l.ClientIf, true)
		restoreClient(t, l)
		waitState(t, b, l.FwClientIf, stateUp)
	}
	time.Sleep(150 * time.Millisecond)
	cancel()
	<-floodDone
	rep := report(t, b)
	down, _ := rep.Counter("link_down_teardowns", "global")
	rebinds, _ := rep.Counter("rebinds", "global")
	panics, _ := rep.Counter("worker_panics", "global")
	if down < flaps || rebinds < flaps || panics != 0 {
		t.Errorf("link_down_teardowns %d, rebinds %d (want >= %d each), worker_panics %d", down, rebinds, flaps, panics)
	}
	// Forwarding resumes (neighbours are permanent; give the kernel a
	// moment to mark the routes usable again).
	var err error
	for range 10 {
		if err = udpRT(l, 0, l.ServerAddr4, portUDP, time.Second); err == nil {
			break
		}
	}
	if err != nil {
		t.Errorf("after the flaps: %v", err)
	}
	if err := udpRT(l, 0, l.ServerAddr6, portUDP, 3*time.Second); err != nil {
		t.Errorf("after the flaps (v6): %v", err)
	}
	waitDrained(t, b)
	checkUMEM(t, b, true)
}

// restoreClient puts back what taking the client's link down removed from
// the client namespace: its IPv6 address and its default routes.
func restoreClient(t testing.TB, l *netlab.Lab) {
	t.Helper()
	err := l.Client.Do(func() error {
		lk, err := netlink.LinkByName(l.ClientIf)
		if err != nil {
			return err
		}
		for _, a := range []netip.Prefix{
			netip.PrefixFrom(l.ClientAddr4, l.ClientNet4.Bits()), netip.PrefixFrom(l.ClientAddr6, l.ClientNet6.Bits()),
		} {
			addr, err := netlink.ParseAddr(a.String())
			if err != nil {
				return err
			}
			addr.Flags = unix.IFA_F_NODAD
			if err := netlink.AddrReplace(lk, addr); err != nil {
				return err
			}
		}
		for _, gw := range []netip.Addr{l.FwClientAddr4, l.FwClientAddr6} {
			if err := netlink.RouteReplace(&netlink.Route{LinkIndex: lk.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("restore client addresses and routes: %v", err)
	}
}

func waitState(t testing.TB, b *Backend, iface string, want int32) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		all := true
		for _, bd := range b.snap.Load().bindings() {
			if bd.port.name == iface && bd.state.Load() != want {
				all = false
			}
		}
		if all {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("bindings of %s did not reach state %s", iface, stateNames[want])
}

// TestIntegrationTXBackpressure: the egress socket has an 8-entry TX ring
// while the ingress is flooded at full rate, so egress is far slower than
// ingress. Drops are counted, the ingress fill ring keeps being refilled
// (its frames never wait for TX), nothing leaks, nothing deadlocks.
func TestIntegrationTXBackpressure(t *testing.T) {
	e := newLabEnv(t, sinkPort)
	l := e.l
	b := newBackend(t, e, &Options{testTXRing: 8}, sinkConfig(l))
	frame := floodFrame(l, 40002)
	flood(t, l, frame, 100)
	time.Sleep(50 * time.Millisecond)

	var maxHeld atomic.Uint64 // ingress frames outside free/fill at a sample
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			rep, err := b.ResourceStats(context.Background())
			if err != nil {
				continue
			}
			for _, r := range rep.Resources {
				if r.Name != "umem_frames" || !r.Detail || r.Used == nil || r.Scope != l.FwClientIf+"/q0" {
					continue
				}
				var held uint64
				for _, p := range r.Breakdown {
					if p.Name == "tx" || p.Name == "completion" {
						held += p.Value
					}
				}
				if held > maxHeld.Load() {
					maxHeld.Store(held)
				}
			}
		}
	}()
	res := flood(t, l, frame, 1_000_000)
	close(stop)
	<-sampled
	rep := report(t, b)
	fwd, _ := rep.Counter("forwarded", "global")
	full, _ := rep.Counter("tx_ring_full", "global")
	bp, _ := rep.Counter("backpressure_drops", "global")
	ev, _ := rep.Counter("backpressure_events", "global")
	fe, _ := rep.Counter("xdp_rx_fill_ring_empty_descs", l.FwClientIf+"/q0")
	t.Logf("offered %.2f Mpps; forwarded %d, tx_ring_full %d, backpressure_drops %d (%d events), ingress fill_ring_empty %d",
		res.PPS/1e6, fwd, full, bp, ev, fe)
	if full+bp == 0 {
		t.Error("an 8-slot TX ring under a full-rate flood dropped nothing: backpressure not counted")
	}
	if fwd == 0 {
		t.Error("nothing forwarded")
	}
	if maxHeld.Load() != 0 {
		t.Errorf("the ingress binding held up to %d frames in TX states: RX frames waited for TX", maxHeld.Load())
	}
	// No deadlock: the flow keeps working. A single datagram can be lost
	// in the veth right after a 5 Mpps flood (it never reaches the shim:
	// shim_redirected does not count it), so a few attempts are allowed.
	var err error
	for range 5 {
		if err = udpRT(l, 0, l.ServerAddr4, portUDP, time.Second); err == nil {
			break
		}
		t.Logf("after the flood: %v (retrying)", err)
	}
	if err != nil {
		t.Errorf("after the flood: %v", err)
	}
	waitDrained(t, b)
	checkUMEM(t, b, true)
	for _, r := range report(t, b).Resources {
		if r.Name == "fill_ring_empty" && r.Used != nil && *r.Used != 0 {
			t.Errorf("%s fill ring has %d of %d slots empty after the flood: not refilled", r.Scope, *r.Used, r.Capacity)
		}
	}
}

// TestIntegrationWorkerPanic: a panic inside a worker is recovered,
// counted and reported; the binding is rebuilt and forwarding resumes.
func TestIntegrationWorkerPanic(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	b := newBackend(t, e, nil, nil)
	var fired atomic.Bool
	hook := func(bd *binding) {
		if bd.port.name == l.FwClientIf && fired.CompareAndSwap(false, true) {
			panic("injected by the test")
		}
	}
	testHook.Store(&hook)
	t.Cleanup(func() { testHook.Store(nil) })
	deadline := time.Now().Add(3 * time.Second)
	for !fired.Load() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// The binding is still "up" for a moment after the panic, until the
	// worker has torn the socket down; wait for the rebind it then makes,
	// or the datagram below meets the shim with no socket (fail closed).
	for time.Now().Before(deadline) {
		if v, _ := report(t, b).Counter("rebinds", l.FwClientIf+"/q0"); v >= 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitState(t, b, l.FwClientIf, stateUp)
	if err := udpRT(l, 0, l.ServerAddr4, portUDP, 3*time.Second); err != nil {
		t.Errorf("after the panic: %v", err)
	}
	rep := report(t, b)
	if v, _ := rep.Counter("worker_panics", "global"); v != 1 {
		t.Errorf("worker_panics = %d, want 1", v)
	}
	if v, _ := rep.Counter("worker_panics", l.FwClientIf+"/q0"); v != 1 {
		t.Errorf("worker_panics for the binding = %d, want 1", v)
	}
	checkUMEM(t, b, false)
}

// TestIntegrationCloseLeavesNothing: after Close no XDP program is
// attached to any lab interface, every socket is closed (its queue can be
// bound again), and Close is idempotent.
func TestIntegrationCloseLeavesNothing(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	b := newBackend(t, e, nil, nil)
	if err := udpRT(l, 0, l.ServerAddr4, portUDP, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	var fds []int
	for _, bd := range b.snap.Load().bindings() {
		if xb := bd.live.Load(); xb != nil {
			fds = append(fds, xb.Fd())
		}
	}
	if len(fds) != 2 {
		t.Fatalf("%d sockets before Close, want 2", len(fds))
	}
	attached := func() map[string]bool {
		out := map[string]bool{}
		err := l.Firewall.Do(func() error {
			for _, n := range []string{l.FwClientIf, l.FwServerIf} {
				lk, err := netlink.LinkByName(n)
				if err != nil {
					return err
				}
				out[n] = lk.Attrs().Xdp != nil && lk.Attrs().Xdp.Attached
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if a := attached(); !a[l.FwClientIf] || !a[l.FwServerIf] {
		t.Fatalf("shims not attached before Close: %v", a)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if a := attached(); a[l.FwClientIf] || a[l.FwServerIf] {
		t.Errorf("XDP still attached after Close: %v", a)
	}
	for _, fd := range fds {
		if d, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err == nil && d == unix.AF_XDP {
			t.Errorf("fd %d is still an AF_XDP socket", fd)
		}
	}
	// The queues are free again: a fresh socket binds at once.
	err := l.Firewall.Do(func() error {
		for _, idx := range []int{l.FwClientIndex, l.FwServerIndex} {
			xb, err := xsk.Open(idx, 0, &xsk.Options{RingSize: 64, BindTimeout: 100 * time.Millisecond})
			if err != nil {
				return err
			}
			xb.Close()
		}
		return nil
	})
	if err != nil {
		t.Errorf("rebind after Close: %v", err)
	}
	if _, err := b.Apply(context.Background(), netlabConfig(l)); err != dataplane.ErrClosed {
		t.Errorf("Apply after Close: %v", err)
	}
	if _, err := b.ResourceStats(context.Background()); err != dataplane.ErrClosed {
		t.Errorf("ResourceStats after Close: %v", err)
	}
	// With the shim gone the kernel forwards again, unfiltered.
	if err := udpRT(l, 0, l.ServerAddr4, portDenied, 3*time.Second); err != nil {
		t.Errorf("kernel forwarding after Close: %v", err)
	}
}

func setLink(tb testing.TB, ns *netlab.NS, name string, up bool) {
	tb.Helper()
	if err := ns.SetLinkUp(name, up); err != nil {
		tb.Fatalf("set %s up=%v: %v", name, up, err)
	}
}
