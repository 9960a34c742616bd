package session

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
)

const (
	zoneIn  = 1
	zoneOut = 2
	zoneDMZ = 3
)

const (
	syn    = TCPSyn
	synAck = TCPSyn | TCPAck
	ack    = TCPAck
	fin    = TCPFin | TCPAck
	rst    = TCPRst
)

type step struct {
	reverse bool
	zone    uint16
	flags   uint8
	want    Verdict
	state   dataplane.SessionState
	assured bool
}

// run applies steps to the session of tp (created by the first packet,
// forward, from zoneIn to zoneOut, in state first) and compares each
// result.
func run(t *testing.T, tb *Table, tp Tuple, first dataplane.SessionState, steps []step) {
	t.Helper()
	p := Packet{Tuple: tp, Zone: zoneIn, Size: 1}
	if _, created, err := tb.Create(&p, first, zoneIn, zoneOut, 0); err != nil || !created {
		t.Fatalf("Create: %v %v", created, err)
	}
	for i, s := range steps {
		p := Packet{Tuple: tp, Zone: s.zone, TCPFlags: s.flags, Size: 1}
		if s.reverse {
			p.Tuple = tp.Reverse()
		}
		r := tb.Track(&p, sec)
		type got struct {
			V       Verdict
			S       dataplane.SessionState
			Assured bool
		}
		g, w := got{r.Verdict, r.State, r.Assured}, got{s.want, s.state, s.assured}
		if s.want == Miss {
			g.S, g.Assured = w.S, w.Assured
		}
		if g != w {
			t.Fatalf("step %d (%+v): got %+v", i, s, g)
		}
	}
}

func TestTCPStates(t *testing.T) {
	tp := tup("10.0.1.2", "10.0.2.2", 6, 40000, 80)
	const (
		op = dataplane.StateOpening
		es = dataplane.StateEstablished
		cg = dataplane.StateClosing
		cd = dataplane.StateClosed
	)
	for name, steps := range map[string][]step{
		"handshake": {
			{false, zoneIn, syn, Hit, op, false},       // retransmitted SYN
			{false, zoneIn, ack, Hit, op, false},       // ACK before any reply: no handshake
			{true, zoneOut, synAck, Hit, op, false},    // SYN-ACK
			{false, zoneIn, ack, Hit, es, true},        // ACK: established, assured
			{true, zoneOut, ack | 0x08, Hit, es, true}, // data
			{false, zoneIn, fin, Hit, cg, true},        // FIN from the initiator
			{false, zoneIn, fin, Hit, cg, true},        // again: still closing
			{true, zoneOut, fin, Hit, cd, true},        // FIN from the responder
			{false, zoneIn, ack, Hit, cd, true},        // last ACK rides the closed session
			{false, zoneIn, syn, Miss, cd, false},      // a new SYN ends it
		},
		"rst while opening": {
			{true, zoneOut, rst, Hit, cd, false},
			{true, zoneOut, syn, Miss, cd, false}, // a SYN from the responder's side ends it too
		},
		"syn-ack from the initiator does not complete": {
			{true, zoneOut, synAck, Hit, op, false},
			{false, zoneIn, synAck, Hit, op, false},
			{false, zoneIn, fin, Hit, cg, false},
			{true, zoneOut, rst, Hit, cd, false},
		},
		"wrong zone changes nothing": {
			{true, zoneIn, synAck, WrongZone, op, false}, // reply direction from the initiator's zone
			{false, zoneDMZ, ack, WrongZone, op, false},
			{true, zoneOut, synAck, Hit, op, false},
			{false, zoneIn, ack, Hit, es, true},
			{true, zoneDMZ, rst, WrongZone, es, true}, // a spoofed RST from elsewhere
			{false, zoneIn, ack, Hit, es, true},
		},
	} {
		t.Run(name, func(t *testing.T) {
			tb := New(16, 1, timeouts)
			run(t, tb, tp, op, steps)
		})
	}
	t.Run("pickup", func(t *testing.T) {
		tb := New(16, 1, timeouts)
		run(t, tb, tp, es, []step{
			{false, zoneIn, ack, Hit, es, false},
			{true, zoneOut, ack, Hit, es, true}, // the other side answers
		})
		if tb.Unassured() != 0 {
			t.Errorf("unassured %d", tb.Unassured())
		}
	})
	t.Run("wrong zone SYN on closed", func(t *testing.T) {
		tb := New(16, 1, timeouts)
		run(t, tb, tp, op, []step{
			{true, zoneOut, rst, Hit, cd, false},
			{false, zoneDMZ, syn, WrongZone, cd, false}, // not from the session's zones: left alone
			{false, zoneIn, syn, Miss, cd, false},
		})
		if tb.Used() != 0 || tb.Unassured() != 0 || tb.Reopened() != 1 {
			t.Errorf("after the SYN on closed: used %d unassured %d reopened %d", tb.Used(), tb.Unassured(), tb.Reopened())
		}
	})
}

func TestOtherProtocolStates(t *testing.T) {
	for _, proto := range []uint8{17, 1, 47} {
		tb := New(16, 1, timeouts)
		tp := tup("10.0.1.2", "10.0.2.2", proto, 5, 6)
		run(t, tb, tp, dataplane.StateUnreplied, []step{
			{false, zoneIn, 0, Hit, dataplane.StateUnreplied, false},
			{true, zoneDMZ, 0, WrongZone, dataplane.StateUnreplied, false},
			{true, zoneOut, 0, Hit, dataplane.StateReplied, true},
			{false, zoneIn, fin, Hit, dataplane.StateReplied, true}, // TCP flags mean nothing here
		})
		if tb.Unassured() != 0 {
			t.Errorf("proto %d: unassured %d after the reply", proto, tb.Unassured())
		}
	}
}

// TestStateTimeouts: every state idles out after its own timeout.
func TestStateTimeouts(t *testing.T) {
	to := dataplane.Timeouts{
		TCP: dataplane.Duration(100 * time.Second), TCPOpening: dataplane.Duration(20 * time.Second),
		TCPClosing: dataplane.Duration(15 * time.Second), TCPClosed: dataplane.Duration(time.Second),
		UDP: dataplane.Duration(40 * time.Second), UDPUnreplied: dataplane.Duration(8 * time.Second),
	}
	tp := tup("10.0.1.2", "10.0.2.2", 6, 1, 2)
	udp := tup("10.0.1.2", "10.0.2.2", 17, 1, 2)
	for _, c := range []struct {
		name  string
		tp    Tuple
		first dataplane.SessionState
		steps []step
		want  int64
	}{
		{"opening", tp, dataplane.StateOpening, nil, 20},
		{"established", tp, dataplane.StateOpening, []step{{true, zoneOut, synAck, Hit, dataplane.StateOpening, false}, {false, zoneIn, ack, Hit, dataplane.StateEstablished, true}}, 100},
		{"closing", tp, dataplane.StateOpening, []step{{false, zoneIn, fin, Hit, dataplane.StateClosing, false}}, 15},
		{"closed", tp, dataplane.StateOpening, []step{{true, zoneOut, rst, Hit, dataplane.StateClosed, false}}, 1},
		{"udp unreplied", udp, dataplane.StateUnreplied, nil, 8},
		{"udp replied", udp, dataplane.StateUnreplied, []step{{true, zoneOut, 0, Hit, dataplane.StateReplied, true}}, 40},
	} {
		tb := New(16, 1, to)
		run(t, tb, c.tp, c.first, c.steps)
		last := sec // run's packets are at 1 s (Create at 0)
		if len(c.steps) == 0 {
			last = 0
		}
		p := Packet{Tuple: c.tp, Zone: AnyZone}
		if r := tb.Track(&p, last+c.want*sec); r.Verdict != Hit { // alive at exactly its timeout (and refreshed)
			t.Errorf("%s: gone at its timeout", c.name)
			continue
		}
		last += c.want * sec
		if r := tb.Track(&p, last+c.want*sec+1); r.Verdict != Miss {
			t.Errorf("%s: alive after its timeout of %d s", c.name, c.want)
		}
	}
}

// TestEarlyDrop: a full shard evicts the unassured session idle the
// longest among its sample (counted), reclaims expired ones first (not
// counted as early drops) and never evicts an assured one.
func TestEarlyDrop(t *testing.T) {
	to := timeouts
	to.EarlyAgingFactor = 1 // a full table would age the unassured ones out first
	tb := New(8, 1, to)
	var unassured []Tuple
	for i := range uint32(8) {
		tp := genTuple(i, false)
		p := Packet{Tuple: tp, Size: 1}
		st := dataplane.StateUnreplied
		if i%2 == 0 {
			st = dataplane.StateReplied
		} else {
			unassured = append(unassured, tp)
		}
		if _, _, err := tb.Create(&p, st, zoneIn, zoneOut, int64(i)*sec); err != nil {
			t.Fatal(err)
		}
	}
	if tb.Unassured() != 4 {
		t.Fatalf("unassured %d, want 4", tb.Unassured())
	}
	p := Packet{Tuple: genTuple(100, false), Size: 1}
	if _, created, err := tb.Create(&p, dataplane.StateUnreplied, zoneIn, zoneOut, 9*sec); err != nil || !created {
		t.Fatalf("Create into a full table with unassured sessions: %v", err)
	}
	if tb.EarlyDrops() != 1 || tb.Used() != 8 {
		t.Errorf("early drops %d used %d", tb.EarlyDrops(), tb.Used())
	}
	if _, _, ok := tb.Lookup(unassured[0], 9*sec, 0); ok {
		t.Error("the oldest unassured session survived the early drop")
	}
	for _, tp := range unassured[1:] {
		if _, _, ok := tb.Lookup(tp, 9*sec, 0); !ok {
			t.Errorf("a younger unassured session was evicted: %v", tp)
		}
	}
	// Assure every session: nothing can be evicted.
	for i := range uint32(8) {
		q := Packet{Tuple: genTuple(i, false).Reverse(), Zone: AnyZone}
		tb.Track(&q, 10*sec)
	}
	q := Packet{Tuple: genTuple(100, false).Reverse(), Zone: AnyZone}
	tb.Track(&q, 10*sec)
	if tb.Unassured() != 0 {
		t.Fatalf("unassured %d after every reply", tb.Unassured())
	}
	p = Packet{Tuple: genTuple(101, false), Size: 1}
	if _, _, err := tb.Create(&p, dataplane.StateUnreplied, zoneIn, zoneOut, 11*sec); !errors.Is(err, ErrFull) {
		t.Fatalf("Create into a table of assured sessions: %v", err)
	}
	if tb.Refused() != 1 || tb.EarlyDrops() != 1 {
		t.Errorf("refused %d early drops %d", tb.Refused(), tb.EarlyDrops())
	}
	// Once they expire (UDP replied: 10 s) they are reclaimed, not dropped.
	if _, _, err := tb.Create(&p, dataplane.StateUnreplied, zoneIn, zoneOut, 21*sec); err != nil {
		t.Fatalf("Create after expiry: %v", err)
	}
	if tb.EarlyDrops() != 1 || tb.Expired() == 0 {
		t.Errorf("early drops %d expired %d", tb.EarlyDrops(), tb.Expired())
	}
}

// TestEarlyAging: at 80 % fill the unassured states' timeouts are divided
// by the factor (assured ones are not); below it they are whole again.
func TestEarlyAging(t *testing.T) {
	to := timeouts
	to.UDPUnreplied = dataplane.Duration(8 * time.Second)
	to.EarlyAgingFactor = 4 // 8 s -> 2 s
	tb := New(10, 1, to)
	for i := range uint32(7) {
		p := Packet{Tuple: genTuple(i, false)}
		st := dataplane.StateUnreplied
		if i == 0 {
			st = dataplane.StateReplied
		}
		if _, _, err := tb.Create(&p, st, zoneIn, zoneOut, 0); err != nil {
			t.Fatal(err)
		}
	}
	if tb.EarlyAging() {
		t.Fatal("early aging at 70 %")
	}
	p := Packet{Tuple: genTuple(7, false)}
	tb.Create(&p, dataplane.StateUnreplied, zoneIn, zoneOut, 0)
	if !tb.EarlyAging() {
		t.Fatal("no early aging at 80 %")
	}
	look := func(i uint32) Result {
		q := Packet{Tuple: genTuple(i, false), Zone: AnyZone}
		return tb.Track(&q, 3*sec)
	}
	// At 3 s: an unassured session (2 s with early aging) is gone, which
	// brings the fill to 70 %: the others have their 8 s again.
	if v := look(1); v.Verdict != Miss {
		t.Errorf("unassured session at 3 s with early aging: %v", v.Verdict)
	}
	if tb.EarlyAging() {
		t.Error("early aging at 70 %")
	}
	if v := look(2); v.Verdict != Hit {
		t.Errorf("unassured session at 3 s without early aging: %v", v.Verdict)
	}
	if v := look(0); v.Verdict != Hit {
		t.Errorf("assured session at 3 s: %v", v.Verdict)
	}
	one := dataplane.Timeouts{EarlyAgingFactor: 1}
	tb.SetTimeouts(one)
	if got := tb.tt.Load(); got.aged != got.norm {
		t.Error("factor 1 still ages early")
	}
}

// TestRelated: an ICMP error relates to the session its quote names when
// it arrives from the quoted packet's destination side.
func TestRelated(t *testing.T) {
	tb := New(16, 1, timeouts)
	tp := tup("10.0.1.2", "10.0.2.2", 17, 5, 53)
	p := Packet{Tuple: tp}
	tb.Create(&p, dataplane.StateUnreplied, zoneIn, zoneOut, 0)
	for _, c := range []struct {
		quote Tuple
		zone  uint16
		want  bool
	}{
		{tp, zoneOut, true},            // about the initiator's packet, from beyond the responder
		{tp, zoneIn, false},            // from the initiator's own side
		{tp.Reverse(), zoneIn, true},   // about a reply, from the initiator's side
		{tp.Reverse(), zoneOut, false}, // about a reply, from the responder's side
		{tup("10.0.1.2", "10.0.2.2", 17, 5, 54), zoneOut, false},
	} {
		if got := tb.Related(c.quote, c.zone, sec); got != c.want {
			t.Errorf("Related(%v, zone %d) = %v", c.quote, c.zone, got)
		}
	}
	e, _ := tb.Get(Ref{Slot: 0, Gen: 2})
	if e.Packets != 1 || e.LastSeen != 0 {
		t.Errorf("Related refreshed or counted: %+v", e)
	}
	if tb.Related(tp, zoneOut, 31*sec) {
		t.Error("related to an expired session")
	}
}

// TestEndIf ends exactly the sessions selected, keeps the counts right
// and lists what is left with states and zones.
func TestEndIf(t *testing.T) {
	tb := New(64, 4, timeouts)
	for i := range uint32(20) {
		p := Packet{Tuple: genTuple(i, i%3 == 0)}
		st := dataplane.StateUnreplied
		if i%2 == 0 {
			st = dataplane.StateReplied
		}
		tb.Create(&p, st, uint16(i%4), zoneOut, 0)
	}
	n := tb.EndIf(func(e *Entry) bool { return e.FromZone == 1 })
	if n != 5 || tb.Used() != 15 {
		t.Errorf("ended %d, used %d", n, tb.Used())
	}
	var unassured uint64
	got := map[uint16]int{}
	for _, e := range tb.Snapshot(0) {
		got[e.FromZone]++
		if !e.Assured {
			unassured++
			if e.State != dataplane.StateUnreplied {
				t.Errorf("unassured in state %v", e.State)
			}
		}
	}
	if diff := cmp.Diff(map[uint16]int{0: 5, 2: 5, 3: 5}, got); diff != "" {
		t.Errorf("zones left (-want +got):\n%s", diff)
	}
	if unassured != tb.Unassured() {
		t.Errorf("Unassured() %d, listed %d", tb.Unassured(), unassured)
	}
}

// TestConcurrentTransitions: both directions of many flows tracked from
// two goroutines at once (lock-free CAS on the state bits, shard-locked
// creates and ends) leave every flow assured exactly once in the counts.
func TestConcurrentTransitions(t *testing.T) {
	tb := New(4096, 8, timeouts)
	const flows = 2000
	for i := range uint32(flows) {
		p := Packet{Tuple: genTuple(i, i%2 == 0)}
		if _, _, err := tb.Create(&p, dataplane.StateUnreplied, zoneIn, zoneOut, 0); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	// Walkers under the shard locks (listing, sweeping, judging) while the
	// hit paths move state bits without them: -race checks every read.
	stop := make(chan struct{})
	var walkers sync.WaitGroup
	walkers.Add(1)
	go func() {
		defer walkers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			tb.Snapshot(0)
			tb.Expire(sec, 256)
			tb.EndIf(func(*Entry) bool { return false })
			tb.Related(genTuple(7, false), zoneOut, sec)
		}
	}()
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 20 {
				for i := range uint32(flows) {
					tp, z := genTuple(i, i%2 == 0), uint16(zoneIn)
					if (int(i)+round+w)%2 == 0 {
						tp, z = tp.Reverse(), zoneOut
					}
					p := Packet{Tuple: tp, Zone: z, Size: 1}
					if r := tb.Track(&p, sec); r.Verdict != Hit {
						t.Errorf("flow %d: %v", i, r.Verdict)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	walkers.Wait()
	if tb.Unassured() != 0 || tb.Used() != flows {
		t.Errorf("unassured %d used %d", tb.Unassured(), tb.Used())
	}
	var packets uint64
	for _, e := range tb.Snapshot(0) {
		packets += e.Packets
		if e.State != dataplane.StateReplied || !e.Assured {
			t.Fatalf("%+v", e)
		}
	}
	if packets != flows*(1+2*20) {
		t.Errorf("%d packets counted, want %d", packets, flows*41)
	}
}
