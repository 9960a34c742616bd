//go:build linux

package mapcount

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/fwplane/fwplane/internal/testutil"
)

// churner replaces entries of a map at full speed: delete the oldest key,
// insert a new one. The live keys are always the window [lo, hi), so the
// map holds size or size-1 entries, and the counters say exactly which keys
// can have existed during any interval.
type churner struct {
	deletes, inserts atomic.Uint64 // completed operations
	stop             atomic.Bool
	wg               sync.WaitGroup
	err              error
}

func startChurn(tb testing.TB, m *ebpf.Map, size uint64) *churner {
	c := &churner{}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		key := make([]byte, m.KeySize())
		val := make([]byte, m.ValueSize())
		lo, hi := uint64(1), size+1
		for !c.stop.Load() {
			testKey(key, lo)
			if err := m.Delete(key); err != nil {
				c.err = err
				return
			}
			c.deletes.Add(1)
			testKey(key, hi)
			if err := m.Put(key, val); err != nil {
				c.err = err
				return
			}
			c.inserts.Add(1)
			lo, hi = lo+1, hi+1
		}
	}()
	tb.Cleanup(c.halt)
	return c
}

func (c *churner) halt() {
	c.stop.Store(true)
	c.wg.Wait()
}

// bounds returns what a count taken between two snapshots may honestly be.
// d0, i0 and d1, i1 are the completed deletes and inserts before and after.
// Keys 1..d0 were gone before the count and keys > size+i1+1 did not exist
// yet (one insert may be in flight), so at most size + (i1-i0) + 1 distinct
// keys existed at some point during it. Keys d1+2 .. size+i0 existed the
// whole time, so at least size - (d1-d0) - 2 existed throughout (inserts
// trail deletes by at most one); 0 when the whole map was replaced.
func bounds(size, d0, i0, d1, i1 uint64) (lo, hi uint64) {
	if d := d1 - d0 + 2; d < size {
		lo = size - d
	}
	return lo, size + (i1 - i0) + 1
}

// TestIntegrationChurn counts a map that is being rewritten as fast as one
// goroutine can, the case where naive next-key walks over-count by up to
// +44 % (measured at ~280 k replacements/s). The bounds asserted:
//   - walk: complete within 4x max entries steps, and between the keys that
//     existed throughout the walk and the keys that existed at any time
//     during it (see bounds). Each counted key is distinct (fingerprint
//     de-duplication), was returned by the kernel, so existed; every key
//     present throughout is reached because a walk only ends at the last
//     bucket and resumes before, never after, a lost cursor.
//   - batch: the same hard bound and within ±1 % of the size (buckets are
//     read under their locks, the cursor never restarts).
//   - kfunc: exact up to the operations that ran during the read.
func TestIntegrationChurn(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF)
	const maxEntries = 32768
	const size = maxEntries
	m := newMap(t, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: 64, MaxEntries: maxEntries})
	fill(t, m, 1, size)
	k, err := NewKfunc()
	switch {
	case err == nil:
		defer k.Close()
	case errorsIsNotSupported(err) && !testutil.Required():
		t.Logf("kfunc part skipped: %v", err)
	default:
		t.Fatal(err)
	}

	ch := startChurn(t, m, size)
	ctx := context.Background()
	// Let the churner reach full speed.
	time.Sleep(20 * time.Millisecond)
	started := time.Now()
	ops0 := ch.deletes.Load() + ch.inserts.Load()

	type stat struct {
		n                    int
		minErr, maxErr       float64 // relative to size, percent
		restarts, incomplete int
		passes               int
		maxOps               uint64
	}
	record := func(s *stat, count uint64, ops uint64) {
		e := (float64(count) - size) * 100 / size
		if s.n == 0 || e < s.minErr {
			s.minErr = e
		}
		if s.n == 0 || e > s.maxErr {
			s.maxErr = e
		}
		s.n++
		s.maxOps = max(s.maxOps, ops)
	}
	var walks, naive, batches, kfuncs stat
	splits := 0 // split batches that kept their split (not the sequential fallback)
	deadline := time.Now().Add(3 * time.Second)
	for i := 0; i < 30 && time.Now().Before(deadline); i++ {
		d0, i0 := ch.deletes.Load(), ch.inserts.Load()
		w, err := Walk(ctx, m, nil)
		d1, i1 := ch.deletes.Load(), ch.inserts.Load()
		if err != nil {
			t.Fatalf("walk %d: %v", i, err)
		}
		lo, hi := bounds(size, d0, i0, d1, i1)
		if w.Steps > 4*maxEntries {
			t.Errorf("walk %d: %d steps, over the 4x cap", i, w.Steps)
		}
		if !w.Complete {
			// Honest, but only a lower bound: check that much.
			walks.incomplete++
			if w.Count > hi {
				t.Errorf("incomplete walk %d counted %d > %d keys that existed", i, w.Count, hi)
			}
		} else if w.Count < lo || w.Count > hi {
			t.Errorf("walk %d: count %d outside [%d, %d] (restarts %d, steps %d, %d deletes/%d inserts during it)",
				i, w.Count, lo, hi, w.Restarts, w.Steps, d1-d0, i1-i0)
		}
		walks.restarts += int(w.Restarts)
		walks.passes += int(w.Passes) - 1
		record(&walks, w.Count, d1-d0+i1-i0)

		// The naive walk, for the record only: it may or may not
		// over-count in a given run.
		d0, i0 = ch.deletes.Load(), ch.inserts.Load()
		nw, err := Walk(ctx, m, &WalkOptions{Naive: true})
		d1, i1 = ch.deletes.Load(), ch.inserts.Load()
		if err != nil {
			t.Fatalf("naive walk %d: %v", i, err)
		}
		if _, hi := bounds(size, d0, i0, d1, i1); nw.Count > hi {
			naive.incomplete++ // here: walks that broke the honest bound
		}
		record(&naive, nw.Count, d1-d0+i1-i0)

		d0, i0 = ch.deletes.Load(), ch.inserts.Load()
		b, err := Batch(ctx, m, nil)
		d1, i1 = ch.deletes.Load(), ch.inserts.Load()
		if err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
		lo, hi = bounds(size, d0, i0, d1, i1)
		if !b.Complete || b.Count < lo || b.Count > hi || b.Count < size*99/100 || b.Count > size*101/100 {
			t.Errorf("batch %d: count %d (complete %v) outside [%d, %d] or ±1 %% of %d", i, b.Count, b.Complete, lo, hi, size)
		}
		record(&batches, b.Count, d1-d0+i1-i0)

		// The same with the bucket range split between two workers and
		// small chunks, so the boundary overlap is exercised under churn.
		d0, i0 = ch.deletes.Load(), ch.inserts.Load()
		sb, err := Batch(ctx, m, &BatchOptions{ChunkSize: 256, Workers: 2})
		d1, i1 = ch.deletes.Load(), ch.inserts.Load()
		if err != nil {
			t.Fatalf("split batch %d: %v", i, err)
		}
		lo, hi = bounds(size, d0, i0, d1, i1)
		if !sb.Complete || sb.Count < lo || sb.Count > hi || sb.Count < size*99/100 || sb.Count > size*101/100 {
			t.Errorf("split batch %d: count %d (complete %v, workers %d) outside [%d, %d] or ±1 %% of %d", i, sb.Count, sb.Complete, sb.Workers, lo, hi, size)
		}
		splits += int(sb.Workers / 2)

		if k != nil {
			id := testMapID(t, m)
			d0, i0 = ch.deletes.Load(), ch.inserts.Load()
			kc, err := k.Counts(ctx)
			d1, i1 = ch.deletes.Load(), ch.inserts.Load()
			if err != nil {
				t.Fatalf("kfunc %d: %v", i, err)
			}
			n := kc[id]
			if slack := d1 - d0 + i1 - i0 + 1; n+slack < size || n > size+slack {
				t.Errorf("kfunc %d: count %d, want %d ± %d (ops during the read + 1)", i, n, size, slack)
			}
			record(&kfuncs, n, d1-d0+i1-i0)
		}
	}
	elapsed := time.Since(started)
	ops := ch.deletes.Load() + ch.inserts.Load() - ops0
	ch.halt()
	if ch.err != nil {
		t.Fatalf("churn: %v", ch.err)
	}
	rate := float64(ops) / elapsed.Seconds()
	t.Logf("churn: %.0f ops/s (delete+insert) on a %d-entry map held at %d", rate, maxEntries, size)
	t.Logf("walk:        %d walks, error %+.2f%% .. %+.2f%%, %d restarts (%d began a new pass), %d incomplete, up to %d ops during one walk", walks.n, walks.minErr, walks.maxErr, walks.restarts, walks.passes, walks.incomplete, walks.maxOps)
	t.Logf("naive walk:  %d walks, error %+.2f%% .. %+.2f%%, %d over the honest bound", naive.n, naive.minErr, naive.maxErr, naive.incomplete)
	t.Logf("batch:       %d reads, error %+.3f%% .. %+.3f%%, up to %d ops during one read", batches.n, batches.minErr, batches.maxErr, batches.maxOps)
	t.Logf("split batch: %d of %d reads split between 2 workers (the rest: sequential fallback)", splits, batches.n)
	if splits == 0 {
		t.Error("no split batch kept its split: the boundary overlap was never tested under churn")
	}
	if kfuncs.n > 0 {
		t.Logf("kfunc:       %d reads, error %+.4f%% .. %+.4f%%, up to %d ops during one read", kfuncs.n, kfuncs.minErr, kfuncs.maxErr, kfuncs.maxOps)
	}
	if walks.maxOps < 1000 {
		t.Fatalf("only %d map operations during the slowest walk: the churn was too slow to test anything", walks.maxOps)
	}
}
