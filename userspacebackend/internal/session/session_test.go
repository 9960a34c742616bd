package session

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/policy"
)

var timeouts = dataplane.Timeouts{
	TCP: dataplane.Duration(100 * time.Second), UDP: dataplane.Duration(10 * time.Second),
	ICMP: dataplane.Duration(5 * time.Second), Other: dataplane.Duration(7 * time.Second),
}

const sec = int64(time.Second)

func tup(src, dst string, proto uint8, sport, dport uint16) Tuple {
	return policy.MakeTuple(netip.MustParseAddr(src), netip.MustParseAddr(dst), proto, sport, dport)
}

// genTuple makes distinct tuples from i, v4 or v6, in either endpoint order.
func genTuple(i uint32, v6 bool) Tuple {
	var t Tuple
	t.Proto, t.Family = 17, policy.FamilyIPv4
	t.Src[0], t.Dst[0] = 10, 10
	t.Src[1], t.Src[2], t.Src[3] = byte(i>>16), byte(i>>8), byte(i)
	t.Dst[3] = 1
	t.SrcPort, t.DstPort = uint16(i*7), 53
	if v6 {
		t.Family = policy.FamilyIPv6
		t.Src[15], t.Dst[15] = 9, 9
	}
	if i%2 == 1 {
		t = t.Reverse()
	}
	return t
}

// replied is the state Insert creates a session of proto in.
func replied(proto uint8) dataplane.SessionState {
	if proto == 6 {
		return dataplane.StateEstablished
	}
	return dataplane.StateReplied
}

func TestBothDirectionsOneSession(t *testing.T) {
	tb := New(100, 4, timeouts)
	fwd := tup("10.0.0.9", "10.0.0.1", 6, 40000, 443) // initiator is the larger endpoint
	e, created, err := tb.Insert(fwd, 1*sec, 60)
	if err != nil || !created {
		t.Fatalf("Insert: %v created=%v", err, created)
	}
	type hit struct {
		Ref   Ref
		Dir   Dir
		OK    bool
		Entry Entry
	}
	h1, d1, ok1 := tb.Lookup(fwd.Reverse(), 2*sec, 1500)
	e1, _ := tb.Get(h1)
	h2, d2, ok2 := tb.Lookup(fwd, 3*sec, 40)
	e2, _ := tb.Get(h2)
	est := dataplane.StateEstablished
	want := []hit{
		{e.Ref, Reverse, true, Entry{Tuple: fwd, FromZone: AnyZone, ToZone: AnyZone, State: est, Assured: true, LastSeen: 2 * sec, Packets: 2, Bytes: 1560, Ref: e.Ref}},
		{e.Ref, Forward, true, Entry{Tuple: fwd, FromZone: AnyZone, ToZone: AnyZone, State: est, Assured: true, LastSeen: 3 * sec, Packets: 3, Bytes: 1600, Ref: e.Ref}},
	}
	if diff := cmp.Diff(want, []hit{{h1, d1, ok1, e1}, {h2, d2, ok2, e2}}); diff != "" {
		t.Errorf("lookups (-want +got):\n%s", diff)
	}
	if _, ok := tb.Get(Ref{Shard: 99}); ok {
		t.Errorf("Get of a bad ref")
	}
	// Inserting the reply direction finds the same session.
	again, created, err := tb.Insert(fwd.Reverse(), 4*sec, 0)
	if err != nil || created || again.Ref != e.Ref || again.Tuple != fwd {
		t.Errorf("Insert of reverse: %+v created=%v err=%v", again, created, err)
	}
	if tb.Used() != 1 {
		t.Errorf("Used = %d, want 1 (one flow, two directions)", tb.Used())
	}
	v6 := tup("2001:db8::1", "2001:db8::2", 58, 7, 7)
	if _, _, err := tb.Insert(v6, 4*sec, 0); err != nil {
		t.Fatal(err)
	}
	if _, d, ok := tb.Lookup(v6.Reverse(), 4*sec, 0); !ok || d != Reverse {
		t.Errorf("icmpv6 echo reply: ok=%v dir=%v", ok, d)
	}
	v4n, v6n := tb.Counts()
	if diff := cmp.Diff([3]uint64{1, 1, 2}, [3]uint64{v4n, v6n, tb.Used()}); diff != "" {
		t.Errorf("Counts/Used (-want +got):\n%s", diff)
	}
	// Mapped IPv6 and IPv4 of the same address are different flows.
	m := tup("::ffff:10.0.0.9", "::ffff:10.0.0.1", 6, 40000, 443)
	if _, _, ok := tb.Lookup(m, 4*sec, 0); ok {
		t.Errorf("IPv4-mapped IPv6 tuple hit the IPv4 session")
	}
}

func TestExpiry(t *testing.T) {
	tb := New(64, 1, timeouts)
	tcp := tup("10.0.0.1", "10.0.0.2", 6, 1, 2)
	udp := tup("10.0.0.1", "10.0.0.2", 17, 1, 2)
	icmp := tup("10.0.0.1", "10.0.0.2", 1, 1, 1)
	gre := tup("10.0.0.1", "10.0.0.2", 47, 0, 0)
	for _, tp := range []Tuple{tcp, udp, icmp, gre} {
		if _, _, err := tb.Insert(tp, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	// At exactly the timeout a session is still alive; one ns later not.
	if _, _, ok := tb.Lookup(icmp, 5*sec, 0); !ok {
		t.Errorf("icmp gone at exactly its timeout")
	}
	if _, _, ok := tb.Lookup(icmp, 10*sec+1, 0); ok {
		t.Errorf("icmp alive after its timeout")
	}
	if tb.Expired() != 1 || tb.Used() != 3 {
		t.Errorf("after lazy expiry: expired %d used %d", tb.Expired(), tb.Used())
	}
	// A clock earlier than last-seen never expires anything.
	if _, _, ok := tb.Lookup(udp, -100*sec, 0); !ok {
		t.Errorf("udp expired by an earlier clock")
	}
	// Sweep at 11 s: udp (10 s) and other (7 s) go, tcp (100 s) stays.
	if n := tb.Expire(11*sec, 0); n != 2 {
		t.Errorf("Expire removed %d, want 2", n)
	}
	if tb.Used() != 1 {
		t.Errorf("Used = %d after sweep", tb.Used())
	}
	if _, _, ok := tb.Lookup(tcp, 11*sec, 0); !ok {
		t.Errorf("tcp expired early")
	}
	// A bounded sweep examines at most its budget.
	tb2 := New(1000, 1, timeouts)
	for i := range uint32(100) {
		if _, _, err := tb2.Insert(genTuple(i, false), 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	if n := tb2.Expire(time.Hour.Nanoseconds(), 30); n != 30 {
		t.Errorf("bounded Expire removed %d, want 30", n)
	}
	if n := tb2.Expire(time.Hour.Nanoseconds(), 0); n != 70 {
		t.Errorf("full Expire removed %d, want 70", n)
	}
}

func TestTouchRef(t *testing.T) {
	tb := New(8, 1, timeouts)
	a := tup("10.0.0.1", "10.0.0.2", 17, 1, 2)
	e, _, err := tb.Insert(a, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if !tb.Touch(e.Ref, sec, 5) {
		t.Fatal("Touch of a live ref failed")
	}
	h, _, _ := tb.Lookup(a, sec, 0)
	got, _ := tb.Get(h)
	if got.Packets != 3 || got.Bytes != 15 {
		t.Errorf("after Touch: %+v", got)
	}
	if !tb.Remove(a.Reverse()) || tb.Remove(a) {
		t.Fatal("Remove by reverse tuple")
	}
	// The slot is reused by another flow: the old ref must not reach it.
	b := tup("10.0.0.3", "10.0.0.4", 17, 1, 2)
	eb, _, _ := tb.Insert(b, sec, 0)
	if eb.Ref.Slot != e.Ref.Slot {
		t.Fatalf("expected slot reuse")
	}
	if tb.Touch(e.Ref, sec, 0) {
		t.Errorf("stale ref touched a reused slot")
	}
	if tb.Touch(Ref{Shard: 5}, sec, 0) || tb.Touch(Ref{Slot: 7}, sec, 0) {
		t.Errorf("out-of-range ref accepted")
	}
	if tb.Touch(eb.Ref, 20*sec, 0) || tb.Used() != 0 {
		t.Errorf("expired ref touched (used %d)", tb.Used())
	}
}

func TestFull(t *testing.T) {
	tb := New(10, 1, timeouts)
	for i := range uint32(10) {
		if _, _, err := tb.Insert(genTuple(i, i%3 == 0), 0, 0); err != nil {
			t.Fatalf("insert %d: %v", i, err)
		}
	}
	if _, _, err := tb.Insert(genTuple(10, false), sec, 0); !errors.Is(err, ErrFull) {
		t.Fatalf("insert into full table: %v", err)
	}
	if tb.Refused() != 1 || tb.Used() != 10 {
		t.Errorf("refused %d used %d", tb.Refused(), tb.Used())
	}
	// Refresh one session; let the others expire: the insert reclaims.
	tb.Lookup(genTuple(0, true), 8*sec, 0)
	if _, created, err := tb.Insert(genTuple(10, false), 12*sec, 0); err != nil || !created {
		t.Fatalf("insert after expiry: %v", err)
	}
	if tb.Used() != 2 {
		t.Errorf("Used = %d, want 2 (live one + new one)", tb.Used())
	}
}

func TestSharding(t *testing.T) {
	type shape struct {
		Shards   int
		Capacity uint64
		PerShard []uint32
	}
	var got []shape
	for _, c := range []struct{ capacity, shards uint32 }{{10, 64}, {10, 4}, {100, 3}, {0, 0}} {
		tb := New(c.capacity, c.shards, timeouts)
		s := shape{Shards: tb.Shards(), Capacity: tb.Capacity()}
		var sum uint64
		for i := range tb.Shards() {
			_, cp := tb.ShardUsed(i)
			sum += uint64(cp)
			if i < 4 {
				s.PerShard = append(s.PerShard, cp)
			}
		}
		if sum != tb.Capacity() {
			t.Errorf("capacity %d: shards sum to %d", tb.Capacity(), sum)
		}
		got = append(got, s)
	}
	want := []shape{
		{8, 10, []uint32{2, 2, 1, 1}},
		{4, 10, []uint32{3, 3, 2, 2}},
		{4, 100, []uint32{25, 25, 25, 25}},
		{64, 65536, []uint32{1024, 1024, 1024, 1024}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("shapes (-want +got):\n%s", diff)
	}
	tb := New(4096, 16, timeouts)
	if tb.MaxSkew() != 0 {
		t.Errorf("empty MaxSkew %v", tb.MaxSkew())
	}
	for i := range uint32(2000) {
		tb.Insert(genTuple(i, false), 0, 0)
	}
	if s := tb.MaxSkew(); s < 1 || s > 1.5 {
		t.Errorf("MaxSkew %v for 2000 random flows in 16 shards", s)
	}
}

// TestModel drives the table and a map model with random operations and
// compares every result: it checks probing, backward-shift deletion, slot
// reuse, expiry and the counters.
func TestModel(t *testing.T) {
	for _, shards := range []uint32{1, 8} {
		r := rand.New(rand.NewPCG(uint64(shards), 99))
		const capacity = 300
		tb := New(capacity, shards, timeouts)
		type mval struct {
			last           int64
			initiator      Tuple
			packets, bytes uint64
		}
		model := map[key]*mval{}
		now := int64(0)
		universe := uint32(600)
		for step := range 200000 {
			now += int64(r.IntN(int(sec / 10)))
			tp := genTuple(r.Uint32N(universe), r.IntN(3) == 0)
			if r.IntN(2) == 0 {
				tp = tp.Reverse()
			}
			tp.Proto = []uint8{6, 17, 1, 47}[r.IntN(4)]
			k, _ := canonical(&tp)
			m := model[k]
			if m != nil && now-m.last > tb.timeoutOf(uint64(tp.Proto)<<32|uint64(replied(tp.Proto))<<stateShift) {
				// The table removes it lazily on the next touch; the model
				// forgets it now and fixes Used below.
				delete(model, k)
				m = nil
				tb.Remove(tp)
			}
			switch op := r.IntN(10); {
			case op < 4:
				h, d, ok := tb.Lookup(tp, now, 1)
				e, _ := tb.Get(h)
				if ok != (m != nil) {
					t.Fatalf("step %d: Lookup ok=%v, model %v", step, ok, m != nil)
				}
				if ok {
					m.last, m.packets, m.bytes = now, m.packets+1, m.bytes+1
					wantDir := Forward
					if tp != m.initiator {
						wantDir = Reverse
					}
					if e.Tuple != m.initiator || d != wantDir || e.Packets != m.packets || e.LastSeen != now {
						t.Fatalf("step %d: Lookup %+v %v, model %+v", step, e, d, m)
					}
				}
			case op < 8:
				e, created, err := tb.Insert(tp, now, 1)
				switch {
				case m != nil:
					if err != nil || created || e.Tuple != m.initiator {
						t.Fatalf("step %d: re-insert %+v %v %v", step, e, created, err)
					}
					m.last, m.packets = now, m.packets+1
				case err == nil:
					if !created {
						t.Fatalf("step %d: insert not created", step)
					}
					model[k] = &mval{last: now, initiator: tp, packets: 1, bytes: 1}
				case errors.Is(err, ErrFull):
				default:
					t.Fatal(err)
				}
			case op < 9:
				if tb.Remove(tp) != (m != nil) {
					t.Fatalf("step %d: Remove disagrees", step)
				}
				delete(model, k)
			default:
				tb.Expire(now, r.IntN(50))
			}
			if step%1000 == 0 {
				// Drop everything expired from both so Used can be compared.
				tb.Expire(now, 0)
				for mk, mv := range model {
					if now-mv.last > tb.timeoutOf(mk[4]) {
						delete(model, mk)
					}
				}
				var v4 uint64
				for mk := range model {
					if mk.fam() == policy.FamilyIPv4 {
						v4++
					}
				}
				gv4, gv6 := tb.Counts()
				if tb.Used() != uint64(len(model)) || gv4 != v4 || gv4+gv6 != tb.Used() {
					t.Fatalf("step %d: Used %d (v4 %d v6 %d), model %d (v4 %d)", step, tb.Used(), gv4, gv6, len(model), v4)
				}
				if n := len(tb.Snapshot(0)); n != len(model) {
					t.Fatalf("Snapshot has %d, model %d", n, len(model))
				}
			}
		}
	}
}

func TestConcurrent(t *testing.T) {
	tb := New(1<<14, 16, timeouts)
	const workers, per = 4, 2000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var readerDone sync.WaitGroup
	readerDone.Add(1)
	go func() { // ResourceStats-style reader
		defer readerDone.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			v4, v6 := tb.Counts()
			if u := tb.Used(); u > tb.Capacity() || v4+v6 > tb.Capacity() {
				t.Errorf("used %d > capacity", u)
			}
			_ = tb.MaxSkew()
			_ = tb.Snapshot(10)
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range uint32(per) {
				tp := genTuple(uint32(w)*per+i, i%2 == 0)
				if _, _, err := tb.Insert(tp, 0, 1); err != nil {
					t.Error(err)
					return
				}
				if _, _, ok := tb.Lookup(tp.Reverse(), 1, 1); !ok {
					t.Errorf("lost %v", tp)
				}
				if i%4 == 0 {
					tb.Remove(tp)
				}
				if i%64 == 0 {
					tb.Expire(2, 32)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	readerDone.Wait()
	if want := uint64(workers * per * 3 / 4); tb.Used() != want {
		t.Errorf("Used = %d, want %d", tb.Used(), want)
	}
}

func TestAllocs(t *testing.T) {
	tb := New(1024, 4, timeouts)
	a, b := genTuple(1, false), genTuple(2, true)
	tb.Insert(a, 0, 0)
	n := testing.AllocsPerRun(1000, func() {
		tb.Lookup(a, 1, 64)
		tb.Lookup(b, 1, 64) // miss
		tb.Insert(b, 1, 64)
		tb.Remove(b)
	})
	if n != 0 {
		t.Errorf("Lookup/Insert/Remove allocate %.1f times", n)
	}
}

// TestMemoryPerSession measures the heap a 1 M-session table takes, full,
// and holds it to the 96-byte budget.
func TestMemoryPerSession(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates ~100 MB")
	}
	perSession, inserted, refusedAt := measureMemory(1<<20, 64)
	t.Logf("%.1f bytes/session (%d sessions; first refusal at %.2f %% fill)", perSession, inserted, refusedAt)
	if perSession > 96 {
		t.Errorf("%.1f bytes per session, budget 96", perSession)
	}
}

func measureMemory(capacity, shards uint32) (perSession float64, inserted uint64, firstRefusalFill float64) {
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	tb := New(capacity, shards, dataplane.Timeouts{})
	firstRefusalFill = 100
	for i := uint32(0); tb.Used() < uint64(capacity) && i < 4*capacity; i++ {
		tp := genTuple(i, i%4 == 0)
		tp.DstPort = uint16(i >> 16)
		if _, _, err := tb.Insert(tp, 0, 0); err != nil && firstRefusalFill == 100 {
			firstRefusalFill = float64(tb.Used()) * 100 / float64(capacity)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	inserted = tb.Used()
	perSession = float64(m1.HeapAlloc-m0.HeapAlloc) / float64(inserted)
	runtime.KeepAlive(tb)
	return perSession, inserted, firstRefusalFill
}

func TestTrackBatch(t *testing.T) {
	tb := New(1000, 4, timeouts)
	var tps []Tuple
	for i := range uint32(BatchSize + 10) {
		tp := genTuple(i, i%3 == 0)
		if i%2 == 0 { // half the flows exist
			if _, _, err := tb.Insert(tp, 0, 0); err != nil {
				t.Fatal(err)
			}
		}
		if i%4 == 0 {
			tp = tp.Reverse()
		}
		tps = append(tps, tp)
	}
	pkts := make([]Packet, len(tps))
	for i, tp := range tps {
		pkts[i] = Packet{Tuple: tp, Zone: AnyZone}
	}
	pkts[0].Size = 100
	var b Batch
	hits := tb.TrackBatch(&b, pkts, sec)
	var got, want []Result
	wantHits := 0
	for i := range BatchSize {
		got = append(got, b.Results[i])
		p := pkts[i]
		p.Size = 0
		r := tb.Track(&p, sec)
		want = append(want, r)
		if r.Verdict == Hit {
			wantHits++
		}
	}
	if diff := cmp.Diff(want, got); diff != "" || hits != wantHits {
		t.Errorf("TrackBatch hits %d want %d (-Track +TrackBatch):\n%s", hits, wantHits, diff)
	}
	e, _ := tb.Get(b.Results[0].Ref)
	if e.Packets != 3 || e.Bytes != 100 { // insert, batch, track
		t.Errorf("batch accounting: %+v", e)
	}
	if n := testing.AllocsPerRun(100, func() { tb.TrackBatch(&b, pkts, sec) }); n != 0 {
		t.Errorf("TrackBatch allocates %.1f times", n)
	}
}

// TestLockFreeReadersUnderChurn: readers of stable flows must never miss
// and never see a wrong direction while writers churn other flows of the
// same shards (backward shifts move index words, freed slots are reused).
func TestLockFreeReadersUnderChurn(t *testing.T) {
	// One crowded shard (index up to ~74 % full) so churn shifts index
	// words past the readers' probes as often as possible.
	tb := New(256, 1, timeouts)
	stable := make([]Tuple, 64)
	for i := range stable {
		stable[i] = genTuple(uint32(i), i%2 == 0)
		if _, _, err := tb.Insert(stable[i], 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint32(0); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				tp := genTuple(1000+uint32(w)*100000+i%180, i%5 == 0)
				tb.Insert(tp, 0, 0)
				tb.Remove(genTuple(1000+uint32(w)*100000+(i+90)%180, (i+90)%5 == 0))
			}
		}()
	}
	var b Batch
	stablePkts := make([]Packet, len(stable))
	for i, tp := range stable {
		stablePkts[i] = Packet{Tuple: tp, Zone: AnyZone}
	}
	for round := range 5000 {
		for i, tp := range stable {
			in := tp
			if round%2 == 1 {
				in = tp.Reverse()
			}
			h, d, ok := tb.Lookup(in, 1, 1)
			if !ok || d != Dir(round%2) {
				t.Fatalf("round %d flow %d: ok=%v dir=%v", round, i, ok, d)
			}
			if !tb.Touch(h, 1, 1) {
				t.Fatalf("round %d flow %d: Touch of a live ref failed", round, i)
			}
		}
		if n := tb.TrackBatch(&b, stablePkts, 1); n != len(stable) {
			t.Fatalf("round %d: batch hit %d of %d", round, n, len(stable))
		}
	}
	close(stop)
	wg.Wait()
}
