//go:build linux

package mapcount

import (
	"context"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/internal/testutil"
)

// TestIntegrationKfuncManyMaps makes the iterator's output span several
// reads (the kernel fills a 32 KiB seq buffer per read: 2048 records) and
// checks every map's count, and that Counter shares one read among them.
func TestIntegrationKfuncManyMaps(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF)
	k, err := NewKfunc()
	testutil.SkipIfNotSupported(t, err)
	t.Cleanup(func() { k.Close() })

	const nMaps = 2500
	maps := make([]*ebpf.Map, nMaps)
	want := make(map[ebpf.MapID]uint64, nMaps)
	for i := range maps {
		maps[i] = newMap(t, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: 8, MaxEntries: 16})
		fill(t, maps[i], 1, uint64(i%13))
		want[testMapID(t, maps[i])] = uint64(i % 13)
	}
	start := time.Now()
	all, err := k.Counts(context.Background())
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[ebpf.MapID]uint64, nMaps)
	for id := range want {
		if n, ok := all[id]; ok {
			got[id] = n
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counts by map id (-want +got):\n%s", diff)
	}
	t.Logf("one read: %d maps in %v (%.2f µs a map)", len(all), took, float64(took.Microseconds())/float64(len(all)))

	c, err := NewCounter(&Options{Method: MethodKfunc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rs, err := c.Count(context.Background(), maps)
	if err != nil {
		t.Fatal(err)
	}
	var total time.Duration
	for i, r := range rs {
		if r.Err != nil || r.Count != uint64(i%13) || r.Method != "kfunc" {
			t.Fatalf("map %d: %+v, want %d by kfunc", i, r, i%13)
		}
		total += r.Cost
	}
	t.Logf("counter: %d maps, cost shares add up to %v", len(rs), total)
}

func TestKfuncCloseIdempotent(t *testing.T) {
	var k *Kfunc
	if err := k.Close(); err != nil {
		t.Fatalf("nil Close: %v", err)
	}
	var c *Counter
	if err := c.Close(); err != nil {
		t.Fatalf("nil Counter Close: %v", err)
	}
	testutil.Privileged(t, testutil.NeedBPF)
	k, err := NewKfunc()
	testutil.SkipIfNotSupported(t, err)
	for i := 0; i < 2; i++ {
		if err := k.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	if _, err := k.Counts(context.Background()); err == nil {
		t.Fatal("Counts after Close succeeded")
	}
}
