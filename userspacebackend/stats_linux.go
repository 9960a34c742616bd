package userspacebackend

import (
	"context"
	"fmt"
	"time"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/userspacebackend/internal/xsk"
)

// ResourceStats reports every bounded resource and the counters. It takes
// no lock the datapath takes: ring indexes, frame ledgers, table and cache
// counts are atomics, the shims' counters are read from a mapping of their
// map, and XDP_STATISTICS is the one system call, per socket. See the
// package documentation for the rows.
func (b *Backend) ResourceStats(ctx context.Context) (dataplane.ResourceReport, error) {
	var rep dataplane.ResourceReport
	if err := b.ResourceStatsInto(ctx, &rep); err != nil {
		return dataplane.ResourceReport{}, err
	}
	return rep, nil
}

// ResourceStatsInto is ResourceStats writing into *rep, whose Resources
// and Counters arrays (and Sessions) are reused when large enough: for a
// poller that reads reports and keeps none, it saves allocating and
// clearing the report's 25 KB (4 bindings, 64 shards) on every read.
// Everything rep held is overwritten, *rep.Sessions included: keep no
// row of a previous read (clone the slices, or copy single rows, which
// stay valid, to keep one). On error *rep is unchanged. It
// implements [dataplane.ResourceStatsReuser]; like ResourceStats it takes
// no lock the datapath takes, but two calls must not share one rep.
func (b *Backend) ResourceStatsInto(ctx context.Context, rep *dataplane.ResourceReport) error {
	if b == nil || b.closed.Load() {
		return dataplane.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	start := time.Now()
	res, cnt, sess, ifs := rep.Resources[:0], rep.Counters[:0], rep.Sessions, rep.Interfaces[:0]
	*rep = dataplane.ResourceReport{Mode: dataplane.ModeUserspace, Taken: start}
	s := b.snap.Load()
	if s == nil {
		rep.Resources, rep.Counters = res, cnt
		rep.Took = time.Since(start)
		return nil
	}
	rep.Generation = s.gen
	bindings := s.bindings()
	// Up to eight bindings' statistics live on the stack.
	var bsArr [8]bindingStat
	bs := bsArr[:0]
	if len(bindings) > len(bsArr) {
		bs = make([]bindingStat, 0, len(bindings))
	}
	// bs stays out of reportRows: escape analysis does not tell a
	// struct's fields apart, and the rows it holds go to the heap.
	bs = readBindings(bs, bindings)
	r := reportRows{s: s}
	r.size(res, cnt, len(bs))

	// Aggregate rows, then detail rows, then counters: the order the
	// renderers and the reuse test rely on.
	r.bindingTotals(bs)
	r.tableTotals(bs)
	r.natPoolRows(false)
	r.bindingDetail(bs)
	r.sessionShardDetail()
	r.neighborShardDetail()
	r.natPoolRows(true)
	r.res, r.cnt = mirrorRows(r.res, r.cnt, &r.u, s, bs)
	r.datapathCounters(b, bs)
	r.tableCounters(b)
	r.kernelCounters()
	r.shimCounters()

	rep.Resources, rep.Counters = r.res, r.cnt
	rep.Interfaces = interfaceRows(ifs, s)
	if sess == nil {
		sess = new(dataplane.SessionCounts)
	}
	*sess = sessionCounts(s.sessions)
	rep.Sessions = sess
	rep.Took = time.Since(start)
	return nil
}

// readBindings reads every binding's socket statistics once into bs
// (len(bindings) long): every row of a report derives from this one read.
func readBindings(bs []bindingStat, bindings []*binding) []bindingStat {
	bs = bs[:len(bindings)]
	for i, bd := range bindings {
		bs[i] = bindingStat{bd: bd}
		if xb := bd.live.Load(); xb != nil {
			st, err := xb.Stats()
			// A socket closed under us (link flap) reports ErrClosed:
			// show the binding as down rather than fail the report.
			bs[i].st, bs[i].ok = st, err == nil || st.Frames.Total != 0
		}
	}
	return bs
}

// reportRows builds one report's rows and counters from one snapshot and
// one read of its bindings, group by group.
type reportRows struct {
	s     *snapshot
	res   []dataplane.Resource
	cnt   []dataplane.Counter
	u     arena
	parts []dataplane.Part
	// sums are the datapath counters summed over live and retired
	// bindings; ksums the same for XDP_STATISTICS.
	sums  [numCounters]uint64
	ksums [numKernel]uint64
}

// size makes room for every row and counter in one allocation each
// (reusing res and cnt when they are large enough), so no append copies
// the rows again.
func (r *reportRows) size(res []dataplane.Resource, cnt []dataplane.Counter, nb int) {
	s := r.s
	r.u = arena{buf: make([]uint64, 0, 9+nb*8+s.sessions.Shards()+s.neigh.Shards()+2*len(s.mirrorList))}
	mirrorOut := 0
	for _, mv := range s.mirrorList {
		mirrorOut += len(mv.out.txq)
	}
	if n := 9 + nb*6 + s.sessions.Shards() + 1 + s.neigh.Shards() + mirrorOut + natRowCount(s); cap(res) < n {
		res = make([]dataplane.Resource, 0, n)
	}
	if n := numCounters + 8 + numKernel + nb*(numKernel+6) + (len(s.ports)+1)*5 + len(s.mirrorList)*numMirror; cap(cnt) < n {
		cnt = make([]dataplane.Counter, 0, n)
	}
	r.res, r.cnt = res, cnt
	// The breakdowns of the aggregate and the per-binding UMEM rows
	// share one allocation.
	r.parts = make([]dataplane.Part, 0, numFrameParts*(1+nb))
}

const scopeGlobal = "global"

// bindingTotals: umem_frames (with the breakdown), fill_ring_empty,
// worker_queue and pending_tx over every live binding.
func (r *reportRows) bindingTotals(bs []bindingStat) {
	var frames, free, fill, rx, tx, comp uint64
	var fillSz, fillD, rxSz, rxD, txSz, txD uint64
	for _, x := range bs {
		if !x.ok {
			continue
		}
		f := x.st.Frames
		frames += uint64(f.Total)
		free += uint64(f.Free)
		fill += uint64(f.FillRing)
		rx += uint64(f.RXRing + f.App)
		tx += uint64(f.TXRing)
		comp += uint64(f.Completion)
		st := x.st
		fillSz, fillD = fillSz+uint64(st.Fill.Size), fillD+uint64(st.Fill.Depth())
		rxSz, rxD = rxSz+uint64(st.RX.Size), rxD+uint64(st.RX.Depth())
		txSz, txD = txSz+uint64(st.TX.Size), txD+uint64(st.TX.Depth())
	}
	u, g := &r.u, scopeGlobal
	r.res = append(r.res,
		dataplane.Resource{Name: "umem_frames", Kind: dataplane.KindUMEM, Scope: g, Capacity: frames,
			Used: u.used(frames - free), Method: dataplane.MethodSnapshot,
			Breakdown: framesParts(&r.parts, free, fill, rx, tx, comp)},
		// A full fill ring is healthy; what starves RX is an empty one. So
		// the row counts the slots the kernel has no buffer for, and a
		// high utilisation means what operators fear (seed 001).
		dataplane.Resource{Name: "fill_ring_empty", Kind: dataplane.KindRing, Scope: g, Capacity: fillSz, Used: u.used(fillSz - fillD), Method: dataplane.MethodRing},
		dataplane.Resource{Name: "worker_queue", Kind: dataplane.KindRing, Scope: g, Capacity: rxSz, Used: u.used(rxD), Method: dataplane.MethodRing},
		dataplane.Resource{Name: "pending_tx", Kind: dataplane.KindRing, Scope: g, Capacity: txSz, Used: u.used(txD), Method: dataplane.MethodRing},
	)
}

// tableTotals: the session table, every flow cache and the neighbour
// table, aggregated.
func (r *reportRows) tableTotals(bs []bindingStat) {
	u, g, st := &r.u, scopeGlobal, r.s.sessions
	r.res = append(r.res, dataplane.Resource{Name: "sessions", Kind: dataplane.KindTable, Scope: g,
		Capacity: st.Capacity(), Used: u.used(st.Used()), Method: dataplane.MethodCounter},
		// Half-open and unanswered flows against the same capacity: a
		// flood shows as a level of its own.
		dataplane.Resource{Name: dataplane.ResourceSessionsUnassured, Kind: dataplane.KindTable, Scope: g,
			Capacity: st.Capacity(), Used: u.used(st.Unassured()), Method: dataplane.MethodCounter})
	var fcCap, fcUsed uint64
	for _, x := range bs {
		if fc := x.bd.fc.Load(); fc != nil {
			fcCap += uint64(fc.Capacity())
			fcUsed += uint64(fc.Occupancy())
		}
	}
	r.res = append(r.res,
		dataplane.Resource{Name: "flow_cache", Kind: dataplane.KindCache, Scope: g, Capacity: fcCap, Used: u.used(fcUsed), Method: dataplane.MethodCounter},
		dataplane.Resource{Name: "neighbors", Kind: dataplane.KindTable, Scope: g,
			Capacity: uint64(r.s.neigh.Capacity()), Used: u.used(uint64(r.s.neigh.Used())), Method: dataplane.MethodCounter})
}

// bindingDetail: per binding, the UMEM with its breakdown (or the
// binding's state when it has no socket) and its four rings; then every
// binding's flow cache.
func (r *reportRows) bindingDetail(bs []bindingStat) {
	u := &r.u
	for _, x := range bs {
		bd := x.bd
		scope := bd.name
		if !x.ok {
			r.res = append(r.res, dataplane.Resource{Name: "umem_frames", Kind: dataplane.KindUMEM, Scope: scope, Detail: true,
				Error: "binding " + stateNames[bd.state.Load()] + errSuffix(bd)})
			continue
		}
		f := x.st.Frames
		r.res = append(r.res,
			dataplane.Resource{Name: "umem_frames", Kind: dataplane.KindUMEM, Scope: scope, Detail: true, Capacity: uint64(f.Total),
				Used: u.used(uint64(f.Total - f.Free)), Method: dataplane.MethodSnapshot,
				Breakdown: framesParts(&r.parts, uint64(f.Free), uint64(f.FillRing), uint64(f.RXRing+f.App), uint64(f.TXRing), uint64(f.Completion))},
			fillEmptyRow(u, scope, x.st.Fill),
			ringRow(u, "rx_ring", scope, x.st.RX),
			ringRow(u, "tx_ring", scope, x.st.TX),
			ringRow(u, "completion_ring", scope, x.st.Completion),
		)
	}
	for _, x := range bs {
		if fc := x.bd.fc.Load(); fc != nil {
			r.res = append(r.res, dataplane.Resource{Name: "flow_cache", Kind: dataplane.KindCache, Scope: x.bd.name, Detail: true,
				Capacity: uint64(fc.Capacity()), Used: u.used(uint64(fc.Occupancy())), Method: dataplane.MethodCounter})
		}
	}
}

// sessionShardDetail: per session shard, and the fullest shard with the
// table's max skew.
func (r *reportRows) sessionShardDetail() {
	u, st := &r.u, r.s.sessions
	fullest, fullestFill := -1, -1.0
	for i := range st.Shards() {
		n, c := st.ShardUsed(i)
		r.res = append(r.res, dataplane.Resource{Name: "sessions", Kind: dataplane.KindTable, Scope: shardScope(i), Detail: true,
			Capacity: uint64(c), Used: u.used(uint64(n)), Method: dataplane.MethodCounter})
		if fl := float64(n) / float64(c); fl > fullestFill {
			fullest, fullestFill = i, fl
		}
	}
	if fullest >= 0 {
		// The shard and the skew are figures, not the scope: a scope is
		// the row's identity (a metric label) and must not change with
		// the fill.
		n, c := st.ShardUsed(fullest)
		r.res = append(r.res, dataplane.Resource{Name: "sessions_fullest_shard", Kind: dataplane.KindTable, Detail: true,
			Scope: scopeGlobal, Capacity: uint64(c), Used: r.u.used(uint64(n)), Method: dataplane.MethodCounter,
			Figures: []dataplane.Figure{{Name: "shard", Value: float64(fullest)}, {Name: "max_skew", Value: st.MaxSkew()}}})
	}
}

// neighborShardDetail: per neighbour shard.
func (r *reportRows) neighborShardDetail() {
	nt := r.s.neigh
	for i := range nt.Shards() {
		r.res = append(r.res, dataplane.Resource{Name: "neighbors", Kind: dataplane.KindTable, Scope: shardScope(i), Detail: true,
			Capacity: uint64(nt.ShardCapacity(i)), Used: r.u.used(uint64(nt.ShardUsed(i))), Method: dataplane.MethodCounter})
	}
}

// datapathCounters: per binding (detail) its XDP_STATISTICS and its
// main datapath counters; then every datapath counter summed over live
// and retired bindings (so global counters never go backwards).
func (r *reportRows) datapathCounters(b *Backend, bs []bindingStat) {
	for i := range r.sums {
		r.sums[i] = b.retired[i].Load()
	}
	for i := range r.ksums {
		r.ksums[i] = b.retiredKernel[i].Load()
	}
	for _, x := range bs {
		bd := x.bd
		for i := range r.sums {
			r.sums[i] += bd.cnt[i].Load()
		}
		k := bindingKernel(x.bd, x.st, x.ok)
		for i, v := range k {
			r.ksums[i] += v
			r.cnt = append(r.cnt, dataplane.Counter{Name: kernelNames[i], Scope: bd.name, Detail: true, Value: v})
		}
		for _, i := range []int{cForwarded, cTXRingFull, cBackpressureDrops, cWorkerPanics, cLinkDown, cRebinds} {
			r.cnt = append(r.cnt, dataplane.Counter{Name: counterNames[i], Scope: bd.name, Detail: true, Value: bd.cnt[i].Load()})
		}
	}
	for i, v := range r.sums {
		r.cnt = append(r.cnt, dataplane.Counter{Name: counterNames[i], Scope: scopeGlobal, Value: v})
	}
}

// tableCounters: what the session and neighbour tables count themselves,
// and the sessions Apply and ClearSessions ended.
func (r *reportRows) tableCounters(b *Backend) {
	g, st, nt := scopeGlobal, r.s.sessions, r.s.neigh
	r.cnt = append(r.cnt,
		dataplane.Counter{Name: dataplane.CounterSessionEarlyDrop, Scope: g, Value: st.EarlyDrops()},
		dataplane.Counter{Name: dataplane.CounterSessionsEndedByPolicy, Scope: g, Value: b.endedByPolicy.Load()},
		dataplane.Counter{Name: dataplane.CounterSessionsCleared, Scope: g, Value: b.cleared.Load()},
		dataplane.Counter{Name: "sessions_reopened", Scope: g, Value: st.Reopened()},
		dataplane.Counter{Name: "sessions_expired", Scope: g, Value: st.Expired()},
		dataplane.Counter{Name: "neighbors_refused", Scope: g, Value: nt.Refused()},
		dataplane.Counter{Name: "neighbor_resolves_dropped", Scope: g, Value: nt.ResolveDropped()},
		dataplane.Counter{Name: "nat_masquerade_sessions_ended", Scope: g, Value: b.nat.masqEnded.Load()},
		dataplane.Counter{Name: "passed_no_neighbor_refused", Scope: g, Value: b.kpass.Refused()},
	)
}

// kernelCounters: XDP_STATISTICS summed (datapathCounters read them).
func (r *reportRows) kernelCounters() {
	for i, v := range r.ksums {
		r.cnt = append(r.cnt, dataplane.Counter{Name: kernelNames[i], Scope: scopeGlobal, Value: v})
	}
}

// shimCounters: the shims' verdicts per interface (detail) and summed.
func (r *reportRows) shimCounters() {
	var sh xsk.ShimCounters
	for _, p := range r.s.ports {
		c, err := p.shim.Counters()
		if err != nil {
			continue
		}
		sh.Redirected += c.Redirected
		sh.PassNonIP += c.PassNonIP
		sh.PassND += c.PassND
		sh.PassLocal += c.PassLocal
		sh.DropNoSocket += c.DropNoSocket
		sh.DropHeartbeatStale += c.DropHeartbeatStale
		r.cnt = append(r.cnt, shimCounters(c, p.name, true)...)
	}
	r.cnt = append(r.cnt, shimCounters(sh, scopeGlobal, false)...)
}

// arena hands out the Used pointers of one report from one allocation: a
// report has over a hundred rows, and a pointer each was most of its
// allocations. A full arena starts a new chunk; earlier pointers stay
// valid.
type arena struct{ buf []uint64 }

func (a *arena) used(v uint64) *uint64 {
	if len(a.buf) == cap(a.buf) {
		a.buf = make([]uint64, 0, max(16, cap(a.buf)))
	}
	a.buf = append(a.buf, v)
	return &a.buf[len(a.buf)-1]
}

// bindingStat is one binding's socket statistics as one report read them;
// ok is false when the binding had no socket to read.
type bindingStat struct {
	bd *binding
	st xsk.Stats
	ok bool
}

// numFrameParts is the length of a UMEM breakdown.
const numFrameParts = 5

// framesParts appends a UMEM breakdown to *buf (allocated for all of a
// report's breakdowns) and returns it, capped so that no later append can
// write into it.
func framesParts(buf *[]dataplane.Part, free, fill, rx, tx, comp uint64) []dataplane.Part {
	n := len(*buf)
	*buf = append(*buf, dataplane.Part{Name: "free", Value: free}, dataplane.Part{Name: "fill", Value: fill}, dataplane.Part{Name: "rx", Value: rx},
		dataplane.Part{Name: "tx", Value: tx}, dataplane.Part{Name: "completion", Value: comp})
	return (*buf)[n:len(*buf):len(*buf)]
}

// fillEmptyRow reports a fill ring by its empty slots (see fill_ring_empty).
func fillEmptyRow(u *arena, scope string, r xsk.RingStats) dataplane.Resource {
	return dataplane.Resource{Name: "fill_ring_empty", Kind: dataplane.KindRing, Scope: scope, Detail: true,
		Capacity: uint64(r.Size), Used: u.used(uint64(r.Size) - uint64(r.Depth())), Method: dataplane.MethodRing}
}

func ringRow(u *arena, name, scope string, r xsk.RingStats) dataplane.Resource {
	return dataplane.Resource{Name: name, Kind: dataplane.KindRing, Scope: scope, Detail: true,
		Capacity: uint64(r.Size), Used: u.used(uint64(r.Depth())), Method: dataplane.MethodRing}
}

var shardScopes [4096]string

func shardScope(i int) string {
	if i < len(shardScopes) {
		if s := shardScopes[i]; s != "" {
			return s
		}
	}
	return fmt.Sprintf("shard/%02d", i)
}

func init() {
	for i := range shardScopes {
		shardScopes[i] = fmt.Sprintf("shard/%02d", i)
	}
}

func errSuffix(bd *binding) string {
	if p := bd.lastErr.Load(); p != nil && bd.state.Load() == stateFailed {
		return ": " + *p
	}
	return ""
}

// bindingKernel is the binding's XDP_STATISTICS over all its sockets.
func bindingKernel(bd *binding, st xsk.Stats, ok bool) [numKernel]uint64 {
	var k [numKernel]uint64
	for i := range k {
		k[i] = bd.kern[i].Load()
	}
	if ok {
		ks := st.Kernel
		for i, v := range [numKernel]uint64{ks.RXDropped, ks.RXInvalidDescs, ks.TXInvalidDescs, ks.RXRingFull, ks.RXFillRingEmptyDescs, ks.TXRingEmptyDescs} {
			k[i] += v
		}
	}
	return k
}

func shimCounters(c xsk.ShimCounters, scope string, detail bool) []dataplane.Counter {
	return []dataplane.Counter{
		{Name: "shim_redirected", Scope: scope, Detail: detail, Value: c.Redirected},
		{Name: "shim_pass_non_ip", Scope: scope, Detail: detail, Value: c.PassNonIP},
		{Name: "shim_pass_nd", Scope: scope, Detail: detail, Value: c.PassND},
		{Name: "shim_pass_local", Scope: scope, Detail: detail, Value: c.PassLocal},
		{Name: "shim_drop_no_socket", Scope: scope, Detail: detail, Value: c.DropNoSocket},
		{Name: "shim_drop_heartbeat_stale", Scope: scope, Detail: detail, Value: c.DropHeartbeatStale},
	}
}

// interfaceRows says how each managed interface is attached: through the
// AF_XDP shim, natively or in generic mode.
func interfaceRows(out []dataplane.InterfaceStatus, s *snapshot) []dataplane.InterfaceStatus {
	for _, p := range s.ports {
		st := dataplane.InterfaceStatus{Name: p.name, Ifindex: p.ifindex, Attach: dataplane.AttachedXDP, Reason: "AF_XDP shim"}
		pinned := p.shim.Pinned()
		if pinned {
			st.Reason = "AF_XDP shim, pinned (fails closed if the process dies)"
		}
		if p.shim.Mode() == xsk.AttachGeneric {
			st.Attach, st.Reason = dataplane.AttachedXDPGeneric, "AF_XDP shim in generic mode (native XDP failed, or forced)"
			if pinned {
				st.Reason = "AF_XDP shim in generic mode (native XDP failed, or forced), pinned (fails closed if the process dies)"
			}
		}
		out = append(out, st)
	}
	return out
}
