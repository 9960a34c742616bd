//go:build linux

package netlab

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/internal/testutil"
)

func TestIntegrationCaptureByteExact(t *testing.T) {
	l := NewT(t, nil)
	testutil.Privileged(t, testutil.NeedBPF)
	mk := func(vlan uint16, v6 bool) []byte {
		s := packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC, VLAN: vlan, Payload: []byte("capture me"),
			Src: netip.AddrPortFrom(l.ClientAddr4, 1234), Dst: netip.AddrPortFrom(l.ServerAddr4, 4321)}
		if v6 {
			s.Src, s.Dst = netip.AddrPortFrom(l.ClientAddr6, 1234), netip.AddrPortFrom(l.ServerAddr6, 4321)
		}
		return packet.UDP(s)
	}
	for _, tt := range []struct {
		name  string
		frame []byte
	}{
		{"untagged ipv4", mk(0, false)},
		{"vlan 42 ipv4", mk(42, false)},
		{"vlan 4094 ipv6", mk(4094, true)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Capture(l.Firewall, l.FwClientIf, 64)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := (Flood{NS: l.Client, Iface: l.ClientIf, Frame: tt.frame, Count: 3}).Run(context.Background()); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			got := 0
			for got < 3 {
				f, err := c.Next(ctx)
				if err != nil {
					t.Fatalf("after %d of 3 frames: %v", got, err)
				}
				if info, err := packet.Parse(f); err != nil || info.Dst.Port() != 4321 {
					continue // the client's own ND/MLD chatter
				}
				if diff := cmp.Diff(tt.frame, f); diff != "" {
					t.Fatalf("captured frame differs (-sent +captured):\n%s", diff)
				}
				got++
			}
		})
	}
}

// TestIntegrationCaptureRealTraffic checks the capturer sees what the
// kernel forwards: a UDP round trip's request as it leaves the firewall,
// with the firewall's MAC as source and the TTL decremented.
func TestIntegrationCaptureRealTraffic(t *testing.T) {
	l := NewT(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dst := netip.AddrPortFrom(l.ServerAddr4, 7)
	stop, err := UDPEcho(ctx, l.Server, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c, err := Capture(l.Server, l.ServerIf, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := UDPRoundTrip(ctx, l.Client, netip.AddrPortFrom(netip.Addr{}, 40001), dst, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := c.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		info, err := packet.Parse(f)
		if err != nil || info.Proto != packet.ProtoUDP {
			continue
		}
		want := packet.Info{DstMAC: l.ServerMAC, SrcMAC: l.FwServerMAC, EtherType: packet.EtherTypeIPv4,
			Src: netip.AddrPortFrom(l.ClientAddr4, 40001), Dst: dst, Proto: packet.ProtoUDP, TTL: 63,
			Payload: []byte("ping"), IPChecksumOK: true}
		// The sender's socket left the UDP checksum to veth "offload", so
		// on this hop it is only the pseudo-header sum: see Capturer.
		opts := cmp.Options{cmpopts.EquateComparable(netip.AddrPort{}), cmpopts.IgnoreFields(packet.Info{}, "L4ChecksumOK")}
		if diff := cmp.Diff(want, info, opts); diff != "" {
			t.Errorf("forwarded request (-want +got):\n%s", diff)
		}
		break
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// Drain what was recorded; then Next reports the close.
	for {
		if _, err := c.Next(ctx); err != nil {
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("Next after Close: %v, want net.ErrClosed", err)
			}
			break
		}
	}
}
