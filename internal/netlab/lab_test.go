//go:build linux

package netlab

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func TestIntegrationRoundTrips(t *testing.T) {
	l := NewT(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for _, tt := range []struct {
		name   string
		server netip.Addr
	}{
		{"ipv4", l.ServerAddr4},
		{"ipv6", l.ServerAddr6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dst := netip.AddrPortFrom(tt.server, 7000)
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

			// Distinct fixed source ports: distinct flows through the firewall.
			for i := range 3 {
				src := netip.AddrPortFrom(netip.Addr{}, uint16(41000+i))
				msg := []byte(fmt.Sprintf("udp %s flow %d", tt.name, i))
				got, err := UDPRoundTrip(ctx, l.Client, src, dst, msg)
				if err != nil {
					t.Fatalf("UDP round trip %d: %v", i, err)
				}
				if !bytes.Equal(got, msg) {
					t.Errorf("UDP echo = %q, want %q", got, msg)
				}
				msg = bytes.Repeat([]byte{byte(i)}, 100_000) // many segments, both ways
				got, err = TCPRoundTrip(ctx, l.Client, src, dst, msg)
				if err != nil {
					t.Fatalf("TCP round trip %d: %v", i, err)
				}
				if !bytes.Equal(got, msg) {
					t.Errorf("TCP echo: got %d bytes, want %d identical", len(got), len(msg))
				}
			}
		})
	}

	// The traffic really crossed the firewall: its kernel forwarded it.
	var fwd uint64
	err := withNetlink(l.Firewall, func(h *netlink.Handle) error {
		link, err := h.LinkByName(l.FwServerIf)
		if err != nil {
			return err
		}
		fwd = link.Attrs().Statistics.TxPackets
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fwd < 12 {
		t.Errorf("firewall transmitted %d packets towards the server, want >= 12", fwd)
	}
}

func TestIntegrationRoundTripHonoursContext(t *testing.T) {
	l := NewT(t, nil)
	// Nobody listens on the server: the UDP round trip must give up when
	// the context ends, not hang.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := UDPRoundTrip(ctx, l.Client, netip.AddrPort{}, netip.AddrPortFrom(l.ServerAddr4, 9), []byte("x"))
	if err == nil {
		t.Fatal("UDP round trip to a closed port succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("round trip took %v after a 200ms context", d)
	}
}

func TestIntegrationLabLayout(t *testing.T) {
	l := NewT(t, &Options{MirrorSink: true})
	names := []string{l.ClientIf, l.ServerIf, l.SinkIf, l.FwClientIf, l.FwServerIf, l.FwSinkIf}
	seen := map[string]bool{}
	for _, n := range names {
		if n == "" || len(n) > 15 || seen[n] || !strings.Contains(n, l.Suffix) {
			t.Errorf("bad or duplicate interface name %q", n)
		}
		seen[n] = true
	}
	for _, ns := range []*NS{l.Client, l.Firewall, l.Server, l.Sink} {
		if !nsExists(ns) {
			t.Errorf("namespace %s not mounted at %s", ns, ns.Path)
		}
	}
	for _, m := range [][]byte{l.ClientMAC, l.FwClientMAC, l.ServerMAC, l.FwServerMAC, l.SinkMAC, l.FwSinkMAC} {
		if len(m) != 6 {
			t.Errorf("MAC %v not 6 bytes", m)
		}
	}
	if err := l.ResolveNeighbors(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The firewall knows the sink's MAC without any traffic.
	err := withNetlink(l.Firewall, func(h *netlink.Handle) error {
		neighs, err := h.NeighList(l.FwSinkIndex, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		found := 0
		for _, n := range neighs {
			if n.State == netlink.NUD_PERMANENT && bytes.Equal(n.HardwareAddr, l.SinkMAC) {
				found++
			}
		}
		if found != 2 {
			return fmt.Errorf("found %d permanent sink neighbors, want 2 (v4+v6): %v", found, neighs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The sink answers on both families right away (no DAD delay, which
	// would hold IPv6 back for a second or more). A datagram can still be
	// lost now and then on a loaded machine (seen once in many runs), so a
	// few short attempts are allowed, well inside a DAD delay.
	for _, dst := range []netip.Addr{l.SinkAddr4, l.SinkAddr6} {
		stop, err := UDPEcho(context.Background(), l.Sink, netip.AddrPortFrom(dst, 7))
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			_, err = UDPRoundTrip(ctx, l.Firewall, netip.AddrPort{}, netip.AddrPortFrom(dst, 7), []byte("hi"))
			cancel()
			if err == nil {
				break
			}
			t.Logf("firewall -> sink %s: %v (retrying)", dst, err)
		}
		stop()
		if err != nil {
			t.Errorf("firewall -> sink %s: %v", dst, err)
		}
	}
}

// TestIntegrationCloseLeavesNothing checks Close removes namespaces and
// links and leaves the test's own namespace alone.
func TestIntegrationCloseLeavesNothing(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	l := NewT(t, &Options{MirrorSink: true})
	nss := []*NS{l.Client, l.Firewall, l.Server, l.Sink}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	var nilLab *Lab
	if err := nilLab.Close(); err != nil {
		t.Errorf("nil Close: %v", err)
	}

	for _, ns := range nss {
		if _, err := os.Stat(ns.Path); !os.IsNotExist(err) {
			t.Errorf("namespace %s still at %s (stat: %v)", ns, ns.Path, err)
		}
	}
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), l.Suffix) {
			t.Errorf("namespace %s left in %s", e.Name(), netnsDir)
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, link := range links {
		if strings.Contains(link.Attrs().Name, l.Suffix) {
			t.Errorf("link %s left in the root namespace", link.Attrs().Name)
		}
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !before.Equal(after) {
		t.Errorf("test thread's namespace changed from %v to %v", before, after)
	}
	if err := l.ResolveNeighbors(context.Background()); err == nil {
		t.Error("ResolveNeighbors on a closed lab succeeded")
	}
}

func TestIntegrationNSDoRestoresNamespace(t *testing.T) {
	l := NewT(t, nil)
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := l.Server.handle()
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	// Many concurrent Do calls: each sees the namespace, none leaks it.
	errc := make(chan error, 16)
	for range 16 {
		go func() {
			errc <- l.Server.Do(func() error {
				cur, err := netns.Get()
				if err != nil {
					return err
				}
				defer cur.Close()
				if !cur.Equal(target) {
					return fmt.Errorf("inside Do: namespace %v, want %v", cur, target)
				}
				if _, err := netlink.LinkByName(l.ServerIf); err != nil {
					return fmt.Errorf("server interface not visible inside Do: %w", err)
				}
				return nil
			})
		}()
	}
	for range 16 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	// No thread of the process that the runtime can hand out stayed in the
	// server namespace: check from many goroutines.
	for range 32 {
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			cur, err := netns.Get()
			if err != nil {
				errc <- err
				return
			}
			defer cur.Close()
			if cur.Equal(target) {
				errc <- fmt.Errorf("a thread outside Do is in %s", l.Server)
				return
			}
			errc <- nil
		}()
	}
	for range 32 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	var nilNS *NS
	if err := nilNS.Do(func() error { return nil }); err == nil {
		t.Error("Do on a nil NS succeeded")
	}
}
