package pkt

import (
	"encoding/binary"
	"math/bits"
)

// Checksums left to offload.
//
// A socket on an interface with TX checksum offload (a veth with the
// kernel's defaults, a container's end) hands the driver a TCP or UDP
// packet whose checksum field holds only the folded sum of the
// pseudo-header (CHECKSUM_PARTIAL: the hardware is to add the payload's
// sum and complement). A frame redirected to an AF_XDP socket loses that
// skb state and is copied as it is, so forwarding it as it is delivers a
// bad checksum, which the receiver counts (TcpInCsumErrors,
// UdpInCsumErrors) and drops.
//
// CompletePartialChecksum detects such a packet by its checksum field
// being equal to the folded pseudo-header sum (what the kernel writes,
// ~csum_tcpudp_magic / ~csum_ipv6_magic with a zero sum) and writes the
// full checksum. A complete checksum can equal that value by chance
// (about 1 in 65 536 packets); recomputing it then writes the same
// checksum again, so the test never corrupts a packet.

// offsets of the checksum field in the transport header.
const (
	tcpCsumOff = 16
	udpCsumOff = 6
)

// CompletePartialChecksum completes the TCP or UDP checksum of the parsed
// packet in frame when offload left it partial, and reports whether it
// did. Anything else (other protocols, fragments, an IPv4 UDP packet
// without a checksum, a complete checksum) is left as it is.
func CompletePartialChecksum(frame []byte, info *Info) bool {
	if info.Flags&FlagFragment != 0 {
		return false
	}
	var off int
	switch info.Tuple.Proto {
	case protoTCP:
		off = tcpCsumOff
	case protoUDP:
		off = udpCsumOff
	default:
		return false
	}
	l3, l4 := int(info.L3Off), int(info.L4Off)
	end := l3 + int(info.IPLen)
	if end > len(frame) || l4+off+2 > end {
		return false
	}
	seg := frame[l4:end]
	ps := pseudoSum(frame[l3:], info.Tuple.Family, info.Tuple.Proto, len(seg))
	if binary.BigEndian.Uint16(seg[off:]) != fold(ps) {
		return false
	}
	binary.BigEndian.PutUint16(seg[off:], 0)
	c := ^fold(sumBytes(seg, ps))
	if c == 0 && info.Tuple.Proto == protoUDP {
		c = 0xffff // a computed zero is sent as all ones (RFC 768)
	}
	binary.BigEndian.PutUint16(seg[off:], c)
	return true
}

// L4ChecksumOK reports whether the TCP, UDP, ICMP or ICMPv6 checksum of
// the parsed packet in frame verifies (IPv4 UDP without a checksum
// counts as verified). Fragments and other protocols report true. Tests
// and the receive-side checks use it.
func L4ChecksumOK(frame []byte, info *Info) bool {
	if info.Flags&FlagFragment != 0 {
		return true
	}
	l3, l4 := int(info.L3Off), int(info.L4Off)
	end := l3 + int(info.IPLen)
	if end > len(frame) || l4 > end {
		return false
	}
	seg := frame[l4:end]
	var s uint64
	switch p := info.Tuple.Proto; {
	case p == protoTCP, p == protoUDP, p == protoICMPv6:
		if p == protoUDP && info.Tuple.Family == 4 && len(seg) >= 8 && binary.BigEndian.Uint16(seg[udpCsumOff:]) == 0 {
			return true
		}
		s = pseudoSum(frame[l3:], info.Tuple.Family, p, len(seg))
	case p == protoICMP:
	default:
		return true
	}
	return fold(sumBytes(seg, s)) == 0xffff
}

// pseudoSum is the unfolded sum of the pseudo-header of the IP header at
// ip (addresses, protocol, transport length).
func pseudoSum(ip []byte, family, proto uint8, l4len int) uint64 {
	var s uint64
	if family == 4 {
		s = uint64(binary.BigEndian.Uint32(ip[12:16])) + uint64(binary.BigEndian.Uint32(ip[16:20]))
	} else {
		for i := 8; i < 40; i += 8 {
			var c uint64
			s, c = bits.Add64(s, binary.BigEndian.Uint64(ip[i:]), 0)
			s += c
		}
	}
	return s + uint64(proto) + uint64(l4len)
}

// sumBytes adds b, as big-endian 16-bit words (an odd last byte padded
// with zero), to the ones' complement sum s, 8 bytes at a time: the sum
// of 64-bit words with end-around carry folds to the same 16-bit sum.
func sumBytes(b []byte, s uint64) uint64 {
	var c uint64
	for len(b) >= 32 {
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b), c)
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b[8:]), c)
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b[16:]), c)
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b[24:]), c)
		b = b[32:]
	}
	for len(b) >= 8 {
		s, c = bits.Add64(s, binary.BigEndian.Uint64(b), c)
		b = b[8:]
	}
	s, c = bits.Add64(s, c, 0)
	s += c
	var t uint64
	if len(b) >= 4 {
		t = uint64(binary.BigEndian.Uint32(b)) << 32
		b = b[4:]
	}
	if len(b) >= 2 {
		t |= uint64(binary.BigEndian.Uint16(b)) << 16
		b = b[2:]
	}
	if len(b) == 1 {
		t |= uint64(b[0]) << 8
	}
	s, c = bits.Add64(s, t, 0)
	return s + c
}

// fold folds a 64-bit ones' complement sum to 16 bits.
func fold(s uint64) uint16 {
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 16) + (s & 0xffff)
	s = (s >> 16) + (s & 0xffff)
	return uint16(s)
}

// Checksum returns the Internet checksum of b (RFC 1071): zero when b
// holds a correct checksum over itself.
func Checksum(b []byte) uint16 { return ^fold(sumBytes(b, 0)) }
