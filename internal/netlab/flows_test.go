//go:build linux

package netlab

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink/nl"

	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/internal/testutil"
)

// TestIntegrationFloodManyFlowsFrames captures what the generator sends
// with many flows: every frame parses with correct IP and L4 checksums
// (the kernel forwards them too), and frame n carries flow n % flows.
func TestIntegrationFloodManyFlowsFrames(t *testing.T) {
	l := NewT(t, nil)
	testutil.Privileged(t, testutil.NeedBPF)
	udp4, err := l.ClientFlood(FloodSpec{Proto: packet.ProtoUDP, Dst: netip.AddrPortFrom(l.ServerAddr4, 6001), SrcPort: 65530,
		Flows: FloodFlows{Ports: 6, Addrs: 3}, Count: 36})
	if err != nil {
		t.Fatal(err)
	}
	syn6, err := l.ClientFlood(FloodSpec{Proto: packet.ProtoTCP, Dst: netip.AddrPortFrom(l.ServerAddr6, 6002),
		Flows: FloodFlows{Ports: 4, Addrs: 2}, Count: 16})
	if err != nil {
		t.Fatal(err)
	}
	vlan := Flood{NS: l.Client, Iface: l.ClientIf, Count: 14, Flows: FloodFlows{Ports: 7},
		Frame: packet.UDP(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC, VLAN: 7,
			Src: netip.AddrPortFrom(l.ClientAddr4, 100), Dst: netip.AddrPortFrom(l.ServerAddr4, 6003), Payload: []byte("vlan")})}
	// The replies to a many-flow flood vary the destination.
	reply4, err := l.ReplyFlood(FloodSpec{Proto: packet.ProtoUDP, Dst: netip.AddrPortFrom(l.ServerAddr4, 6004), SrcPort: 65530,
		Flows: FloodFlows{Ports: 6, Addrs: 3}, Count: 36})
	if err != nil {
		t.Fatal(err)
	}
	synack6, err := l.ReplyFlood(FloodSpec{Proto: packet.ProtoTCP, Dst: netip.AddrPortFrom(l.ServerAddr6, 6005),
		Flows: FloodFlows{Ports: 4, Addrs: 2}, Count: 16, TCPFlags: packet.TCPSyn | packet.TCPAck, TCPSeq: 1000, TCPAck: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		f    Flood
	}{{"udp4 ports x addrs", udp4}, {"tcp6 syn", syn6}, {"udp4 vlan ports", vlan}, {"udp4 replies", reply4}, {"tcp6 syn-ack replies", synack6}} {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := packet.Parse(tt.f.Frame)
			if err != nil {
				t.Fatal(err)
			}
			if tmpl.Proto == packet.ProtoTCP && tmpl.TCPFlags&packet.TCPSyn == 0 {
				t.Fatalf("TCP template with flags %#x, want a SYN", tmpl.TCPFlags)
			}
			at := l.FwClientIf
			if tt.f.Flows.Dst {
				at = l.FwServerIf
			}
			c, err := Capture(l.Firewall, at, 256)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := tt.f.Run(context.Background()); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			flows := tt.f.Flows.Count()
			ports := uint64(max(tt.f.Flows.Ports, 1))
			for n := uint64(0); n < tt.f.Count; {
				fr, err := c.Next(ctx)
				if err != nil {
					t.Fatalf("after %d of %d frames: %v", n, tt.f.Count, err)
				}
				info, err := packet.Parse(fr)
				fixed, wantFixed, varied, tmplVaried := info.Dst, tmpl.Dst, info.Src, tmpl.Src
				if tt.f.Flows.Dst {
					fixed, wantFixed, varied, tmplVaried = info.Src, tmpl.Src, info.Dst, tmpl.Dst
				}
				if err != nil || fixed != wantFixed {
					continue // the stacks' own ND/MLD
				}
				fl := n % flows
				want := netip.AddrPortFrom(addAddr(tmplVaried.Addr(), uint32(fl/ports)), tmplVaried.Port()+uint16(fl%ports))
				if varied != want {
					t.Errorf("frame %d carries %v, want %v (flow %d)", n, varied, want, fl)
				}
				if !info.L4ChecksumOK || (tmpl.Src.Addr().Is4() && !info.IPChecksumOK) {
					t.Errorf("frame %d: checksums ok: IP %v, L4 %v", n, info.IPChecksumOK, info.L4ChecksumOK)
				}
				if info.Proto == packet.ProtoTCP && info.TCPFlags != tmpl.TCPFlags {
					t.Errorf("frame %d: TCP flags %#x, want %#x", n, info.TCPFlags, tmpl.TCPFlags)
				}
				n++
			}
		})
	}
	// Bad variations are refused before anything is sent.
	for _, f := range []FloodFlows{{Ports: 7}, {Addrs: 1 << 31, Ports: 2}} {
		bad := udp4
		bad.Flows = f
		if _, err := bad.Run(context.Background()); err == nil {
			t.Errorf("flood with %+v from port 65530 ran", f)
		}
	}
	icmp := Flood{NS: l.Client, Iface: l.ClientIf, Count: 1, Flows: FloodFlows{Ports: 2},
		Frame: packet.ICMPEcho(packet.Spec{Src: netip.AddrPortFrom(l.ClientAddr4, 0), Dst: netip.AddrPortFrom(l.ServerAddr4, 0)}, 1, 1)}
	if _, err := icmp.Run(context.Background()); err == nil {
		t.Error("many-flow flood of ICMP frames ran")
	}
}

// TestIntegrationManyFlowsTracked floods many UDP flows and a SYN flood
// through a firewall running the nftables baseline: the kernel's conntrack
// sees exactly the number of distinct flows asked for, no more and no
// fewer. The flood repeats (each round sends every flow once) only while
// the veth's own counters show frames it dropped.
func TestIntegrationManyFlowsTracked(t *testing.T) {
	testutil.Command(t, "nft", "nftables")
	l := NewT(t, nil)
	testutil.Privileged(t, testutil.NeedBPF)
	if err := l.ResolveNeighbors(context.Background()); err != nil {
		t.Fatal(err)
	}
	remove, err := l.InstallNftables(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	stop, err := TCPEcho(context.Background(), l.Server, netip.AddrPortFrom(l.ServerAddr4, 6011))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for _, tt := range []struct {
		name  string
		spec  FloodSpec
		state string // conntrack TCP state every flow must be in, if any
	}{
		{"udp 4000 flows", FloodSpec{Proto: packet.ProtoUDP, Dst: netip.AddrPortFrom(l.ServerAddr4, 6010), Flows: FloodFlows{Ports: 1000, Addrs: 4}}, ""},
		{"udp6 1500 flows", FloodSpec{Proto: packet.ProtoUDP, Dst: netip.AddrPortFrom(l.ServerAddr6, 6010), Flows: FloodFlows{Ports: 1500}}, ""},
		{"syn flood 2000 flows", FloodSpec{Proto: packet.ProtoTCP, Dst: netip.AddrPortFrom(l.ServerAddr4, 6011), Flows: FloodFlows{Ports: 1000, Addrs: 2}}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.spec.Flows.Count()
			tt.spec.Count = want
			f, err := l.ClientFlood(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			f.BatchSize = 16 // gentle on the 256-frame veth ring
			seen := map[string]bool{}
			for round := 1; ; round++ {
				d0, err := ReadVethDrops(l.Client, l.ClientIf, l.Firewall, l.FwClientIf)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.Run(context.Background()); err != nil {
					t.Fatal(err)
				}
				// conntrack entries appear as the firewall's softirq
				// forwards: poll until the count stops short or is met.
				deadline := time.Now().Add(3 * time.Second)
				for {
					seen, err = trackedFlows(l, tt.spec.Dst)
					if err != nil {
						t.Fatal(err)
					}
					if uint64(len(seen)) >= want || time.Now().After(deadline) {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				d1, err := ReadVethDrops(l.Client, l.ClientIf, l.Firewall, l.FwClientIf)
				if err != nil {
					t.Fatal(err)
				}
				lost := d1.Sub(d0).Total()
				if uint64(len(seen)) >= want || lost == 0 || round == 5 {
					t.Logf("round %d: %d flows tracked, veth dropped %d frames", round, len(seen), lost)
					break
				}
			}
			if uint64(len(seen)) != want {
				t.Errorf("conntrack tracks %d distinct flows to %v, want %d", len(seen), tt.spec.Dst, want)
			}
		})
	}
}

// trackedFlows is the set of the firewall's conntrack entries to dst,
// keyed by their source.
func trackedFlows(l *Lab, dst netip.AddrPort) (map[string]bool, error) {
	flows, err := ConntrackFlows(l.Firewall)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, f := range flows {
		d, ok := netip.AddrFromSlice(f.Forward.DstIP)
		if !ok || d.Unmap() != dst.Addr() || f.Forward.DstPort != dst.Port() {
			continue
		}
		out[fmt.Sprintf("%d %s %d", f.Forward.Protocol, f.Forward.SrcIP, f.Forward.SrcPort)] = true
	}
	return out, nil
}

// TestIntegrationHandshakes makes paced TCP connections through the
// firewall's kernel forwarding, closed with FIN and with RST: every one
// completes, the server sees each end the way it was made, and the pace
// holds; against a port without a listener every attempt fails, counted
// as refused.
func TestIntegrationHandshakes(t *testing.T) {
	l := NewT(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dst := netip.AddrPortFrom(l.ServerAddr4, 6020)
	a, err := Accept(ctx, l.Server, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	const n, rate = 300, 1000.0
	var want AcceptorCounts
	for _, mode := range []CloseMode{CloseFIN, CloseRST} {
		res, err := Handshakes(ctx, l.Client, dst, &HandshakeOptions{Count: n, Rate: rate, Close: mode})
		if err != nil {
			t.Fatal(err)
		}
		if res.Attempted != n || res.Completed != n || res.Failed != 0 {
			t.Errorf("%s: %+v, want %d completed", mode, res, n)
		}
		// n attempts paced at rate: the last starts (n-1)/rate after the first.
		if min := time.Duration(float64(n-1) / rate * float64(time.Second)); res.Elapsed < min {
			t.Errorf("%s: %d connections in %v, faster than the %g/s asked for", mode, n, res.Elapsed, rate)
		}
		want.Accepted += n
		if mode == CloseFIN {
			want.FIN += n
		} else {
			want.RST += n
		}
		deadline := time.Now().Add(5 * time.Second)
		for a.Counts() != want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := a.Counts(); got != want {
			t.Errorf("%s: server counts %+v, want %+v", mode, got, want)
		}
		t.Logf("%s: %d handshakes in %v (%.0f/s)", mode, res.Completed, res.Elapsed, res.Rate)
	}
	// Unpaced, many workers: the figure benchmarks use.
	res, err := Handshakes(ctx, l.Client, dst, &HandshakeOptions{Count: 2000, Close: CloseRST})
	if err != nil || res.Completed != 2000 {
		t.Errorf("unpaced: %+v, %v", res, err)
	}
	t.Logf("unpaced: %d handshakes in %v (%.0f/s)", res.Completed, res.Elapsed, res.Rate)

	res, err = Handshakes(ctx, l.Client, netip.AddrPortFrom(l.ServerAddr6, 6021), &HandshakeOptions{Count: 50, Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	if res.Attempted != 50 || res.Failed != 50 || res.Errors["refused"] != 50 {
		t.Errorf("to a closed port: %+v, want 50 refused", res)
	}
}

// TestIntegrationGeneratedHandshakes drives the three steps of TCP
// handshakes for many flows from the generator - the client's SYNs, the
// server's SYN-ACKs (ReplyFlood, to client addresses the firewall knows
// from AddClientNeighbors), the client's ACKs - through the nftables
// baseline: conntrack follows every flow to SYN_RECV and then to
// ESTABLISHED (so the sequence numbers pass its window check), and
// ConntrackClear empties the table. Counters at both ends drop what
// arrives, so neither stack answers with an RST. A step is repeated (it is
// idempotent) only while the kernel dropped frames on the way.
func TestIntegrationGeneratedHandshakes(t *testing.T) {
	testutil.Command(t, "nft", "nftables")
	l := NewT(t, nil)
	testutil.Privileged(t, testutil.NeedBPF)
	ctx := context.Background()
	if err := l.ResolveNeighbors(ctx); err != nil {
		t.Fatal(err)
	}
	flows := FloodFlows{Ports: 500, Addrs: 3}
	if err := l.AddClientNeighbors(flows); err != nil {
		t.Fatal(err)
	}
	remove, err := l.InstallNftables(&NftablesOptions{Allow: []NftAllow{{Proto: packet.ProtoTCP, Ports: []uint16{6020}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	var atClient, atServer *Counter
	for _, end := range []struct {
		ns    *NS
		iface string
		c     **Counter
	}{{l.Client, l.ClientIf, &atClient}, {l.Server, l.ServerIf, &atServer}} {
		c, err := AttachCounter(end.ns, end.iface, &CounterOptions{Proto: packet.ProtoTCP, Drop: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		*end.c = c
	}
	n := flows.Count()
	spec := FloodSpec{Proto: packet.ProtoTCP, Dst: netip.AddrPortFrom(l.ServerAddr4, 6020), Flows: flows, Count: n}
	syn, err := l.ClientFlood(spec)
	if err != nil {
		t.Fatal(err)
	}
	spec.TCPFlags, spec.TCPSeq, spec.TCPAck = packet.TCPSyn|packet.TCPAck, 1000, 2
	synack, err := l.ReplyFlood(spec)
	if err != nil {
		t.Fatal(err)
	}
	spec.TCPFlags, spec.TCPSeq, spec.TCPAck = packet.TCPAck, 2, 1001
	ack, err := l.ClientFlood(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name  string
		f     Flood
		at    *Counter // where the step's frames arrive
		state uint8    // conntrack TCP state every flow must reach
	}{{"syn", syn, atServer, nl.TCP_CONNTRACK_SYN_SENT}, {"syn-ack", synack, atClient, nl.TCP_CONNTRACK_SYN_RECV},
		{"ack", ack, atServer, nl.TCP_CONNTRACK_ESTABLISHED}} {
		step.f.BatchSize = 16 // gentle on the 256-frame veth ring
		var got, arrived uint64
		for round := 1; round <= 5; round++ {
			before, _, err := step.at.Read()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := step.f.Run(ctx); err != nil {
				t.Fatal(err)
			}
			// Every frame of one round forwarded: conntrack's view alone
			// would not show a SYN-ACK that waits for a neighbour.
			after, err := settle(step.at)
			if err != nil {
				t.Fatal(err)
			}
			if arrived = after - before; arrived != n {
				continue
			}
			deadline := time.Now().Add(3 * time.Second)
			for {
				if got, err = ConntrackInTCPState(l.Firewall, step.state); err != nil {
					t.Fatal(err)
				}
				if got >= n || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if got >= n {
				break
			}
		}
		if got != n || arrived != n {
			t.Fatalf("after the %s step %d of %d flows in TCP state %d, %d frames of the last round forwarded", step.name, got, n, step.state, arrived)
		}
	}
	if err := ConntrackClear(ctx, l.Firewall); err != nil {
		t.Fatal(err)
	}
	if c, err := ConntrackCount(l.Firewall); err != nil || c != 0 {
		t.Errorf("after ConntrackClear: %d entries, %v", c, err)
	}
}
