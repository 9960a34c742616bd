//go:build linux

package netlab

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/internal/packet"
)

// FloodFlows makes a [Flood] carry many distinct flows: the generator
// program rewrites each frame's source port and/or source address (and
// the checksums) before sending it. Frame n of the flood carries flow
// f = n % (Ports*Addrs): source port template+f%Ports, source address
// template+f/Ports (counting in the address's low 32 bits). A flood of
// Count >= Ports*Addrs frames therefore sends every flow, in order, and
// each Count/(Ports*Addrs) times or once more.
//
// With Dst set the destination port and address vary instead, in the
// same order: the replies to a many-flow flood, sent from its destination
// ([Lab.ReplyFlood]).
//
// The template must be an IPv4 or IPv6 (no extension headers) TCP or UDP
// frame, optionally VLAN-tagged; no port or address may wrap.
type FloodFlows struct {
	// Ports is how many source ports, counting up from the template's;
	// 0 or 1 keeps the template's.
	Ports uint32
	// Addrs is how many source addresses, counting up from the
	// template's; 0 or 1 keeps the template's.
	Addrs uint32
	// Dst varies the destination port and address instead of the
	// source's.
	Dst bool
}

// Count is the number of distinct flows (at least 1).
func (v FloodFlows) Count() uint64 { return uint64(max(v.Ports, 1)) * uint64(max(v.Addrs, 1)) }

// flowOffsets are where the generator rewrites a template: sport and
// saddr are the varied port and address, the destination's with
// FloodFlows.Dst (netlab_gen.c rewrites whatever the offsets name).
type flowOffsets struct {
	sport, saddr, csum, ipcsum uint32
	udp                        bool
	port0                      uint16
	addr0                      uint32 // low 32 bits of the source address
}

// offsets finds the fields of frame that v rewrites and checks nothing
// wraps.
func (v FloodFlows) offsets(frame []byte) (flowOffsets, error) {
	var o flowOffsets
	bad := func(format string, args ...any) (flowOffsets, error) {
		return o, fmt.Errorf("many-flow template: "+format, args...)
	}
	if len(frame) < 14 {
		return bad("frame of %d bytes", len(frame))
	}
	l3 := 14
	et := binary.BigEndian.Uint16(frame[12:])
	if et == packet.EtherTypeVLAN {
		if len(frame) < 18 {
			return bad("truncated VLAN tag")
		}
		et, l3 = binary.BigEndian.Uint16(frame[16:]), 18
	}
	var proto uint8
	var l4 int
	switch et {
	case packet.EtherTypeIPv4:
		if len(frame) < l3+20 {
			return bad("truncated IPv4 header")
		}
		proto, l4 = frame[l3+9], l3+int(frame[l3]&0x0f)*4
		o.saddr, o.ipcsum = uint32(l3+12), uint32(l3+10)
		if v.Dst {
			o.saddr = uint32(l3 + 16)
		}
	case packet.EtherTypeIPv6:
		if len(frame) < l3+40 {
			return bad("truncated IPv6 header")
		}
		// The low 32 bits of the 128-bit source (destination) address.
		proto, l4, o.saddr = frame[l3+6], l3+40, uint32(l3+8+12)
		if v.Dst {
			o.saddr = uint32(l3 + 24 + 12)
		}
	default:
		return bad("EtherType %#04x, want IPv4 or IPv6", et)
	}
	switch proto {
	case packet.ProtoTCP:
		o.csum = uint32(l4 + 16)
	case packet.ProtoUDP:
		o.csum, o.udp = uint32(l4+6), true
	default:
		return bad("protocol %d, want TCP or UDP", proto)
	}
	if len(frame) < int(o.csum)+2 {
		return bad("truncated L4 header")
	}
	if o.udp && et == packet.EtherTypeIPv4 && binary.BigEndian.Uint16(frame[o.csum:]) == 0 {
		o.csum = 0 // no checksum to keep
	}
	o.sport = uint32(l4)
	if v.Dst {
		o.sport = uint32(l4 + 2)
	}
	o.port0 = binary.BigEndian.Uint16(frame[o.sport:])
	o.addr0 = binary.BigEndian.Uint32(frame[o.saddr:])
	if uint64(o.port0)+uint64(max(v.Ports, 1))-1 > 0xffff {
		return bad("%d ports from %d wrap past 65535", v.Ports, o.port0)
	}
	if uint64(o.addr0)+uint64(max(v.Addrs, 1))-1 > 0xffffffff {
		return bad("%d addresses wrap past the low 32 bits of the address", v.Addrs)
	}
	return o, nil
}

// program writes v into the generator's variables.
func (v FloodFlows) program(objs *netlabGenObjects, frame []byte) error {
	n := v.Count()
	if n <= 1 {
		return objs.Flows.Set(uint32(0))
	}
	if n > 1<<32-1 {
		return fmt.Errorf("%d flows: at most 2^32-1", n)
	}
	o, err := v.offsets(frame)
	if err != nil {
		return err
	}
	set := []struct {
		v   interface{ Set(any) error }
		val any
	}{
		{objs.Flows, uint32(n)}, {objs.Nports, max(v.Ports, 1)},
		{objs.SportOff, o.sport}, {objs.SaddrOff, o.saddr}, {objs.CsumOff, o.csum}, {objs.IpcsumOff, o.ipcsum},
		{objs.CsumUdp, boolByte(o.udp)}, {objs.Sport0, o.port0}, {objs.Saddr0, o.addr0},
	}
	for _, s := range set {
		if err := s.v.Set(s.val); err != nil {
			return fmt.Errorf("program many flows: %w", err)
		}
	}
	return nil
}

// FloodSpec describes a flood from the lab's client to the server, through
// the firewall, for [Lab.ClientFlood] (and its replies, [Lab.ReplyFlood]).
type FloodSpec struct {
	// Proto is packet.ProtoUDP (64-byte frames) or packet.ProtoTCP.
	Proto uint8
	// Dst is the destination on the server; its family picks the
	// client's source address.
	Dst netip.AddrPort
	// SrcPort is the first source port; 0 means 1024.
	SrcPort uint16
	// Flows varies the source (see FloodFlows); its Dst field is ignored
	// (ReplyFlood sets it).
	Flows FloodFlows
	// Count is the number of frames.
	Count uint64
	// TCPFlags are the flags of TCP frames; 0 means a SYN (a SYN flood
	// when Flows asks for many flows). TCPSeq and TCPAck are the
	// sequence and acknowledgement numbers; with TCPFlags 0 the sequence
	// number is 1.
	TCPFlags       uint8
	TCPSeq, TCPAck uint32
}

// ClientFlood returns a flood from the client to s.Dst, addressed to the
// firewall's MAC: 60-byte UDP frames (64 on the wire), or TCP segments
// without payload (SYNs unless s.TCPFlags says otherwise). Source
// addresses beyond the client's own (s.Flows.Addrs > 1) are not the
// client's: the server's answers to them reach the client only when the
// firewall has neighbour entries for them ([Lab.AddClientNeighbors]).
func (l *Lab) ClientFlood(s FloodSpec) (Flood, error) {
	src := l.ClientAddr4
	if s.Dst.Addr().Is6() {
		src = l.ClientAddr6
	}
	if s.SrcPort == 0 {
		s.SrcPort = 1024
	}
	s.Flows.Dst = false
	spec := packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC, Src: netip.AddrPortFrom(src, s.SrcPort), Dst: s.Dst}
	return l.flood(l.Client, l.ClientIf, spec, s)
}

// ReplyFlood returns the server's side of the flows of ClientFlood(s):
// frames from s.Dst on the server to every source of s (the destination
// port and address varied in the same order), addressed to the firewall's
// server-side MAC. A flood of replies makes the flows' sessions replied
// (assured); with s.TCPFlags = SYN|ACK it is the second step of a
// handshake.
func (l *Lab) ReplyFlood(s FloodSpec) (Flood, error) {
	src := l.ClientAddr4
	if s.Dst.Addr().Is6() {
		src = l.ClientAddr6
	}
	if s.SrcPort == 0 {
		s.SrcPort = 1024
	}
	s.Flows.Dst = true
	spec := packet.Spec{SrcMAC: l.ServerMAC, DstMAC: l.FwServerMAC, Src: s.Dst, Dst: netip.AddrPortFrom(src, s.SrcPort)}
	return l.flood(l.Server, l.ServerIf, spec, s)
}

func (l *Lab) flood(ns *NS, iface string, spec packet.Spec, s FloodSpec) (Flood, error) {
	hdr := packet.EthernetLen + packet.IPv4Len
	if spec.Src.Addr().Is6() {
		hdr = packet.EthernetLen + packet.IPv6Len
	}
	var frame []byte
	var err error
	switch s.Proto {
	case packet.ProtoUDP:
		spec.PayloadLen = max(0, 60-hdr-packet.UDPLen)
		frame, err = packet.Build(spec, packet.ProtoUDP)
	case packet.ProtoTCP:
		// No payload (54 or 74 bytes: veth pads nothing).
		spec.TCPFlags, spec.TCPSeq, spec.TCPAck = s.TCPFlags, s.TCPSeq, s.TCPAck
		if s.TCPFlags == 0 {
			spec.TCPFlags, spec.TCPSeq = packet.TCPSyn, 1
		}
		frame, err = packet.Build(spec, packet.ProtoTCP)
	default:
		err = fmt.Errorf("protocol %d, want UDP (17) or TCP (6)", s.Proto)
	}
	if err != nil {
		return Flood{}, fmt.Errorf("build flood: %w", err)
	}
	f := Flood{NS: ns, Iface: iface, Frame: frame, Count: s.Count, Flows: s.Flows}
	if _, err := s.Flows.offsets(frame); err != nil && s.Flows.Count() > 1 {
		return Flood{}, fmt.Errorf("build flood: %w", err)
	}
	return f, nil
}

// AddClientNeighbors gives the firewall namespace permanent neighbour
// entries (the client's MAC on the client link) for the source addresses
// a many-flow flood uses beyond the client's own (f.Addrs - 1 of them
// after ClientAddr4 and ClientAddr6), so that answers to those flows are
// forwarded to the client instead of waiting for an ARP/ND reply that
// never comes. The entries go with the namespace.
func (l *Lab) AddClientNeighbors(f FloodFlows) error {
	return withNetlink(l.Firewall, func(h *netlink.Handle) error {
		for i := uint32(1); i < max(f.Addrs, 1); i++ {
			for _, base := range []netip.Addr{l.ClientAddr4, l.ClientAddr6} {
				a := addAddr(base, i)
				if !l.ClientNet4.Contains(a) && !l.ClientNet6.Contains(a) {
					return fmt.Errorf("add client neighbours: %s is outside the client link", a)
				}
				fam := netlink.FAMILY_V4
				if a.Is6() {
					fam = netlink.FAMILY_V6
				}
				n := &netlink.Neigh{LinkIndex: l.FwClientIndex, Family: fam, State: netlink.NUD_PERMANENT, IP: a.AsSlice(), HardwareAddr: l.ClientMAC}
				if err := h.NeighSet(n); err != nil {
					return fmt.Errorf("set neighbour %s in %s: %w", a, l.Firewall, err)
				}
			}
		}
		return nil
	})
}

// addAddr is a plus n, counting in the address's low 32 bits (as the
// generator varies addresses).
func addAddr(a netip.Addr, n uint32) netip.Addr {
	b := a.As16()
	v := uint32(b[12])<<24 | uint32(b[13])<<16 | uint32(b[14])<<8 | uint32(b[15])
	v += n
	b[12], b[13], b[14], b[15] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	if a.Is4() {
		return netip.AddrFrom4([4]byte(b[12:]))
	}
	return netip.AddrFrom16(b)
}
