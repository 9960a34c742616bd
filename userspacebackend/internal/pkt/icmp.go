package pkt

import (
	"encoding/binary"
	"net/netip"

	"github.com/fwplane/fwplane/internal/policy"
)

// ICMP types and codes the datapath sends or relates.
const (
	ICMPDestUnreach    = 3  // code ICMPFragNeeded: fragmentation needed and DF set
	ICMPFragNeeded     = 4  // code of ICMPDestUnreach
	ICMPTimeExceeded   = 11 // code 0: TTL exceeded in transit
	ICMPv6PacketTooBig = 2
	ICMPv6TimeExceeded = 3 // code 0: hop limit exceeded in transit

	icmpHdrLen = 8
)

// Quote limits of the ICMP errors BuildICMPError writes, as the kernel
// sends them: the IPv4 error fits 576 bytes (RFC 1812 4.3.2.3), the
// ICMPv6 one the IPv6 minimum MTU, 1280 (RFC 4443 2.4 (c)).
const (
	maxICMPv4Len = 576
	maxICMPv6Len = 1280
)

// isICMPError reports whether an ICMP (icmp == 1) or ICMPv6 message type
// is an error that quotes the packet it is about.
func isICMPError(icmp, typ uint8) bool {
	if icmp == protoICMP {
		return typ == 3 || typ == 11 || typ == 12
	}
	return typ >= 1 && typ <= 4
}

// QuotedTuple parses the packet quoted by the ICMP error of info (which
// must have FlagICMPError) and returns its tuple as its sender sent it.
// Only the quote's first 8 transport bytes are read (all an error is sure
// to carry): ports for TCP and UDP, the identifier for an echo, none for
// other protocols. ok is false when the quote is too short, of another
// family, a non-first fragment, an ICMP message other than an echo, or an
// IPv6 quote with more than MaxExtHeaders extension headers.
func QuotedTuple(frame []byte, info *Info) (t Tuple, ok bool) {
	off := int(info.L4Off) + icmpHdrLen
	end := min(int(info.L3Off)+int(info.IPLen), len(frame))
	if off >= end {
		return Tuple{}, false
	}
	q := frame[off:end]
	var l4 []byte
	icmp := uint8(protoICMP)
	if info.Tuple.Family == policy.FamilyIPv4 {
		if len(q) < ipv4MinHdrLen || q[0]>>4 != 4 {
			return Tuple{}, false
		}
		ihl := int(q[0]&0x0f) * 4
		if ihl < ipv4MinHdrLen || len(q) < ihl || binary.BigEndian.Uint16(q[6:])&0x1fff != 0 {
			return Tuple{}, false
		}
		t.Family, t.Proto = policy.FamilyIPv4, q[9]
		copy(t.Src[:4], q[12:16])
		copy(t.Dst[:4], q[16:20])
		l4 = q[ihl:]
	} else {
		icmp = protoICMPv6
		if len(q) < ipv6HdrLen || q[0]>>4 != 6 {
			return Tuple{}, false
		}
		t.Family = policy.FamilyIPv6
		copy(t.Src[:], q[8:24])
		copy(t.Dst[:], q[24:40])
		next, pos := q[6], ipv6HdrLen
		for n := 0; ; n++ {
			if next != extHopByHop && next != extRouting && next != extDestOptions && next != extFragment {
				break
			}
			if n == MaxExtHeaders || len(q) < pos+8 {
				return Tuple{}, false
			}
			ext := q[pos:]
			if next == extFragment {
				if binary.BigEndian.Uint16(ext[2:])&0xfff8 != 0 {
					return Tuple{}, false
				}
				next, pos = ext[0], pos+8
				continue
			}
			next, pos = ext[0], pos+(int(ext[1])+1)*8
		}
		if pos > len(q) {
			return Tuple{}, false
		}
		t.Proto = next
		l4 = q[pos:]
	}
	switch t.Proto {
	case protoTCP, protoUDP:
		if len(l4) < 4 {
			return Tuple{}, false
		}
		t.SrcPort = binary.BigEndian.Uint16(l4[0:])
		t.DstPort = binary.BigEndian.Uint16(l4[2:])
	case icmp:
		if len(l4) < 8 {
			return Tuple{}, false
		}
		typ := l4[0]
		if !(icmp == protoICMP && (typ == 8 || typ == 0) || icmp == protoICMPv6 && (typ == 128 || typ == 129)) {
			return Tuple{}, false
		}
		id := binary.BigEndian.Uint16(l4[4:])
		t.SrcPort, t.DstPort = id, id
	}
	return t, true
}

// ErrorReply describes an ICMP error BuildICMPError writes about the
// packet of a parsed frame.
type ErrorReply struct {
	// Type and Code of the message (ICMP for an IPv4 packet, ICMPv6 for
	// an IPv6 one).
	Type, Code uint8
	// MTU: the next-hop MTU of a "fragmentation needed" or "packet too
	// big"; 0 otherwise.
	MTU uint32
	// Src is the address the error is sent from (the firewall's address
	// on the link the packet arrived on), of the packet's family.
	Src netip.Addr
	// DstMAC and SrcMAC are the Ethernet addresses of the reply: the
	// packet's previous hop and the ingress interface.
	DstMAC, SrcMAC [6]byte
	// ID is the IPv4 identification of the error.
	ID uint16
}

// BuildICMPError writes into dst the Ethernet frame of an ICMP error about
// the packet in frame (parsed into info), sent back to its source: the
// VLAN tag of frame is kept, the quote is the packet as received, cut so
// the error fits 576 bytes (IPv4) or 1280 (IPv6). It returns the frame's
// length, or 0 when dst is too short or r.Src is not of the packet's
// family. It does not allocate.
func BuildICMPError(dst, frame []byte, info *Info, r *ErrorReply) int {
	v4 := info.Tuple.Family == policy.FamilyIPv4
	if v4 != r.Src.Is4() {
		return 0
	}
	l3 := int(info.L3Off)
	orig := frame[l3:min(l3+int(info.IPLen), len(frame))]
	hdr, limit := ipv4MinHdrLen, maxICMPv4Len
	if !v4 {
		hdr, limit = ipv6HdrLen, maxICMPv6Len
	}
	quote := min(len(orig), limit-hdr-icmpHdrLen)
	n := l3 + hdr + icmpHdrLen + quote
	if len(dst) < n {
		return 0
	}
	copy(dst[0:6], r.DstMAC[:])
	copy(dst[6:12], r.SrcMAC[:])
	copy(dst[12:l3], frame[12:l3]) // EtherType, or the tag and EtherType
	ip := dst[l3 : l3+hdr]
	msg := dst[l3+hdr : n]
	msg[0], msg[1] = r.Type, r.Code
	clear(msg[2:icmpHdrLen])
	copy(msg[icmpHdrLen:], orig[:quote])
	if v4 {
		// Next-hop MTU in the low half of the unused word (RFC 1191).
		binary.BigEndian.PutUint16(msg[6:], uint16(min(r.MTU, 0xffff)))
		ip[0], ip[1] = 0x45, 0xc0|orig[1]&0x1e // precedence internetwork control and the TOS bits, as the kernel sends errors
		binary.BigEndian.PutUint16(ip[2:], uint16(hdr+icmpHdrLen+quote))
		binary.BigEndian.PutUint16(ip[4:], r.ID)
		binary.BigEndian.PutUint16(ip[6:], 0)
		ip[8], ip[9] = 64, protoICMP
		binary.BigEndian.PutUint16(ip[10:], 0)
		s := r.Src.As4()
		copy(ip[12:16], s[:])
		copy(ip[16:20], orig[12:16]) // back to the packet's source
		binary.BigEndian.PutUint16(ip[10:], Checksum(ip))
		binary.BigEndian.PutUint16(msg[2:], Checksum(msg))
		return n
	}
	binary.BigEndian.PutUint32(msg[4:], r.MTU)
	binary.BigEndian.PutUint32(ip[0:], 6<<28)
	binary.BigEndian.PutUint16(ip[4:], uint16(icmpHdrLen+quote))
	ip[6], ip[7] = protoICMPv6, 64
	s := r.Src.As16()
	copy(ip[8:24], s[:])
	copy(ip[24:40], orig[8:24])
	c := ^fold(sumBytes(msg, pseudoSum(ip, policy.FamilyIPv6, protoICMPv6, len(msg))))
	binary.BigEndian.PutUint16(msg[2:], c)
	return n
}

// Fragments returns how many IPv4 fragments of at most mtu bytes the
// packet of info needs (1 when it fits), or 0 when it cannot be
// fragmented: DF set, not IPv4, or an MTU that leaves no room for 8
// bytes of payload after the header.
func Fragments(info *Info, mtu int) int {
	if info.Tuple.Family != policy.FamilyIPv4 || info.Flags&FlagDontFragment != 0 {
		return 0
	}
	ihl := int(info.L4Off - info.L3Off)
	if int(info.IPLen) <= mtu {
		return 1
	}
	per := (mtu - ihl) &^ 7
	if per <= 0 {
		return 0
	}
	payload := int(info.IPLen) - ihl
	return (payload + per - 1) / per
}

// WriteFragment writes the k-th of Fragments(info, mtu) fragments of the
// IPv4 packet in frame, starting with its IP header, into dst, and
// returns its length (0 when dst is too short). As in the kernel
// (ip_fragment, ip_options_fragment), every fragment but the last has MF
// set, offsets add to the packet's own, the first fragment keeps every
// option and the others only the options whose copied flag is set (the
// rest become NOPs), and each header gets its own checksum.
func WriteFragment(dst, frame []byte, info *Info, mtu, k int) int {
	l3, l4 := int(info.L3Off), int(info.L4Off)
	ihl := l4 - l3
	per := (mtu - ihl) &^ 7
	payload := int(info.IPLen) - ihl
	start := k * per
	if per <= 0 || start >= payload {
		return 0
	}
	size := min(per, payload-start)
	if len(dst) < ihl+size {
		return 0
	}
	copy(dst[:ihl], frame[l3:l4])
	if k > 0 && ihl > ipv4MinHdrLen {
		stripUncopiedOptions(dst[ipv4MinHdrLen:ihl])
	}
	copy(dst[ihl:ihl+size], frame[l4+start:l4+start+size])
	orig := binary.BigEndian.Uint16(frame[l3+6:])
	off := orig&0x1fff + uint16(start/8)
	mf := orig & 0x2000
	if start+size < payload {
		mf = 0x2000
	}
	binary.BigEndian.PutUint16(dst[2:], uint16(ihl+size))
	binary.BigEndian.PutUint16(dst[6:], mf|off)
	binary.BigEndian.PutUint16(dst[10:], 0)
	binary.BigEndian.PutUint16(dst[10:], Checksum(dst[:ihl]))
	return ihl + size
}

// stripUncopiedOptions replaces the IPv4 options that must not be copied
// into later fragments (copied flag, bit 7 of the type, clear) with NOPs.
func stripUncopiedOptions(opts []byte) {
	for i := 0; i < len(opts); {
		switch t := opts[i]; t {
		case 0: // end of list
			return
		case 1: // NOP
			i++
			continue
		default:
			if i+1 >= len(opts) {
				return
			}
			l := int(opts[i+1])
			if l < 2 || i+l > len(opts) {
				return
			}
			if t&0x80 == 0 {
				for j := i; j < i+l; j++ {
					opts[j] = 1
				}
			}
			i += l
		}
	}
}
