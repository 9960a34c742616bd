package session

import (
	"runtime"
	"testing"

	"github.com/fwplane/fwplane/dataplane"
)

// allocated returns the bytes the heap handed out while fn ran.
func allocated(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// TestBytesMatchesNew: the gate's estimate is what New really allocates
// (within 1 %, plus a few KiB of small objects).
func TestBytesMatchesNew(t *testing.T) {
	for _, c := range []struct{ capacity, shards uint32 }{{65536, 64}, {1 << 20, 64}, {1000, 3}, {10, 64}} {
		var tab *Table
		got := allocated(func() { tab = New(c.capacity, c.shards, dataplane.Timeouts{}) })
		runtime.KeepAlive(tab)
		est := Bytes(c.capacity, c.shards)
		if d := int64(got) - int64(est); d < -int64(est)/100-8192 || d > int64(est)/100+8192 {
			t.Errorf("New(%d, %d) allocated %d B, Bytes says %d", c.capacity, c.shards, got, est)
		}
	}
}
