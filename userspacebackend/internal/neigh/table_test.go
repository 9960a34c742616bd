package neigh

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestKeyRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		ifindex int
		addr    string
	}{{1, "192.0.2.1"}, {7, "2001:db8::1"}, {1<<31 - 1, "::ffff:192.0.2.1"}, {3, "fe80::1"}} {
		a := netip.MustParseAddr(tc.addr)
		k, ok := makeKey(tc.ifindex, a)
		if !ok {
			t.Fatalf("makeKey(%d, %s) refused", tc.ifindex, a)
		}
		if k.ifindex() != tc.ifindex || k.addr() != a {
			t.Errorf("round trip of (%d, %s) gave (%d, %s)", tc.ifindex, a, k.ifindex(), k.addr())
		}
	}
	// The IPv4 address and its IPv4-mapped IPv6 form are different
	// neighbours (ARP vs NDP entries).
	k4, _ := makeKey(1, netip.MustParseAddr("192.0.2.1"))
	k6, _ := makeKey(1, netip.MustParseAddr("::ffff:192.0.2.1"))
	if k4 == k6 {
		t.Error("IPv4 and IPv4-mapped IPv6 keys collide")
	}
	for _, bad := range []struct {
		ifindex int
		addr    netip.Addr
	}{{0, netip.MustParseAddr("192.0.2.1")}, {-1, netip.MustParseAddr("192.0.2.1")}, {1 << 31, netip.MustParseAddr("192.0.2.1")}, {1, netip.Addr{}}} {
		if _, ok := makeKey(bad.ifindex, bad.addr); ok {
			t.Errorf("makeKey(%d, %v) accepted", bad.ifindex, bad.addr)
		}
	}
}

func TestValuePacking(t *testing.T) {
	mac := [6]byte{0x02, 0xff, 0, 0x10, 0xab, 0xcd}
	v := packValue(mac, 0x80)
	if got := unpackMAC(v); got != mac {
		t.Errorf("unpackMAC = %x, want %x", got, mac)
	}
	if st := uint16(v >> 48); st != 0x80 {
		t.Errorf("state = %#x, want 0x80", st)
	}
}

func TestNewCoreOptions(t *testing.T) {
	for _, tc := range []struct {
		name       string
		capacity   uint32
		shards     int
		wantErr    error
		wantShards int
	}{
		{"default", 4096, 16, nil, 16},
		{"one shard", 10, 1, nil, 1},
		{"shards lowered to capacity", 3, 16, nil, 2},
		{"zero capacity", 0, 16, ErrInvalidOptions, 0},
		{"not power of two", 100, 6, ErrInvalidOptions, 0},
		{"negative shards", 100, -2, ErrInvalidOptions, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := newCore(tc.capacity, tc.shards)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("newCore error = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if len(c.shards) != tc.wantShards {
				t.Errorf("shards = %d, want %d", len(c.shards), tc.wantShards)
			}
			var sum int64
			for i := range c.shards {
				s := &c.shards[i]
				sum += s.capacity
				if s.capacity < 1 || uint64(len(s.slots)) <= uint64(s.capacity) {
					t.Errorf("shard %d: capacity %d in %d slots", i, s.capacity, len(s.slots))
				}
			}
			if sum != int64(tc.capacity) {
				t.Errorf("shard capacities sum to %d, want %d", sum, tc.capacity)
			}
		})
	}
}

func testKey(i int) key {
	a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	if i%3 == 0 {
		a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)})
	}
	k, _ := makeKey(1+i%5, a)
	return k
}

// TestCoreAgainstMap drives random inserts, updates and deletes (with
// backward-shift deletion exercised by high load) and checks every key
// against a plain map after each step.
func TestCoreAgainstMap(t *testing.T) {
	const capacity = 200
	c, err := newCore(capacity, 4)
	if err != nil {
		t.Fatal(err)
	}
	model := map[key]uint64{}
	rng := rand.New(rand.NewPCG(1, 2))
	var refused uint64
	for step := 0; step < 50000; step++ {
		k := testKey(rng.IntN(400))
		if rng.IntN(3) == 0 {
			_, had := model[k]
			if got := c.remove(k); got != had {
				t.Fatalf("step %d: remove = %v, want %v", step, got, had)
			}
			delete(model, k)
			continue
		}
		v := rng.Uint64() & (1<<48 - 1)
		ok := c.set(k, v)
		if ok {
			model[k] = v
		} else {
			refused++
			if _, had := model[k]; had {
				t.Fatalf("step %d: update of a present key refused", step)
			}
			h := c.hash(k)
			if s := c.shardFor(h); s.used.Load() < s.capacity {
				t.Fatalf("step %d: refused with room in the shard", step)
			}
		}
		if step%97 == 0 {
			got := map[key]uint64{}
			for i := 0; i < 400; i++ {
				if v, ok := c.lookup(testKey(i)); ok {
					got[testKey(i)] = v
				}
			}
			if diff := cmp.Diff(model, got, cmp.AllowUnexported(key{})); diff != "" {
				t.Fatalf("step %d: table differs from model (-want +got):\n%s", step, diff)
			}
			if c.used() != len(model) {
				t.Fatalf("step %d: used %d, model %d", step, c.used(), len(model))
			}
		}
	}
	if refused == 0 || c.refused.Load() != refused {
		t.Errorf("refused counter %d, refusals seen %d (want equal and > 0)", c.refused.Load(), refused)
	}
}

// TestCoreConcurrentLookups races lock-free readers against a writer that
// inserts, moves (via deletes) and updates entries. Keys that are never
// touched must always be found with their value; run with -race.
func TestCoreConcurrentLookups(t *testing.T) {
	c, err := newCore(1024, 4)
	if err != nil {
		t.Fatal(err)
	}
	const stable = 100
	for i := 0; i < stable; i++ {
		c.set(testKey(i), uint64(i))
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var bad atomic.Int64
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				for i := 0; i < stable; i++ {
					if v, ok := c.lookup(testKey(i)); !ok || v != uint64(i) {
						bad.Add(1)
					}
				}
			}
		}()
	}
	for n := 0; n < 20000; n++ {
		k := testKey(stable + n%700)
		if n%2 == 0 {
			c.set(k, uint64(n))
		} else {
			c.remove(testKey(stable + (n*7)%700))
		}
	}
	stop.Store(true)
	wg.Wait()
	if bad.Load() != 0 {
		t.Errorf("%d lookups of untouched keys missed or returned a wrong value", bad.Load())
	}
}
