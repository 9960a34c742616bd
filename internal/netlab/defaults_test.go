//go:build linux

package netlab

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/internal/testutil"
)

// labEnds lists every veth end of a lab with its namespace.
func labEnds(l *Lab) []struct {
	ns    *NS
	iface string
} {
	return []struct {
		ns    *NS
		iface string
	}{{l.Client, l.ClientIf}, {l.Firewall, l.FwClientIf}, {l.Firewall, l.FwServerIf}, {l.Server, l.ServerIf}}
}

// TestIntegrationVethOffloads reads every end's offloads back from the
// kernel: the lab's settings by default, the kernel's own with
// KernelVethDefaults.
func TestIntegrationVethOffloads(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts *Options
		want Offloads
	}{
		// Without TX checksum offload the kernel cannot segment either.
		{"lab settings", nil, Offloads{GRO: true, TxChecksum: false, TSO: false}},
		{"kernel defaults", &Options{KernelVethDefaults: true}, Offloads{GRO: false, TxChecksum: true, TSO: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := NewT(t, tt.opts)
			for _, e := range labEnds(l) {
				got, err := ReadOffloads(e.ns, e.iface)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("%s in %s (-want +got):\n%s", e.iface, e.ns, diff)
				}
			}
		})
	}
}

// TestIntegrationKernelVethDefaultsForward runs socket traffic through the
// firewall's kernel forwarding on veths as the kernel makes them: UDP and
// TCP round trips on both families, and a 100 MB TCP transfer that must
// arrive without a single checksum error at the receiver (partial sums
// and GSO frames are the kernel's own business on this path).
func TestIntegrationKernelVethDefaultsForward(t *testing.T) {
	l := NewT(t, &Options{KernelVethDefaults: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, fam := range []struct {
		name   string
		server netip.Addr
	}{{"ipv4", l.ServerAddr4}, {"ipv6", l.ServerAddr6}} {
		dst := netip.AddrPortFrom(fam.server, 7000)
		stopU, err := UDPEcho(ctx, l.Server, dst)
		if err != nil {
			t.Fatal(err)
		}
		defer stopU()
		stopT, err := TCPEcho(ctx, l.Server, dst)
		if err != nil {
			t.Fatal(err)
		}
		defer stopT()
		msg := []byte("kernel defaults " + fam.name)
		if got, err := UDPRoundTrip(ctx, l.Client, netip.AddrPort{}, dst, msg); err != nil || !bytes.Equal(got, msg) {
			t.Errorf("%s UDP round trip: %q, %v", fam.name, got, err)
		}
		big := bytes.Repeat([]byte(fam.name), 50_000) // GSO-sized writes both ways
		if got, err := TCPRoundTrip(ctx, l.Client, netip.AddrPort{}, dst, big); err != nil || !bytes.Equal(got, big) {
			t.Errorf("%s TCP round trip: %d of %d bytes back, %v", fam.name, len(got), len(big), err)
		}
	}

	before, err := ReadChecksumErrors(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	const n = 100 << 20
	res, err := TCPBulk(ctx, l.Client, l.Server, netip.AddrPortFrom(l.ServerAddr4, 7100), n)
	if err != nil {
		t.Fatal(err)
	}
	after, err := ReadChecksumErrors(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	if d := after.Sub(before); d.Total() != 0 {
		t.Errorf("receiver counted checksum errors during the transfer: %s", d)
	}
	t.Logf("100 MB through kernel forwarding on kernel-default veths: %v, %.2f Gbit/s", res.Elapsed, res.Gbps)
}

// TestIntegrationIPerf3 checks the iperf3 runner against the lab: a short
// test reports a throughput, and the bytes it claims crossed the
// firewall's kernel forwarding (its server-side link counted them).
func TestIntegrationIPerf3(t *testing.T) {
	testutil.Command(t, "iperf3", "iperf3")
	l := NewT(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx0, err := linkTxBytes(l.Firewall, l.FwServerIf)
	if err != nil {
		t.Fatal(err)
	}
	res, err := IPerf3(ctx, l.Client, l.Server, l.ServerAddr4, &IPerf3Options{Streams: 2, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tx1, err := linkTxBytes(l.Firewall, l.FwServerIf)
	if err != nil {
		t.Fatal(err)
	}
	if res.Gbps <= 0 || res.Bytes == 0 {
		t.Fatalf("iperf3 result %+v", res)
	}
	if fwd := tx1 - tx0; fwd < res.Bytes {
		t.Errorf("the firewall forwarded %d bytes to the server, iperf3 says %d arrived", fwd, res.Bytes)
	}
	t.Logf("iperf3, 2 streams, 1 s: %.2f Gbit/s, %d bytes, %d retransmits", res.Gbps, res.Bytes, res.Retransmits)
}

// linkTxBytes is the link's transmitted bytes.
func linkTxBytes(ns *NS, iface string) (uint64, error) {
	var n uint64
	err := withNetlink(ns, func(h *netlink.Handle) error {
		link, err := h.LinkByName(iface)
		if err != nil {
			return err
		}
		n = link.Attrs().Statistics.TxBytes
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read %s in %s: %w", iface, ns, err)
	}
	return n, nil
}
