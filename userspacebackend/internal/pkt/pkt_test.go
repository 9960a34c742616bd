package pkt

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/internal/policy"
)

// frame is a tiny test-only frame builder, independent of the parser.
type frame struct {
	vlan     int // -1: untagged
	qinq     bool
	src, dst netip.Addr
	proto    uint8
	ttl      uint8
	l4       []byte
	ext      [][]byte // IPv6 extension headers as (nextHeader placeholder, bytes)
	extTypes []uint8
	fragOff  uint16 // IPv4: offset in 8-byte units; IPv6: same
	mf       bool
	df       bool
	options  int // IPv4 options, in 4-byte words
	pad      int // Ethernet padding after the datagram
}

func (f frame) bytes() []byte {
	b := []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2}
	v4 := f.src.Is4()
	et := uint16(EtherTypeIPv6)
	if v4 {
		et = EtherTypeIPv4
	}
	if f.vlan >= 0 {
		b = binary.BigEndian.AppendUint16(b, EtherTypeVLAN)
		b = binary.BigEndian.AppendUint16(b, uint16(f.vlan))
		if f.qinq {
			b = binary.BigEndian.AppendUint16(b, EtherTypeVLAN)
			b = binary.BigEndian.AppendUint16(b, 7)
		}
	}
	b = binary.BigEndian.AppendUint16(b, et)
	ttl := f.ttl
	if ttl == 0 {
		ttl = 64
	}
	if v4 {
		ihl := 20 + 4*f.options
		h := make([]byte, ihl)
		h[0] = 0x40 | byte(ihl/4)
		binary.BigEndian.PutUint16(h[2:], uint16(ihl+len(f.l4)))
		frag := f.fragOff
		if f.mf {
			frag |= 0x2000
		}
		if f.df {
			frag |= 0x4000
		}
		binary.BigEndian.PutUint16(h[6:], frag|0x4000*0) // DF clear
		h[8], h[9] = ttl, f.proto
		s, d := f.src.As4(), f.dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		binary.BigEndian.PutUint16(h[10:], IPv4Checksum(h))
		b = append(b, h...)
	} else {
		var exts []byte
		next := f.proto
		for i := len(f.ext) - 1; i >= 0; i-- {
			e := append([]byte(nil), f.ext[i]...)
			e[0] = next
			exts = append(e, exts...)
			next = f.extTypes[i]
		}
		h := make([]byte, 40)
		h[0] = 0x60
		binary.BigEndian.PutUint16(h[4:], uint16(len(exts)+len(f.l4)))
		h[6], h[7] = next, ttl
		s, d := f.src.As16(), f.dst.As16()
		copy(h[8:], s[:])
		copy(h[24:], d[:])
		b = append(b, h...)
		b = append(b, exts...)
	}
	b = append(b, f.l4...)
	return append(b, make([]byte, f.pad)...)
}

func ports(sp, dp uint16, n int) []byte {
	l := make([]byte, n)
	binary.BigEndian.PutUint16(l, sp)
	binary.BigEndian.PutUint16(l[2:], dp)
	return l
}

func echo(typ uint8, id uint16) []byte {
	l := make([]byte, 8)
	l[0] = typ
	binary.BigEndian.PutUint16(l[4:], id)
	return l
}

func tcpFlags(l []byte, flags byte) []byte {
	l[13] = flags
	return l
}

func fragExt(off uint16, mf bool) []byte {
	e := make([]byte, 8)
	v := off << 3
	if mf {
		v |= 1
	}
	binary.BigEndian.PutUint16(e[2:], v)
	return e
}

var (
	a4, b4 = netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.2")
	a6, b6 = netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
)

func TestParse(t *testing.T) {
	tp := policy.MakeTuple
	tests := []struct {
		name    string
		f       frame
		raw     []byte // overrides f when set
		want    Info
		wantErr error
	}{
		{name: "udp4", f: frame{vlan: -1, src: a4, dst: b4, proto: 17, l4: ports(1000, 53, 8)},
			want: Info{Tuple: tp(a4, b4, 17, 1000, 53), L3Off: 14, L4Off: 34, IPLen: 28, TTL: 64}},
		{name: "tcp4 vlan, options, padding", f: frame{vlan: 0x2064, src: a4, dst: b4, proto: 6, ttl: 9, options: 2, pad: 10, l4: ports(1, 443, 20)},
			want: Info{Tuple: tp(a4, b4, 6, 1, 443), L3Off: 18, L4Off: 46, IPLen: 48, TTL: 9, VLAN: 0x064, Flags: FlagVLAN | FlagIPv4Options}},
		{name: "icmp4 echo request", f: frame{vlan: -1, src: a4, dst: b4, proto: 1, l4: echo(8, 0x1234)},
			want: Info{Tuple: tp(a4, b4, 1, 0x1234, 0x1234), L3Off: 14, L4Off: 34, IPLen: 28, TTL: 64, ICMPType: 8}},
		{name: "icmp4 echo reply", f: frame{vlan: -1, src: b4, dst: a4, proto: 1, l4: echo(0, 0x1234)},
			want: Info{Tuple: tp(b4, a4, 1, 0x1234, 0x1234), L3Off: 14, L4Off: 34, IPLen: 28, TTL: 64}},
		{name: "icmp4 unreachable has no ports", f: frame{vlan: -1, src: a4, dst: b4, proto: 1, l4: echo(3, 0x1234)},
			want: Info{Tuple: tp(a4, b4, 1, 0, 0), L3Off: 14, L4Off: 34, IPLen: 28, TTL: 64, ICMPType: 3, Flags: FlagICMPError}},
		{name: "icmp4 time exceeded is an error", f: frame{vlan: -1, src: a4, dst: b4, proto: 1, l4: echo(11, 0)},
			want: Info{Tuple: tp(a4, b4, 1, 0, 0), L3Off: 14, L4Off: 34, IPLen: 28, TTL: 64, ICMPType: 11, Flags: FlagICMPError}},
		{name: "icmpv6 packet too big is an error", f: frame{vlan: -1, src: a6, dst: b6, proto: 58, l4: echo(2, 0)},
			want: Info{Tuple: tp(a6, b6, 58, 0, 0), L3Off: 14, L4Off: 54, IPLen: 48, TTL: 64, ICMPType: 2, Flags: FlagICMPError}},
		{name: "tcp4 flags and DF", f: frame{vlan: -1, src: a4, dst: b4, proto: 6, df: true, l4: tcpFlags(ports(1, 443, 20), 0x12)},
			want: Info{Tuple: tp(a4, b4, 6, 1, 443), L3Off: 14, L4Off: 34, IPLen: 40, TTL: 64, TCPFlags: 0x12, Flags: FlagDontFragment}},
		{name: "icmpv6 type in ipv4 is not echo", f: frame{vlan: -1, src: a4, dst: b4, proto: 1, l4: echo(128, 5)},
			want: Info{Tuple: tp(a4, b4, 1, 0, 0), L3Off: 14, L4Off: 34, IPLen: 28, TTL: 64, ICMPType: 128}},
		{name: "v4 first fragment", f: frame{vlan: -1, src: a4, dst: b4, proto: 17, mf: true, l4: ports(7, 8, 8)},
			want: Info{Tuple: tp(a4, b4, 17, 7, 8), L3Off: 14, L4Off: 34, IPLen: 28, TTL: 64, Flags: FlagFragment}},
		{name: "v4 later fragment", f: frame{vlan: -1, src: a4, dst: b4, proto: 17, fragOff: 100, l4: ports(7, 8, 8)},
			want: Info{Tuple: tp(a4, b4, 17, 0, 0), L3Off: 14, L4Off: 34, IPLen: 28, TTL: 64, Flags: FlagFragment | FlagLaterFragment}},
		{name: "sctp4 no ports", f: frame{vlan: -1, src: a4, dst: b4, proto: 132, l4: ports(7, 8, 12)},
			want: Info{Tuple: tp(a4, b4, 132, 0, 0), L3Off: 14, L4Off: 34, IPLen: 32, TTL: 64}},
		{name: "tcp6", f: frame{vlan: -1, src: a6, dst: b6, proto: 6, ttl: 3, l4: ports(5555, 22, 20)},
			want: Info{Tuple: tp(a6, b6, 6, 5555, 22), L3Off: 14, L4Off: 54, IPLen: 60, TTL: 3}},
		{name: "icmpv6 echo", f: frame{vlan: 5, src: a6, dst: b6, proto: 58, l4: echo(128, 77)},
			want: Info{Tuple: tp(a6, b6, 58, 77, 77), L3Off: 18, L4Off: 58, IPLen: 48, TTL: 64, VLAN: 5, Flags: FlagVLAN, ICMPType: 128}},
		{name: "icmpv6 ns has no ports", f: frame{vlan: -1, src: a6, dst: b6, proto: 58, l4: echo(135, 77)},
			want: Info{Tuple: tp(a6, b6, 58, 0, 0), L3Off: 14, L4Off: 54, IPLen: 48, TTL: 64, ICMPType: 135}},
		{name: "udp6 behind hop-by-hop and dest opts", f: frame{vlan: -1, src: a6, dst: b6, proto: 17, l4: ports(1, 2, 8),
			ext: [][]byte{make([]byte, 8), {0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}, extTypes: []uint8{0, 60}},
			want: Info{Tuple: tp(a6, b6, 17, 1, 2), L3Off: 14, L4Off: 78, IPLen: 72, TTL: 64}},
		{name: "udp6 first fragment", f: frame{vlan: -1, src: a6, dst: b6, proto: 17, l4: ports(1, 2, 8),
			ext: [][]byte{fragExt(0, true)}, extTypes: []uint8{44}},
			want: Info{Tuple: tp(a6, b6, 17, 1, 2), L3Off: 14, L4Off: 62, IPLen: 56, TTL: 64, Flags: FlagFragment}},
		{name: "udp6 later fragment", f: frame{vlan: -1, src: a6, dst: b6, proto: 17, l4: ports(1, 2, 8),
			ext: [][]byte{fragExt(9, false)}, extTypes: []uint8{44}},
			want: Info{Tuple: tp(a6, b6, 17, 0, 0), L3Off: 14, L4Off: 62, IPLen: 56, TTL: 64, Flags: FlagFragment | FlagLaterFragment}},
		{name: "too many extension headers", f: frame{vlan: -1, src: a6, dst: b6, proto: 17, l4: ports(1, 2, 8),
			ext: [][]byte{make([]byte, 8), make([]byte, 8), make([]byte, 8), make([]byte, 8), make([]byte, 8)}, extTypes: []uint8{0, 60, 43, 60, 60}},
			wantErr: ErrUnsupported},
		{name: "qinq", f: frame{vlan: 1, qinq: true, src: a4, dst: b4, proto: 17, l4: ports(1, 2, 8)}, wantErr: ErrUnsupported},
		{name: "arp", raw: append(make([]byte, 12), 0x08, 0x06, 0, 1), wantErr: ErrNotIP},
		{name: "short ethernet", raw: make([]byte, 13), wantErr: ErrTruncated},
		{name: "short vlan", raw: append(make([]byte, 12), 0x81, 0, 0), wantErr: ErrTruncated},
		{name: "short ipv4", raw: append(make([]byte, 12), 0x08, 0, 0x45), wantErr: ErrTruncated},
		{name: "tcp truncated by ip length", f: frame{vlan: -1, src: a4, dst: b4, proto: 6, l4: ports(1, 2, 8), pad: 20}, wantErr: ErrTruncated},
		{name: "udp truncated", f: frame{vlan: -1, src: a6, dst: b6, proto: 17, l4: ports(1, 2, 4)}, wantErr: ErrTruncated},
		{name: "icmp truncated", f: frame{vlan: -1, src: a4, dst: b4, proto: 1, l4: []byte{8, 0, 0}}, wantErr: ErrTruncated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.raw
			if b == nil {
				b = tc.f.bytes()
			}
			var got Info
			err := Parse(b, &got)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Parse error = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	good := frame{vlan: -1, src: a4, dst: b4, proto: 17, l4: ports(1, 2, 8)}.bytes()
	for _, tc := range []struct {
		name string
		edit func(b []byte)
		want error
	}{
		{"version 5", func(b []byte) { b[14] = 0x55 }, ErrMalformed},
		{"ihl 4", func(b []byte) { b[14] = 0x44 }, ErrMalformed},
		{"total < ihl", func(b []byte) { binary.BigEndian.PutUint16(b[16:], 19) }, ErrMalformed},
		{"total > frame", func(b []byte) { binary.BigEndian.PutUint16(b[16:], 29) }, ErrTruncated},
		{"ihl > total", func(b []byte) { b[14] = 0x4f }, ErrMalformed},
	} {
		b := append([]byte(nil), good...)
		tc.edit(b)
		var info Info
		if err := Parse(b, &info); !errors.Is(err, tc.want) {
			t.Errorf("%s: Parse = %v, want %v", tc.name, err, tc.want)
		}
	}
	g6 := frame{vlan: -1, src: a6, dst: b6, proto: 17, l4: ports(1, 2, 8)}.bytes()
	g6[14] = 0x40
	var info Info
	if err := Parse(g6, &info); !errors.Is(err, ErrMalformed) {
		t.Errorf("v6 with version 4: %v", err)
	}
}

func TestDecTTL(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 5000 {
		f := frame{vlan: -1, src: a4, dst: b4, proto: 17, ttl: uint8(2 + r.IntN(254)), options: r.IntN(3), l4: ports(1, 2, 8)}
		b := f.bytes()
		// Randomise every header byte the checksum covers except version,
		// IHL and length, then fix the checksum.
		h := b[14 : 14+20+4*f.options]
		h[1], h[4], h[5], h[9] = byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())
		for j := 12; j < len(h); j++ {
			h[j] = byte(r.Uint32())
		}
		h[10], h[11] = 0, 0
		binary.BigEndian.PutUint16(h[10:], IPv4Checksum(h))
		if err := DecTTL(b, 14); err != nil {
			t.Fatalf("DecTTL: %v", err)
		}
		if h[8] != f.ttl-1 {
			t.Fatalf("ttl %d -> %d", f.ttl, h[8])
		}
		if c := IPv4Checksum(h); c != 0 {
			t.Fatalf("case %d: checksum wrong after DecTTL (residue %#x), header % x", i, c, h)
		}
	}
	for _, ttl := range []uint8{0, 1} {
		b := frame{vlan: -1, src: a4, dst: b4, proto: 17, l4: ports(1, 2, 8)}.bytes()
		b[22] = ttl
		if err := DecTTL(b, 14); !errors.Is(err, ErrTTLExpired) || b[22] != ttl {
			t.Errorf("ttl %d: err %v, ttl now %d", ttl, err, b[22])
		}
	}
	b6 := frame{vlan: 3, src: a6, dst: b6, proto: 17, ttl: 2, l4: ports(1, 2, 8)}.bytes()
	if err := DecTTL(b6, 18); err != nil || b6[18+7] != 1 {
		t.Errorf("v6: %v, hop limit %d", err, b6[18+7])
	}
	if err := DecTTL(b6, 18); !errors.Is(err, ErrTTLExpired) {
		t.Errorf("v6 hop limit 1: %v", err)
	}
	if err := DecTTL(b6[:30], 18); !errors.Is(err, ErrTruncated) {
		t.Errorf("short: %v", err)
	}
}

func TestSetMACs(t *testing.T) {
	b := frame{vlan: -1, src: a4, dst: b4, proto: 17, l4: ports(1, 2, 8)}.bytes()
	SetMACs(b, [6]byte{1, 2, 3, 4, 5, 6}, [6]byte{7, 8, 9, 10, 11, 12})
	if diff := cmp.Diff([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 8, 0}, b[:14]); diff != "" {
		t.Errorf("SetMACs (-want +got):\n%s", diff)
	}
}

func TestParseAllocs(t *testing.T) {
	b := frame{vlan: 4, src: a6, dst: b6, proto: 6, l4: ports(1, 2, 20)}.bytes()
	var info Info
	if n := testing.AllocsPerRun(1000, func() {
		_ = Parse(b, &info)
		_ = DecTTL(b, int(info.L3Off))
		b[21+4] = 64
		_ = Parse(b[:5], &info) // error path too
	}); n != 0 {
		t.Errorf("Parse/DecTTL allocate %.1f times", n)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(frame{vlan: -1, src: a4, dst: b4, proto: 17, l4: ports(1, 2, 8)}.bytes())
	f.Add(frame{vlan: 9, src: a6, dst: b6, proto: 58, l4: echo(128, 1)}.bytes())
	f.Add(frame{vlan: -1, src: a6, dst: b6, proto: 6, l4: ports(1, 2, 20), ext: [][]byte{make([]byte, 8), fragExt(0, true)}, extTypes: []uint8{0, 44}}.bytes())
	f.Add(frame{vlan: -1, src: a4, dst: b4, proto: 1, options: 3, l4: echo(8, 1)}.bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		var info Info
		if err := Parse(b, &info); err != nil {
			return
		}
		// A successful parse must describe the frame it came from.
		if int(info.L3Off) >= len(b) || int(info.L4Off) > len(b) || int(info.L3Off)+int(info.IPLen) > len(b) {
			t.Fatalf("offsets out of frame: %+v, len %d", info, len(b))
		}
		if info.Tuple.Family != policy.FamilyIPv4 && info.Tuple.Family != policy.FamilyIPv6 {
			t.Fatalf("family %d", info.Tuple.Family)
		}
		c := append([]byte(nil), b...)
		if err := DecTTL(c, int(info.L3Off)); err == nil && info.Tuple.Family == policy.FamilyIPv4 {
			ihl := int(c[info.L3Off]&0x0f) * 4
			before := IPv4Checksum(b[info.L3Off : int(info.L3Off)+ihl])
			after := IPv4Checksum(c[info.L3Off : int(info.L3Off)+ihl])
			if before == 0 && after != 0 {
				t.Fatalf("DecTTL broke a correct checksum")
			}
		}
	})
}

func BenchmarkParse(b *testing.B) {
	for _, bc := range []struct {
		name string
		f    frame
	}{
		{"udp4", frame{vlan: -1, src: a4, dst: b4, proto: 17, l4: ports(1, 2, 8), pad: 18}},
		{"tcp4_vlan", frame{vlan: 3, src: a4, dst: b4, proto: 6, l4: ports(1, 2, 20)}},
		{"tcp6", frame{vlan: -1, src: a6, dst: b6, proto: 6, l4: ports(1, 2, 20)}},
	} {
		buf := bc.f.bytes()
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			var info Info
			for b.Loop() {
				if err := Parse(buf, &info); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/packet")
		})
	}
	b.Run("parse+rewrite_udp4", func(b *testing.B) {
		buf := frame{vlan: -1, src: a4, dst: b4, proto: 17, l4: ports(1, 2, 8), pad: 18}.bytes()
		b.ReportAllocs()
		var info Info
		dst, src := [6]byte{1}, [6]byte{2}
		for b.Loop() {
			_ = Parse(buf, &info)
			SetMACs(buf, dst, src)
			buf[22] = 64
			_ = DecTTL(buf, int(info.L3Off))
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/packet")
	})
}
