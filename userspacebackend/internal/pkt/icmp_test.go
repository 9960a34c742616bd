package pkt

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/internal/policy"
)

var (
	macA = net.HardwareAddr{2, 0, 0, 0, 0, 0xa}
	macB = net.HardwareAddr{2, 0, 0, 0, 0, 0xb}
)

// TestBuildICMPError: the errors the datapath sends about a packet verify
// (IP and ICMP checksums, by the independent test parser), go back to the
// packet's source from the given address and MACs, carry the type, code
// and MTU, quote the packet as received within the kernel's size limits,
// and QuotedTuple reads the original flow back from them.
func TestBuildICMPError(t *testing.T) {
	fw4, fw6 := netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("fd00:1::1")
	for _, tc := range []struct {
		name  string
		spec  packet.Spec
		proto uint8
		r     ErrorReply
		quote int // quoted bytes
	}{
		{"v4 time exceeded, udp", packet.Spec{Src: netip.MustParseAddrPort("10.0.1.2:4000"), Dst: netip.MustParseAddrPort("10.0.2.2:53"), TTL: 1, PayloadLen: 100},
			packet.ProtoUDP, ErrorReply{Type: ICMPTimeExceeded, Src: fw4}, 20 + 8 + 100},
		{"v4 frag needed, tcp, long", packet.Spec{Src: netip.MustParseAddrPort("10.0.1.2:4000"), Dst: netip.MustParseAddrPort("10.0.2.2:80"), PayloadLen: 1400, TCPFlags: packet.TCPAck},
			packet.ProtoTCP, ErrorReply{Type: ICMPDestUnreach, Code: ICMPFragNeeded, MTU: 1280, Src: fw4}, 576 - 28},
		{"v4 echo, vlan", packet.Spec{Src: netip.MustParseAddrPort("10.0.1.2:0"), Dst: netip.MustParseAddrPort("10.0.2.2:0"), VLAN: 9, TTL: 1},
			packet.ProtoICMP, ErrorReply{Type: ICMPTimeExceeded, Src: fw4}, 20 + 8},
		{"v6 hop limit, udp", packet.Spec{Src: netip.MustParseAddrPort("[fd00:1::2]:4000"), Dst: netip.MustParseAddrPort("[fd00:2::2]:53"), TTL: 1, PayloadLen: 10},
			packet.ProtoUDP, ErrorReply{Type: ICMPv6TimeExceeded, Src: fw6}, 40 + 8 + 10},
		{"v6 too big, tcp, long", packet.Spec{Src: netip.MustParseAddrPort("[fd00:1::2]:4000"), Dst: netip.MustParseAddrPort("[fd00:2::2]:80"), PayloadLen: 1400, TCPFlags: packet.TCPAck},
			packet.ProtoTCP, ErrorReply{Type: ICMPv6PacketTooBig, MTU: 1280, Src: fw6}, 1280 - 48},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.SrcMAC, tc.spec.DstMAC = macA, macB
			var orig []byte
			if tc.proto == packet.ProtoICMP {
				orig = packet.ICMPEcho(tc.spec, 77, 1)
			} else {
				var err error
				if orig, err = packet.Build(tc.spec, tc.proto); err != nil {
					t.Fatal(err)
				}
			}
			var in Info
			if err := Parse(orig, &in); err != nil {
				t.Fatal(err)
			}
			tc.r.DstMAC, tc.r.SrcMAC = [6]byte(macA), [6]byte(macB)
			tc.r.ID = 0x4242
			dst := make([]byte, 2048)
			n := BuildICMPError(dst, orig, &in, &tc.r)
			if n == 0 {
				t.Fatal("nothing built")
			}
			got, err := packet.Parse(dst[:n])
			if err != nil {
				t.Fatal(err)
			}
			wantProto := uint8(packet.ProtoICMP)
			if in.Tuple.Family == 6 {
				wantProto = packet.ProtoICMPv6
			}
			if got.Proto != wantProto || got.ICMPType != tc.r.Type || got.ICMPCode != tc.r.Code || !got.L4ChecksumOK {
				t.Errorf("proto %d type %d code %d checksum ok %v", got.Proto, got.ICMPType, got.ICMPCode, got.L4ChecksumOK)
			}
			if in.Tuple.Family == 4 && !got.IPChecksumOK {
				t.Error("IPv4 header checksum")
			}
			if got.Src.Addr() != tc.r.Src || got.Dst.Addr() != in.Tuple.SrcAddr() {
				t.Errorf("%s -> %s, want %s -> %s", got.Src.Addr(), got.Dst.Addr(), tc.r.Src, in.Tuple.SrcAddr())
			}
			if !bytes.Equal(got.DstMAC, macA) || !bytes.Equal(got.SrcMAC, macB) || got.VLAN != tc.spec.VLAN {
				t.Errorf("L2 %s <- %s vlan %d", got.DstMAC, got.SrcMAC, got.VLAN)
			}
			var out Info
			if err := Parse(dst[:n], &out); err != nil {
				t.Fatal(err)
			}
			if out.Flags&FlagICMPError == 0 {
				t.Error("the error does not parse as an ICMP error")
			}
			quote := dst[int(out.L4Off)+8 : n]
			if len(quote) != tc.quote || !bytes.Equal(quote, orig[in.L3Off:int(in.L3Off)+tc.quote]) {
				t.Errorf("quote: %d bytes, want the first %d of the packet", len(quote), tc.quote)
			}
			mtu := binary.BigEndian.Uint32(dst[int(out.L4Off)+4:])
			if in.Tuple.Family == 4 {
				mtu &= 0xffff
			}
			if mtu != tc.r.MTU {
				t.Errorf("MTU field %d, want %d", mtu, tc.r.MTU)
			}
			qt, ok := QuotedTuple(dst[:n], &out)
			if !ok || qt != in.Tuple {
				t.Errorf("QuotedTuple = %v %v, want %v", qt, ok, in.Tuple)
			}
			if BuildICMPError(dst[:n-1], orig, &in, &tc.r) != 0 {
				t.Error("built into a buffer one byte short")
			}
		})
	}
}

func TestQuotedTupleRefuses(t *testing.T) {
	src, dst := netip.MustParseAddr("10.0.2.1"), netip.MustParseAddr("10.0.1.2")
	mk := func(quote []byte) ([]byte, Info) {
		l4 := append([]byte{11, 0, 0, 0, 0, 0, 0, 0}, quote...)
		f := frame{vlan: -1, src: src, dst: dst, proto: 1, l4: l4}.bytes()
		var info Info
		if err := Parse(f, &info); err != nil {
			t.Fatal(err)
		}
		return f, info
	}
	orig := frame{vlan: -1, src: dst, dst: netip.MustParseAddr("10.0.3.3"), proto: 17, l4: ports(5, 6, 8)}.bytes()[14:]
	for name, q := range map[string][]byte{
		"short":          orig[:22],
		"later fragment": func() []byte { b := bytes.Clone(orig); b[6], b[7] = 0, 9; return b }(),
		"not v4":         func() []byte { b := bytes.Clone(orig); b[0] = 0x65; return b }(),
		"quoted error":   frame{vlan: -1, src: dst, dst: src, proto: 1, l4: []byte{3, 1, 0, 0, 0, 0, 0, 0}}.bytes()[14:],
	} {
		f, info := mk(q)
		if tp, ok := QuotedTuple(f, &info); ok {
			t.Errorf("%s: QuotedTuple = %v", name, tp)
		}
	}
	f, info := mk(orig)
	want := policy.MakeTuple(dst, netip.MustParseAddr("10.0.3.3"), 17, 5, 6)
	if tp, ok := QuotedTuple(f, &info); !ok || tp != want {
		t.Errorf("QuotedTuple = %v %v, want %v", tp, ok, want)
	}
}

// TestWriteFragment: fragments reassemble to the original payload, with
// offsets, MF, lengths and checksums right and every fragment within the
// MTU; options the kernel does not copy become NOPs after the first; DF
// and IPv6 refuse.
func TestWriteFragment(t *testing.T) {
	payload := make([]byte, 3000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	opts := []byte{0x94, 4, 0, 0, 0x44, 4, 5, 0} // router alert (copied), timestamp (not)
	f := frame{vlan: 3, src: a4, dst: b4, proto: 17, ttl: 9, l4: append(ports(1, 2, 8), payload...), options: 2}.bytes()
	copy(f[18+20:], opts)
	binary.BigEndian.PutUint16(f[18+10:], 0)
	binary.BigEndian.PutUint16(f[18+10:], IPv4Checksum(f[18:18+28]))
	var info Info
	if err := Parse(f, &info); err != nil {
		t.Fatal(err)
	}
	const mtu = 1280
	n := Fragments(&info, mtu)
	if n != 3 {
		t.Fatalf("Fragments = %d, want 3", n)
	}
	var got []byte
	for k := range n {
		dst := make([]byte, 2048)
		l := WriteFragment(dst, f, &info, mtu, k)
		if l == 0 || l > mtu {
			t.Fatalf("fragment %d: length %d", k, l)
		}
		h := dst[:28]
		if IPv4Checksum(h) != 0 || int(binary.BigEndian.Uint16(h[2:])) != l || h[8] != 9 {
			t.Errorf("fragment %d: header checksum/length/ttl wrong: % x", k, h)
		}
		fo := binary.BigEndian.Uint16(h[6:])
		if int(fo&0x1fff)*8 != len(got) || (fo&0x2000 != 0) != (k < n-1) {
			t.Errorf("fragment %d: offset %d MF %v, want offset %d", k, fo&0x1fff*8, fo&0x2000 != 0, len(got))
		}
		wantOpts := opts
		if k > 0 {
			wantOpts = []byte{0x94, 4, 0, 0, 1, 1, 1, 1}
		}
		if diff := cmp.Diff(wantOpts, h[20:28]); diff != "" {
			t.Errorf("fragment %d options (-want +got):\n%s", k, diff)
		}
		got = append(got, dst[28:l]...)
	}
	if want := append(ports(1, 2, 8), payload...); !bytes.Equal(got, want) {
		t.Errorf("reassembled %d bytes differ from the %d sent", len(got), len(want))
	}
	if WriteFragment(make([]byte, 2048), f, &info, mtu, n) != 0 {
		t.Error("a fragment past the end was written")
	}
	info.Flags |= FlagDontFragment
	if Fragments(&info, mtu) != 0 {
		t.Error("DF packet would be fragmented")
	}
	info.Flags &^= FlagDontFragment
	if Fragments(&info, int(info.IPLen)) != 1 {
		t.Error("a packet that fits needs one fragment")
	}
}

func TestICMPBuildAllocs(t *testing.T) {
	s := packet.Spec{Src: netip.MustParseAddrPort("10.0.1.2:1"), Dst: netip.MustParseAddrPort("10.0.2.2:2"), PayloadLen: 1400}
	orig := packet.UDP(s)
	var in Info
	if err := Parse(orig, &in); err != nil {
		t.Fatal(err)
	}
	r := ErrorReply{Type: ICMPTimeExceeded, Src: netip.MustParseAddr("10.0.1.1")}
	dst := make([]byte, 2048)
	if n := testing.AllocsPerRun(100, func() {
		BuildICMPError(dst, orig, &in, &r)
		WriteFragment(dst, orig, &in, 576, 1)
	}); n != 0 {
		t.Errorf("%v allocations", n)
	}
}
