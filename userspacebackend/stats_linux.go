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
	u := &arena{buf: make([]uint64, 0, 8+len(bindings)*8+s.sessions.Shards()+s.neigh.Shards()+2*len(s.mirrorList))}
	mirrorOut := 0
	for _, mv := range s.mirrorList {
		mirrorOut += len(mv.out.txq)
	}
	// Sized for every row, so no append copies the rows again.
	if n := 8 + len(bindings)*6 + s.sessions.Shards() + 1 + s.neigh.Shards() + mirrorOut; cap(res) < n {
		res = make([]dataplane.Resource, 0, n)
	}
	if n := numCounters + 4 + numKernel + len(bindings)*(numKernel+6) + (len(s.ports)+1)*5 + len(s.mirrorList)*numMirror; cap(cnt) < n {
		cnt = make([]dataplane.Counter, 0, n)
	}
	rep.Resources, rep.Counters = res, cnt

	// Per binding, read once; aggregate rows are sums of these. Up to
	// eight bindings live on the stack.
	var bsArr [8]bindingStat
	bs := bsArr[:0]
	if len(bindings) > len(bsArr) {
		bs = make([]bindingStat, 0, len(bindings))
	}
	bs = bs[:len(bindings)]
	// The breakdowns of the aggregate and the per-binding UMEM rows share
	// one allocation.
	parts := make([]dataplane.Part, 0, numFrameParts*(1+len(bindings)))
	var frames, free, fill, rx, tx, comp uint64
	var fillSz, fillD, rxSz, rxD, txSz, txD uint64
	for i, bd := range bindings {
		bs[i].bd = bd
		if xb := bd.live.Load(); xb != nil {
			st, err := xb.Stats()
			// A socket closed under us (link flap) reports ErrClosed:
			// show the binding as down rather than fail the report.
			bs[i].st, bs[i].ok = st, err == nil || st.Frames.Total != 0
		}
		if !bs[i].ok {
			continue
		}
		f := bs[i].st.Frames
		frames += uint64(f.Total)
		free += uint64(f.Free)
		fill += uint64(f.FillRing)
		rx += uint64(f.RXRing + f.App)
		tx += uint64(f.TXRing)
		comp += uint64(f.Completion)
		st := bs[i].st
		fillSz, fillD = fillSz+uint64(st.Fill.Size), fillD+uint64(st.Fill.Depth())
		rxSz, rxD = rxSz+uint64(st.RX.Size), rxD+uint64(st.RX.Depth())
		txSz, txD = txSz+uint64(st.TX.Size), txD+uint64(st.TX.Depth())
	}
	const g = "global"
	rep.Resources = append(rep.Resources,
		dataplane.Resource{Name: "umem_frames", Kind: dataplane.KindUMEM, Scope: g, Capacity: frames,
			Used: u.used(frames - free), Method: dataplane.MethodSnapshot,
			Breakdown: framesParts(&parts, free, fill, rx, tx, comp)},
		// A full fill ring is healthy; what starves RX is an empty one. So
		// the row counts the slots the kernel has no buffer for, and a
		// high utilisation means what operators fear (seed 001).
		dataplane.Resource{Name: "fill_ring_empty", Kind: dataplane.KindRing, Scope: g, Capacity: fillSz, Used: u.used(fillSz - fillD), Method: dataplane.MethodRing},
		dataplane.Resource{Name: "worker_queue", Kind: dataplane.KindRing, Scope: g, Capacity: rxSz, Used: u.used(rxD), Method: dataplane.MethodRing},
		dataplane.Resource{Name: "pending_tx", Kind: dataplane.KindRing, Scope: g, Capacity: txSz, Used: u.used(txD), Method: dataplane.MethodRing},
	)
	st := s.sessions
	rep.Resources = append(rep.Resources, dataplane.Resource{Name: "sessions", Kind: dataplane.KindTable, Scope: g,
		Capacity: st.Capacity(), Used: u.used(st.Used()), Method: dataplane.MethodCounter})
	var fcCap, fcUsed uint64
	for _, bd := range bindings {
		if fc := bd.fc.Load(); fc != nil {
			fcCap += uint64(fc.Capacity())
			fcUsed += uint64(fc.Occupancy())
		}
	}
	rep.Resources = append(rep.Resources, dataplane.Resource{Name: "flow_cache", Kind: dataplane.KindCache, Scope: g,
		Capacity: fcCap, Used: u.used(fcUsed), Method: dataplane.MethodCounter})
	rep.Resources = append(rep.Resources, dataplane.Resource{Name: "neighbors", Kind: dataplane.KindTable, Scope: g,
		Capacity: uint64(s.neigh.Capacity()), Used: u.used(uint64(s.neigh.Used())), Method: dataplane.MethodCounter})

	// Detail: per binding.
	for _, x := range bs {
		bd := x.bd
		scope := bd.name
		if !x.ok {
			rep.Resources = append(rep.Resources, dataplane.Resource{Name: "umem_frames", Kind: dataplane.KindUMEM, Scope: scope, Detail: true,
				Error: "binding " + stateNames[bd.state.Load()] + errSuffix(bd)})
			continue
		}
		f := x.st.Frames
		rep.Resources = append(rep.Resources,
			dataplane.Resource{Name: "umem_frames", Kind: dataplane.KindUMEM, Scope: scope, Detail: true, Capacity: uint64(f.Total),
				Used: u.used(uint64(f.Total - f.Free)), Method: dataplane.MethodSnapshot,
				Breakdown: framesParts(&parts, uint64(f.Free), uint64(f.FillRing), uint64(f.RXRing+f.App), uint64(f.TXRing), uint64(f.Completion))},
			fillEmptyRow(u, scope, x.st.Fill),
			ringRow(u, "rx_ring", scope, x.st.RX),
			ringRow(u, "tx_ring", scope, x.st.TX),
			ringRow(u, "completion_ring", scope, x.st.Completion),
		)
	}
	for _, bd := range bindings {
		if fc := bd.fc.Load(); fc != nil {
			rep.Resources = append(rep.Resources, dataplane.Resource{Name: "flow_cache", Kind: dataplane.KindCache, Scope: bd.name, Detail: true,
				Capacity: uint64(fc.Capacity()), Used: u.used(uint64(fc.Occupancy())), Method: dataplane.MethodCounter})
		}
	}
	// Detail: per session shard, and the fullest shard with the skew.
	fullest, fullestFill := -1, -1.0
	for i := range st.Shards() {
		n, c := st.ShardUsed(i)
		rep.Resources = append(rep.Resources, dataplane.Resource{Name: "sessions", Kind: dataplane.KindTable, Scope: shardScope(i), Detail: true,
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
		rep.Resources = append(rep.Resources, dataplane.Resource{Name: "sessions_fullest_shard", Kind: dataplane.KindTable, Detail: true,
			Scope: g, Capacity: uint64(c), Used: u.used(uint64(n)), Method: dataplane.MethodCounter,
			Figures: []dataplane.Figure{{Name: "shard", Value: float64(fullest)}, {Name: "max_skew", Value: st.MaxSkew()}}})
	}
	for i := range s.neigh.Shards() {
		rep.Resources = append(rep.Resources, dataplane.Resource{Name: "neighbors", Kind: dataplane.KindTable, Scope: shardScope(i), Detail: true,
			Capacity: uint64(s.neigh.ShardCapacity(i)), Used: u.used(uint64(s.neigh.ShardUsed(i))), Method: dataplane.MethodCounter})
	}

	rep.Resources, rep.Counters = mirrorRows(rep.Resources, rep.Counters, u, s, bs)

	// Counters: datapath (retired bindings included), kernel, shim.
	var sums [numCounters]uint64
	for i := range sums {
		sums[i] = b.retired[i].Load()
	}
	var ksums [numKernel]uint64
	for i := range ksums {
		ksums[i] = b.retiredKernel[i].Load()
	}
	for _, x := range bs {
		bd := x.bd
		for i := range sums {
			sums[i] += bd.cnt[i].Load()
		}
		k := bindingKernel(x.bd, x.st, x.ok)
		for i, v := range k {
			ksums[i] += v
			rep.Counters = append(rep.Counters, dataplane.Counter{Name: kernelNames[i], Scope: bd.name, Detail: true, Value: v})
		}
		for _, i := range []int{cForwarded, cTXRingFull, cBackpressureDrops, cWorkerPanics, cLinkDown, cRebinds} {
			rep.Counters = append(rep.Counters, dataplane.Counter{Name: counterNames[i], Scope: bd.name, Detail: true, Value: bd.cnt[i].Load()})
		}
	}
	for i, v := range sums {
		rep.Counters = append(rep.Counters, dataplane.Counter{Name: counterNames[i], Scope: g, Value: v})
	}
	rep.Counters = append(rep.Counters,
		dataplane.Counter{Name: "sessions_refused", Scope: g, Value: st.Refused()},
		dataplane.Counter{Name: "sessions_expired", Scope: g, Value: st.Expired()},
		dataplane.Counter{Name: "neighbors_refused", Scope: g, Value: s.neigh.Refused()},
		dataplane.Counter{Name: "neighbor_resolves_dropped", Scope: g, Value: s.neigh.ResolveDropped()},
	)
	for i, v := range ksums {
		rep.Counters = append(rep.Counters, dataplane.Counter{Name: kernelNames[i], Scope: g, Value: v})
	}
	var sh xsk.ShimCounters
	for _, p := range s.ports {
		c, err := p.shim.Counters()
		if err != nil {
			continue
		}
		sh.Redirected += c.Redirected
		sh.PassNonIP += c.PassNonIP
		sh.PassND += c.PassND
		sh.PassLocal += c.PassLocal
		sh.DropNoSocket += c.DropNoSocket
		rep.Counters = append(rep.Counters, shimCounters(c, p.name, true)...)
	}
	rep.Counters = append(rep.Counters, shimCounters(sh, g, false)...)

	rep.Interfaces = interfaceRows(ifs, s)

	v4, v6 := st.Counts()
	if sess == nil {
		sess = new(dataplane.SessionCounts)
	}
	*sess = dataplane.SessionCounts{IPv4: v4, IPv6: v6, Total: v4 + v6}
	rep.Sessions = sess
	rep.Took = time.Since(start)
	return nil
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
	}
}

// interfaceRows says how each managed interface is attached: through the
// AF_XDP shim, natively or in generic mode.
func interfaceRows(out []dataplane.InterfaceStatus, s *snapshot) []dataplane.InterfaceStatus {
	for _, p := range s.ports {
		st := dataplane.InterfaceStatus{Name: p.name, Ifindex: p.ifindex, Attach: dataplane.AttachedXDP, Reason: "AF_XDP shim"}
		if p.shim.Mode() == xsk.AttachGeneric {
			st.Attach, st.Reason = dataplane.AttachedXDPGeneric, "AF_XDP shim in generic mode (native XDP failed, or forced)"
		}
		out = append(out, st)
	}
	return out
}
