package umem

import (
	"errors"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const fs = 2048

func addrs(idx ...int) []uint64 {
	out := make([]uint64, len(idx))
	for i, x := range idx {
		out[i] = uint64(x) * fs
	}
	return out
}

func newDebug(t *testing.T, frames, mirror uint32) *Accounting {
	t.Helper()
	a, err := New(frames, &Options{FrameSize: fs, MirrorBudget: mirror, Debug: true})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		frames uint32
		opts   *Options
		ok     bool
	}{
		{16, nil, true},
		{0, nil, false},
		{16, &Options{MirrorBudget: 16}, false},
		{16, &Options{MirrorBudget: 15}, true},
		{1 << 20, &Options{FrameSize: 1 << 30}, false},
	} {
		a, err := New(tc.frames, tc.opts)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalidOptions)) {
			t.Errorf("New(%d, %+v) = %v", tc.frames, tc.opts, err)
		}
		if err == nil && a.Snapshot().Free != tc.frames {
			t.Errorf("new accounting not all free: %+v", a.Snapshot())
		}
	}
	a, _ := New(4, nil)
	if a.FrameSize() != DefaultFrameSize || a.Total() != 4 {
		t.Errorf("defaults: %d %d", a.FrameSize(), a.Total())
	}
}

func TestLifecycle(t *testing.T) {
	a := newDebug(t, 8, 2)
	buf := make([]uint64, 8)
	var got []Counts
	step := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a.Snapshot())
	}
	if n := a.AllocFill(buf[:4]); n != 4 {
		t.Fatalf("AllocFill = %d", n)
	}
	if diff := cmp.Diff(addrs(0, 1, 2, 3), buf[:4]); diff != "" {
		t.Errorf("fill addresses (-want +got):\n%s", diff)
	}
	step(nil)
	step(a.Received(addrs(0, 1, 2)))
	step(a.Transmit(addrs(0)))
	step(a.Recycle(addrs(1)))
	step(a.Release([]uint64{2*fs + 256})) // an RX address carries headroom
	step(a.Sent(addrs(0)))
	if n := a.AllocMirror(buf[:5]); n != 2 { // reserve is 2
		t.Fatalf("AllocMirror = %d, want 2", n)
	}
	if diff := cmp.Diff(addrs(6, 7), buf[:2]); diff != "" {
		t.Errorf("mirror addresses (-want +got):\n%s", diff)
	}
	step(nil)
	step(a.Sent(addrs(6, 7)))
	step(a.CompletedToFill(addrs(0, 6)))
	step(a.Completed(addrs(7)))
	// Free lists are LIFO: the most recently released frame (2) is warm.
	if n := a.AllocTX(buf[:1]); n != 1 || buf[0] != 2*fs {
		t.Fatalf("AllocTX = %d %#x", n, buf[0])
	}
	step(nil)
	want := []Counts{
		{Total: 8, Free: 4, FillRing: 4, MirrorBudget: 2},
		{Total: 8, Free: 4, FillRing: 1, RX: 3, MirrorBudget: 2},
		{Total: 8, Free: 4, FillRing: 1, RX: 2, TXRing: 1, MirrorBudget: 2},
		{Total: 8, Free: 4, FillRing: 2, RX: 1, TXRing: 1, MirrorBudget: 2},
		{Total: 8, Free: 5, FillRing: 2, TXRing: 1, MirrorBudget: 2},
		{Total: 8, Free: 5, FillRing: 2, Completion: 1, MirrorBudget: 2},
		{Total: 8, Free: 3, FillRing: 2, TXRing: 2, Completion: 1, MirrorInUse: 2, MirrorBudget: 2},
		{Total: 8, Free: 3, FillRing: 2, Completion: 3, MirrorInUse: 2, MirrorBudget: 2},
		{Total: 8, Free: 4, FillRing: 3, Completion: 1, MirrorInUse: 1, MirrorBudget: 2},
		{Total: 8, Free: 5, FillRing: 3, MirrorBudget: 2},
		{Total: 8, Free: 4, FillRing: 3, TXRing: 1, MirrorBudget: 2},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	for _, c := range got {
		if c.Sum() != c.Total {
			t.Errorf("sum %d != total in %+v", c.Sum(), c)
		}
	}
	if st, ok := a.State(6 * fs); !ok || st != Free {
		t.Errorf("mirror frame after CompletedToFill: %v", st)
	}
	if diff := cmp.Diff([]uint64{4, 3, 0, 1, 0}, partValues(a.Snapshot())); diff != "" {
		t.Errorf("Parts (-want +got):\n%s", diff)
	}
}

func partValues(c Counts) []uint64 {
	var v []uint64
	for _, p := range c.Parts() {
		v = append(v, p.Value)
	}
	return v
}

func TestIllegal(t *testing.T) {
	setup := func() *Accounting {
		a := newDebug(t, 8, 2)
		buf := make([]uint64, 4)
		a.AllocFill(buf)            // 0-3 in fill ring
		_ = a.Received(addrs(0, 1)) // 0,1 RX
		_ = a.Transmit(addrs(0))    // 0 TX
		_ = a.Sent(addrs(0))        // 0 completion
		a.AllocMirror(buf[:1])      // 7 in TX
		return a
	}
	for _, tc := range []struct {
		name string
		op   func(a *Accounting) error
	}{
		{"double free", func(a *Accounting) error {
			if err := a.Completed(addrs(0)); err != nil {
				t.Fatal(err)
			}
			return a.Completed(addrs(0))
		}},
		{"free a frame in the fill ring", func(a *Accounting) error { return a.Release(addrs(2)) }},
		{"complete a frame in the fill ring", func(a *Accounting) error { return a.Completed(addrs(2)) }},
		{"receive twice", func(a *Accounting) error { return a.Received(addrs(1)) }},
		{"receive a free frame", func(a *Accounting) error { return a.Received(addrs(5)) }},
		{"twice in one batch", func(a *Accounting) error { return a.Received(addrs(2, 3, 2)) }},
		{"outside the umem", func(a *Accounting) error { return a.Recycle([]uint64{8 * fs}) }},
		{"mirror frame into rx", func(a *Accounting) error { return a.Received(addrs(7)) }},
		{"send a frame not on tx", func(a *Accounting) error { return a.Sent(addrs(1)) }},
		{"batch larger than state", func(a *Accounting) error { return a.Transmit(addrs(1, 2)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := setup()
			before := a.Snapshot()
			var states []State
			for i := range 8 {
				s, _ := a.State(uint64(i) * fs)
				states = append(states, s)
			}
			err := tc.op(a)
			if !errors.Is(err, ErrIllegalTransition) {
				t.Fatalf("got %v, want ErrIllegalTransition", err)
			}
			if tc.name == "double free" {
				return // the first free legitimately changed the state
			}
			if diff := cmp.Diff(before, a.Snapshot()); diff != "" {
				t.Errorf("counts changed by a failed transition (-want +got):\n%s", diff)
			}
			for i := range 8 {
				if s, _ := a.State(uint64(i) * fs); s != states[i] {
					t.Errorf("frame %d: %v -> %v after a failed transition", i, states[i], s)
				}
			}
		})
	}
}

func TestNonDebugChecksCounts(t *testing.T) {
	a, err := New(8, &Options{FrameSize: fs, MirrorBudget: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Received(addrs(0)); !errors.Is(err, ErrIllegalTransition) {
		t.Errorf("receive with an empty fill ring: %v", err)
	}
	buf := make([]uint64, 2)
	a.AllocFill(buf)
	if err := a.Received(addrs(7)); !errors.Is(err, ErrIllegalTransition) {
		t.Errorf("mirror frame into rx: %v", err)
	}
	if err := a.Received(addrs(0, 1, 2)); !errors.Is(err, ErrIllegalTransition) {
		t.Errorf("three frames from a fill ring of two: %v", err)
	}
	if _, ok := a.State(0); ok {
		t.Error("State without Debug")
	}
}

// model is the reference: the set of frames in each state.
type model struct {
	in [numStates]map[uint64]bool
}

func (m *model) move(addrs []uint64, from, to State) {
	for _, x := range addrs {
		delete(m.in[from], x)
		m.in[to][x] = true
	}
}

func (m *model) pick(r *rand.Rand, s State, max int, mirror func(uint64) bool, wantMirror int) []uint64 {
	var out []uint64
	for x := range m.in[s] {
		if len(out) == max {
			break
		}
		if wantMirror >= 0 && mirror(x) != (wantMirror == 1) {
			continue
		}
		if r.IntN(2) == 0 {
			out = append(out, x)
		}
	}
	return out
}

// TestProperty applies random legal transitions (and, between them, random
// illegal ones) and checks after each step that the counts match the model
// and sum to the total, and that illegal ones change nothing.
func TestProperty(t *testing.T) {
	const frames, reserve = 64, 8
	a := newDebug(t, frames, reserve)
	r := rand.New(rand.NewPCG(7, 7))
	var m model
	for i := range m.in {
		m.in[i] = map[uint64]bool{}
	}
	for i := range frames {
		m.in[Free][uint64(i)*fs] = true
	}
	isMirror := func(x uint64) bool { return x/fs >= frames-reserve }
	buf := make([]uint64, 16)
	illegal := 0
	for step := range 20000 {
		k := 1 + r.IntN(16)
		switch r.IntN(10) {
		case 0:
			n := a.AllocFill(buf[:k])
			m.move(buf[:n], Free, FillRing)
		case 1:
			n := a.AllocTX(buf[:k])
			m.move(buf[:n], Free, TXRing)
		case 2:
			n := a.AllocMirror(buf[:k])
			for _, x := range buf[:n] {
				if !isMirror(x) {
					t.Fatalf("AllocMirror gave primary frame %#x", x)
				}
			}
			m.move(buf[:n], Free, TXRing)
		case 3:
			b := m.pick(r, FillRing, k, isMirror, -1)
			mustOK(t, a.Received(b))
			m.move(b, FillRing, RX)
		case 4:
			b := m.pick(r, RX, k, isMirror, -1)
			mustOK(t, a.Recycle(b))
			m.move(b, RX, FillRing)
		case 5:
			b := m.pick(r, RX, k, isMirror, -1)
			mustOK(t, a.Transmit(b))
			m.move(b, RX, TXRing)
		case 6:
			b := m.pick(r, RX, k, isMirror, -1)
			mustOK(t, a.Release(b))
			m.move(b, RX, Free)
		case 7:
			b := m.pick(r, TXRing, k, isMirror, -1)
			mustOK(t, a.Sent(b))
			m.move(b, TXRing, Completion)
		case 8:
			b := m.pick(r, Completion, k, isMirror, -1)
			mustOK(t, a.Completed(b))
			m.move(b, Completion, Free)
		case 9:
			b := m.pick(r, Completion, k, isMirror, -1)
			mustOK(t, a.CompletedToFill(b))
			for _, x := range b {
				if isMirror(x) {
					m.move([]uint64{x}, Completion, Free)
				} else {
					m.move([]uint64{x}, Completion, FillRing)
				}
			}
		}
		// An illegal attempt: release a frame that is not in RX.
		if step%7 == 0 {
			for s := Free; s < numStates; s++ {
				if s == RX || len(m.in[s]) == 0 {
					continue
				}
				b := m.pick(r, s, 1, isMirror, -1)
				if len(b) == 1 {
					before := a.Snapshot()
					if err := a.Release(b); !errors.Is(err, ErrIllegalTransition) {
						t.Fatalf("step %d: release of a %v frame: %v", step, s, err)
					}
					if a.Snapshot() != before {
						t.Fatalf("step %d: failed release changed counts", step)
					}
					illegal++
				}
				break
			}
		}
		c := a.Snapshot()
		want := Counts{Total: frames, MirrorBudget: reserve,
			Free: uint32(len(m.in[Free])), FillRing: uint32(len(m.in[FillRing])), RX: uint32(len(m.in[RX])),
			TXRing: uint32(len(m.in[TXRing])), Completion: uint32(len(m.in[Completion]))}
		for _, s := range []State{TXRing, Completion} {
			for x := range m.in[s] {
				if isMirror(x) {
					want.MirrorInUse++
				}
			}
		}
		if c != want || c.Sum() != frames {
			t.Fatalf("step %d: counts %+v, model %+v", step, c, want)
		}
		for s := Free; s < numStates; s++ {
			for x := range m.in[s] {
				if got, _ := a.State(x); got != s {
					t.Fatalf("step %d: frame %#x is %v, model %v", step, x, got, s)
				}
			}
		}
	}
	if illegal == 0 {
		t.Error("no illegal transition was tried")
	}
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentSnapshot runs a writer cycling frames through every state
// and a reader that must never see a sum other than the total.
func TestConcurrentSnapshot(t *testing.T) {
	a, err := New(256, &Options{MirrorBudget: 16})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Add(1)
	reads := 0
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			c := a.Snapshot()
			if c.Sum() != c.Total || c.MirrorInUse > c.MirrorBudget || c.MirrorInUse > c.TXRing+c.Completion {
				t.Errorf("torn snapshot: %+v", c)
				return
			}
			reads++
		}
	}()
	buf, m := make([]uint64, 32), make([]uint64, 4)
	for range 20000 {
		n := a.AllocFill(buf)
		mustOK(t, a.Received(buf[:n]))
		mustOK(t, a.Transmit(buf[:n/2]))
		mustOK(t, a.Recycle(buf[n/2:n]))
		k := a.AllocMirror(m)
		mustOK(t, a.Sent(buf[:n/2]))
		mustOK(t, a.Sent(m[:k]))
		mustOK(t, a.Completed(buf[:n/2]))
		mustOK(t, a.CompletedToFill(m[:k]))
		// Frames recycled to the fill ring come back as RX next round;
		// model that by receiving and releasing them.
		mustOK(t, a.Received(buf[n/2:n]))
		mustOK(t, a.Release(buf[n/2:n]))
	}
	close(done)
	wg.Wait()
	if c := a.Snapshot(); c.Free != 256 {
		t.Errorf("frames leaked: %+v", c)
	}
	t.Logf("%d consistent snapshots during the run", reads)
}

func TestAllocs(t *testing.T) {
	a, _ := New(1024, &Options{MirrorBudget: 64})
	buf := make([]uint64, 64)
	if n := testing.AllocsPerRun(200, func() {
		n := a.AllocFill(buf)
		_ = a.Received(buf[:n])
		_ = a.Transmit(buf[:n])
		_ = a.Sent(buf[:n])
		_ = a.Completed(buf[:n])
		_ = a.Snapshot()
	}); n != 0 {
		t.Errorf("transitions allocate %.1f times", n)
	}
}

// BenchmarkForwardCycle is one batch of 64 frames through fill, RX, TX,
// completion and back: the per-frame cost of the accounting on the
// forwarding path.
func BenchmarkForwardCycle(b *testing.B) {
	for _, debug := range []bool{false, true} {
		name := "fast"
		if debug {
			name = "debug"
		}
		b.Run(name, func(b *testing.B) {
			a, _ := New(4096, &Options{Debug: debug})
			buf := make([]uint64, 64)
			b.ReportAllocs()
			for b.Loop() {
				n := a.AllocFill(buf)
				_ = a.Received(buf[:n])
				_ = a.Transmit(buf[:n])
				_ = a.Sent(buf[:n])
				_ = a.CompletedToFill(buf[:n])
				_ = a.Received(buf[:n])
				_ = a.Release(buf[:n])
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/frame")
		})
	}
}
