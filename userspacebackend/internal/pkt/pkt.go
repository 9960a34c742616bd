package pkt

import (
	"encoding/binary"
	"errors"

	"github.com/fwplane/fwplane/internal/policy"
)

// Tuple is the flow key shared with the policy matcher and the session table.
type Tuple = policy.Tuple

// Sentinel errors returned by Parse.
var (
	ErrTruncated   = errors.New("frame truncated")
	ErrNotIP       = errors.New("not an IP frame")
	ErrMalformed   = errors.New("malformed header")
	ErrUnsupported = errors.New("unsupported header layout")
)

// MaxExtHeaders is how many IPv6 extension headers Parse walks.
const MaxExtHeaders = 4

// EtherTypes.
const (
	EtherTypeIPv4  = 0x0800
	EtherTypeIPv6  = 0x86dd
	EtherTypeVLAN  = 0x8100
	EtherTypeQinQ  = 0x88a8
	ethHeaderLen   = 14
	vlanHeaderLen  = 4
	ipv4MinHdrLen  = 20
	ipv6HdrLen     = 40
	protoICMP      = 1
	protoTCP       = 6
	protoUDP       = 17
	protoICMPv6    = 58
	extHopByHop    = 0
	extRouting     = 43
	extFragment    = 44
	extDestOptions = 60
)

// Flags describe properties of a parsed packet.
type Flags uint8

const (
	// FlagVLAN: the frame carries one 802.1Q/802.1ad tag (Info.VLAN).
	FlagVLAN Flags = 1 << iota
	// FlagFragment: the packet is an IP fragment (first or later).
	FlagFragment
	// FlagLaterFragment: a fragment with a non-zero offset; no L4 header,
	// ports are 0.
	FlagLaterFragment
	// FlagIPv4Options: the IPv4 header has options (IHL > 5).
	FlagIPv4Options
	// FlagDontFragment: an IPv4 packet with DF set. (IPv6 packets are
	// never fragmented on the way.)
	FlagDontFragment
	// FlagICMPError: an ICMP error about another packet (ICMP destination
	// unreachable, time exceeded, parameter problem; ICMPv6 types 1-4),
	// whose quote QuotedTuple reads.
	FlagICMPError
)

// Info is the result of Parse. It is a plain value: reuse one per worker.
type Info struct {
	Tuple Tuple
	// L3Off is the offset of the IP header in the frame; L4Off of the
	// transport header (for a later fragment, where it would be).
	L3Off, L4Off uint16
	// IPLen is the IP datagram length (header included) per the IP header.
	IPLen uint16
	// VLAN is the 12-bit VLAN ID when FlagVLAN is set.
	VLAN uint16
	// TTL is the IPv4 TTL or IPv6 hop limit.
	TTL   uint8
	Flags Flags
	// TCPFlags is the TCP header's flags byte (FIN 0x01, SYN 0x02, RST
	// 0x04, ACK 0x10); 0 for other protocols.
	TCPFlags uint8
	// ICMPType is the ICMP or ICMPv6 type; 0 for other protocols.
	ICMPType uint8
}

// Parse parses frame into info. On error info is partly written and must
// not be used.
func Parse(frame []byte, info *Info) error {
	*info = Info{}
	if len(frame) < ethHeaderLen {
		return ErrTruncated
	}
	off := 12
	et := binary.BigEndian.Uint16(frame[off:])
	off += 2
	if et == EtherTypeVLAN || et == EtherTypeQinQ {
		if len(frame) < off+vlanHeaderLen {
			return ErrTruncated
		}
		info.Flags |= FlagVLAN
		info.VLAN = binary.BigEndian.Uint16(frame[off:]) & 0x0fff
		et = binary.BigEndian.Uint16(frame[off+2:])
		off += vlanHeaderLen
		if et == EtherTypeVLAN || et == EtherTypeQinQ {
			return ErrUnsupported
		}
	}
	info.L3Off = uint16(off)
	switch et {
	case EtherTypeIPv4:
		return parseIPv4(frame, off, info)
	case EtherTypeIPv6:
		return parseIPv6(frame, off, info)
	}
	return ErrNotIP
}

func parseIPv4(frame []byte, off int, info *Info) error {
	if len(frame) < off+ipv4MinHdrLen {
		return ErrTruncated
	}
	h := frame[off:]
	if h[0]>>4 != 4 {
		return ErrMalformed
	}
	ihl := int(h[0]&0x0f) * 4
	if ihl < ipv4MinHdrLen {
		return ErrMalformed
	}
	if ihl > ipv4MinHdrLen {
		info.Flags |= FlagIPv4Options
	}
	total := int(binary.BigEndian.Uint16(h[2:]))
	if total < ihl {
		return ErrMalformed
	}
	if len(h) < total {
		return ErrTruncated
	}
	t := &info.Tuple
	t.Family = policy.FamilyIPv4
	t.Proto = h[9]
	copy(t.Src[:4], h[12:16])
	copy(t.Dst[:4], h[16:20])
	info.TTL = h[8]
	info.IPLen = uint16(total)
	info.L4Off = uint16(off + ihl)
	frag := binary.BigEndian.Uint16(h[6:])
	if frag&0x4000 != 0 {
		info.Flags |= FlagDontFragment
	}
	if frag&0x3fff != 0 { // MF or a non-zero offset
		info.Flags |= FlagFragment
		if frag&0x1fff != 0 {
			info.Flags |= FlagLaterFragment
			return nil
		}
	}
	return parseL4(h[ihl:total], info, protoICMP)
}

func parseIPv6(frame []byte, off int, info *Info) error {
	if len(frame) < off+ipv6HdrLen {
		return ErrTruncated
	}
	h := frame[off:]
	if h[0]>>4 != 6 {
		return ErrMalformed
	}
	total := ipv6HdrLen + int(binary.BigEndian.Uint16(h[4:]))
	if len(h) < total {
		return ErrTruncated
	}
	t := &info.Tuple
	t.Family = policy.FamilyIPv6
	copy(t.Src[:], h[8:24])
	copy(t.Dst[:], h[24:40])
	info.TTL = h[7]
	info.IPLen = uint16(total)
	next := h[6]
	l4 := ipv6HdrLen
	for n := 0; ; n++ {
		switch next {
		case extHopByHop, extRouting, extDestOptions, extFragment:
		default:
			t.Proto = next
			info.L4Off = uint16(off + l4)
			return parseL4(h[l4:total], info, protoICMPv6)
		}
		if n == MaxExtHeaders {
			return ErrUnsupported
		}
		if total < l4+8 {
			return ErrTruncated
		}
		ext := h[l4:]
		if next == extFragment {
			info.Flags |= FlagFragment
			next = ext[0]
			l4 += 8
			if binary.BigEndian.Uint16(ext[2:])&0xfff8 != 0 {
				// What follows the fragment header of a later fragment is
				// payload, not more headers.
				info.Flags |= FlagLaterFragment
				t.Proto = next
				info.L4Off = uint16(off + l4)
				return nil
			}
			continue
		}
		next = ext[0]
		l4 += (int(ext[1]) + 1) * 8
		if l4 > total {
			return ErrTruncated
		}
	}
}

// parseL4 reads ports from the transport header in l4 (bounded by the IP
// length). icmp is the ICMP protocol number of the packet's family.
func parseL4(l4 []byte, info *Info, icmp uint8) error {
	t := &info.Tuple
	switch t.Proto {
	case protoTCP, protoUDP:
		if len(l4) < 4 || t.Proto == protoTCP && len(l4) < 20 || t.Proto == protoUDP && len(l4) < 8 {
			return ErrTruncated
		}
		t.SrcPort = binary.BigEndian.Uint16(l4[0:])
		t.DstPort = binary.BigEndian.Uint16(l4[2:])
		if t.Proto == protoTCP {
			info.TCPFlags = l4[13]
		}
	case icmp:
		if len(l4) < 8 {
			return ErrTruncated
		}
		typ := l4[0]
		info.ICMPType = typ
		if icmp == protoICMP && (typ == 8 || typ == 0) || icmp == protoICMPv6 && (typ == 128 || typ == 129) {
			id := binary.BigEndian.Uint16(l4[4:])
			t.SrcPort, t.DstPort = id, id
		} else if isICMPError(icmp, typ) {
			info.Flags |= FlagICMPError
		}
	}
	return nil
}
