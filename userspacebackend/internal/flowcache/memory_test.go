package flowcache

import (
	"runtime"
	"testing"
)

// TestBytesMatchesNew: the gate's estimate is what New allocates. Many
// caches are made and averaged, so allocations of other goroutines (the
// runtime, parallel tests) drown.
func TestBytesMatchesNew(t *testing.T) {
	for _, n := range []uint32{1, 4096, 100_000} {
		const k = 64
		keep := make([]*Cache, k)
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		for i := range keep {
			keep[i] = New(n)
		}
		runtime.ReadMemStats(&b)
		runtime.KeepAlive(keep)
		got, est := (b.TotalAlloc-a.TotalAlloc)/k, Bytes(n)
		if d := int64(got) - int64(est); d < -int64(est)/100-256 || d > int64(est)/100+256 {
			t.Errorf("New(%d) allocated %d B, Bytes says %d", n, got, est)
		}
	}
}
