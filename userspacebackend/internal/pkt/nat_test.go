package pkt

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/fwplane/fwplane/internal/packet"
)

// withOptions inserts n 4-byte words of IPv4 options (NOPs, then an end of
// list) after the IP header of an untagged frame built by internal/packet.
func withOptions(f []byte, n int) []byte {
	opts := make([]byte, 4*n)
	for i := range opts {
		opts[i] = 1
	}
	opts[len(opts)-1] = 0
	out := append(append(append([]byte(nil), f[:14+20]...), opts...), f[14+20:]...)
	h := out[14:]
	h[0] = 0x40 | byte(5+n)
	binary.BigEndian.PutUint16(h[2:], binary.BigEndian.Uint16(h[2:])+uint16(4*n))
	binary.BigEndian.PutUint16(h[10:], 0)
	binary.BigEndian.PutUint16(h[10:], IPv4Checksum(h[:20+4*n]))
	return out
}

// zeroUDPChecksum clears the UDP checksum of an untagged frame without IP
// options ("no checksum", allowed for IPv4).
func zeroUDPChecksum(f []byte) []byte {
	binary.BigEndian.PutUint16(f[14+20+6:], 0)
	return f
}

// TestRewriteIPv4: translated packets of every translated protocol verify
// (IP and transport checksums, by the independent test parser) and carry
// the new addresses and ports, with and without IP options; a UDP
// checksum of zero stays zero.
func TestRewriteIPv4(t *testing.T) {
	src := netip.AddrPortFrom(netip.MustParseAddr("10.0.1.2"), 40000)
	dst := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), 53)
	spec := packet.Spec{Src: src, Dst: dst, PayloadLen: 37}
	nsrc, ndst := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("10.0.2.9")
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"udp", packet.UDP(spec)},
		{"udp, ip options", withOptions(packet.UDP(spec), 2)},
		{"udp, no checksum", zeroUDPChecksum(packet.UDP(spec))},
		{"tcp", packet.TCP(spec)},
		{"tcp, ip options", withOptions(packet.TCP(spec), 1)},
		{"icmp echo", packet.ICMPEcho(spec, 777, 1)},
	} {
		t.Run(c.name, func(t *testing.T) {
			var info Info
			if err := Parse(c.frame, &info); err != nil {
				t.Fatal(err)
			}
			zero := info.Tuple.Proto == protoUDP && binary.BigEndian.Uint16(c.frame[info.L4Off+6:]) == 0
			if !RewriteIPv4(c.frame, &info, nsrc.As4(), 1025, ndst.As4(), 8080) {
				t.Fatal("RewriteIPv4 refused an IPv4 packet")
			}
			got, err := packet.Parse(c.frame)
			if err != nil {
				t.Fatal(err)
			}
			if !got.IPChecksumOK || !got.L4ChecksumOK {
				t.Errorf("checksums after the rewrite: ip %v, l4 %v", got.IPChecksumOK, got.L4ChecksumOK)
			}
			if got.Src.Addr() != nsrc || got.Dst.Addr() != ndst {
				t.Errorf("addresses %s -> %s", got.Src, got.Dst)
			}
			switch info.Tuple.Proto {
			case protoICMP:
				if got.ICMPID != 1025 {
					t.Errorf("echo identifier %d, want 1025", got.ICMPID)
				}
			default:
				if got.Src.Port() != 1025 || got.Dst.Port() != 8080 {
					t.Errorf("ports %s -> %s", got.Src, got.Dst)
				}
			}
			if zero && binary.BigEndian.Uint16(c.frame[info.L4Off+6:]) != 0 {
				t.Error("a UDP checksum of zero was rewritten")
			}
		})
	}
}

// TestRewriteIPv4MatchesRecompute: on random packets and translations the
// incremental update equals a checksum computed afresh, and a UDP update
// that comes out zero is sent as 0xffff.
func TestRewriteIPv4MatchesRecompute(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	addr := func() netip.Addr {
		return netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
	}
	for i := range 5000 {
		spec := packet.Spec{Src: netip.AddrPortFrom(addr(), uint16(r.Uint32())), Dst: netip.AddrPortFrom(addr(), uint16(r.Uint32())),
			PayloadLen: r.IntN(200), TTL: uint8(r.IntN(255) + 1)}
		proto := []uint8{packet.ProtoUDP, packet.ProtoTCP, packet.ProtoICMP}[i%3]
		f, err := packet.Build(spec, proto)
		if err != nil {
			t.Fatal(err)
		}
		var info Info
		if err := Parse(f, &info); err != nil {
			t.Fatal(err)
		}
		if !RewriteIPv4(f, &info, addr().As4(), uint16(r.Uint32()), addr().As4(), uint16(r.Uint32())) {
			t.Fatal("refused")
		}
		got, _ := packet.Parse(f)
		if !got.IPChecksumOK || !got.L4ChecksumOK {
			t.Fatalf("packet %d (%d): checksums ip %v l4 %v", i, proto, got.IPChecksumOK, got.L4ChecksumOK)
		}
	}
	// A translation whose updated UDP checksum is zero.
	spec := packet.Spec{Src: netip.AddrPortFrom(netip.MustParseAddr("10.0.1.2"), 5000), Dst: netip.AddrPortFrom(netip.MustParseAddr("10.0.2.2"), 53), PayloadLen: 8}
	f := packet.UDP(spec)
	var info Info
	Parse(f, &info)
	c := binary.BigEndian.Uint16(f[info.L4Off+6:])
	nsrc := netip.MustParseAddr("10.0.2.1").As4()
	base := csum4(c, binary.BigEndian.Uint32(f[14+12:]), binary.BigEndian.Uint32(nsrc[:]))
	var port uint16
	for p := range 65536 {
		if csum2(base, 5000, uint16(p)) == 0 {
			port = uint16(p)
			break
		}
	}
	RewriteIPv4(f, &info, nsrc, port, [4]byte(f[14+16:14+20]), 53)
	if got := binary.BigEndian.Uint16(f[info.L4Off+6:]); got != 0xffff {
		t.Errorf("UDP checksum that came out zero: %#04x, want 0xffff", got)
	}
	if got, _ := packet.Parse(f); !got.L4ChecksumOK {
		t.Error("0xffff does not verify")
	}
}

// TestTranslateICMPError: an error about a translated packet, translated
// back, verifies at every level (its IP and ICMP checksums, the quoted IP
// header, the quoted UDP or echo checksum) and quotes the original
// packet, for UDP, TCP and echo quotes.
func TestTranslateICMPError(t *testing.T) {
	client, server := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.2.2")
	fw, router := netip.MustParseAddr("10.0.2.1"), netip.MustParseAddr("10.0.2.254")
	for _, proto := range []uint8{packet.ProtoUDP, packet.ProtoTCP, packet.ProtoICMP} {
		// The packet as it left the firewall (source translated), and the
		// error a router sent back to the firewall's address about it.
		sent, _ := packet.Build(packet.Spec{Src: netip.AddrPortFrom(fw, 1024), Dst: netip.AddrPortFrom(server, 53), PayloadLen: 30}, proto)
		var sinfo Info
		if err := Parse(sent, &sinfo); err != nil {
			t.Fatal(err)
		}
		errFrame := make([]byte, 1500)
		// Time exceeded for UDP and echo; fragmentation needed (with the
		// next-hop MTU, which must survive) for TCP.
		r := ErrorReply{Type: ICMPTimeExceeded, Src: router}
		if proto == packet.ProtoTCP {
			r = ErrorReply{Type: ICMPDestUnreach, Code: ICMPFragNeeded, MTU: 1400, Src: router}
		}
		n := BuildICMPError(errFrame, sent, &sinfo, &r)
		errFrame = errFrame[:n]
		var info Info
		if err := Parse(errFrame, &info); err != nil || info.Flags&FlagICMPError == 0 {
			t.Fatalf("parse the error: %v", err)
		}
		if !TranslateICMPError(errFrame, &info, router.As4(), client.As4(), client.As4(), 40000, server.As4(), 53) {
			t.Fatal("TranslateICMPError refused")
		}
		got, err := packet.Parse(errFrame)
		if err != nil {
			t.Fatal(err)
		}
		if !got.IPChecksumOK || !got.L4ChecksumOK || got.Dst.Addr() != client || got.Src.Addr() != router {
			t.Errorf("proto %d: outer %s -> %s, ip %v icmp %v", proto, got.Src, got.Dst, got.IPChecksumOK, got.L4ChecksumOK)
		}
		if mtu := binary.BigEndian.Uint16(errFrame[info.L4Off+6:]); mtu != uint16(r.MTU) || got.ICMPType != r.Type || got.ICMPCode != r.Code {
			t.Errorf("proto %d: type %d code %d mtu %d after translation, want %d %d %d", proto, got.ICMPType, got.ICMPCode, mtu, r.Type, r.Code, r.MTU)
		}
		// The quote, rebuilt as a frame, is the original packet.
		quoted := append(append([]byte(nil), errFrame[:14]...), got.Payload[4:]...)
		q, err := packet.Parse(quoted)
		if err != nil {
			t.Fatal(err)
		}
		if !q.IPChecksumOK || !q.L4ChecksumOK {
			t.Errorf("proto %d: quoted checksums ip %v l4 %v", proto, q.IPChecksumOK, q.L4ChecksumOK)
		}
		wantSrc := netip.AddrPortFrom(client, 40000)
		if proto == packet.ProtoICMP {
			if q.Src.Addr() != client || q.ICMPID != 40000 {
				t.Errorf("quoted echo from %s id %d, want %s id 40000", q.Src, q.ICMPID, client)
			}
		} else if q.Src != wantSrc || q.Dst != netip.AddrPortFrom(server, 53) {
			t.Errorf("proto %d: quote %s -> %s, want %s -> %s:53", proto, q.Src, q.Dst, wantSrc, server)
		}
		qt, ok := QuotedTuple(errFrame, &info)
		if !ok || qt.SrcAddr() != client || qt.SrcPort != 40000 {
			t.Errorf("proto %d: QuotedTuple = %v %v", proto, qt, ok)
		}
	}
}

func TestNATAllocs(t *testing.T) {
	f := packet.UDP(packet.Spec{Src: netip.MustParseAddrPort("10.0.1.2:5"), Dst: netip.MustParseAddrPort("10.0.2.2:53"), PayloadLen: 8})
	var info Info
	Parse(f, &info)
	a, b := [4]byte{1, 2, 3, 4}, [4]byte{5, 6, 7, 8}
	if n := testing.AllocsPerRun(100, func() { RewriteIPv4(f, &info, a, 1, b, 2) }); n != 0 {
		t.Errorf("RewriteIPv4 allocates %.0f times", n)
	}
}

func BenchmarkRewriteIPv4(b *testing.B) {
	f := packet.UDP(packet.Spec{Src: netip.MustParseAddrPort("10.0.1.2:5"), Dst: netip.MustParseAddrPort("10.0.2.2:53"), PayloadLen: 18})
	var info Info
	Parse(f, &info)
	x, y := [4]byte{10, 0, 2, 1}, [4]byte{10, 0, 2, 2}
	orig := [4]byte(f[14+12 : 14+16])
	for i := 0; b.Loop(); i++ {
		if i&1 == 0 {
			RewriteIPv4(f, &info, x, 1024, y, 53)
		} else {
			RewriteIPv4(f, &info, orig, 5, y, 53)
		}
	}
}
