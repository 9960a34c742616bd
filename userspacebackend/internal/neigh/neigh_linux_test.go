//go:build linux

package neigh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/internal/netlab"
)

// waitFor polls cond until it holds or the deadline passes.
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

func mac6(hw net.HardwareAddr) [6]byte {
	var m [6]byte
	copy(m[:], hw)
	return m
}

// nsHandle opens a netlink handle in ns for the test to change the
// kernel's neighbour table.
func nsHandle(t *testing.T, ns *netlab.NS) *netlink.Handle {
	t.Helper()
	nsh, err := netns.GetFromPath(ns.Path)
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

func newTable(t *testing.T, l *netlab.Lab, opts *Options) *Table {
	t.Helper()
	if opts == nil {
		opts = &Options{}
	}
	opts.NetNSPath = l.Firewall.Path
	tab, err := New(context.Background(), opts)
	if err != nil {
		t.Fatalf("new neighbour table: %v", err)
	}
	t.Cleanup(func() { tab.Close() })
	return tab
}

type entry struct {
	Ifindex int
	Addr    netip.Addr
	MAC     [6]byte
	OK      bool
}

func lookupAll(tab *Table, want []entry) []entry {
	got := make([]entry, len(want))
	for i, w := range want {
		mac, ok := tab.Lookup(w.Ifindex, w.Addr)
		got[i] = entry{w.Ifindex, w.Addr, mac, ok}
	}
	return got
}

func labEntries(l *netlab.Lab) []entry {
	return []entry{
		{l.FwClientIndex, l.ClientAddr4, mac6(l.ClientMAC), true},
		{l.FwClientIndex, l.ClientAddr6, mac6(l.ClientMAC), true},
		{l.FwServerIndex, l.ServerAddr4, mac6(l.ServerMAC), true},
		{l.FwServerIndex, l.ServerAddr6, mac6(l.ServerMAC), true},
	}
}

func TestIntegrationListExisting(t *testing.T) {
	l := netlab.NewT(t, nil)
	if err := l.ResolveNeighbors(context.Background()); err != nil {
		t.Fatal(err)
	}
	tab := newTable(t, l, nil)
	want := labEntries(l)
	// Present when New returns: no waiting.
	if diff := cmp.Diff(want, lookupAll(tab, want), addrCmp); diff != "" {
		t.Errorf("lookups after New (-want +got):\n%s", diff)
	}
	// The same address on the wrong interface is a different neighbour.
	if _, ok := tab.Lookup(l.FwServerIndex, l.ClientAddr4); ok {
		t.Error("client address found on the server-side interface")
	}
	if tab.Used() < len(want) || tab.Capacity() != 4096 {
		t.Errorf("Used %d (want >= %d), Capacity %d (want 4096)", tab.Used(), len(want), tab.Capacity())
	}
	sum := 0
	for i := 0; i < tab.Shards(); i++ {
		sum += tab.ShardUsed(i)
	}
	if sum != tab.Used() {
		t.Errorf("shard counts sum to %d, Used %d", sum, tab.Used())
	}
}

func TestIntegrationSubscription(t *testing.T) {
	l := netlab.NewT(t, nil)
	tab := newTable(t, l, nil)
	h := nsHandle(t, l.Firewall)

	addr := l.ServerNet4.Addr().Next().Next().Next() // .3, unused in the lab
	addr6 := l.ServerNet6.Addr().Next().Next().Next()
	mac1 := net.HardwareAddr{0x02, 0, 0, 0, 0xaa, 0x01}
	mac2 := net.HardwareAddr{0x02, 0, 0, 0, 0xaa, 0x02}
	set := func(a netip.Addr, hw net.HardwareAddr, state int) {
		t.Helper()
		fam := netlink.FAMILY_V4
		if a.Is6() {
			fam = netlink.FAMILY_V6
		}
		if err := h.NeighSet(&netlink.Neigh{LinkIndex: l.FwServerIndex, Family: fam, State: state, IP: a.AsSlice(), HardwareAddr: hw}); err != nil {
			t.Fatalf("set neighbour %s: %v", a, err)
		}
	}
	is := func(a netip.Addr, want [6]byte, wantOK bool) func() bool {
		return func() bool {
			got, ok := tab.Lookup(l.FwServerIndex, a)
			return ok == wantOK && (!ok || got == want)
		}
	}

	set(addr, mac1, netlink.NUD_PERMANENT)
	set(addr6, mac1, netlink.NUD_REACHABLE)
	waitFor(t, "added IPv4 neighbour", 5*time.Second, is(addr, mac6(mac1), true))
	waitFor(t, "added IPv6 neighbour", 5*time.Second, is(addr6, mac6(mac1), true))

	set(addr, mac2, netlink.NUD_PERMANENT)
	waitFor(t, "changed MAC", 5*time.Second, is(addr, mac6(mac2), true))

	set(addr6, mac1, netlink.NUD_STALE)
	time.Sleep(50 * time.Millisecond)
	if !is(addr6, mac6(mac1), true)() {
		t.Error("STALE entry not usable")
	}

	// INCOMPLETE, FAILED and NOARP are not resolved neighbours: the entry
	// leaves the table.
	set(addr6, nil, netlink.NUD_INCOMPLETE)
	waitFor(t, "INCOMPLETE entry removed", 5*time.Second, is(addr6, [6]byte{}, false))
	set(addr6, mac2, netlink.NUD_REACHABLE)
	waitFor(t, "entry usable again", 5*time.Second, is(addr6, mac6(mac2), true))
	set(addr, nil, netlink.NUD_FAILED)
	waitFor(t, "FAILED entry removed", 5*time.Second, is(addr, [6]byte{}, false))
	set(addr, mac2, netlink.NUD_PERMANENT)
	waitFor(t, "entry usable again", 5*time.Second, is(addr, mac6(mac2), true))
	set(addr6, mac1, netlink.NUD_NOARP)
	waitFor(t, "NOARP entry removed", 5*time.Second, is(addr6, [6]byte{}, false))

	if err := h.NeighDel(&netlink.Neigh{LinkIndex: l.FwServerIndex, Family: netlink.FAMILY_V4, IP: addr.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "deleted neighbour", 5*time.Second, is(addr, [6]byte{}, false))

	// A neighbour that stops answering goes INCOMPLETE then FAILED and must
	// not stay usable: resolve an address nobody owns.
	ghost := l.ServerNet4.Addr().Next().Next().Next().Next()
	if err := tab.Resolve(l.FwServerIndex, ghost); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, ok := tab.Lookup(l.FwServerIndex, ghost); ok {
		t.Error("unresolved neighbour is usable")
	}
	if tab.Updates() == 0 {
		t.Error("no subscription updates counted")
	}
}

func TestIntegrationResolve(t *testing.T) {
	l := netlab.NewT(t, nil)
	tab := newTable(t, l, nil)
	// No ResolveNeighbors: the kernel has not resolved anyone yet.
	for _, a := range []netip.Addr{l.ClientAddr4, l.ClientAddr6} {
		if _, ok := tab.Lookup(l.FwClientIndex, a); ok {
			t.Fatalf("%s resolved before anyone asked", a)
		}
	}
	if err := tab.Resolve(l.FwClientIndex, l.ClientAddr4); err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	if !tab.RequestResolve(l.FwClientIndex, l.ClientAddr6) {
		t.Fatal("RequestResolve refused on an empty queue")
	}
	for _, a := range []netip.Addr{l.ClientAddr4, l.ClientAddr6} {
		waitFor(t, "kernel resolution of "+a.String(), 10*time.Second, func() bool {
			m, ok := tab.Lookup(l.FwClientIndex, a)
			return ok && m == mac6(l.ClientMAC)
		})
	}
	if err := tab.LastError(); err != nil {
		t.Errorf("LastError = %v", err)
	}
}

func TestIntegrationCapacityRefused(t *testing.T) {
	l := netlab.NewT(t, nil)
	if err := l.ResolveNeighbors(context.Background()); err != nil {
		t.Fatal(err)
	}
	tab := newTable(t, l, &Options{Capacity: 2, Shards: 1})
	if tab.Used() != 2 || tab.Capacity() != 2 {
		t.Fatalf("Used %d Capacity %d, want 2 and 2", tab.Used(), tab.Capacity())
	}
	if tab.Refused() < 2 {
		t.Fatalf("Refused = %d, want >= 2 (4 lab neighbours, room for 2)", tab.Refused())
	}
	// The two stored entries stay: nothing is evicted by a newcomer.
	var stored []entry
	for _, e := range labEntries(l) {
		if m, ok := tab.Lookup(e.Ifindex, e.Addr); ok {
			if m != e.MAC {
				t.Errorf("%s: MAC %x, want %x", e.Addr, m, e.MAC)
			}
			stored = append(stored, e)
		}
	}
	if len(stored) != 2 {
		t.Fatalf("%d lab neighbours stored, want 2", len(stored))
	}
	before := tab.Refused()
	h := nsHandle(t, l.Firewall)
	extra := l.ServerNet4.Addr().Next().Next().Next()
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: l.FwServerIndex, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: extra.AsSlice(), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 3}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "refusal counted", 5*time.Second, func() bool { return tab.Refused() > before })
	if diff := cmp.Diff(stored, lookupAll(tab, stored), addrCmp); diff != "" {
		t.Errorf("stored entries changed (-want +got):\n%s", diff)
	}
	// Deleting a stored neighbour makes room for the next update.
	if err := h.NeighDel(&netlink.Neigh{LinkIndex: stored[0].Ifindex, IP: stored[0].Addr.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "room after delete", 5*time.Second, func() bool { return tab.Used() == 1 })
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: l.FwServerIndex, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: extra.AsSlice(), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 4}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "newcomer stored", 5*time.Second, func() bool {
		m, ok := tab.Lookup(l.FwServerIndex, extra)
		return ok && m == [6]byte{2, 0, 0, 0, 0, 4}
	})
}

// TestIntegrationLookupDuringUpdates races datapath lookups of the lab's
// neighbours against a stream of kernel updates to other neighbours in
// the same table (run with -race): the untouched entries must never miss.
func TestIntegrationLookupDuringUpdates(t *testing.T) {
	l := netlab.NewT(t, nil)
	if err := l.ResolveNeighbors(context.Background()); err != nil {
		t.Fatal(err)
	}
	tab := newTable(t, l, &Options{Capacity: 512, Shards: 2})
	h := nsHandle(t, l.Firewall)
	want := labEntries(l)

	var stop atomic.Bool
	var misses, lookups atomic.Int64
	var wg sync.WaitGroup
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				for _, e := range want {
					m, ok := tab.Lookup(e.Ifindex, e.Addr)
					if !ok || m != e.MAC {
						misses.Add(1)
					}
					lookups.Add(1)
				}
			}
		}()
	}
	base := tab.Updates()
	prefix := l.ServerNet6.Addr().As16()
	final := map[netip.Addr][6]byte{}
	for i := 0; i < 1500; i++ {
		a := prefix
		a[13], a[14], a[15] = 0x20, byte((1+i%300)>>8), byte(1+i%300)
		addr := netip.AddrFrom16(a)
		hw := net.HardwareAddr{2, 0, 0, 1, byte(i >> 8), byte(i)}
		n := &netlink.Neigh{LinkIndex: l.FwServerIndex, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT,
			IP: addr.AsSlice(), HardwareAddr: hw}
		var err error
		if i%4 == 3 {
			err = h.NeighDel(n)
			delete(final, addr)
		} else {
			err = h.NeighSet(n)
			final[addr] = mac6(hw)
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			t.Fatalf("update %d: %v", i, err)
		}
	}
	mismatch := func() string {
		for i := 0; i < 300; i++ {
			a := prefix
			a[13], a[14], a[15] = 0x20, byte((1+i)>>8), byte(1+i)
			addr := netip.AddrFrom16(a)
			want, wantOK := final[addr]
			got, ok := tab.Lookup(l.FwServerIndex, addr)
			if ok != wantOK || got != want {
				return fmt.Sprintf("%s: got %x %v, want %x %v", addr, got, ok, want, wantOK)
			}
		}
		return ""
	}
	deadline := time.Now().Add(10 * time.Second)
	for m := mismatch(); m != ""; m = mismatch() {
		if time.Now().After(deadline) {
			kernel, err := h.NeighList(l.FwServerIndex, netlink.FAMILY_V6)
			t.Fatalf("table never matched the kernel: %s (resyncs %d, last error %v; kernel has %d entries on the link, list error %v)",
				m, tab.Resyncs(), tab.LastError(), len(kernel), err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if misses.Load() != 0 {
		t.Errorf("%d of %d lookups of untouched neighbours missed", misses.Load(), lookups.Load())
	}
	t.Logf("%d lookups during %d updates, %d resyncs", lookups.Load(), tab.Updates()-base, tab.Resyncs())
}

// TestIntegrationOverflowResync stalls the consumer so the kernel overflows
// the subscription socket (ENOBUFS), then checks that the table resyncs
// and ends up equal to the kernel's table, including deletions whose
// notifications were lost.
func TestIntegrationOverflowResync(t *testing.T) {
	l := netlab.NewT(t, nil)
	h := nsHandle(t, l.Firewall)
	prefix := l.ServerNet6.Addr().As16()
	addrAt := func(i int) netip.Addr {
		a := prefix
		a[13], a[14], a[15] = 0x10, byte(i>>8), byte(i)
		return netip.AddrFrom16(a)
	}
	neigh := func(i int) *netlink.Neigh {
		return &netlink.Neigh{LinkIndex: l.FwServerIndex, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT,
			IP: addrAt(i).AsSlice(), HardwareAddr: net.HardwareAddr{2, 0, 0, 2, byte(i >> 8), byte(i)}}
	}
	// Entries that exist at New and are deleted while the consumer stalls.
	for i := 0; i < 50; i++ {
		if err := h.NeighSet(neigh(i)); err != nil {
			t.Fatal(err)
		}
	}
	tab := newTable(t, l, &Options{Capacity: 4096, ReceiveBufferSize: 4096})
	if tab.Used() < 50 {
		t.Fatalf("Used %d after New, want >= 50", tab.Used())
	}

	release := make(chan struct{})
	stalled := make(chan struct{})
	var once sync.Once
	tab.setBeforeApply(func() {
		once.Do(func() { close(stalled) })
		<-release
	})
	// The first new neighbour stalls the consumer; the rest overflow the
	// socket, and the deletions after them are lost with it.
	for i := 50; i < 2050; i++ {
		if err := h.NeighSet(neigh(i)); err != nil {
			t.Fatal(err)
		}
	}
	<-stalled
	for i := 0; i < 50; i++ {
		if err := h.NeighDel(neigh(i)); err != nil {
			t.Fatal(err)
		}
	}
	tab.setBeforeApply(nil)
	close(release)

	waitFor(t, "a resync", 10*time.Second, func() bool { return tab.Resyncs() >= 1 })
	waitFor(t, "table equal to the kernel's", 10*time.Second, func() bool {
		for i := 0; i < 2050; i++ {
			_, ok := tab.Lookup(l.FwServerIndex, addrAt(i))
			if ok != (i >= 50) {
				return false
			}
		}
		return true
	})
	t.Logf("resyncs %d, last error %v", tab.Resyncs(), tab.LastError())
}

func TestIntegrationCloseStopsGoroutines(t *testing.T) {
	l := netlab.NewT(t, nil)
	if err := l.ResolveNeighbors(context.Background()); err != nil {
		t.Fatal(err)
	}
	settle := func() int {
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
		return runtime.NumGoroutine()
	}
	before := settle()
	for i := 0; i < 5; i++ {
		tab, err := New(context.Background(), &Options{NetNSPath: l.Firewall.Path})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := tab.Lookup(l.FwClientIndex, l.ClientAddr4); !ok {
			t.Fatal("client neighbour missing")
		}
		tab.RequestResolve(l.FwClientIndex, l.ClientAddr4)
		if err := tab.Close(); err != nil {
			t.Fatal(err)
		}
		if err := tab.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if err := tab.Resolve(l.FwClientIndex, l.ClientAddr4); !errors.Is(err, ErrClosed) {
			t.Fatalf("Resolve after Close = %v, want ErrClosed", err)
		}
	}
	waitFor(t, "goroutines to exit", 5*time.Second, func() bool { return settle() <= before })
	var nilTable *Table
	if err := nilTable.Close(); err != nil {
		t.Errorf("Close on nil: %v", err)
	}
}

func TestIntegrationNewHonoursContext(t *testing.T) {
	l := netlab.NewT(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	before := runtime.NumGoroutine()
	if _, err := New(ctx, &Options{NetNSPath: l.Firewall.Path}); !errors.Is(err, context.Canceled) {
		t.Fatalf("New with a cancelled context = %v, want context.Canceled", err)
	}
	if _, err := New(context.Background(), &Options{NetNSPath: "/nonexistent/netns"}); err == nil {
		t.Fatal("New with a missing namespace succeeded")
	}
	waitFor(t, "goroutines to exit", 5*time.Second, func() bool { return runtime.NumGoroutine() <= before })
}

var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
