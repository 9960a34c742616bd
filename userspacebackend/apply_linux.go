package userspacebackend

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"

	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/limits"
	"github.com/fwplane/fwplane/internal/netnsutil"
	"github.com/fwplane/fwplane/internal/policy"
	"github.com/fwplane/fwplane/userspacebackend/internal/neigh"
	"github.com/fwplane/fwplane/userspacebackend/internal/session"
	"github.com/fwplane/fwplane/userspacebackend/internal/xsk"
)

// Apply validates cfg and makes it the running configuration, or changes
// nothing. See the package documentation for the error contract.
//
// It runs in three steps, like the eBPF backend: plan (checks and
// lookups, nothing is created), build (the next generation is made beside
// the running one; every step registers its undo, and a failure runs them
// all in reverse), commit (one pointer store, then the old generation's
// leftovers are retired; nothing in it can fail).
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
	p, err := b.plan(cfg)
	if err != nil {
		return dataplane.ApplyResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return dataplane.ApplyResult{}, err
	}
	nx, err := b.build(ctx, p)
	if err != nil {
		return dataplane.ApplyResult{}, err
	}
	return b.commit(p, nx), nil
}

// resolvedIface is one config interface as found in the namespace.
type resolvedIface struct {
	field   string
	name    string
	zone    string
	ifindex int
	mac     [6]byte
	queues  []int
	up      bool
	mtu     uint32
	addrs   *portAddrs
}

// applyPlan is what Apply decided before building anything.
type applyPlan struct {
	cfg    *dataplane.Config
	ifaces []resolvedIface
	local  []netip.Addr
	byName map[string]int
	policy *policy.Set
	// xo are the socket options of new bindings.
	xo *xsk.Options
	// outputs are the managed interfaces that are mirror outputs.
	outputs map[string]bool
	// zoneIDs and zoneNames are the backend's zone ids with the config's
	// new zones added.
	zoneIDs   map[string]uint16
	zoneNames []string
	// nat is the config's NAT, compiled (nil without rules).
	nat *natConfig
}

// plan checks cfg against this backend and the running generation,
// resolves its interfaces and compiles its policy. It creates nothing.
func (b *Backend) plan(cfg *dataplane.Config) (*applyPlan, error) {
	refuse := func(reasons []string) error {
		return &dataplane.NotSupportedError{What: "apply config to the userspace backend", Reasons: reasons}
	}
	reasons := b.refusals(cfg)
	if len(reasons) > 0 {
		return nil, refuse(reasons)
	}
	ifaces, local, err := b.resolve(cfg)
	if err != nil {
		return nil, err
	}
	frameSize := uint32(xsk.DefaultFrameSize)
	for _, it := range ifaces {
		fs := frameSizeFor(it.mtu)
		if fs == 0 {
			reasons = append(reasons, fmt.Sprintf("%s: %s has MTU %d, above the %d the userspace backend forwards (AF_XDP copy mode without multi-buffer: "+
				"a frame must fit one %d-byte UMEM frame less the kernel's %d-byte headroom, the Ethernet header and a VLAN tag); lower the MTU or use the eBPF backend",
				it.field, it.name, it.mtu, MaxMTU, maxFrameSize, xdpHeadroom))
			continue
		}
		frameSize = max(frameSize, fs)
	}
	zoneIDs, zoneNames, ok := b.assignZones(cfg)
	if !ok {
		reasons = append(reasons, fmt.Sprintf("zones: this userspace dataplane has named %d zones since it started, the most its sessions can record: Close and start a new one", len(b.zoneNames)))
	}
	if len(reasons) > 0 {
		return nil, refuse(reasons)
	}
	p := &applyPlan{cfg: cfg, ifaces: ifaces, local: local, byName: map[string]int{}, outputs: map[string]bool{},
		zoneIDs: zoneIDs, zoneNames: zoneNames}
	for _, it := range ifaces {
		p.byName[it.name] = it.ifindex
	}
	p.policy, err = policy.Compile(cfg, func(name string) (int, error) {
		if idx, ok := p.byName[name]; ok {
			return idx, nil
		}
		return 0, fmt.Errorf("interface %s: not resolved", name)
	})
	if err != nil {
		return nil, fmt.Errorf("compile policies: %w", err)
	}
	for _, r := range cfg.PortMirroring {
		if _, ok := p.byName[r.Output]; ok {
			p.outputs[r.Output] = true
		}
	}
	if p.nat, err = compileNAT(cfg, zoneIDs, &b.nat); err != nil {
		return nil, refuse([]string{err.Error()})
	}
	p.xo = b.socketOptions(cfg.Userspace)
	p.xo.FrameSize = max(frameSize, b.frameSize.Load())
	return p, nil
}

// Frame sizes. In copy mode the kernel writes a received frame after a
// 256-byte headroom (XDP_PACKET_HEADROOM) into one UMEM frame, and an
// aligned UMEM frame is 2048 or 4096 bytes (the page size): without
// AF_XDP multi-buffer, which this backend does not use, a frame of an
// interface with a larger MTU cannot be received.
const (
	maxFrameSize = 4096
	xdpHeadroom  = 256
	// l2Overhead is the Ethernet header and one VLAN tag.
	l2Overhead = 18
	// MaxMTU is the largest interface MTU the userspace backend forwards
	// (with 4096-byte UMEM frames; up to 1774 it uses 2048-byte ones).
	// On a veth the kernel refuses a native XDP program without
	// multi-buffer support once the peer's MTU exceeds 3506; the shim
	// then runs in generic mode (Apply warns).
	MaxMTU = maxFrameSize - xdpHeadroom - l2Overhead
)

// frameSizeFor returns the UMEM frame size an interface of that MTU
// needs, or 0 when its frames do not fit one.
func frameSizeFor(mtu uint32) uint32 {
	switch {
	case mtu+l2Overhead <= xsk.DefaultFrameSize-xdpHeadroom:
		return xsk.DefaultFrameSize
	case mtu <= MaxMTU:
		return maxFrameSize
	}
	return 0
}

// refusals lists every reason cfg cannot be applied to this backend as it
// runs: features it lacks, and sizes fixed when it started.
func (b *Backend) refusals(cfg *dataplane.Config) []string {
	reasons := unsupported(cfg)
	reasons = append(reasons, limits.Check(cfg, nil, Limits(), string(dataplane.ModeUserspace))...)
	if b.sessions == nil {
		return reasons
	}
	u := cfg.Userspace
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
	return reasons
}

// socketOptions are the xsk options of the bindings a config opens.
func (b *Backend) socketOptions(u dataplane.UserspaceOpts) *xsk.Options {
	xo := &xsk.Options{RingSize: u.RingSizeOrDefault(), Frames: u.FramesOrDefault(), TXBudget: b.opts.TXBudget}
	if r := b.opts.testTXRing; r != 0 {
		xo.TXRingSize, xo.CompletionRingSize = r, r
		xo.Frames = u.RingSizeOrDefault() + r
	}
	// The kernel refuses a per-kick budget outside [32, TX ring size].
	if txr := txRingOf(xo); txr < 32 {
		xo.TXBudget = 0
	} else {
		xo.TXBudget = min(xo.TXBudget, txr)
	}
	return xo
}

// nextGen is the next generation as build made it, beside the running
// one: nothing in it is visible to the workers until commit.
type nextGen struct {
	sessions *session.Table
	router   router
	neigh    *neigh.Table
	ports    []portPlan
	mirrors  []mirrorPlan
	// steer is the NAT steering the shims were given (nat step).
	steer map[netip.Addr]uint8
	spans map[string]*port
	// started are the new bindings; their workers start after the swap.
	started []*binding
	res     dataplane.ApplyResult
}

// undoStack collects what build made, to be released in reverse order
// when a later step fails.
type undoStack []func()

func (u *undoStack) push(f func()) { *u = append(*u, f) }

func (u undoStack) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// applyFault, when set by a test, is asked before every build step and
// fails the step it names: the fault-injection tests prove that every
// step before it is undone.
var applyFault atomic.Pointer[func(step string) error]

func injected(step string) error {
	if f := applyFault.Load(); f != nil {
		return (*f)(step)
	}
	return nil
}

// Build steps, in order (the names fault injection uses).
const (
	stepTables    = "tables"
	stepRouter    = "router"
	stepNeighbors = "neighbors"
	stepPorts     = "ports"
	stepMirrors   = "mirrors"
	stepNAT       = "nat"
)

// build makes the next generation: session table (first Apply only),
// route resolver (first Apply only), neighbour table (new or resized),
// shims and sockets of new interfaces and queues, SPAN ports. On error
// everything it made is released and the running generation is as it was.
func (b *Backend) build(ctx context.Context, p *applyPlan) (*nextGen, error) {
	nx := &nextGen{}
	var undo undoStack
	steps := []struct {
		name string
		fn   func() error
	}{
		{stepTables, func() error { return b.buildTables(p, nx) }},
		{stepRouter, func() error { return b.buildRouter(ctx, nx, &undo) }},
		{stepNeighbors, func() error { return b.buildNeighbors(ctx, p, nx, &undo) }},
		{stepPorts, func() error { return b.buildPorts(p, nx, &undo) }},
		{stepMirrors, func() error { return b.buildMirrors(p, nx, &undo) }},
		{stepNAT, func() error { return b.buildNAT(p, nx, &undo) }},
	}
	for _, s := range steps {
		err := injected(s.name)
		if err == nil {
			err = s.fn()
		}
		if err != nil {
			undo.run()
			return nil, err
		}
	}
	return nx, nil
}

// buildTables makes the session table on the first Apply; later ones
// keep it (its size cannot change: see refusals).
func (b *Backend) buildTables(p *applyPlan, nx *nextGen) error {
	nx.sessions = b.sessions
	if nx.sessions == nil {
		nx.sessions = session.New(p.cfg.Tables.SessionsOrDefault(), p.cfg.Userspace.ShardsOrDefault(), p.cfg.Timeouts)
	}
	return nil
}

// buildRouter opens the route resolver on the first Apply.
func (b *Backend) buildRouter(ctx context.Context, nx *nextGen, undo *undoStack) error {
	nx.router = b.router
	if nx.router != nil {
		return nil
	}
	r, err := newResolver(ctx, b.opts.NetNS)
	if err != nil {
		return fmt.Errorf("open route table: %w", err)
	}
	nx.router = r
	undo.push(func() { r.Close() })
	return nil
}

// buildNeighbors keeps the running neighbour table unless its size
// changes; then a new one is filled beside it.
func (b *Backend) buildNeighbors(ctx context.Context, p *applyPlan, nx *nextGen, undo *undoStack) error {
	want := p.cfg.Tables.NeighborsOrDefault()
	if old := b.snap.Load(); old != nil && uint32(old.neigh.Capacity()) == want {
		nx.neigh = old.neigh
		return nil
	}
	t, err := neigh.New(ctx, &neigh.Options{NetNSPath: b.opts.NetNS, Capacity: want})
	if err != nil {
		return fmt.Errorf("mirror neighbour table: %w", err)
	}
	nx.neigh = t
	undo.push(func() { t.Close() })
	return nil
}

// buildPorts attaches the shim to every new interface and binds a socket
// on every new queue of an interface that is up; kept ones are reused.
// Every shim gets the namespace's local addresses.
func (b *Backend) buildPorts(p *applyPlan, nx *nextGen, undo *undoStack) error {
	return netnsutil.Do(b.opts.NetNS, func() error {
		for _, it := range p.ifaces {
			pl, err := b.buildPort(p, it, nx, undo)
			if err != nil {
				return err
			}
			nx.ports = append(nx.ports, pl)
		}
		return nil
	})
}

// buildPort is buildPorts for one interface; it runs in the namespace.
func (b *Backend) buildPort(p *applyPlan, it resolvedIface, nx *nextGen, undo *undoStack) (portPlan, error) {
	pt := b.ports[it.name]
	if pt != nil && pt.ifindex != it.ifindex {
		// Same name, new interface: the old one went away with its shim.
		// Build afresh; the old port retires at commit.
		pt = nil
	}
	if pt == nil {
		shim, err := xsk.LoadShim(it.ifindex, b.shimOptions(it.name, it.ifindex))
		if err != nil {
			return portPlan{}, fmt.Errorf("attach shim to %s: %w", it.name, err)
		}
		undo.push(func() { shim.Close() })
		if shim.Mode() == xsk.AttachGeneric && !b.opts.ForceGenericXDP {
			nx.res.Warnings = append(nx.res.Warnings, dataplane.Warning{Field: it.field,
				Message: fmt.Sprintf("native XDP failed on %s (%v): the shim runs in generic mode, which is much slower", it.name, shim.NativeError())})
		}
		pt = &port{name: it.name, ifindex: it.ifindex, shim: shim}
		pt.linkUp.Store(it.up)
	} else if b.snap.Load() == nil {
		// Adopted from a pinned dataplane (see adopt): no watcher has
		// followed its link yet.
		pt.linkUp.Store(it.up)
	}
	// Current either way: the running generation may use them at once.
	pt.mtu.Store(it.mtu)
	pt.addrs.Store(it.addrs)
	if err := pt.shim.SetLocalAddrs(p.local); err != nil {
		return portPlan{}, fmt.Errorf("program local addresses on %s: %w", it.name, err)
	}
	pl := portPlan{p: pt, mac: it.mac, up: it.up, zone: p.zoneIDs[it.zone], bindings: map[int]*binding{}}
	for _, q := range it.queues {
		if bd := pt.bindings[q]; bd != nil {
			pl.bindings[q] = bd
			continue
		}
		bd := newBinding(b, pt, q, p.xo)
		if p.outputs[it.name] {
			bd.mirrorReserve.Store(b.mirrorReserve())
		}
		if it.up {
			if err := bd.open(); err != nil {
				return portPlan{}, fmt.Errorf("bind %s queue %d: %w", it.name, q, err)
			}
		}
		undo.push(func() { bd.closeSocket() })
		pl.bindings[q] = bd
		nx.started = append(nx.started, bd)
	}
	return pl, nil
}

// buildMirrors resolves the mirror rules and opens the SPAN ports.
func (b *Backend) buildMirrors(p *applyPlan, nx *nextGen, undo *undoStack) error {
	return netnsutil.Do(b.opts.NetNS, func() error {
		var err error
		nx.mirrors, nx.spans, err = b.planMirrors(p.cfg, p.byName, &nx.res, p.xo, undo, &nx.started)
		return err
	})
}

// buildNAT binds every pool address to its slot allocator and gives the
// shims the NAT addresses that are the firewall's own (steering; the
// previous steering is restored if a later step fails).
func (b *Backend) buildNAT(p *applyPlan, nx *nextGen, undo *undoStack) error {
	p.nat.bindPools()
	// The next generation's ports as the steering sees them.
	s := &snapshot{nat: p.nat}
	for _, pl := range nx.ports {
		s.ports = append(s.ports, &portView{port: pl.p, mac: pl.mac, zone: pl.zone})
	}
	nx.steer = natSteering(s, p.local)
	old := b.steer
	undo.push(func() {
		for _, pl := range nx.ports {
			_ = pl.p.shim.SetNATAddrs(old)
		}
	})
	for _, pl := range nx.ports {
		if err := pl.p.shim.SetNATAddrs(nx.steer); err != nil {
			return fmt.Errorf("program NAT addresses on %s: %w", pl.p.name, err)
		}
	}
	return nil
}

// commit makes nx the running generation with one pointer store, starts
// the new workers and retires what the new generation no longer has.
// applyMu is held; nothing here fails.
func (b *Backend) commit(p *applyPlan, nx *nextGen) dataplane.ApplyResult {
	cfg, u := p.cfg, p.cfg.Userspace
	old := b.snap.Load()
	gen := b.gen + 1
	if b.sessions != nil {
		b.sessions.SetTimeouts(cfg.Timeouts)
	}
	b.sessions, b.router = nx.sessions, nx.router
	b.capacity, b.shards = cfg.Tables.SessionsOrDefault(), u.ShardsOrDefault()
	b.frames, b.ringSize = u.FramesOrDefault(), u.RingSizeOrDefault()
	next := map[string]*port{}
	var retire []*binding
	for _, pl := range nx.ports {
		for q, bd := range pl.p.bindings {
			if pl.bindings[q] != bd {
				retire = append(retire, bd)
			}
		}
		pl.p.bindings = pl.bindings
		next[pl.p.name] = pl.p
	}
	b.flowCache.Store(cfg.Tables.FlowCacheOrDefault())
	ns := newSnapshot(gen, p.policy, nx.ports, nx.neigh, nx.sessions, nx.router, int(u.BatchOrDefault()))
	ns.zoneNames, ns.tcpPickup = p.zoneNames, cfg.Sessions.TCPPickup
	ns.nat = p.nat
	if p.nat != nil {
		// Before the swap: the first translated session needs it.
		nx.sessions.EnableNAT(b.nat.release)
	}
	b.steer = nx.steer
	b.zoneIDs, b.zoneNames = p.zoneIDs, p.zoneNames
	b.attachMirrors(ns, nx.mirrors, nx.spans)
	b.carveMirrorPools(cfg, nx)
	b.growFrames(ns, p.xo.FrameSize)
	b.snap.Store(ns)
	b.epoch.Add(1)
	b.gen = gen
	for _, bd := range nx.started {
		bd.start()
	}
	if old != nil && !cfg.Sessions.KeepOnPolicyChange {
		b.endDenied(p, nx)
	}
	b.retireOld(next, nx, retire, old)
	b.ports = next
	// Allocators of addresses no pool names and no session holds are
	// forgotten (masquerade ones are made again on demand).
	b.nat.retireExcept(func(a [4]byte) bool { return p.nat != nil && p.nat.pools[a] })
	b.followMasquerade(ns)
	b.startBackground()
	if err := b.writeMeta(); err != nil {
		nx.res.Warnings = append(nx.res.Warnings, dataplane.Warning{Field: "(pin)",
			Message: fmt.Sprintf("the pinned dataplane's meta was not updated (%v): a restart continues from generation %d", err, gen-1)})
	}
	nx.res.Generation = gen
	return nx.res
}

// assignZones returns the backend's zone ids with an id for every zone of
// cfg that has none yet. Ids are never reused while the backend lives, so
// a session keeps its zones' names across Applies and a zone that is
// removed and added again is a new zone; ok is false when the id space
// (one short of session.AnyZone) is used up.
func (b *Backend) assignZones(cfg *dataplane.Config) (ids map[string]uint16, names []string, ok bool) {
	ids = make(map[string]uint16, len(b.zoneIDs)+len(cfg.Zones))
	for n, id := range b.zoneIDs {
		ids[n] = id
	}
	names = slices.Clone(b.zoneNames)
	for _, z := range cfg.Zones {
		if _, have := ids[z.Name]; have {
			continue
		}
		if len(names) >= session.AnyZone {
			return nil, nil, false
		}
		ids[z.Name] = uint16(len(names))
		names = append(names, z.Name)
	}
	return ids, names, true
}

// endDenied ends, after the swap, every session that the new generation
// would not create: one of its zones is gone from the config, or the
// policy denies its first packet (the initiator's tuple, from its
// FromZone to its ToZone). Their next packets meet the new policy. The
// count is sessions_ended_by_policy.
func (b *Backend) endDenied(p *applyPlan, nx *nextGen) {
	names := p.zoneNames
	n := nx.sessions.EndIf(func(e *session.Entry) bool {
		if int(e.FromZone) >= len(names) || int(e.ToZone) >= len(names) {
			return true
		}
		from, fok := p.policy.ZoneID(names[e.FromZone])
		to, tok := p.policy.ZoneID(names[e.ToZone])
		if !fok || !tok {
			return true
		}
		t := e.Tuple
		if e.Translated && tagDNAT(e.NAT.Tag) != 0 {
			// The policy judged the translated destination.
			copy(t.Dst[:4], e.NAT.Dst[:])
			t.DstPort = e.NAT.DstPort
		}
		allow, _ := p.policy.DecideZones(from, to, t)
		return !allow
	})
	b.endedByPolicy.Add(uint64(n))
}

// growFrames makes size the UMEM frame size of sockets opened from now
// on, and asks every running socket with smaller frames to reopen (an
// interface with a larger MTU joined, or one's MTU grew): the frames it
// can no longer receive are dropped meanwhile, counted by the kernel
// (xdp_rx_dropped). Frames never shrink.
func (b *Backend) growFrames(s *snapshot, size uint32) {
	for {
		cur := b.frameSize.Load()
		if size <= cur {
			return
		}
		// Apply, the link watcher and the poll may race: the largest wins.
		if b.frameSize.CompareAndSwap(cur, size) {
			break
		}
	}
	for _, bd := range s.bindings() {
		if xb := bd.live.Load(); xb != nil && xb.FrameSize() < size {
			bd.rebindReq.Store(true)
		}
	}
}

// carveMirrorPools asks the kept bindings of a port that just became a
// mirror output to reopen their sockets with a mirror pool (clones count
// as no_frame meanwhile; the queue drops at the shim for the moment the
// socket is down, as in a link flap).
func (b *Backend) carveMirrorPools(cfg *dataplane.Config, nx *nextGen) {
	for i, r := range cfg.PortMirroring {
		for _, pl := range nx.ports {
			if pl.p.name != r.Output {
				continue
			}
			for _, bd := range pl.bindings {
				if bd.mirrorReserve.Load() == 0 {
					bd.mirrorReserve.Store(b.mirrorReserve())
					bd.rebindReq.Store(true)
					nx.res.Warnings = append(nx.res.Warnings, dataplane.Warning{Field: fmt.Sprintf("port_mirroring[%d].output", i),
						Message: fmt.Sprintf("%s becomes a mirror output: its socket is reopened to carve the mirror budget", bd.name)})
				}
			}
		}
	}
}

// retireOld stops what the new generation no longer has: bindings first
// (their workers stop, their sockets close), then shims of dropped ports,
// then a replaced neighbour table.
func (b *Backend) retireOld(next map[string]*port, nx *nextGen, retire []*binding, old *snapshot) {
	for name, p := range b.ports {
		if next[name] == p {
			continue
		}
		for _, bd := range p.bindings {
			retire = append(retire, bd)
		}
	}
	for name, sp := range b.spans {
		if nx.spans[name] != sp {
			retire = append(retire, sp.bindings[0])
		}
	}
	b.spans = nx.spans
	for _, bd := range retire {
		bd.retire()
	}
	for name, p := range b.ports {
		if next[name] != p {
			if err := p.shim.Close(); err != nil {
				nx.res.Warnings = append(nx.res.Warnings, dataplane.Warning{Field: "interfaces", Message: fmt.Sprintf("detach shim from %s: %v", name, err)})
			}
		}
	}
	if old != nil && old.neigh != nx.neigh {
		old.neigh.Close()
	}
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
			r, ps := resolveIface(cfg, i, it)
			problems = append(problems, ps...)
			if len(ps) == 0 {
				ifaces = append(ifaces, r)
			}
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

// resolveIface resolves interface i of cfg; it runs in the namespace.
func resolveIface(cfg *dataplane.Config, i int, it dataplane.Interface) (resolvedIface, []dataplane.Problem) {
	field := fmt.Sprintf("interfaces[%d].name", i)
	lk, err := netlink.LinkByName(it.Name)
	if err != nil {
		return resolvedIface{}, []dataplane.Problem{{Field: field, Message: fmt.Sprintf("interface %q not found in the dataplane's network namespace", it.Name)}}
	}
	a := lk.Attrs()
	r := resolvedIface{field: field, name: it.Name, zone: it.Zone, ifindex: a.Index, up: linkUsable(a), mtu: uint32(a.MTU),
		addrs: readPortAddrs(a.Index)}
	if len(a.HardwareAddr) != 6 {
		return resolvedIface{}, []dataplane.Problem{{Field: field, Message: fmt.Sprintf("interface %q has no Ethernet address", it.Name)}}
	}
	copy(r.mac[:], a.HardwareAddr)
	nq := rxQueues(it.Name, max(a.NumRxQueues, 1))
	if len(cfg.Userspace.Queues) == 0 {
		for q := range nq {
			r.queues = append(r.queues, q)
		}
		return r, nil
	}
	var problems []dataplane.Problem
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
	return r, problems
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
