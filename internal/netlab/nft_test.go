//go:build linux

package netlab

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/internal/testutil"
)

// TestIntegrationNftablesBaseline installs the nftables baseline allowing
// one UDP port: that port's echo passes (and is tracked), another port and
// TCP are dropped, replies of tracked flows pass; removing it restores
// plain forwarding.
func TestIntegrationNftablesBaseline(t *testing.T) {
	testutil.Command(t, "nft", "nftables")
	l := NewT(t, nil)
	ctx := context.Background()
	for _, p := range []uint16{7000, 7001} {
		stop, err := UDPEcho(ctx, l.Server, netip.AddrPortFrom(l.ServerAddr4, p))
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		stopT, err := TCPEcho(ctx, l.Server, netip.AddrPortFrom(l.ServerAddr6, p))
		if err != nil {
			t.Fatal(err)
		}
		defer stopT()
	}
	remove, err := l.InstallNftables(&NftablesOptions{Allow: []NftAllow{{Proto: packet.ProtoUDP, Ports: []uint16{7000}}}})
	if err != nil {
		t.Fatal(err)
	}
	try := func(proto string, dst netip.AddrPort, src uint16) error {
		rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		var err error
		if proto == "udp" {
			_, err = UDPRoundTrip(rctx, l.Client, netip.AddrPortFrom(netip.Addr{}, src), dst, []byte("x"))
		} else {
			_, err = TCPRoundTrip(rctx, l.Client, netip.AddrPortFrom(netip.Addr{}, src), dst, []byte("x"))
		}
		return err
	}
	if err := try("udp", netip.AddrPortFrom(l.ServerAddr4, 7000), 41000); err != nil {
		t.Errorf("allowed UDP flow: %v", err)
	}
	if err := try("udp", netip.AddrPortFrom(l.ServerAddr4, 7001), 41001); err == nil {
		t.Error("UDP to a port the baseline does not allow was answered")
	}
	if err := try("tcp", netip.AddrPortFrom(l.ServerAddr6, 7000), 41002); err == nil {
		t.Error("TCP (IPv6) was answered though only UDP is allowed")
	}
	flows, err := ConntrackFlows(l.Firewall)
	if err != nil {
		t.Fatal(err)
	}
	tracked := false
	for _, f := range flows {
		if f.Forward.Protocol == packet.ProtoUDP && f.Forward.DstPort == 7000 && f.Forward.SrcPort == 41000 {
			tracked = true
		}
	}
	if !tracked {
		t.Errorf("the allowed flow is not in the firewall's conntrack table: %v", flows)
	}
	if n, err := ConntrackCount(l.Firewall); err != nil || n == 0 {
		t.Errorf("conntrack count %d, %v; want > 0", n, err)
	}
	if err := remove(); err != nil {
		t.Fatal(err)
	}
	if err := try("udp", netip.AddrPortFrom(l.ServerAddr4, 7001), 41003); err != nil {
		t.Errorf("after removing the baseline: %v", err)
	}
	if _, err := l.NftablesRuleset(&NftablesOptions{Allow: []NftAllow{{Proto: 1}}}); err == nil || !strings.Contains(err.Error(), "allow[0].proto") {
		t.Errorf("a rule for protocol 1: %v, want an error naming allow[0].proto", err)
	}
}

// BenchmarkBaselines is the kernel's two columns of the baseline table
// (scripts/bench-baselines.sh): plain forwarding and nftables with
// conntrack. Backends add theirs with netlab.BenchBaselines in their own
// package.
func BenchmarkBaselines(b *testing.B) {
	testutil.Command(b, "iperf3", "iperf3")
	testutil.Command(b, "nft", "nftables")
	BenchBaselines(b, KernelForwarding(), NftablesConntrack())
}
