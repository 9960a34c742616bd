package userspacebackend

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/policy"
	"github.com/fwplane/fwplane/userspacebackend/internal/flowcache"
	"github.com/fwplane/fwplane/userspacebackend/internal/pkt"
	"github.com/fwplane/fwplane/userspacebackend/internal/session"
	"github.com/fwplane/fwplane/userspacebackend/internal/xsk"
)

// Ways a frame of a batch leaves.
const (
	opForward  uint8 = iota // the frame, its MACs rewritten (and its tag dropped)
	opFragment              // the frame as IPv4 fragments of at most mtu bytes
	opICMP                  // an ICMP error built in the worker's scratch slot gen
)

// fwd is one frame of a batch that is to be transmitted.
type fwd struct {
	idx        int // in worker.rx
	op         uint8
	vlan       bool
	gen        uint16 // opICMP: scratch slot
	mtu        uint16 // opFragment: the egress MTU
	l3, l4     uint16 // opFragment: header offsets in the frame
	ipLen      uint16 // opFragment: IP datagram length
	dmac, smac [6]byte
	eg         *portView
}

// genSlot is the size of one scratch buffer for a generated ICMP error:
// Ethernet, a VLAN tag and the largest error (an ICMPv6 one fits 1280
// bytes, the IPv6 minimum MTU).
const genSlot = 14 + 4 + 1280

// worker is the per-binding datapath state. Everything here belongs to
// the binding's goroutine; nothing allocates per packet.
type worker struct {
	bd *binding
	fc *flowcache.Cache
	// fcSize is the tables.flow_cache fc was made for.
	fcSize uint32
	xb     *xsk.Binding // the socket of the batch in flight
	rx     []xsk.Desc
	tx     []xsk.Desc
	fwds   []fwd
	group  []fwd
	done   []bool
	info   pkt.Info
	c      [numCounters]uint64
	// Port mirroring: the 1-in-N counter, and scratch for the selected
	// frames and their clones.
	mseq uint64
	msel []int
	mtx  []xsk.Desc
	// napTXCons is the socket's TX consumer index at the last nap.
	napTXCons uint32
	// lastBeat is when the worker last wrote its heartbeat (Backend.now).
	lastBeat int64
	// ICMP errors generated in this batch: frames, lengths, count, and
	// the IPv4 identification of the next one.
	gen    [][genSlot]byte
	genLen []uint16
	ngen   int
	icmpID uint16
	// xl is the address translation of the frame being classified,
	// applied by finish.
	xl xlate
}

func newWorker(bd *binding) *worker {
	n := bd.be.flowCacheSize()
	w := &worker{
		bd:     bd,
		fc:     flowcache.New(n),
		fcSize: n,
		gen:    make([][genSlot]byte, genSlots),
		genLen: make([]uint16, genSlots),
	}
	w.size(dataplane.DefaultBatchSize)
	return w
}

// genSlots bounds the ICMP errors one batch sends: more than the global
// rate limit's burst (50), so the limit, not this, is what an operator
// sees (icmp_errors_rate_limited).
const genSlots = 64

// size makes the per-batch scratch space hold n frames (a config's
// userspace.batch_size). It allocates only when n grows, which happens
// at a config change, not per packet.
func (w *worker) size(n int) {
	if n <= len(w.rx) {
		return
	}
	w.rx = make([]xsk.Desc, n)
	w.tx = make([]xsk.Desc, 0, n)
	w.fwds = make([]fwd, 0, n)
	w.group = make([]fwd, 0, n)
	w.done = make([]bool, n)
	w.msel = make([]int, 0, n)
	w.mtx = make([]xsk.Desc, 0, n)
}

// loop forwards until the binding must stop, its link went down, or a
// panic (recovered and counted here: a bug in one packet's handling costs
// that binding a rebind, not the process).
func (w *worker) loop() (reason exitReason) {
	defer func() {
		if r := recover(); r != nil {
			w.bd.cnt[cWorkerPanics].Add(1)
			msg := fmt.Sprint(r)
			w.bd.lastPanic.Store(&msg)
			// Counts of the aborted batch are still true events.
			w.bd.cnt.add(&w.c)
			reason = exitPanic
		}
	}()
	if w.bd.span {
		return w.spanLoop()
	}
	idle := 0
	for {
		w.heartbeat()
		if w.bd.stopReq.Load() {
			return exitStop
		}
		if !w.bd.port.linkUp.Load() {
			return exitLinkDown
		}
		if w.bd.rebindReq.Swap(false) {
			return exitRebind
		}
		if h := testHook.Load(); h != nil {
			(*h)(w.bd)
		}
		if w.iterate() {
			idle = 0
			continue
		}
		idle++
		if idle < 64 {
			runtime.Gosched()
			continue
		}
		if w.xb != nil {
			w.nap()
		}
	}
}

// heartbeat tells the shim this queue's worker is alive, once per
// Backend.beatEvery (an eighth of the heartbeat limit): a clock read per
// loop, a store into the mapped heartbeat map per beat.
func (w *worker) heartbeat() {
	every := w.bd.be.beatEvery
	if every == 0 {
		return
	}
	if now := w.bd.be.now(); now-w.lastBeat >= every {
		w.lastBeat = now
		w.bd.port.shim.Beat(uint32(w.bd.queue))
	}
}

// txActiveNap is how long an idle worker sleeps while other workers are
// transmitting through its socket: see nap.
const txActiveNap = 500 * time.Microsecond

// nap sleeps an idle worker: in poll(2) on its socket, woken by the first
// received frame, unless the socket transmitted since the last nap. Then
// it sleeps on a timer instead: a thread waiting in poll on an AF_XDP
// socket makes the kernel take the socket's wait-queue lock for every
// frame it sends (the skb destructor's write-space wake-up), and frames
// forwarded into a port whose own receive side is idle (one-way traffic)
// then cost their sender about 13 % more (measured on the netlab veth lab,
// one flow: 429-433 k pps with the egress worker in poll, 486-489 k pps
// with it asleep on a timer).
// The price is up to txActiveNap of extra latency for the first frame
// arriving on such a port; its worker is busy from then on.
func (w *worker) nap() {
	cons := w.xb.TXConsumed()
	if cons != w.napTXCons {
		w.napTXCons = cons
		time.Sleep(min(txActiveNap, w.bd.be.opts.IdlePoll))
		return
	}
	poll(w.xb.Fd(), w.bd.be.opts.IdlePoll)
}

// iterate runs one batch: reap completions, receive, classify, forward
// (copy into each egress socket under that socket's lock, once per batch
// and egress), give the frames back to the fill ring. The fill ring is
// refilled on every iteration whatever TX does, so RX never starves
// because an egress is slow. It reports whether frames were received.
func (w *worker) iterate() bool {
	bd := w.bd
	snap := bd.be.snap.Load()
	epoch := bd.be.epoch.Load()
	w.size(snap.batch)
	if n := bd.be.flowCacheSize(); n != w.fcSize {
		// tables.flow_cache changed: a new, empty cache (the epoch bump
		// of that Apply emptied the old one anyway).
		w.fc, w.fcSize = flowcache.New(n), n
		bd.fc.Store(w.fc)
	}
	batch := w.rx[:snap.batch]

	bd.mu.Lock()
	xb := bd.xb
	w.xb = xb
	if xb == nil {
		bd.mu.Unlock()
		return false
	}
	xb.Complete()
	n, _ := xb.Receive(batch)
	if n == 0 {
		xb.Refill()
		bd.mu.Unlock()
		// Frames a producer's kick left behind (its budget ran out, or
		// the link was down) leave now. Outside the lock: the sendto is
		// the slow part, and producers must not wait for it.
		if xb.TXPending() {
			if err := xb.Kick(); err != nil && !errors.Is(err, xsk.ErrClosed) {
				w.c[cKickErrors]++
			}
		}
		bd.cnt.add(&w.c)
		return false
	}
	bd.mu.Unlock()

	w.process(snap, epoch, xb, batch[:n])
	// Publish the batch's counts before its frames go back: a reader
	// that sees nothing held by the worker sees every count of it.
	bd.cnt.add(&w.c)

	bd.mu.Lock()
	_ = xb.Release(batch[:n])
	xb.Refill()
	bd.mu.Unlock()
	return true
}

// process classifies a batch and transmits what is forwarded, grouped by
// egress binding.
func (w *worker) process(snap *snapshot, epoch uint64, xb *xsk.Binding, batch []xsk.Desc) {
	now := w.bd.be.now()
	in := snap.port(w.bd.port.ifindex)
	if in == nil {
		// The port left the config; its worker is being retired.
		w.c[cDropEgressUnmanaged] += uint64(len(batch))
		return
	}
	if snap.mirrors != nil {
		// Before classify: it decrements the TTL in place.
		if mv := snap.mirrors[in.ifindex]; mv != nil {
			w.mirror(mv, xb, batch)
		}
	}
	w.fwds = w.fwds[:0]
	w.ngen = 0
	for i, d := range batch {
		frame := xb.Frame(d)
		if f, ok := w.classify(snap, epoch, in, frame, now); ok {
			f.idx = i
			w.fwds = append(w.fwds, f)
		}
	}
	if len(w.fwds) == 0 {
		return
	}
	done := w.done[:len(w.fwds)]
	clear(done)
	for i := range w.fwds {
		if done[i] {
			continue
		}
		eg := w.fwds[i].eg
		w.group = w.group[:0]
		for j := i; j < len(w.fwds); j++ {
			if !done[j] && w.fwds[j].eg == eg {
				w.group = append(w.group, w.fwds[j])
				done[j] = true
			}
		}
		// Spread egress over the port's queues by ingress queue, so two
		// ingress workers rarely contend for one egress lock.
		eb := eg.txq[w.bd.queue%len(eg.txq)]
		w.transmit(eb, xb, w.group)
	}
}

// classify decides one frame: forward (with the rewrite to apply), answer
// (an ICMP error back out of the ingress port) or drop (counted). A
// forwarded frame has its TTL decremented and a partial checksum
// completed in place.
func (w *worker) classify(snap *snapshot, epoch uint64, in *portView, frame []byte, now int64) (fwd, bool) {
	info := &w.info
	if err := pkt.Parse(frame, info); err != nil {
		if errors.Is(err, pkt.ErrNotIP) {
			w.c[cDropNonIP]++
		} else {
			w.c[cDropParse]++
		}
		return fwd{}, false
	}
	t := &info.Tuple
	size := uint32(len(frame))
	icmpErr := info.Flags&pkt.FlagICMPError != 0
	// SYN, FIN and RST move a session's state: never from the cache.
	tcpCtl := t.Proto == unix.IPPROTO_TCP && info.TCPFlags&(session.TCPSyn|session.TCPFin|session.TCPRst) != 0
	w.xl.kind = xlNone
	if !icmpErr && !tcpCtl {
		if d, ok := w.fc.Lookup(in.ifindex, t, epoch); ok {
			if eg := snap.port(int(d.Egress)); eg != nil && (!d.NAT && snap.sessions.Touch(d.Session, now, size) || d.NAT && w.cachedNAT(snap, &d, now, size)) {
				w.c[cFlowCacheHits]++
				w.c[cSessionHits]++
				return w.finish(in, fwd{vlan: info.Flags&pkt.FlagVLAN != 0, dmac: d.DstMAC, smac: eg.mac, eg: eg}, frame, now)
			}
			w.fc.Invalidate(in.ifindex, t)
		}
	}

	// An ICMP error is never a flow of its own: no session lookup.
	var res session.Result
	var rel session.Relation
	var dn *dnatRule
	nat := snap.nat
	sp := session.Packet{Tuple: *t, Zone: in.zone, TCPFlags: info.TCPFlags, Size: size}
	dst := t.DstAddr()
	if !icmpErr {
		res = snap.sessions.Track(&sp, now)
		if res.Verdict == session.Miss && nat != nil {
			// The responder's packets carry the translated tuple.
			res = snap.sessions.TrackReply(&sp, now)
		}
		switch res.Verdict {
		case session.WrongZone:
			// Anti-spoofing: the tuple's session belongs to other zones.
			w.c[cDropZoneMismatch]++
			return fwd{}, false
		case session.Untranslated:
			// A translated flow's tuple in a form its endpoints never send.
			w.c[cNATUntranslated]++
			return fwd{}, false
		case session.Hit:
			if res.NAT {
				orig, x, ok := snap.sessions.Translation(res.Ref)
				if !ok {
					// Ended since Track found it: as if untranslated.
					w.c[cNATUntranslated]++
					return fwd{}, false
				}
				w.xl = xlate{kind: xlPacket, pkt: rewriteFor(&orig, &x, res.Dir)}
				dst = netip.AddrFrom4(w.xl.pkt.dst)
			}
		default:
			if nat != nil && t.Family == policy.FamilyIPv4 {
				// Destination NAT before routing: the route and the policy
				// see the translated destination.
				if dn = nat.matchDNAT(in.zone, t); dn != nil {
					if !translatable(t, info.ICMPType) {
						w.c[cNATUnsupported]++
						return fwd{}, false
					}
					dst = netip.AddrFrom4(dn.to)
				} else if nat.isPool(snap, [4]byte(t.Dst[:4])) {
					w.c[cNATReverseMiss]++
					return fwd{}, false
				}
			}
		}
	} else if nat != nil {
		// The quote says where a translated flow's error goes: relate it
		// before routing.
		rel = w.relate(snap, in, frame, now)
		if rel.OK && rel.Translated && t.Family == policy.FamilyIPv4 {
			w.xl = errorXlate(t, &rel)
			dst = netip.AddrFrom4(w.xl.pkt.dst)
		}
	}
	w.c[cRouteLookups]++
	out, gw, err := snap.router.Lookup(dst)
	if err != nil {
		if errors.Is(err, errLocalRoute) {
			w.c[cDropLocal]++
		} else {
			w.c[cDropNoRoute]++
		}
		return fwd{}, false
	}
	if info.Flags&pkt.FlagLaterFragment != 0 {
		// No ports to check against a session or a policy.
		w.c[cDropFragment]++
		return fwd{}, false
	}
	eg := snap.port(out)
	if eg == nil || len(eg.txq) == 0 {
		// Routing around the zones would bypass the policy: fail closed.
		w.c[cDropEgressUnmanaged]++
		return fwd{}, false
	}
	switch {
	case icmpErr:
		if nat == nil && !w.relate(snap, in, frame, now).OK || nat != nil && !rel.OK {
			w.c[cDropICMPUnrelated]++
			return fwd{}, false
		}
		if w.xl.kind == xlICMPError {
			w.c[cNATICMPTranslated]++
		}
		w.c[cRelatedICMP]++
	case res.Verdict == session.Hit:
		w.c[cSessionHits]++
	default:
		var ok bool
		if res, ok = w.newSession(snap, in, eg, &sp, now, dn); !ok {
			return fwd{}, false
		}
	}
	nh := gw
	if !nh.IsValid() {
		nh = dst
	}
	mac, ok := snap.neigh.Lookup(out, nh)
	if !ok {
		// The kernel resolves; the flow's next packets find the entry.
		snap.neigh.RequestResolve(out, nh)
		return w.passToKernel(in, eg, frame, now)
	}
	if !icmpErr && settled(&res, t.Proto, info.TCPFlags) {
		w.fc.Insert(in.ifindex, t, epoch, flowcache.Decision{Egress: uint32(out), DstMAC: mac, SrcMAC: eg.mac, Session: res.Ref, Dir: res.Dir, NAT: res.NAT})
	}
	return w.finish(in, fwd{vlan: info.Flags&pkt.FlagVLAN != 0, dmac: mac, smac: eg.mac, eg: eg}, frame, now)
}

// cachedNAT touches the session of a flow-cache hit on a translated flow
// and sets the packet's translation from it (never from the cache);
// false when the session is gone.
func (w *worker) cachedNAT(snap *snapshot, d *flowcache.Decision, now int64, size uint32) bool {
	x, ok := snap.sessions.TouchRewrite(d.Session, now, size, d.Dir)
	if !ok {
		return false
	}
	w.xl.kind = xlPacket
	w.xl.pkt = natRewrite{src: x.Src, sport: x.SrcPort, dst: x.Dst, dport: x.DstPort}
	return true
}

// passToKernel finishes a judged packet whose next hop is not resolved
// (TTL, MTU, checksum, as for forwarding) and hands the IP packet to the
// kernel, which sends it out of eg once it has resolved the next hop
// (kernelPass). The packet leaves through the kernel's output path, not
// its forwarding path, so the kernel cannot route it around the
// dataplane: the egress is the one the worker chose. An ICMP error
// finish answers with goes back as usual; a packet that would need
// fragmenting, or that finds the hand-off full, is dropped and counted.
func (w *worker) passToKernel(in, eg *portView, frame []byte, now int64) (fwd, bool) {
	r, ok := w.finish(in, fwd{eg: eg}, frame, now)
	if !ok || r.op == opICMP {
		return r, ok
	}
	info := &w.info
	end := int(info.L3Off) + int(info.IPLen)
	// The destination as the packet now has it: finish applied any
	// destination NAT to the frame, not to the parsed tuple.
	if r.op == opForward && end <= len(frame) && w.bd.be.kpass.pass(eg.ifindex, packetDst(frame[info.L3Off:end]), frame[info.L3Off:end]) {
		w.c[cPassNoNeighbor]++
	} else {
		w.c[cDropNoNeighbor]++
	}
	return fwd{}, false
}

// newSession judges the first packet of a flow, sp, arriving on in and
// routed to eg (dn: the destination rule that translated it, or nil):
// the SYN check (TCP), the policy (on the translated destination), the
// source rule that matches, and the session it creates, between the two
// ports' zones, with its translation. ok is false when it is dropped
// (counted).
func (w *worker) newSession(snap *snapshot, in, eg *portView, sp *session.Packet, now int64, dn *dnatRule) (session.Result, bool) {
	t := &sp.Tuple
	st := dataplane.StateUnreplied
	if t.Proto == unix.IPPROTO_TCP {
		switch f := sp.TCPFlags; {
		case f&(session.TCPSyn|session.TCPAck|session.TCPRst) == session.TCPSyn:
			st = dataplane.StateOpening
		case snap.tcpPickup && f&session.TCPRst == 0:
			st = dataplane.StateEstablished // picked up mid-stream, not assured
		default:
			w.c[cDropTCPNotSYN]++
			return session.Result{}, false
		}
	}
	pt := *t // what the policy judges: the destination as translated
	var x session.NAT
	translated := false
	if dn != nil {
		x = untranslated(t)
		x.Dst = dn.to
		if dn.toPort != 0 {
			x.DstPort = dn.toPort
		}
		x.Tag |= uint64(dn.name) << tagDNATShift
		copy(pt.Dst[:4], x.Dst[:])
		pt.DstPort = x.DstPort
		translated = true
	}
	if allow, _ := snap.policy.Decide(in.ifindex, eg.ifindex, pt); !allow {
		w.c[cDropPolicy]++
		return session.Result{}, false
	}
	if n := snap.nat; n != nil && t.Family == policy.FamilyIPv4 {
		// Source NAT after routing and the policy (which saw the
		// original source): a denied flow takes no slot.
		if r := n.matchSNAT(in.zone, eg.zone, t); r != nil {
			if !translatable(t, w.info.ICMPType) {
				w.c[cNATUnsupported]++
				return session.Result{}, false
			}
			if !translated {
				x = untranslated(t)
			}
			if !n.take(r, eg, t, &x) {
				w.c[cNATPoolExhausted]++
				return session.Result{}, false
			}
			translated = true
		}
	}
	var e session.Entry
	var created bool
	var err error
	if u := untranslated(t); translated && x.Tag&tagSlot == 0 {
		if u.Tag = x.Tag; x == u {
			translated = false // a destination rule onto itself
		}
	}
	if translated {
		e, created, err = snap.sessions.CreateNAT(sp, st, in.zone, eg.zone, now, x)
		if (err != nil || !created) && x.Tag&tagSlot != 0 {
			snap.nat.reg.release(x) // not this session's: give the slot back
		}
	} else {
		e, created, err = snap.sessions.Create(sp, st, in.zone, eg.zone, now)
	}
	if err != nil {
		if errors.Is(err, session.ErrNATClash) {
			w.c[cNATClash]++
		} else {
			w.c[cSessionTableFull]++
		}
		return session.Result{}, false
	}
	if created {
		if t.Family == policy.FamilyIPv4 {
			w.c[cSessionsCreated4]++
		} else {
			w.c[cSessionsCreated6]++
		}
		if translated {
			w.c[cNATTranslated]++
		}
	}
	r := session.Result{Verdict: session.Hit, Ref: e.Ref, State: e.State, Assured: e.Assured, NAT: e.Translated}
	if e.Tuple != *t {
		r.Dir = session.Reverse // another worker created it from the other side
	}
	if e.Translated {
		w.xl = xlate{kind: xlPacket, pkt: rewriteFor(&e.Tuple, &e.NAT, r.Dir)}
	}
	return r, true
}

// untranslated is the translation of t that changes nothing.
func untranslated(t *policy.Tuple) session.NAT {
	return session.NAT{Src: [4]byte(t.Src[:4]), SrcPort: t.SrcPort, Dst: [4]byte(t.Dst[:4]), DstPort: t.DstPort}
}

// settled reports whether the flow cache may serve the packets of this
// (ingress, direction) from now on: nothing they can carry changes the
// session's state (TCP: established and assured, and SYN, FIN and RST
// never use the cache; others: replied, or unreplied seen from the
// initiator's side).
func settled(r *session.Result, proto, flags uint8) bool {
	if proto == unix.IPPROTO_TCP {
		return r.State == dataplane.StateEstablished && r.Assured && flags&(session.TCPSyn|session.TCPFin|session.TCPRst) == 0
	}
	return r.State == dataplane.StateReplied || r.State == dataplane.StateUnreplied && r.Dir == session.Forward
}

// finish applies what the kernel's forwarding path would to a packet
// that is to be forwarded (see icmp_linux.go): the TTL rule (drop and
// answer time exceeded), the egress MTU (fragment, or drop and answer
// too big), then it completes a checksum offload left partial and
// decrements the TTL.
func (w *worker) finish(in *portView, f fwd, frame []byte, now int64) (fwd, bool) {
	info := &w.info
	v4 := info.Tuple.Family == policy.FamilyIPv4
	if info.TTL <= 1 {
		w.c[cDropTTL]++
		typ := uint8(pkt.ICMPTimeExceeded)
		if !v4 {
			typ = pkt.ICMPv6TimeExceeded
		}
		r, ok := w.icmpError(in, frame, now, typ, 0, 0)
		if ok {
			w.c[cICMPTimeExceeded]++
		}
		return r, ok
	}
	if mtu := f.eg.mtu.Load(); mtu != 0 && uint32(info.IPLen) > mtu {
		if pkt.Fragments(info, int(mtu)) == 0 {
			w.c[cDropTooBig]++
			typ, code := uint8(pkt.ICMPDestUnreach), uint8(pkt.ICMPFragNeeded)
			if !v4 {
				typ, code = pkt.ICMPv6PacketTooBig, 0
			}
			r, ok := w.icmpError(in, frame, now, typ, code, mtu)
			if ok {
				w.c[cICMPTooBig]++
			}
			return r, ok
		}
		w.c[cFragmented]++
		f.op, f.mtu = opFragment, uint16(mtu)
		f.l3, f.l4, f.ipLen = info.L3Off, info.L4Off, info.IPLen
	}
	if pkt.CompletePartialChecksum(frame, info) {
		w.c[cChecksumsCompleted]++
	}
	if w.xl.kind != xlNone {
		// After the checksum is complete: the updates are incremental.
		w.xl.apply(frame, info)
	}
	if err := pkt.DecTTL(frame, int(info.L3Off)); err != nil {
		w.c[cDropParse]++
		return fwd{}, false
	}
	return f, true
}

// transmit copies items from src's frames into eb's UMEM and queues them
// on eb's TX ring, under eb's lock, once per batch, then kicks the kernel
// after releasing the lock. A frame that finds no free UMEM frame
// (backpressure_drops) or no TX ring slot (tx_ring_full) is dropped and
// counted: TX never waits, so a slow egress can neither stall this
// worker's RX nor deadlock two workers forwarding into each other.
func (w *worker) transmit(eb *binding, src *xsk.Binding, items []fwd) {
	exb := w.enqueue(eb, src, items)
	if exb == nil {
		return
	}
	// The sendto, outside eb's lock (xsk Kick is safe concurrently with
	// the producer and with Close; a closed socket answers ErrClosed).
	if err := exb.Kick(); err != nil && !errors.Is(err, xsk.ErrClosed) {
		w.c[cKickErrors]++
	}
}

// enqueue is transmit's part under eb's lock: reap, allocate, copy and
// queue on the TX ring. It returns the socket to kick, or nil when
// nothing was queued.
func (w *worker) enqueue(eb *binding, src *xsk.Binding, items []fwd) *xsk.Binding {
	eb.mu.Lock()
	defer eb.mu.Unlock()
	exb := eb.xb
	if exb == nil {
		w.c[cDropEgressDown] += uint64(len(items))
		return nil
	}
	exb.Complete()
	descs := w.tx[:0]
	handed := 0
	defer releaseOnPanic(exb, &descs, &handed)
	for k, it := range items {
		if !w.stage(exb, src, it, &descs) {
			w.c[cBackpressureDrops] += uint64(len(items) - k)
			w.c[cBackpressureEvents]++
			break
		}
	}
	if len(descs) == 0 {
		return nil
	}
	q, _ := exb.Enqueue(descs)
	handed = q
	if q < len(descs) {
		w.c[cTXRingFull] += uint64(len(descs) - q)
		w.c[cBackpressureEvents]++
		_ = exb.Release(descs[q:])
	}
	handed = len(descs)
	w.c[cForwarded] += uint64(q)
	w.tx = descs[:0]
	return exb
}

// stage allocates the egress frames of one item in exb's UMEM, writes
// them and appends them to *descs. It reports false, having allocated
// nothing for the item, when exb has too few free frames.
func (w *worker) stage(exb *xsk.Binding, src *xsk.Binding, it fwd, descs *[]xsk.Desc) bool {
	switch it.op {
	case opICMP:
		td, ok := exb.AllocTX()
		if !ok {
			return false
		}
		out := exb.Frame(td)
		td.Len = uint32(copy(out[:cap(out)], w.gen[it.gen][:w.genLen[it.gen]]))
		*descs = append(*descs, td)
		return true
	case opFragment:
		in := src.Frame(w.rx[it.idx])
		info := pkt.Info{L3Off: it.l3, L4Off: it.l4, IPLen: it.ipLen}
		info.Tuple.Family = policy.FamilyIPv4
		n := pkt.Fragments(&info, int(it.mtu))
		first := len(*descs)
		for k := range n {
			td, ok := exb.AllocTX()
			if !ok {
				// All of the packet's fragments or none.
				_ = exb.Release((*descs)[first:])
				*descs = (*descs)[:first]
				return false
			}
			out := exb.Frame(td)
			out = out[:cap(out)]
			copy(out[0:6], it.dmac[:])
			copy(out[6:12], it.smac[:])
			out[12], out[13] = 0x08, 0x00 // untagged IPv4
			td.Len = uint32(14 + pkt.WriteFragment(out[14:], in, &info, int(it.mtu), k))
			*descs = append(*descs, td)
		}
		return true
	}
	td, ok := exb.AllocTX()
	if !ok {
		return false
	}
	in := src.Frame(w.rx[it.idx])
	out := exb.Frame(td)
	out = out[:cap(out)]
	copy(out[0:6], it.dmac[:])
	copy(out[6:12], it.smac[:])
	var n int
	if it.vlan {
		// Egress is the routed interface, untagged: drop the tag.
		n = 12 + copy(out[12:], in[16:])
	} else {
		n = 12 + copy(out[12:], in[12:])
	}
	td.Len = uint32(n)
	*descs = append(*descs, td)
	return true
}

// releaseOnPanic, deferred by code that allocates frames of another
// binding's socket and queues them, gives back the ones not yet handed to
// the TX ring when a panic unwinds: that socket is not the panicking
// worker's to reset, so nothing may be stranded in it. The panic goes on.
func releaseOnPanic(exb *xsk.Binding, descs *[]xsk.Desc, handed *int) {
	if r := recover(); r != nil {
		if *handed < len(*descs) {
			_ = exb.Release((*descs)[*handed:])
		}
		panic(r)
	}
}

// packetDst is the destination address of an IPv4 or IPv6 packet (the
// zero Addr when it is too short).
func packetDst(ip []byte) netip.Addr {
	if len(ip) >= 20 && ip[0]>>4 == 4 {
		return netip.AddrFrom4([4]byte(ip[16:20]))
	}
	if len(ip) >= 40 && ip[0]>>4 == 6 {
		return netip.AddrFrom16([16]byte(ip[24:40]))
	}
	return netip.Addr{}
}
