// Package flowcache is the per-worker flow cache of the userspace datapath:
// a fixed-size, 4-way set-associative map from (ingress ifindex, Tuple) to
// the forwarding decision last made for that flow (egress binding, MACs,
// session ref), so most packets skip the policy, session and neighbour
// lookups.
//
// # Invalidation
//
// Every entry records the config generation it was made under. Lookup and
// Insert take the current generation; when it differs from the cache's,
// the cache empties itself in O(1) (entries of another generation are
// treated as free slots). Generation 0 is reserved (never applied). Only the
// low 32 bits are stored: a generation 2^32 applies old would look current,
// which no dataplane lives long enough to reach. A cached session ref can
// go stale without a generation change (the session expired or was
// removed): the worker touches the session through the ref and calls
// Invalidate when the touch fails.
//
// When a set is full Insert evicts its ways round-robin; evictions are
// counted.
//
// # Concurrency
//
// A Cache belongs to one worker goroutine: Lookup, Insert and Invalidate
// must not run concurrently with each other. Occupancy, Capacity and
// Evictions may be read from any goroutine at any time (atomics written
// only by the owner), which is how ResourceStats reads it without a lock.
// Nothing allocates after New.
package flowcache

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"sync/atomic"

	"github.com/fwplane/fwplane/internal/policy"
	"github.com/fwplane/fwplane/userspacebackend/internal/session"
)

// Ways is the associativity.
const Ways = 4

// Decision is the cached forwarding decision of a flow.
type Decision struct {
	// Egress is the index of the egress binding (the caller's numbering).
	Egress uint32
	// DstMAC and SrcMAC are written into the frame.
	DstMAC, SrcMAC [6]byte
	// Session is the flow's session, touched on every cached hit.
	Session session.Ref
	// Dir is the packet direction relative to the session's initiator.
	Dir session.Dir
	// NAT: the session is translated; the rewrite comes from it
	// (session.Table.Translation), never from the cache.
	NAT bool
}

// key packs (ingress, tuple) into words, so comparing is six integer
// compares.
type key [6]uint64

func (k *key) equal(o *key) bool {
	return k[0] == o[0] && k[1] == o[1] && k[2] == o[2] && k[3] == o[3] && k[4] == o[4] && k[5] == o[5]
}

type way struct {
	k   key
	gen uint32
	d   Decision
}

type set struct {
	w      [Ways]way
	victim uint8
}

// Cache is a per-worker flow cache. See the package documentation.
type Cache struct {
	sets      []set
	mask      uint64
	seed      uint64
	gen       uint32
	occupied  atomic.Uint32
	evictions atomic.Uint64
	capacity  uint32
}

// New returns a cache with room for at least entries flows (rounded up to
// a power of two, minimum Ways).
func New(entries uint32) *Cache {
	nsets := uint64(1)
	for nsets*Ways < uint64(entries) {
		nsets <<= 1
	}
	return &Cache{
		sets: make([]set, nsets), mask: nsets - 1, seed: rand.Uint64() | 1,
		capacity: uint32(nsets * Ways),
	}
}

func makeKey(in int, t *policy.Tuple) key {
	be := binary.BigEndian
	return key{
		be.Uint64(t.Src[:8]), be.Uint64(t.Src[8:]), be.Uint64(t.Dst[:8]), be.Uint64(t.Dst[8:]),
		uint64(t.SrcPort) | uint64(t.DstPort)<<16 | uint64(t.Proto)<<32 | uint64(t.Family)<<40,
		uint64(in),
	}
}

func (c *Cache) set(k *key) *set {
	h1, l1 := bits.Mul64(k[0]^c.seed, k[1]^0xa0761d6478bd642f)
	h2, l2 := bits.Mul64(k[2]^0xe7037ed1a0b428db, k[3]^0x8ebc6af09c88c6e3)
	h3, l3 := bits.Mul64(k[4]^0x589965cc75374cc3, k[5]^c.seed)
	h, l := bits.Mul64(h1^l1^h2^l2^h3^l3, 0x1d8e4e27c47d124f)
	return &c.sets[(h^l)&c.mask]
}

// sync adopts generation gen: a new generation empties the cache.
func (c *Cache) sync(gen uint64) {
	if g := uint32(gen); g != c.gen {
		c.gen = g
		c.occupied.Store(0)
	}
}

// Lookup returns the cached decision for a packet of t arriving on ifindex
// in, under config generation gen.
func (c *Cache) Lookup(in int, t *policy.Tuple, gen uint64) (Decision, bool) {
	c.sync(gen)
	k := makeKey(in, t)
	s := c.set(&k)
	for i := range s.w {
		w := &s.w[i]
		if w.gen == c.gen && w.k.equal(&k) {
			return w.d, true
		}
	}
	return Decision{}, false
}

// Insert caches d for (in, t) under generation gen, replacing an entry of
// the same flow, filling a free way, or evicting one.
func (c *Cache) Insert(in int, t *policy.Tuple, gen uint64, d Decision) {
	c.sync(gen)
	if c.gen == 0 {
		return // generation 0 marks free ways; never cache under it
	}
	k := makeKey(in, t)
	s := c.set(&k)
	free := -1
	for i := range s.w {
		w := &s.w[i]
		if w.gen != c.gen {
			if free < 0 {
				free = i
			}
			continue
		}
		if w.k.equal(&k) {
			w.d = d
			return
		}
	}
	if free >= 0 {
		s.w[free] = way{k: k, gen: c.gen, d: d}
		c.occupied.Add(1)
		return
	}
	v := s.victim % Ways
	s.victim++
	s.w[v] = way{k: k, gen: c.gen, d: d}
	c.evictions.Add(1)
}

// Invalidate drops the entry of (in, t), if cached.
func (c *Cache) Invalidate(in int, t *policy.Tuple) {
	k := makeKey(in, t)
	s := c.set(&k)
	for i := range s.w {
		w := &s.w[i]
		if w.gen == c.gen && c.gen != 0 && w.k.equal(&k) {
			w.gen = 0
			c.occupied.Add(^uint32(0))
			return
		}
	}
}

// Occupancy returns the number of valid entries.
func (c *Cache) Occupancy() uint32 { return c.occupied.Load() }

// Capacity returns the number of entries the cache holds.
func (c *Cache) Capacity() uint32 { return c.capacity }

// Evictions returns how many valid entries were replaced by other flows.
func (c *Cache) Evictions() uint64 { return c.evictions.Load() }
