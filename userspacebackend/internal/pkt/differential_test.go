package pkt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/internal/policy"
)

// Differential tests: this parser (the userspace datapath's) against
// internal/packet, the test suite's builder and reference parser. The XDP
// parser is compared with this one through BPF_PROG_RUN in
// userspacebackend/parse_xdp_linux_test.go.

// specFrame builds a frame with internal/packet from random fields and
// returns the tuple, TTL and VLAN the frame carries.
func specFrame(r *rand.Rand) (f []byte, want Info) {
	v6 := r.IntN(2) == 0
	var src, dst netip.Addr
	if v6 {
		var a, b [16]byte
		for i := range a {
			a[i], b[i] = byte(r.Uint32()), byte(r.Uint32())
		}
		a[0], b[0] = 0x20, 0x20 // never IPv4-mapped: the builder would unmap it
		src, dst = netip.AddrFrom16(a), netip.AddrFrom16(b)
	} else {
		src = netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
		dst = netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
	}
	s := packet.Spec{
		SrcMAC: []byte{2, 0, 0, 0, 0, 1}, DstMAC: []byte{2, 0, 0, 0, 0, 2},
		Src: netip.AddrPortFrom(src, uint16(r.Uint32())), Dst: netip.AddrPortFrom(dst, uint16(r.Uint32())),
		PayloadLen: r.IntN(64), TTL: uint8(r.Uint32()), TCPFlags: uint8(r.Uint32()), IPID: uint16(r.Uint32()),
	}
	if r.IntN(3) == 0 {
		s.VLAN = uint16(1 + r.IntN(4094))
	}
	proto := []uint8{packet.ProtoUDP, packet.ProtoTCP, packet.ProtoICMP}[r.IntN(3)]
	f, err := packet.Build(s, proto)
	if err != nil {
		panic(err)
	}
	want.Tuple = policy.MakeTuple(src, dst, proto, s.Src.Port(), s.Dst.Port())
	if proto == packet.ProtoICMP {
		// An echo request: the identifier (the spec's source port) is both
		// ports; the builder uses ICMPv6 for IPv6.
		want.Tuple.SrcPort, want.Tuple.DstPort = s.Src.Port(), s.Src.Port()
		if v6 {
			want.Tuple.Proto = packet.ProtoICMPv6
		}
	}
	want.TTL = s.TTL
	if want.TTL == 0 {
		want.TTL = packet.DefaultTTL
	}
	if s.VLAN != 0 {
		want.Flags |= FlagVLAN
		want.VLAN = s.VLAN
	}
	return f, want
}

// TestParseMatchesBuilder: every frame internal/packet builds parses to
// the fields it was built from.
func TestParseMatchesBuilder(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for i := range 20000 {
		f, want := specFrame(r)
		var got Info
		if err := Parse(f, &got); err != nil {
			t.Fatalf("frame %d (%x): %v", i, f, err)
		}
		if got.Tuple != want.Tuple || got.TTL != want.TTL || got.VLAN != want.VLAN || got.Flags != want.Flags {
			t.Fatalf("frame %d: parsed %v ttl %d vlan %d flags %b, built %v ttl %d vlan %d flags %b",
				i, got.Tuple, got.TTL, got.VLAN, got.Flags, want.Tuple, want.TTL, want.VLAN, want.Flags)
		}
		if int(got.L3Off)+int(got.IPLen) > len(f) || got.L4Off <= got.L3Off {
			t.Fatalf("frame %d: offsets %+v in %d bytes", i, got, len(f))
		}
	}
}

// compareParsers parses b with both parsers and returns why they disagree,
// or "" when they agree: the same fields, or the same refusal. Where the
// two parsers are specified to differ (knownDifference), it returns "".
func compareParsers(b []byte) string {
	var got Info
	perr := Parse(b, &got)
	ref, rerr := packet.Parse(b)
	if rerr != nil {
		if perr == nil {
			if why := knownDifference(b, &got, rerr); why != "" {
				return ""
			}
			return fmt.Sprintf("internal/packet refuses (%v), pkt accepts: %+v", rerr, got)
		}
		// Both refuse: the same class of refusal.
		notIP := errors.Is(rerr, packet.ErrUnsupported) && ref.EtherType != packet.EtherTypeIPv4 && ref.EtherType != packet.EtherTypeIPv6
		if notIP != errors.Is(perr, ErrNotIP) && !errors.Is(perr, ErrUnsupported) {
			return fmt.Sprintf("refusals differ: internal/packet %v, pkt %v", rerr, perr)
		}
		return ""
	}
	if perr != nil {
		if why := knownDifferenceRef(b, ref, perr); why != "" {
			return ""
		}
		return fmt.Sprintf("internal/packet accepts (%+v), pkt refuses: %v", ref, perr)
	}
	fam := policy.FamilyIPv4
	if ref.Src.Addr().Is6() {
		fam = policy.FamilyIPv6
	}
	t := got.Tuple
	switch {
	case t.Family != fam || t.SrcAddr() != ref.Src.Addr() || t.DstAddr() != ref.Dst.Addr():
		return fmt.Sprintf("addresses: pkt %v, internal/packet %v -> %v", t, ref.Src, ref.Dst)
	case got.TTL != ref.TTL || got.VLAN != ref.VLAN:
		return fmt.Sprintf("ttl/vlan: pkt %d/%d, internal/packet %d/%d", got.TTL, got.VLAN, ref.TTL, ref.VLAN)
	case fam == policy.FamilyIPv6 && isExtHeader(ref.Proto):
		// internal/packet does not walk IPv6 extension headers: its
		// protocol is the first one, pkt's the one after them.
		return ""
	case t.Proto != ref.Proto:
		return fmt.Sprintf("protocol: pkt %d, internal/packet %d", t.Proto, ref.Proto)
	case fam == policy.FamilyIPv4 && ref.Fragment != (got.Flags&FlagFragment != 0):
		return fmt.Sprintf("fragment: pkt %v, internal/packet %v", got.Flags&FlagFragment != 0, ref.Fragment)
	case ref.Fragment:
		// internal/packet says "fragment" only; a later one is one with a
		// non-zero offset (RFC 791), which has no ports.
		later := binary.BigEndian.Uint16(b[int(got.L3Off)+6:])&0x1fff != 0
		if later != (got.Flags&FlagLaterFragment != 0) {
			return fmt.Sprintf("later fragment: pkt %v, offset says %v", got.Flags&FlagLaterFragment != 0, later)
		}
		return ""
	case (t.Proto == packet.ProtoTCP || t.Proto == packet.ProtoUDP) && (t.SrcPort != ref.Src.Port() || t.DstPort != ref.Dst.Port()):
		return fmt.Sprintf("ports: pkt %d -> %d, internal/packet %d -> %d", t.SrcPort, t.DstPort, ref.Src.Port(), ref.Dst.Port())
	case isEcho(fam, t.Proto, ref.ICMPType) && (t.SrcPort != ref.ICMPID || t.DstPort != ref.ICMPID):
		return fmt.Sprintf("echo id: pkt %d/%d, internal/packet %d", t.SrcPort, t.DstPort, ref.ICMPID)
	}
	return ""
}

func isExtHeader(p uint8) bool {
	return p == extHopByHop || p == extRouting || p == extFragment || p == extDestOptions
}

// isEcho: an echo request or reply of the packet's own ICMP (internal/
// packet also reads protocol 1 inside IPv6 as ICMP; it is not).
func isEcho(fam, proto, typ uint8) bool {
	return fam == policy.FamilyIPv4 && proto == protoICMP && (typ == 8 || typ == 0) ||
		fam == policy.FamilyIPv6 && proto == protoICMPv6 && (typ == 128 || typ == 129)
}

// knownDifference: pkt accepts what internal/packet refuses, by design.
// The datapath parser reads what it needs to forward (addresses, protocol,
// ports) and leaves the rest to the endpoints; the reference parser also
// checks what a test wants to assert on.
func knownDifference(b []byte, got *Info, rerr error) string {
	t := got.Tuple
	switch {
	case got.Flags&FlagVLAN != 0 && len(b) >= 18 && binary.BigEndian.Uint16(b[12:]) == EtherTypeQinQ:
		return "an 802.1ad outer tag: internal/packet knows 802.1Q only"
	case t.Family == policy.FamilyIPv6 && got.L4Off != got.L3Off+ipv6HdrLen:
		return "IPv6 extension headers: pkt walks them, internal/packet does not"
	case t.Proto == protoUDP:
		return "UDP length field: pkt bounds the datagram by the IP length only"
	case t.Proto == protoTCP:
		return "TCP data offset: pkt reads the ports only"
	case t.Proto == protoICMP || t.Proto == protoICMPv6:
		return "ICMP: pkt needs the 8-byte header only"
	}
	return ""
}

// knownDifferenceRef: internal/packet accepts what pkt refuses, by design.
func knownDifferenceRef(b []byte, ref packet.Info, perr error) string {
	switch {
	case (ref.Proto == protoICMP || ref.Proto == protoICMPv6) && len(ref.Payload) < 4 && !ref.Fragment:
		// ICMP errors and other non-echo messages of 4 to 7 bytes: pkt
		// wants the 8-byte header every ICMP message has.
		return "ICMP message shorter than 8 bytes"
	case ref.Fragment && binary.BigEndian.Uint16(b[l3Off(b)+6:])&0x1fff == 0 && errors.Is(perr, ErrTruncated):
		// A first fragment too short to hold its transport header
		// (RFC 1858's tiny fragment): the datapath needs its ports;
		// internal/packet never reads a fragment's transport header.
		return "first fragment without its transport header"
	case ref.Src.Addr().Is6() && isExtHeader(ref.Proto):
		return "IPv6 extension headers: pkt walks them (and refuses a truncated or too long chain)"
	}
	return ""
}

// l3Off is the IP header's offset in an Ethernet frame with at most one
// tag.
func l3Off(b []byte) int {
	if et := binary.BigEndian.Uint16(b[12:]); et == EtherTypeVLAN || et == EtherTypeQinQ {
		return 18
	}
	return 14
}

// seeds are valid frames of every shape the parsers know, to mutate.
func seeds() [][]byte {
	r := rand.New(rand.NewPCG(9, 10))
	var out [][]byte
	for range 32 {
		f, _ := specFrame(r)
		out = append(out, f)
	}
	out = append(out,
		frame{vlan: -1, src: a6, dst: b6, proto: 6, l4: ports(1, 2, 20), ext: [][]byte{make([]byte, 8), fragExt(0, true)}, extTypes: []uint8{0, 44}}.bytes(),
		frame{vlan: -1, src: a4, dst: b4, proto: 1, options: 3, l4: echo(8, 1)}.bytes(),
		frame{vlan: -1, src: a4, dst: b4, proto: 17, fragOff: 10, l4: ports(1, 2, 8)}.bytes(),
		frame{vlan: 5, qinq: true, src: a4, dst: b4, proto: 17, l4: ports(1, 2, 8)}.bytes(),
	)
	return out
}

// mutate changes a few bytes, or the length, of a copy of f.
func mutate(r *rand.Rand, f []byte) []byte {
	b := append([]byte(nil), f...)
	for range 1 + r.IntN(3) {
		switch r.IntN(4) {
		case 0:
			if len(b) > 0 {
				b = b[:r.IntN(len(b))]
			}
		case 1:
			b = append(b, make([]byte, r.IntN(16))...)
		default:
			if len(b) > 0 {
				b[r.IntN(len(b))] = byte(r.Uint32())
			}
		}
	}
	return b
}

// TestParseDifferential compares the two parsers on 200 000 mutations of
// valid frames (deterministic, so CI runs the same ones; FuzzParseDifferential
// explores further).
func TestParseDifferential(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	ss := seeds()
	for i := range 200000 {
		b := mutate(r, ss[r.IntN(len(ss))])
		if why := compareParsers(b); why != "" {
			t.Fatalf("mutation %d (%x): %s", i, b, why)
		}
	}
}

func FuzzParseDifferential(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if why := compareParsers(b); why != "" {
			t.Fatal(why)
		}
	})
}
