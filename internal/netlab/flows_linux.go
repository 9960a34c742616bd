//go:build linux

package netlab

import (
	"encoding/binary"
	"fmt"
	"net/netip"

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
// The template must be an IPv4 or IPv6 (no extension headers) TCP or UDP
// frame, optionally VLAN-tagged; no port or address may wrap.
type FloodFlows struct {
	// Ports is how many source ports, counting up from the template's;
	// 0 or 1 keeps the template's.
	Ports uint32
	// Addrs is how many source addresses, counting up from the
	// template's; 0 or 1 keeps the template's.
	Addrs uint32
}

// Count is the number of distinct flows (at least 1).
func (v FloodFlows) Count() uint64 { return uint64(max(v.Ports, 1)) * uint64(max(v.Addrs, 1)) }

// flowOffsets are where the generator rewrites a template.
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
	case packet.EtherTypeIPv6:
		if len(frame) < l3+40 {
			return bad("truncated IPv6 header")
		}
		// The low 32 bits of the 128-bit source address.
		proto, l4, o.saddr = frame[l3+6], l3+40, uint32(l3+8+12)
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
	o.port0 = binary.BigEndian.Uint16(frame[l4:])
	o.addr0 = binary.BigEndian.Uint32(frame[o.saddr:])
	if uint64(o.port0)+uint64(max(v.Ports, 1))-1 > 0xffff {
		return bad("%d ports from %d wrap past 65535", v.Ports, o.port0)
	}
	if uint64(o.addr0)+uint64(max(v.Addrs, 1))-1 > 0xffffffff {
		return bad("%d addresses wrap past the low 32 bits of the source", v.Addrs)
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
// the firewall, for [Lab.ClientFlood].
type FloodSpec struct {
	// Proto is packet.ProtoUDP (64-byte frames) or packet.ProtoTCP (SYNs).
	Proto uint8
	// Dst is the destination on the server; its family picks the
	// client's source address.
	Dst netip.AddrPort
	// SrcPort is the first source port; 0 means 1024.
	SrcPort uint16
	// Flows varies the source (see FloodFlows).
	Flows FloodFlows
	// Count is the number of frames.
	Count uint64
}

// ClientFlood returns a flood from the client to s.Dst, addressed to the
// firewall's MAC: 60-byte UDP frames (64 on the wire), or TCP SYNs (a
// SYN flood when s.Flows asks for many flows). Source addresses beyond the
// client's own (s.Flows.Addrs > 1) are not the client's: the server's
// answers to them go nowhere.
func (l *Lab) ClientFlood(s FloodSpec) (Flood, error) {
	src := l.ClientAddr4
	if s.Dst.Addr().Is6() {
		src = l.ClientAddr6
	}
	if s.SrcPort == 0 {
		s.SrcPort = 1024
	}
	spec := packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC, Src: netip.AddrPortFrom(src, s.SrcPort), Dst: s.Dst}
	hdr := packet.EthernetLen + packet.IPv4Len
	if src.Is6() {
		hdr = packet.EthernetLen + packet.IPv6Len
	}
	var frame []byte
	var err error
	switch s.Proto {
	case packet.ProtoUDP:
		spec.PayloadLen = max(0, 60-hdr-packet.UDPLen)
		frame, err = packet.Build(spec, packet.ProtoUDP)
	case packet.ProtoTCP:
		// A SYN carries no payload (54 or 74 bytes: veth pads nothing).
		spec.TCPFlags, spec.TCPSeq = packet.TCPSyn, 1
		frame, err = packet.Build(spec, packet.ProtoTCP)
	default:
		err = fmt.Errorf("protocol %d, want UDP (17) or TCP (6)", s.Proto)
	}
	if err != nil {
		return Flood{}, fmt.Errorf("client flood: %w", err)
	}
	f := Flood{NS: l.Client, Iface: l.ClientIf, Frame: frame, Count: s.Count, Flows: s.Flows}
	if _, err := s.Flows.offsets(frame); err != nil && s.Flows.Count() > 1 {
		return Flood{}, fmt.Errorf("client flood: %w", err)
	}
	return f, nil
}
