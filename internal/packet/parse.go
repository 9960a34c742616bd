package packet

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// Info is what [Parse] found in a frame.
type Info struct {
	DstMAC, SrcMAC net.HardwareAddr
	// VLAN is the 802.1Q VLAN ID; 0 means untagged.
	VLAN uint16
	// EtherType is the type of the payload after any VLAN tag.
	EtherType uint16
	// Src and Dst are the IP endpoints; ports are 0 unless Proto is UDP or
	// TCP (and the packet is not a non-first fragment).
	Src, Dst netip.AddrPort
	// Proto is the IPv4 protocol or the IPv6 next header.
	Proto uint8
	// TTL is the IPv4 TTL or IPv6 hop limit.
	TTL uint8
	// Fragment is set for IPv4 fragments; their L4 header is not parsed.
	Fragment bool
	// TCPFlags, TCPSeq and TCPAck are set for TCP.
	TCPFlags       uint8
	TCPSeq, TCPAck uint32
	// ICMPType, ICMPCode, ICMPID and ICMPSeq are set for ICMP and ICMPv6
	// (ID and Seq only for echo request and reply).
	ICMPType, ICMPCode uint8
	ICMPID, ICMPSeq    uint16
	// Payload is the L4 payload (UDP, TCP, ICMP echo data), or everything
	// after the IP header for other protocols. It aliases the frame and
	// excludes Ethernet padding beyond the IP length.
	Payload []byte
	// IPChecksumOK reports a valid IPv4 header checksum; always true for
	// IPv6, which has none.
	IPChecksumOK bool
	// L4ChecksumOK reports a valid UDP, TCP, ICMP or ICMPv6 checksum (a
	// UDP/IPv4 checksum of 0, "none", counts as valid).
	L4ChecksumOK bool
	// L4PartialOK reports that a TCP or UDP checksum field holds the
	// folded pseudo-header sum of the segment as it is: the state in
	// which a sender leaves the checksum to offload (CHECKSUM_PARTIAL).
	// Only meaningful for a frame the kernel says is in that state (an
	// AF_PACKET capture's TP_STATUS_CSUMNOTREADY): the receiving stack
	// trusts such a frame, so a translation must keep that sum exact.
	L4PartialOK bool
}

// Parse decodes an Ethernet frame with at most one 802.1Q tag carrying IPv4
// or IPv6. For a frame that is not IP (ARP, say) it returns the L2 fields
// and an error wrapping [ErrUnsupported].
func Parse(frame []byte) (Info, error) {
	var info Info
	if len(frame) < EthernetLen {
		return info, fmt.Errorf("parse ethernet header: %w", ErrTruncated)
	}
	info.DstMAC = net.HardwareAddr(frame[0:6])
	info.SrcMAC = net.HardwareAddr(frame[6:12])
	info.EtherType = binary.BigEndian.Uint16(frame[12:])
	off := EthernetLen
	if info.EtherType == EtherTypeVLAN {
		if len(frame) < EthernetLen+VLANLen {
			return info, fmt.Errorf("parse VLAN tag: %w", ErrTruncated)
		}
		info.VLAN = binary.BigEndian.Uint16(frame[14:]) & 0x0fff
		info.EtherType = binary.BigEndian.Uint16(frame[16:])
		off += VLANLen
	}
	switch info.EtherType {
	case EtherTypeIPv4:
		return parseIPv4(info, frame[off:])
	case EtherTypeIPv6:
		return parseIPv6(info, frame[off:])
	default:
		return info, fmt.Errorf("parse frame: %w: EtherType %#04x", ErrUnsupported, info.EtherType)
	}
}

func parseIPv4(info Info, b []byte) (Info, error) {
	if len(b) < IPv4Len {
		return info, fmt.Errorf("parse IPv4 header: %w", ErrTruncated)
	}
	if b[0]>>4 != 4 {
		return info, fmt.Errorf("parse IPv4 header: %w: version %d", ErrUnsupported, b[0]>>4)
	}
	hl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:]))
	if hl < IPv4Len || total < hl {
		return info, fmt.Errorf("parse IPv4 header: %w: header length %d, total length %d", ErrUnsupported, hl, total)
	}
	if len(b) < total {
		return info, fmt.Errorf("parse IPv4 packet of %d bytes in %d: %w", total, len(b), ErrTruncated)
	}
	info.IPChecksumOK = Checksum(b[:hl], 0) == 0
	info.TTL = b[8]
	info.Proto = b[9]
	src := netip.AddrFrom4([4]byte(b[12:16]))
	dst := netip.AddrFrom4([4]byte(b[16:20]))
	info.Src, info.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
	frag := binary.BigEndian.Uint16(b[6:])
	l4 := b[hl:total]
	if frag&0x3fff != 0 { // MF set or a non-zero offset
		info.Fragment = true
		info.Payload = l4
		return info, nil
	}
	return parseL4(info, src, dst, l4)
}

func parseIPv6(info Info, b []byte) (Info, error) {
	if len(b) < IPv6Len {
		return info, fmt.Errorf("parse IPv6 header: %w", ErrTruncated)
	}
	if b[0]>>4 != 6 {
		return info, fmt.Errorf("parse IPv6 header: %w: version %d", ErrUnsupported, b[0]>>4)
	}
	plen := int(binary.BigEndian.Uint16(b[4:]))
	if len(b) < IPv6Len+plen {
		return info, fmt.Errorf("parse IPv6 packet of %d bytes in %d: %w", IPv6Len+plen, len(b), ErrTruncated)
	}
	info.IPChecksumOK = true
	info.Proto = b[6]
	info.TTL = b[7]
	src := netip.AddrFrom16([16]byte(b[8:24]))
	dst := netip.AddrFrom16([16]byte(b[24:40]))
	info.Src, info.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
	return parseL4(info, src, dst, b[IPv6Len:IPv6Len+plen])
}

func parseL4(info Info, src, dst netip.Addr, l4 []byte) (Info, error) {
	pseudo := pseudoHeaderSum(src, dst, info.Proto, len(l4))
	switch info.Proto {
	case ProtoUDP:
		if len(l4) < UDPLen {
			return info, fmt.Errorf("parse UDP header: %w", ErrTruncated)
		}
		ulen := int(binary.BigEndian.Uint16(l4[4:]))
		if ulen < UDPLen || ulen > len(l4) {
			return info, fmt.Errorf("parse UDP length %d in %d bytes: %w", ulen, len(l4), ErrTruncated)
		}
		l4 = l4[:ulen]
		info.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(l4[0:]))
		info.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:]))
		info.Payload = l4[UDPLen:]
		info.L4ChecksumOK = Checksum(l4, pseudoHeaderSum(src, dst, info.Proto, ulen)) == 0 ||
			(src.Is4() && binary.BigEndian.Uint16(l4[6:]) == 0)
		info.L4PartialOK = binary.BigEndian.Uint16(l4[6:]) == fold(pseudoHeaderSum(src, dst, info.Proto, ulen))
	case ProtoTCP:
		if len(l4) < TCPLen {
			return info, fmt.Errorf("parse TCP header: %w", ErrTruncated)
		}
		doff := int(l4[12]>>4) * 4
		if doff < TCPLen || doff > len(l4) {
			return info, fmt.Errorf("parse TCP data offset %d in %d bytes: %w", doff, len(l4), ErrTruncated)
		}
		info.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(l4[0:]))
		info.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:]))
		info.TCPSeq = binary.BigEndian.Uint32(l4[4:])
		info.TCPAck = binary.BigEndian.Uint32(l4[8:])
		info.TCPFlags = l4[13]
		info.Payload = l4[doff:]
		info.L4ChecksumOK = Checksum(l4, pseudo) == 0
		info.L4PartialOK = binary.BigEndian.Uint16(l4[16:]) == fold(pseudo)
	case ProtoICMP, ProtoICMPv6:
		if len(l4) < 4 {
			return info, fmt.Errorf("parse ICMP header: %w", ErrTruncated)
		}
		info.ICMPType, info.ICMPCode = l4[0], l4[1]
		if info.Proto == ProtoICMP {
			pseudo = 0 // ICMPv4, unlike ICMPv6, has no pseudo-header.
		}
		info.L4ChecksumOK = Checksum(l4, pseudo) == 0
		info.Payload = l4[4:]
		echo := info.ICMPType == ICMPv4EchoRequest || info.ICMPType == ICMPv4EchoReply
		if info.Proto == ProtoICMPv6 {
			echo = info.ICMPType == ICMPv6EchoRequest || info.ICMPType == ICMPv6EchoReply
		}
		if echo {
			if len(l4) < ICMPEchoLen {
				return info, fmt.Errorf("parse ICMP echo: %w", ErrTruncated)
			}
			info.ICMPID = binary.BigEndian.Uint16(l4[4:])
			info.ICMPSeq = binary.BigEndian.Uint16(l4[6:])
			info.Payload = l4[ICMPEchoLen:]
		}
	default:
		info.Payload = l4
	}
	return info, nil
}

// fold folds a ones'-complement sum to 16 bits, without complementing it.
func fold(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
