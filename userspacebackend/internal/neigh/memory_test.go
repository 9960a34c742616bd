package neigh

import (
	"runtime"
	"testing"
)

// TestBytesMatchesNew: the gate's estimate is what a table allocates,
// averaged over many so that other goroutines' allocations drown.
func TestBytesMatchesNew(t *testing.T) {
	for _, n := range []uint32{1, 4096, 100_000} {
		const k = 32
		keep := make([]*core, k)
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		for i := range keep {
			c, err := newCore(n, DefaultShards)
			if err != nil {
				t.Fatal(err)
			}
			keep[i] = c
		}
		runtime.ReadMemStats(&b)
		runtime.KeepAlive(keep)
		got, est := (b.TotalAlloc-a.TotalAlloc)/k, Bytes(n)
		if d := int64(got) - int64(est); d < -int64(est)/100-256 || d > int64(est)/100+256 {
			t.Errorf("table of %d allocated %d B, Bytes says %d", n, got, est)
		}
	}
}
