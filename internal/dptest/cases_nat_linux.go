package dptest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
)

// NAT cases (dataplane/nat.go, issue 16). Each needs the backend to
// declare source or destination NAT (Case.Needs); a backend that does runs
// them like every other case.
func init() {
	snat := []dataplane.Feature{dataplane.FeatureSourceNAT}
	dnat := []dataplane.Feature{dataplane.FeatureDestinationNAT}
	Register(
		Case{Name: "nat/masquerade", Needs: snat, Config: masqConfig, Run: natMasquerade},
		Case{Name: "nat/pool exhaustion", Needs: snat, Fresh: true, Config: poolConfig, Run: natPoolExhaustion},
		Case{Name: "nat/port forwarding", Needs: dnat, Config: forwardConfig, Run: natPortForwarding},
		Case{Name: "nat/icmp errors", Needs: snat, Config: natICMPConfig, Run: natICMPErrors},
		Case{Name: "nat/checksums", Needs: snat, Config: masqConfig, Run: natChecksums},
		Case{Name: "nat/rule match", Needs: snat, Config: masqConfig, Run: natRuleMatch},
		Case{Name: "nat/ipv6 refused", Run: natIPv6Refused},
	)
}

// natPool is the pool address of the pool cases: outside every lab link,
// so the server reaches it through its default route, the firewall.
var (
	natPool  = netip.MustParseAddr("198.51.100.7")
	natPoolB = netip.MustParseAddr("198.51.100.9")
)

// masqConfig: Base, ICMP from clients to servers allowed too, and the
// clients' traffic to the servers masqueraded behind the firewall's
// server-side address (rule "out").
func masqConfig(e *Env) *dataplane.Config {
	c := Base(e.Lab)
	c.Policies = append(c.Policies,
		dataplane.Policy{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoICMP, Action: dataplane.ActionAllow},
		dataplane.Policy{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoICMPv6, Action: dataplane.ActionAllow})
	c.NAT = []dataplane.NATRule{{Name: "out", Type: dataplane.NATSource, FromZone: "clients", ToZone: "servers", Masquerade: true}}
	return c
}

// findSession returns the listed session whose source is src.
func findSession(list []dataplane.Session, src netip.AddrPort) (dataplane.Session, bool) {
	for _, s := range list {
		if s.Source == src.String() {
			return s, true
		}
	}
	return dataplane.Session{}, false
}

// collect returns the frames c recorded within wait, parsed.
func collect(c *FrameCapture, wait time.Duration) []packet.Info {
	var out []packet.Info
	c.Count(wait, func(i packet.Info) bool {
		out = append(out, i)
		return true
	})
	return out
}

// natMasquerade: TCP, UDP and ICMP echo from the client reach the server
// from the firewall's address and are answered; two clients using one
// source port both get through, on two slots; IPv6 passes untranslated;
// the sessions list both tuples and the rule.
func natMasquerade(t testing.TB, e *Env) {
	l := e.Lab
	capt, err := Capture(l.Lab.Server, l.ServerIf)
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Close()
	before := e.Counters(t, dataplane.CounterNATTranslated)
	shared := e.Port()
	// Two clients, one source port.
	udpA := Flow{Name: "udp4 from client A", Want: Answered, Run: func() Probe {
		return UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, PortUDP), UDPOptions{SrcAddr: l.ClientAddr4, SrcPort: shared})
	}}
	udpB := Flow{Name: "udp4 from client B, same port", Want: Answered, Run: func() Probe {
		return UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, PortUDP), UDPOptions{SrcAddr: l.ClientAddr4b, SrcPort: shared})
	}}
	pingID := e.Port()
	Expect(t, udpA, udpB,
		e.TCPFlow("tcp4", l.ServerAddr4, PortTCP, Answered),
		Flow{Name: "ping4", Want: Answered, Run: func() Probe { return Ping(l.Lab.Client, l.ServerAddr4, pingID, 2*time.Second) }},
		e.UDPFlow("udp6 (not translated: IPv4 rules)", l.ServerAddr6, PortUDP, Answered),
	)
	// What the server received from the clients' side.
	fromClients, sharedPorts := 0, map[uint16]bool{}
	for _, i := range collect(capt, 300*time.Millisecond) {
		if !i.Src.Addr().Is4() || i.Dst.Addr() != l.ServerAddr4 {
			continue
		}
		fromClients++
		if i.Src.Addr() != l.FwServerAddr4 {
			t.Errorf("the server received %s -> %s (proto %d): want the firewall's address %s as the source", i.Src, i.Dst, i.Proto, l.FwServerAddr4)
		}
		if i.Proto == packet.ProtoUDP && i.Dst.Port() == PortUDP {
			sharedPorts[i.Src.Port()] = true
		}
	}
	if fromClients == 0 {
		t.Error("the server's capture saw nothing from the clients")
	}
	if len(sharedPorts) < 2 {
		t.Errorf("UDP from two clients with one source port arrived from ports %v, want two", sharedPorts)
	}
	// Both tuples in the listing.
	list := e.Sessions(t)
	seenPorts := map[string]bool{}
	for _, src := range []netip.Addr{l.ClientAddr4, l.ClientAddr4b} {
		s, ok := findSession(list, netip.AddrPortFrom(src, shared))
		if !ok {
			t.Errorf("no session from %s:%d", src, shared)
			continue
		}
		ts, err := netip.ParseAddrPort(s.TranslatedSource)
		if err != nil || ts.Addr() != l.FwServerAddr4 || s.TranslatedDestination != netip.AddrPortFrom(l.ServerAddr4, PortUDP).String() || s.NATRule != "out" {
			t.Errorf("session %s -> %s: translated %q -> %q by %q, want %s:port -> %s:%d by \"out\"",
				s.Source, s.Destination, s.TranslatedSource, s.TranslatedDestination, s.NATRule, l.FwServerAddr4, l.ServerAddr4, PortUDP)
		}
		if !sharedPorts[ts.Port()] {
			t.Errorf("session %s lists translated port %d, the server saw %v", s.Source, ts.Port(), sharedPorts)
		}
		seenPorts[s.TranslatedSource] = true
	}
	if len(seenPorts) == 1 {
		t.Errorf("two clients' sessions share the slot %v", seenPorts)
	}
	for _, s := range list {
		a, err := netip.ParseAddrPort(s.Source)
		if err == nil && a.Addr().Is6() && (s.TranslatedSource != "" || s.NATRule != "") {
			t.Errorf("IPv6 session %s -> %s translated (%q, %q)", s.Source, s.Destination, s.TranslatedSource, s.NATRule)
		}
	}
	if d := e.DeltaAtLeast(t, before, map[string]uint64{dataplane.CounterNATTranslated: 4}); d[dataplane.CounterNATTranslated] < 4 {
		t.Errorf("%s rose by %d, want >= 4 (udp x2, tcp, icmp)", dataplane.CounterNATTranslated, d[dataplane.CounterNATTranslated])
	}
}

// poolConfig: UDP of the clients translated to a pool of one address and
// 16 ports (rule "pool16"), with 4 s UDP timeouts so the ports come back
// within the case.
func poolConfig(e *Env) *dataplane.Config {
	c := Base(e.Lab)
	four := dataplane.Duration(4 * time.Second)
	c.Timeouts = dataplane.Timeouts{UDP: four, UDPUnreplied: four}
	c.NAT = []dataplane.NATRule{{Name: "pool16", Type: dataplane.NATSource, FromZone: "clients", ToZone: "servers",
		Protocol: dataplane.ProtoUDP, Pool: []string{natPool.String()}, Ports: dataplane.PortRange{First: 40000, Last: 40015}}}
	return c
}

// poolRow reads the nat_pool row of scope, failing when it is missing.
func poolRow(t testing.TB, e *Env, scope string) dataplane.Resource {
	t.Helper()
	r, ok := e.Report(t).Find(dataplane.ResourceNATPool, scope)
	if !ok || r.Used == nil {
		t.Fatalf("no countable %s row %q (%+v)", dataplane.ResourceNATPool, scope, r)
	}
	return r
}

// natPoolExhaustion: 16 concurrent flows fill a pool of 1 x 16 ports (row
// at 100 %, every port in range); the 17th is dropped and counted; a
// packet to the pool address that is no flow's reply is dropped and
// counted; once the flows time out the ports are free again.
func natPoolExhaustion(t testing.TB, e *Env) {
	l := e.Lab
	if r := poolRow(t, e, "pool16"); r.Capacity != 16 || *r.Used != 0 || r.Kind != dataplane.KindPool {
		t.Fatalf("empty pool row: kind %q capacity %d used %d, want %q, 16 and 0", r.Kind, r.Capacity, *r.Used, dataplane.KindPool)
	}
	var flows []Flow
	for i := range 16 {
		flows = append(flows, e.UDPFlow(fmt.Sprintf("udp4 flow %d of 16", i+1), l.ServerAddr4, PortUDP, Answered))
	}
	Expect(t, flows...)
	r := poolRow(t, e, "pool16")
	if u, ok := r.Utilization(); *r.Used != 16 || !ok || u != 100 {
		t.Errorf("pool row after 16 flows: used %d of %d (%.0f %%), want 16 (100 %%)", *r.Used, r.Capacity, u)
	}
	for _, d := range e.Report(t).Resources {
		if d.Name == dataplane.ResourceNATPool && d.Detail && d.Scope == "pool16/"+natPool.String() && (d.Used == nil || *d.Used != 16) {
			t.Errorf("detail row %s: %+v, want 16 used", d.Scope, d)
		}
	}
	for _, s := range e.Sessions(t) {
		if s.NATRule != "pool16" {
			continue
		}
		ts, err := netip.ParseAddrPort(s.TranslatedSource)
		if err != nil || ts.Addr() != natPool || ts.Port() < 40000 || ts.Port() > 40015 {
			t.Errorf("session %s translated to %q, want %s:40000-40015", s.Source, s.TranslatedSource, natPool)
		}
	}
	before := e.Counters(t, dataplane.CounterNATPoolExhausted, dataplane.CounterNATReverseMiss)
	Expect(t, e.UDPFlow("udp4 flow 17: no slot left", l.ServerAddr4, PortUDP, Silent))
	// To the pool address, from the server, no session: a reverse miss.
	stray := packet.UDP(packet.Spec{SrcMAC: l.ServerMAC, DstMAC: l.FwServerMAC,
		Src: netip.AddrPortFrom(l.ServerAddr4, PortUDP), Dst: netip.AddrPortFrom(natPool, 40020), PayloadLen: 8})
	if err := SendFrames(l.Lab.Server, l.ServerIf, stray); err != nil {
		t.Fatal(err)
	}
	d := e.DeltaAtLeast(t, before, map[string]uint64{dataplane.CounterNATPoolExhausted: 1, dataplane.CounterNATReverseMiss: 1})
	if d[dataplane.CounterNATPoolExhausted] != 1 || d[dataplane.CounterNATReverseMiss] != 1 {
		t.Errorf("%s rose by %d and %s by %d, want 1 and 1", dataplane.CounterNATPoolExhausted, d[dataplane.CounterNATPoolExhausted],
			dataplane.CounterNATReverseMiss, d[dataplane.CounterNATReverseMiss])
	}
	// The ports return when the sessions time out.
	deadline := time.Now().Add(15 * time.Second)
	for {
		r := poolRow(t, e, "pool16")
		if *r.Used == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool row still at %d used 15 s after flows with a 4 s timeout", *r.Used)
		}
		time.Sleep(100 * time.Millisecond)
	}
	Expect(t, e.UDPFlow("udp4 after the flows timed out", l.ServerAddr4, PortUDP, Answered))
}

// forwardConfig: the firewall's server-side address forwards TCP 8080 to
// the client's TCP echo on PortInside (rule "web") and UDP PortOther to
// the client's UDP echo on PortInside ("dns"), from the servers' zone; the
// policy allows the translated destinations only.
func forwardConfig(e *Env) *dataplane.Config {
	l := e.Lab
	c := Base(l)
	c.Policies = append(c.Policies,
		dataplane.Policy{FromZone: "servers", ToZone: "clients", Protocol: dataplane.ProtoTCP,
			Destinations: []string{l.ClientAddr4.String()}, DestinationPorts: []dataplane.PortRange{{First: PortInside, Last: PortInside}}, Action: dataplane.ActionAllow},
		dataplane.Policy{FromZone: "servers", ToZone: "clients", Protocol: dataplane.ProtoUDP,
			Destinations: []string{l.ClientAddr4.String()}, DestinationPorts: []dataplane.PortRange{{First: PortInside, Last: PortInside}}, Action: dataplane.ActionAllow})
	c.NAT = []dataplane.NATRule{
		{Name: "web", Type: dataplane.NATDestination, FromZone: "servers", Destination: l.FwServerAddr4.String(), Protocol: dataplane.ProtoTCP,
			DestinationPorts: dataplane.PortRange{First: PortTCP, Last: PortTCP}, TranslateTo: l.ClientAddr4.String(), TranslatePort: PortInside},
		{Name: "dns", Type: dataplane.NATDestination, FromZone: "servers", Destination: l.FwServerAddr4.String(), Protocol: dataplane.ProtoUDP,
			DestinationPorts: dataplane.PortRange{First: PortOther, Last: PortOther}, TranslateTo: l.ClientAddr4.String(), TranslatePort: PortInside},
	}
	return c
}

// natPortForwarding: outside (the server) -> firewall:8080 reaches the
// inside server (the client) on port 80, UDP likewise; the session lists
// the translated destination; a port outside the rule is not forwarded;
// the firewall still answers pings to its address; a policy written for
// the original port, or denying the translated one, blocks the flow.
func natPortForwarding(t testing.TB, e *Env) {
	l := e.Lab
	fw := netip.AddrPortFrom(l.FwServerAddr4, PortTCP)
	tcpFrom := func(name string, dst netip.AddrPort, want Outcome) Flow {
		return Flow{Name: name, Want: want, Run: func() Probe {
			timeout := 3 * time.Second
			if want != Answered {
				timeout = Silence
			}
			err := TCP(l.Lab.Server, dst, timeout)
			switch {
			case err == nil:
				return Probe{Outcome: Answered}
			case errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout"):
				return Probe{Outcome: Silent}
			}
			return Probe{Outcome: Failed, Err: err}
		}}
	}
	dnsPort := e.Port()
	pingID := e.Port()
	Expect(t,
		tcpFrom("tcp to the firewall's 8080: forwarded to the client's 80", fw, Answered),
		Flow{Name: "udp to the firewall's 8053: forwarded to the client's 80", Want: Answered, Run: func() Probe {
			return UDP(l.Lab.Server, netip.AddrPortFrom(l.FwServerAddr4, PortOther), UDPOptions{SrcPort: dnsPort})
		}},
		Flow{Name: "ping to the firewall itself", Want: Answered, Run: func() Probe { return Ping(l.Lab.Server, l.FwServerAddr4, pingID, 2*time.Second) }},
	)
	// A port the rule does not name is not forwarded (whatever answers
	// for the firewall's own address, the client's echo does not).
	if err := TCP(l.Lab.Server, netip.AddrPortFrom(l.FwServerAddr4, PortTCP+1), Silence); err == nil {
		t.Error("tcp to the firewall's 8081 was answered: only 8080 is forwarded")
	}
	s, ok := findSession(e.Sessions(t), netip.AddrPortFrom(l.ServerAddr4, dnsPort))
	if !ok {
		t.Fatalf("no session from %s:%d", l.ServerAddr4, dnsPort)
	}
	want := dataplane.Session{Destination: netip.AddrPortFrom(l.FwServerAddr4, PortOther).String(),
		TranslatedSource: netip.AddrPortFrom(l.ServerAddr4, dnsPort).String(), TranslatedDestination: netip.AddrPortFrom(l.ClientAddr4, PortInside).String(), NATRule: "dns"}
	if s.Destination != want.Destination || s.TranslatedSource != want.TranslatedSource || s.TranslatedDestination != want.TranslatedDestination || s.NATRule != want.NATRule {
		t.Errorf("forwarded session %+v, want destination %s translated to %s -> %s by %q", s, want.Destination, want.TranslatedSource, want.TranslatedDestination, want.NATRule)
	}
	// The policy judges the translated destination: one written for the
	// original port does not admit the flow, and a deny blocks it.
	orig := e.Applied.Clone()
	orig.Policies[2].DestinationPorts = []dataplane.PortRange{{First: PortTCP, Last: PortTCP}}
	orig.Policies[2].Destinations = nil
	e.Apply(t, orig)
	Expect(t, tcpFrom("tcp 8080 with a policy for 8080 (not the translated 80)", fw, Silent))
	deny := forwardConfig(e)
	deny.Policies = append([]dataplane.Policy{{FromZone: "servers", ToZone: "clients", Protocol: dataplane.ProtoTCP,
		DestinationPorts: []dataplane.PortRange{{First: PortInside, Last: PortInside}}, Action: dataplane.ActionDeny}}, deny.Policies...)
	e.Apply(t, deny)
	Expect(t, tcpFrom("tcp 8080 with a deny for the translated destination", fw, Silent))
}

// natICMPConfig: masquerade, and UDP to any port (closed ports, beyond
// the server).
func natICMPConfig(e *Env) *dataplane.Config {
	c := udpAnyConfig(e)
	c.NAT = []dataplane.NATRule{{Name: "out", Type: dataplane.NATSource, FromZone: "clients", ToZone: "servers", Masquerade: true}}
	return c
}

// beyond is an address one hop past the server (TEST-NET-3, on a dummy
// interface of the server), which the server forwards to: a TTL of 2 from
// the client expires at the server, which answers time exceeded.
var beyond = netip.MustParseAddr("203.0.113.99")

// routeBeyondServer makes the server a router to beyond (forwarding on, a
// veth pair of its own whose far end nothing answers on: the TTL expires
// before any neighbour is needed) and routes beyond's prefix through it on the firewall;
// everything is undone in t.Cleanup.
func routeBeyondServer(t testing.TB, l *Lab) {
	t.Helper()
	dst := netip.PrefixFrom(beyond, 24).Masked()
	dummy := "nat-" + l.Suffix // and its peer, dummy+"p"
	err := l.Lab.Server.Do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return err
		}
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: dummy}, PeerName: dummy + "p"}
		if err := netlink.LinkAdd(v); err != nil {
			return fmt.Errorf("add %s: %w", dummy, err)
		}
		for _, n := range []string{dummy + "p", dummy} {
			lk, err := netlink.LinkByName(n)
			if err != nil {
				return err
			}
			if n == dummy {
				if err := netlink.AddrAdd(lk, &netlink.Addr{IPNet: &net.IPNet{IP: dst.Addr().Next().AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
					return err
				}
			}
			if err := netlink.LinkSetUp(lk); err != nil {
				return err
			}
		}
		return nil
	})
	t.Cleanup(func() {
		if err := l.Lab.Server.Do(func() error {
			if lk, err := netlink.LinkByName(dummy); err == nil {
				if err := netlink.LinkDel(lk); err != nil {
					return err
				}
			}
			return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("0"), 0o644)
		}); err != nil {
			t.Errorf("undo the server's router role: %v", err)
		}
	})
	if err != nil {
		t.Fatalf("make the server a router: %v", err)
	}
	route := &netlink.Route{LinkIndex: l.FwServerIndex, Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}, Gw: l.ServerAddr4.AsSlice()}
	if err := l.Firewall.Do(func() error { return netlink.RouteAdd(route) }); err != nil {
		t.Fatalf("route %s via the server: %v", dst, err)
	}
	t.Cleanup(func() {
		if err := l.Firewall.Do(func() error { return netlink.RouteDel(route) }); err != nil {
			t.Errorf("remove the route to %s: %v", dst, err)
		}
	})
}

// quotedError finds, among frames the client received, the ICMP error of
// type typ and returns the packet it quotes.
func quotedError(frames []packet.Info, typ uint8, client netip.Addr) (outer, quote packet.Info, err error) {
	for _, i := range frames {
		if i.Proto != packet.ProtoICMP || i.ICMPType != typ || i.Dst.Addr() != client {
			continue
		}
		if !i.IPChecksumOK || !i.L4ChecksumOK {
			return i, quote, fmt.Errorf("ICMP type %d from %s: checksums ip %v icmp %v", typ, i.Src, i.IPChecksumOK, i.L4ChecksumOK)
		}
		if len(i.Payload) < 4+20+8 {
			return i, quote, fmt.Errorf("ICMP type %d from %s: quote of %d bytes", typ, i.Src, len(i.Payload)-4)
		}
		// Rebuild the quote as a frame to parse it (the quoted UDP
		// datagram may be cut short, so parse only what is there).
		q := i.Payload[4:]
		frame := append(make([]byte, 12, 14+len(q)), 0x08, 0x00)
		frame = append(frame, q...)
		ihl := int(q[0]&0x0f) * 4
		binary.BigEndian.PutUint16(frame[14+2:], uint16(len(q)))
		if ihl+8 <= len(q) {
			binary.BigEndian.PutUint16(frame[14+ihl+4:], uint16(len(q)-ihl)) // UDP length: what is quoted
		}
		quote, err = packet.Parse(frame)
		if err != nil {
			return i, quote, fmt.Errorf("parse the quote: %w", err)
		}
		return i, quote, nil
	}
	return outer, quote, fmt.Errorf("no ICMP type %d to %s among %d frames", typ, client, len(frames))
}

// natICMPErrors: the server's port unreachable and a router's time
// exceeded about masqueraded flows reach the client with the quoted
// packet translated back: the client's own address and port, the real
// destination.
func natICMPErrors(t testing.TB, e *Env) {
	l := e.Lab
	routeBeyondServer(t, l)
	capt, err := Capture(l.Lab.Client, l.ClientIf)
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Close()
	before := e.Counters(t, "related_icmp")
	closedPort, ttlPort := e.Port(), e.Port()
	offender := func(f Flow, from netip.Addr) Flow {
		run := f.Run
		f.Run = func() Probe {
			p := run()
			if p.ICMP != nil && p.Offender != from {
				p.Outcome, p.Err = Failed, errorf("ICMP error from %s, want %s", p.Offender, from)
			}
			return p
		}
		return f
	}
	Expect(t,
		offender(Flow{Name: "udp4 to a closed port: port unreachable", Want: PortUnreachable, Run: func() Probe {
			return UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, PortClosed), UDPOptions{SrcPort: closedPort})
		}}, l.ServerAddr4),
		offender(Flow{Name: "udp4 ttl 2 past the server: time exceeded", Want: ICMPError, Run: func() Probe {
			return UDP(l.Lab.Client, netip.AddrPortFrom(beyond, PortUDP), UDPOptions{SrcPort: ttlPort, TTL: 2})
		}}, l.ServerAddr4),
	)
	frames := collect(capt, 300*time.Millisecond)
	for _, c := range []struct {
		typ   uint8
		sport uint16
		dst   netip.AddrPort
	}{{3, closedPort, netip.AddrPortFrom(l.ServerAddr4, PortClosed)}, {11, ttlPort, netip.AddrPortFrom(beyond, PortUDP)}} {
		outer, q, err := quotedError(frames, c.typ, l.ClientAddr4)
		if err != nil {
			t.Error(err)
			continue
		}
		if outer.Src.Addr() != l.ServerAddr4 {
			t.Errorf("ICMP type %d from %s, want %s", c.typ, outer.Src.Addr(), l.ServerAddr4)
		}
		if q.Src != netip.AddrPortFrom(l.ClientAddr4, c.sport) || q.Dst != c.dst || !q.IPChecksumOK {
			t.Errorf("ICMP type %d quotes %s -> %s (ip checksum %v), want %s:%d -> %s translated back",
				c.typ, q.Src, q.Dst, q.IPChecksumOK, l.ClientAddr4, c.sport, c.dst)
		}
	}
	if d := e.DeltaAtLeast(t, before, map[string]uint64{"related_icmp": 2}); d["related_icmp"] < 2 {
		t.Errorf("related_icmp rose by %d, want >= 2", d["related_icmp"])
	}
}

// udpFrame builds a UDP frame from the client to the server's PortUDP
// carrying marker.
func udpFrame(l *Lab, sport uint16, marker string) []byte {
	return packet.UDP(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
		Src: netip.AddrPortFrom(l.ClientAddr4, sport), Dst: netip.AddrPortFrom(l.ServerAddr4, PortUDP), Payload: []byte(marker)})
}

// withIPOptions inserts 8 bytes of IPv4 options (NOPs, end of list) into
// an untagged frame and fixes the header's length and checksum.
func withIPOptions(f []byte) []byte {
	opts := []byte{1, 1, 1, 1, 1, 1, 1, 0}
	out := append(append(append([]byte(nil), f[:14+20]...), opts...), f[14+20:]...)
	h := out[14:]
	h[0] = 0x47
	binary.BigEndian.PutUint16(h[2:], binary.BigEndian.Uint16(h[2:])+8)
	h[10], h[11] = 0, 0
	c := packet.Checksum(h[:28], 0)
	h[10], h[11] = byte(c>>8), byte(c)
	return out
}

// natChecksums: every translated frame is accepted by the receiving
// stacks (no checksum error counted by the server's or the client's
// kernel: `nstat`'s *InCsumErrors), including UDP without a checksum
// (which stays without one) and a packet with IP options; the frames the
// server receives verify.
func natChecksums(t testing.TB, e *Env) {
	l := e.Lab
	server0, err := netlab.ReadChecksumErrors(l.Lab.Server)
	if err != nil {
		t.Fatal(err)
	}
	client0, err := netlab.ReadChecksumErrors(l.Lab.Client)
	if err != nil {
		t.Fatal(err)
	}
	capt, err := Capture(l.Lab.Server, l.ServerIf)
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Close()
	pingID := e.Port()
	Expect(t,
		e.UDPFlow("udp4", l.ServerAddr4, PortUDP, Answered),
		// 1000 bytes: earlier cases may have left the client a path MTU
		// of 1280 to the server, and non-first fragments carry no ports.
		e.UDPFlowWith("udp4, 1000 bytes", l.ServerAddr4, PortUDP, Answered, UDPOptions{Size: 1000}),
		e.TCPFlow("tcp4", l.ServerAddr4, PortTCP, Answered),
		Flow{Name: "ping4", Want: Answered, Run: func() Probe { return Ping(l.Lab.Client, l.ServerAddr4, pingID, 2*time.Second) }},
	)
	noSum := udpFrame(l, e.Port(), "dptest-nat-nosum")
	binary.BigEndian.PutUint16(noSum[14+20+6:], 0)
	opts := withIPOptions(udpFrame(l, e.Port(), "dptest-nat-options"))
	if err := SendFrames(l.Lab.Client, l.ClientIf, noSum, opts); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, i := range collect(capt, 500*time.Millisecond) {
		if i.Dst.Addr() != l.ServerAddr4 || i.Fragment {
			continue
		}
		if !i.IPChecksumOK || !i.L4ChecksumOK {
			t.Errorf("the server received %s -> %s (proto %d) with checksums ip %v l4 %v", i.Src, i.Dst, i.Proto, i.IPChecksumOK, i.L4ChecksumOK)
		}
		for _, m := range []string{"dptest-nat-nosum", "dptest-nat-options"} {
			if i.Proto == packet.ProtoUDP && bytes.HasPrefix(i.Payload, []byte(m)) {
				seen[m] = true
				if i.Src.Addr() != l.FwServerAddr4 {
					t.Errorf("%s arrived from %s, want the firewall's address", m, i.Src)
				}
			}
		}
	}
	for _, m := range []string{"dptest-nat-nosum", "dptest-nat-options"} {
		if !seen[m] {
			t.Errorf("the server did not receive the %s datagram", m)
		}
	}
	// The zero checksum stays zero: nothing computed one on the way.
	if s, ok := udpChecksumAtServer(l, noSum); !ok || s != 0 {
		t.Errorf("the datagram sent without a checksum arrived with checksum %#04x (received: %v)", s, ok)
	}
	// Replies are received by the client's stack before the counters
	// are read (the probes waited for them).
	server1, err := netlab.ReadChecksumErrors(l.Lab.Server)
	if err != nil {
		t.Fatal(err)
	}
	client1, err := netlab.ReadChecksumErrors(l.Lab.Client)
	if err != nil {
		t.Fatal(err)
	}
	if d := server1.Sub(server0); d.Total() != 0 {
		t.Errorf("the server's kernel counted checksum errors: %s", d)
	}
	if d := client1.Sub(client0); d.Total() != 0 {
		t.Errorf("the client's kernel counted checksum errors: %s", d)
	}
}

// udpChecksumAtServer sends the client's UDP frame f again and returns the
// checksum field of the copy the server receives (ok false: none did).
func udpChecksumAtServer(l *Lab, f []byte) (uint16, bool) {
	capt, err := netlab.Capture(l.Lab.Server, l.ServerIf, 64)
	if err != nil {
		return 0, false
	}
	defer capt.Close()
	if err := SendFrames(l.Lab.Client, l.ClientIf, f); err != nil {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	marker := f[14+20+8:]
	for {
		fr, err := capt.Next(ctx)
		if err != nil {
			return 0, false
		}
		if len(fr) >= 14+20+8 && fr[12] == 0x08 && fr[13] == 0 && fr[14+9] == packet.ProtoUDP {
			ihl := int(fr[14]&0x0f) * 4
			if len(fr) >= 14+ihl+8+len(marker) && bytes.Equal(fr[14+ihl+8:14+ihl+8+len(marker)], marker) {
				return binary.BigEndian.Uint16(fr[14+ihl+6:]), true
			}
		}
	}
}

// natRuleMatch: rules are ordered and match on zones, sources and
// protocol; a rule that matches none of a flow leaves it untranslated;
// a protocol that cannot be translated is dropped and counted, never sent
// out with the inside address.
func natRuleMatch(t testing.TB, e *Env) {
	l := e.Lab
	start := e.Applied.Clone()
	rules := func(mutate func(r []dataplane.NATRule)) *dataplane.Config {
		c := start.Clone()
		c.NAT = []dataplane.NATRule{
			{Name: "b-only", Type: dataplane.NATSource, FromZone: "clients", ToZone: "servers", Sources: []string{l.ClientAddr4b.String() + "/32"},
				Pool: []string{natPoolB.String()}, Ports: dataplane.PortRange{First: 30000, Last: 30009}},
			{Name: "tcp-masq", Type: dataplane.NATSource, FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoTCP, Masquerade: true},
		}
		if mutate != nil {
			mutate(c.NAT)
		}
		return c
	}
	// How the flow of each probe was translated: "" for not at all.
	translation := func(src netip.Addr, proto string) map[string]string {
		out := map[string]string{}
		for _, s := range e.Sessions(t) {
			a, err := netip.ParseAddrPort(s.Source)
			if err == nil && a.Addr() == src && s.Protocol == proto {
				out[s.Source] = s.NATRule + " " + s.TranslatedSource
			}
		}
		return out
	}
	check := func(name string, src netip.Addr, proto string, sport uint16, wantRule string, wantAddr netip.Addr) {
		t.Helper()
		got := translation(src, proto)[netip.AddrPortFrom(src, sport).String()]
		rule, ts, _ := strings.Cut(got, " ")
		if rule != wantRule {
			t.Errorf("%s: translated by %q (%q), want %q", name, rule, ts, wantRule)
			return
		}
		if wantRule == "" {
			return
		}
		a, err := netip.ParseAddrPort(ts)
		if err != nil || a.Addr() != wantAddr {
			t.Errorf("%s: translated source %q, want %s", name, ts, wantAddr)
		}
		if wantRule == "b-only" && (a.Port() < 30000 || a.Port() > 30009) {
			t.Errorf("%s: port %d outside the rule's 30000-30009", name, a.Port())
		}
	}
	udpFrom := func(src netip.Addr) (Flow, uint16) {
		port := e.Port()
		return Flow{Name: "udp4 from " + src.String(), Want: Answered, Run: func() Probe {
			return UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, PortUDP), UDPOptions{SrcAddr: src, SrcPort: port})
		}}, port
	}
	tcpFrom := func(src netip.Addr) (Flow, uint16) {
		port := e.Port()
		return Flow{Name: "tcp4 from " + src.String(), Want: Answered, Run: func() Probe {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if _, err := netlab.TCPRoundTrip(ctx, l.Lab.Client, netip.AddrPortFrom(src, port), netip.AddrPortFrom(l.ServerAddr4, PortTCP), []byte("nat")); err != nil {
				return Probe{Outcome: Failed, Err: err}
			}
			return Probe{Outcome: Answered}
		}}, port
	}

	e.Apply(t, rules(nil))
	ua, pua := udpFrom(l.ClientAddr4)
	ub, pub := udpFrom(l.ClientAddr4b)
	ta, pta := tcpFrom(l.ClientAddr4)
	tb, ptb := tcpFrom(l.ClientAddr4b)
	Expect(t, ua, ub, ta, tb)
	check("udp from A (no rule: sources, protocol)", l.ClientAddr4, "udp", pua, "", netip.Addr{})
	check("udp from B (first rule)", l.ClientAddr4b, "udp", pub, "b-only", natPoolB)
	check("tcp from A (second rule)", l.ClientAddr4, "tcp", pta, "tcp-masq", l.FwServerAddr4)
	check("tcp from B (the first rule wins)", l.ClientAddr4b, "tcp", ptb, "b-only", natPoolB)

	// Zones: a rule for another zone pair does not apply.
	e.Apply(t, rules(func(r []dataplane.NATRule) { r[1].FromZone = "servers" }))
	ta, pta = tcpFrom(l.ClientAddr4)
	Expect(t, ta)
	check("tcp from A, rule from servers", l.ClientAddr4, "tcp", pta, "", netip.Addr{})
	e.Apply(t, rules(func(r []dataplane.NATRule) { r[1].ToZone = "clients" }))
	ta, pta = tcpFrom(l.ClientAddr4)
	Expect(t, ta)
	check("tcp from A, rule to clients", l.ClientAddr4, "tcp", pta, "", netip.Addr{})

	// A protocol with no ports under a rule for every protocol.
	c := start.Clone()
	c.Policies = append(c.Policies, dataplane.Policy{FromZone: "clients", ToZone: "servers", Action: dataplane.ActionAllow})
	e.Apply(t, c)
	capt, err := Capture(l.Lab.Server, l.ServerIf)
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Close()
	before := e.Counters(t, dataplane.CounterNATUnsupportedProto)
	req := protoFrame(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
		Src: netip.AddrPortFrom(l.ClientAddr4, 0), Dst: netip.AddrPortFrom(l.ServerAddr4, 0), PayloadLen: 16}, 132)
	if err := SendFrames(l.Lab.Client, l.ClientIf, req); err != nil {
		t.Fatal(err)
	}
	if n := capt.Count(Silence, func(i packet.Info) bool { return i.Proto == 132 }); n != 0 {
		t.Errorf("%d protocol-132 packet(s) left under a masquerade rule", n)
	}
	if d := e.DeltaAtLeast(t, before, map[string]uint64{dataplane.CounterNATUnsupportedProto: 1}); d[dataplane.CounterNATUnsupportedProto] != 1 {
		t.Errorf("%s rose by %d, want 1", dataplane.CounterNATUnsupportedProto, d[dataplane.CounterNATUnsupportedProto])
	}
}

// natIPv6Refused: no backend translates IPv6 (dataplane.FeatureNATv6):
// a rule naming IPv6 is refused with ErrNotSupported, and the running
// config stays.
func natIPv6Refused(t testing.TB, e *Env) {
	if slices.Contains(e.supported, dataplane.FeatureNATv6) {
		t.Skipf("the %s backend declares %s", e.Mode, dataplane.FeatureNATv6)
	}
	l := e.Lab
	c := Base(l)
	c.NAT = []dataplane.NATRule{{Type: dataplane.NATDestination, Destination: l.FwServerAddr6.String(), TranslateTo: l.ClientAddr6.String()}}
	_, err := e.DP.Apply(context.Background(), c)
	if !errors.Is(err, dataplane.ErrNotSupported) || !strings.Contains(err.Error(), "nat") {
		t.Errorf("Apply of an IPv6 NAT rule: %v, want ErrNotSupported naming nat", err)
	}
	Expect(t, e.UDPFlow("udp4 under the running config", l.ServerAddr4, PortUDP, Answered))
}
