package pkt

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"testing"

	"github.com/fwplane/fwplane/internal/packet"
)

// naiveSum is the RFC 1071 sum, 16 bits at a time, folded: the reference
// the fast sum is checked against.
func naiveSum(b []byte, s uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

func TestSumBytesMatchesNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 200 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if n%7 == 0 {
			for i := range b {
				b[i] = 0xff // worst case for carries
			}
		}
		init := r.Uint32N(1 << 20)
		if got, want := fold(sumBytes(b, uint64(init))), naiveSum(b, init); got != want {
			t.Fatalf("len %d: fold(sumBytes) = %#04x, naive %#04x", n, got, want)
		}
	}
}

// partial rewrites the checksum field of a correct TCP/UDP frame as
// checksum offload leaves it: the folded pseudo-header sum, computed here
// independently of the code under test.
func partial(t *testing.T, frame []byte, proto uint8) []byte {
	t.Helper()
	f := bytes.Clone(frame)
	var info Info
	if err := Parse(f, &info); err != nil {
		t.Fatal(err)
	}
	l3, l4 := int(info.L3Off), int(info.L4Off)
	n := int(info.IPLen) - (l4 - l3)
	var ph []byte
	if info.Tuple.Family == 4 {
		ph = append(ph, f[l3+12:l3+20]...)
		ph = append(ph, 0, proto, byte(n>>8), byte(n))
	} else {
		ph = append(ph, f[l3+8:l3+40]...)
		ph = binary.BigEndian.AppendUint32(ph, uint32(n))
		ph = append(ph, 0, 0, 0, proto)
	}
	off := udpCsumOff
	if proto == packet.ProtoTCP {
		off = tcpCsumOff
	}
	binary.BigEndian.PutUint16(f[l4+off:], naiveSum(ph, 0))
	return f
}

func TestCompletePartialChecksum(t *testing.T) {
	mac := []byte{2, 0, 0, 0, 0, 1}
	specs := map[string]packet.Spec{
		"v4":      {SrcMAC: mac, DstMAC: mac, Src: netip.MustParseAddrPort("10.0.1.2:40000"), Dst: netip.MustParseAddrPort("10.0.2.2:5201")},
		"v6":      {SrcMAC: mac, DstMAC: mac, Src: netip.MustParseAddrPort("[fd00:1::2]:40000"), Dst: netip.MustParseAddrPort("[fd00:2::2]:5201")},
		"v4 vlan": {SrcMAC: mac, DstMAC: mac, VLAN: 7, Src: netip.MustParseAddrPort("10.0.1.2:1"), Dst: netip.MustParseAddrPort("10.0.2.2:2")},
	}
	for name, s := range specs {
		for _, proto := range []uint8{packet.ProtoTCP, packet.ProtoUDP} {
			for _, plen := range []int{0, 1, 7, 1400} {
				s.PayloadLen = plen
				s.TCPFlags = packet.TCPAck
				good, err := packet.Build(s, proto)
				if err != nil {
					t.Fatal(err)
				}
				bad := partial(t, good, proto)
				if pi, err := packet.Parse(bad); err != nil || pi.L4ChecksumOK && !bytes.Equal(bad, good) {
					t.Fatalf("%s/%d/%d: the reference parser accepts the partial checksum (%v)", name, proto, plen, err)
				}
				var info Info
				if err := Parse(bad, &info); err != nil {
					t.Fatal(err)
				}
				if L4ChecksumOK(bad, &info) && !bytes.Equal(bad, good) {
					t.Errorf("%s/%d/%d: L4ChecksumOK on a partial checksum", name, proto, plen)
				}
				if !CompletePartialChecksum(bad, &info) {
					t.Errorf("%s/%d/%d: partial checksum not detected", name, proto, plen)
				}
				if !bytes.Equal(bad, good) {
					t.Errorf("%s/%d/%d: completed frame differs from the builder's", name, proto, plen)
				}
				if pi, err := packet.Parse(bad); err != nil || !pi.L4ChecksumOK || !L4ChecksumOK(bad, &info) {
					t.Errorf("%s/%d/%d: completed frame does not verify: %v", name, proto, plen, err)
				}
				// A complete checksum is never changed.
				again := bytes.Clone(good)
				if CompletePartialChecksum(again, &info) && !bytes.Equal(again, good) {
					t.Errorf("%s/%d/%d: a complete checksum was rewritten", name, proto, plen)
				}
			}
		}
	}
}

// TestCompletePartialChecksumLeavesOthers: no checksum (IPv4 UDP 0),
// fragments and ICMP are left alone.
func TestCompletePartialChecksumLeavesOthers(t *testing.T) {
	s := packet.Spec{Src: netip.MustParseAddrPort("10.0.1.2:1"), Dst: netip.MustParseAddrPort("10.0.2.2:2"), PayloadLen: 20}
	f := packet.UDP(s)
	var info Info
	if err := Parse(f, &info); err != nil {
		t.Fatal(err)
	}
	binary.BigEndian.PutUint16(f[int(info.L4Off)+udpCsumOff:], 0)
	was := bytes.Clone(f)
	if CompletePartialChecksum(f, &info) || !bytes.Equal(f, was) {
		t.Error("a UDP packet without a checksum was changed")
	}
	info.Flags |= FlagFragment
	p := partial(t, packet.UDP(s), packet.ProtoUDP)
	if CompletePartialChecksum(p, &info) {
		t.Error("a fragment's checksum was completed")
	}
	e := packet.ICMPEcho(s, 1, 1)
	if err := Parse(e, &info); err != nil {
		t.Fatal(err)
	}
	if CompletePartialChecksum(e, &info) || !L4ChecksumOK(e, &info) {
		t.Error("ICMP echo: changed, or its checksum does not verify")
	}
}

func TestCompletePartialChecksumAllocs(t *testing.T) {
	s := packet.Spec{Src: netip.MustParseAddrPort("10.0.1.2:1"), Dst: netip.MustParseAddrPort("10.0.2.2:2"), PayloadLen: 1400, TCPFlags: packet.TCPAck}
	f := packet.TCP(s)
	var info Info
	if err := Parse(f, &info); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { CompletePartialChecksum(f, &info) }); n != 0 {
		t.Errorf("%v allocations", n)
	}
}

// BenchmarkCompletePartialChecksum: the cost per forwarded frame, for a
// complete checksum (the pseudo-header sum only) and for a partial one
// (the whole segment summed), at 64 and 1500 bytes.
func BenchmarkCompletePartialChecksum(b *testing.B) {
	for _, size := range []int{64, 1500} {
		for _, isPartial := range []bool{false, true} {
			name := "complete"
			if isPartial {
				name = "partial"
			}
			s := packet.Spec{Src: netip.MustParseAddrPort("10.0.1.2:1"), Dst: netip.MustParseAddrPort("10.0.2.2:2"),
				PayloadLen: size - 14 - 20 - 20, TCPFlags: packet.TCPAck}
			good := packet.TCP(s)
			var info Info
			if err := Parse(good, &info); err != nil {
				b.Fatal(err)
			}
			var ph [12]byte
			copy(ph[:8], good[26:34])
			ph[9] = packet.ProtoTCP
			binary.BigEndian.PutUint16(ph[10:], uint16(len(good)-34))
			pcs := naiveSum(ph[:], 0)
			f := bytes.Clone(good)
			b.Run(name+"/"+strconv.Itoa(size), func(b *testing.B) {
				b.SetBytes(int64(len(f)))
				for b.Loop() {
					if isPartial {
						binary.BigEndian.PutUint16(f[34+tcpCsumOff:], pcs)
					}
					CompletePartialChecksum(f, &info)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/frame")
			})
		}
	}
}
