package ebpfbackend

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netnsutil"
	"github.com/fwplane/fwplane/internal/packet"
)

const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

var actionNames = map[uint32]string{0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}

func labConfig(l *fibLab) *dataplane.Config {
	return &dataplane.Config{
		// The test-run tables here drive xdp_fw; its egresses take XDP
		// redirects (the lab's peers run GRO), and attach xdp says so.
		Interfaces: []dataplane.Interface{{Name: l.in, Zone: "inside", Attach: dataplane.AttachXDP}, {Name: l.out, Zone: "outside", Attach: dataplane.AttachXDP}},
		Zones:      []dataplane.Zone{{Name: "inside"}, {Name: "outside"}},
		Policies: []dataplane.Policy{
			{Name: "web", FromZone: "inside", ToZone: "outside", Destinations: []string{"10.2.0.0/24", "fd02::/64"},
				Protocol: dataplane.ProtoTCP, DestinationPorts: []dataplane.PortRange{{First: 80, Last: 80}, {First: 443, Last: 443}}, Action: dataplane.ActionAllow},
			{Name: "no-mdns-from-66", FromZone: "inside", ToZone: "outside", Sources: []string{"10.1.0.66"},
				Protocol: dataplane.ProtoUDP, Action: dataplane.ActionDeny},
			{Name: "udp", FromZone: "inside", ToZone: "outside", Protocol: dataplane.ProtoUDP, Action: dataplane.ActionAllow},
			{Name: "ping", FromZone: "inside", ToZone: "outside", Protocol: dataplane.ProtoICMP, Action: dataplane.ActionAllow},
			{Name: "ping6", FromZone: "inside", ToZone: "outside", Protocol: dataplane.ProtoICMPv6, Action: dataplane.ActionAllow},
			// Nothing from outside to inside: default deny.
		},
	}
}

func newLabBackend(t *testing.T, l *fibLab, cfg *dataplane.Config) *Backend {
	t.Helper()
	b, err := New(context.Background(), &Options{NetNS: l.path})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	res, err := b.Apply(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if res.Generation != 1 {
		t.Fatalf("first generation = %d, want 1", res.Generation)
	}
	return b
}

func (l *fibLab) spec4(src, dst netip.Addr, sport, dport uint16) packet.Spec {
	return packet.Spec{SrcMAC: l.clientMAC, DstMAC: l.inMAC, Src: netip.AddrPortFrom(src, sport), Dst: netip.AddrPortFrom(dst, dport), PayloadLen: 18}
}

// icmpError builds an ICMP error (v4 if outer is IPv4, else ICMPv6) of
// type/code from outer.Src to outer.Dst quoting the IP packet of the frame
// quoted (its IP header and the first 8 bytes after it, as routers do). It
// is an echo frame with the quote as payload whose type and code are then
// changed, with the checksum updated incrementally (RFC 1624), so the
// ICMPv6 pseudo-header needs no second implementation here.
func icmpError(outer packet.Spec, typ, code uint8, quoted []byte) []byte {
	l3 := quoted[14:]
	hlen := 40
	if l3[0]>>4 == 4 {
		hlen = int(l3[0]&0xf) * 4
	}
	outer.Payload = append([]byte(nil), l3[:hlen+8]...)
	f := packet.ICMPEcho(outer, 0, 1400) // bytes 4-7: unused / next-hop MTU
	l4 := 14 + packet.IPv4Len
	if outer.Src.Addr().Is6() {
		l4 = 14 + packet.IPv6Len
	}
	oldWord := binary.BigEndian.Uint16(f[l4:])
	f[l4], f[l4+1] = typ, code
	newWord := binary.BigEndian.Uint16(f[l4:])
	sum := uint32(^binary.BigEndian.Uint16(f[l4+2:])) + uint32(^oldWord) + uint32(newWord)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(f[l4+2:], ^uint16(sum))
	return f
}

func arpFrame() []byte {
	f := make([]byte, 42)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	binary.BigEndian.PutUint16(f[12:], 0x0806)
	return f
}

// TestDatapath drives the program with crafted frames through the kernel's
// test-run, with a real FIB behind it, and checks each verdict, the rewritten
// frame and the counters: the same table for the XDP program and for the TC
// program (one C implementation, two program types).
func TestDatapath(t *testing.T) {
	t.Run("xdp", func(t *testing.T) { testDatapath(t, false) })
	t.Run("tc", func(t *testing.T) { testDatapath(t, true) })
}

func testDatapath(t *testing.T, tc bool) {
	l := newFIBLab(t)
	cfg := labConfig(l)
	prog := (*ebpf.Program)(nil)
	if tc {
		for i := range cfg.Interfaces {
			cfg.Interfaces[i].Attach = dataplane.AttachTC
		}
	}
	b := newLabBackend(t, l, cfg)
	prog = b.objs.XdpFw
	if tc {
		prog = b.objs.TcFw
	}

	fromIn := func(s packet.Spec) packet.Spec { s.SrcMAC, s.DstMAC = l.clientMAC, l.inMAC; return s }
	fromOut := func(s packet.Spec) packet.Spec { s.SrcMAC, s.DstMAC = l.serverMAC, l.outMAC; return s }
	ap := netip.AddrPortFrom
	fragment := func(f []byte) []byte {
		binary.BigEndian.PutUint16(f[14+6:], 10) // fragment offset 80 bytes
		return f
	}
	ns := func() []byte {
		f := packet.ICMPEcho(packet.Spec{Src: ap(l.client6, 0), Dst: ap(netip.MustParseAddr("ff02::1:ff00:1"), 0)}, 1, 1)
		f[14+40] = 135 // neighbour solicitation
		return f
	}

	tests := []struct {
		name    string
		ifindex int
		frame   []byte
		want    uint32
		// For redirects: the frame must leave with these MACs, no VLAN
		// tag and the TTL one lower.
		wantDst net.HardwareAddr
		wantTTL uint8
		// xdpOnly: the kernel's skb test-run refuses frames shorter than
		// their L3 header (EINVAL), so TC cannot be fed them here.
		xdpOnly bool
	}{
		{name: "arp to kernel", ifindex: l.inIdx, frame: arpFrame(), want: xdpPass},
		{name: "ethernet header only", ifindex: l.inIdx, frame: []byte{0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0x08, 0x00}, want: xdpDrop, xdpOnly: true},
		{name: "truncated ipv4", ifindex: l.inIdx, frame: packet.UDP(fromIn(l.spec4(l.client4, l.server4, 1000, 53)))[:20], want: xdpDrop, xdpOnly: true},
		{name: "neighbour solicitation to kernel", ifindex: l.inIdx, frame: ns(), want: xdpPass},
		{name: "tcp 80 allowed", ifindex: l.inIdx, frame: packet.TCP(fromIn(l.spec4(l.client4, l.server4, 40000, 80))), want: xdpRedirect, wantDst: l.serverMAC, wantTTL: 63},
		{name: "reply passes on the session", ifindex: l.outIdx, frame: packet.TCP(fromOut(packet.Spec{Src: ap(l.server4, 80), Dst: ap(l.client4, 40000), TCPFlags: packet.TCPSyn | packet.TCPAck})), want: xdpRedirect, wantDst: l.clientMAC, wantTTL: 63},
		{name: "same direction again: cached hop, no FIB lookup", ifindex: l.inIdx, frame: packet.TCP(func() packet.Spec {
			s := fromIn(l.spec4(l.client4, l.server4, 40000, 80))
			s.TCPFlags = packet.TCPAck
			return s
		}()), want: xdpRedirect, wantDst: l.serverMAC, wantTTL: 63},
		{name: "tcp 81 default deny", ifindex: l.inIdx, frame: packet.TCP(fromIn(l.spec4(l.client4, l.server4, 40001, 81))), want: xdpDrop},
		{name: "deny rule matches first", ifindex: l.inIdx, frame: packet.UDP(fromIn(l.spec4(netip.MustParseAddr("10.1.0.66"), l.server4, 5353, 5353))), want: xdpDrop},
		{name: "later allow rule", ifindex: l.inIdx, frame: packet.UDP(fromIn(l.spec4(l.client4, l.server4, 5353, 5353))), want: xdpRedirect, wantDst: l.serverMAC, wantTTL: 63},
		{name: "outside to inside default deny", ifindex: l.outIdx, frame: packet.TCP(fromOut(packet.Spec{Src: ap(l.server4, 5000), Dst: ap(l.client4, 22)})), want: xdpDrop},
		{name: "icmp echo", ifindex: l.inIdx, frame: packet.ICMPEcho(fromIn(packet.Spec{Src: ap(l.client4, 0), Dst: ap(l.server4, 0)}), 7, 1), want: xdpRedirect, wantDst: l.serverMAC, wantTTL: 63},
		{name: "tcp v6 443 allowed", ifindex: l.inIdx, frame: packet.TCP(fromIn(packet.Spec{Src: ap(l.client6, 40000), Dst: ap(l.server6, 443)})), want: xdpRedirect, wantDst: l.serverMAC, wantTTL: 63},
		{name: "v6 reply", ifindex: l.outIdx, frame: packet.TCP(fromOut(packet.Spec{Src: ap(l.server6, 443), Dst: ap(l.client6, 40000), TCPFlags: packet.TCPAck})), want: xdpRedirect, wantDst: l.clientMAC, wantTTL: 63},
		{name: "tcp v6 22 denied", ifindex: l.inIdx, frame: packet.TCP(fromIn(packet.Spec{Src: ap(l.client6, 40000), Dst: ap(l.server6, 22)})), want: xdpDrop},
		{name: "icmpv6 echo", ifindex: l.inIdx, frame: packet.ICMPEcho(fromIn(packet.Spec{Src: ap(l.client6, 0), Dst: ap(l.server6, 0)}), 9, 1), want: xdpRedirect, wantDst: l.serverMAC, wantTTL: 63},
		{name: "vlan tag stripped on forward", ifindex: l.inIdx, frame: packet.TCP(func() packet.Spec { s := fromIn(l.spec4(l.client4, l.server4, 40002, 443)); s.VLAN = 10; return s }()), want: xdpRedirect, wantDst: l.serverMAC, wantTTL: 63},
		{name: "to the firewall itself", ifindex: l.inIdx, frame: packet.TCP(fromIn(l.spec4(l.client4, l.fw4, 40003, 22))), want: xdpPass},
		{name: "ttl 1 to kernel", ifindex: l.inIdx, frame: packet.UDP(func() packet.Spec { s := fromIn(l.spec4(l.client4, l.server4, 40004, 53)); s.TTL = 1; return s }()), want: xdpPass},
		{name: "no neighbour to kernel", ifindex: l.inIdx, frame: packet.UDP(fromIn(l.spec4(l.client4, l.noNeigh4, 40005, 53))), want: xdpPass},
		{name: "unreachable route", ifindex: l.inIdx, frame: packet.UDP(fromIn(l.spec4(l.client4, l.unreachable4, 40006, 53))), want: xdpDrop},
		{name: "non-first fragment", ifindex: l.inIdx, frame: fragment(packet.UDP(fromIn(l.spec4(l.client4, l.server4, 40007, 53)))), want: xdpDrop},
		// ICMP errors about an allowed flow pass back to its sender (path
		// MTU discovery); errors about no flow are dropped.
		{name: "udp flow for the icmp errors", ifindex: l.inIdx, frame: packet.UDP(fromIn(l.spec4(l.client4, l.server4, 40010, 53))), want: xdpRedirect, wantDst: l.serverMAC, wantTTL: 63},
		{name: "related fragmentation needed", ifindex: l.outIdx, frame: icmpError(fromOut(packet.Spec{Src: ap(l.server4, 0), Dst: ap(l.client4, 0)}), 3, 4,
			packet.UDP(fromIn(l.spec4(l.client4, l.server4, 40010, 53)))), want: xdpRedirect, wantDst: l.clientMAC, wantTTL: 63},
		{name: "related port unreachable", ifindex: l.outIdx, frame: icmpError(fromOut(packet.Spec{Src: ap(l.server4, 0), Dst: ap(l.client4, 0)}), 3, 3,
			packet.UDP(fromIn(l.spec4(l.client4, l.server4, 40010, 53)))), want: xdpRedirect, wantDst: l.clientMAC, wantTTL: 63},
		{name: "unrelated fragmentation needed", ifindex: l.outIdx, frame: icmpError(fromOut(packet.Spec{Src: ap(l.server4, 0), Dst: ap(l.client4, 0)}), 3, 4,
			packet.UDP(fromIn(l.spec4(l.client4, l.server4, 40011, 53)))), want: xdpDrop},
		{name: "related error not to the flow's sender", ifindex: l.inIdx, frame: icmpError(fromIn(packet.Spec{Src: ap(l.client4, 0), Dst: ap(l.server4, 0)}), 3, 4,
			packet.UDP(fromIn(l.spec4(l.client4, l.server4, 40010, 53)))), want: xdpDrop},
		{name: "related packet too big v6", ifindex: l.outIdx, frame: icmpError(fromOut(packet.Spec{Src: ap(l.server6, 0), Dst: ap(l.client6, 0)}), 2, 0,
			packet.TCP(fromIn(packet.Spec{Src: ap(l.client6, 40000), Dst: ap(l.server6, 443)}))), want: xdpRedirect, wantDst: l.clientMAC, wantTTL: 63},
		{name: "unrelated time exceeded v6", ifindex: l.outIdx, frame: icmpError(fromOut(packet.Spec{Src: ap(l.server6, 0), Dst: ap(l.client6, 0)}), 3, 0,
			packet.TCP(fromIn(packet.Spec{Src: ap(l.client6, 40001), Dst: ap(l.server6, 443)}))), want: xdpDrop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.frame == nil {
				t.Fatal("frame builder returned nil")
			}
			if tc && tt.xdpOnly {
				return
			}
			got, out := l.runAny(t, prog, tc, tt.ifindex, tt.frame)
			if got != tt.want {
				t.Fatalf("action = %s, want %s", actionNames[got], actionNames[tt.want])
			}
			if got != xdpRedirect {
				return
			}
			info, err := packet.Parse(out)
			if err != nil {
				t.Fatalf("parse forwarded frame: %v", err)
			}
			egressMAC := l.outMAC
			if tt.wantDst.String() == l.clientMAC.String() {
				egressMAC = l.inMAC
			}
			gotHdr := []string{info.DstMAC.String(), info.SrcMAC.String()}
			if diff := cmp.Diff([]string{tt.wantDst.String(), egressMAC.String()}, gotHdr); diff != "" {
				t.Errorf("MACs (-want +got):\n%s", diff)
			}
			if info.VLAN != 0 || info.TTL != tt.wantTTL || !info.IPChecksumOK || !info.L4ChecksumOK {
				t.Errorf("forwarded frame: vlan %d ttl %d ipsum ok %v l4sum ok %v; want vlan 0 ttl %d, valid checksums",
					info.VLAN, info.TTL, info.IPChecksumOK, info.L4ChecksumOK, tt.wantTTL)
			}
		})
	}

	rep, err := b.ResourceStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, c := range rep.Counters {
		if c.Scope == "global" && c.Value != 0 && c.Name != "xdp_interfaces" && c.Name != "xdp_interfaces_generic_mode" && c.Name != "tc_interfaces" && c.Name != "session_sweeps" {
			got[c.Name] = c.Value
		}
	}
	want := map[string]uint64{
		"forwarded":                 13,
		"passed_non_ip":             1,
		"passed_neighbor_discovery": 1,
		"passed_local":              1,
		"passed_ttl_expired":        1,
		"passed_no_neighbor":        1,
		"dropped_policy":            4,
		"dropped_no_route":          1,
		"dropped_fragment":          1,
		// The reply and the third tcp 80 packet (the handshake's ACK)
		// hit the session; a new flow fills no cache entry (its next
		// packet does), so none comes from the cache here.
		"session_hits": 3,
		// Every IP packet past neighbour discovery asks the FIB, except
		// the handshake's ACK, which reuses the session's fresh hop: 25 - 1.
		"fib_lookups": 24,
		// Every allowed new flow creates a session, including the two
		// then handed to the kernel (TTL 1, no neighbour): tcp 80,
		// udp 5353, icmp, vlan 443, ttl, no neighbour, udp 40010.
		"sessions_created_ipv4": 7,
		"sessions_created_ipv6": 2,
		// ICMP errors create no session.
		"related_icmp":           3,
		"dropped_icmp_unrelated": 3,
	}
	if !tc {
		want["dropped_parse_error"] = 2
	}
	// The program is also attached to the lab's veths, and the peers'
	// kernels send IPv6 multicast of their own (MLD reports to ff02::16)
	// while the test runs: each asks the FIB and is passed to the kernel
	// as local. Allow a few such frames, counted in both, and nothing else.
	if extra := got["passed_local"] - want["passed_local"]; got["passed_local"] > want["passed_local"] && extra <= 4 &&
		got["fib_lookups"]-want["fib_lookups"] == extra {
		t.Logf("%d frame(s) of lab noise passed to the kernel as local", extra)
		want["passed_local"] += extra
		want["fib_lookups"] += extra
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
	if rep.Sessions == nil {
		t.Fatal("no session counts")
	}
	// (Unassured is the sweep's count at its last pass: timing, not compared.)
	if diff := cmp.Diff(dataplane.SessionCounts{IPv4: 7, IPv6: 2, Total: 9}, *rep.Sessions, cmpopts.IgnoreFields(dataplane.SessionCounts{}, "Unassured", "EarlyAging")); diff != "" {
		t.Errorf("session counts (-want +got):\n%s", diff)
	}

	sessions, counts, err := b.Sessions(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if counts.Total != 9 || len(sessions) != 9 {
		t.Errorf("Sessions: %d listed, counts %+v; want 9", len(sessions), counts)
	}
	found := false
	for _, s := range sessions {
		if s.Protocol == "tcp" && s.Source == "10.1.0.5:40000" && s.Destination == "10.2.0.2:80" {
			found = true
			// The ACK was forwarded from the flow cache: Sessions adds
			// what the cache has not handed to the session yet.
			if s.Packets != 3 {
				t.Errorf("tcp 80 session has %d packets, want 3 (SYN, reply, ACK)", s.Packets)
			}
		}
	}
	if !found {
		t.Errorf("tcp 80 session not listed from its initiator: %+v", sessions)
	}
}

// TestPolicyReplacement swaps allow for deny: new flows are denied at once,
// the session created under the old policy keeps passing.
func TestPolicyReplacement(t *testing.T) {
	l := newFIBLab(t)
	cfg := labConfig(l)
	b := newLabBackend(t, l, cfg)
	prog := b.objs.XdpFw
	ap := netip.AddrPortFrom
	old := packet.UDP(l.spec4(l.client4, l.server4, 1111, 9999))
	if got, _ := l.run(t, prog, l.inIdx, old); got != xdpRedirect {
		t.Fatalf("before: %s", actionNames[got])
	}

	deny := cfg.Clone()
	deny.Policies = append([]dataplane.Policy{{FromZone: "inside", ToZone: "outside", Protocol: dataplane.ProtoUDP, Action: dataplane.ActionDeny}}, deny.Policies...)
	deny.Sessions.KeepOnPolicyChange = true // this test is about the flip; ending sessions has its own
	res, err := b.Apply(context.Background(), deny)
	if err != nil {
		t.Fatal(err)
	}
	if res.Generation != 2 {
		t.Errorf("generation = %d, want 2", res.Generation)
	}
	if got, _ := l.run(t, prog, l.inIdx, packet.UDP(l.spec4(l.client4, l.server4, 2222, 9999))); got != xdpDrop {
		t.Errorf("new flow after deny: %s, want DROP", actionNames[got])
	}
	if got, _ := l.run(t, prog, l.inIdx, old); got != xdpRedirect {
		t.Errorf("existing session after deny: %s, want REDIRECT", actionNames[got])
	}
	reply := packet.UDP(packet.Spec{SrcMAC: l.serverMAC, DstMAC: l.outMAC, Src: ap(l.server4, 9999), Dst: ap(l.client4, 1111)})
	if got, _ := l.run(t, prog, l.outIdx, reply); got != xdpRedirect {
		t.Errorf("reply on existing session after deny: %s, want REDIRECT", actionNames[got])
	}
	// And back: the flip goes both ways, each Apply one generation.
	res, err = b.Apply(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Generation != 3 {
		t.Errorf("generation = %d, want 3", res.Generation)
	}
	if got, _ := l.run(t, prog, l.inIdx, packet.UDP(l.spec4(l.client4, l.server4, 3333, 9999))); got != xdpRedirect {
		t.Errorf("new flow after allow again: %s", actionNames[got])
	}
}

// TestApplyFailuresKeepGeneration: invalid, unsupported and unprogrammable
// configs change nothing.
func TestApplyFailuresKeepGeneration(t *testing.T) {
	l := newFIBLab(t)
	cfg := labConfig(l)
	b := newLabBackend(t, l, cfg)
	prog := b.objs.XdpFw
	flow := packet.TCP(l.spec4(l.client4, l.server4, 5555, 80))
	ctx := context.Background()

	bad := cfg.Clone()
	bad.Interfaces[0].Zone = "nowhere"
	bad.Policies[0].DestinationPorts[0] = dataplane.PortRange{First: 90, Last: 80}
	bad.Timeouts.UDP = -1
	_, err := b.Apply(ctx, bad)
	var ce *dataplane.ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("invalid config: got %v, want *ConfigError", err)
	}
	var fields []string
	for _, p := range ce.Problems {
		fields = append(fields, p.Field)
	}
	if diff := cmp.Diff([]string{"interfaces[0].zone", "policies[0].destination_ports[0]", "timeouts.udp"}, fields); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}

	missing := cfg.Clone()
	missing.Interfaces = append(missing.Interfaces, dataplane.Interface{Name: "nosuch0", Zone: "outside"})
	_, err = b.Apply(ctx, missing)
	if !errors.As(err, &ce) || len(ce.Problems) != 1 || ce.Problems[0].Field != "interfaces[2].name" {
		t.Fatalf("missing interface: got %v, want a ConfigError on interfaces[2].name", err)
	}

	queues := cfg.Clone()
	queues.Userspace.Queues = []int{0}
	queues.Forwarding.Routes = []dataplane.Route{{Destination: "10.3.0.0/16", Interface: l.out}}
	_, err = b.Apply(ctx, queues)
	var nse *dataplane.NotSupportedError
	if !errors.As(err, &nse) || !errors.Is(err, dataplane.ErrNotSupported) || len(nse.Reasons) != 2 {
		t.Fatalf("queue selection + routes: got %v, want NotSupportedError with 2 reasons", err)
	}

	big := cfg.Clone()
	for range maxRulesPerPair + 1 {
		big.Policies = append(big.Policies, dataplane.Policy{FromZone: "outside", ToZone: "inside", Action: dataplane.ActionDeny})
	}
	if _, err := b.Apply(ctx, big); !errors.Is(err, dataplane.ErrNotSupported) {
		t.Fatalf("%d rules in one pair: got %v, want ErrNotSupported", maxRulesPerPair+1, err)
	}

	resize := cfg.Clone()
	resize.Tables.Sessions = 1024
	if _, err := b.Apply(ctx, resize); !errors.Is(err, dataplane.ErrNotSupported) {
		t.Fatalf("session table resize: got %v, want ErrNotSupported", err)
	}

	rep, err := b.ResourceStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Generation != 1 {
		t.Errorf("generation after failed applies = %d, want 1", rep.Generation)
	}
	if got, _ := l.run(t, prog, l.inIdx, flow); got != xdpRedirect {
		t.Errorf("allowed flow after failed applies: %s, want REDIRECT", actionNames[got])
	}
	if got, _ := l.run(t, prog, l.inIdx, packet.TCP(l.spec4(l.client4, l.server4, 5556, 81))); got != xdpDrop {
		t.Errorf("denied flow after failed applies: %s, want DROP", actionNames[got])
	}
	assertAttached(t, l.path, map[string]bool{l.in: true, l.out: true})
}

// assertAttached checks with netlink which interfaces carry an XDP program.
func assertAttached(t *testing.T, path string, want map[string]bool) {
	t.Helper()
	got := map[string]bool{}
	err := netnsutil.Do(path, func() error {
		for name := range want {
			lk, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			got[name] = lk.Attrs().Xdp != nil && lk.Attrs().Xdp.Attached
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("XDP attached (-want +got):\n%s", diff)
	}
}

// TestInterfaceChangesAndClose: an interface dropped from the config is
// detached, Close detaches everything and is idempotent, nothing pinned.
func TestInterfaceChangesAndClose(t *testing.T) {
	l := newFIBLab(t)
	cfg := labConfig(l)
	b := newLabBackend(t, l, cfg)
	assertAttached(t, l.path, map[string]bool{l.in: true, l.out: true})

	one := cfg.Clone()
	one.Interfaces = one.Interfaces[:1]
	if _, err := b.Apply(context.Background(), one); err != nil {
		t.Fatal(err)
	}
	assertAttached(t, l.path, map[string]bool{l.in: true, l.out: false})
	if _, err := b.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	assertAttached(t, l.path, map[string]bool{l.in: true, l.out: true})

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	assertAttached(t, l.path, map[string]bool{l.in: false, l.out: false})
	if _, err := b.Apply(context.Background(), cfg); !errors.Is(err, dataplane.ErrClosed) {
		t.Errorf("Apply after Close: %v", err)
	}
	if _, err := b.ResourceStats(context.Background()); !errors.Is(err, dataplane.ErrClosed) {
		t.Errorf("ResourceStats after Close: %v", err)
	}
	var nilB *Backend
	if err := nilB.Close(); err != nil {
		t.Errorf("nil Close: %v", err)
	}
}

// TestResourceRows: every map is a row; hash maps carry a count, arrays and
// devmaps a capacity and no count.
func TestResourceRows(t *testing.T) {
	l := newFIBLab(t)
	cfg := labConfig(l)
	cfg.Tables.Sessions = 4096
	b := newLabBackend(t, l, cfg)
	// The sweep's first pass gives the unassured rows their count.
	deadline := time.Now().Add(5 * time.Second)
	for counterOf(t, b, "session_sweeps") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the session sweep never ran")
		}
		time.Sleep(10 * time.Millisecond)
	}
	rep, err := b.ResourceStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		Kind     string
		Capacity uint64
		Counted  bool
	}
	got := map[string]row{}
	for _, r := range rep.Resources {
		got[r.Name] = row{r.Kind, r.Capacity, r.Used != nil}
		if r.Used != nil && (r.Method == "" || (r.KeySize == 0 && r.Kind != dataplane.KindTable)) {
			t.Errorf("%s: counted without method or key size: %+v", r.Name, r)
		}
	}
	want := map[string]row{
		"fw_sessions_v4":    {dataplane.KindHash, 4096, true},
		"fw_sessions_v6":    {dataplane.KindHash, 4096, true},
		"fw_rules":          {dataplane.KindArray, numSlots * maxRules, false},
		"fw_pairs":          {dataplane.KindArray, numSlots * maxZones * maxZones, false},
		"fw_if_zone":        {dataplane.KindHash, numSlots * maxIfaces, true},
		"fw_settings_map":   {dataplane.KindArray, numSlots, false},
		"fw_active":         {dataplane.KindArray, 1, false},
		"fw_tx_ports":       {dataplane.KindDevMap, maxIfaces, false},
		"fw_counters":       {dataplane.KindPerCPUArray, 1, false},
		"fw_flow_cache":     {dataplane.KindPerCPUArray, flowCacheSlots, false},
		"fw_flow_gen":       {dataplane.KindArray, flowCacheSlots, false},
		"fw_mirror_rules":   {dataplane.KindHash, maxMirrors, true},
		"fw_mirror_counts":  {dataplane.KindPerCPUArray, maxMirrors, false},
		"fw_mirror_out":     {dataplane.KindDevMap, maxMirrors, false},
		"fw_mirror_pairs":   {kindHashOfMaps, maxMirrorPairs, true},
		"fw_mirror_on":      {dataplane.KindArray, 1, false},
		"fw_cpus":           {kindCPUMap, uint64(min(maxCPUs, ebpf.MustPossibleCPU())), false}, // cilium/ebpf sizes it to the possible CPUs
		"fw_stage_cpu":      {dataplane.KindArray, maxCPUs, false},
		"fw_stage_prod_map": {dataplane.KindPerCPUArray, 1, false},
		"fw_stage_done_map": {dataplane.KindArray, maxCPUs, false},
		"fw_recent_v4":      {dataplane.KindArray, 4096, false},
		"fw_recent_v6":      {dataplane.KindArray, 4096, false},
		"fw_recent_pos_map": {dataplane.KindArray, 1, false},
		"fw_sweep_map":      {dataplane.KindArray, 1, false},
		"fw_scratch_map":    {dataplane.KindPerCPUArray, 1, false},
		"fw_scratch_out":    {dataplane.KindPerCPUArray, 1, false},
		// NAT: rules and pools per slot, ports and reverse entries one per session.
		"fw_snat_rules":      {dataplane.KindArray, numSlots * maxNATRules, false},
		"fw_dnat_rules":      {dataplane.KindArray, numSlots * maxNATRules, false},
		"fw_nat_pools":       {dataplane.KindArray, numSlots * maxNATPools, false},
		"fw_nat_pool_addrs":  {dataplane.KindArray, numSlots * maxNATPools * maxPoolAddrs, false},
		"fw_nat_masq":        {dataplane.KindHash, numSlots * maxNATPools, true},
		"fw_nat_addrs":       {dataplane.KindHash, numSlots * maxNATPools * maxPoolAddrs, true},
		"fw_nat_addr_counts": {dataplane.KindPerCPUHash, numSlots * maxNATPools * maxPoolAddrs, true},
		"fw_nat_ports":       {dataplane.KindHash, 4096, true},
		"fw_nat_rev":         {dataplane.KindHash, 4096, true},
		// Counted by the sweep, one row per family.
		dataplane.ResourceSessionsUnassured: {dataplane.KindTable, 4096, true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("resources (-want +got):\n%s", diff)
	}
	if r, _ := rep.Find("fw_if_zone", "global"); r.Used == nil || *r.Used != 2 {
		t.Errorf("fw_if_zone used = %v, want 2 (one slot written)", r.Used)
	}
}

func newLabBackendOpts(t *testing.T, l *fibLab, cfg *dataplane.Config, opts Options) *Backend {
	t.Helper()
	opts.NetNS = l.path
	b, err := New(context.Background(), &opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	if _, err := b.Apply(context.Background(), cfg); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return b
}

func sessionCounts(t *testing.T, b *Backend) dataplane.SessionCounts {
	t.Helper()
	rep, err := b.ResourceStats(context.Background())
	if err != nil || rep.Sessions == nil {
		t.Fatalf("ResourceStats: %v, sessions %v", err, rep.Sessions)
	}
	return *rep.Sessions
}

// TestIdleTimeout: an entry idle past its timeout is a miss and is
// evaluated again (here: denied by the new policy, and deleted).
func TestIdleTimeout(t *testing.T) {
	l := newFIBLab(t)
	cfg := labConfig(l)
	cfg.Timeouts.UDP = dataplane.Duration(time.Second)
	cfg.Timeouts.UDPUnreplied = dataplane.Duration(time.Second)
	b := newLabBackendOpts(t, l, cfg, Options{SessionSweepInterval: -1})
	prog := b.objs.XdpFw
	flow := packet.UDP(l.spec4(l.client4, l.server4, 4444, 9999))
	if got, _ := l.run(t, prog, l.inIdx, flow); got != xdpRedirect {
		t.Fatalf("new flow: %s", actionNames[got])
	}
	deny := cfg.Clone()
	deny.Policies = append([]dataplane.Policy{{FromZone: "inside", ToZone: "outside", Protocol: dataplane.ProtoUDP, Action: dataplane.ActionDeny}}, deny.Policies...)
	// The session outlives the policy change only when asked to (by
	// default Apply ends the sessions a new policy denies).
	deny.Sessions.KeepOnPolicyChange = true
	if _, err := b.Apply(context.Background(), deny); err != nil {
		t.Fatal(err)
	}
	if got, _ := l.run(t, prog, l.inIdx, flow); got != xdpRedirect {
		t.Fatalf("live session under the new policy: %s", actionNames[got])
	}
	time.Sleep(1200 * time.Millisecond)
	if list, _, _ := b.Sessions(context.Background(), 0); len(list) != 0 {
		t.Errorf("expired session still listed: %+v", list)
	}
	if got, _ := l.run(t, prog, l.inIdx, flow); got != xdpDrop {
		t.Fatalf("expired session under a deny policy: %s, want DROP", actionNames[got])
	}
	if c := sessionCounts(t, b); c.Total != 0 {
		t.Errorf("sessions after expiry and deny = %+v, want 0", c)
	}
	if v := counterOf(t, b, "sessions_expired"); v != 1 {
		t.Errorf("sessions_expired = %d, want 1", v)
	}
}

// TestSweep: idle sessions leave the table without traffic (the kernel's
// sweep removes them), so the sessions figures count live flows.
func TestSweep(t *testing.T) {
	l := newFIBLab(t)
	cfg := labConfig(l)
	cfg.Timeouts.UDP = dataplane.Duration(500 * time.Millisecond)
	cfg.Timeouts.UDPUnreplied = dataplane.Duration(500 * time.Millisecond)
	b := newLabBackendOpts(t, l, cfg, Options{SessionSweepInterval: 200 * time.Millisecond})
	for i := range 5 {
		if got, _ := l.run(t, b.objs.XdpFw, l.inIdx, packet.UDP(l.spec4(l.client4, l.server4, uint16(6000+i), 53))); got != xdpRedirect {
			t.Fatalf("flow %d: %s", i, actionNames[got])
		}
	}
	if c := sessionCounts(t, b); c.IPv4 != 5 {
		t.Fatalf("sessions = %+v, want 5", c)
	}
	deadline := time.Now().Add(3 * time.Second)
	for sessionCounts(t, b).Total != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("sessions not swept: %+v", sessionCounts(t, b))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if v := counterOf(t, b, "sessions_expired_swept"); v != 5 {
		t.Errorf("sessions_expired_swept = %d, want 5", v)
	}
}

// TestConcurrentStatsAndApply: ResourceStats and Sessions run while Applies
// flip the policy; every report carries a generation that was applied.
func TestConcurrentStatsAndApply(t *testing.T) {
	l := newFIBLab(t)
	cfg := labConfig(l)
	b := newLabBackend(t, l, cfg)
	deny := cfg.Clone()
	deny.Policies[2].Action = dataplane.ActionDeny
	ctx := context.Background()
	done := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		var last uint64
		for {
			select {
			case <-done:
				return
			default:
			}
			rep, err := b.ResourceStats(ctx)
			if err != nil {
				errc <- err
				return
			}
			if rep.Generation < last || rep.Generation == 0 {
				errc <- fmt.Errorf("generation went from %d to %d", last, rep.Generation)
				return
			}
			last = rep.Generation
			if _, _, err := b.Sessions(ctx, 10); err != nil {
				errc <- err
				return
			}
		}
	}()
	for i := range 20 {
		c := cfg
		if i%2 == 0 {
			c = deny
		}
		res, err := b.Apply(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if res.Generation != uint64(i+2) {
			t.Fatalf("generation %d, want %d", res.Generation, i+2)
		}
	}
	close(done)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestBackToBackAppliesUnderTraffic flips the policy as fast as Apply goes
// while other goroutines run packets through the program. Each Apply
// rewrites the slot the previous one retired, so it must first wait out the
// packets still reading it (waitReaders). Checked: verdicts every config
// agrees on never change under the flips, and when Apply returns every new
// packet runs the config it applied.
func TestBackToBackAppliesUnderTraffic(t *testing.T) {
	l := newFIBLab(t)
	allow := labConfig(l)
	b := newLabBackend(t, l, allow)
	prog := b.objs.XdpFw
	deny := allow.Clone()
	deny.Policies = append([]dataplane.Policy{{FromZone: "inside", ToZone: "outside", Protocol: dataplane.ProtoUDP,
		DestinationPorts: []dataplane.PortRange{{First: 7000, Last: 7999}}, Action: dataplane.ActionDeny}}, deny.Policies...)

	run := func(frame []byte) (uint32, error) {
		var ret uint32
		err := netnsutil.Do(l.path, func() error {
			var err error
			ret, err = prog.Run(&ebpf.RunOptions{Data: frame, Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(l.inIdx)}})
			return err
		})
		return ret, err
	}
	done := make(chan struct{})
	errc := make(chan error, 2)
	traffic := func(base uint16, dport uint16, tcp bool, want uint32) {
		var err error
		defer func() { errc <- err }()
		for i := uint16(0); ; i++ {
			select {
			case <-done:
				return
			default:
			}
			s := l.spec4(l.client4, l.server4, base+i%5000, dport)
			f := packet.UDP(s)
			if tcp {
				f = packet.TCP(s)
			}
			var got uint32
			if got, err = run(f); err != nil {
				return
			}
			if got != want {
				err = fmt.Errorf("flow %d -> %d: %s during the flips, want %s", base+i%5000, dport, actionNames[got], actionNames[want])
				return
			}
		}
	}
	go traffic(20000, 53, false, xdpRedirect) // allowed by both configs
	go traffic(30000, 22, true, xdpDrop)      // denied by both

	var slowest time.Duration
	for i := range 40 {
		c, want := allow, uint32(xdpRedirect)
		if i%2 == 0 {
			c, want = deny, xdpDrop
		}
		start := time.Now()
		if _, err := b.Apply(context.Background(), c); err != nil {
			t.Fatal(err)
		}
		slowest = max(slowest, time.Since(start))
		got, err := run(packet.UDP(l.spec4(l.client4, l.server4, uint16(40000+i), 7000+uint16(i))))
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("apply %d: new flow got %s, want %s", i, actionNames[got], actionNames[want])
		}
	}
	close(done)
	for range 2 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	t.Logf("slowest Apply: %v", slowest)
}
