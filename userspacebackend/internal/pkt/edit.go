package pkt

import (
	"encoding/binary"
	"errors"
)

// ErrTTLExpired means the packet's TTL or hop limit does not allow another
// hop: the caller hands it to the kernel (which sends ICMP time exceeded)
// or drops it.
var ErrTTLExpired = errors.New("ttl expired")

// SetMACs writes the destination and source MAC addresses of frame, which
// must be at least 12 bytes long (a parsed frame is).
func SetMACs(frame []byte, dst, src [6]byte) {
	_ = frame[11]
	copy(frame[0:6], dst[:])
	copy(frame[6:12], src[:])
}

// DecTTL decrements the IPv4 TTL (updating the header checksum
// incrementally, RFC 1624) or the IPv6 hop limit of the IP header at l3off.
// A TTL of 0 or 1 is left unchanged and reported as ErrTTLExpired.
func DecTTL(frame []byte, l3off int) error {
	if l3off < 0 || len(frame) < l3off+ipv4MinHdrLen {
		return ErrTruncated
	}
	h := frame[l3off:]
	switch h[0] >> 4 {
	case 4:
		if h[8] <= 1 {
			return ErrTTLExpired
		}
		// The TTL is the high byte of the 16-bit word at offset 8, so the
		// word drops by 0x0100: HC' = ~(~HC + ~m + m') with m' = m - 0x100.
		old := binary.BigEndian.Uint16(h[8:])
		h[8]--
		nw := binary.BigEndian.Uint16(h[8:])
		sum := uint32(^binary.BigEndian.Uint16(h[10:])) + uint32(^old) + uint32(nw)
		sum = (sum & 0xffff) + (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16)
		binary.BigEndian.PutUint16(h[10:], ^uint16(sum))
		return nil
	case 6:
		if len(h) < ipv6HdrLen {
			return ErrTruncated
		}
		if h[7] <= 1 {
			return ErrTTLExpired
		}
		h[7]--
		return nil
	}
	return ErrMalformed
}

// IPv4Checksum computes the header checksum of the IPv4 header h (with its
// checksum field as it is). It returns 0 for a header whose checksum is
// correct. Used by tests and by code that builds headers.
func IPv4Checksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum>>16 != 0 {
		sum = (sum & 0xffff) + (sum >> 16)
	}
	return ^uint16(sum)
}
