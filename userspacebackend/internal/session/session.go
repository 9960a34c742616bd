package session

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/policy"
)

// Tuple is the flow key shared with the packet parser and policy matcher.
type Tuple = policy.Tuple

// ErrFull means the session's shard has no free slot and no expired or
// unassured session among the candidates examined.
var ErrFull = errors.New("session table full")

// EarlyDropSample bounds the slots Create examines in a full shard for an
// expired session (reclaimed) or an unassured one (early drop): the next
// EarlyDropSample slots of the shard from its sweep cursor, which moves
// on, so successive attempts examine the whole shard in turn.
const EarlyDropSample = 64

// AnyZone, as a packet's zone, skips the zone check; as a session's zones
// (Insert) it accepts packets from any zone.
const AnyZone = 0xffff

// TCP flags Track reads.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPAck = 0x10
)

// Dir is the direction of a packet relative to its session's initiator.
type Dir uint8

const (
	Forward Dir = iota // initiator to responder
	Reverse            // responder to initiator
)

func (d Dir) String() string {
	if d == Reverse {
		return "reverse"
	}
	return "forward"
}

// Ref names a session slot cheaply, for a flow cache: Touch with a Ref
// skips the hash lookup. Gen changes whenever the slot is freed, so a stale
// Ref never reaches a newer session in the same slot.
type Ref struct {
	Shard, Slot, Gen uint32
}

// Entry is a copy of one session, seen from its initiator.
type Entry struct {
	Tuple Tuple // initiator -> responder
	// FromZone is the zone of the interface the first packet arrived on,
	// ToZone the zone it was routed to (AnyZone: any).
	FromZone, ToZone uint16
	State            dataplane.SessionState
	Assured          bool
	LastSeen         int64
	Packets          uint64
	Bytes            uint64
	Ref              Ref
	// Translated is set for a session with an address translation
	// (CreateNAT); NAT is that translation.
	Translated bool
	NAT        NAT
}

// key is the canonical (direction-free) form of a tuple: side A is the
// smaller endpoint. Words 0-1 are A's address, 2-3 B's (big-endian loads,
// so comparing words orders addresses), word 4 packs A's port (bits 0-15),
// B's port (16-31), protocol (32-39) and family (40-47). Bits 48-63 of
// word 4 hold the slot flags and are not part of the key. Words instead of
// bytes make comparing and hashing a handful of register operations.
type key [5]uint64

const (
	keyMask      = 1<<48 - 1
	flagLive     = 1 << 48
	flagReversed = 1 << 49 // the initiator is side B
	stateShift   = 50      // bits 50-52: the dataplane.SessionState
	stateMask    = 7 << stateShift
	flagAssured  = 1 << 53
	flagReplied  = 1 << 54 // a packet of the reply direction was seen
	flagFinFwd   = 1 << 55 // FIN seen from the initiator
	flagFinRev   = 1 << 56 // FIN seen from the responder
	flagNAT      = 1 << 57 // a translated session: see nat.go
)

func stateOf(k4 uint64) dataplane.SessionState {
	return dataplane.SessionState((k4 & stateMask) >> stateShift)
}

func withState(k4 uint64, st dataplane.SessionState) uint64 {
	return k4&^stateMask | uint64(st)<<stateShift
}

func (k *key) proto() uint8 { return uint8(k[4] >> 32) }
func (k *key) fam() uint8   { return uint8(k[4] >> 40) }

// slot is 72 bytes; see the package doc for the budget. Fields that the
// lock-free hit path reads are written with atomic stores (under the shard
// lock); last, packets and bytes are also updated atomically by that path,
// and the state bits of key[4] by compare-and-swap.
type slot struct {
	key key // 40, flags and state in key[4]
	// zones is FromZone | ToZone<<16; the free-list link (slot+1) while
	// the slot is free.
	zones uint32
	// seq is a per-slot seqlock: odd while the slot is being rewritten,
	// bumped by two on every insert and every free. A live slot's seq is
	// the Ref generation.
	seq     uint32
	last    int64
	packets uint64
	bytes   uint64
}

// store rewrites the whole slot inside its seqlock; the shard lock is held.
func (sl *slot) store(k *key, zones uint32, last int64, packets, bytes uint64) {
	atomic.AddUint32(&sl.seq, 1)
	for j := range k {
		atomic.StoreUint64(&sl.key[j], k[j])
	}
	atomic.StoreUint32(&sl.zones, zones)
	atomic.StoreInt64(&sl.last, last)
	atomic.StoreUint64(&sl.packets, packets)
	atomic.StoreUint64(&sl.bytes, bytes)
	atomic.AddUint32(&sl.seq, 1)
}

// Every read of key[4] is atomic, under the shard lock too: the lock-free
// hit path moves its state bits by compare-and-swap without the lock.

// loadKey copies the slot's key.
func (sl *slot) loadKey() key {
	return key{atomic.LoadUint64(&sl.key[0]), atomic.LoadUint64(&sl.key[1]), atomic.LoadUint64(&sl.key[2]),
		atomic.LoadUint64(&sl.key[3]), atomic.LoadUint64(&sl.key[4])}
}

// keyEqual reports whether the slot holds key k (flags aside); the shard
// lock is held, so only key[4] can change meanwhile.
func (sl *slot) keyEqual(k *key) bool {
	return sl.key[0] == k[0] && sl.key[1] == k[1] && sl.key[2] == k[2] && sl.key[3] == k[3] &&
		(atomic.LoadUint64(&sl.key[4])^k[4])&keyMask == 0
}

func (sl *slot) live() bool { return atomic.LoadUint64(&sl.key[4])&flagLive != 0 }

// account records one packet on a live slot.
func (sl *slot) account(now int64, size uint32) {
	if now > atomic.LoadInt64(&sl.last) {
		atomic.StoreInt64(&sl.last, now)
	}
	atomic.AddUint64(&sl.packets, 1)
	atomic.AddUint64(&sl.bytes, uint64(size))
}

type shard struct {
	mu        sync.Mutex
	used      atomic.Uint32
	v4, v6    atomic.Uint32
	unassured atomic.Uint32
	expired   atomic.Uint64
	refused   atomic.Uint64
	earlyDrop atomic.Uint64
	reopened  atomic.Uint64
	cap       uint32
	hwm       uint32 // slots [0, hwm) have been handed out at least once
	free      uint32 // head of the free list, slot+1; 0 = empty
	cursor    uint32 // sweep and early-drop position in [0, hwm)
	mask      uint32
	base      uint32 // the global number of slot 0 (NAT extension, reverse index)
	slots     []slot
	index     []uint64 // hash32<<32 | slot+1; 0 = empty
	_         [32]byte // keep neighbouring shards' hot words on other cache lines
}

// Table is a sharded session table. See the package documentation.
type Table struct {
	shards []shard
	shift  uint // hash >> shift selects the shard
	// per and extra say how capacity is split: the first extra shards
	// hold per+1 slots, the others per (global slot numbers, nat.go).
	per, extra uint32
	// nat is the NAT extension, nil until EnableNAT (nat.go).
	nat       atomic.Pointer[natState]
	seed      uint64
	capacity  uint64
	tt        atomic.Pointer[timeoutTable]
	nextSweep atomic.Uint32
	// agingAt is the fill at which early aging starts (80 %).
	agingAt int64
	_       [64]byte
	// used is the table's fill, kept apart from the read-mostly fields:
	// every insert and removal writes it.
	used atomic.Int64
	_    [56]byte
	// aging is set while used >= agingAt; written only when it flips, so
	// the hit path reads a line that stays shared.
	aging atomic.Bool
}

// timeoutTable holds the idle timeouts, in nanoseconds, by protocol class
// (tcp, udp, icmp, other) and state; aged are the same with early aging
// (unassured states divided by the factor).
type timeoutTable struct {
	norm, aged [4][8]int64
}

// New returns a table holding at most capacity sessions in shards shards.
// shards is rounded up to a power of two (0 means the default) and reduced
// so every shard holds at least one session; capacity 0 means the default.
func New(capacity, shards uint32, timeouts dataplane.Timeouts) *Table {
	if capacity == 0 {
		capacity = dataplane.DefaultSessions
	}
	if shards == 0 {
		shards = dataplane.DefaultSessionShards
	}
	if shards&(shards-1) != 0 {
		shards = 1 << bits.Len32(shards)
	}
	for shards > capacity {
		shards >>= 1
	}
	t := &Table{
		shards:   make([]shard, shards),
		shift:    uint(64 - bits.TrailingZeros32(shards)),
		seed:     rand.Uint64() | 1,
		capacity: uint64(capacity),
		agingAt:  (int64(capacity)*4 + 4) / 5,
	}
	t.SetTimeouts(timeouts)
	per, extra := capacity/shards, capacity%shards
	t.per, t.extra = per, extra
	// One array of slots and one of index words for all shards, sliced per
	// shard. (Asking for transparent huge pages on them was measured: no
	// gain, a 1 Mi-session lookup is bound by DRAM latency, not the TLB.)
	var indexWords uint32
	for i := range t.shards {
		s := &t.shards[i]
		s.cap = per
		if uint32(i) < extra {
			s.cap++
		}
		n := uint32(8)
		for n < s.cap+s.cap/3+1 {
			n <<= 1
		}
		s.mask = n - 1
		indexWords += n
	}
	slots := make([]slot, capacity)
	index := make([]uint64, indexWords)
	var base uint32
	for i := range t.shards {
		s := &t.shards[i]
		s.base = base
		base += s.cap
		s.slots, slots = slots[:s.cap:s.cap], slots[s.cap:]
		s.index, index = index[:s.mask+1:s.mask+1], index[s.mask+1:]
	}
	return t
}

// SetTimeouts replaces the idle timeouts and the early aging factor (a
// config change). Sessions are judged by the new timeouts from the next
// lookup on. Safe for concurrent use with the datapath.
func (t *Table) SetTimeouts(timeouts dataplane.Timeouts) {
	tt := &timeoutTable{}
	factor := int64(timeouts.EarlyAgingFactorOrDefault())
	for c, proto := range [4]uint8{6, 17, 1, 0} {
		for st := range 8 {
			d := int64(timeouts.ForState(proto, dataplane.SessionState(st)))
			tt.norm[c][st], tt.aged[c][st] = d, d
			if dataplane.SessionState(st).Unassured() {
				tt.aged[c][st] = d / factor
			}
		}
	}
	t.tt.Store(tt)
}

func protoClass(proto uint8) int {
	switch proto {
	case 6:
		return 0
	case 17:
		return 1
	case 1, 58:
		return 2
	}
	return 3
}

// timeoutOf is the idle timeout of a session whose key word 4 is k4.
func (t *Table) timeoutOf(k4 uint64) int64 {
	tt := t.tt.Load()
	c, st := protoClass(uint8(k4>>32)), (k4&stateMask)>>stateShift
	if t.aging.Load() {
		return tt.aged[c][st]
	}
	return tt.norm[c][st]
}

// TimeoutOf returns the idle timeout, in nanoseconds, of a session of
// IP protocol proto in state st now (early aging included).
func (t *Table) TimeoutOf(proto uint8, st dataplane.SessionState) int64 {
	tt := t.tt.Load()
	if t.aging.Load() {
		return tt.aged[protoClass(proto)][st&7]
	}
	return tt.norm[protoClass(proto)][st&7]
}

// grow adds d (+1 or -1) to the table's fill and flips early aging when
// the fill crosses 80 %.
func (t *Table) grow(d int64) {
	on := t.used.Add(d) >= t.agingAt
	if t.aging.Load() != on {
		t.aging.Store(on)
	}
}

// EarlyAging reports whether the table is at or above 80 % full, when the
// timeouts of unassured states are divided by the early aging factor.
func (t *Table) EarlyAging() bool { return t.aging.Load() }

// canonical returns the direction-free key of tp and whether tp runs from
// side B to side A.
func canonical(tp *Tuple) (k key, reversed bool) {
	be := binary.BigEndian
	s0, d0 := be.Uint64(tp.Src[:8]), be.Uint64(tp.Dst[:8])
	s1, d1 := be.Uint64(tp.Src[8:]), be.Uint64(tp.Dst[8:])
	reversed = s0 > d0 || s0 == d0 && (s1 > d1 || s1 == d1 && tp.SrcPort > tp.DstPort)
	pf := uint64(tp.Proto)<<32 | uint64(tp.Family)<<40
	if reversed {
		return key{d0, d1, s0, s1, uint64(tp.DstPort) | uint64(tp.SrcPort)<<16 | pf}, true
	}
	return key{s0, s1, d0, d1, uint64(tp.SrcPort) | uint64(tp.DstPort)<<16 | pf}, false
}

func (k *key) tuple(reversed bool) Tuple {
	be := binary.BigEndian
	tp := Tuple{Proto: k.proto(), Family: k.fam()}
	a, b := 0, 2
	pa, pb := uint16(k[4]), uint16(k[4]>>16)
	if reversed {
		a, b, pa, pb = b, a, pb, pa
	}
	be.PutUint64(tp.Src[:8], k[a])
	be.PutUint64(tp.Src[8:], k[a+1])
	be.PutUint64(tp.Dst[:8], k[b])
	be.PutUint64(tp.Dst[8:], k[b+1])
	tp.SrcPort, tp.DstPort = pa, pb
	return tp
}

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

const (
	m1 = 0xa0761d6478bd642f
	m2 = 0xe7037ed1a0b428db
	m3 = 0x8ebc6af09c88c6e3
	m4 = 0x589965cc75374cc3
	m5 = 0x1d8e4e27c47d124f
)

func (t *Table) hash(k *key) uint64 {
	h := mix(k[0]^t.seed, k[1]^m1)
	h ^= mix(k[2]^m2, k[3]^m3)
	h ^= mix(k[4]&keyMask^m4, t.seed^m5)
	return mix(h^m1, t.seed^m2)
}

// find returns the index position and slot of k, or -1, -1.
func (s *shard) find(k *key, h uint64) (pos int, sl int) {
	h32 := uint32(h)
	i := h32 & s.mask
	for {
		e := s.index[i]
		if e == 0 {
			return -1, -1
		}
		if uint32(e>>32) == h32 {
			n := int(uint32(e)) - 1
			if s.slots[n].keyEqual(k) {
				return int(i), n
			}
		}
		i = (i + 1) & s.mask
	}
}

// unindex removes index position pos by backward-shift deletion.
func (s *shard) unindex(pos int) {
	i := uint32(pos)
	atomic.StoreUint64(&s.index[i], 0)
	j := i
	for {
		j = (j + 1) & s.mask
		e := s.index[j]
		if e == 0 {
			return
		}
		home := uint32(e>>32) & s.mask
		// e may fill the hole at i unless its home lies cyclically in (i, j].
		if i <= j {
			if home > i && home <= j {
				continue
			}
		} else if home > i || home <= j {
			continue
		}
		atomic.StoreUint64(&s.index[i], e)
		atomic.StoreUint64(&s.index[j], 0)
		i = j
	}
}

// release frees slot n (already unindexed).
func (t *Table) release(s *shard, n int) {
	sl := &s.slots[n]
	if atomic.LoadUint64(&sl.key[4])&flagNAT != 0 {
		t.natRelease(s.base + uint32(n))
	}
	if uint8(atomic.LoadUint64(&sl.key[4])>>40) == policy.FamilyIPv4 {
		s.v4.Add(^uint32(0))
	} else {
		s.v6.Add(^uint32(0))
	}
	if atomic.LoadUint64(&sl.key[4])&flagAssured == 0 {
		s.unassured.Add(^uint32(0))
	}
	sl.store(&key{}, s.free, 0, 0, 0)
	s.free = uint32(n) + 1
	s.used.Add(^uint32(0))
	t.grow(-1)
}

// removeSlot removes live slot n, finding its index position by hashing.
func (t *Table) removeSlot(s *shard, n int) {
	k := s.slots[n].loadKey()
	pos, _ := s.find(&k, t.hash(&k))
	s.unindex(pos)
	t.release(s, n)
}

func (t *Table) expiredAt(sl *slot, now int64) bool {
	return now-atomic.LoadInt64(&sl.last) > t.timeoutOf(atomic.LoadUint64(&sl.key[4]))
}

// entry copies slot n of shard s (index shardIdx); s.mu is held.
func (t *Table) entry(s *shard, n int, shardIdx int) Entry {
	sl := &s.slots[n]
	k := sl.loadKey()
	k4 := k[4]
	z := atomic.LoadUint32(&sl.zones)
	e := Entry{
		Tuple: k.tuple(k4&flagReversed != 0), FromZone: uint16(z), ToZone: uint16(z >> 16),
		State: stateOf(k4), Assured: k4&flagAssured != 0,
		LastSeen: atomic.LoadInt64(&sl.last), Packets: atomic.LoadUint64(&sl.packets), Bytes: atomic.LoadUint64(&sl.bytes),
		Ref: Ref{Shard: uint32(shardIdx), Slot: uint32(n), Gen: sl.seq},
	}
	if k4&flagNAT != 0 {
		if ns := t.nat.Load(); ns != nil {
			e.NAT, e.Translated = ns.load(s.base+uint32(n)), true
		}
	}
	return e
}

func dirOf(sl *slot, reversed bool) Dir {
	if reversed != (atomic.LoadUint64(&sl.key[4])&flagReversed != 0) {
		return Reverse
	}
	return Forward
}

func (t *Table) shardOf(h uint64) (*shard, int) {
	i := int(h >> t.shift)
	if t.shift == 64 {
		i = 0
	}
	return &t.shards[i], i
}

// Packet is what Track needs to know about a packet.
type Packet struct {
	Tuple Tuple
	// Zone is the zone of the interface the packet arrived on; AnyZone
	// skips the zone check.
	Zone uint16
	// TCPFlags is the TCP header's flags byte (0 for other protocols).
	TCPFlags uint8
	// Size is counted in the session's bytes.
	Size uint32
}

// Verdict is what Track found.
type Verdict uint8

const (
	// Miss: no live session (a closed TCP session that a SYN met has just
	// been ended: the SYN is a new flow's first packet).
	Miss Verdict = iota
	// Hit: the session forwards the packet; it was refreshed, counted and
	// moved on by the packet.
	Hit
	// WrongZone: the flow has a live session but the packet arrived from
	// a zone that is neither the session's FromZone (initiator's
	// direction) nor its ToZone (reply direction). The session is left as
	// it was.
	WrongZone
	// Untranslated: the packet has the tuple of a translated session in
	// a form the session's traffic never takes (the reply to the
	// untranslated tuple, or the initiator's packet already translated):
	// see nat.go. The session is left as it was.
	Untranslated
)

// Result is Track's answer.
type Result struct {
	Verdict Verdict
	Ref     Ref
	Dir     Dir
	// State and Assured are the session's after the packet.
	State   dataplane.SessionState
	Assured bool
	// NAT is set when the session is translated: Table.Translation
	// returns its tuples.
	NAT bool
}

// advance returns k4 moved on by a packet of direction d with TCP flags
// (the session model of dataplane/session.go), and whether the packet is
// a SYN meeting a closed session, which ends it instead.
func advance(k4 uint64, d Dir, flags uint8) (uint64, bool) {
	st := stateOf(k4)
	if uint8(k4>>32) != 6 {
		if d == Reverse && st == dataplane.StateUnreplied {
			return withState(k4|flagReplied|flagAssured, dataplane.StateReplied), false
		}
		return k4, false
	}
	if st == dataplane.StateClosed && flags&(TCPSyn|TCPAck|TCPRst) == TCPSyn {
		return k4, true
	}
	if d == Reverse {
		k4 |= flagReplied
	}
	switch {
	case flags&TCPRst != 0:
		st = dataplane.StateClosed
	case flags&TCPFin != 0:
		if d == Forward {
			k4 |= flagFinFwd
		} else {
			k4 |= flagFinRev
		}
		switch {
		case k4&flagFinFwd != 0 && k4&flagFinRev != 0:
			st = dataplane.StateClosed
		case st == dataplane.StateOpening || st == dataplane.StateEstablished:
			st = dataplane.StateClosing
		}
	case st == dataplane.StateOpening && d == Forward && flags&(TCPAck|TCPSyn) == TCPAck && k4&flagReplied != 0:
		st = dataplane.StateEstablished
		k4 |= flagAssured
	}
	if st == dataplane.StateEstablished && k4&flagReplied != 0 {
		// A picked-up session is assured once the other side answers.
		k4 |= flagAssured
	}
	return withState(k4, st), false
}

// moves reports whether a packet may change the session's state: the
// packets of an assured TCP session that carry no SYN, FIN or RST, of a
// replied session, and of an unreplied one in the initiator's direction
// (almost every packet) change nothing.
func moves(k4 uint64, d Dir, flags uint8) bool {
	st := stateOf(k4)
	if uint8(k4>>32) == 6 {
		return st != dataplane.StateEstablished || k4&flagAssured == 0 || flags&(TCPSyn|TCPFin|TCPRst) != 0
	}
	return st == dataplane.StateUnreplied && d == Reverse
}

// zoneOK reports whether a packet of direction d from zone z may use a
// session with zones zs.
func zoneOK(zs uint32, d Dir, z uint16) bool {
	if z == AnyZone {
		return true
	}
	want := uint16(zs)
	if d == Reverse {
		want = uint16(zs >> 16)
	}
	return want == z || want == AnyZone
}

// Track finds the live session of p's flow (either direction) and applies
// the packet to it: the zone check, the state transitions of the session
// model, the idle timer and the counters. See Verdict for the outcomes.
// An expired session is removed and reported as a Miss.
//
// The hit path takes no lock: it probes the index and validates the slot
// with its seqlock, and moves the state bits with a compare-and-swap.
// Anything unusual (a slot being rewritten, an expired session, a miss,
// which a concurrent move of an index word could fake, a closed session
// to end) is settled again under the shard lock, so Track never misses a
// session that exists for its whole duration.
func (t *Table) Track(p *Packet, now int64) Result {
	k, rev := canonical(&p.Tuple)
	return t.track(&k, t.hash(&k), rev, p, now)
}

func (t *Table) track(k *key, h uint64, rev bool, p *Packet, now int64) Result {
	s, si := t.shardOf(h)
	h32 := uint32(h)
	i := h32 & s.mask
	for range s.mask + 1 {
		e := atomic.LoadUint64(&s.index[i])
		if e == 0 {
			break
		}
		if uint32(e>>32) != h32 {
			i = (i + 1) & s.mask
			continue
		}
		n := uint32(e) - 1
		if n >= uint32(len(s.slots)) {
			break
		}
		sl := &s.slots[n]
		q := atomic.LoadUint32(&sl.seq)
		k4 := atomic.LoadUint64(&sl.key[4])
		if q&1 != 0 || k4&flagLive == 0 || (k4^k[4])&keyMask != 0 ||
			atomic.LoadUint64(&sl.key[0]) != k[0] || atomic.LoadUint64(&sl.key[1]) != k[1] ||
			atomic.LoadUint64(&sl.key[2]) != k[2] || atomic.LoadUint64(&sl.key[3]) != k[3] {
			break
		}
		zs := atomic.LoadUint32(&sl.zones)
		if now-atomic.LoadInt64(&sl.last) > t.timeoutOf(k4) || atomic.LoadUint32(&sl.seq) != q {
			break
		}
		d := Forward
		if rev != (k4&flagReversed != 0) {
			d = Reverse
		}
		if k4&flagNAT != 0 && d == Reverse {
			return Result{Verdict: Untranslated, Ref: Ref{Shard: uint32(si), Slot: n, Gen: q}, Dir: d, State: stateOf(k4), Assured: k4&flagAssured != 0, NAT: true}
		}
		if !zoneOK(zs, d, p.Zone) {
			return Result{Verdict: WrongZone, Ref: Ref{Shard: uint32(si), Slot: n, Gen: q}, Dir: d, State: stateOf(k4), Assured: k4&flagAssured != 0}
		}
		nk4, end := k4, false
		if moves(k4, d, p.TCPFlags) {
			nk4, end = advance(k4, d, p.TCPFlags)
		}
		if end {
			break
		}
		if nk4 != k4 {
			if !atomic.CompareAndSwapUint64(&sl.key[4], k4, nk4) {
				break // another packet moved it: settle under the lock
			}
			if nk4&flagAssured != 0 && k4&flagAssured == 0 {
				s.unassured.Add(^uint32(0))
			}
		}
		// A removal racing with this update can leave one packet counted
		// on the slot's next session: counters are statistics, the
		// verdict is exact.
		sl.account(now, p.Size)
		return Result{Verdict: Hit, Ref: Ref{Shard: uint32(si), Slot: n, Gen: q}, Dir: d, State: stateOf(nk4), Assured: nk4&flagAssured != 0,
			NAT: nk4&flagNAT != 0}
	}
	return t.trackLocked(s, si, k, h, rev, p, now)
}

func (t *Table) trackLocked(s *shard, si int, k *key, h uint64, rev bool, p *Packet, now int64) Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	pos, n := s.find(k, h)
	if n < 0 {
		return Result{}
	}
	sl := &s.slots[n]
	if t.expiredAt(sl, now) {
		s.unindex(pos)
		t.release(s, n)
		s.expired.Add(1)
		return Result{}
	}
	d := dirOf(sl, rev)
	ref := Ref{Shard: uint32(si), Slot: uint32(n), Gen: sl.seq}
	return t.apply(s, n, ref, d, p, now, false)
}

// apply moves live, unexpired slot n of s on by p, a packet of direction
// d: the locked half of Track and of TrackReply (reply: p has the
// session's translated tuple, so the reply direction is its own). s.mu is
// held.
func (t *Table) apply(s *shard, n int, ref Ref, d Dir, p *Packet, now int64, reply bool) Result {
	sl := &s.slots[n]
	for {
		// Lock-free hits may move the state bits meanwhile: CAS here too.
		k4 := atomic.LoadUint64(&sl.key[4])
		if k4&flagNAT != 0 && d == Reverse && !reply {
			return Result{Verdict: Untranslated, Ref: ref, Dir: d, State: stateOf(k4), Assured: k4&flagAssured != 0, NAT: true}
		}
		if !zoneOK(atomic.LoadUint32(&sl.zones), d, p.Zone) {
			return Result{Verdict: WrongZone, Ref: ref, Dir: d, State: stateOf(k4), Assured: k4&flagAssured != 0}
		}
		nk4, end := advance(k4, d, p.TCPFlags)
		if end {
			t.removeSlot(s, n)
			s.reopened.Add(1)
			return Result{}
		}
		if nk4 != k4 && !atomic.CompareAndSwapUint64(&sl.key[4], k4, nk4) {
			continue
		}
		if nk4&flagAssured != 0 && k4&flagAssured == 0 {
			s.unassured.Add(^uint32(0))
		}
		sl.account(now, p.Size)
		return Result{Verdict: Hit, Ref: ref, Dir: d, State: stateOf(nk4), Assured: nk4&flagAssured != 0, NAT: nk4&flagNAT != 0}
	}
}

// Lookup is Track for a packet of any zone without TCP flags: it finds
// the live session of tp, counts one packet of size bytes on it and
// returns its ref and the packet's direction. It is for callers that use
// no session model (tests, benchmarks of the table).
func (t *Table) Lookup(tp Tuple, now int64, size uint32) (Ref, Dir, bool) {
	p := Packet{Tuple: tp, Zone: AnyZone, Size: size}
	r := t.Track(&p, now)
	return r.Ref, r.Dir, r.Verdict == Hit
}

// BatchSize is the largest batch TrackBatch takes.
const BatchSize = 64

// Batch is the scratch space and result of TrackBatch. Keep one per
// worker; it is about 8 KiB and reusing it keeps the path allocation-free.
type Batch struct {
	keys   [BatchSize]key
	hashes [BatchSize]uint64
	index  [BatchSize]uint64 // first index word of each key
	rev    [BatchSize]bool
	// Results, one per packet.
	Results [BatchSize]Result
}

// TrackBatch is Track for up to BatchSize packets (more are ignored), with
// the same effects, in order. On a table larger than the CPU caches the
// time of a lookup is its two dependent cache misses (index word, slot),
// so the batch is done in passes that overlap the misses of all its
// lookups: every hash first, then every first index word in a loop that
// does nothing else (so the core has as many loads in flight as it can
// track, not the few that fit between hash computations), then every
// candidate slot likewise, and only then the lookups, which find both in
// cache. It returns the number of hits.
func (t *Table) TrackBatch(b *Batch, ps []Packet, now int64) int {
	n := min(len(ps), BatchSize)
	for i := range n {
		b.keys[i], b.rev[i] = canonical(&ps[i].Tuple)
		b.hashes[i] = t.hash(&b.keys[i])
	}
	for i := range n {
		s, _ := t.shardOf(b.hashes[i])
		b.index[i] = atomic.LoadUint64(&s.index[uint32(b.hashes[i])&s.mask])
	}
	var sink uint64
	for i := range n {
		s, _ := t.shardOf(b.hashes[i])
		e := b.index[i]
		if sl := uint32(e) - 1; e != 0 && uint32(e>>32) == uint32(b.hashes[i]) && sl < uint32(len(s.slots)) {
			// A 72-byte slot spans two cache lines: touch both ends.
			sink += atomic.LoadUint64(&s.slots[sl].key[0]) + atomic.LoadUint64(&s.slots[sl].bytes)
		}
	}
	batchSink.Store(sink) // keeps the touching loads from being optimised away
	hits := 0
	for i := range n {
		b.Results[i] = t.track(&b.keys[i], b.hashes[i], b.rev[i], &ps[i], now)
		if b.Results[i].Verdict == Hit {
			hits++
		}
	}
	return hits
}

var batchSink atomic.Uint64

// Related reports whether q, the packet an ICMP error quotes, belongs to
// a live session and the error, travelling the other way, arrived from
// zone (the session's zone on the quoted packet's destination side). It
// neither refreshes nor counts anything, and takes the shard lock
// (errors are rare). Relate says the same and how to translate the error
// of a translated session.
func (t *Table) Related(q Tuple, zone uint16, now int64) bool {
	return t.Relate(q, zone, now).OK
}

// Get returns a copy of the session ref names.
func (t *Table) Get(ref Ref) (Entry, bool) {
	if int(ref.Shard) >= len(t.shards) {
		return Entry{}, false
	}
	s := &t.shards[ref.Shard]
	s.mu.Lock()
	defer s.mu.Unlock()
	if ref.Slot >= s.hwm || !s.slots[ref.Slot].live() || s.slots[ref.Slot].seq != ref.Gen {
		return Entry{}, false
	}
	return t.entry(s, int(ref.Slot), int(ref.Shard)), true
}

// Create creates the session of p's flow, whose initiator is p.Tuple's
// source, in state st (assured when the state says both sides were seen:
// StateReplied; callers create TCP sessions opening, or established when
// picked up mid-stream, both unassured), between zones from and to, and
// counts p. If the flow already has a live session (in either direction)
// that one is refreshed and returned with created false.
//
// When p's shard is full, Create examines EarlyDropSample slots: every
// expired session among them is reclaimed; if none was, the unassured
// session among them idle the longest is evicted (early drop, counted).
// An assured, unexpired session is never evicted. If nothing could be
// freed Create returns ErrFull and counts the refusal.
func (t *Table) Create(p *Packet, st dataplane.SessionState, from, to uint16, now int64) (e Entry, created bool, err error) {
	return t.create(p, st, st == dataplane.StateReplied, from, to, now, nil)
}

// create is Create, and CreateNAT when x is set (its reverse index
// entry is made under the shard lock, before the session is published).
func (t *Table) create(p *Packet, st dataplane.SessionState, assured bool, from, to uint16, now int64, x *NAT) (e Entry, created bool, err error) {
	k, rev := canonical(&p.Tuple)
	h := t.hash(&k)
	s, si := t.shardOf(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if pos, n := s.find(&k, h); n >= 0 {
		sl := &s.slots[n]
		if !t.expiredAt(sl, now) {
			sl.account(now, p.Size)
			return t.entry(s, n, si), false, nil
		}
		s.unindex(pos)
		t.release(s, n)
		s.expired.Add(1)
	}
	if s.used.Load() >= s.cap && !t.makeRoom(s, now) {
		s.refused.Add(1)
		return Entry{}, false, ErrFull
	}
	var n uint32
	fromFree := s.free != 0
	if fromFree {
		n = s.free - 1
		s.free = s.slots[n].zones
	} else {
		n = s.hwm
		s.hwm++
	}
	if x != nil {
		if err := t.natInsert(s.base+n, x, p.Tuple.Proto); err != nil {
			// Not published: the slot goes back where it came from (its
			// free-list link, zones, still names the rest of the list).
			if fromFree {
				s.free = n + 1
			} else {
				s.hwm--
			}
			return Entry{}, false, err
		}
	}
	sl := &s.slots[n]
	k[4] = withState(k[4]|flagLive, st)
	if x != nil {
		k[4] |= flagNAT
	}
	if rev {
		k[4] |= flagReversed
	}
	if assured {
		k[4] |= flagAssured | flagReplied
	}
	sl.store(&k, uint32(from)|uint32(to)<<16, now, 1, uint64(p.Size))
	h32 := uint32(h)
	i := h32 & s.mask
	for s.index[i] != 0 {
		i = (i + 1) & s.mask
	}
	atomic.StoreUint64(&s.index[i], uint64(h32)<<32|uint64(n+1))
	s.used.Add(1)
	t.grow(1)
	if k.fam() == policy.FamilyIPv4 {
		s.v4.Add(1)
	} else {
		s.v6.Add(1)
	}
	if k[4]&flagAssured == 0 {
		s.unassured.Add(1)
	}
	return t.entry(s, int(n), si), true, nil
}

// makeRoom frees a slot in the full shard s (locked): see Create.
func (t *Table) makeRoom(s *shard, now int64) bool {
	victim, oldest := -1, int64(0)
	freed := false
	for examined := 0; examined < EarlyDropSample && examined < int(s.hwm); examined++ {
		if s.cursor >= s.hwm {
			s.cursor = 0
		}
		n := int(s.cursor)
		s.cursor++
		sl := &s.slots[n]
		k4 := atomic.LoadUint64(&sl.key[4])
		if k4&flagLive == 0 {
			continue
		}
		if t.expiredAt(sl, now) {
			t.removeSlot(s, n)
			s.expired.Add(1)
			freed = true
			continue
		}
		if last := atomic.LoadInt64(&sl.last); k4&flagAssured == 0 && (victim < 0 || last < oldest) {
			victim, oldest = n, last
		}
	}
	if freed {
		return true
	}
	if victim < 0 {
		return false
	}
	t.removeSlot(s, victim)
	s.earlyDrop.Add(1)
	return true
}

// Insert creates the session of tp as Create does, in the protocol's
// established (TCP) or replied state, assured and open to every zone: for
// callers that use no session model (tests, benchmarks of the table).
func (t *Table) Insert(tp Tuple, now int64, size uint32) (Entry, bool, error) {
	st := dataplane.StateReplied
	if tp.Proto == 6 {
		st = dataplane.StateEstablished
	}
	p := Packet{Tuple: tp, Size: size}
	return t.create(&p, st, true, AnyZone, AnyZone, now, nil)
}

// Touch refreshes the session ref names, as Track does for a packet that
// changes no state, without hashing and, on the common path, without a
// lock. It reports false when the slot no longer holds that session
// (freed or reused) or the session expired (it is then removed).
func (t *Table) Touch(ref Ref, now int64, size uint32) bool {
	if int(ref.Shard) >= len(t.shards) {
		return false
	}
	s := &t.shards[ref.Shard]
	if ref.Slot >= uint32(len(s.slots)) {
		return false
	}
	sl := &s.slots[ref.Slot]
	if atomic.LoadUint32(&sl.seq) != ref.Gen || atomic.LoadUint64(&sl.key[4])&flagLive == 0 {
		return false
	}
	if !t.expiredAt(sl, now) {
		if atomic.LoadUint32(&sl.seq) != ref.Gen {
			return false
		}
		sl.account(now, size)
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl.seq != ref.Gen || !sl.live() {
		return false
	}
	if !t.expiredAt(sl, now) { // refreshed by another packet meanwhile
		sl.account(now, size)
		return true
	}
	t.removeSlot(s, int(ref.Slot))
	s.expired.Add(1)
	return false
}

// Remove deletes the session of tp (either direction) and reports whether
// there was one.
func (t *Table) Remove(tp Tuple) bool {
	k, _ := canonical(&tp)
	h := t.hash(&k)
	s, _ := t.shardOf(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	pos, n := s.find(&k, h)
	if n < 0 {
		return false
	}
	s.unindex(pos)
	t.release(s, n)
	return true
}

// EndIf ends every live session for which end returns true and returns
// how many it ended. It locks one shard at a time (end runs under that
// lock and must not call the table); sessions created meanwhile in shards
// already walked are not judged.
func (t *Table) EndIf(end func(*Entry) bool) int {
	ended := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for n := 0; n < int(s.hwm); n++ {
			if !s.slots[n].live() {
				continue
			}
			e := t.entry(s, n, i)
			if end(&e) {
				t.removeSlot(s, n)
				ended++
			}
		}
		s.mu.Unlock()
	}
	return ended
}

// sweep examines up to budget slots of s from its cursor and removes the
// expired sessions; s.mu is held. It returns the slots examined and the
// sessions removed.
func (t *Table) sweep(s *shard, now int64, budget int) (examined, removed int) {
	for examined < budget && examined < int(s.hwm) {
		if s.cursor >= s.hwm {
			s.cursor = 0
		}
		n := int(s.cursor)
		s.cursor++
		examined++
		sl := &s.slots[n]
		if sl.live() && t.expiredAt(sl, now) {
			t.removeSlot(s, n)
			s.expired.Add(1)
			removed++
		}
	}
	return examined, removed
}

// Expire removes expired sessions, examining at most budget slots in all
// (budget <= 0: every slot once), one shard at a time, continuing where the
// previous call stopped. It returns the number of sessions removed. Call it
// from a housekeeping goroutine; it is safe concurrently with the datapath.
func (t *Table) Expire(now int64, budget int) int {
	if budget <= 0 {
		budget = int(^uint(0) >> 1)
	}
	removed := 0
	for range t.shards {
		if budget <= 0 {
			break
		}
		i := int(t.nextSweep.Add(1)-1) & (len(t.shards) - 1)
		s := &t.shards[i]
		s.mu.Lock()
		b := budget
		if hw := int(s.hwm); b > hw {
			b = hw
		}
		ex, rm := t.sweep(s, now, b)
		s.mu.Unlock()
		budget -= ex
		removed += rm
	}
	return removed
}

// Snapshot returns copies of at most limit sessions (limit <= 0: all),
// shard by shard; expired sessions not yet reclaimed are included.
func (t *Table) Snapshot(limit int) []Entry {
	if limit <= 0 || uint64(limit) > t.capacity {
		limit = int(t.Used())
	}
	out := make([]Entry, 0, limit)
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for n := 0; n < int(s.hwm) && len(out) < cap(out); n++ {
			if s.slots[n].live() {
				out = append(out, t.entry(s, n, i))
			}
		}
		s.mu.Unlock()
		if len(out) == cap(out) {
			break
		}
	}
	return out
}

// Capacity returns the total number of sessions the table can hold.
func (t *Table) Capacity() uint64 { return t.capacity }

// Shards returns the number of shards.
func (t *Table) Shards() int { return len(t.shards) }

// Used returns the number of occupied slots.
func (t *Table) Used() uint64 {
	var n uint64
	for i := range t.shards {
		n += uint64(t.shards[i].used.Load())
	}
	return n
}

// ShardUsed returns the occupied slots and the capacity of shard i.
func (t *Table) ShardUsed(i int) (used, capacity uint32) {
	s := &t.shards[i]
	return s.used.Load(), s.cap
}

// Counts returns the sessions by address family.
func (t *Table) Counts() (v4, v6 uint64) {
	for i := range t.shards {
		v4 += uint64(t.shards[i].v4.Load())
		v6 += uint64(t.shards[i].v6.Load())
	}
	return v4, v6
}

// Refused returns how many Creates failed with ErrFull.
func (t *Table) Refused() uint64 {
	var n uint64
	for i := range t.shards {
		n += t.shards[i].refused.Load()
	}
	return n
}

// Unassured returns the sessions not (yet) assured.
func (t *Table) Unassured() uint64 {
	var n uint64
	for i := range t.shards {
		n += uint64(t.shards[i].unassured.Load())
	}
	return n
}

// EarlyDrops returns how many unassured sessions Create evicted to make
// room for a new flow.
func (t *Table) EarlyDrops() uint64 {
	var n uint64
	for i := range t.shards {
		n += t.shards[i].earlyDrop.Load()
	}
	return n
}

// Reopened returns how many closed TCP sessions a SYN ended (a new
// connection reusing the tuple).
func (t *Table) Reopened() uint64 {
	var n uint64
	for i := range t.shards {
		n += t.shards[i].reopened.Load()
	}
	return n
}

// Expired returns how many sessions were removed for idleness.
func (t *Table) Expired() uint64 {
	var n uint64
	for i := range t.shards {
		n += t.shards[i].expired.Load()
	}
	return n
}

// MaxSkew returns the fullest shard's fill divided by the table's mean
// shard fill (both as fractions of capacity): 1 means perfectly even, 1.3
// means the fullest shard is 30 % fuller than average and will refuse
// inserts first. It returns 0 for an empty table.
func (t *Table) MaxSkew() float64 {
	var maxFill float64
	var used uint64
	for i := range t.shards {
		u, c := t.ShardUsed(i)
		used += uint64(u)
		if f := float64(u) / float64(c); f > maxFill {
			maxFill = f
		}
	}
	if used == 0 {
		return 0
	}
	return maxFill / (float64(used) / float64(t.capacity))
}
