package flowcache

import (
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/internal/policy"
	"github.com/fwplane/fwplane/userspacebackend/internal/session"
)

func tuple(i uint32) policy.Tuple {
	a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	return policy.MakeTuple(a, netip.MustParseAddr("192.0.2.1"), 6, uint16(i), 443)
}

// valid counts the entries of the current generation by walking the ways:
// the ground truth Occupancy must equal.
func (c *Cache) valid() uint32 {
	var n uint32
	for i := range c.sets {
		for j := range c.sets[i].w {
			if c.gen != 0 && c.sets[i].w[j].gen == c.gen {
				n++
			}
		}
	}
	return n
}

func TestLookupInsert(t *testing.T) {
	c := New(100)
	if c.Capacity() != 128 {
		t.Fatalf("Capacity = %d, want 128", c.Capacity())
	}
	a, b := tuple(1), tuple(2)
	d := Decision{Egress: 3, DstMAC: [6]byte{1, 2, 3, 4, 5, 6}, SrcMAC: [6]byte{6}, Session: session.Ref{Shard: 1, Slot: 2, Gen: 4}, Dir: session.Reverse}
	if _, ok := c.Lookup(2, &a, 1); ok {
		t.Fatal("hit in an empty cache")
	}
	c.Insert(2, &a, 1, d)
	got, ok := c.Lookup(2, &a, 1)
	if diff := cmp.Diff(d, got); !ok || diff != "" {
		t.Errorf("Lookup ok=%v (-want +got):\n%s", ok, diff)
	}
	if _, ok := c.Lookup(3, &a, 1); ok {
		t.Error("hit for another ingress interface")
	}
	if _, ok := c.Lookup(2, &b, 1); ok {
		t.Error("hit for another tuple")
	}
	d2 := d
	d2.Egress = 9
	c.Insert(2, &a, 1, d2) // replace, not a second entry
	if got, _ := c.Lookup(2, &a, 1); got.Egress != 9 || c.Occupancy() != 1 {
		t.Errorf("replace: egress %d occupancy %d", got.Egress, c.Occupancy())
	}
	c.Invalidate(2, &a)
	c.Invalidate(2, &a)
	if _, ok := c.Lookup(2, &a, 1); ok || c.Occupancy() != 0 {
		t.Errorf("after Invalidate: ok=%v occupancy %d", ok, c.Occupancy())
	}
}

func TestGeneration(t *testing.T) {
	c := New(64)
	for i := range uint32(20) {
		tu := tuple(i)
		c.Insert(1, &tu, 5, Decision{Egress: i})
	}
	if c.Occupancy() != c.valid() || c.Occupancy() == 0 {
		t.Fatalf("occupancy %d, valid %d", c.Occupancy(), c.valid())
	}
	tu := tuple(3)
	if _, ok := c.Lookup(1, &tu, 6); ok {
		t.Error("entry of generation 5 served under 6")
	}
	if c.Occupancy() != 0 {
		t.Errorf("occupancy after a new generation: %d", c.Occupancy())
	}
	c.Insert(1, &tu, 6, Decision{Egress: 1})
	if c.Occupancy() != 1 || c.valid() != 1 {
		t.Errorf("occupancy %d valid %d", c.Occupancy(), c.valid())
	}
	c.Insert(1, &tu, 0, Decision{})
	if c.Occupancy() != 0 || c.valid() != 0 {
		t.Errorf("generation 0 must cache nothing: %d", c.Occupancy())
	}
}

// TestRandom checks Occupancy against the ways and lookups against a map
// model (an entry may be missing after an eviction, but never wrong).
func TestRandom(t *testing.T) {
	c := New(256)
	r := rand.New(rand.NewPCG(1, 1))
	model := map[uint32]uint32{}
	gen := uint64(1)
	for step := range 100000 {
		i := r.Uint32N(600)
		tu := tuple(i)
		switch op := r.IntN(100); {
		case op < 50:
			d, ok := c.Lookup(1, &tu, gen)
			if want, in := model[i]; ok && (!in || d.Egress != want) {
				t.Fatalf("step %d: stale or wrong entry %d (model %d, %v)", step, d.Egress, want, in)
			}
		case op < 90:
			e := r.Uint32()
			c.Insert(1, &tu, gen, Decision{Egress: e})
			model[i] = e
		case op < 99:
			c.Invalidate(1, &tu)
			delete(model, i)
		default:
			gen++
			clear(model)
		}
		if c.Occupancy() != c.valid() {
			t.Fatalf("step %d: Occupancy %d, ways hold %d", step, c.Occupancy(), c.valid())
		}
	}
	if c.Evictions() == 0 {
		t.Error("600 flows in 256 entries evicted nothing")
	}
}

func TestConcurrentReader(t *testing.T) {
	c := New(1024)
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			if o := c.Occupancy(); o > c.Capacity() {
				t.Errorf("occupancy %d > capacity", o)
			}
			_ = c.Evictions()
		}
	}()
	for i := range uint32(50000) {
		tu := tuple(i % 3000)
		if _, ok := c.Lookup(1, &tu, uint64(1+i/10000)); !ok {
			c.Insert(1, &tu, uint64(1+i/10000), Decision{Egress: i})
		}
	}
	close(done)
	wg.Wait()
}

func TestAllocs(t *testing.T) {
	c := New(1024)
	a, b := tuple(1), tuple(2)
	if n := testing.AllocsPerRun(1000, func() {
		c.Insert(1, &a, 1, Decision{Egress: 1})
		c.Lookup(1, &a, 1)
		c.Lookup(1, &b, 1)
		c.Invalidate(1, &a)
	}); n != 0 {
		t.Errorf("allocates %.1f times", n)
	}
}

func BenchmarkLookup(b *testing.B) {
	const flows = 2048
	c := New(4096)
	ts := make([]policy.Tuple, flows)
	for i := range ts {
		ts[i] = tuple(uint32(i))
		c.Insert(1, &ts[i], 1, Decision{Egress: uint32(i)})
	}
	// Keep only the flows that stayed cached (a full set evicts), so the
	// hit benchmark measures hits.
	cached := make([]policy.Tuple, 0, flows)
	for i := range ts {
		if _, ok := c.Lookup(1, &ts[i], 1); ok {
			cached = append(cached, ts[i])
		}
	}
	for i := 0; len(cached) < flows; i++ {
		cached = append(cached, cached[i])
	}
	ts = cached
	b.Run("hit", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, ok := c.Lookup(1, &ts[i], 1); !ok {
				b.Fatal("miss")
			}
			i = (i + 1) & (flows - 1)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mlookups/s")
	})
	b.Run("miss", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, ok := c.Lookup(2, &ts[i], 1); ok {
				b.Fatal("hit")
			}
			i = (i + 1) & (flows - 1)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mlookups/s")
	})
}
