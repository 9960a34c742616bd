package session

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/policy"
)

// Address translation (dataplane/nat.go). A translated session is one
// slot holding the initiator's tuple as it arrived (its key, as for any
// session) and, in the NAT extension, the tuple its packets leave with
// towards the responder. The responder answers that translated tuple, so
// the session is found from both: by its own key in the index, and by the
// canonical key of the translated tuple in a second, reverse index. The
// extension (a parallel array of 24 bytes per slot and the reverse index,
// about 32 bytes per slot) is allocated by EnableNAT, so a table without
// NAT costs what it did.
//
// Directions: a packet with the session's own tuple is valid only from
// the initiator (Forward); one with the translated tuple only from the
// responder (Reverse, TrackReply). The two other forms (the reply to the
// untranslated tuple, or the initiator's packet already translated) are
// never produced by the session's endpoints and are reported as
// Untranslated without touching the session: a spoofed reply to the
// inside address cannot mark a session replied.
//
// When a translated session ends (for any reason: expiry, RST/FIN then
// the closed timeout, early drop, EndIf, Remove) its reverse entry is
// removed and the release hook given to EnableNAT is called with the
// translation, under the session's shard lock, so the caller returns the
// pool slot exactly once.

// NAT is the translation of an IPv4 session: the source and destination
// its initiator's packets leave with (an ICMP echo's identifier is its
// port, the same on both sides, as in a Tuple). Tag is the caller's (for
// instance the rules that translated it); the table stores it and hands
// it back.
type NAT struct {
	Src, Dst         [4]byte
	SrcPort, DstPort uint16
	Tag              uint64
}

// Tuple returns the translated tuple of a session of protocol proto: the
// initiator's packets as they leave.
func (x *NAT) Tuple(proto uint8) Tuple {
	t := Tuple{Family: policy.FamilyIPv4, Proto: proto, SrcPort: x.SrcPort, DstPort: x.DstPort}
	copy(t.Src[:4], x.Src[:])
	copy(t.Dst[:4], x.Dst[:])
	return t
}

// Errors of CreateNAT, unwrapped (the datapath does not allocate).
var (
	// ErrNATClash means the translated tuple is already another
	// session's (its own tuple or its translated one): the flow cannot be
	// told apart from that session's and is not created.
	ErrNATClash = errors.New("translated tuple in use")
	// ErrNATDisabled means EnableNAT was not called, or the flow is not
	// IPv4.
	ErrNATDisabled = errors.New("address translation not enabled for this flow")
)

// natState is the NAT extension of a table.
type natState struct {
	// ext holds each slot's translation (by global slot number): word 0
	// the addresses, word 1 the ports, the protocol and a live bit, word
	// 2 the tag. Written under the slot's shard lock, read atomically.
	ext []natSlot
	// rev is the reverse index, sharded like the table by the top bits of
	// the translated key's hash: words hash32<<32 | global slot+1.
	rev     []revShard
	release func(NAT)
	active  atomic.Int64
}

type natSlot [3]uint64

const natLive = 1 << 8

type revShard struct {
	mu    sync.Mutex
	index []uint64
	mask  uint32
	n     uint32
	limit uint32
	_     [20]byte // one cache line per shard
}

// revWords sizes the reverse index of a shard of c slots: twice c
// (rounded up to a power of two, at least 16), filled to at most 3/4. The
// translated keys of a shard's sessions hash to every reverse shard, so a
// reverse shard has no hard bound of its own; at 1.5 times its mean a
// refusal (ErrFull) is vanishingly rare.
func revWords(c uint32) uint32 {
	n := uint32(16)
	for n < 2*c {
		n <<= 1
	}
	return n
}

// NATBytes is what EnableNAT allocates for a table of New(capacity,
// shards), computed without allocating (the capability gate's memory
// estimate; a test compares it with EnableNAT's real allocation).
func NATBytes(capacity, shards uint32) uint64 {
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
	per, extra := capacity/shards, capacity%shards
	var words uint64
	for i := range shards {
		c := per
		if i < extra {
			c++
		}
		words += uint64(revWords(c))
	}
	return uint64(capacity)*uint64(unsafe.Sizeof(natSlot{})) + words*8 +
		uint64(shards)*uint64(unsafe.Sizeof(revShard{})) + uint64(unsafe.Sizeof(natState{}))
}

// EnableNAT allocates the NAT extension (once; later calls do nothing)
// and sets release, called with the translation of every translated
// session that ends, under that session's shard lock: it must not call
// the table. Safe concurrently with the datapath.
func (t *Table) EnableNAT(release func(NAT)) {
	if t.nat.Load() != nil {
		return
	}
	ns := &natState{ext: make([]natSlot, t.capacity), rev: make([]revShard, len(t.shards)), release: release}
	for i := range ns.rev {
		r := &ns.rev[i]
		w := revWords(t.shards[i].cap)
		r.index, r.mask, r.limit = make([]uint64, w), w-1, w/4*3
	}
	t.nat.CompareAndSwap(nil, ns)
}

// NATEnabled reports whether EnableNAT was called.
func (t *Table) NATEnabled() bool { return t.nat.Load() != nil }

// NATActive returns the number of live translated sessions.
func (t *Table) NATActive() int64 {
	if ns := t.nat.Load(); ns != nil {
		return ns.active.Load()
	}
	return 0
}

func (ns *natState) load(g uint32) NAT {
	e := &ns.ext[g]
	w0, w1 := atomic.LoadUint64(&e[0]), atomic.LoadUint64(&e[1])
	var x NAT
	binary.BigEndian.PutUint32(x.Src[:], uint32(w0>>32))
	binary.BigEndian.PutUint32(x.Dst[:], uint32(w0))
	x.SrcPort, x.DstPort = uint16(w1>>48), uint16(w1>>32)
	x.Tag = atomic.LoadUint64(&e[2])
	return x
}

// loadKey returns the canonical key of slot g's translated tuple, or false
// when the slot holds no translation.
func (ns *natState) loadKey(g uint32) (key, bool) {
	w1 := atomic.LoadUint64(&ns.ext[g][1])
	if w1&natLive == 0 {
		return key{}, false
	}
	x := ns.load(g)
	tp := x.Tuple(uint8(w1 >> 16))
	k, _ := canonical(&tp)
	return k, true
}

func (ns *natState) store(g uint32, x *NAT, proto uint8) {
	e := &ns.ext[g]
	atomic.StoreUint64(&e[0], uint64(binary.BigEndian.Uint32(x.Src[:]))<<32|uint64(binary.BigEndian.Uint32(x.Dst[:])))
	atomic.StoreUint64(&e[2], x.Tag)
	atomic.StoreUint64(&e[1], uint64(x.SrcPort)<<48|uint64(x.DstPort)<<32|uint64(proto)<<16|natLive)
}

func (ns *natState) clear(g uint32) {
	e := &ns.ext[g]
	atomic.StoreUint64(&e[1], 0)
	atomic.StoreUint64(&e[0], 0)
	atomic.StoreUint64(&e[2], 0)
}

func (t *Table) revShardOf(ns *natState, h uint64) *revShard {
	if t.shift == 64 {
		return &ns.rev[0]
	}
	return &ns.rev[h>>t.shift]
}

// locate maps a global slot number to its shard, shard index and slot.
func (t *Table) locate(g uint32) (*shard, int, int) {
	big := t.extra * (t.per + 1)
	var si, n uint32
	if g < big {
		si, n = g/(t.per+1), g%(t.per+1)
	} else {
		si, n = t.extra+(g-big)/t.per, (g-big)%t.per
	}
	return &t.shards[si], int(si), int(n)
}

// revFind returns the global slot whose translated key is k (hash h);
// the reverse shard is locked meanwhile.
func (t *Table) revFind(ns *natState, k *key, h uint64) (uint32, bool) {
	r := t.revShardOf(ns, h)
	r.mu.Lock()
	defer r.mu.Unlock()
	_, g, ok := r.find(ns, k, h)
	return g, ok
}

// find is revFind with r.mu held; pos is the index position.
func (r *revShard) find(ns *natState, k *key, h uint64) (pos int, g uint32, ok bool) {
	h32 := uint32(h)
	i := h32 & r.mask
	for {
		e := r.index[i]
		if e == 0 {
			return -1, 0, false
		}
		if uint32(e>>32) == h32 {
			g := uint32(e) - 1
			if rk, live := ns.loadKey(g); live && rk == *k {
				return int(i), g, true
			}
		}
		i = (i + 1) & r.mask
	}
}

// unindex removes position pos by backward-shift deletion (as shard's).
func (r *revShard) unindex(pos int) {
	i := uint32(pos)
	r.index[i] = 0
	j := i
	for {
		j = (j + 1) & r.mask
		e := r.index[j]
		if e == 0 {
			break
		}
		home := uint32(e>>32) & r.mask
		if i <= j {
			if home > i && home <= j {
				continue
			}
		} else if home > i || home <= j {
			continue
		}
		r.index[i] = e
		r.index[j] = 0
		i = j
	}
	r.n--
}

// natInsert writes x as slot g's translation and adds its reverse entry;
// the slot's shard lock is held and the slot is not yet published.
func (t *Table) natInsert(g uint32, x *NAT, proto uint8) error {
	ns := t.nat.Load()
	if ns == nil {
		return ErrNATDisabled
	}
	tp := x.Tuple(proto)
	rk, _ := canonical(&tp)
	rh := t.hash(&rk)
	if t.peek(&rk, rh) {
		return ErrNATClash
	}
	r := t.revShardOf(ns, rh)
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, _, dup := r.find(ns, &rk, rh); dup {
		return ErrNATClash
	}
	if r.n >= r.limit {
		return ErrFull
	}
	ns.store(g, x, proto)
	i := uint32(rh) & r.mask
	for r.index[i] != 0 {
		i = (i + 1) & r.mask
	}
	r.index[i] = uint64(uint32(rh))<<32 | uint64(g+1)
	r.n++
	ns.active.Add(1)
	return nil
}

// natRelease removes slot g's reverse entry and hands its translation to
// the release hook; g's shard lock is held.
func (t *Table) natRelease(g uint32) {
	ns := t.nat.Load()
	if ns == nil {
		return
	}
	rk, live := ns.loadKey(g)
	if !live {
		return
	}
	x := ns.load(g)
	rh := t.hash(&rk)
	r := t.revShardOf(ns, rh)
	r.mu.Lock()
	want := uint64(uint32(rh))<<32 | uint64(g+1)
	for i := uint32(rh) & r.mask; r.index[i] != 0; i = (i + 1) & r.mask {
		if r.index[i] == want {
			r.unindex(int(i))
			break
		}
	}
	r.mu.Unlock()
	ns.clear(g)
	ns.active.Add(-1)
	if ns.release != nil {
		ns.release(x)
	}
}

// peek reports whether k is a live session's own key, without a lock (a
// racing insert may be missed: the clash check it serves is best effort
// against such a race, exact otherwise).
func (t *Table) peek(k *key, h uint64) bool {
	s, _ := t.shardOf(h)
	h32 := uint32(h)
	i := h32 & s.mask
	for range s.mask + 1 {
		e := atomic.LoadUint64(&s.index[i])
		if e == 0 {
			return false
		}
		if uint32(e>>32) == h32 {
			n := uint32(e) - 1
			if n < uint32(len(s.slots)) {
				sl := &s.slots[n]
				k4 := atomic.LoadUint64(&sl.key[4])
				if k4&flagLive != 0 && (k4^k[4])&keyMask == 0 && atomic.LoadUint64(&sl.key[0]) == k[0] &&
					atomic.LoadUint64(&sl.key[1]) == k[1] && atomic.LoadUint64(&sl.key[2]) == k[2] && atomic.LoadUint64(&sl.key[3]) == k[3] {
					return true
				}
			}
		}
		i = (i + 1) & s.mask
	}
	return false
}

// CreateNAT is Create for a translated flow: p is the first packet as it
// arrived (the initiator's tuple), x the tuple its packets leave with.
// Besides Create's errors it fails with ErrNATDisabled (EnableNAT not
// called, or p not IPv4) and ErrNATClash. When the flow already has a
// session that one is returned (created false) and x is not used: the
// caller returns whatever it allocated for x, as it does on error. The
// release hook is called only for sessions CreateNAT created.
func (t *Table) CreateNAT(p *Packet, st dataplane.SessionState, from, to uint16, now int64, x NAT) (Entry, bool, error) {
	if t.nat.Load() == nil || p.Tuple.Family != policy.FamilyIPv4 {
		return Entry{}, false, ErrNATDisabled
	}
	return t.create(p, st, false, from, to, now, &x)
}

// TrackReply is Track for a packet that missed Track: it finds the
// translated session whose translated tuple is p's and applies p to it as
// a packet of the reply direction (zone check, state, idle timer,
// counters). A packet with the translated tuple in the initiator's
// orientation is Untranslated. Without EnableNAT, or for no such session,
// it reports a Miss. It locks the reverse shard, then the session's
// shard (reply packets reach it only on a flow-cache miss).
func (t *Table) TrackReply(p *Packet, now int64) Result {
	ns := t.nat.Load()
	if ns == nil || p.Tuple.Family != policy.FamilyIPv4 {
		return Result{}
	}
	k, _ := canonical(&p.Tuple)
	h := t.hash(&k)
	g, ok := t.revFind(ns, &k, h)
	if !ok {
		return Result{}
	}
	s, si, n := t.locate(g)
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := &s.slots[n]
	if k4 := atomic.LoadUint64(&sl.key[4]); k4&flagLive == 0 || k4&flagNAT == 0 {
		return Result{}
	}
	if rk, live := ns.loadKey(g); !live || rk != k {
		return Result{} // freed, and maybe reused, since revFind
	}
	if t.expiredAt(sl, now) {
		t.removeSlot(s, n)
		s.expired.Add(1)
		return Result{}
	}
	ref := Ref{Shard: uint32(si), Slot: uint32(n), Gen: sl.seq}
	x := ns.load(g)
	if [4]byte(p.Tuple.Src[:4]) != x.Dst || p.Tuple.SrcPort != x.DstPort {
		k4 := atomic.LoadUint64(&sl.key[4])
		return Result{Verdict: Untranslated, Ref: ref, Dir: Forward, State: stateOf(k4), Assured: k4&flagAssured != 0, NAT: true}
	}
	return t.apply(s, n, ref, Reverse, p, now, true)
}

// Translation returns the session ref names, if it is translated: its
// tuple (initiator to responder, as it arrived) and its translation. It
// takes no lock (the slot's seqlock validates the copy), for the flow
// cache's hits on translated flows.
func (t *Table) Translation(ref Ref) (orig Tuple, x NAT, ok bool) {
	ns := t.nat.Load()
	if ns == nil || int(ref.Shard) >= len(t.shards) {
		return Tuple{}, NAT{}, false
	}
	s := &t.shards[ref.Shard]
	if ref.Slot >= uint32(len(s.slots)) {
		return Tuple{}, NAT{}, false
	}
	sl := &s.slots[ref.Slot]
	if atomic.LoadUint32(&sl.seq) != ref.Gen {
		return Tuple{}, NAT{}, false
	}
	k := sl.loadKey()
	if k[4]&flagLive == 0 || k[4]&flagNAT == 0 {
		return Tuple{}, NAT{}, false
	}
	x = ns.load(s.base + ref.Slot)
	if atomic.LoadUint32(&sl.seq) != ref.Gen {
		return Tuple{}, NAT{}, false
	}
	return k.tuple(k[4]&flagReversed != 0), x, true
}

// Rewrite returns what the packets of direction d of the translated
// session ref names are rewritten to (source, destination and their
// ports): the translated tuple for the initiator's (Forward), the
// initiator's tuple reversed for the responder's (Reverse); Tag is the
// translation's for Forward, zero for Reverse. It takes no lock (the
// slot's seqlock validates the copy).
func (t *Table) Rewrite(ref Ref, d Dir) (NAT, bool) {
	sl, g, q, ok := t.natSlot(ref)
	if !ok {
		return NAT{}, false
	}
	x := t.rewriteOf(sl, g, d)
	return x, atomic.LoadUint32(&sl.seq) == q
}

// TouchRewrite is Touch and Rewrite in one for the flow cache's hits on
// translated flows: it refreshes the session and returns the rewrite of
// direction d, false when the session is gone (or, expired, was removed).
func (t *Table) TouchRewrite(ref Ref, now int64, size uint32, d Dir) (NAT, bool) {
	sl, g, q, ok := t.natSlot(ref)
	if !ok {
		return NAT{}, false
	}
	if t.expiredAt(sl, now) {
		if !t.Touch(ref, now, size) { // removes it, unless refreshed meanwhile
			return NAT{}, false
		}
		return t.Rewrite(ref, d)
	}
	x := t.rewriteOf(sl, g, d)
	if atomic.LoadUint32(&sl.seq) != q {
		return NAT{}, false
	}
	sl.account(now, size)
	return x, true
}

// natSlot returns the live translated slot ref names, its global number
// and its seqlock value.
func (t *Table) natSlot(ref Ref) (*slot, uint32, uint32, bool) {
	if t.nat.Load() == nil || int(ref.Shard) >= len(t.shards) {
		return nil, 0, 0, false
	}
	s := &t.shards[ref.Shard]
	if ref.Slot >= uint32(len(s.slots)) {
		return nil, 0, 0, false
	}
	sl := &s.slots[ref.Slot]
	q := atomic.LoadUint32(&sl.seq)
	if q != ref.Gen || atomic.LoadUint64(&sl.key[4])&(flagLive|flagNAT) != flagLive|flagNAT {
		return nil, 0, 0, false
	}
	return sl, s.base + ref.Slot, q, true
}

// rewriteOf is Rewrite's read of slot sl (global number g); the caller
// validates it with the seqlock.
func (t *Table) rewriteOf(sl *slot, g uint32, d Dir) NAT {
	if d == Forward {
		return t.nat.Load().load(g)
	}
	// The initiator's endpoint becomes the destination: straight from the
	// key's words (IPv4 addresses are the top halves of words 0 and 2, the
	// ports the low halves of word 4).
	var x NAT
	k4 := atomic.LoadUint64(&sl.key[4])
	a, b := uint32(atomic.LoadUint64(&sl.key[0])>>32), uint32(atomic.LoadUint64(&sl.key[2])>>32)
	pa, pb := uint16(k4), uint16(k4>>16)
	if k4&flagReversed != 0 {
		a, b, pa, pb = b, a, pb, pa
	}
	binary.BigEndian.PutUint32(x.Src[:], b)
	binary.BigEndian.PutUint32(x.Dst[:], a)
	x.SrcPort, x.DstPort = pb, pa
	return x
}

// Relation says how an ICMP error relates to a session (Relate).
type Relation struct {
	// OK: the error quotes a live session, travels towards the quoted
	// packet's sender and arrived from the session's zone on the quoted
	// destination's side.
	OK bool
	// Translated: the session is translated; Tuple and NAT are its tuples
	// and Quote says which packet of it the error quotes: Forward, the
	// initiator's packet as it left (translated), which the error carries
	// back to the initiator; Reverse, the responder's packet as it was
	// delivered (untranslated), which the error carries back to the
	// responder. The quote and the error's addresses are to be translated
	// accordingly.
	Translated bool
	Tuple      Tuple
	NAT        NAT
	Quote      Dir
}

// Relate is Related for a table with translated sessions: it also finds
// a translated session by the tuple its initiator's packets leave with,
// and says how to translate the error (Relation). For an untranslated
// session it answers as Related. It neither refreshes nor counts
// anything, and takes the shard locks (errors are rare).
func (t *Table) Relate(q Tuple, zone uint16, now int64) Relation {
	k, rev := canonical(&q)
	h := t.hash(&k)
	s, _ := t.shardOf(h)
	s.mu.Lock()
	if _, n := s.find(&k, h); n >= 0 && !t.expiredAt(&s.slots[n], now) {
		defer s.mu.Unlock()
		sl := &s.slots[n]
		k4 := atomic.LoadUint64(&sl.key[4])
		dq := dirOf(sl, rev)
		d := Reverse // the error travels against the quoted packet
		if dq == Reverse {
			d = Forward
		}
		r := Relation{OK: zoneOK(atomic.LoadUint32(&sl.zones), d, zone)}
		if k4&flagNAT != 0 {
			// Only the reply as delivered is ever quoted by its own key:
			// the initiator's packets leave translated.
			ns := t.nat.Load()
			if dq != Reverse || ns == nil {
				return Relation{}
			}
			key := sl.loadKey()
			r.Translated, r.Tuple, r.NAT, r.Quote = true, key.tuple(k4&flagReversed != 0), ns.load(s.base+uint32(n)), Reverse
		}
		return r
	}
	s.mu.Unlock()
	ns := t.nat.Load()
	if ns == nil || q.Family != policy.FamilyIPv4 {
		return Relation{}
	}
	g, ok := t.revFind(ns, &k, h)
	if !ok {
		return Relation{}
	}
	ms, _, n := t.locate(g)
	ms.mu.Lock()
	defer ms.mu.Unlock()
	sl := &ms.slots[n]
	k4 := atomic.LoadUint64(&sl.key[4])
	if k4&flagLive == 0 || k4&flagNAT == 0 || t.expiredAt(sl, now) {
		return Relation{}
	}
	if rk, live := ns.loadKey(g); !live || rk != k {
		return Relation{}
	}
	x := ns.load(g)
	if [4]byte(q.Src[:4]) != x.Src || q.SrcPort != x.SrcPort {
		return Relation{} // the reply before translation: never seen outside
	}
	// The quote is the initiator's packet as it left; the error travels
	// back to the initiator, from the responder's side.
	key := sl.loadKey()
	return Relation{OK: zoneOK(atomic.LoadUint32(&sl.zones), Reverse, zone), Translated: true,
		Tuple: key.tuple(k4&flagReversed != 0), NAT: x, Quote: Forward}
}
