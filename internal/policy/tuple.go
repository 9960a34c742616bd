package policy

import (
	"fmt"
	"net/netip"
)

// Address families stored in Tuple.Family.
const (
	FamilyIPv4 uint8 = 4
	FamilyIPv6 uint8 = 6
)

// Tuple identifies a flow as seen in one packet. It is fixed-size and
// comparable, so it can be a map key or be hashed as bytes.
//
// An IPv4 address occupies Src[0:4] / Dst[0:4] in network byte order with
// the remaining 12 bytes zero; an IPv6 address fills all 16 bytes. Family
// says which. For ICMP and ICMPv6 echo request and reply the echo
// identifier is stored in both SrcPort and DstPort (so the reversed tuple of
// a request is the tuple of its reply); other ICMP messages have ports 0.
//
// Tuple lives in this package so that the policy matcher, the packet parser
// and the session table of either backend share one definition.
type Tuple struct {
	Src, Dst         [16]byte
	SrcPort, DstPort uint16
	Proto            uint8
	Family           uint8
}

// MakeTuple builds a tuple from netip addresses. The family comes from src:
// an IPv4 address (Is4) gives FamilyIPv4, anything else FamilyIPv6; an
// IPv4-mapped IPv6 address stays IPv6. src and dst must be of one family.
func MakeTuple(src, dst netip.Addr, proto uint8, sport, dport uint16) Tuple {
	t := Tuple{SrcPort: sport, DstPort: dport, Proto: proto, Family: FamilyIPv6}
	if src.Is4() {
		t.Family = FamilyIPv4
		s, d := src.As4(), dst.As4()
		copy(t.Src[:4], s[:])
		copy(t.Dst[:4], d[:])
		return t
	}
	t.Src, t.Dst = src.As16(), dst.As16()
	return t
}

// SrcAddr returns the source address.
func (t Tuple) SrcAddr() netip.Addr { return t.addr(&t.Src) }

// DstAddr returns the destination address.
func (t Tuple) DstAddr() netip.Addr { return t.addr(&t.Dst) }

func (t Tuple) addr(a *[16]byte) netip.Addr {
	if t.Family == FamilyIPv4 {
		return netip.AddrFrom4([4]byte(a[:4]))
	}
	return netip.AddrFrom16(*a)
}

// Reverse returns the tuple of the opposite direction.
func (t Tuple) Reverse() Tuple {
	t.Src, t.Dst = t.Dst, t.Src
	t.SrcPort, t.DstPort = t.DstPort, t.SrcPort
	return t
}

func (t Tuple) String() string {
	return fmt.Sprintf("proto %d %s -> %s",
		t.Proto, netip.AddrPortFrom(t.SrcAddr(), t.SrcPort), netip.AddrPortFrom(t.DstAddr(), t.DstPort))
}
