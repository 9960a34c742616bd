package neigh

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
)

// Errors returned when a table is built or fed.
var (
	// ErrInvalidOptions: capacity or shard count out of range.
	ErrInvalidOptions = errors.New("invalid neighbour table options")
	// ErrClosed: the table was closed.
	ErrClosed = errors.New("neighbour table closed")
)

// DefaultShards is the shard count when Options.Shards is zero.
const DefaultShards = 16

// maxProbe bounds a reader's probe loop so a torn view (the seqlock
// rejects it afterwards anyway) can never spin forever.
const maxProbe = 1 << 20

// key packs (ifindex, address) into three words. w0 holds the ifindex in
// the high half and the family (4 or 6, never 0) in the low half, so a
// slot whose w0 is zero is empty.
type key struct{ w0, w1, w2 uint64 }

func makeKey(ifindex int, addr netip.Addr) (key, bool) {
	if ifindex <= 0 || ifindex > 1<<31-1 || !addr.IsValid() {
		return key{}, false
	}
	fam := uint64(6)
	if addr.Is4() {
		fam = 4
	}
	b := addr.As16()
	return key{
		w0: uint64(ifindex)<<32 | fam,
		w1: binary.BigEndian.Uint64(b[:8]),
		w2: binary.BigEndian.Uint64(b[8:]),
	}, true
}

func (k key) ifindex() int { return int(k.w0 >> 32) }

func (k key) addr() netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], k.w1)
	binary.BigEndian.PutUint64(b[8:], k.w2)
	a := netip.AddrFrom16(b)
	if k.w0&0xffffffff == 4 {
		return a.Unmap()
	}
	return a
}

// value packs the MAC into the low 48 bits and the NUD state above it.
func packValue(mac [6]byte, state uint16) uint64 {
	var b [8]byte
	copy(b[2:], mac[:])
	return binary.BigEndian.Uint64(b[:]) | uint64(state)<<48
}

func unpackMAC(v uint64) (mac [6]byte) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	copy(mac[:], b[2:])
	return mac
}

// slot is one open-addressing cell. Every field is atomic because readers
// run without the shard lock and validate with the shard's seqlock.
type slot struct {
	k0, k1, k2, v atomic.Uint64
}

type shard struct {
	// seq is odd while a writer moves or (un)fills slots.
	seq  atomic.Uint64
	used atomic.Int64
	mu   sync.Mutex // serialises writers of this shard
	// capacity is this shard's share of the table; slots is at least 4/3
	// of it so linear probes stay short and an empty cell always exists.
	capacity int64
	mask     uint64
	slots    []slot
	_        [64]byte // keep neighbouring shards' seq off this cache line
}

// core is the lock-free-read, fixed-capacity table the kernel feed writes.
type core struct {
	seed       uint64
	shardShift uint
	shards     []shard
	capacity   int64
	refused    atomic.Uint64
}

func newCore(capacity uint32, shards int) (*core, error) {
	if capacity == 0 {
		return nil, fmt.Errorf("build neighbour table: capacity 0: %w", ErrInvalidOptions)
	}
	if shards <= 0 || shards&(shards-1) != 0 || shards > 1<<16 {
		return nil, fmt.Errorf("build neighbour table: %d shards is not a power of two in [1, 65536]: %w", shards, ErrInvalidOptions)
	}
	// More shards than entries would leave shards with no room at all.
	for shards > 1 && uint32(shards) > capacity {
		shards >>= 1
	}
	var sb [8]byte
	if _, err := rand.Read(sb[:]); err != nil {
		return nil, fmt.Errorf("seed neighbour table: %w", err)
	}
	c := &core{
		seed:       binary.LittleEndian.Uint64(sb[:]),
		shardShift: uint(64 - bits.TrailingZeros(uint(shards))),
		shards:     make([]shard, shards),
		capacity:   int64(capacity),
	}
	per, extra := int64(capacity)/int64(shards), int64(capacity)%int64(shards)
	for i := range c.shards {
		s := &c.shards[i]
		s.capacity = per
		if int64(i) < extra {
			s.capacity++
		}
		n := uint64(1)
		for n < uint64(s.capacity)*4/3+1 {
			n <<= 1
		}
		s.mask = n - 1
		s.slots = make([]slot, n)
	}
	return c, nil
}

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

func (c *core) hash(k key) uint64 {
	h := mix(k.w0^c.seed, 0x9e3779b97f4a7c15)
	h = mix(h^k.w1, 0xbf58476d1ce4e5b9)
	return mix(h^k.w2, 0x94d049bb133111eb)
}

func (c *core) shardFor(h uint64) *shard {
	// A shift of 64 (one shard) yields 0 for unsigned operands in Go.
	return &c.shards[h>>c.shardShift]
}

// lookup returns the value word for k. It never blocks: it retries only
// while a writer is moving slots of this shard.
func (c *core) lookup(k key) (uint64, bool) {
	h := c.hash(k)
	s := c.shardFor(h)
	for spins := 0; ; spins++ {
		s1 := s.seq.Load()
		if s1&1 != 0 {
			if spins > 64 {
				runtime.Gosched()
			}
			continue
		}
		v, ok := s.find(k, h)
		if s.seq.Load() == s1 {
			return v, ok
		}
	}
}

func (s *shard) find(k key, h uint64) (uint64, bool) {
	i := h & s.mask
	for n := 0; n <= int(s.mask) && n < maxProbe; n++ {
		sl := &s.slots[i]
		k0 := sl.k0.Load()
		if k0 == 0 {
			return 0, false
		}
		if k0 == k.w0 && sl.k1.Load() == k.w1 && sl.k2.Load() == k.w2 {
			return sl.v.Load(), true
		}
		i = (i + 1) & s.mask
	}
	return 0, false
}

// locate returns the slot index holding k, or the empty index where it
// would go. Caller holds s.mu.
func (s *shard) locate(k key, h uint64) (uint64, bool) {
	i := h & s.mask
	for {
		sl := &s.slots[i]
		k0 := sl.k0.Load()
		if k0 == 0 {
			return i, false
		}
		if k0 == k.w0 && sl.k1.Load() == k.w1 && sl.k2.Load() == k.w2 {
			return i, true
		}
		i = (i + 1) & s.mask
	}
}

// set inserts or updates k. It reports false, and counts a refusal, when
// k is new and its shard is full: nothing is ever evicted.
func (c *core) set(k key, v uint64) bool {
	h := c.hash(k)
	s := c.shardFor(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	i, found := s.locate(k, h)
	sl := &s.slots[i]
	if found {
		// A value word is read atomically after the key matched, so an
		// in-place change needs no seqlock: readers see old or new.
		sl.v.Store(v)
		return true
	}
	if s.used.Load() >= s.capacity {
		c.refused.Add(1)
		return false
	}
	s.seq.Add(1)
	sl.v.Store(v)
	sl.k1.Store(k.w1)
	sl.k2.Store(k.w2)
	sl.k0.Store(k.w0)
	s.seq.Add(1)
	s.used.Add(1)
	return true
}

// remove deletes k with backward-shift deletion (no tombstones). It
// reports whether k was present.
func (c *core) remove(k key) bool {
	h := c.hash(k)
	s := c.shardFor(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	i, found := s.locate(k, h)
	if !found {
		return false
	}
	s.seq.Add(1)
	for {
		j := i
		for {
			j = (j + 1) & s.mask
			sj := &s.slots[j]
			k0 := sj.k0.Load()
			if k0 == 0 {
				s.slots[i].k0.Store(0)
				s.seq.Add(1)
				s.used.Add(-1)
				return true
			}
			home := c.hash(key{k0, sj.k1.Load(), sj.k2.Load()}) & s.mask
			// Move j into the hole at i unless j's home lies cyclically
			// in (i, j], where the hole does not break its probe chain.
			if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
				si := &s.slots[i]
				si.k0.Store(k0)
				si.k1.Store(sj.k1.Load())
				si.k2.Store(sj.k2.Load())
				si.v.Store(sj.v.Load())
				i = j
				break
			}
		}
	}
}

// keys returns every key in the table; for the resync sweep, off the
// datapath.
func (c *core) keys() []key {
	var out []key
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for j := range s.slots {
			sl := &s.slots[j]
			if k0 := sl.k0.Load(); k0 != 0 {
				out = append(out, key{k0, sl.k1.Load(), sl.k2.Load()})
			}
		}
		s.mu.Unlock()
	}
	return out
}

func (c *core) used() int {
	var n int64
	for i := range c.shards {
		n += c.shards[i].used.Load()
	}
	return int(n)
}
