package userspacebackend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/limits"
	"github.com/fwplane/fwplane/internal/netnsutil"
	"github.com/fwplane/fwplane/internal/policy"
	"github.com/fwplane/fwplane/userspacebackend/internal/neigh"
	"github.com/fwplane/fwplane/userspacebackend/internal/session"
	"github.com/fwplane/fwplane/userspacebackend/internal/xsk"
)

// Backend is a running userspace (AF_XDP) dataplane. It implements
// dataplane.DataPlane and dataplane.SessionLister. See the package
// documentation for the contracts.
type Backend struct {
	opts  Options
	start time.Time

	applyMu sync.Mutex // serialises Apply and Close; guards the control-plane fields
	closed  atomic.Bool

	// snap is what the workers read, once per batch.
	snap atomic.Pointer[snapshot]
	// epoch is the flow caches' generation: bumped by every Apply and
	// every CacheRefresh, so cached egress/MAC decisions age out.
	epoch atomic.Uint64

	// Control plane (applyMu).
	ports    map[string]*port
	sessions *session.Table
	router   router
	capacity uint32
	shards   uint32
	frames   uint32
	ringSize uint32
	gen      uint64
	watch    *linkWatch
	// spans are the TX-only ports of mirror outputs that are not managed
	// interfaces; mirrorCnt the rules' counters, by scope.
	spans     map[string]*port
	mirrorCnt map[string]*mirrorCounters
	hkStop    chan struct{}
	hkDone    chan struct{}
	// flowCache is the per-worker flow cache size for workers started
	// from now on.
	flowCache atomic.Uint32

	// retired keeps the counters of bindings that were removed, so the
	// global counters never go backwards.
	retired counterSet
	// retiredKernel keeps XDP_STATISTICS of sockets that were closed.
	retiredKernel kernelCounters
}

var (
	_ dataplane.DataPlane           = (*Backend)(nil)
	_ dataplane.SessionLister       = (*Backend)(nil)
	_ dataplane.ResourceStatsReuser = (*Backend)(nil)
)

// New prepares a backend. Nothing is attached or bound until the first
// Apply, because table sizes, interfaces and queues come from the config.
func New(ctx context.Context, opts *Options) (*Backend, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.TXBudget == 0 {
		o.TXBudget = DefaultTXBudget
	}
	if o.CacheRefresh <= 0 {
		o.CacheRefresh = DefaultCacheRefresh
	}
	if o.IdlePoll <= 0 {
		o.IdlePoll = DefaultIdlePoll
	}
	if o.SessionExpireInterval == 0 {
		o.SessionExpireInterval = time.Second
	}
	if err := netnsutil.Do(o.NetNS, func() error { return nil }); err != nil {
		return nil, fmt.Errorf("open netns: %w", err)
	}
	b := &Backend{opts: o, start: time.Now(), ports: map[string]*port{}}
	return b, nil
}

// Mode returns dataplane.ModeUserspace.
func (b *Backend) Mode() dataplane.Mode { return dataplane.ModeUserspace }

func (b *Backend) flowCacheSize() uint32 { return b.flowCache.Load() }

// now is the datapath clock: monotonic nanoseconds since New.
func (b *Backend) now() int64 { return int64(time.Since(b.start)) }

// resolvedIface is one config interface as found in the namespace.
type resolvedIface struct {
	field   string
	name    string
	zone    string
	ifindex int
	mac     [6]byte
	queues  []int
	up      bool
}

// Apply validates cfg and makes it the running configuration, or changes
// nothing. See the package documentation for the error contract.
func (b *Backend) Apply(ctx context.Context, cfg *dataplane.Config) (dataplane.ApplyResult, error) {
	if b == nil {
		return dataplane.ApplyResult{}, dataplane.ErrClosed
	}
	if err := cfg.Validate(); err != nil {
		return dataplane.ApplyResult{}, err
	}
	b.applyMu.Lock()
	defer b.applyMu.Unlock()
	if b.closed.Load() {
		return dataplane.ApplyResult{}, dataplane.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return dataplane.ApplyResult{}, err
	}

	reasons := unsupported(cfg)
	reasons = append(reasons, limits.Check(cfg, nil, Limits(), string(dataplane.ModeUserspace))...)
	u := cfg.Userspace
	if b.sessions != nil {
		if c := cfg.Tables.SessionsOrDefault(); c != b.capacity {
			reasons = append(reasons, fmt.Sprintf("tables.sessions: changing the session table size of a running userspace dataplane (%d -> %d) is not supported: Close and start a new one", b.capacity, c))
		}
		if s := u.ShardsOrDefault(); s != b.shards {
			reasons = append(reasons, fmt.Sprintf("userspace.session_shards: changing the shard count of a running userspace dataplane (%d -> %d) is not supported: Close and start a new one", b.shards, s))
		}
		if f := u.FramesOrDefault(); f != b.frames {
			reasons = append(reasons, fmt.Sprintf("userspace.frames_per_binding: changing the UMEM size of running bindings (%d -> %d) is not supported: Close and start a new one", b.frames, f))
		}
		if r := u.RingSizeOrDefault(); r != b.ringSize {
			reasons = append(reasons, fmt.Sprintf("userspace.ring_size: changing the ring size of running bindings (%d -> %d) is not supported: Close and start a new one", b.ringSize, r))
		}
	}
	if len(reasons) > 0 {
		return dataplane.ApplyResult{}, &dataplane.NotSupportedError{What: "apply config to the userspace backend", Reasons: reasons}
	}

	ifaces, local, err := b.resolve(cfg)
	if err != nil {
		return dataplane.ApplyResult{}, err
	}
	byName := map[string]int{}
	for _, it := range ifaces {
		byName[it.name] = it.ifindex
	}
	pol, err := policy.Compile(cfg, func(name string) (int, error) {
		if idx, ok := byName[name]; ok {
			return idx, nil
		}
		return 0, fmt.Errorf("interface %s: not resolved", name)
	})
	if err != nil {
		return dataplane.ApplyResult{}, fmt.Errorf("compile policies: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return dataplane.ApplyResult{}, err
	}

	// Everything below builds the next generation beside the running one;
	// undo releases what was built if any step fails.
	var undo []func()
	fail := func(err error) (dataplane.ApplyResult, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return dataplane.ApplyResult{}, err
	}

	sessions := b.sessions
	if sessions == nil {
		sessions = session.New(cfg.Tables.SessionsOrDefault(), u.ShardsOrDefault(), cfg.Timeouts)
	}
	rt := b.router
	if rt == nil {
		r, err := newResolver(ctx, b.opts.NetNS)
		if err != nil {
			return fail(fmt.Errorf("open route table: %w", err))
		}
		rt = r
		undo = append(undo, func() { r.Close() })
	}
	old := b.snap.Load()
	nt := (*neigh.Table)(nil)
	if old != nil && uint32(old.neigh.Capacity()) == cfg.Tables.NeighborsOrDefault() {
		nt = old.neigh
	} else {
		t, err := neigh.New(ctx, &neigh.Options{NetNSPath: b.opts.NetNS, Capacity: cfg.Tables.NeighborsOrDefault()})
		if err != nil {
			return fail(fmt.Errorf("mirror neighbour table: %w", err))
		}
		nt = t
		undo = append(undo, func() { t.Close() })
	}

	var res dataplane.ApplyResult
	xo := &xsk.Options{RingSize: u.RingSizeOrDefault(), Frames: u.FramesOrDefault(), TXBudget: b.opts.TXBudget}
	if r := b.opts.testTXRing; r != 0 {
		xo.TXRingSize, xo.CompletionRingSize = r, r
		xo.Frames = u.RingSizeOrDefault() + r
	}
	// The kernel refuses a per-kick budget outside [32, TX ring size].
	txr := xo.TXRingSize
	if txr == 0 {
		txr = xo.RingSize
	}
	if txr < 32 {
		xo.TXBudget = 0
	} else {
		xo.TXBudget = min(xo.TXBudget, txr)
	}
	var plans []portPlan
	var started []*binding // new bindings whose workers start after the commit
	var mplans []mirrorPlan
	var spans map[string]*port
	outputs := map[string]bool{}
	for _, r := range cfg.PortMirroring {
		if _, ok := byName[r.Output]; ok {
			outputs[r.Output] = true
		}
	}
	err = netnsutil.Do(b.opts.NetNS, func() error {
		for _, it := range ifaces {
			p := b.ports[it.name]
			if p != nil && p.ifindex != it.ifindex {
				// Same name, new interface: the old one went away with its
				// shim. Build afresh; the old port retires below.
				p = nil
			}
			if p == nil {
				shim, err := xsk.LoadShim(it.ifindex, &xsk.ShimOptions{ForceGeneric: b.opts.ForceGenericXDP})
				if err != nil {
					return fmt.Errorf("attach shim to %s: %w", it.name, err)
				}
				undo = append(undo, func() { shim.Close() })
				if shim.Mode() == xsk.AttachGeneric && !b.opts.ForceGenericXDP {
					res.Warnings = append(res.Warnings, dataplane.Warning{Field: it.field,
						Message: fmt.Sprintf("native XDP failed on %s: the shim runs in generic mode, which is much slower", it.name)})
				}
				p = &port{name: it.name, ifindex: it.ifindex, shim: shim}
				p.linkUp.Store(it.up)
			}
			if err := p.shim.SetLocalAddrs(local); err != nil {
				return fmt.Errorf("program local addresses on %s: %w", it.name, err)
			}
			pl := portPlan{p: p, mac: it.mac, up: it.up, bindings: map[int]*binding{}}
			for _, q := range it.queues {
				if bd := p.bindings[q]; bd != nil {
					pl.bindings[q] = bd
					continue
				}
				bd := newBinding(b, p, q, xo)
				if outputs[it.name] {
					bd.mirrorReserve.Store(b.mirrorReserve())
				}
				if it.up {
					if err := bd.open(); err != nil {
						return fmt.Errorf("bind %s queue %d: %w", it.name, q, err)
					}
				}
				undo = append(undo, func() { bd.closeSocket() })
				pl.bindings[q] = bd
				started = append(started, bd)
			}
			plans = append(plans, pl)
		}
		var err error
		mplans, spans, err = b.planMirrors(cfg, byName, &res, xo, &undo, &started)
		return err
	})
	if err != nil {
		return fail(err)
	}

	// Commit: from the store on, workers use the new generation.
	gen := b.gen + 1
	if b.sessions != nil {
		b.sessions.SetTimeouts(cfg.Timeouts)
	}
	b.sessions, b.router = sessions, rt
	b.capacity, b.shards = cfg.Tables.SessionsOrDefault(), u.ShardsOrDefault()
	b.frames, b.ringSize = u.FramesOrDefault(), u.RingSizeOrDefault()
	next := map[string]*port{}
	var retire []*binding
	for _, pl := range plans {
		for q, bd := range pl.p.bindings {
			if pl.bindings[q] != bd {
				retire = append(retire, bd)
			}
		}
		pl.p.bindings = pl.bindings
		next[pl.p.name] = pl.p
	}
	b.flowCache.Store(cfg.Tables.FlowCacheOrDefault())
	ns := newSnapshot(gen, pol, plans, nt, sessions, rt, int(u.BatchOrDefault()))
	b.attachMirrors(ns, mplans, spans)
	// A kept binding of a port that just became a mirror output has no
	// mirror pool: its worker reopens the socket with one (clones count
	// as no_frame meanwhile; the queue drops at the shim for the moment
	// the socket is down, as in a link flap).
	for i, r := range cfg.PortMirroring {
		for _, pl := range plans {
			if pl.p.name != r.Output {
				continue
			}
			for _, bd := range pl.bindings {
				if bd.mirrorReserve.Load() == 0 {
					bd.mirrorReserve.Store(b.mirrorReserve())
					bd.rebindReq.Store(true)
					res.Warnings = append(res.Warnings, dataplane.Warning{Field: fmt.Sprintf("port_mirroring[%d].output", i),
						Message: fmt.Sprintf("%s becomes a mirror output: its socket is reopened to carve the mirror budget", bd.name)})
				}
			}
		}
	}
	b.snap.Store(ns)
	b.epoch.Add(1)
	b.gen = gen
	for _, bd := range started {
		bd.start()
	}

	// Retire what the new generation no longer has: bindings first (their
	// workers stop, their sockets close), then shims of dropped ports.
	for name, p := range b.ports {
		if np := next[name]; np == p {
			continue
		}
		for _, bd := range p.bindings {
			retire = append(retire, bd)
		}
	}
	for name, sp := range b.spans {
		if spans[name] != sp {
			retire = append(retire, sp.bindings[0])
		}
	}
	b.spans = spans
	for _, bd := range retire {
		bd.retire()
	}
	for name, p := range b.ports {
		if np := next[name]; np != p {
			if err := p.shim.Close(); err != nil {
				res.Warnings = append(res.Warnings, dataplane.Warning{Field: "interfaces", Message: fmt.Sprintf("detach shim from %s: %v", name, err)})
			}
		}
	}
	if old != nil && old.neigh != nt {
		old.neigh.Close()
	}
	b.ports = next
	b.startBackground()
	res.Generation = gen
	return res, nil
}

// resolve finds every config interface in the dataplane's namespace (a
// missing one is a *dataplane.ConfigError naming interfaces[i].name), its
// queues, MAC and link state, and the namespace's own addresses.
func (b *Backend) resolve(cfg *dataplane.Config) ([]resolvedIface, []netip.Addr, error) {
	var ifaces []resolvedIface
	var local []netip.Addr
	err := netnsutil.Do(b.opts.NetNS, func() error {
		var problems []dataplane.Problem
		for i, it := range cfg.Interfaces {
			field := fmt.Sprintf("interfaces[%d].name", i)
			lk, err := netlink.LinkByName(it.Name)
			if err != nil {
				problems = append(problems, dataplane.Problem{Field: field, Message: fmt.Sprintf("interface %q not found in the dataplane's network namespace", it.Name)})
				continue
			}
			a := lk.Attrs()
			r := resolvedIface{field: field, name: it.Name, zone: it.Zone, ifindex: a.Index, up: linkUsable(a)}
			if len(a.HardwareAddr) != 6 {
				problems = append(problems, dataplane.Problem{Field: field, Message: fmt.Sprintf("interface %q has no Ethernet address", it.Name)})
				continue
			}
			copy(r.mac[:], a.HardwareAddr)
			nq := rxQueues(it.Name, max(a.NumRxQueues, 1))
			if len(cfg.Userspace.Queues) == 0 {
				for q := range nq {
					r.queues = append(r.queues, q)
				}
			} else {
				for j, q := range cfg.Userspace.Queues {
					if q >= nq {
						problems = append(problems, dataplane.Problem{Field: fmt.Sprintf("userspace.queues[%d]", j),
							Message: fmt.Sprintf("interface %q has %d RX queues, no queue %d", it.Name, nq, q)})
						continue
					}
					r.queues = append(r.queues, q)
				}
				slices.Sort(r.queues)
				r.queues = slices.Compact(r.queues)
			}
			ifaces = append(ifaces, r)
		}
		if len(problems) > 0 {
			return &dataplane.ConfigError{Problems: problems}
		}
		var err error
		local, err = localAddrs()
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return ifaces, local, nil
}

// localAddrs lists every address of the namespace: frames to them are the
// firewall's own traffic and the shim passes them to the kernel. Run in
// the namespace.
func localAddrs() ([]netip.Addr, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list local addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			if a.IP.To4() != nil {
				ip = ip.Unmap()
			}
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, func(x, y netip.Addr) int { return x.Compare(y) })
	return slices.Compact(out), nil
}

// linkUsable reports whether a link can carry traffic: administratively
// up and operationally up (or unknown, as for drivers without carrier).
func linkUsable(a *netlink.LinkAttrs) bool {
	if a.Flags&net.FlagUp == 0 {
		return false
	}
	return a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown
}

// startBackground starts the link watcher and the housekeeping goroutine
// once. applyMu is held.
func (b *Backend) startBackground() {
	if b.hkStop == nil {
		b.hkStop, b.hkDone = make(chan struct{}), make(chan struct{})
		go b.housekeeping(b.hkStop, b.hkDone)
	}
	if b.watch == nil {
		w, err := startLinkWatch(b)
		if err == nil {
			b.watch = w
		}
		// Without a subscription link changes are still caught by the
		// housekeeping poll (once per refresh period).
	}
}

// housekeeping ages the flow caches, sweeps idle sessions and polls link
// state and local addresses as a backstop for the netlink subscription.
func (b *Backend) housekeeping(stop, done chan struct{}) {
	defer close(done)
	tick := time.NewTicker(b.opts.CacheRefresh)
	defer tick.Stop()
	var lastSweep time.Time
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		b.epoch.Add(1)
		if b.opts.SessionExpireInterval > 0 && time.Since(lastSweep) >= b.opts.SessionExpireInterval {
			lastSweep = time.Now()
			if s := b.snap.Load(); s != nil && b.sessionsTable() != nil {
				b.sessionsTable().Expire(b.now(), 1<<16)
			}
		}
		b.pollLinks()
	}
}

func (b *Backend) sessionsTable() *session.Table {
	if s := b.snap.Load(); s != nil {
		return s.sessions
	}
	return nil
}

// pollLinks re-reads the link state of every managed interface and the
// local addresses; cheap enough once per refresh period.
func (b *Backend) pollLinks() {
	s := b.snap.Load()
	if s == nil {
		return
	}
	_ = netnsutil.Do(b.opts.NetNS, func() error {
		for _, p := range s.ports {
			lk, err := netlink.LinkByIndex(p.ifindex)
			if err != nil {
				p.setLink(false)
				continue
			}
			p.setLink(linkUsable(lk.Attrs()))
		}
		for _, p := range s.spans {
			lk, err := netlink.LinkByIndex(p.ifindex)
			p.setLink(err == nil && linkUsable(lk.Attrs()))
		}
		if local, err := localAddrs(); err == nil {
			for _, p := range s.ports {
				_ = p.shim.SetLocalAddrs(local)
			}
		}
		return nil
	})
}

// Sessions lists at most limit sessions (limit <= 0: all) and the counts.
func (b *Backend) Sessions(ctx context.Context, limit int) ([]dataplane.Session, dataplane.SessionCounts, error) {
	if b == nil || b.closed.Load() {
		return nil, dataplane.SessionCounts{}, dataplane.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, dataplane.SessionCounts{}, err
	}
	t := b.sessionsTable()
	if t == nil {
		return nil, dataplane.SessionCounts{}, nil
	}
	v4, v6 := t.Counts()
	now := b.now()
	var out []dataplane.Session
	for _, e := range t.Snapshot(limit) {
		out = append(out, dataplane.Session{
			Protocol:    protoName(e.Tuple.Proto),
			Source:      netip.AddrPortFrom(e.Tuple.SrcAddr(), e.Tuple.SrcPort).String(),
			Destination: netip.AddrPortFrom(e.Tuple.DstAddr(), e.Tuple.DstPort).String(),
			Packets:     e.Packets, Bytes: e.Bytes,
			IdleSeconds: time.Duration(max(now-e.LastSeen, 0)).Seconds(),
		})
	}
	return out, dataplane.SessionCounts{IPv4: v4, IPv6: v6, Total: v4 + v6}, nil
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_ICMP:
		return "icmp"
	case unix.IPPROTO_ICMPV6:
		return "icmpv6"
	}
	return fmt.Sprintf("%d", p)
}

// Close stops the workers, clears every ready flag, closes every socket
// and detaches every shim. It is idempotent and safe on nil.
func (b *Backend) Close() error {
	if b == nil {
		return nil
	}
	b.applyMu.Lock()
	defer b.applyMu.Unlock()
	if b.closed.Swap(true) {
		return nil
	}
	var errs []error
	if b.watch != nil {
		b.watch.stop()
		b.watch = nil
	}
	if b.hkStop != nil {
		close(b.hkStop)
		<-b.hkDone
		b.hkStop = nil
	}
	for _, p := range b.ports {
		for _, bd := range p.bindings {
			bd.retire()
		}
	}
	for _, sp := range b.spans {
		sp.bindings[0].retire()
	}
	b.spans = nil
	for name, p := range b.ports {
		if err := p.shim.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach shim from %s: %w", name, err))
		}
	}
	b.ports = nil
	if s := b.snap.Load(); s != nil && s.neigh != nil {
		if err := s.neigh.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close neighbour table: %w", err))
		}
	}
	if b.router != nil {
		errs = append(errs, b.router.Close())
	}
	return errors.Join(errs...)
}
