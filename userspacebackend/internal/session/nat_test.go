package session

import (
	"errors"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
)

func natOf(src string, sport uint16, dst string, dport uint16, tag uint64) NAT {
	return NAT{Src: netip.MustParseAddr(src).As4(), SrcPort: sport, Dst: netip.MustParseAddr(dst).As4(), DstPort: dport, Tag: tag}
}

// releases records the release hook's calls.
type releases struct {
	mu  sync.Mutex
	got []NAT
}

func (r *releases) hook(x NAT) {
	r.mu.Lock()
	r.got = append(r.got, x)
	r.mu.Unlock()
}

func (r *releases) n() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// TestNATBothTuples: a source-translated session is found by its own
// tuple from the initiator and by the translated tuple from the
// responder; the two other forms are Untranslated and change nothing.
func TestNATBothTuples(t *testing.T) {
	var rel releases
	tb := New(64, 4, timeouts)
	tb.EnableNAT(rel.hook)
	orig := tup("10.0.1.2", "10.0.2.2", 17, 5000, 53)
	x := natOf("10.0.2.1", 1024, "10.0.2.2", 53, 7)
	p := Packet{Tuple: orig, Zone: zoneIn}
	e, created, err := tb.CreateNAT(&p, dataplane.StateUnreplied, zoneIn, zoneOut, 0, x)
	if err != nil || !created {
		t.Fatalf("CreateNAT: %v created=%v", err, created)
	}
	if !e.Translated || e.NAT != x || e.Tuple != orig {
		t.Errorf("entry %+v, want the original tuple and translation %+v", e, x)
	}
	if tb.NATActive() != 1 {
		t.Errorf("NATActive = %d, want 1", tb.NATActive())
	}
	// The reply to the untranslated tuple (spoofed: the responder answers
	// the translated one) is refused and does not mark the session replied.
	sp := Packet{Tuple: orig.Reverse(), Zone: zoneOut}
	if r := tb.Track(&sp, sec); r.Verdict != Untranslated {
		t.Errorf("reply to the untranslated tuple: %+v, want Untranslated", r)
	}
	// The initiator's packet in its translated form is refused too.
	tp := x.Tuple(17)
	fp := Packet{Tuple: tp, Zone: zoneIn}
	if r := tb.TrackReply(&fp, sec); r.Verdict != Untranslated {
		t.Errorf("translated initiator packet: %+v, want Untranslated", r)
	}
	if got, _ := tb.Get(e.Ref); got.State != dataplane.StateUnreplied || got.Packets != 1 {
		t.Errorf("after refused packets: %+v, want unreplied with 1 packet", got)
	}
	// The initiator's packets hit the session, flagged translated.
	if r := tb.Track(&p, sec); r.Verdict != Hit || r.Dir != Forward || !r.NAT {
		t.Errorf("initiator: %+v, want a forward translated hit", r)
	}
	// The reply to the translated tuple: from the responder's zone only.
	rp := Packet{Tuple: tp.Reverse(), Zone: zoneIn}
	if r := tb.TrackReply(&rp, 2*sec); r.Verdict != WrongZone {
		t.Errorf("reply from the initiator's zone: %+v, want WrongZone", r)
	}
	rp.Zone = zoneOut
	r := tb.TrackReply(&rp, 2*sec)
	if r.Verdict != Hit || r.Dir != Reverse || !r.NAT || r.State != dataplane.StateReplied || !r.Assured {
		t.Errorf("reply: %+v, want a reverse hit making the session replied", r)
	}
	if r := tb.Track(&rp, 2*sec); r.Verdict != Miss {
		t.Errorf("Track of the reply tuple: %+v, want a miss (it is not the session's own key)", r)
	}
	o, gx, ok := tb.Translation(r.Ref)
	if !ok || o != orig || gx != x {
		t.Errorf("Translation = %v %+v %v, want %v %+v", o, gx, ok, orig, x)
	}
	if !tb.Remove(orig) {
		t.Fatal("Remove found nothing")
	}
	if diff := cmp.Diff([]NAT{x}, rel.got); diff != "" {
		t.Errorf("release hook (-want +got):\n%s", diff)
	}
	if r := tb.TrackReply(&rp, 3*sec); r.Verdict != Miss {
		t.Errorf("reply after removal: %+v, want a miss", r)
	}
	if _, _, ok := tb.Translation(r.Ref); ok {
		t.Error("Translation of a removed session")
	}
	if tb.NATActive() != 0 {
		t.Errorf("NATActive = %d after removal", tb.NATActive())
	}
}

// TestNATReleaseOnEveryEnd: the release hook runs exactly once whichever
// way a translated session ends, and its reverse entry goes with it.
func TestNATReleaseOnEveryEnd(t *testing.T) {
	ends := map[string]func(tb *Table, orig Tuple, x NAT) bool{
		"remove": func(tb *Table, orig Tuple, _ NAT) bool { return tb.Remove(orig) },
		"end if": func(tb *Table, orig Tuple, _ NAT) bool {
			return tb.EndIf(func(e *Entry) bool { return e.Translated && e.Tuple == orig }) == 1
		},
		"sweep": func(tb *Table, _ Tuple, _ NAT) bool { return tb.Expire(100*sec, 0) == 1 },
		"expired reply": func(tb *Table, _ Tuple, x NAT) bool {
			rp := Packet{Tuple: x.Tuple(17).Reverse(), Zone: AnyZone}
			return tb.TrackReply(&rp, 100*sec).Verdict == Miss
		},
		"expired forward": func(tb *Table, orig Tuple, _ NAT) bool {
			p := Packet{Tuple: orig, Zone: AnyZone}
			return tb.Track(&p, 100*sec).Verdict == Miss
		},
		"early drop": func(tb *Table, _ Tuple, _ NAT) bool {
			// One shard of one slot, unassured: a new flow evicts it.
			p := Packet{Tuple: tup("10.9.9.9", "10.8.8.8", 17, 1, 2)}
			_, created, err := tb.Create(&p, dataplane.StateUnreplied, zoneIn, zoneOut, 2*sec)
			return err == nil && created
		},
	}
	for name, end := range ends {
		t.Run(name, func(t *testing.T) {
			var rel releases
			tb := New(1, 1, timeouts)
			tb.EnableNAT(rel.hook)
			orig := tup("10.0.1.2", "10.0.2.2", 17, 5000, 53)
			x := natOf("10.0.2.1", 1024, "10.0.2.2", 53, 1)
			p := Packet{Tuple: orig, Zone: zoneIn}
			if _, _, err := tb.CreateNAT(&p, dataplane.StateUnreplied, zoneIn, zoneOut, sec, x); err != nil {
				t.Fatal(err)
			}
			if !end(tb, orig, x) {
				t.Fatal("the session did not end")
			}
			if rel.n() != 1 {
				t.Errorf("release hook ran %d times, want 1", rel.n())
			}
			rp := Packet{Tuple: x.Tuple(17).Reverse(), Zone: AnyZone}
			if r := tb.TrackReply(&rp, 2*sec); r.Verdict != Miss {
				t.Errorf("reverse entry left behind: %+v", r)
			}
			if tb.NATActive() != 0 {
				t.Errorf("NATActive = %d", tb.NATActive())
			}
		})
	}
	t.Run("closed then SYN", func(t *testing.T) {
		var rel releases
		tb := New(4, 1, timeouts)
		tb.EnableNAT(rel.hook)
		orig := tup("10.0.1.2", "10.0.2.2", 6, 5000, 80)
		x := natOf("10.0.2.1", 1024, "10.0.2.2", 80, 1)
		p := Packet{Tuple: orig, Zone: zoneIn, TCPFlags: TCPSyn}
		if _, _, err := tb.CreateNAT(&p, dataplane.StateOpening, zoneIn, zoneOut, sec, x); err != nil {
			t.Fatal(err)
		}
		rst := Packet{Tuple: x.Tuple(6).Reverse(), Zone: zoneOut, TCPFlags: TCPRst | TCPAck}
		if r := tb.TrackReply(&rst, sec); r.State != dataplane.StateClosed {
			t.Fatalf("RST from the responder: %+v, want closed", r)
		}
		if rel.n() != 0 {
			t.Fatal("released while closed: the slot is held until the session ends")
		}
		if r := tb.Track(&p, 2*sec); r.Verdict != Miss {
			t.Fatalf("SYN on the closed session: %+v, want a miss", r)
		}
		if rel.n() != 1 {
			t.Errorf("release hook ran %d times after the SYN ended it, want 1", rel.n())
		}
	})
}

// TestNATClash: a translated tuple that is another session's (its own
// or its translated one) is refused and leaves nothing behind.
func TestNATClash(t *testing.T) {
	var rel releases
	tb := New(64, 4, timeouts)
	tb.EnableNAT(rel.hook)
	plain := tup("10.0.2.1", "10.0.2.2", 17, 1024, 53)
	if _, _, err := tb.Insert(plain, 0, 1); err != nil {
		t.Fatal(err)
	}
	p := Packet{Tuple: tup("10.0.1.2", "10.0.2.2", 17, 5000, 53)}
	if _, _, err := tb.CreateNAT(&p, dataplane.StateUnreplied, zoneIn, zoneOut, 0, natOf("10.0.2.1", 1024, "10.0.2.2", 53, 0)); !errors.Is(err, ErrNATClash) {
		t.Errorf("translated onto a session's own tuple: %v, want ErrNATClash", err)
	}
	x := natOf("10.0.2.1", 1025, "10.0.2.2", 53, 0)
	if _, _, err := tb.CreateNAT(&p, dataplane.StateUnreplied, zoneIn, zoneOut, 0, x); err != nil {
		t.Fatal(err)
	}
	q := Packet{Tuple: tup("10.0.1.3", "10.0.2.2", 17, 5000, 53)}
	if _, _, err := tb.CreateNAT(&q, dataplane.StateUnreplied, zoneIn, zoneOut, 0, x); !errors.Is(err, ErrNATClash) {
		t.Errorf("two sessions translated alike: %v, want ErrNATClash", err)
	}
	if u := tb.Used(); u != 2 {
		t.Errorf("Used = %d after the refusals, want 2", u)
	}
	if rel.n() != 0 {
		t.Errorf("release hook ran for sessions never created")
	}
	if _, _, err := New(4, 1, timeouts).CreateNAT(&p, dataplane.StateUnreplied, zoneIn, zoneOut, 0, x); !errors.Is(err, ErrNATDisabled) {
		t.Errorf("without EnableNAT: %v, want ErrNATDisabled", err)
	}
	// The refused slots went back: the table still fills to capacity.
	full := New(2, 1, timeouts)
	full.EnableNAT(nil)
	full.Insert(plain, 0, 1)
	full.CreateNAT(&p, dataplane.StateUnreplied, zoneIn, zoneOut, 0, natOf("10.0.2.1", 1024, "10.0.2.2", 53, 0))
	if _, created, err := full.CreateNAT(&q, dataplane.StateUnreplied, zoneIn, zoneOut, 0, x); err != nil || !created {
		t.Errorf("after a refusal the slot is free again: %v created=%v", err, created)
	}
}

// TestNATRelate: ICMP errors about a translated session: the one about
// the initiator's translated packet, from the responder's side, and the
// one about a delivered reply, from the initiator's side; none about the
// forms never seen on the wire.
func TestNATRelate(t *testing.T) {
	tb := New(64, 4, timeouts)
	tb.EnableNAT(nil)
	orig := tup("10.0.1.2", "198.51.100.9", 17, 5000, 53)
	x := natOf("10.0.2.1", 1024, "10.0.3.3", 5353, 0) // source and destination translated
	p := Packet{Tuple: orig}
	if _, _, err := tb.CreateNAT(&p, dataplane.StateUnreplied, zoneIn, zoneOut, 0, x); err != nil {
		t.Fatal(err)
	}
	xt := x.Tuple(17)
	for _, c := range []struct {
		name  string
		quote Tuple
		zone  uint16
		want  Relation
	}{
		{"initiator's packet, from the responder's side", xt, zoneOut, Relation{OK: true, Translated: true, Tuple: orig, NAT: x, Quote: Forward}},
		{"initiator's packet, from its own side", xt, zoneIn, Relation{Translated: true, Tuple: orig, NAT: x, Quote: Forward}},
		{"delivered reply, from the initiator's side", orig.Reverse(), zoneIn, Relation{OK: true, Translated: true, Tuple: orig, NAT: x, Quote: Reverse}},
		{"untranslated initiator packet", orig, zoneOut, Relation{}},
		{"untranslated reply", xt.Reverse(), zoneOut, Relation{}},
	} {
		if got := tb.Relate(c.quote, c.zone, sec); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
	if tb.Relate(xt, zoneOut, 100*sec).OK {
		t.Error("related to an expired session")
	}
}

// TestNATBytesMatchesEnable: the gate's estimate is what EnableNAT
// allocates.
func TestNATBytesMatchesEnable(t *testing.T) {
	for _, c := range []struct{ capacity, shards uint32 }{{65536, 64}, {1 << 20, 64}, {1000, 3}} {
		const k = 4
		keep := make([]*Table, k)
		for i := range keep {
			keep[i] = New(c.capacity, c.shards, dataplane.Timeouts{})
		}
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		for _, tb := range keep {
			tb.EnableNAT(nil)
		}
		runtime.ReadMemStats(&b)
		runtime.KeepAlive(keep)
		got, est := (b.TotalAlloc-a.TotalAlloc)/k, NATBytes(c.capacity, c.shards)
		if d := int64(got) - int64(est); d < -int64(est)/100-3*8192 || d > int64(est)/100+3*8192 {
			t.Errorf("EnableNAT on New(%d, %d) allocated %d B, NATBytes says %d", c.capacity, c.shards, got, est)
		}
	}
}

// TestNATConcurrent: workers create, reply to and remove translated
// sessions on shared shards while a sweeper expires them; every created
// session is released exactly once (run with -race).
func TestNATConcurrent(t *testing.T) {
	var released atomic.Int64
	tb := New(4096, 8, timeouts)
	tb.EnableNAT(func(NAT) { released.Add(1) })
	var created atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range uint32(3000) {
				id := uint32(w)<<16 | i
				orig := genTuple(id, false)
				x := NAT{Src: [4]byte{192, 0, 2, byte(w)}, SrcPort: uint16(i), Dst: [4]byte(orig.Dst[:4]), DstPort: orig.DstPort}
				p := Packet{Tuple: orig, Zone: AnyZone}
				now := int64(i) * sec / 100
				if _, ok, err := tb.CreateNAT(&p, dataplane.StateUnreplied, AnyZone, AnyZone, now, x); err == nil && ok {
					created.Add(1)
				}
				rp := Packet{Tuple: x.Tuple(17).Reverse(), Zone: AnyZone}
				tb.TrackReply(&rp, now)
				if i%3 == 0 {
					tb.Remove(orig)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 200 {
			tb.Expire(int64(i)*sec/5, 256)
			runtime.Gosched()
		}
	}()
	wg.Wait()
	tb.EndIf(func(*Entry) bool { return true })
	if created.Load() == 0 || released.Load() != created.Load() {
		t.Errorf("created %d translated sessions, released %d", created.Load(), released.Load())
	}
	if tb.NATActive() != 0 || tb.Used() != 0 {
		t.Errorf("NATActive %d, Used %d after ending everything", tb.NATActive(), tb.Used())
	}
}

// TestNATRewrite: what each direction is rewritten to, and nothing for a
// stale ref.
func TestNATRewrite(t *testing.T) {
	tb := New(16, 1, timeouts)
	tb.EnableNAT(nil)
	orig := tup("10.0.1.2", "198.51.100.9", 6, 5000, 443)
	x := natOf("10.0.2.1", 1024, "10.0.3.3", 8443, 9)
	p := Packet{Tuple: orig}
	e, _, err := tb.CreateNAT(&p, dataplane.StateOpening, zoneIn, zoneOut, 0, x)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := tb.Rewrite(e.Ref, Forward); !ok || got != x {
		t.Errorf("forward rewrite %+v %v, want %+v", got, ok, x)
	}
	want := natOf("198.51.100.9", 443, "10.0.1.2", 5000, 0)
	if got, ok := tb.Rewrite(e.Ref, Reverse); !ok || got != want {
		t.Errorf("reverse rewrite %+v %v, want %+v", got, ok, want)
	}
	tb.Remove(orig)
	if _, ok := tb.Rewrite(e.Ref, Forward); ok {
		t.Error("rewrite of a removed session")
	}
}

// TestNATTouchRewrite refreshes like Touch and rewrites like Rewrite, and
// removes an expired session like Touch.
func TestNATTouchRewrite(t *testing.T) {
	var rel releases
	tb := New(16, 1, timeouts)
	tb.EnableNAT(rel.hook)
	orig := tup("10.0.1.2", "198.51.100.9", 17, 5000, 53)
	x := natOf("10.0.2.1", 1024, "198.51.100.9", 53, 3)
	p := Packet{Tuple: orig}
	e, _, _ := tb.CreateNAT(&p, dataplane.StateReplied, zoneIn, zoneOut, 0, x)
	if got, ok := tb.TouchRewrite(e.Ref, 5*sec, 100, Forward); !ok || got != x {
		t.Errorf("TouchRewrite forward = %+v %v", got, ok)
	}
	if got, _ := tb.Get(e.Ref); got.Packets != 2 || got.Bytes != 100 || got.LastSeen != 5*sec {
		t.Errorf("after TouchRewrite: %+v, want 2 packets, 100 bytes, last seen 5 s", got)
	}
	if _, ok := tb.TouchRewrite(e.Ref, 100*sec, 1, Reverse); ok || rel.n() != 1 || tb.Used() != 0 {
		t.Errorf("TouchRewrite of an expired session: ok %v, released %d, used %d", ok, rel.n(), tb.Used())
	}
}
