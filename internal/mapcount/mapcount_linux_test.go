//go:build linux

package mapcount

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/internal/testutil"
)

// counts is what every method found for one map.
type counts struct {
	Iterate, Walk, Batch, Kfunc, Counter uint64
	CounterMethod                        string
}

func TestIntegrationEveryMethodCountsExactly(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF)
	k, err := NewKfunc()
	testutil.SkipIfNotSupported(t, err)
	t.Cleanup(func() { k.Close() })
	c, err := NewCounter(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.KfuncErr(); err != nil {
		t.Fatalf("auto counter could not load the kfunc the standalone one loaded: %v", err)
	}

	hash := func(typ ebpf.MapType, flags uint32) *ebpf.MapSpec {
		return &ebpf.MapSpec{Type: typ, KeySize: 16, ValueSize: 8, MaxEntries: 8192, Flags: flags}
	}
	specs := []struct {
		name string
		spec *ebpf.MapSpec
	}{
		{"hash", hash(ebpf.Hash, 0)},
		{"no_prealloc_hash", hash(ebpf.Hash, 1 /* BPF_F_NO_PREALLOC */)},
		{"lru_hash", hash(ebpf.LRUHash, 0)},
		{"percpu_hash", hash(ebpf.PerCPUHash, 0)},
		{"no_prealloc_percpu_hash", hash(ebpf.PerCPUHash, 1)},
		{"lru_percpu_hash", hash(ebpf.LRUCPUHash, 0)},
	}
	// LRU maps are filled to half their size at most: their per-CPU free
	// lists may evict before the map is full.
	for _, n := range []uint64{0, 1, 1000, 4096} {
		for _, s := range specs {
			t.Run(fmt.Sprintf("%s/%d", s.name, n), func(t *testing.T) {
				m := newMap(t, s.spec)
				fill(t, m, 1, n)
				ctx := context.Background()

				var got counts
				got.Iterate = iterateCount(t, m)
				w, err := Walk(ctx, m, nil)
				if err != nil {
					t.Fatalf("walk: %v", err)
				}
				if !w.Complete || w.Restarts != 0 || w.Steps != n+1 {
					t.Errorf("walk of a static map: complete %v, restarts %d, steps %d; want true, 0, %d", w.Complete, w.Restarts, w.Steps, n+1)
				}
				got.Walk = w.Count
				b, err := Batch(ctx, m, nil)
				if err != nil {
					t.Fatalf("batch: %v", err)
				}
				if !b.Complete {
					t.Error("batch of a static map is incomplete")
				}
				got.Batch = b.Count
				kc, err := k.Counts(ctx)
				if err != nil {
					t.Fatalf("kfunc: %v", err)
				}
				id := testMapID(t, m)
				kn, ok := kc[id]
				if !ok {
					t.Fatalf("kfunc read lists %d maps but not map %d", len(kc), id)
				}
				got.Kfunc = kn
				res, err := c.Count(ctx, []*ebpf.Map{m})
				if err != nil || res[0].Err != nil {
					t.Fatalf("counter: %v, %v", err, res[0].Err)
				}
				got.Counter, got.CounterMethod = res[0].Count, res[0].Method

				want := counts{n, n, n, n, n, string(MethodKfunc)}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("counts (-want +got):\n%s", diff)
				}
			})
		}
	}
}

// TestIntegrationForcedMethods checks each forced method through Counter,
// and that Auto falls back to a walk where batch lookups do not exist (LPM
// tries keep no kernel count and have no batch lookup).
func TestIntegrationForcedMethods(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF)
	h := newMap(t, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: 8, MaxEntries: 4096})
	fill(t, h, 1, 3000)
	trie := newMap(t, &ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 8, MaxEntries: 1024, Flags: 1 /* BPF_F_NO_PREALLOC */})
	for i := uint32(0); i < 300; i++ {
		key := []byte{24, 0, 0, 0, 10, byte(i >> 8), byte(i), 0}
		if err := trie.Put(key, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	arr := newMap(t, &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 16})

	type row struct {
		Method string
		Count  uint64
		Err    string
	}
	summarize := func(rs []Result) []row {
		var out []row
		for _, r := range rs {
			e := ""
			switch {
			case errors.Is(r.Err, ErrNotCountable):
				e = "not countable"
			case errors.Is(r.Err, ebpf.ErrNotSupported):
				e = "not supported"
			case r.Err != nil:
				e = r.Err.Error()
			}
			if e != "" {
				out = append(out, row{Err: e})
				continue
			}
			out = append(out, row{Method: r.Method, Count: r.Count})
		}
		return out
	}
	tests := []struct {
		method Method
		want   []row
	}{
		{Auto, []row{{Method: "kfunc", Count: 3000}, {Method: "walk", Count: 300}, {Err: "not countable"}}},
		{MethodWalk, []row{{Method: "walk", Count: 3000}, {Method: "walk", Count: 300}, {Err: "not countable"}}},
		{MethodBatch, []row{{Method: "batch", Count: 3000}, {Err: "not supported"}, {Err: "not countable"}}},
		{MethodKfunc, []row{{Method: "kfunc", Count: 3000}, {Err: "not supported"}, {Err: "not countable"}}},
	}
	for _, tt := range tests {
		t.Run(string(tt.method), func(t *testing.T) {
			c, err := NewCounter(&Options{Method: tt.method})
			testutil.SkipIfNotSupported(t, err)
			t.Cleanup(func() { c.Close() })
			if tt.method == Auto && c.KfuncErr() != nil {
				testutil.SkipIfNotSupported(t, c.KfuncErr())
			}
			rs, err := c.Count(context.Background(), []*ebpf.Map{h, trie, arr})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, summarize(rs)); diff != "" {
				t.Errorf("results (-want +got):\n%s", diff)
			}
		})
	}
}

func TestIntegrationNotCountable(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF)
	specs := []*ebpf.MapSpec{
		{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 64},
		{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 64},
		{Type: ebpf.DevMap, KeySize: 4, ValueSize: 4, MaxEntries: 64},
		{Type: ebpf.XSKMap, KeySize: 4, ValueSize: 4, MaxEntries: 64},
	}
	for _, s := range specs {
		t.Run(s.Type.String(), func(t *testing.T) {
			m := newMap(t, s)
			ctx := context.Background()
			if _, err := Walk(ctx, m, nil); !errors.Is(err, ErrNotCountable) {
				t.Errorf("walk: got %v, want ErrNotCountable", err)
			}
			if _, err := Batch(ctx, m, nil); !errors.Is(err, ErrNotCountable) {
				t.Errorf("batch: got %v, want ErrNotCountable", err)
			}
			c, err := NewCounter(&Options{Method: MethodWalk})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			rs, err := c.Count(ctx, []*ebpf.Map{m})
			if err != nil {
				t.Fatal(err)
			}
			if !errors.Is(rs[0].Err, ErrNotCountable) {
				t.Errorf("counter: got %v, want ErrNotCountable", rs[0].Err)
			}
		})
	}
}

func TestIntegrationWalkCap(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF)
	m := newMap(t, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: 8, MaxEntries: 4096})
	fill(t, m, 1, 2000)
	r, err := Walk(context.Background(), m, &WalkOptions{MaxSteps: 500})
	if err != nil {
		t.Fatal(err)
	}
	got := Result{Count: r.Count, Steps: r.Steps, Complete: r.Complete, Method: r.Method}
	want := Result{Count: 500, Steps: 500, Complete: false, Method: "walk"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("capped walk (-want +got):\n%s", diff)
	}
}

func TestIntegrationContextCancel(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF)
	const n = 200_000
	m := newMap(t, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: 8, MaxEntries: n})
	fill(t, m, 1, n)

	t.Run("already_cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		for name, count := range map[string]func(context.Context) (Result, error){
			"walk":  func(ctx context.Context) (Result, error) { return Walk(ctx, m, nil) },
			"batch": func(ctx context.Context) (Result, error) { return Batch(ctx, m, nil) },
		} {
			r, err := count(ctx)
			if !errors.Is(err, context.Canceled) || r.Complete || r.Count != 0 {
				t.Errorf("%s: got %+v, %v; want an incomplete empty result and context.Canceled", name, r, err)
			}
		}
		k, err := NewKfunc()
		testutil.SkipIfNotSupported(t, err)
		defer k.Close()
		if _, err := k.Counts(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("kfunc: got %v, want context.Canceled", err)
		}
		c, err := NewCounter(&Options{Method: MethodWalk})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Count(ctx, []*ebpf.Map{m}); !errors.Is(err, context.Canceled) {
			t.Errorf("counter: got %v, want context.Canceled", err)
		}
	})

	t.Run("mid_walk", func(t *testing.T) {
		// A full walk of 200k keys takes ~200 ms; stop it after 20 ms.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		start := time.Now()
		r, err := Walk(ctx, m, nil)
		took := time.Since(start)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %+v, %v; want context.DeadlineExceeded", r, err)
		}
		if r.Complete || r.Count == 0 || r.Count >= n {
			t.Errorf("partial walk: complete %v, count %d; want incomplete with 0 < count < %d", r.Complete, r.Count, n)
		}
		// ctx is checked every ctxEvery keys (a few ms); allow a busy machine.
		if took > 500*time.Millisecond {
			t.Errorf("walk returned %v after its deadline", took)
		}
		t.Logf("cancelled after %v with %d of %d keys counted", took, r.Count, n)
	})
}

// TestIntegrationHashOfMaps: the outer map of a map-in-map is counted like
// a hash (its slots hold inner map ids); the kfunc is not claimed for it.
func TestIntegrationHashOfMaps(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF)
	inner := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	outer := newMap(t, &ebpf.MapSpec{Type: ebpf.HashOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 64, InnerMap: inner})
	const n = 10
	for i := uint32(0); i < n; i++ {
		in := newMap(t, inner)
		if err := outer.Put(i, in); err != nil {
			t.Fatal(err)
		}
	}
	w, err := Walk(context.Background(), outer, nil)
	if err != nil || w.Count != n {
		t.Errorf("walk: %d, %v; want %d", w.Count, err, n)
	}
	c, err := NewCounter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rs, err := c.Count(context.Background(), []*ebpf.Map{outer})
	if err != nil || rs[0].Err != nil || rs[0].Count != n || rs[0].Method == string(MethodKfunc) {
		t.Errorf("counter: %+v, %v; want %d by batch or walk", rs[0], err, n)
	}
	t.Logf("counter used %s", rs[0].Method)
}

// TestIntegrationWalkRestart makes the kernel lose the cursor at chosen
// steps and checks both recoveries exactly: losing the cursor alone is
// resumed from the key before it (no key counted twice), losing the cursor
// and the key before it begins a new pass whose count replaces the old.
func TestIntegrationWalkRestart(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF)
	const n = 1000
	type outcome struct {
		Count            uint64
		Restarts, Passes uint32
		Complete, Twice  bool
	}
	tests := []struct {
		name  string
		lose  map[uint64]int // key index -> how many keys to delete there (1: cursor, 2: cursor and prev)
		naive bool
		want  outcome
	}{
		{"quiet", nil, false, outcome{Count: n, Passes: 1, Complete: true}},
		// The deleted cursor was counted when it existed: n.
		{"resume", map[uint64]int{500: 1}, false, outcome{Count: n, Restarts: 1, Passes: 1, Complete: true}},
		// The new pass sees the n-3 keys left.
		{"new_pass", map[uint64]int{300: 1, 700: 2}, false, outcome{Count: n - 3, Restarts: 2, Passes: 2, Complete: true}},
		// Churn replaced the head of the map but for one remembered key:
		// the restart is noticed late, mid-map, and the walk must begin a
		// new pass from the first key, not from where it noticed (that
		// under-counted by up to 70 % under heavy churn). The map holds
		// n-1 keys when the new pass runs (599 deleted, 598 inserted).
		{"late_detection", map[uint64]int{600: 3}, false, outcome{Count: n - 1, Restarts: 1, Passes: 2, Complete: true}},
		// Without detection the head of the map is counted again.
		{"naive", map[uint64]int{500: 1}, true, outcome{Count: n + 499, Passes: 1, Complete: true, Twice: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMap(t, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: 8, MaxEntries: 2 * n})
			fill(t, m, 1, n)
			var step uint64
			var walked [][]byte
			seen := map[string]int{}
			opts := &WalkOptions{Naive: tt.naive}
			opts.afterKey = func(cur, prev []byte) {
				step++
				seen[string(cur)]++
				walked = append(walked, append([]byte(nil), cur...))
				switch tt.lose[step] {
				case 3:
					// Delete the cursor and every walked key but the
					// 300th; insert a new key for each but the cursor.
					key := make([]byte, 16)
					for i, k := range walked {
						if i == 299 {
							continue
						}
						if err := m.Delete(k); err != nil {
							t.Fatal(err)
						}
						testKey(key, uint64(10_000+i))
						if i != len(walked)-1 {
							if err := m.Put(key, uint64(0)); err != nil {
								t.Fatal(err)
							}
						}
					}
				case 2:
					if prev == nil {
						t.Fatalf("step %d: no previous key to delete", step)
					}
					if err := m.Delete(prev); err != nil {
						t.Fatal(err)
					}
					fallthrough
				case 1:
					if err := m.Delete(cur); err != nil {
						t.Fatal(err)
					}
				}
			}
			r, err := Walk(context.Background(), m, opts)
			if err != nil {
				t.Fatal(err)
			}
			twice := false
			for _, c := range seen {
				twice = twice || c > 1
			}
			if tt.want.Passes > 1 {
				twice = false // the second pass revisits keys by design
			}
			got := outcome{r.Count, r.Restarts, r.Passes, r.Complete, twice}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestIntegrationBatchSplitCountsExactly checks the split batch on static
// maps: every worker count and chunk size gives the exact count, and the
// split is taken where the first chunk shows the map dense enough.
func TestIntegrationBatchSplitCountsExactly(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF)
	const maxEntries = 1 << 16
	for _, typ := range []ebpf.MapType{ebpf.Hash, ebpf.PerCPUHash, ebpf.LRUHash} {
		for _, n := range []uint64{0, 1, 100, maxEntries / 4, maxEntries / 2} {
			t.Run(fmt.Sprintf("%s/%d", typ, n), func(t *testing.T) {
				m := newMap(t, &ebpf.MapSpec{Type: typ, KeySize: 12, ValueSize: 8, MaxEntries: maxEntries})
				fill(t, m, 1, n)
				want := iterateCount(t, m)
				if typ != ebpf.LRUHash && want != n {
					t.Fatalf("iterate counted %d of %d entries", want, n)
				}
				for _, workers := range []int{1, 2, 3, 4} {
					for _, chunk := range []int{16, 97, 4096} {
						r, err := Batch(context.Background(), m, &BatchOptions{ChunkSize: chunk, Workers: workers})
						if err != nil {
							t.Fatalf("workers %d chunk %d: %v", workers, chunk, err)
						}
						if r.Count != want || !r.Complete {
							t.Errorf("workers %d chunk %d: counted %d (complete %v, %d workers used), want %d", workers, chunk, r.Count, r.Complete, r.Workers, want)
						}
						// The split needs a first chunk spanning at most
						// 1/8 of a worker's range.
						dense := n >= uint64(chunk)*uint64(workers)*8*2
						if workers > 1 && dense && r.Workers != uint32(workers) {
							t.Errorf("workers %d chunk %d, %d entries: split not taken (%d workers)", workers, chunk, n, r.Workers)
						}
						if workers == 1 && r.Workers != 1 {
							t.Errorf("workers 1: %d workers used", r.Workers)
						}
					}
				}
			})
		}
	}
}
