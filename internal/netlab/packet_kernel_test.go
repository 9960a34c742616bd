//go:build linux

package netlab

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/internal/testutil"
)

// TestIntegrationKernelAcceptsBuiltFrames is the independent check of
// internal/packet's checksums: frames it builds are forwarded by the
// firewall's kernel and delivered to a UDP socket (or answered by the ICMP
// stack) on the server, which verifies every checksum, while the same frame
// with one payload bit flipped is dropped.
func TestIntegrationKernelAcceptsBuiltFrames(t *testing.T) {
	l := NewT(t, nil)
	testutil.Privileged(t, testutil.NeedBPF)
	ctx := context.Background()
	if err := l.ResolveNeighbors(ctx); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []struct {
		name     string
		src, dst netip.Addr
	}{{"ipv4", l.ClientAddr4, l.ServerAddr4}, {"ipv6", l.ClientAddr6, l.ServerAddr6}} {
		t.Run(fam.name+" udp", func(t *testing.T) {
			dst := netip.AddrPortFrom(fam.dst, 6000)
			var conn *net.UDPConn
			err := l.Server.Do(func() error {
				c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(dst))
				conn = c
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			good := packet.UDP(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
				Src: netip.AddrPortFrom(fam.src, 5555), Dst: dst, Payload: []byte("checksum-ok!!")})
			bad := append([]byte(nil), good...)
			bad[len(bad)-1] ^= 0x01
			csum0, err := ReadChecksumErrors(l.Server)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range [][]byte{bad, good} {
				if _, err := (Flood{NS: l.Client, Iface: l.ClientIf, Frame: f, Count: 1}).Run(ctx); err != nil {
					t.Fatal(err)
				}
			}
			conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 100)
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("server received nothing: %v", err)
			}
			if string(buf[:n]) != "checksum-ok!!" || from.Port() != 5555 {
				t.Fatalf("server received %q from %v; the corrupted frame was delivered or the payload differs", buf[:n], from)
			}
			conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if n, _, err := conn.ReadFromUDPAddrPort(buf); err == nil {
				t.Errorf("a second datagram %q arrived: the corrupted frame passed the kernel's checksum check", buf[:n])
			}
			// The server's stack counted the corrupted one, as nstat shows.
			csum1, err := ReadChecksumErrors(l.Server)
			if err != nil {
				t.Fatal(err)
			}
			want := ChecksumErrors{UDP: 1}
			if fam.dst.Is6() {
				want = ChecksumErrors{UDP6: 1}
			}
			if got := csum1.Sub(csum0); got != want {
				t.Errorf("server checksum errors moved by %+v, want %+v", got, want)
			}
		})
		t.Run(fam.name+" icmp echo", func(t *testing.T) {
			c, err := Capture(l.Client, l.ClientIf, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			req := packet.ICMPEcho(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
				Src: netip.AddrPortFrom(fam.src, 0), Dst: netip.AddrPortFrom(fam.dst, 0), PayloadLen: 24}, 0xbeef, 7)
			if _, err := (Flood{NS: l.Client, Iface: l.ClientIf, Frame: req, Count: 1}).Run(ctx); err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			for {
				f, err := c.Next(wctx)
				if err != nil {
					t.Fatalf("no echo reply: %v", err)
				}
				info, err := packet.Parse(f)
				if err != nil || info.ICMPID != 0xbeef {
					continue
				}
				if want := map[bool]uint8{true: packet.ICMPv4EchoReply, false: packet.ICMPv6EchoReply}[fam.src.Is4()]; info.ICMPType != want || info.ICMPSeq != 7 {
					t.Fatalf("reply type %d seq %d, want type %d seq 7", info.ICMPType, info.ICMPSeq, want)
				}
				break
			}
		})
	}
}
