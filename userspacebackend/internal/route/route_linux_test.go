//go:build linux

package route

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/internal/netlab"
)

var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func newResolver(t *testing.T, l *netlab.Lab, opts *Options) *Resolver {
	t.Helper()
	if opts == nil {
		opts = &Options{}
	}
	opts.NetNSPath = l.Firewall.Path
	r, err := New(context.Background(), opts)
	if err != nil {
		t.Fatalf("new resolver: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func fwHandle(t *testing.T, l *netlab.Lab) *netlink.Handle {
	t.Helper()
	nsh, err := netns.GetFromPath(l.Firewall.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestIntegrationLookup(t *testing.T) {
	l := netlab.NewT(t, nil)
	r := newResolver(t, l, nil)
	for _, tc := range []struct {
		name string
		dst  netip.Addr
		want Result
	}{
		{"server v4", l.ServerAddr4, Result{Dst: l.ServerAddr4, Ifindex: l.FwServerIndex, Src: l.FwServerAddr4}},
		{"server v6", l.ServerAddr6, Result{Dst: l.ServerAddr6, Ifindex: l.FwServerIndex, Src: l.FwServerAddr6}},
		{"client v4", l.ClientAddr4, Result{Dst: l.ClientAddr4, Ifindex: l.FwClientIndex, Src: l.FwClientAddr4}},
		{"client v6", l.ClientAddr6, Result{Dst: l.ClientAddr6, Ifindex: l.FwClientIndex, Src: l.FwClientAddr6}},
		{"v4-mapped is IPv4", netip.AddrFrom16(l.ServerAddr4.As16()), Result{Dst: l.ServerAddr4, Ifindex: l.FwServerIndex, Src: l.FwServerAddr4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 2; i++ { // kernel, then cache
				got, err := r.Lookup(tc.dst)
				if err != nil {
					t.Fatalf("Lookup(%s) #%d: %v", tc.dst, i, err)
				}
				// The kernel may report a learned MTU; it is not part of
				// the lab's configuration.
				got.MTU = 0
				if diff := cmp.Diff(tc.want, got, addrCmp); diff != "" {
					t.Errorf("Lookup(%s) #%d (-want +got):\n%s", tc.dst, i, diff)
				}
				if got.NextHop() != tc.want.Dst {
					t.Errorf("NextHop = %s, want %s (on-link)", got.NextHop(), tc.want.Dst)
				}
			}
		})
	}
	if r.Hits() == 0 || r.Misses() == 0 {
		t.Errorf("hits %d misses %d, want both > 0", r.Hits(), r.Misses())
	}
	local, err := r.Lookup(l.FwServerAddr4)
	if err != nil || !local.Local {
		t.Errorf("Lookup(own address) = %+v, %v; want Local", local, err)
	}
}

func TestIntegrationNoRoute(t *testing.T) {
	l := netlab.NewT(t, nil)
	h := fwHandle(t, l)
	r := newResolver(t, l, nil)
	mustPrefix := func(s string) *net.IPNet {
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, rt := range []*netlink.Route{
		{Dst: mustPrefix("198.18.0.0/24"), Type: unix.RTN_BLACKHOLE},
		{Dst: mustPrefix("198.18.1.0/24"), Type: unix.RTN_UNREACHABLE},
		{Dst: mustPrefix("198.18.2.0/24"), Type: unix.RTN_PROHIBIT},
	} {
		if err := h.RouteAdd(rt); err != nil {
			t.Fatalf("add route %v: %v", rt.Dst, err)
		}
	}
	for _, tc := range []struct {
		dst   string
		errno unix.Errno
	}{
		{"198.51.100.1", unix.ENETUNREACH}, // the firewall has no default route
		{"2001:db8:ffff::1", unix.ENETUNREACH},
		{"198.18.0.1", unix.EINVAL},
		{"198.18.1.1", unix.EHOSTUNREACH},
		{"198.18.2.1", unix.EACCES},
	} {
		_, err := r.Lookup(netip.MustParseAddr(tc.dst))
		if !errors.Is(err, ErrNoRoute) || !errors.Is(err, tc.errno) {
			t.Errorf("Lookup(%s) = %v, want ErrNoRoute wrapping %v", tc.dst, err, tc.errno)
		}
	}
	if _, err := r.Lookup(netip.Addr{}); err == nil || errors.Is(err, ErrNoRoute) {
		t.Errorf("Lookup(zero Addr) = %v, want a non-ErrNoRoute error", err)
	}
}

// TestIntegrationInvalidation uses a TTL of an hour, so only the route
// subscription can make the cache notice a route appearing, changing and
// disappearing.
func TestIntegrationInvalidation(t *testing.T) {
	l := netlab.NewT(t, nil)
	h := fwHandle(t, l)
	r := newResolver(t, l, &Options{TTL: time.Hour})
	dst := netip.MustParseAddr("203.0.113.5")
	if _, err := r.Lookup(dst); !errors.Is(err, ErrNoRoute) {
		t.Fatalf("Lookup before the route exists = %v, want ErrNoRoute", err)
	}
	_, pfx, _ := net.ParseCIDR("203.0.113.0/24")
	rt := &netlink.Route{Dst: pfx, Gw: l.ServerAddr4.AsSlice(), LinkIndex: l.FwServerIndex}
	if err := h.RouteAdd(rt); err != nil {
		t.Fatal(err)
	}
	want := Result{Dst: dst, Ifindex: l.FwServerIndex, Gateway: l.ServerAddr4, Src: l.FwServerAddr4}
	waitFor(t, "the new route", 2*time.Second, func() bool {
		got, err := r.Lookup(dst)
		got.MTU = 0
		return err == nil && cmp.Equal(want, got, addrCmp)
	})
	if got, _ := r.Lookup(dst); got.NextHop() != l.ServerAddr4 {
		t.Errorf("NextHop = %s, want the gateway %s", got.NextHop(), l.ServerAddr4)
	}
	rt.Gw = l.ClientAddr4.AsSlice()
	rt.LinkIndex = l.FwClientIndex
	if err := h.RouteReplace(rt); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the changed route", 2*time.Second, func() bool {
		got, err := r.Lookup(dst)
		return err == nil && got.Ifindex == l.FwClientIndex && got.Gateway == l.ClientAddr4
	})
	if err := h.RouteDel(rt); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the route to go", 2*time.Second, func() bool {
		_, err := r.Lookup(dst)
		return errors.Is(err, ErrNoRoute)
	})
	if r.Invalidations() < 3 {
		t.Errorf("Invalidations = %d, want >= 3", r.Invalidations())
	}
}

func TestIntegrationTTLAndNoCache(t *testing.T) {
	l := netlab.NewT(t, nil)
	r := newResolver(t, l, &Options{TTL: 50 * time.Millisecond})
	if _, err := r.Lookup(l.ServerAddr4); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	m := r.Misses()
	if _, err := r.Lookup(l.ServerAddr4); err != nil {
		t.Fatal(err)
	}
	if r.Misses() != m+1 {
		t.Errorf("expired entry answered from cache (misses %d -> %d)", m, r.Misses())
	}

	nc := newResolver(t, l, &Options{CacheSize: -1})
	for i := 0; i < 3; i++ {
		if _, err := nc.Lookup(l.ServerAddr6); err != nil {
			t.Fatal(err)
		}
	}
	if nc.Hits() != 0 || nc.Misses() != 3 {
		t.Errorf("uncached resolver: hits %d misses %d, want 0 and 3", nc.Hits(), nc.Misses())
	}

	small := newResolver(t, l, &Options{CacheSize: 2})
	for _, a := range []netip.Addr{l.ServerAddr4, l.ServerAddr6, l.ClientAddr4, l.ClientAddr6, l.ServerAddr4} {
		if _, err := small.Lookup(a); err != nil {
			t.Fatal(err)
		}
	}
	small.mu.RLock()
	n := len(small.cache)
	small.mu.RUnlock()
	if n > 2 {
		t.Errorf("cache holds %d entries, bound 2", n)
	}
}

func TestIntegrationCloseStopsGoroutines(t *testing.T) {
	l := netlab.NewT(t, nil)
	settle := func() int {
		time.Sleep(20 * time.Millisecond)
		return runtime.NumGoroutine()
	}
	before := settle()
	for i := 0; i < 5; i++ {
		r, err := New(context.Background(), &Options{NetNSPath: l.Firewall.Path})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Lookup(l.ServerAddr4); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Lookup(l.ServerAddr4); !errors.Is(err, ErrClosed) {
			t.Fatalf("Lookup after Close = %v, want ErrClosed", err)
		}
	}
	waitFor(t, "goroutines to exit", 5*time.Second, func() bool { return settle() <= before })
	var nilR *Resolver
	if err := nilR.Close(); err != nil {
		t.Error(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := New(ctx, &Options{NetNSPath: l.Firewall.Path}); !errors.Is(err, context.Canceled) {
		t.Errorf("New with cancelled ctx = %v, want context.Canceled", err)
	}
}

func BenchmarkLookup(b *testing.B) {
	l := netlab.NewT(b, nil)
	for _, bc := range []struct {
		name string
		opts Options
	}{{"cached", Options{TTL: time.Hour}}, {"kernel", Options{CacheSize: -1}}} {
		b.Run(bc.name, func(b *testing.B) {
			opts := bc.opts
			opts.NetNSPath = l.Firewall.Path
			r, err := New(context.Background(), &opts)
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Lookup(l.ServerAddr4); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/lookup")
		})
	}
}
