package natpool

import (
	"math/rand/v2"
	"sync"
	"testing"
)

// TestTakeRange: every port of a range is handed out once, want first
// when free, then the range is exhausted; released ports come back.
func TestTakeRange(t *testing.T) {
	p := New()
	if got, ok := p.Take(2000, 2015, 2007); !ok || got != 2007 {
		t.Fatalf("Take with a free wanted port = %d %v, want 2007", got, ok)
	}
	seen := map[uint16]bool{2007: true}
	for range 15 {
		got, ok := p.Take(2000, 2015, 2007)
		if !ok || got < 2000 || got > 2015 || seen[got] {
			t.Fatalf("Take = %d %v (seen %v)", got, ok, seen)
		}
		seen[got] = true
	}
	if got, ok := p.Take(2000, 2015, 0); ok {
		t.Fatalf("17th Take of 16 ports = %d, want exhaustion", got)
	}
	if p.Used() != 16 || p.UsedIn(2000, 2015) != 16 || p.UsedIn(2000, 2003) != 4 || p.UsedIn(0, 1999) != 0 {
		t.Errorf("Used %d, UsedIn %d %d %d", p.Used(), p.UsedIn(2000, 2015), p.UsedIn(2000, 2003), p.UsedIn(0, 1999))
	}
	if !p.Release(2003) || p.Release(2003) {
		t.Fatal("Release of a held port, then of a free one")
	}
	if got, ok := p.Take(2000, 2015, 0); !ok || got != 2003 {
		t.Errorf("Take after a release = %d %v, want 2003", got, ok)
	}
	// Another range on the same address shares nothing held.
	if got, ok := p.Take(2010, 2020, 2010); !ok || got != 2016 {
		t.Errorf("Take in an overlapping range = %d %v, want 2016", got, ok)
	}
}

// TestTakeAgainstModel: random takes and releases in random ranges agree
// with a plain set, including the whole 1-65535 range and word edges.
func TestTakeAgainstModel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	p := New()
	held := map[uint16]bool{}
	ranges := [][2]uint16{{1, 65535}, {1024, 65535}, {63, 64}, {64, 127}, {0, 0}, {65535, 65535}, {100, 300}}
	for i := range 30000 {
		rg := ranges[r.IntN(len(ranges))]
		if r.IntN(3) == 0 && len(held) > 0 {
			for port := range held {
				if !p.Release(port) {
					t.Fatalf("op %d: Release(%d) of a held port failed", i, port)
				}
				delete(held, port)
				break
			}
			continue
		}
		want := uint16(r.IntN(65536))
		got, ok := p.Take(rg[0], rg[1], want)
		free := int(rg[1]) - int(rg[0]) + 1
		for q := range held {
			if q >= rg[0] && q <= rg[1] {
				free--
			}
		}
		if ok != (free > 0) {
			t.Fatalf("op %d: Take(%v) ok=%v with %d free", i, rg, ok, free)
		}
		if !ok {
			continue
		}
		if got < rg[0] || got > rg[1] || held[got] {
			t.Fatalf("op %d: Take(%v) = %d, held %v", i, rg, got, held[got])
		}
		if want >= rg[0] && want <= rg[1] && !held[want] && got != want {
			t.Fatalf("op %d: wanted %d free, got %d", i, want, got)
		}
		held[got] = true
		if uint64(len(held)) != p.Used() {
			t.Fatalf("op %d: Used %d, model %d", i, p.Used(), len(held))
		}
	}
	n := uint64(0)
	for q := range held {
		if q >= 100 && q <= 300 {
			n++
		}
	}
	if got := p.UsedIn(100, 300); got != n {
		t.Errorf("UsedIn(100, 300) = %d, model %d", got, n)
	}
}

// TestRetire: only an empty allocator retires, and a retired one hands
// out nothing.
func TestRetire(t *testing.T) {
	p := New()
	port, _ := p.Take(1, 10, 1)
	if p.Retire() {
		t.Fatal("retired while a port is held")
	}
	p.Release(port)
	if !p.Retire() {
		t.Fatal("an empty allocator did not retire")
	}
	if _, ok := p.Take(1, 10, 1); ok {
		t.Error("a retired allocator handed out a port")
	}
}

// TestConcurrent: concurrent takers never get the same port (-race).
func TestConcurrent(t *testing.T) {
	p := New()
	var mu sync.Mutex
	got := map[uint16]int{}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5000 {
				port, ok := p.Take(1024, 65535, uint16(w*1000+i))
				if !ok {
					t.Error("exhausted early")
					return
				}
				mu.Lock()
				got[port]++
				mu.Unlock()
				if i%2 == 0 {
					go p.UsedIn(2000, 3000)
				}
			}
		}()
	}
	wg.Wait()
	for port, n := range got {
		if n != 1 {
			t.Errorf("port %d handed out %d times", port, n)
		}
	}
	if p.Used() != 20000 {
		t.Errorf("Used = %d, want 20000", p.Used())
	}
}

// BenchmarkTake: one Take and one Release of a random held port, the
// allocator held at a fill of the default range (1024-65535) throughout,
// the wanted port always taken (no port preservation luck).
func BenchmarkTake(b *testing.B) {
	for _, fill := range []float64{0.5, 0.9, 0.99, 0.999} {
		b.Run(fmtFill(fill), func(b *testing.B) {
			p := New()
			const first, last = 1024, 65535
			n := int(float64(last-first+1) * fill)
			held := make([]uint16, 0, n)
			for range n {
				port, _ := p.Take(first, last, 0)
				held = append(held, port)
			}
			r := rand.New(rand.NewPCG(3, 4))
			b.ResetTimer()
			for b.Loop() {
				i := r.IntN(len(held))
				p.Release(held[i])
				port, ok := p.Take(first, last, held[(i+1)%len(held)])
				if !ok {
					b.Fatal("exhausted")
				}
				held[i] = port
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/take+release")
		})
	}
}

func fmtFill(f float64) string {
	switch f {
	case 0.5:
		return "fill-50%"
	case 0.9:
		return "fill-90%"
	case 0.99:
		return "fill-99%"
	}
	return "fill-99.9%"
}
