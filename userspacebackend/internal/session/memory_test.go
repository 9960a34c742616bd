package session

import (
	"runtime"
	"testing"

	"github.com/fwplane/fwplane/dataplane"
)

// TestBytesMatchesNew: the gate's estimate is what New really allocates
// (within 1 %, plus the rounding of its three arrays to whole pages),
// averaged over a few tables so that other goroutines' allocations drown.
func TestBytesMatchesNew(t *testing.T) {
	for _, c := range []struct{ capacity, shards uint32 }{{65536, 64}, {1 << 20, 64}, {1000, 3}, {10, 64}} {
		const k = 4
		keep := make([]*Table, k)
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		for i := range keep {
			keep[i] = New(c.capacity, c.shards, dataplane.Timeouts{})
		}
		runtime.ReadMemStats(&b)
		runtime.KeepAlive(keep)
		got, est := (b.TotalAlloc-a.TotalAlloc)/k, Bytes(c.capacity, c.shards)
		if d := int64(got) - int64(est); d < -int64(est)/100-3*8192 || d > int64(est)/100+3*8192 {
			t.Errorf("New(%d, %d) allocated %d B, Bytes says %d", c.capacity, c.shards, got, est)
		}
	}
}
