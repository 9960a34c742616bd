package packet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Protocol numbers and EtherTypes the package builds and parses.
const (
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58

	EtherTypeIPv4 uint16 = 0x0800
	EtherTypeIPv6 uint16 = 0x86dd
	EtherTypeVLAN uint16 = 0x8100
)

// TCP flag bits for [Spec.TCPFlags].
const (
	TCPFin uint8 = 0x01
	TCPSyn uint8 = 0x02
	TCPRst uint8 = 0x04
	TCPPsh uint8 = 0x08
	TCPAck uint8 = 0x10
	TCPUrg uint8 = 0x20
)

// ICMP echo types.
const (
	ICMPv4EchoRequest uint8 = 8
	ICMPv4EchoReply   uint8 = 0
	ICMPv6EchoRequest uint8 = 128
	ICMPv6EchoReply   uint8 = 129
)

// Header sizes, for callers sizing frames (e.g. a 60-byte minimum frame).
const (
	EthernetLen = 14
	VLANLen     = 4
	IPv4Len     = 20
	IPv6Len     = 40
	UDPLen      = 8
	TCPLen      = 20
	ICMPEchoLen = 8
)

// DefaultTTL is the IPv4 TTL / IPv6 hop limit when [Spec.TTL] is 0.
const DefaultTTL = 64

var (
	// ErrInvalidSpec means a [Spec] cannot describe a frame.
	ErrInvalidSpec = errors.New("invalid packet spec")
	// ErrTruncated means a frame ends before a header it announces.
	ErrTruncated = errors.New("frame truncated")
	// ErrUnsupported means a frame uses an encapsulation the parser does not
	// understand (e.g. an unknown EtherType or a stacked VLAN tag).
	ErrUnsupported = errors.New("unsupported frame")
)

// Spec describes one frame. The zero value of each optional field is a
// sensible default.
type Spec struct {
	// SrcMAC and DstMAC are 6-byte addresses; nil means all zeros.
	SrcMAC, DstMAC net.HardwareAddr
	// Src and Dst are the IP endpoints. Both must be IPv4 or both IPv6
	// (IPv4-mapped IPv6 addresses count as IPv4). Ports are ignored for ICMP.
	Src, Dst netip.AddrPort
	// VLAN is the 802.1Q VLAN ID (1-4094); 0 means untagged.
	VLAN uint16
	// Payload is the L4 payload. If PayloadLen is larger than len(Payload),
	// the payload is padded with zero bytes to PayloadLen; otherwise
	// Payload is used as is.
	Payload    []byte
	PayloadLen int
	// TCPFlags are the TCP flag bits; 0 means SYN (so a bare Spec makes a
	// connection attempt, the frame a firewall's session logic sees first).
	TCPFlags uint8
	// TCPSeq and TCPAck are the TCP sequence and acknowledgement numbers.
	TCPSeq, TCPAck uint32
	// TTL is the IPv4 TTL or IPv6 hop limit; 0 means [DefaultTTL].
	TTL uint8
	// IPID is the IPv4 identification field.
	IPID uint16
}

// Validate reports why s cannot describe a frame, or nil.
func (s Spec) Validate() error {
	var problems []string
	if s.SrcMAC != nil && len(s.SrcMAC) != 6 {
		problems = append(problems, fmt.Sprintf("source MAC has %d bytes, want 6", len(s.SrcMAC)))
	}
	if s.DstMAC != nil && len(s.DstMAC) != 6 {
		problems = append(problems, fmt.Sprintf("destination MAC has %d bytes, want 6", len(s.DstMAC)))
	}
	src, dst := s.Src.Addr().Unmap(), s.Dst.Addr().Unmap()
	switch {
	case !src.IsValid() || !dst.IsValid():
		problems = append(problems, "source and destination address are required")
	case src.Is4() != dst.Is4():
		problems = append(problems, fmt.Sprintf("address families differ (%s, %s)", src, dst))
	}
	if s.VLAN > 4094 {
		problems = append(problems, fmt.Sprintf("VLAN %d out of range 0-4094", s.VLAN))
	}
	if s.PayloadLen < 0 {
		problems = append(problems, fmt.Sprintf("payload length %d is negative", s.PayloadLen))
	}
	// Leave room for the largest L4 header: lengths are 16-bit fields.
	if n := max(len(s.Payload), s.PayloadLen); n > 65535-IPv4Len-TCPLen {
		problems = append(problems, fmt.Sprintf("payload length %d too large", n))
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalidSpec, joinProblems(problems))
}

func joinProblems(p []string) string {
	out := p[0]
	for _, s := range p[1:] {
		out += "; " + s
	}
	return out
}

// UDP builds a UDP frame, or returns nil if s is invalid.
func UDP(s Spec) []byte { b, _ := Build(s, ProtoUDP); return b }

// TCP builds a TCP frame (SYN unless s.TCPFlags says otherwise), or returns
// nil if s is invalid.
func TCP(s Spec) []byte { b, _ := Build(s, ProtoTCP); return b }

// ICMPEcho builds an ICMP (IPv4) or ICMPv6 (IPv6) echo request with the
// given identifier and sequence number, or returns nil if s is invalid.
func ICMPEcho(s Spec, id, seq uint16) []byte {
	s.Src = netip.AddrPortFrom(s.Src.Addr(), id)
	s.Dst = netip.AddrPortFrom(s.Dst.Addr(), seq)
	b, _ := Build(s, ProtoICMP)
	return b
}

// Build builds a frame carrying proto: [ProtoUDP], [ProtoTCP], or
// [ProtoICMP]/[ProtoICMPv6] (an echo request of the address family of s;
// for ICMP the identifier is taken from the source port and the sequence
// number from the destination port).
func Build(s Spec, proto uint8) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	src, dst := s.Src.Addr().Unmap(), s.Dst.Addr().Unmap()
	v4 := src.Is4()
	if proto == ProtoICMP || proto == ProtoICMPv6 {
		proto = ProtoICMPv6
		if v4 {
			proto = ProtoICMP
		}
	}
	var l4Len int
	switch proto {
	case ProtoUDP:
		l4Len = UDPLen
	case ProtoTCP:
		l4Len = TCPLen
	case ProtoICMP, ProtoICMPv6:
		l4Len = ICMPEchoLen
	default:
		return nil, fmt.Errorf("%w: protocol %d", ErrUnsupported, proto)
	}
	payloadLen := max(len(s.Payload), s.PayloadLen)

	l2Len := EthernetLen
	if s.VLAN != 0 {
		l2Len += VLANLen
	}
	l3Len := IPv6Len
	if v4 {
		l3Len = IPv4Len
	}
	frame := make([]byte, l2Len+l3Len+l4Len+payloadLen)

	// Ethernet (+ 802.1Q).
	copy(frame[0:6], s.DstMAC)
	copy(frame[6:12], s.SrcMAC)
	etherType := EtherTypeIPv6
	if v4 {
		etherType = EtherTypeIPv4
	}
	if s.VLAN != 0 {
		binary.BigEndian.PutUint16(frame[12:], EtherTypeVLAN)
		binary.BigEndian.PutUint16(frame[14:], s.VLAN)
		binary.BigEndian.PutUint16(frame[16:], etherType)
	} else {
		binary.BigEndian.PutUint16(frame[12:], etherType)
	}

	ttl := s.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	ip := frame[l2Len : l2Len+l3Len]
	l4 := frame[l2Len+l3Len:]
	copy(l4[l4Len:], s.Payload)

	if v4 {
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(l3Len+l4Len+payloadLen))
		binary.BigEndian.PutUint16(ip[4:], s.IPID)
		binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF: test frames are never fragmented.
		ip[8] = ttl
		ip[9] = proto
		a, b := src.As4(), dst.As4()
		copy(ip[12:16], a[:])
		copy(ip[16:20], b[:])
		binary.BigEndian.PutUint16(ip[10:], Checksum(ip, 0))
	} else {
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(l4Len+payloadLen))
		ip[6] = proto
		ip[7] = ttl
		a, b := src.As16(), dst.As16()
		copy(ip[8:24], a[:])
		copy(ip[24:40], b[:])
	}

	switch proto {
	case ProtoUDP:
		binary.BigEndian.PutUint16(l4[0:], s.Src.Port())
		binary.BigEndian.PutUint16(l4[2:], s.Dst.Port())
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		c := Checksum(l4, pseudoHeaderSum(src, dst, proto, len(l4)))
		if c == 0 {
			c = 0xffff // RFC 768: 0 means "no checksum", so send its other form.
		}
		binary.BigEndian.PutUint16(l4[6:], c)
	case ProtoTCP:
		binary.BigEndian.PutUint16(l4[0:], s.Src.Port())
		binary.BigEndian.PutUint16(l4[2:], s.Dst.Port())
		binary.BigEndian.PutUint32(l4[4:], s.TCPSeq)
		binary.BigEndian.PutUint32(l4[8:], s.TCPAck)
		l4[12] = (TCPLen / 4) << 4
		flags := s.TCPFlags
		if flags == 0 {
			flags = TCPSyn
		}
		l4[13] = flags
		binary.BigEndian.PutUint16(l4[14:], 65535)
		binary.BigEndian.PutUint16(l4[16:], Checksum(l4, pseudoHeaderSum(src, dst, proto, len(l4))))
	case ProtoICMP:
		l4[0] = ICMPv4EchoRequest
		binary.BigEndian.PutUint16(l4[4:], s.Src.Port())
		binary.BigEndian.PutUint16(l4[6:], s.Dst.Port())
		binary.BigEndian.PutUint16(l4[2:], Checksum(l4, 0))
	case ProtoICMPv6:
		l4[0] = ICMPv6EchoRequest
		binary.BigEndian.PutUint16(l4[4:], s.Src.Port())
		binary.BigEndian.PutUint16(l4[6:], s.Dst.Port())
		binary.BigEndian.PutUint16(l4[2:], Checksum(l4, pseudoHeaderSum(src, dst, proto, len(l4))))
	}
	return frame, nil
}

// Checksum returns the Internet checksum (RFC 1071) of b, starting from the
// unfolded partial sum initial (e.g. a pseudo-header sum, or 0).
func Checksum(b []byte, initial uint32) uint16 {
	sum := uint64(initial)
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// pseudoHeaderSum is the unfolded sum of the IPv4 (RFC 768) or IPv6
// (RFC 8200 section 8.1) pseudo-header for an L4 segment of length n.
func pseudoHeaderSum(src, dst netip.Addr, proto uint8, n int) uint32 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	if src.Is4() {
		a, b := src.As4(), dst.As4()
		add(a[:])
		add(b[:])
	} else {
		a, b := src.As16(), dst.As16()
		add(a[:])
		add(b[:])
	}
	sum += uint32(proto)
	sum += uint32(n>>16) + uint32(n&0xffff)
	return sum
}
