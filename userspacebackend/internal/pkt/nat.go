package pkt

import "encoding/binary"

// Address translation (IPv4). The rewrites change addresses and ports in
// place and update every checksum that covers them incrementally (RFC
// 1624, eqn. 3: HC' = ~(~HC + ~m + m')): the IPv4 header checksum, the
// TCP and UDP checksums (their pseudo-header holds the addresses), the
// ICMP checksum for an echo identifier. A UDP checksum of zero (none
// sent) stays zero, and an updated one that comes out zero is sent as
// 0xffff (RFC 768). They run after CompletePartialChecksum: a partial
// checksum (the pseudo-header sum only) would not survive an incremental
// update of the ports.

// csum4 updates checksum c for a 32-bit field changing from old to nw.
func csum4(c uint16, old, nw uint32) uint16 {
	s := uint32(^c) + (^old >> 16) + (^old & 0xffff) + (nw >> 16) + (nw & 0xffff)
	s = (s & 0xffff) + (s >> 16)
	s = (s & 0xffff) + (s >> 16)
	return ^uint16(s)
}

// csum2 updates checksum c for a 16-bit field changing from old to nw.
func csum2(c, old, nw uint16) uint16 {
	s := uint32(^c) + uint32(^old) + uint32(nw)
	s = (s & 0xffff) + (s >> 16)
	s = (s & 0xffff) + (s >> 16)
	return ^uint16(s)
}

// Offsets in an ICMP echo header.
const (
	icmpCsumOff = 2
	icmpIDOff   = 4
)

// RewriteIPv4 translates the IPv4 packet of frame (parsed into info): its
// source to src:sport and its destination to dst:dport; for an ICMP echo
// (request or reply) sport is the new identifier and dport is not used.
// Only fields that change are written. The transport header of a later
// fragment (none in it) is left alone. It reports false, changing
// nothing, for anything but IPv4.
func RewriteIPv4(frame []byte, info *Info, src [4]byte, sport uint16, dst [4]byte, dport uint16) bool {
	if info.Tuple.Family != 4 {
		return false
	}
	l3, l4 := int(info.L3Off), int(info.L4Off)
	end := min(l3+int(info.IPLen), len(frame))
	h := frame[l3 : l3+ipv4MinHdrLen]
	os, od := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
	ns, nd := binary.BigEndian.Uint32(src[:]), binary.BigEndian.Uint32(dst[:])
	// One ones'-complement difference for both addresses, added to every
	// checksum that covers them: ~m + m' for each 16-bit half.
	var da uint32
	if os != ns || od != nd {
		da = (^os >> 16) + (^os & 0xffff) + (ns >> 16) + (ns & 0xffff) + (^od >> 16) + (^od & 0xffff) + (nd >> 16) + (nd & 0xffff)
		binary.BigEndian.PutUint16(h[10:], csumAdd(binary.BigEndian.Uint16(h[10:]), da))
		binary.BigEndian.PutUint32(h[12:], ns)
		binary.BigEndian.PutUint32(h[16:], nd)
	}
	if info.Flags&FlagLaterFragment != 0 || l4 > end {
		return true
	}
	seg := frame[l4:end]
	switch info.Tuple.Proto {
	case protoTCP, protoUDP:
		off := tcpCsumOff
		if info.Tuple.Proto == protoUDP {
			off = udpCsumOff
		}
		if len(seg) < off+2 {
			return true
		}
		osp, odp := binary.BigEndian.Uint16(seg[0:]), binary.BigEndian.Uint16(seg[2:])
		if c := binary.BigEndian.Uint16(seg[off:]); c != 0 || info.Tuple.Proto == protoTCP {
			// (A UDP checksum of zero: none sent, none to keep right.)
			c = csumAdd(c, da+uint32(^osp)+uint32(sport)+uint32(^odp)+uint32(dport))
			if c == 0 && info.Tuple.Proto == protoUDP {
				c = 0xffff
			}
			binary.BigEndian.PutUint16(seg[off:], c)
		}
		binary.BigEndian.PutUint16(seg[0:], sport)
		binary.BigEndian.PutUint16(seg[2:], dport)
	case protoICMP:
		if len(seg) < icmpHdrLen || seg[0] != 0 && seg[0] != 8 {
			return true
		}
		oid := binary.BigEndian.Uint16(seg[icmpIDOff:])
		if oid != sport {
			binary.BigEndian.PutUint16(seg[icmpCsumOff:], csum2(binary.BigEndian.Uint16(seg[icmpCsumOff:]), oid, sport))
			binary.BigEndian.PutUint16(seg[icmpIDOff:], sport)
		}
	}
	return true
}

// csumAdd returns checksum c with d, an unfolded sum of ~m + m' terms,
// added (RFC 1624 eqn. 3).
func csumAdd(c uint16, d uint32) uint16 {
	s := uint64(^c) + uint64(d)
	s = (s & 0xffff) + (s >> 16)
	s = (s & 0xffff) + (s >> 16)
	s = (s & 0xffff) + (s >> 16)
	return ^uint16(s)
}

// TranslateICMPError rewrites the IPv4 ICMP error of frame (parsed into
// info, FlagICMPError set) for address translation: the error's own
// source and destination to osrc and odst, the quoted packet's source to
// qsrc:qsport and its destination to qdst:qdport (a quoted ICMP echo's
// identifier to qsport). The quoted IP header checksum and, where the
// quote carries them, the quoted TCP, UDP (unless zero) or ICMP checksums
// are updated incrementally; the error's ICMP checksum, which covers the
// quote, is computed afresh (errors are small and rare). It reports false,
// changing nothing, when the quote is too short to hold an IPv4 header
// and the ports.
func TranslateICMPError(frame []byte, info *Info, osrc, odst, qsrc [4]byte, qsport uint16, qdst [4]byte, qdport uint16) bool {
	if info.Tuple.Family != 4 || info.Flags&FlagICMPError == 0 {
		return false
	}
	l3, l4 := int(info.L3Off), int(info.L4Off)
	end := min(l3+int(info.IPLen), len(frame))
	if l4+icmpHdrLen+ipv4MinHdrLen > end {
		return false
	}
	msg := frame[l4:end]
	q := msg[icmpHdrLen:]
	ihl := int(q[0]&0x0f) * 4
	if q[0]>>4 != 4 || ihl < ipv4MinHdrLen || len(q) < ihl+4 {
		return false
	}
	// The quoted IP header.
	os, od := binary.BigEndian.Uint32(q[12:]), binary.BigEndian.Uint32(q[16:])
	ns, nd := binary.BigEndian.Uint32(qsrc[:]), binary.BigEndian.Uint32(qdst[:])
	binary.BigEndian.PutUint16(q[10:], csum4(csum4(binary.BigEndian.Uint16(q[10:]), os, ns), od, nd))
	binary.BigEndian.PutUint32(q[12:], ns)
	binary.BigEndian.PutUint32(q[16:], nd)
	// The quoted transport header, as far as it is quoted.
	ql4 := q[ihl:]
	switch q[9] {
	case protoTCP, protoUDP:
		osp, odp := binary.BigEndian.Uint16(ql4[0:]), binary.BigEndian.Uint16(ql4[2:])
		off := tcpCsumOff
		if q[9] == protoUDP {
			off = udpCsumOff
		}
		if len(ql4) >= off+2 {
			if c := binary.BigEndian.Uint16(ql4[off:]); c != 0 || q[9] == protoTCP {
				c = csum2(csum2(csum4(csum4(c, os, ns), od, nd), osp, qsport), odp, qdport)
				if c == 0 && q[9] == protoUDP {
					c = 0xffff
				}
				binary.BigEndian.PutUint16(ql4[off:], c)
			}
		}
		binary.BigEndian.PutUint16(ql4[0:], qsport)
		binary.BigEndian.PutUint16(ql4[2:], qdport)
	case protoICMP:
		if len(ql4) >= icmpIDOff+2 && (ql4[0] == 0 || ql4[0] == 8) {
			oid := binary.BigEndian.Uint16(ql4[icmpIDOff:])
			binary.BigEndian.PutUint16(ql4[icmpIDOff:], qsport)
			binary.BigEndian.PutUint16(ql4[icmpCsumOff:], csum2(binary.BigEndian.Uint16(ql4[icmpCsumOff:]), oid, qsport))
		}
	}
	// The error's own header, then its checksum over the new quote.
	h := frame[l3:]
	oos, ood := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
	nos, nod := binary.BigEndian.Uint32(osrc[:]), binary.BigEndian.Uint32(odst[:])
	binary.BigEndian.PutUint16(h[10:], csum4(csum4(binary.BigEndian.Uint16(h[10:]), oos, nos), ood, nod))
	binary.BigEndian.PutUint32(h[12:], nos)
	binary.BigEndian.PutUint32(h[16:], nod)
	binary.BigEndian.PutUint16(msg[icmpCsumOff:], 0)
	binary.BigEndian.PutUint16(msg[icmpCsumOff:], Checksum(msg))
	return true
}
