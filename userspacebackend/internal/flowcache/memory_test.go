package flowcache

import (
	"runtime"
	"testing"
)

func TestBytesMatchesNew(t *testing.T) {
	for _, n := range []uint32{1, 4096, 100_000} {
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		c := New(n)
		runtime.ReadMemStats(&b)
		runtime.KeepAlive(c)
		got, est := b.TotalAlloc-a.TotalAlloc, Bytes(n)
		if d := int64(got) - int64(est); d < -int64(est)/100-1024 || d > int64(est)/100+1024 {
			t.Errorf("New(%d) allocated %d B, Bytes says %d", n, got, est)
		}
	}
}
