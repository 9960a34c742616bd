package packet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var (
	macA = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	macB = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0b}
	v4A  = netip.MustParseAddrPort("10.1.0.2:40000")
	v4B  = netip.MustParseAddrPort("10.2.0.2:53")
	v6A  = netip.MustParseAddrPort("[fd00:1::2]:40000")
	v6B  = netip.MustParseAddrPort("[fd00:2::2]:443")
)

var cmpOpts = cmp.Options{cmpopts.EquateComparable(netip.AddrPort{}), cmpopts.EquateEmpty()}

// refChecksum is an independent RFC 1071 implementation: byte-wise,
// folding the carry after every addition, so a bug in Checksum's deferred
// folding or word loading cannot hide in both.
func refChecksum(chunks ...[]byte) uint16 {
	var all []byte
	for _, c := range chunks {
		all = append(all, c...)
	}
	if len(all)%2 == 1 {
		all = append(all, 0)
	}
	var sum uint32
	for i := 0; i < len(all); i += 2 {
		sum += uint32(all[i])<<8 | uint32(all[i+1])
		if sum > 0xffff {
			sum = sum - 0x10000 + 1
		}
	}
	return ^uint16(sum)
}

// refPseudo writes the pseudo-header out as bytes, as the RFCs draw it.
func refPseudo(src, dst netip.Addr, proto uint8, n int) []byte {
	if src.Is4() {
		a, b := src.As4(), dst.As4()
		p := append(append([]byte{}, a[:]...), b[:]...)
		return append(p, 0, proto, byte(n>>8), byte(n))
	}
	a, b := src.As16(), dst.As16()
	p := append(append([]byte{}, a[:]...), b[:]...)
	return append(p, byte(n>>24), byte(n>>16), byte(n>>8), byte(n), 0, 0, 0, proto)
}

// checkChecksums recomputes every checksum in frame independently.
func checkChecksums(t *testing.T, frame []byte) {
	t.Helper()
	off := 14
	if binary.BigEndian.Uint16(frame[12:]) == EtherTypeVLAN {
		off += 4
	}
	ip := frame[off:]
	var src, dst netip.Addr
	var proto uint8
	var l4 []byte
	if ip[0]>>4 == 4 {
		hdr := bytes.Clone(ip[:20])
		want := binary.BigEndian.Uint16(hdr[10:])
		hdr[10], hdr[11] = 0, 0
		if got := refChecksum(hdr); got != want {
			t.Errorf("IPv4 header checksum = %#04x, independent computation %#04x", want, got)
		}
		src, dst, proto = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20])), ip[9]
		l4 = ip[20:binary.BigEndian.Uint16(ip[2:])]
	} else {
		src, dst, proto = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40])), ip[6]
		l4 = ip[40 : 40+binary.BigEndian.Uint16(ip[4:])]
	}
	csumOff := map[uint8]int{ProtoUDP: 6, ProtoTCP: 16, ProtoICMP: 2, ProtoICMPv6: 2}[proto]
	seg := bytes.Clone(l4)
	want := binary.BigEndian.Uint16(seg[csumOff:])
	seg[csumOff], seg[csumOff+1] = 0, 0
	var got uint16
	if proto == ProtoICMP {
		got = refChecksum(seg)
	} else {
		got = refChecksum(refPseudo(src, dst, proto, len(seg)), seg)
	}
	if proto == ProtoUDP && got == 0 {
		got = 0xffff
	}
	if got != want {
		t.Errorf("L4 (proto %d) checksum = %#04x, independent computation %#04x", proto, want, got)
	}
}

func TestBuildParse(t *testing.T) {
	payload := []byte("hello, fwplane!") // odd length exercises checksum padding
	tests := []struct {
		name    string
		build   func() []byte
		wantLen int
		want    Info
	}{
		{
			name:    "udp4",
			build:   func() []byte { return UDP(Spec{SrcMAC: macA, DstMAC: macB, Src: v4A, Dst: v4B, Payload: payload}) },
			wantLen: 14 + 20 + 8 + len(payload),
			want: Info{DstMAC: macB, SrcMAC: macA, EtherType: EtherTypeIPv4, Src: v4A, Dst: v4B, Proto: ProtoUDP,
				TTL: 64, Payload: payload, IPChecksumOK: true, L4ChecksumOK: true},
		},
		{
			name: "udp4 vlan padded",
			build: func() []byte {
				return UDP(Spec{SrcMAC: macA, DstMAC: macB, Src: v4A, Dst: v4B, VLAN: 100, Payload: []byte{1, 2}, PayloadLen: 18, TTL: 7})
			},
			wantLen: 18 + 20 + 8 + 18,
			want: Info{DstMAC: macB, SrcMAC: macA, VLAN: 100, EtherType: EtherTypeIPv4, Src: v4A, Dst: v4B, Proto: ProtoUDP,
				TTL: 7, Payload: append([]byte{1, 2}, make([]byte, 16)...), IPChecksumOK: true, L4ChecksumOK: true},
		},
		{
			name:    "udp6",
			build:   func() []byte { return UDP(Spec{SrcMAC: macA, DstMAC: macB, Src: v6A, Dst: v6B, Payload: payload}) },
			wantLen: 14 + 40 + 8 + len(payload),
			want: Info{DstMAC: macB, SrcMAC: macA, EtherType: EtherTypeIPv6, Src: v6A, Dst: v6B, Proto: ProtoUDP,
				TTL: 64, Payload: payload, IPChecksumOK: true, L4ChecksumOK: true},
		},
		{
			name:    "udp6 vlan",
			build:   func() []byte { return UDP(Spec{Src: v6A, Dst: v6B, VLAN: 4094, PayloadLen: 5}) },
			wantLen: 18 + 40 + 8 + 5,
			want: Info{DstMAC: make(net.HardwareAddr, 6), SrcMAC: make(net.HardwareAddr, 6), VLAN: 4094, EtherType: EtherTypeIPv6,
				Src: v6A, Dst: v6B, Proto: ProtoUDP, TTL: 64, Payload: make([]byte, 5), IPChecksumOK: true, L4ChecksumOK: true},
		},
		{
			name:    "tcp4 default syn",
			build:   func() []byte { return TCP(Spec{SrcMAC: macA, DstMAC: macB, Src: v4A, Dst: v4B}) },
			wantLen: 14 + 20 + 20,
			want: Info{DstMAC: macB, SrcMAC: macA, EtherType: EtherTypeIPv4, Src: v4A, Dst: v4B, Proto: ProtoTCP,
				TTL: 64, TCPFlags: TCPSyn, IPChecksumOK: true, L4ChecksumOK: true},
		},
		{
			name: "tcp6 vlan ack psh",
			build: func() []byte {
				return TCP(Spec{SrcMAC: macA, DstMAC: macB, Src: v6A, Dst: v6B, VLAN: 7, Payload: payload,
					TCPFlags: TCPAck | TCPPsh, TCPSeq: 1000, TCPAck: 2000})
			},
			wantLen: 18 + 40 + 20 + len(payload),
			want: Info{DstMAC: macB, SrcMAC: macA, VLAN: 7, EtherType: EtherTypeIPv6, Src: v6A, Dst: v6B, Proto: ProtoTCP,
				TTL: 64, TCPFlags: TCPAck | TCPPsh, TCPSeq: 1000, TCPAck: 2000, Payload: payload, IPChecksumOK: true, L4ChecksumOK: true},
		},
		{
			name: "icmp4 echo",
			build: func() []byte {
				return ICMPEcho(Spec{SrcMAC: macA, DstMAC: macB, Src: v4A, Dst: v4B, Payload: payload}, 0x1234, 9)
			},
			wantLen: 14 + 20 + 8 + len(payload),
			want: Info{DstMAC: macB, SrcMAC: macA, EtherType: EtherTypeIPv4, Src: netip.AddrPortFrom(v4A.Addr(), 0),
				Dst: netip.AddrPortFrom(v4B.Addr(), 0), Proto: ProtoICMP, TTL: 64, ICMPType: ICMPv4EchoRequest,
				ICMPID: 0x1234, ICMPSeq: 9, Payload: payload, IPChecksumOK: true, L4ChecksumOK: true},
		},
		{
			name: "icmp6 echo vlan",
			build: func() []byte {
				return ICMPEcho(Spec{SrcMAC: macA, DstMAC: macB, Src: v6A, Dst: v6B, VLAN: 3, PayloadLen: 32}, 1, 65535)
			},
			wantLen: 18 + 40 + 8 + 32,
			want: Info{DstMAC: macB, SrcMAC: macA, VLAN: 3, EtherType: EtherTypeIPv6, Src: netip.AddrPortFrom(v6A.Addr(), 0),
				Dst: netip.AddrPortFrom(v6B.Addr(), 0), Proto: ProtoICMPv6, TTL: 64, ICMPType: ICMPv6EchoRequest,
				ICMPID: 1, ICMPSeq: 65535, Payload: make([]byte, 32), IPChecksumOK: true, L4ChecksumOK: true},
		},
		{
			name: "ipv4-mapped addresses build IPv4",
			build: func() []byte {
				return UDP(Spec{Src: netip.MustParseAddrPort("[::ffff:10.1.0.2]:1"), Dst: netip.MustParseAddrPort("[::ffff:10.2.0.2]:2")})
			},
			wantLen: 14 + 20 + 8,
			want: Info{DstMAC: make(net.HardwareAddr, 6), SrcMAC: make(net.HardwareAddr, 6), EtherType: EtherTypeIPv4,
				Src: netip.MustParseAddrPort("10.1.0.2:1"), Dst: netip.MustParseAddrPort("10.2.0.2:2"), Proto: ProtoUDP,
				TTL: 64, IPChecksumOK: true, L4ChecksumOK: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frame := tt.build()
			if len(frame) != tt.wantLen {
				t.Fatalf("frame length = %d, want %d", len(frame), tt.wantLen)
			}
			checkChecksums(t, frame)
			got, err := Parse(frame)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpOpts); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

// TestIPv4HeaderChecksumKnownAnswer checks a header whose checksum is
// published (the worked example of the IPv4 header checksum article on
// Wikipedia: 45 00 00 73 00 00 40 00 40 11 .. .. c0 a8 00 01 c0 a8 00 c7).
func TestIPv4HeaderChecksumKnownAnswer(t *testing.T) {
	frame := UDP(Spec{
		Src:        netip.MustParseAddrPort("192.168.0.1:1"),
		Dst:        netip.MustParseAddrPort("192.168.0.199:2"),
		PayloadLen: 0x73 - 20 - 8,
	})
	want := []byte{0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61,
		0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7}
	if diff := cmp.Diff(want, frame[14:34]); diff != "" {
		t.Errorf("IPv4 header (-want +got):\n%s", diff)
	}
}

// TestUDPZeroChecksumIsSentAsOnes finds a payload whose UDP checksum
// computes to 0 and checks it goes out as 0xffff (RFC 768), for both
// families (for IPv6 a zero checksum would be invalid outright).
func TestUDPZeroChecksumIsSentAsOnes(t *testing.T) {
	for _, ends := range [][2]netip.AddrPort{{v4A, v4B}, {v6A, v6B}} {
		// With a 2-byte payload the checksum is ^(S + p) for a fixed S, so
		// choose p = ^S (folded) to make the one's complement sum 0xffff.
		base := UDP(Spec{Src: ends[0], Dst: ends[1], PayloadLen: 2})
		l4 := base[len(base)-10:]
		p := binary.BigEndian.Uint16(l4[6:]) // ^S, since the payload is zero
		frame := UDP(Spec{Src: ends[0], Dst: ends[1], Payload: []byte{byte(p >> 8), byte(p)}})
		if got := binary.BigEndian.Uint16(frame[len(frame)-4:]); got != 0xffff {
			t.Errorf("%v: UDP checksum field = %#04x, want 0xffff", ends, got)
		}
		checkChecksums(t, frame)
		if info, err := Parse(frame); err != nil || !info.L4ChecksumOK {
			t.Errorf("%v: Parse = %+v, %v; want a valid checksum", ends, info, err)
		}
	}
}

func TestParseDetectsCorruption(t *testing.T) {
	for _, tt := range []struct {
		name     string
		frame    []byte
		flip     int // byte offset to corrupt
		wantIPOK bool
	}{
		{"ipv4 header", UDP(Spec{Src: v4A, Dst: v4B, PayloadLen: 8}), 14 + 8, false},
		{"udp4 payload", UDP(Spec{Src: v4A, Dst: v4B, PayloadLen: 8}), 14 + 20 + 8 + 3, true},
		{"tcp6 port", TCP(Spec{Src: v6A, Dst: v6B}), 14 + 40 + 1, true},
		{"icmp6 addr in pseudo-header", ICMPEcho(Spec{Src: v6A, Dst: v6B}, 1, 1), 14 + 8 + 15, true},
		{"icmp4 id", ICMPEcho(Spec{Src: v4A, Dst: v4B}, 1, 1), 14 + 20 + 5, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.frame[tt.flip] ^= 0x40
			info, err := Parse(tt.frame)
			if err != nil {
				t.Fatal(err)
			}
			if info.IPChecksumOK != tt.wantIPOK || (tt.wantIPOK && info.L4ChecksumOK) {
				t.Errorf("IPChecksumOK = %v, L4ChecksumOK = %v after corruption", info.IPChecksumOK, info.L4ChecksumOK)
			}
		})
	}
}

func TestParseIgnoresEthernetPadding(t *testing.T) {
	frame := UDP(Spec{Src: v4A, Dst: v4B, Payload: []byte{9}})
	padded := append(bytes.Clone(frame), make([]byte, 60-len(frame))...)
	info, err := Parse(padded)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]byte{9}, info.Payload); diff != "" || !info.L4ChecksumOK {
		t.Errorf("payload (-want +got):\n%s checksum ok %v", diff, info.L4ChecksumOK)
	}
}

func TestParseErrors(t *testing.T) {
	udp4 := UDP(Spec{Src: v4A, Dst: v4B, PayloadLen: 4})
	arp := append(make([]byte, 12), 0x08, 0x06, 0, 1)
	qinq := UDP(Spec{Src: v4A, Dst: v4B, VLAN: 5})
	binary.BigEndian.PutUint16(qinq[16:], EtherTypeVLAN)
	for _, tt := range []struct {
		name  string
		frame []byte
		want  error
	}{
		{"empty", nil, ErrTruncated},
		{"short ethernet", udp4[:13], ErrTruncated},
		{"short ip", udp4[:30], ErrTruncated},
		{"ip length beyond frame", udp4[:len(udp4)-1], ErrTruncated},
		{"short vlan", qinq[:16], ErrTruncated},
		{"arp", arp, ErrUnsupported},
		{"stacked vlan", qinq, ErrUnsupported},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.frame)
			if !errors.Is(err, tt.want) {
				t.Errorf("Parse error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		spec Spec
		ok   bool
	}{
		{"ok", Spec{Src: v4A, Dst: v4B}, true},
		{"missing dst", Spec{Src: v4A}, false},
		{"mixed families", Spec{Src: v4A, Dst: v6B}, false},
		{"short mac", Spec{Src: v4A, Dst: v4B, SrcMAC: net.HardwareAddr{1, 2}}, false},
		{"vlan 4095", Spec{Src: v4A, Dst: v4B, VLAN: 4095}, false},
		{"negative payload", Spec{Src: v4A, Dst: v4B, PayloadLen: -1}, false},
		{"huge payload", Spec{Src: v4A, Dst: v4B, PayloadLen: 70000}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate = %v, want ok=%v", err, tt.ok)
			}
			if !tt.ok {
				if !errors.Is(err, ErrInvalidSpec) {
					t.Errorf("error %v does not match ErrInvalidSpec", err)
				}
				if UDP(tt.spec) != nil || TCP(tt.spec) != nil || ICMPEcho(tt.spec, 1, 1) != nil {
					t.Error("builders returned a frame for an invalid spec")
				}
			}
		})
	}
	if _, err := Build(Spec{Src: v4A, Dst: v4B}, 47); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Build(GRE) error = %v, want ErrUnsupported", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(UDP(Spec{Src: v4A, Dst: v4B, VLAN: 3, PayloadLen: 10}))
	f.Add(TCP(Spec{Src: v6A, Dst: v6B}))
	f.Add(ICMPEcho(Spec{Src: v6A, Dst: v6B}, 1, 2))
	f.Fuzz(func(t *testing.T, frame []byte) {
		info, err := Parse(frame)
		if err != nil {
			return
		}
		// Whatever parsed must point inside the frame.
		if len(info.Payload) > len(frame) {
			t.Fatalf("payload of %d bytes from a %d-byte frame", len(info.Payload), len(frame))
		}
	})
}

func FuzzBuildRoundTrip(f *testing.F) {
	f.Add(true, uint8(17), uint16(0), uint16(1), uint16(2), 10)
	f.Add(false, uint8(6), uint16(100), uint16(3), uint16(4), 0)
	f.Fuzz(func(t *testing.T, v4 bool, proto uint8, vlan, sport, dport uint16, plen int) {
		if plen < 0 || plen > 2000 || vlan > 4094 {
			return
		}
		src, dst := netip.AddrPortFrom(v6A.Addr(), sport), netip.AddrPortFrom(v6B.Addr(), dport)
		if v4 {
			src, dst = netip.AddrPortFrom(v4A.Addr(), sport), netip.AddrPortFrom(v4B.Addr(), dport)
		}
		frame, err := Build(Spec{Src: src, Dst: dst, VLAN: vlan, PayloadLen: plen}, proto)
		if err != nil {
			return
		}
		checkChecksums(t, frame)
		info, err := Parse(frame)
		if err != nil {
			t.Fatal(err)
		}
		if info.VLAN != vlan || len(info.Payload) != plen || !info.IPChecksumOK || !info.L4ChecksumOK {
			t.Fatalf("round trip mismatch: %+v", info)
		}
	})
}

// TestParsePartialChecksum: a TCP or UDP segment whose checksum field holds
// the folded pseudo-header sum (left to offload) is L4PartialOK and not
// L4ChecksumOK; one with a full checksum is the reverse; a partial sum of
// other addresses (a translation that forgot the pseudo-header) is
// neither.
func TestParsePartialChecksum(t *testing.T) {
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for _, proto := range []uint8{ProtoUDP, ProtoTCP} {
		full, err := Build(Spec{Src: netip.AddrPortFrom(a, 1000), Dst: netip.AddrPortFrom(b, 80), PayloadLen: 11}, proto)
		if err != nil {
			t.Fatal(err)
		}
		off := EthernetLen + IPv4Len + 6
		if proto == ProtoTCP {
			off = EthernetLen + IPv4Len + 16
		}
		l4len := len(full) - EthernetLen - IPv4Len
		partial := append([]byte(nil), full...)
		binary.BigEndian.PutUint16(partial[off:], fold(pseudoHeaderSum(a, b, proto, l4len)))
		stale := append([]byte(nil), full...)
		binary.BigEndian.PutUint16(stale[off:], fold(pseudoHeaderSum(netip.MustParseAddr("192.168.1.1"), b, proto, l4len)))
		for _, c := range []struct {
			name          string
			frame         []byte
			full, partial bool
		}{{"full", full, true, false}, {"partial", partial, false, true}, {"stale partial", stale, false, false}} {
			info, err := Parse(c.frame)
			if err != nil {
				t.Fatal(err)
			}
			if info.L4ChecksumOK != c.full || info.L4PartialOK != c.partial {
				t.Errorf("proto %d %s: L4ChecksumOK %v L4PartialOK %v, want %v %v", proto, c.name, info.L4ChecksumOK, info.L4PartialOK, c.full, c.partial)
			}
		}
	}
}
