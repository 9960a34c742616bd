package umem

import (
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync/atomic"

	"github.com/fwplane/fwplane/dataplane"
)

// State is where a frame is.
type State uint8

const (
	Free State = iota
	FillRing
	RX
	TXRing
	Completion
	numStates
	moving State = 0xff // debug: marked inside a batch being validated
)

var stateNames = [numStates]string{"free", "fill_ring", "rx", "tx_ring", "completion"}

func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Errors.
var (
	ErrIllegalTransition = errors.New("illegal frame transition")
	ErrInvalidOptions    = errors.New("invalid umem options")
)

// DefaultFrameSize is the usual AF_XDP chunk size.
const DefaultFrameSize = 4096

// Options configures an Accounting; nil means defaults.
type Options struct {
	// FrameSize is the UMEM chunk size in bytes; 0 means DefaultFrameSize.
	FrameSize uint32
	// MirrorBudget is the number of frames reserved for mirror clones.
	MirrorBudget uint32
	// Debug tracks the state of every frame and checks each one.
	Debug bool
}

// Accounting tracks the frames of one UMEM. See the package documentation.
type Accounting struct {
	total, frameSize, mirrorBase uint32
	shift                        uint8 // log2(frameSize) when a power of two, else 0

	seq         atomic.Uint64
	counts      [numStates]atomic.Uint32
	mirrorInUse atomic.Uint32

	// Writer-only state.
	local       [numStates]uint32
	localMirror uint32
	freePrimary []uint64
	freeMirror  []uint64
	state       []State // Debug only
}

// New returns the accounting of a UMEM of frames frames, all Free.
func New(frames uint32, opts *Options) (*Accounting, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.FrameSize == 0 {
		o.FrameSize = DefaultFrameSize
	}
	switch {
	case frames == 0:
		return nil, fmt.Errorf("new umem accounting: zero frames: %w", ErrInvalidOptions)
	case o.MirrorBudget >= frames:
		return nil, fmt.Errorf("new umem accounting: mirror budget %d leaves none of %d frames for forwarding: %w",
			o.MirrorBudget, frames, ErrInvalidOptions)
	case uint64(frames)*uint64(o.FrameSize) > 1<<48:
		return nil, fmt.Errorf("new umem accounting: %d frames of %d bytes: %w", frames, o.FrameSize, ErrInvalidOptions)
	}
	a := &Accounting{total: frames, frameSize: o.FrameSize, mirrorBase: frames - o.MirrorBudget}
	if o.FrameSize&(o.FrameSize-1) == 0 {
		a.shift = uint8(bits.TrailingZeros32(o.FrameSize)) // a shift, not a 64-bit divide, per frame
	}
	a.freePrimary = make([]uint64, 0, a.mirrorBase)
	a.freeMirror = make([]uint64, 0, o.MirrorBudget)
	// Hand out low addresses first: pop from the end of a descending stack.
	for i := int(a.mirrorBase) - 1; i >= 0; i-- {
		a.freePrimary = append(a.freePrimary, uint64(i)*uint64(a.frameSize))
	}
	for i := int(frames) - 1; i >= int(a.mirrorBase); i-- {
		a.freeMirror = append(a.freeMirror, uint64(i)*uint64(a.frameSize))
	}
	if o.Debug {
		a.state = make([]State, frames) // all Free (0)
	}
	a.local[Free] = frames
	a.counts[Free].Store(frames)
	return a, nil
}

// Total returns the number of frames.
func (a *Accounting) Total() uint32 { return a.total }

// FrameSize returns the chunk size.
func (a *Accounting) FrameSize() uint32 { return a.frameSize }

// publish copies the writer's counts to the atomics inside the seqlock.
func (a *Accounting) publish() {
	a.seq.Add(1)
	for i := range a.local {
		a.counts[i].Store(a.local[i])
	}
	a.mirrorInUse.Store(a.localMirror)
	a.seq.Add(1)
}

func (a *Accounting) index(addr uint64) (uint32, bool) {
	var i uint64
	if a.shift != 0 {
		i = addr >> a.shift
	} else {
		i = addr / uint64(a.frameSize)
	}
	return uint32(i), i < uint64(a.total)
}

// alloc pops up to len(dst) frames from stack into state to.
func (a *Accounting) alloc(stack *[]uint64, dst []uint64, to State, mirror bool) int {
	s := *stack
	n := min(len(dst), len(s))
	for i := range n {
		addr := s[len(s)-1-i]
		dst[i] = addr
		if a.state != nil {
			i, _ := a.index(addr)
			a.state[i] = to
		}
	}
	*stack = s[:len(s)-n]
	if n == 0 {
		return 0
	}
	a.local[Free] -= uint32(n)
	a.local[to] += uint32(n)
	if mirror {
		a.localMirror += uint32(n)
	}
	a.publish()
	return n
}

// AllocFill takes up to len(dst) free primary frames for the fill ring and
// writes their addresses to dst. It returns how many it took.
func (a *Accounting) AllocFill(dst []uint64) int {
	return a.alloc(&a.freePrimary, dst, FillRing, false)
}

// AllocTX takes up to len(dst) free primary frames to be written and put on
// the TX ring (a copy from another UMEM, say).
func (a *Accounting) AllocTX(dst []uint64) int { return a.alloc(&a.freePrimary, dst, TXRing, false) }

// AllocMirror takes up to len(dst) frames of the mirror reserve for clones
// to be put on the TX ring; fewer (possibly 0) when the reserve is in use.
func (a *Accounting) AllocMirror(dst []uint64) int { return a.alloc(&a.freeMirror, dst, TXRing, true) }

// move validates and applies a batch transition from -> to. Mirror frames
// in the batch go to mirrorTo instead of to (used by CompletedToFill) and
// are rejected when mirrorOK is false.
func (a *Accounting) move(op string, addrs []uint64, from, to State, mirrorOK bool, mirrorTo State) error {
	if len(addrs) == 0 {
		return nil
	}
	if uint32(len(addrs)) > a.local[from] || len(addrs) > int(a.total) {
		return fmt.Errorf("%s: %d frames but %d in %s: %w", op, len(addrs), a.local[from], from, ErrIllegalTransition)
	}
	mirrors := uint32(0)
	for _, addr := range addrs {
		i, ok := a.index(addr)
		if !ok {
			return fmt.Errorf("%s: frame %#x outside the umem: %w", op, addr, ErrIllegalTransition)
		}
		if i >= a.mirrorBase {
			if !mirrorOK {
				return fmt.Errorf("%s: frame %#x is a mirror frame: %w", op, addr, ErrIllegalTransition)
			}
			mirrors++
		}
	}
	if a.state != nil {
		for k, addr := range addrs {
			i, _ := a.index(addr)
			if st := a.state[i]; st != from {
				for _, back := range addrs[:k] { // undo the marks
					j, _ := a.index(back)
					a.state[j] = from
				}
				what := st.String()
				if st == moving {
					what = "twice in this batch"
				}
				return fmt.Errorf("%s: frame %#x is %s, not %s: %w", op, addr, what, from, ErrIllegalTransition)
			}
			a.state[i] = moving
		}
	}
	n := uint32(len(addrs))
	primary := n - mirrors
	for _, addr := range addrs {
		i, _ := a.index(addr)
		dest := to
		if i >= a.mirrorBase {
			dest = mirrorTo
		}
		if a.state != nil {
			a.state[i] = dest
		}
		if dest == Free {
			base := uint64(i) * uint64(a.frameSize)
			if i >= a.mirrorBase {
				a.freeMirror = append(a.freeMirror, base)
			} else {
				a.freePrimary = append(a.freePrimary, base)
			}
		}
	}
	a.local[from] -= n
	a.local[to] += primary
	a.local[mirrorTo] += mirrors
	if mirrorTo == Free {
		a.localMirror -= mirrors
	}
	a.publish()
	return nil
}

// Received moves frames the kernel returned on the RX ring from FillRing to RX.
func (a *Accounting) Received(addrs []uint64) error {
	return a.move("received", addrs, FillRing, RX, false, RX)
}

// Recycle puts received frames back on the fill ring (RX -> FillRing).
func (a *Accounting) Recycle(addrs []uint64) error {
	return a.move("recycle", addrs, RX, FillRing, false, FillRing)
}

// Transmit puts received frames on the TX ring in place (RX -> TXRing).
func (a *Accounting) Transmit(addrs []uint64) error {
	return a.move("transmit", addrs, RX, TXRing, false, TXRing)
}

// Release returns received frames to the free list (RX -> Free).
func (a *Accounting) Release(addrs []uint64) error {
	return a.move("release", addrs, RX, Free, false, Free)
}

// Sent records that the kernel consumed frames from the TX ring
// (TXRing -> Completion).
func (a *Accounting) Sent(addrs []uint64) error {
	return a.move("sent", addrs, TXRing, Completion, true, Completion)
}

// Completed frees frames reaped from the completion ring (Completion -> Free).
func (a *Accounting) Completed(addrs []uint64) error {
	return a.move("completed", addrs, Completion, Free, true, Free)
}

// CompletedToFill puts reaped primary frames straight back on the fill ring;
// mirror frames in the batch go to Free (their reserve) instead.
func (a *Accounting) CompletedToFill(addrs []uint64) error {
	return a.move("completed to fill", addrs, Completion, FillRing, true, Free)
}

// State returns the tracked state of the frame at addr (Debug only).
func (a *Accounting) State(addr uint64) (State, bool) {
	i, ok := a.index(addr)
	if !ok || a.state == nil {
		return 0, false
	}
	return a.state[i], true
}

// Counts is a consistent read of an Accounting: Free+FillRing+RX+TXRing+
// Completion == Total.
type Counts struct {
	Total, Free, FillRing, RX, TXRing, Completion uint32
	// MirrorInUse counts mirror-reserve frames in TXRing or Completion (a
	// sub-count, not an extra state); MirrorBudget is the reserve's size.
	MirrorInUse, MirrorBudget uint32
}

// Sum returns the sum of the states.
func (c Counts) Sum() uint32 { return c.Free + c.FillRing + c.RX + c.TXRing + c.Completion }

// Parts returns the state breakdown for dataplane.Resource.Breakdown.
func (c Counts) Parts() []dataplane.Part {
	return []dataplane.Part{
		{Name: "free", Value: uint64(c.Free)}, {Name: "fill_ring", Value: uint64(c.FillRing)},
		{Name: "rx", Value: uint64(c.RX)}, {Name: "tx_ring", Value: uint64(c.TXRing)},
		{Name: "completion", Value: uint64(c.Completion)},
	}
}

// Snapshot reads the counters consistently; safe from any goroutine. It
// retries while the writer is mid-update, yielding the processor between
// attempts, so it never returns a torn read.
func (a *Accounting) Snapshot() Counts {
	for spin := 0; ; spin++ {
		s1 := a.seq.Load()
		if s1&1 == 0 {
			c := Counts{
				Total: a.total, MirrorBudget: a.total - a.mirrorBase,
				Free: a.counts[Free].Load(), FillRing: a.counts[FillRing].Load(), RX: a.counts[RX].Load(),
				TXRing: a.counts[TXRing].Load(), Completion: a.counts[Completion].Load(),
				MirrorInUse: a.mirrorInUse.Load(),
			}
			if a.seq.Load() == s1 {
				return c
			}
		}
		if spin%16 == 15 {
			runtime.Gosched()
		}
	}
}
