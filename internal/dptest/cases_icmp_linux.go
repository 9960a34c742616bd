package dptest

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
)

func init() {
	Register(
		Case{Name: "icmp/related errors", Config: udpAnyConfig, Run: relatedErrors},
		Case{Name: "icmp/unrelated errors", Config: udpAnyConfig, Run: unrelatedErrors},
		Case{Name: "icmp/ttl 1", Config: udpAnyConfig, Run: ttlOne},
		Case{Name: "icmp/above the mtu", Config: udpAnyConfig, Run: aboveMTU},
		Case{Name: "ip/fragments", Config: udpAnyConfig, Run: fragments},
		Case{Name: "neighbour/unresolved next hop", Config: udpAnyConfig, Run: unresolvedNeighbour},
	)
}

// udpAnyConfig allows UDP from clients to servers on any port, and nothing
// back: an ICMP error from the server side passes only as part of a flow.
func udpAnyConfig(e *Env) *dataplane.Config {
	l := e.Lab
	c := Base(l)
	c.Policies = []dataplane.Policy{{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoUDP, Action: dataplane.ActionAllow}}
	return c
}

// relatedErrors: the server's port unreachable about an allowed flow goes
// back to the client (the flow's session relates it), although no policy
// allows anything from servers to clients.
func relatedErrors(t testing.TB, e *Env) {
	l := e.Lab
	before := e.Counters(t, "related_icmp")
	Expect(t,
		e.UDPFlow("udp4 to a closed port: port unreachable", l.ServerAddr4, PortClosed, PortUnreachable),
		e.UDPFlow("udp6 to a closed port: port unreachable", l.ServerAddr6, PortClosed, PortUnreachable),
	)
	if d := e.DeltaAtLeast(t, before, map[string]uint64{"related_icmp": 2}); d["related_icmp"] < 2 {
		t.Errorf("related_icmp rose by %d, want >= 2", d["related_icmp"])
	}
}

// unrelatedErrors: an ICMP error quoting no live flow is dropped and
// counted, even where a policy would allow ICMP.
func unrelatedErrors(t testing.TB, e *Env) {
	l := e.Lab
	cfg := e.Applied.Clone()
	cfg.Policies = append(cfg.Policies,
		dataplane.Policy{FromZone: "servers", ToZone: "clients", Protocol: dataplane.ProtoICMP, Action: dataplane.ActionAllow},
		dataplane.Policy{FromZone: "servers", ToZone: "clients", Protocol: dataplane.ProtoICMPv6, Action: dataplane.ActionAllow})
	e.Apply(t, cfg)
	before := e.Counters(t, "dropped_icmp_unrelated")
	cap, err := Capture(l.Lab.Client, l.ClientIf)
	if err != nil {
		t.Fatal(err)
	}
	defer cap.Close()
	sport := e.Port()
	quote4 := packet.UDP(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
		Src: netip.AddrPortFrom(l.ClientAddr4, sport), Dst: netip.AddrPortFrom(l.ServerAddr4, PortClosed)})
	quote6 := packet.UDP(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
		Src: netip.AddrPortFrom(l.ClientAddr6, sport), Dst: netip.AddrPortFrom(l.ServerAddr6, PortClosed)})
	e4 := icmpError(packet.Spec{SrcMAC: l.ServerMAC, DstMAC: l.FwServerMAC,
		Src: netip.AddrPortFrom(l.ServerAddr4, 0), Dst: netip.AddrPortFrom(l.ClientAddr4, 0)}, 3, 3, quote4)
	e6 := icmpError(packet.Spec{SrcMAC: l.ServerMAC, DstMAC: l.FwServerMAC,
		Src: netip.AddrPortFrom(l.ServerAddr6, 0), Dst: netip.AddrPortFrom(l.ClientAddr6, 0)}, 1, 4, quote6)
	if err := SendFrames(l.Lab.Server, l.ServerIf, e4, e6); err != nil {
		t.Fatal(err)
	}
	if n := cap.Count(Silence, func(i packet.Info) bool {
		return (i.Proto == packet.ProtoICMP || i.Proto == packet.ProtoICMPv6) && (i.Src.Addr() == l.ServerAddr4 || i.Src.Addr() == l.ServerAddr6)
	}); n != 0 {
		t.Errorf("%d unrelated ICMP error(s) reached the client", n)
	}
	if d := e.DeltaAtLeast(t, before, map[string]uint64{"dropped_icmp_unrelated": 2}); d["dropped_icmp_unrelated"] != 2 {
		t.Errorf("dropped_icmp_unrelated rose by %d, want 2", d["dropped_icmp_unrelated"])
	}
}

// ttlOne: a packet whose TTL (hop limit) would expire at the firewall is
// answered with time exceeded from the firewall, as a router does
// (traceroute).
func ttlOne(t testing.TB, e *Env) {
	l := e.Lab
	probe := func(name string, dst, fw netip.Addr, typ uint8) Flow {
		f := e.UDPFlowWith(name, dst, PortUDP, ICMPError, UDPOptions{TTL: 1})
		run := f.Run
		f.Run = func() Probe {
			p := run()
			if p.Outcome == ICMPError && (p.ICMP.Origin != icmpOrigin(dst) || p.ICMP.Type != typ || p.Offender != fw) {
				p.Outcome = Failed
				p.Err = errorf("wrong ICMP error: origin %d type %d from %s, want type %d from %s", p.ICMP.Origin, p.ICMP.Type, p.Offender, typ, fw)
			}
			return p
		}
		return f
	}
	Expect(t,
		probe("udp4 ttl 1: time exceeded", l.ServerAddr4, l.FwClientAddr4, 11),
		probe("udp6 hop limit 1: time exceeded", l.ServerAddr6, l.FwClientAddr6, 3),
	)
}

// aboveMTU: a packet bigger than the egress MTU with don't-fragment set
// (every IPv6 packet) is answered with fragmentation needed / packet too
// big naming the MTU (path MTU discovery).
func aboveMTU(t testing.TB, e *Env) {
	l := e.Lab
	const mtu = 1280
	for _, end := range []struct {
		ns    func() error
		reset func() error
	}{
		{func() error { return SetMTU(l.Firewall, l.FwServerIf, mtu) }, func() error { return SetMTU(l.Firewall, l.FwServerIf, 1500) }},
		{func() error { return SetMTU(l.Lab.Server, l.ServerIf, mtu) }, func() error { return SetMTU(l.Lab.Server, l.ServerIf, 1500) }},
	} {
		if err := end.ns(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := end.reset(); err != nil {
				t.Errorf("restore mtu: %v", err)
			}
		})
	}
	// A backend learns the new MTU from the kernel's link notification
	// (the userspace backend: netlink), a moment after the change: wait
	// until a datagram too big for it is answered, 3 s at most.
	for deadline := time.Now().Add(3 * time.Second); ; {
		p := UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, PortUDP), UDPOptions{SrcPort: e.Port(), Size: 1400, DF: true, Timeout: 300 * time.Millisecond})
		if p.Outcome == ICMPError || time.Now().After(deadline) {
			break
		}
	}
	probe := func(name string, dst, fw netip.Addr, typ, code uint8) Flow {
		f := e.UDPFlowWith(name, dst, PortUDP, ICMPError, UDPOptions{Size: 1400, DF: true})
		run := f.Run
		f.Run = func() Probe {
			p := run()
			if p.Outcome == ICMPError && (p.ICMP.Type != typ || p.ICMP.Code != code || p.ICMP.Info != mtu || p.Offender != fw) {
				p.Outcome = Failed
				p.Err = errorf("wrong ICMP error: type %d code %d mtu %d from %s, want type %d code %d mtu %d from %s",
					p.ICMP.Type, p.ICMP.Code, p.ICMP.Info, p.Offender, typ, code, mtu, fw)
			}
			return p
		}
		return f
	}
	Expect(t,
		probe("udp4 1400 bytes, DF, towards a 1280 link: fragmentation needed", l.ServerAddr4, l.FwClientAddr4, 3, 4),
		probe("udp6 1400 bytes towards a 1280 link: packet too big", l.ServerAddr6, l.FwClientAddr6, 2, 0),
		e.UDPFlowWith("udp4 1200 bytes, DF: fits", l.ServerAddr4, PortUDP, Answered, UDPOptions{Size: 1200, DF: true}),
		e.UDPFlowWith("udp6 1200 bytes: fits", l.ServerAddr6, PortUDP, Answered, UDPOptions{Size: 1200, DF: true}),
	)
}

// fragments: a non-first fragment carries no ports, so it never matches a
// policy and is dropped (counted): a datagram the client fragments never
// arrives whole. Datagrams that need no fragment still pass.
func fragments(t testing.TB, e *Env) {
	l := e.Lab
	before := e.Counters(t, "dropped_fragment")
	Expect(t,
		e.UDPFlowWith("udp4 3000 bytes, fragmented by the client", l.ServerAddr4, PortUDP, Silent, UDPOptions{Size: 3000, Fragment: true}),
		e.UDPFlowWith("udp6 3000 bytes, fragmented by the client", l.ServerAddr6, PortUDP, Silent, UDPOptions{Size: 3000, Fragment: true}),
		e.UDPFlowWith("udp4 1000 bytes, one packet", l.ServerAddr4, PortUDP, Answered, UDPOptions{Size: 1000}),
	)
	// 3000 bytes in 1500-byte packets: 2 non-first fragments (IPv4).
	if d := e.DeltaAtLeast(t, before, map[string]uint64{"dropped_fragment": 2}); d["dropped_fragment"] < 2 {
		t.Errorf("dropped_fragment rose by %d, want >= 2", d["dropped_fragment"])
	}
}

// unresolvedNeighbour: the server answers on an address the firewall has
// never resolved. The first datagram of a flow to it is delivered while
// the next hop is resolved, as the kernel's own forwarding does: nothing
// is lost for it.
func unresolvedNeighbour(t testing.TB, e *Env) {
	l := e.Lab
	// A host address the lab never used: no neighbour table (the kernel's
	// or a backend's) has an entry for it.
	var fresh []netip.Addr
	for _, n := range []netip.Prefix{l.ServerNet4, l.ServerNet6} {
		a := n.Addr().Next().Next().Next() // .3 / ::3: the lab uses .1 and .2
		if err := AddAddress(l.Lab.Server, l.ServerIf, netip.PrefixFrom(a, n.Bits())); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := DeleteAddress(l.Lab.Server, l.ServerIf, netip.PrefixFrom(a, n.Bits())); err != nil {
				t.Errorf("remove %s: %v", a, err)
			}
		})
		stop, err := netlab.UDPEcho(context.Background(), l.Lab.Server, netip.AddrPortFrom(a, PortUDP))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		fresh = append(fresh, a)
	}
	before := e.Settle(t, "passed_no_neighbor", "dropped_no_neighbor")
	Expect(t,
		e.UDPFlow("udp4 to a next hop never resolved", fresh[0], PortUDP, Answered),
		e.UDPFlow("udp6 to a next hop never resolved", fresh[1], PortUDP, Answered),
	)
	// Both backends hand the first packet to the kernel, which resolves
	// the next hop and sends it: counted as passed, never dropped.
	d := e.DeltaAtLeast(t, before, map[string]uint64{"passed_no_neighbor": 2})
	if d["passed_no_neighbor"] < 2 || d["dropped_no_neighbor"] != 0 {
		t.Errorf("passed_no_neighbor +%d (want >= 2: the first packet of each flow), dropped_no_neighbor +%d (want 0)",
			d["passed_no_neighbor"], d["dropped_no_neighbor"])
	}
}

func icmpOrigin(a netip.Addr) uint8 {
	if a.Is4() {
		return unix.SO_EE_ORIGIN_ICMP
	}
	return unix.SO_EE_ORIGIN_ICMP6
}

// icmpError builds an ICMP (outer IPv4) or ICMPv6 error of type/code from
// outer.Src to outer.Dst quoting the IP packet of frame quoted (its IP
// header and 8 bytes more, as routers do): an echo frame with the quote as
// payload whose type and code are then changed, the checksum updated
// incrementally (RFC 1624).
func icmpError(outer packet.Spec, typ, code uint8, quoted []byte) []byte {
	l3 := quoted[14:]
	hlen := 40
	if l3[0]>>4 == 4 {
		hlen = int(l3[0]&0xf) * 4
	}
	outer.Payload = append([]byte(nil), l3[:hlen+8]...)
	f := packet.ICMPEcho(outer, 0, 0)
	l4 := 14 + packet.IPv4Len
	if outer.Src.Addr().Is6() {
		l4 = 14 + packet.IPv6Len
	}
	old := binary.BigEndian.Uint16(f[l4:])
	f[l4], f[l4+1] = typ, code
	sum := uint32(^binary.BigEndian.Uint16(f[l4+2:])) + uint32(^old) + uint32(binary.BigEndian.Uint16(f[l4:]))
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(f[l4+2:], ^uint16(sum))
	return f
}
