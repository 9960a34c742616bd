//go:build linux

package xsk

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asavie/xdp"
	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/internal/testutil"
)

// fixture is a netlab with the shim on the firewall's client-facing veth.
type fixture struct {
	l    *netlab.Lab
	shim *Shim
}

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	l := netlab.NewT(tb, nil)
	testutil.Privileged(tb, testutil.NeedBPF)
	f := &fixture{l: l}
	err := l.Firewall.Do(func() (err error) {
		f.shim, err = LoadShim(l.FwClientIndex, nil)
		return err
	})
	if err != nil {
		testutil.SkipIfNotSupported(tb, err)
	}
	tb.Cleanup(func() {
		if err := f.shim.Close(); err != nil {
			tb.Errorf("close shim: %v", err)
		}
	})
	if f.shim.Mode() != AttachNative {
		tb.Errorf("shim mode on veth = %v, want native", f.shim.Mode())
	}
	return f
}

func (f *fixture) open(tb testing.TB, opts *Options) *Binding {
	tb.Helper()
	var b *Binding
	err := f.l.Firewall.Do(func() (err error) {
		b, err = Open(f.l.FwClientIndex, 0, opts)
		return err
	})
	if err != nil {
		tb.Fatalf("open binding: %v", err)
	}
	tb.Cleanup(func() {
		if err := b.Close(); err != nil {
			tb.Errorf("close binding: %v", err)
		}
	})
	return b
}

func (f *fixture) counters(tb testing.TB) ShimCounters {
	tb.Helper()
	c, err := f.shim.Counters()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func (f *fixture) flood(tb testing.TB, frame []byte, n uint64) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := netlab.Flood{NS: f.l.Client, Iface: f.l.ClientIf, Frame: frame, Count: n}.Run(ctx)
	if err != nil {
		testutil.SkipIfNotSupported(tb, err)
	}
	if res.Sent != n {
		tb.Fatalf("flood sent %d, want %d", res.Sent, n)
	}
}

// udpFrame is a minimum-size UDP frame from the client through the firewall
// to the server (a frame the firewall forwards, not one for itself).
func (f *fixture) udpFrame(v6 bool, vlan uint16, dport uint16) []byte {
	s := packet.Spec{
		SrcMAC: f.l.ClientMAC, DstMAC: f.l.FwClientMAC, VLAN: vlan,
		Src: netip.AddrPortFrom(f.l.ClientAddr4, 40000), Dst: netip.AddrPortFrom(f.l.ServerAddr4, dport),
		PayloadLen: 18,
	}
	if v6 {
		s.Src = netip.AddrPortFrom(f.l.ClientAddr6, 40000)
		s.Dst = netip.AddrPortFrom(f.l.ServerAddr6, dport)
	}
	return packet.UDP(s)
}

func (f *fixture) arpRequest() []byte {
	b := make([]byte, 42)
	copy(b[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(b[6:12], f.l.ClientMAC)
	binary.BigEndian.PutUint16(b[12:], 0x0806)
	binary.BigEndian.PutUint16(b[14:], 1)      // Ethernet
	binary.BigEndian.PutUint16(b[16:], 0x0800) // IPv4
	b[18], b[19] = 6, 4
	binary.BigEndian.PutUint16(b[20:], 1) // request
	copy(b[22:28], f.l.ClientMAC)
	src, dst := f.l.ClientAddr4.As4(), f.l.FwClientAddr4.As4()
	copy(b[28:32], src[:])
	copy(b[38:42], dst[:])
	return b
}

// ndFrame is an ICMPv6 echo request with its type rewritten: the shim only
// looks at the type (the kernel will drop it for its checksum).
func (f *fixture) ndFrame(typ uint8) []byte {
	fr := packet.ICMPEcho(packet.Spec{
		SrcMAC: f.l.ClientMAC, DstMAC: f.l.FwClientMAC,
		Src: netip.AddrPortFrom(f.l.ClientAddr6, 0), Dst: netip.AddrPortFrom(f.l.FwClientAddr6, 0),
	}, 1, 1)
	fr[packet.EthernetLen+packet.IPv6Len] = typ
	return fr
}

// receiveN receives until n frames arrived or the deadline passed, handing
// each to fn and releasing it at once.
func receiveN(tb testing.TB, b *Binding, n int, timeout time.Duration, fn func([]byte)) int {
	tb.Helper()
	batch := make([]Desc, 64)
	got := 0
	deadline := time.Now().Add(timeout)
	for got < n && time.Now().Before(deadline) {
		k, err := b.Receive(batch)
		if err != nil {
			tb.Fatal(err)
		}
		if k == 0 {
			if _, err := b.Poll(10 * time.Millisecond); err != nil {
				tb.Fatal(err)
			}
			continue
		}
		if fn != nil {
			for _, d := range batch[:k] {
				fn(b.Frame(d))
			}
		}
		if err := b.Release(batch[:k]); err != nil {
			tb.Fatal(err)
		}
		got += k
	}
	return got
}

// receiveUntil hands every received frame to fn (then releases it) until fn
// returns true or timeout passes.
func receiveUntil(tb testing.TB, b *Binding, timeout time.Duration, fn func([]byte) bool) {
	tb.Helper()
	batch := make([]Desc, 64)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		k, err := b.Receive(batch)
		if err != nil {
			tb.Fatal(err)
		}
		if k == 0 {
			if _, err := b.Poll(10 * time.Millisecond); err != nil {
				tb.Fatal(err)
			}
			continue
		}
		stop := false
		for _, d := range batch[:k] {
			stop = fn(b.Frame(d)) || stop
		}
		if err := b.Release(batch[:k]); err != nil {
			tb.Fatal(err)
		}
		if stop {
			return
		}
	}
}

// checkLedger compares the per-frame states (ground truth the datapath
// keeps) with Stats, which must add up to the total.
func checkLedger(tb testing.TB, b *Binding) Stats {
	tb.Helper()
	s, err := b.Stats()
	if err != nil {
		tb.Fatal(err)
	}
	if s.Frames.Sum() != s.Frames.Total || s.Frames.Total != b.Frames() {
		tb.Errorf("frame states %+v add up to %d, want %d", s.Frames, s.Frames.Sum(), b.Frames())
	}
	var tally [4]uint32
	for _, st := range b.state {
		tally[st]++
	}
	want := [4]uint32{s.Frames.Free, s.Frames.FillRing + s.Frames.RXRing, s.Frames.App, s.Frames.TXRing + s.Frames.Completion}
	if tally != want {
		tb.Errorf("per-frame states %v, ledger %v", tally, want)
	}
	if uint32(len(b.freeStack)+len(b.mirrorStack)) != s.Frames.Free {
		tb.Errorf("free and mirror stacks hold %d+%d, ledger says %d", len(b.freeStack), len(b.mirrorStack), s.Frames.Free)
	}
	if uint32(len(b.mirrorStack)) != s.MirrorFree {
		tb.Errorf("mirror stack holds %d, MirrorFree = %d", len(b.mirrorStack), s.MirrorFree)
	}
	if s.BadDescs != 0 {
		tb.Errorf("BadDescs = %d", s.BadDescs)
	}
	return s
}

func TestIntegrationShimSteering(t *testing.T) {
	f := newFixture(t)
	b := f.open(t, &Options{Shim: f.shim, RingSize: 1024})
	if err := f.shim.SetLocalAddrs([]netip.Addr{f.l.FwClientAddr4, f.l.FwClientAddr6}); err != nil {
		t.Fatal(err)
	}
	local4 := packet.UDP(packet.Spec{SrcMAC: f.l.ClientMAC, DstMAC: f.l.FwClientMAC,
		Src: netip.AddrPortFrom(f.l.ClientAddr4, 1), Dst: netip.AddrPortFrom(f.l.FwClientAddr4, 7), PayloadLen: 18})
	local6 := packet.UDP(packet.Spec{SrcMAC: f.l.ClientMAC, DstMAC: f.l.FwClientMAC,
		Src: netip.AddrPortFrom(f.l.ClientAddr6, 1), Dst: netip.AddrPortFrom(f.l.FwClientAddr6, 7), PayloadLen: 18})
	const n = 500
	for _, tc := range []struct {
		name   string
		frame  []byte
		want   ShimCounters
		toSock bool
	}{
		{"udp4", f.udpFrame(false, 0, 5000), ShimCounters{Redirected: n}, true},
		{"udp6", f.udpFrame(true, 0, 5000), ShimCounters{Redirected: n}, true},
		{"udp4 vlan", f.udpFrame(false, 42, 5000), ShimCounters{Redirected: n}, true},
		{"udp6 vlan", f.udpFrame(true, 7, 5000), ShimCounters{Redirected: n}, true},
		{"arp", f.arpRequest(), ShimCounters{PassNonIP: n}, false},
		{"nd neighbor solicitation", f.ndFrame(135), ShimCounters{PassND: n}, false},
		{"nd router advertisement", f.ndFrame(134), ShimCounters{PassND: n}, false},
		{"icmpv6 echo is not nd", f.ndFrame(128), ShimCounters{PassLocal: n}, false},
		{"local v4", local4, ShimCounters{PassLocal: n}, false},
		{"local v6", local6, ShimCounters{PassLocal: n}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.counters(t)
			f.flood(t, tc.frame, n)
			// The kernels of the lab send a little traffic of their own
			// (neighbour discovery, MLD): count only the flood's frames
			// at the socket, and allow that noise in the counters.
			match := 0
			if tc.toSock {
				receiveUntil(t, b, 5*time.Second, func(fr []byte) bool {
					if bytes.Equal(fr, tc.frame) {
						match++
					}
					return match == n
				})
			} else {
				receiveUntil(t, b, 100*time.Millisecond, func(fr []byte) bool {
					if bytes.Equal(fr, tc.frame) {
						match++
					}
					return false
				})
			}
			after := f.counters(t)
			delta := [5]uint64{after.Redirected - before.Redirected, after.PassNonIP - before.PassNonIP,
				after.PassND - before.PassND, after.PassLocal - before.PassLocal, after.DropNoSocket - before.DropNoSocket}
			want := [5]uint64{tc.want.Redirected, tc.want.PassNonIP, tc.want.PassND, tc.want.PassLocal, tc.want.DropNoSocket}
			const noise = 8
			for i := range delta {
				if delta[i] < want[i] || delta[i] > want[i]+noise {
					t.Errorf("shim counters moved by %v, want %v (+ at most %d of lab noise each)", delta, want, noise)
					break
				}
			}
			wantMatch := 0
			if tc.toSock {
				wantMatch = n
			}
			if match != wantMatch {
				t.Errorf("socket received %d byte-exact copies of the sent frame, want %d", match, wantMatch)
			}
			checkLedger(t, b)
		})
	}
}

// TestIntegrationKernelStillServesLocal: ARP is answered by the firewall's
// kernel, and with its address programmed as local, a UDP service on the
// firewall answers; without it, the datagram goes to the socket instead.
func TestIntegrationKernelStillServesLocal(t *testing.T) {
	f := newFixture(t)
	b := f.open(t, &Options{Shim: f.shim, RingSize: 256})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	echo := netip.AddrPortFrom(f.l.FwClientAddr4, 7007)
	stop, err := netlab.UDPEcho(ctx, f.l.Firewall, echo)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	// Best effort: the entry may not exist yet.
	_ = f.l.Client.Do(func() error {
		return netlink.NeighDel(&netlink.Neigh{LinkIndex: f.l.ClientIndex, IP: f.l.FwClientAddr4.AsSlice()})
	})

	// Not local yet: the datagram is the dataplane's.
	before := f.counters(t)
	rctx, rcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = netlab.UDPRoundTrip(rctx, f.l.Client, netip.AddrPortFrom(f.l.ClientAddr4, 0), echo, []byte("ping"))
	rcancel()
	if err == nil {
		t.Fatal("round trip to a non-local address succeeded: the shim passed it to the kernel")
	}
	var sawPing bool
	receiveUntil(t, b, time.Second, func(fr []byte) bool {
		sawPing = sawPing || bytes.HasSuffix(fr, []byte("ping"))
		return sawPing
	})
	if !sawPing {
		t.Error("the datagram did not reach the socket")
	}
	after := f.counters(t)
	if after.PassNonIP <= before.PassNonIP {
		t.Errorf("no ARP passed to the kernel (pass_non_ip %d -> %d)", before.PassNonIP, after.PassNonIP)
	}
	var resolved bool
	_ = f.l.Client.Do(func() error {
		neighs, err := netlink.NeighList(f.l.ClientIndex, netlink.FAMILY_V4)
		for _, nb := range neighs {
			if nb.IP.Equal(f.l.FwClientAddr4.AsSlice()) && bytes.Equal(nb.HardwareAddr, f.l.FwClientMAC) {
				resolved = true
			}
		}
		return err
	})
	if !resolved {
		t.Error("client did not resolve the firewall's MAC: ARP was not answered by the kernel")
	}

	if err := f.shim.SetLocalAddrs([]netip.Addr{f.l.FwClientAddr4}); err != nil {
		t.Fatal(err)
	}
	got, err := netlab.UDPRoundTrip(ctx, f.l.Client, netip.AddrPortFrom(f.l.ClientAddr4, 0), echo, []byte("hello"))
	if err != nil || string(got) != "hello" {
		t.Fatalf("round trip to a local address: %q, %v", got, err)
	}
	if c := f.counters(t); c.PassLocal == 0 {
		t.Error("pass_local did not count the datagram")
	}
	// Removing it again gives the address back to the dataplane.
	if err := f.shim.SetLocalAddrs(nil); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel = context.WithTimeout(ctx, 300*time.Millisecond)
	defer rcancel()
	if _, err := netlab.UDPRoundTrip(rctx, f.l.Client, netip.AddrPortFrom(f.l.ClientAddr4, 0), echo, []byte("x")); err == nil {
		t.Error("round trip still answered after the local address was removed")
	}
}

// TestIntegrationFailClosed: with the shim attached and no ready socket, IP
// frames the kernel would otherwise forward are dropped and counted.
func TestIntegrationFailClosed(t *testing.T) {
	l := netlab.NewT(t, nil)
	testutil.Privileged(t, testutil.NeedBPF)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.ResolveNeighbors(ctx); err != nil {
		t.Fatal(err)
	}
	const port, n = 6000, 1000
	cnt, err := netlab.AttachCounter(l.Server, l.ServerIf, &netlab.CounterOptions{Proto: packet.ProtoUDP, DstPort: port, Drop: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cnt.Close()
	f := &fixture{l: l}
	frame := f.udpFrame(false, 0, port)

	// Control: without the shim the kernel forwards them to the server.
	f.flood(t, frame, n)
	waitCount(t, cnt, n)

	if err := l.Firewall.Do(func() (err error) { f.shim, err = LoadShim(l.FwClientIndex, nil); return err }); err != nil {
		t.Fatal(err)
	}
	defer f.shim.Close()
	f.flood(t, frame, n)
	// A socket that was ready and closed leaves the queue fail-closed too.
	b := f.open(t, &Options{Shim: f.shim, RingSize: 64})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	f.flood(t, frame, n)
	time.Sleep(100 * time.Millisecond)
	c := f.counters(t)
	// The lab's kernels add a frame or two of their own (IPv6 MLD reports
	// are IP and not ND): dropped while no socket is ready, redirected in
	// the moment one was. None of the flood's frames is redirected: they
	// were all sent while no socket was ready.
	if c.DropNoSocket < 2*n || c.DropNoSocket+c.Redirected > 2*n+8 {
		t.Errorf("shim counters %+v, want DropNoSocket=%d (+ lab noise)", c, 2*n)
	}
	if pkts, _, _ := cnt.Read(); pkts != n {
		t.Errorf("server saw %d frames, want only the %d of the control run", pkts, n)
	}
}

func waitCount(tb testing.TB, c *netlab.Counter, want uint64) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pkts, _, err := c.Read()
		if err != nil {
			tb.Fatal(err)
		}
		if pkts >= want || time.Now().After(deadline) {
			if pkts != want {
				tb.Fatalf("counted %d frames at the peer, want %d", pkts, want)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sendAll transmits n copies of frame, reaping completions, and returns
// when all are completed (or fails the test).
func sendAll(tb testing.TB, b *Binding, frame []byte, n int) {
	tb.Helper()
	batch := make([]Desc, 0, 64)
	sent, done := 0, 0
	deadline := time.Now().Add(20 * time.Second)
	for done < n {
		if time.Now().After(deadline) {
			tb.Fatalf("sent %d, completed %d of %d before the deadline", sent, done, n)
		}
		done += b.Complete()
		batch = batch[:0]
		for len(batch) < cap(batch) && sent+len(batch) < n {
			d, ok := b.AllocTX()
			if !ok {
				break
			}
			d.Len = uint32(copy(b.Frame(d)[:cap(b.Frame(d))], frame))
			batch = append(batch, d)
		}
		q, err := b.Transmit(batch)
		if err != nil {
			tb.Fatal(err)
		}
		if q < len(batch) {
			if err := b.Release(batch[q:]); err != nil {
				tb.Fatal(err)
			}
		}
		sent += q
		if q == 0 {
			_ = b.Kick()
		}
	}
}

func TestIntegrationTransmit(t *testing.T) {
	f := newFixture(t)
	const port, n = 7000, 100_000
	cnt, err := netlab.AttachCounter(f.l.Client, f.l.ClientIf, &netlab.CounterOptions{Proto: packet.ProtoUDP, DstPort: port, Drop: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cnt.Close()
	b := f.open(t, &Options{RingSize: 512})
	frame := packet.UDP(packet.Spec{SrcMAC: f.l.FwClientMAC, DstMAC: f.l.ClientMAC,
		Src: netip.AddrPortFrom(f.l.FwClientAddr4, 1), Dst: netip.AddrPortFrom(f.l.ClientAddr4, port), PayloadLen: 18})
	vethDrops := func() uint64 {
		return linkDrops(t, f.l.Firewall, f.l.FwClientIf, false) + linkDrops(t, f.l.Client, f.l.ClientIf, true)
	}
	drop0 := vethDrops()
	sendAll(t, b, frame, n)
	// A frame the kernel took from the TX ring is complete for AF_XDP even
	// when the veth pair then drops it: the sender when its peer's
	// 256-slot ring is full (tx_dropped), the receiver when it cannot copy
	// the skb for its XDP program (rx_dropped). Seen once in many runs,
	// under load (215 of 100 000). Every frame must be counted or dropped
	// there.
	deadline := time.Now().Add(5 * time.Second)
	var got, dropped uint64
	for {
		got, _, err = cnt.Read()
		if err != nil {
			t.Fatal(err)
		}
		dropped = vethDrops() - drop0
		if got+dropped >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got+dropped != n || dropped > n/100 {
		t.Fatalf("counted %d frames at the peer and %d dropped by the veth, want %d in all and under 1 %% dropped", got, dropped, n)
	}
	s := checkLedger(t, b)
	if s.Transmitted != n || s.Completed != n || s.Frames.App != 0 || s.Frames.TXRing+s.Frames.Completion != 0 {
		t.Errorf("after sending: %+v", s)
	}
	t.Logf("kicks %d for %d frames, zero-copy %v, need_wakeup %v; veth dropped %d", s.Kicks, n, s.ZeroCopy, s.NeedWakeup, dropped)
}

// linkDrops is the link's rx_dropped (rx) or tx_dropped counter.
func linkDrops(tb testing.TB, ns *netlab.NS, name string, rx bool) uint64 {
	tb.Helper()
	var v uint64
	err := ns.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if st := l.Attrs().Statistics; st != nil {
			v = st.TxDropped
			if rx {
				v = st.RxDropped
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// TestIntegrationMillionFrames: 1M frames received with immediate recycling,
// while another goroutine checks that Stats always adds up.
func TestIntegrationMillionFrames(t *testing.T) {
	f := newFixture(t)
	b := f.open(t, &Options{Shim: f.shim})
	var stop atomic.Bool
	var snaps, bad atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			time.Sleep(100 * time.Microsecond)
			s, err := b.Stats()
			if err != nil || s.Frames.Sum() != s.Frames.Total {
				bad.Add(1)
			}
			snaps.Add(1)
		}
	}()
	// Flood in rounds until a million frames went through the socket: the
	// flood outruns the receiver on two shared CPUs, and what the receiver
	// misses the kernel must count (fill ring empty).
	const n = 1_000_000
	frame := f.udpFrame(false, 0, 5001)
	var got, sent uint64
	for got < n && sent < 20*n {
		done := make(chan int)
		go func() { done <- receiveN(t, b, n, 2*time.Second, nil) }()
		f.flood(t, frame, 250_000)
		sent += 250_000
		got += uint64(<-done)
	}
	stop.Store(true)
	wg.Wait()
	s := checkLedger(t, b)
	c := f.counters(t)
	t.Logf("received %d after flooding %d (shim redirected %d; kernel %+v); %d concurrent Stats snapshots", got, sent, c.Redirected, s.Kernel, snaps.Load())
	if bad.Load() != 0 {
		t.Errorf("%d of %d concurrent snapshots did not add up", bad.Load(), snaps.Load())
	}
	if got < n {
		t.Errorf("received only %d of %d", got, n)
	}
	if lost := s.Kernel.RXDropped + s.Kernel.RXRingFull; got+lost != c.Redirected {
		t.Errorf("redirected %d != received %d + kernel drops %d", c.Redirected, got, lost)
	}
	if s.Frames.App != 0 || s.Frames.Free+s.Frames.FillRing+s.Frames.RXRing != s.Frames.Total {
		t.Errorf("frames not all back: %+v", s.Frames)
	}
}

func TestIntegrationLinkDownUp(t *testing.T) {
	f := newFixture(t)
	const port = 7100
	cnt, err := netlab.AttachCounter(f.l.Client, f.l.ClientIf, &netlab.CounterOptions{Proto: packet.ProtoUDP, DstPort: port, Drop: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cnt.Close()
	b := f.open(t, &Options{Shim: f.shim, RingSize: 256})
	frame := packet.UDP(packet.Spec{SrcMAC: f.l.FwClientMAC, DstMAC: f.l.ClientMAC,
		Src: netip.AddrPortFrom(f.l.FwClientAddr4, 1), Dst: netip.AddrPortFrom(f.l.ClientAddr4, port), PayloadLen: 18})
	sendAll(t, b, frame, 1000)

	setLink(t, f.l.Firewall, f.l.FwClientIf, false)
	var batch []Desc
	for range 100 {
		d, ok := b.AllocTX()
		if !ok {
			t.Fatal("AllocTX failed with an idle TX side")
		}
		d.Len = uint32(copy(b.Frame(d)[:cap(b.Frame(d))], frame))
		batch = append(batch, d)
	}
	q, err := b.Transmit(batch)
	if !errors.Is(err, ErrLinkDown) {
		t.Fatalf("Transmit on a down link: queued %d, err %v; want ErrLinkDown", q, err)
	}
	t.Logf("link down: queued %d, err %v", q, err)
	if err := b.Release(batch[q:]); err != nil {
		t.Fatal(err)
	}
	s := checkLedger(t, b)
	t.Logf("while down: frames %+v", s.Frames)

	setLink(t, f.l.Firewall, f.l.FwClientIf, true)
	// The queued frames leave once the link is back and the ring is kicked.
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.Complete()
		s = checkLedger(t, b)
		if s.Frames.TXRing+s.Frames.Completion == 0 || time.Now().After(deadline) {
			break
		}
		if err := b.Kick(); err != nil && !errors.Is(err, ErrLinkDown) {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s.Frames.TXRing+s.Frames.Completion != 0 || s.Frames.App != 0 {
		t.Fatalf("frames stuck after link up: %+v", s.Frames)
	}
	pkts, _, _ := cnt.Read()
	t.Logf("peer counted %d frames (1000 before the flap, %d queued during it)", pkts, q)

	// Rebind on the same queue: must succeed without leaking anything.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b2 := f.open(t, &Options{Shim: f.shim, RingSize: 256})
	t.Logf("rebind took %v", time.Since(start))
	s2 := checkLedger(t, b2)
	if s2.Frames.Free+s2.Frames.FillRing != s2.Frames.Total {
		t.Errorf("fresh binding: %+v", s2.Frames)
	}
	t.Logf("rebind needed %d EBUSY retries", s2.BindRetries)
	before := f.counters(t).Redirected
	probe := f.udpFrame(false, 0, 5002)
	f.flood(t, probe, 100)
	match := 0
	receiveUntil(t, b2, 5*time.Second, func(fr []byte) bool {
		if bytes.Equal(fr, probe) {
			match++
		}
		return match == 100
	})
	if match != 100 {
		t.Errorf("rebound socket received %d of 100", match)
	}
	if c := f.counters(t); c.Redirected-before < 100 {
		t.Errorf("redirected %d after rebind, want >= 100", c.Redirected-before)
	}
	sendAll(t, b2, frame, 1000)
	checkLedger(t, b2)
}

func TestIntegrationCloseDetaches(t *testing.T) {
	f := newFixture(t)
	b := f.open(t, &Options{Shim: f.shim, RingSize: 64})
	xdpAttached := func() bool {
		var attached bool
		if err := f.l.Firewall.Do(func() error {
			l, err := netlink.LinkByIndex(f.l.FwClientIndex)
			if err != nil {
				return err
			}
			attached = l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return attached
	}
	if !xdpAttached() {
		t.Fatal("shim not attached after LoadShim")
	}
	// A second program must be refused, not silently replace the shim.
	if err := f.l.Firewall.Do(func() error {
		s2, err := LoadShim(f.l.FwClientIndex, nil)
		s2.Close()
		return err
	}); err == nil {
		t.Error("a second shim attached over the first")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := b.Stats(); !errors.Is(err, ErrClosed) {
		t.Errorf("Stats after Close: %v, want ErrClosed", err)
	}
	if _, err := b.Receive(make([]Desc, 1)); !errors.Is(err, ErrClosed) {
		t.Errorf("Receive after Close: %v, want ErrClosed", err)
	}
	var ready uint32
	if err := f.shim.objs.Ready.Lookup(uint32(0), &ready); err != nil || ready != 0 {
		t.Errorf("ready flag after Close = %d (%v), want 0", ready, err)
	}
	if err := f.shim.Close(); err != nil {
		t.Fatal(err)
	}
	if xdpAttached() {
		t.Error("XDP program still attached after Shim.Close")
	}
	var nilB *Binding
	var nilS *Shim
	if nilB.Close() != nil || nilS.Close() != nil {
		t.Error("Close on nil failed")
	}
}

// TestAsavieCloseLeavesQueueBound is why Open does not use asavie/xdp: after
// its Socket.Close the queue stays bound (the ring mappings are never
// unmapped), so no socket can bind it again. If a future asavie release
// fixes this, the test fails: reconsider using it then.
func TestAsavieCloseLeavesQueueBound(t *testing.T) {
	f := newFixture(t)
	err := f.l.Firewall.Do(func() error {
		s, err := xdp.NewSocket(f.l.FwClientIndex, 0, nil)
		if err != nil {
			return err
		}
		return s.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	err = f.l.Firewall.Do(func() error {
		b, err := Open(f.l.FwClientIndex, 0, &Options{RingSize: 64, BindTimeout: 500 * time.Millisecond})
		b.Close()
		return err
	})
	if !errors.Is(err, ErrQueueTaken) {
		t.Fatalf("bind after asavie Close: %v, want ErrQueueTaken (asavie fixed? then reconsider using it)", err)
	}
}

// TestIntegrationMirrorPool: the mirror pool is extra UMEM that only
// AllocMirror hands out; exhausting it leaves RX and AllocTX untouched,
// its frames come back to it (not to the fill ring or the free stack)
// after Transmit+Complete or Release, and the ledger counts each frame
// once throughout.
func TestIntegrationMirrorPool(t *testing.T) {
	f := newFixture(t)
	const port, pool = 7001, 8
	cnt, err := netlab.AttachCounter(f.l.Client, f.l.ClientIf, &netlab.CounterOptions{Proto: packet.ProtoUDP, DstPort: port, Drop: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cnt.Close()
	b := f.open(t, &Options{RingSize: 64, MirrorFrames: pool})
	if b.Frames() != 128+pool {
		t.Fatalf("Frames() = %d, want %d", b.Frames(), 128+pool)
	}
	before := checkLedger(t, b)
	if before.MirrorFrames != pool || before.MirrorFree != pool {
		t.Fatalf("mirror pool %d/%d free, want %d/%d", before.MirrorFree, before.MirrorFrames, pool, pool)
	}
	frame := packet.UDP(packet.Spec{SrcMAC: f.l.FwClientMAC, DstMAC: f.l.ClientMAC,
		Src: netip.AddrPortFrom(f.l.FwClientAddr4, 1), Dst: netip.AddrPortFrom(f.l.ClientAddr4, port), PayloadLen: 18})
	var got []Desc
	for {
		d, ok := b.AllocMirror()
		if !ok {
			break
		}
		if idx, _ := b.frameIndex(d.Addr); idx < b.mirrorStart {
			t.Fatalf("AllocMirror handed out primary frame %d", idx)
		}
		d.Len = uint32(copy(b.Frame(d)[:cap(b.Frame(d))], frame))
		got = append(got, d)
	}
	if len(got) != pool {
		t.Fatalf("AllocMirror gave %d frames, want %d", len(got), pool)
	}
	mid := checkLedger(t, b)
	if mid.MirrorFree != 0 || mid.Frames.App != pool || mid.Frames.FillRing != before.Frames.FillRing {
		t.Errorf("pool exhausted: %+v", mid.Frames)
	}
	if d, ok := b.AllocTX(); !ok {
		t.Error("AllocTX failed with only the mirror pool exhausted")
	} else if err := b.Release([]Desc{d}); err != nil {
		t.Fatal(err)
	}
	q, err := b.Transmit(got[:pool/2])
	if err != nil || q != pool/2 {
		t.Fatalf("transmit: %d, %v", q, err)
	}
	if err := b.Release(got[pool/2:]); err != nil {
		t.Fatal(err)
	}
	waitCount(t, cnt, pool/2)
	deadline := time.Now().Add(3 * time.Second)
	for b.mirrorFree.Load() != pool && time.Now().Before(deadline) {
		b.Complete()
		time.Sleep(time.Millisecond)
	}
	after := checkLedger(t, b)
	if after.MirrorFree != pool || after.Frames.FillRing != before.Frames.FillRing || after.Frames.Free != before.Frames.Free {
		t.Errorf("after transmit+release: %+v mirror free %d, want the state before: %+v", after.Frames, after.MirrorFree, before.Frames)
	}
}

func setLink(tb testing.TB, ns *netlab.NS, name string, up bool) {
	tb.Helper()
	if err := ns.SetLinkUp(name, up); err != nil {
		tb.Fatalf("set %s up=%v: %v", name, up, err)
	}
}
