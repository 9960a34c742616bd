//go:build linux

package neigh

import (
	"net/netip"
	"testing"
)

// benchTable is a full-size table filled the way the kernel feed fills it,
// without a kernel: Lookup only reads the core.
func benchTable(tb testing.TB, n int) (*Table, []netip.Addr) {
	tb.Helper()
	c, err := newCore(4096, DefaultShards)
	if err != nil {
		tb.Fatal(err)
	}
	addrs := make([]netip.Addr, n)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		if i%2 == 1 {
			addrs[i] = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)})
		}
		k, _ := makeKey(2, addrs[i])
		if !c.set(k, packValue([6]byte{2, 0, 0, 0, byte(i >> 8), byte(i)}, 0x80)) {
			tb.Fatalf("insert %d refused", i)
		}
	}
	return &Table{c: c}, addrs
}

func TestLookupAllocs(t *testing.T) {
	tab, addrs := benchTable(t, 1000)
	miss := netip.MustParseAddr("192.0.2.99")
	allocs := testing.AllocsPerRun(1000, func() {
		for _, a := range addrs[:16] {
			if _, ok := tab.Lookup(2, a); !ok {
				t.Fatal("miss")
			}
		}
		tab.Lookup(2, miss)
	})
	if allocs != 0 {
		t.Errorf("Lookup allocates %.1f times per run, want 0", allocs)
	}
}

func BenchmarkLookup(b *testing.B) {
	for _, bc := range []struct {
		name string
		fill int
		hit  bool
	}{{"hit/fill=75%", 3072, true}, {"miss/fill=75%", 3072, false}} {
		b.Run(bc.name, func(b *testing.B) {
			tab, addrs := benchTable(b, bc.fill)
			ifindex := 2
			if !bc.hit {
				ifindex = 3
			}
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				_, ok := tab.Lookup(ifindex, addrs[i])
				if ok != bc.hit {
					b.Fatal("unexpected result")
				}
				if i++; i == len(addrs) {
					i = 0
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/lookup")
		})
	}
	b.Run("hit/parallel", func(b *testing.B) {
		tab, addrs := benchTable(b, 3072)
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, ok := tab.Lookup(2, addrs[i]); !ok {
					b.Error("miss")
					return
				}
				if i++; i == len(addrs) {
					i = 0
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mlookups/s")
	})
}
