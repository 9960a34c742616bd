package userspacebackend

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/userspacebackend/internal/xsk"
)

// DefaultMirrorReserve is Options.MirrorReserve's default for a managed
// interface that is a mirror output: frames its clones may hold at once
// (512 KiB of UMEM with 2 KiB frames). It also bounds the TX ring slots
// clones can occupy there, an eighth of the default ring, so primary
// traffic out of that port keeps the rest.
const DefaultMirrorReserve = 256

// A SPAN port (TX-only binding) carries nothing but clones, so its
// default reserve is half its TX ring: its worker may lag the mirroring
// workers by that much before clones are dropped (no_frame).
// spanStall is how long a SPAN worker waits when the kernel took nothing
// off its TX ring.
const spanStall = 200 * time.Microsecond

func spanReserve(txRing uint32) uint32 { return max(txRing/2, DefaultMirrorReserve) }

// spanRing is the fill and RX ring size of a TX-only (SPAN) binding. The
// kernel binds no UMEM without a fill and a completion ring
// (xsk_validate_queues), even when the socket never receives; without a
// shim on the interface nothing is ever redirected to it, so the smallest
// ring keeps the frames it pins few.
const spanRing = 64

// Mirror counters of one rule.
const (
	mSelected = iota
	mMirrored
	mBytes
	mDropNoFrame
	mDropTXFull
	mDropNotBound
	mDropDown
	mDropBusy
	mDropBacklog
	numMirror
)

var mirrorNames = [numMirror]string{
	mSelected:     "mirror_selected",
	mMirrored:     "mirrored_packets",
	mBytes:        "mirrored_bytes",
	mDropNoFrame:  "mirror_dropped_no_frame",
	mDropTXFull:   "mirror_dropped_tx_full",
	mDropNotBound: "mirror_dropped_output_not_bound",
	mDropDown:     "mirror_dropped_output_down",
	mDropBusy:     "mirror_dropped_output_busy",
	mDropBacklog:  "mirror_dropped_primary_backlog",
}

// mirrorShedFraction: a worker whose RX ring still holds more than this
// share of its slots after taking a batch is falling behind its own
// traffic, and makes no clones for that batch (mirror_dropped_primary_
// backlog) until it has caught up. Clones cost a copy here and a second
// copy-mode transmit on the output, and on a core that is already short
// that work would come out of primary forwarding. Measured on the netlab
// lab at saturation (one flow, rate 1, BenchmarkMirrorForwarding): primary
// at 0.61-0.69 of the unmirrored rate without shedding.
const mirrorShedFraction = 2 // 1/2 of the ring

// mirrorCounters are one rule's counters, kept by the backend across
// Applies (keyed by scope) so they never go backwards while the rule
// stays. Workers add once per batch.
type mirrorCounters struct {
	scope string
	c     [numMirror]atomic.Uint64
}

func (m *mirrorCounters) add(local *[numMirror]uint64) {
	for i, v := range local {
		if v != 0 {
			m.c[i].Add(v)
		}
	}
}

// mirrorView is one rule as a generation sees it. Immutable.
type mirrorView struct {
	rate uint64 // <= 1: every frame
	out  *portView
	cnt  *mirrorCounters
}

// mirrorPlan is a rule being applied.
type mirrorPlan struct {
	in      int
	out     string
	managed bool
	rate    uint64
	scope   string
}

func mirrorScope(in, out string) string { return "mirror " + in + "->" + out }

// planMirrors resolves the mirror rules of cfg, in the dataplane's
// namespace. An output that is not found is skipped with a warning; an
// unmanaged one gets a TX-only (SPAN) port, reused from the running
// generation when it is the same interface, else opened here (and undone
// by the caller on failure).
func (b *Backend) planMirrors(cfg *dataplane.Config, byName map[string]int, res *dataplane.ApplyResult, xo *xsk.Options,
	undo *undoStack, started *[]*binding) ([]mirrorPlan, map[string]*port, error) {
	var plans []mirrorPlan
	spans := map[string]*port{}
	for i, r := range cfg.PortMirroring {
		p := mirrorPlan{in: byName[r.Input], out: r.Output, rate: uint64(r.Rate), scope: mirrorScope(r.Input, r.Output)}
		if _, ok := byName[r.Output]; ok {
			p.managed = true
			plans = append(plans, p)
			continue
		}
		lk, err := netlink.LinkByName(r.Output)
		if err != nil || lk.Attrs() == nil {
			res.Warnings = append(res.Warnings, dataplane.Warning{Field: fmt.Sprintf("port_mirroring[%d].output", i),
				Message: fmt.Sprintf("interface %q not found in the dataplane's network namespace: mirroring %s is skipped", r.Output, r.Input)})
			continue
		}
		plans = append(plans, p)
		if spans[r.Output] != nil {
			continue
		}
		a := lk.Attrs()
		sp := b.spans[r.Output]
		if sp == nil || sp.ifindex != a.Index {
			sp = &port{name: r.Output, ifindex: a.Index}
			sp.linkUp.Store(linkUsable(a))
			so := *xo
			so.FillRingSize, so.RXRingSize = spanRing, spanRing
			so.Frames = spanRing
			bd := newBinding(b, sp, 0, &so)
			bd.span = true
			bd.wake = make(chan struct{}, 1)
			if b.opts.MirrorReserve > 0 {
				bd.mirrorReserve.Store(b.opts.MirrorReserve)
			} else {
				bd.mirrorReserve.Store(spanReserve(txRingOf(xo)))
			}
			if sp.linkUp.Load() {
				if err := bd.open(); err != nil {
					return nil, nil, fmt.Errorf("bind mirror output %s queue 0: %w", r.Output, err)
				}
			}
			undo.push(func() { bd.closeSocket() })
			*started = append(*started, bd)
			sp.bindings = map[int]*binding{0: bd}
		}
		spans[r.Output] = sp
	}
	return plans, spans, nil
}

func txRingOf(xo *xsk.Options) uint32 {
	if xo.TXRingSize != 0 {
		return xo.TXRingSize
	}
	return xo.RingSize
}

func (b *Backend) mirrorReserve() uint32 {
	if b.opts.MirrorReserve > 0 {
		return b.opts.MirrorReserve
	}
	return DefaultMirrorReserve
}

// attachMirrors adds the rules and the SPAN ports to a new snapshot.
// applyMu is held.
func (b *Backend) attachMirrors(s *snapshot, plans []mirrorPlan, spans map[string]*port) {
	spanViews := map[string]*portView{}
	for _, sp := range spans {
		v := &portView{port: sp, txq: []*binding{sp.bindings[0]}}
		s.spans = append(s.spans, v)
		spanViews[sp.name] = v
	}
	if b.mirrorCnt == nil {
		b.mirrorCnt = map[string]*mirrorCounters{}
	}
	keep := map[string]*mirrorCounters{}
	for _, p := range plans {
		var out *portView
		if p.managed {
			for _, v := range s.ports {
				if v.name == p.out {
					out = v
				}
			}
		} else {
			out = spanViews[p.out]
		}
		if out == nil {
			continue
		}
		c := b.mirrorCnt[p.scope]
		if c == nil {
			c = &mirrorCounters{scope: p.scope}
		}
		keep[p.scope] = c
		if s.mirrors == nil {
			s.mirrors = map[int]*mirrorView{}
		}
		mv := &mirrorView{rate: p.rate, out: out, cnt: c}
		s.mirrors[p.in] = mv
		s.mirrorList = append(s.mirrorList, mv)
	}
	b.mirrorCnt = keep
}

// mirror clones the selected frames of a received batch, whole and as
// received (before the TTL decrement and the L2 rewrite, VLAN tag
// included), into the mirror pool of the output binding and queues them
// on its TX ring. It never waits and never touches a frame or a ring slot
// primary forwarding needs:
//
//   - frames come from the output binding's mirror pool (xsk
//     Options.MirrorFrames), not from its free stack or fill ring;
//   - a worker already behind its own traffic (more than half its RX
//     ring waiting after this batch) makes no clones for the batch
//     (primary_backlog): the copy and the output's transmit would come
//     out of the primary path's CPU exactly when it has none to spare;
//   - the output's lock is taken with TryLock. Its holders are the
//     output's own worker and workers forwarding into it, each for a
//     batch's worth of ring work (the sendto is made after the lock is
//     released); waiting for them would still put the mirror port's load
//     on this ingress worker's primary path. A busy lock drops the
//     batch's clones and counts them (output_busy) instead;
//   - a full TX ring or an empty pool drops the clone (tx_full, no_frame).
//
// So every selected frame is either mirrored (queued on the TX ring) or
// counted under exactly one drop reason. The worker holds no other lock
// meanwhile, so mirroring adds no lock-ordering edge.
func (w *worker) mirror(mv *mirrorView, src *xsk.Binding, batch []xsk.Desc) {
	sel := w.msel[:0]
	if mv.rate <= 1 {
		for i := range batch {
			sel = append(sel, i)
		}
	} else {
		// 1 in N per binding: a plain counter, no shared state.
		for i := range batch {
			w.mseq++
			if w.mseq >= mv.rate {
				w.mseq = 0
				sel = append(sel, i)
			}
		}
	}
	w.msel = sel[:0]
	n := uint64(len(sel))
	if n == 0 {
		return
	}
	var c [numMirror]uint64
	c[mSelected] = n
	defer mv.cnt.add(&c)
	if src.RXPending() > src.RXSize()/mirrorShedFraction {
		c[mDropBacklog] += n
		return
	}
	out := mv.out
	if !out.linkUp.Load() {
		c[mDropDown] += n
		return
	}
	if len(out.txq) == 0 {
		c[mDropNotBound] += n
		return
	}
	eb := out.txq[w.bd.queue%len(out.txq)]
	if !eb.mu.TryLock() {
		c[mDropBusy] += n
		return
	}
	// A managed output is kicked here, after its lock is released (as
	// primary transmit does); a SPAN output by its own worker.
	if kick := w.mirrorLocked(eb, src, batch, sel, &c); kick != nil {
		if err := kick.Kick(); err != nil && !errors.Is(err, xsk.ErrClosed) {
			w.c[cKickErrors]++
		}
	}
}

// mirrorLocked copies the selected frames into eb's mirror pool and queues
// them, with eb.mu held (and released on return). It returns the socket to
// kick, or nil.
func (w *worker) mirrorLocked(eb *binding, src *xsk.Binding, batch []xsk.Desc, sel []int, c *[numMirror]uint64) *xsk.Binding {
	defer eb.mu.Unlock()
	n := uint64(len(sel))
	exb := eb.xb
	if exb == nil {
		c[mDropNotBound] += n
		return nil
	}
	exb.Complete()
	descs := w.mtx[:0]
	handed := 0
	defer releaseOnPanic(exb, &descs, &handed)
	for k, i := range sel {
		td, ok := exb.AllocMirror()
		if !ok {
			c[mDropNoFrame] += n - uint64(k)
			break
		}
		in := src.Frame(batch[i])
		dst := exb.Frame(td)
		td.Len = uint32(copy(dst[:cap(dst)], in))
		descs = append(descs, td)
	}
	if len(descs) == 0 {
		return nil
	}
	q, _ := exb.Enqueue(descs)
	handed = q
	if q < len(descs) {
		c[mDropTXFull] += uint64(len(descs) - q)
		_ = exb.Release(descs[q:])
	}
	handed = len(descs)
	c[mMirrored] += uint64(q)
	for _, d := range descs[:q] {
		c[mBytes] += uint64(d.Len)
	}
	w.mtx = descs[:0]
	if eb.span {
		// The SPAN port's own worker makes the sendto, so the kernel's
		// copy-mode TX work for clones is not done on this primary path.
		select {
		case eb.wake <- struct{}{}:
		default:
		}
		return nil
	}
	return exb
}

// mirrorRows appends to rs the mirror budget rows (one per binding with a
// pool) and to cs every rule's counters; stats are the report's binding
// statistics.
func mirrorRows(rs []dataplane.Resource, cs []dataplane.Counter, u *arena, s *snapshot, stats []bindingStat) ([]dataplane.Resource, []dataplane.Counter) {
	// Egress bindings of the mirror rules, each reported once: a handful,
	// so a linear search beats a map (which would be the report's
	// largest allocation after its rows).
	first := len(rs)
	for _, mv := range s.mirrorList {
	next:
		for _, bd := range mv.out.txq {
			for _, r := range rs[first:] {
				if r.Scope == bd.name {
					continue next
				}
			}
			var st *xsk.Stats
			for i := range stats {
				if stats[i].bd == bd && stats[i].ok {
					st = &stats[i].st
				}
			}
			if st == nil {
				rs = append(rs, dataplane.Resource{Name: "mirror_budget", Kind: dataplane.KindUMEM, Scope: bd.name,
					Error: "binding " + stateNames[bd.state.Load()] + errSuffix(bd)})
				continue
			}
			rs = append(rs, dataplane.Resource{Name: "mirror_budget", Kind: dataplane.KindUMEM, Scope: bd.name,
				Capacity: uint64(st.MirrorFrames), Used: u.used(uint64(st.MirrorFrames - st.MirrorFree)), Method: dataplane.MethodCounter})
		}
		for i := range mv.cnt.c {
			cs = append(cs, dataplane.Counter{Name: mirrorNames[i], Scope: mv.cnt.scope, Value: mv.cnt.c[i].Load()})
		}
	}
	return rs, cs
}

// spanLoop is the worker of a SPAN (TX-only) binding: it receives nothing;
// it kicks the TX ring the mirroring workers fill, without their lock (so
// they never find it held across a sendto), and sleeps until a producer
// wakes it or for IdlePoll. Completions are reaped by the producers under
// the lock at every batch; this loop reaps only after an idle period (so
// a drained binding frees its frames) and only with TryLock, so it never
// makes a producer's TryLock fail while clones flow.
func (w *worker) spanLoop() exitReason {
	bd := w.bd
	t := time.NewTimer(bd.be.opts.IdlePoll)
	defer t.Stop()
	for {
		if bd.stopReq.Load() {
			return exitStop
		}
		if !bd.port.linkUp.Load() {
			return exitLinkDown
		}
		if bd.rebindReq.Swap(false) {
			return exitRebind
		}
		// Only this goroutine closes or replaces the socket.
		xb := bd.live.Load()
		if xb == nil {
			return exitRebind
		}
		before := xb.TXConsumed()
		if err := xb.Kick(); err != nil && !errors.Is(err, xsk.ErrClosed) {
			w.c[cKickErrors]++
			bd.cnt.add(&w.c)
		}
		wait := bd.be.opts.IdlePoll
		if xb.TXPending() {
			if xb.TXConsumed() != before {
				runtime.Gosched()
				continue
			}
			// The kernel took nothing (a saturated or failing port):
			// back off rather than spin on a core primary traffic needs;
			// the clones meanwhile are dropped as no_frame or tx_full.
			wait = spanStall
		}
		t.Reset(wait)
		select {
		case <-bd.wake:
		case <-t.C:
			if bd.mu.TryLock() {
				xb.Complete()
				bd.mu.Unlock()
			}
		}
	}
}
