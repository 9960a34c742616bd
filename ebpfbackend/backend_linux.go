package ebpfbackend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/mapcount"
	"github.com/fwplane/fwplane/internal/netnsutil"
	"github.com/fwplane/fwplane/internal/pindir"
	"github.com/fwplane/fwplane/internal/policy"
)

// Backend is a running eBPF dataplane. It implements dataplane.DataPlane and
// dataplane.SessionLister.
type Backend struct {
	opts    Options
	counter *mapcount.Counter

	applyMu sync.Mutex // serialises Apply and Close

	mu       sync.RWMutex // guards the fields below for readers
	closed   bool
	objs     *fwObjects // nil until the first Apply
	capacity uint32     // session table size objs was loaded with
	slot     uint32     // active slot
	gen      uint64
	attached map[string]*attachment // by interface name
	cfg      *dataplane.Config

	// zones are the zone ids in force (stable across Applies; sessions
	// record their zones by id).
	zones map[string]uint32
	// activeTag is the value in fw_active: its low bit is the active slot,
	// and every write is a new value, which the flow caches' entries are
	// tagged with (a write invalidates them all). Starts at -1: the first
	// Apply writes 0.
	activeTag uint32

	// grace is a one-element map-in-map whose update makes the kernel
	// wait for an RCU grace period (see waitReaders).
	grace      *ebpf.Map
	graceInner *ebpf.Map

	mir *mirrors // port mirroring; has its own lock

	endedByPolicy atomic.Uint64 // sessions Apply ended: the new policy denies them
	cleared       atomic.Uint64 // sessions ClearSessions ended

	// NAT: the running rules, and the masquerade address watcher (started
	// by the first Apply that masquerades).
	nat              natRunning
	masqWatch        *masqWatch
	masqUpdates      atomic.Uint64
	masqUpdateErrors atomic.Uint64
	masqEnded        atomic.Uint64

	// Pinning (Options.PinDir): the meta map, the layout fingerprint of
	// this build, and whether the running dataplane was adopted.
	meta        *ebpf.Map
	fingerprint [32]byte
	// pinLock holds Options.PinDir while this Backend runs (see
	// internal/pindir): one process at a time owns a pinned dataplane.
	pinLock *pindir.Lock
	adopted bool
}

type attachment struct {
	ifindex int
	link    link.Link
	generic bool
	mode    string // dataplane.Attached*
	reason  string
}

var (
	_ dataplane.DataPlane     = (*Backend)(nil)
	_ dataplane.SessionLister = (*Backend)(nil)
)

// New prepares a backend. Nothing is loaded or attached until the first
// Apply, because the session table's size comes from the config.
func New(ctx context.Context, opts *Options) (*Backend, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock rlimit: %w", err)
	}
	if o.NetNS != "" {
		if err := netnsutil.Do(o.NetNS, func() error { return nil }); err != nil {
			return nil, fmt.Errorf("open netns: %w", err)
		}
	}
	c, err := mapcount.NewCounter(&mapcount.Options{Method: o.CountMethod})
	if err != nil {
		return nil, fmt.Errorf("create map counter: %w", err)
	}
	b := &Backend{opts: o, counter: c, attached: map[string]*attachment{}, activeTag: ^uint32(0), mir: &mirrors{
		up: map[uint32]bool{}, pairs: map[fwFwPairKey]bool{}, outs: map[uint32]bool{},
	}}
	if o.PinDir != "" {
		if err := b.openPinned(); err != nil {
			c.Close()
			return nil, err
		}
	}
	return b, nil
}

// openPinned prepares Options.PinDir: adopts the dataplane pinned there,
// or replaces an incompatible one when asked to, or leaves a fresh
// directory for the first Apply.
func (b *Backend) openPinned() (err error) {
	dir := b.opts.PinDir
	lock, err := pindir.Acquire(dir)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			lock.Unlock()
		} else {
			b.pinLock = lock
		}
	}()
	if _, err := os.Stat(filepath.Join(dir, userspaceMetaName)); err == nil {
		return fmt.Errorf("pin directory %s holds a pinned userspace dataplane, not an eBPF one: run the userspace backend, or remove it first (fwd --remove, or fwplane.RemovePinned)", dir)
	}
	if hasPinnedDataplane(dir) {
		err := b.adopt()
		if err == nil || !errors.Is(err, ErrIncompatiblePin) || !b.opts.ReplaceIncompatible {
			return err
		}
		if rerr := removePins(dir); rerr != nil {
			return fmt.Errorf("replace the incompatible dataplane in %s: %w", dir, rerr)
		}
		return os.MkdirAll(dir, 0o700)
	}
	if ents, _ := os.ReadDir(dir); len(ents) > 0 {
		return fmt.Errorf("pin directory %s holds pins but no fwplane dataplane (no %s): remove them first", dir, metaName)
	}
	return nil
}

// Mode returns dataplane.ModeEBPF.
func (b *Backend) Mode() dataplane.Mode { return dataplane.ModeEBPF }

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
	if b.isClosed() {
		return dataplane.ApplyResult{}, dataplane.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return dataplane.ApplyResult{}, err
	}

	reasons := unsupported(cfg)
	zones, zoneReasons := nextZoneIDs(b.zones, cfg, cfg.Sessions.KeepOnPolicyChange)
	reasons = append(reasons, zoneReasons...)
	p, planReasons := buildPlan(cfg, zones)
	reasons = append(reasons, planReasons...)
	if b.opts.SessionSweepInterval > 0 {
		p.settings.SweepNs = uint64(b.opts.SessionSweepInterval.Nanoseconds())
	}
	natEpoch := b.nat.nextEpoch(cfg)
	p.settings.NatEpoch = natEpoch
	reasons = append(reasons, mirrorReasons(cfg, len(p.ifaces))...)
	capacity := cfg.Tables.SessionsOrDefault()
	if b.objs != nil && capacity != b.capacity {
		reasons = append(reasons, fmt.Sprintf("tables.sessions: changing the session table size of a running eBPF dataplane (%d -> %d) is not supported: Close and start a new one", b.capacity, capacity))
	}
	if len(reasons) > 0 {
		return dataplane.ApplyResult{}, &dataplane.NotSupportedError{What: "apply config to the eBPF backend", Reasons: reasons}
	}

	// Resolve every interface, and decide how to attach to each, before
	// touching anything.
	choices, err := b.attachChoices(cfg)
	if err != nil {
		return dataplane.ApplyResult{}, err
	}
	ifindex := make(map[string]int, len(p.ifaces))
	var mrules []mirrorRule
	var mwarns, natWarns []dataplane.Warning
	err = netnsutil.Do(b.opts.NetNS, func() error {
		var problems []dataplane.Problem
		for _, it := range p.ifaces {
			ifi, err := net.InterfaceByName(it.name)
			if err != nil {
				problems = append(problems, dataplane.Problem{Field: it.field, Message: fmt.Sprintf("interface %q not found in the dataplane's network namespace", it.name)})
				continue
			}
			ifindex[it.name] = ifi.Index
		}
		if len(problems) > 0 {
			return &dataplane.ConfigError{Problems: problems}
		}
		mrules, mwarns = mirrorPlan(cfg, ifindex)
		var err error
		natWarns, err = p.nat.resolve(cfg, ifindex)
		return err
	})
	if err != nil {
		return dataplane.ApplyResult{}, err
	}

	// The policy as Go judges it, for the sessions a new config may end.
	var pol *policy.Set
	if b.objs != nil && !cfg.Sessions.KeepOnPolicyChange {
		pol, err = policy.Compile(cfg, func(name string) (int, error) {
			if idx, ok := ifindex[name]; ok {
				return idx, nil
			}
			return 0, fmt.Errorf("interface %s: not resolved", name)
		})
		if err != nil {
			return dataplane.ApplyResult{}, fmt.Errorf("compile policies: %w", err)
		}
	}

	fresh := false
	if b.objs == nil {
		objs, err := load(capacity, b.opts.PinDir)
		if err != nil {
			return dataplane.ApplyResult{}, err
		}
		if b.opts.PinDir != "" {
			// The meta first: pins that enforce anything are adoptable.
			if err := b.startPinned(objs, capacity); err != nil {
				objs.Close()
				_ = removePins(b.opts.PinDir)
				return dataplane.ApplyResult{}, err
			}
		}
		// Without the grace maps waitReaders sleeps instead: slower
		// Applies, same guarantee in practice, so not an error.
		outer, inner, gerr := newGraceMaps()
		b.mu.Lock()
		b.objs, b.capacity = objs, capacity
		if gerr == nil {
			b.grace, b.graceInner = outer, inner
		}
		b.mu.Unlock()
		fresh = true
	}
	egress := make([]uint32, 0, len(p.ifaces))
	for _, it := range p.ifaces {
		egress = append(egress, uint32(ifindex[it.name]))
	}
	mirror := func(modes map[uint32]string) (func(), error) {
		return b.applyMirrors(b.objs, mrules, egress, modes)
	}
	res, err := b.commit(p, ifindex, choices, mirror)
	if err != nil {
		if fresh {
			// Nothing was ever running: drop the collection so the next
			// Apply starts clean (and may choose another capacity).
			b.mu.Lock()
			b.objs.Close()
			b.objs, b.capacity = nil, 0
			b.closeGrace()
			if b.meta != nil {
				b.meta.Close()
				b.meta = nil
				_ = removePins(b.opts.PinDir)
				_ = os.MkdirAll(b.opts.PinDir, 0o700)
			}
			b.mu.Unlock()
		}
		return dataplane.ApplyResult{}, err
	}
	res.Warnings = append(res.Warnings, mwarns...)
	res.Warnings = append(res.Warnings, natWarns...)
	res.Warnings = append(res.Warnings, b.mir.stageWarning()...)
	b.mu.Lock()
	b.cfg = cfg.Clone()
	b.zones = zones
	b.nat = natRunning{plan: p.nat, epoch: natEpoch, rules: b.cfg.NAT}
	b.mu.Unlock()
	// Counters of addresses no pool has any more, once they hold nothing
	// (best effort: a leftover entry costs a map slot, not a wrong row).
	_ = pruneNATCounters(b.objs, p.nat.addrs)
	if len(p.nat.masqs) > 0 {
		if err := b.startMasqWatch(); err != nil {
			res.Warnings = append(res.Warnings, dataplane.Warning{Field: "nat",
				Message: fmt.Sprintf("%v: a changed interface address is taken only at the next Apply", err)})
		}
	}
	if err := b.writeMeta(); err != nil {
		res.Warnings = append(res.Warnings, dataplane.Warning{Field: "(pin)",
			Message: fmt.Sprintf("the pinned dataplane's meta was not updated (%v): a restart adopts it at generation %d", err, b.gen-1)})
	}
	if fresh && b.opts.SessionSweepInterval >= 0 {
		if err := armSweep(b.objs); err != nil {
			res.Warnings = append(res.Warnings, dataplane.Warning{Field: "tables.sessions",
				Message: fmt.Sprintf("the in-kernel session sweep could not be armed (%v): expired sessions leave only when a packet or a new flow finds them", err)})
		}
	}
	if pol != nil {
		// Committed: judge the sessions of the old config under the new
		// one. A failure here leaves sessions the policy now denies, which
		// is what keep_on_policy_change asks for, so it is a warning.
		n, err := b.endDeniedSessions(ctx, pol, zones)
		b.endedByPolicy.Add(uint64(n))
		if n > 0 {
			// Flow-cache entries filled from those sessions between the
			// flip and their end must go too.
			if ierr := b.invalidateFlowCaches(); ierr != nil && err == nil {
				err = ierr
			}
		}
		if err != nil {
			res.Warnings = append(res.Warnings, dataplane.Warning{Field: "sessions",
				Message: fmt.Sprintf("ending sessions the new policy denies stopped after %d: %v", n, err)})
		}
	}
	return res, nil
}

// load loads the program with session tables of capacity; with pinDir its
// maps are pinned there, or the ones pinned there are reused.
func load(capacity uint32, pinDir string) (*fwObjects, error) {
	spec, err := loadFw()
	if err != nil {
		return nil, fmt.Errorf("load program spec: %w", err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count possible CPUs: %w", err)
	}
	for name, m := range spec.Maps {
		m.MaxEntries = sizedEntries(name, m.MaxEntries, capacity, cpus)
	}
	var opts *ebpf.CollectionOptions
	if pinDir != "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinByName
		}
		opts = &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}}
	}
	var objs fwObjects
	if err := spec.LoadAndAssign(&objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load program: %w (verifier: %+v)", err, ve)
		}
		return nil, fmt.Errorf("load program: %w", err)
	}
	return &objs, nil
}

// commit programs the inactive slot, attaches new interfaces, programs
// port mirroring (beforeFlip, which undoes itself when it fails and returns
// its undo), flips the active slot and only then detaches interfaces the
// config dropped. Every step before the flip is undone on failure; the flip
// is the commit point.
func (b *Backend) commit(p *plan, ifindex map[string]int, choices map[string]capability.AttachChoice, beforeFlip func(map[uint32]string) (func(), error)) (dataplane.ApplyResult, error) {
	objs := b.objs
	// fw_active counts flips (the low bit is the slot): the flow cache
	// tags its entries with it, so a flip invalidates them all.
	flip := b.activeTag + 1
	next := flip & 1
	if err := writeSlot(objs, next, p, ifindex, choices); err != nil {
		return dataplane.ApplyResult{}, err
	}

	var res dataplane.ApplyResult
	var newAtt []*attachment
	var newNames []string
	var addedPorts []uint32
	undo := func() {
		for _, a := range newAtt {
			a.detach()
		}
		for _, k := range addedPorts {
			objs.FwTxPorts.Delete(k)
		}
	}

	err := netnsutil.Do(b.opts.NetNS, func() error {
		// The devmap resolves ifindexes in the caller's namespace, so it is
		// filled here too.
		for _, it := range p.ifaces {
			idx := uint32(ifindex[it.name])
			var cur uint32
			if objs.FwTxPorts.Lookup(idx, &cur) == nil {
				continue
			}
			if err := objs.FwTxPorts.Update(idx, idx, ebpf.UpdateAny); err != nil {
				return fmt.Errorf("add %s to the devmap: %w", it.name, err)
			}
			addedPorts = append(addedPorts, idx)
		}
		for _, it := range p.ifaces {
			idx := ifindex[it.name]
			ch := choices[it.name]
			if a, ok := b.attached[it.name]; ok && a.ifindex == idx && a.wanted(ch) {
				a.reason = ch.Reason
				continue
			}
			a, warn, err := b.attach(objs, it.name, idx, ch)
			if err != nil {
				return err
			}
			if warn != nil {
				w := *warn
				w.Field = it.field
				res.Warnings = append(res.Warnings, w)
			}
			if err := b.pinLink(it.name, a); err != nil {
				a.link.Close()
				return err
			}
			newAtt = append(newAtt, a)
			newNames = append(newNames, it.name)
		}
		return nil
	})
	if err != nil {
		undo()
		return dataplane.ApplyResult{}, err
	}
	modes := map[uint32]string{}
	for name, a := range b.attached {
		modes[uint32(a.ifindex)] = a.mode
		_ = name
	}
	for _, a := range newAtt {
		modes[uint32(a.ifindex)] = a.mode
	}
	undoMirror, err := beforeFlip(modes)
	if err != nil {
		undo()
		return dataplane.ApplyResult{}, err
	}

	if err := objs.FwActive.Update(uint32(0), flip, ebpf.UpdateAny); err != nil {
		undoMirror()
		undo()
		return dataplane.ApplyResult{}, fmt.Errorf("activate config slot: %w", err)
	}
	// Packets that read fw_active before the flip may still be using the
	// old slot, which the next Apply rewrites: wait them out here, so
	// that when Apply returns every packet runs the new config.
	b.waitReaders()

	// Committed. Retire what the new config no longer has.
	b.mu.Lock()
	defer b.mu.Unlock()
	keep := map[string]bool{}
	keepIdx := map[uint32]bool{}
	for _, it := range p.ifaces {
		keep[it.name] = true
		keepIdx[uint32(ifindex[it.name])] = true
	}
	replacedNames := map[string]bool{}
	for _, name := range newNames {
		replacedNames[name] = true
	}
	for name, a := range b.attached {
		if !keep[name] || replacedNames[name] {
			if replacedNames[name] && b.opts.PinDir != "" {
				// The new link took the pin; closing the old one detaches it.
				a.link.Close()
			} else {
				a.detach()
			}
			delete(b.attached, name)
		}
	}
	for i, name := range newNames {
		b.attached[name] = newAtt[i]
	}
	var idx, v uint32
	var stale []uint32
	it := objs.FwTxPorts.Iterate()
	for it.Next(&idx, &v) {
		if !keepIdx[idx] {
			stale = append(stale, idx)
		}
	}
	for _, k := range stale {
		// Best effort: a leftover port is harmless, the zone map no longer
		// names it, so nothing is forwarded to it.
		_ = objs.FwTxPorts.Delete(k)
	}
	b.slot = next
	b.activeTag = flip
	b.gen++
	res.Generation = b.gen
	return res, nil
}

// invalidateFlowCaches gives fw_active a new value with the same slot, so
// every flow-cache entry (tagged with the old value) misses and its next
// packet meets the session tables. Callers hold applyMu.
func (b *Backend) invalidateFlowCaches() error {
	tag := b.activeTag + 2
	if err := b.objs.FwActive.Update(uint32(0), tag, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("invalidate flow caches: %w", err)
	}
	b.mu.Lock()
	b.activeTag = tag
	b.mu.Unlock()
	return nil
}

// graceFallback is how long waitReaders sleeps when the kernel cannot wait
// for it. XDP programs run inside one NAPI poll (or one test run), which is
// microseconds; this is orders of magnitude more.
const graceFallback = 50 * time.Millisecond

// waitReaders returns once no program run that started before the call is
// still running. XDP runs inside an RCU read-side section, and updating a
// map-in-map element makes the kernel synchronize_rcu() before the syscall
// returns (so that userspace knows programs see the new inner map; the
// kernel's own selftests use it the same way), which is exactly "every
// earlier program run has finished", for about 0.1 ms here.
func (b *Backend) waitReaders() {
	if b.grace != nil && b.grace.Update(uint32(0), b.graceInner, ebpf.UpdateAny) == nil {
		return
	}
	time.Sleep(graceFallback)
}

func newGraceMaps() (outer, inner *ebpf.Map, err error) {
	spec := &ebpf.MapSpec{Name: "fw_grace_inner", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	inner, err = ebpf.NewMap(spec)
	if err != nil {
		return nil, nil, err
	}
	outer, err = ebpf.NewMap(&ebpf.MapSpec{Name: "fw_grace", Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1, InnerMap: spec})
	if err != nil {
		inner.Close()
		return nil, nil, err
	}
	return outer, inner, nil
}

// attach hooks the firewall into one interface as ch says, with a
// bpf_link: tc_fw at clsact ingress (tcx), or xdp_fw in driver mode. An
// auto choice of XDP whose native attach the driver refuses (an MTU above
// what it takes, say) falls back to TC, with the kernel's reason; a forced
// XDP attach fails instead. Options.ForceGenericXDP attaches XDP in generic
// mode (tests). Must run in the dataplane's namespace.
func (b *Backend) attach(objs *fwObjects, name string, ifindex int, ch capability.AttachChoice) (*attachment, *dataplane.Warning, error) {
	if b.opts.ForceGenericXDP && ch.Mode != dataplane.AttachTC {
		l, err := link.AttachXDP(link.XDPOptions{Program: objs.XdpFw, Interface: ifindex, Flags: link.XDPGenericMode})
		if err != nil {
			return nil, nil, fmt.Errorf("attach XDP (generic) to %s: %w", name, err)
		}
		return &attachment{ifindex: ifindex, link: l, generic: true, mode: dataplane.AttachedXDPGeneric, reason: "generic XDP forced by the backend's options"}, nil, nil
	}
	if ch.Mode == dataplane.AttachXDP {
		l, err := link.AttachXDP(link.XDPOptions{Program: objs.XdpFw, Interface: ifindex, Flags: link.XDPDriverMode})
		if err == nil {
			return &attachment{ifindex: ifindex, link: l, mode: dataplane.AttachedXDP, reason: ch.Reason}, nil, nil
		}
		if ch.Want == dataplane.AttachXDP {
			return nil, nil, fmt.Errorf("attach XDP (native, forced by config) to %s: %w", name, err)
		}
		ch.Reason = fmt.Sprintf("native XDP attach refused by the driver (%v): TC instead", err)
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: objs.TcFw, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return nil, nil, fmt.Errorf("attach TC (tcx ingress) to %s: %w", name, err)
	}
	return &attachment{ifindex: ifindex, link: l, mode: dataplane.AttachedTC, reason: ch.Reason}, nil, nil
}

// wanted reports whether a stays as it is under choice ch.
func (a *attachment) wanted(ch capability.AttachChoice) bool {
	switch ch.Mode {
	case dataplane.AttachTC:
		return a.mode == dataplane.AttachedTC
	case dataplane.AttachXDP:
		// An auto XDP choice that fell back to TC stays TC.
		return a.mode == dataplane.AttachedXDP || a.mode == dataplane.AttachedXDPGeneric ||
			(ch.Want != dataplane.AttachXDP && a.mode == dataplane.AttachedTC)
	}
	return false
}

// attachChoices probes the config's interfaces in the dataplane's namespace
// and decides how to attach to each (capability.ChooseAttach, the same
// decision the gate explains). A forced mode that is unsafe fails closed.
func (b *Backend) attachChoices(cfg *dataplane.Config) (map[string]capability.AttachChoice, error) {
	names := make([]string, len(cfg.Interfaces))
	for i, it := range cfg.Interfaces {
		names[i] = it.Name
	}
	caps, err := capability.ProbeInterfaces(b.opts.NetNS, names)
	if err != nil {
		return nil, err
	}
	tcx := capability.Probe(capability.ProbeTCX)
	out := make(map[string]capability.AttachChoice, len(names))
	var reasons []string
	for i, it := range cfg.Interfaces {
		ch := capability.ChooseAttach(it.Attach, caps[it.Name], tcx == nil || !errors.Is(tcx, dataplane.ErrNotSupported))
		if ch.Refused {
			reasons = append(reasons, fmt.Sprintf("interfaces[%d].attach: %s", i, ch))
		}
		out[it.Name] = ch
	}
	if len(reasons) > 0 {
		return nil, &dataplane.NotSupportedError{What: "attach the eBPF dataplane", Reasons: reasons}
	}
	return out, nil
}

// writeSlot writes everything the datapath reads for one slot. The slot is
// inactive, so partial writes are invisible.
func writeSlot(objs *fwObjects, slot uint32, p *plan, ifindex map[string]int, choices map[string]capability.AttachChoice) error {
	if err := objs.FwSettingsMap.Update(slot, p.settings, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	// Rules first, then the pair index that points at them.
	if n := len(p.rules); n > 0 {
		keys := make([]uint32, n)
		for i := range keys {
			keys[i] = slot*maxRules + uint32(i)
		}
		if err := batchUpdate(objs.FwRules, keys, p.rules); err != nil {
			return fmt.Errorf("write rules: %w", err)
		}
	}
	keys := make([]uint32, maxZones*maxZones)
	vals := make([]fwFwPair, maxZones*maxZones)
	for i := range keys {
		keys[i] = slot*maxZones*maxZones + uint32(i)
		vals[i] = p.pairs[uint32(i)]
	}
	if err := batchUpdate(objs.FwPairs, keys, vals); err != nil {
		return fmt.Errorf("write zone pairs: %w", err)
	}
	if err := writeNAT(objs, slot, &p.nat); err != nil {
		return err
	}

	want := map[fwFwIfKey]fwFwIfVal{}
	for _, it := range p.ifaces {
		v := fwFwIfVal{Zone: it.zone}
		if choices[it.name].XDPTx {
			v.Flags |= ifXDPTx
		}
		want[fwFwIfKey{Ifindex: uint32(ifindex[it.name]), Slot: slot}] = v
	}
	var k fwFwIfKey
	var v fwFwIfVal
	var stale []fwFwIfKey
	iter := objs.FwIfZone.Iterate()
	for iter.Next(&k, &v) {
		if _, ok := want[k]; k.Slot == slot && !ok {
			stale = append(stale, k)
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("read interface zones: %w", err)
	}
	for _, k := range stale {
		if err := objs.FwIfZone.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete stale interface zone: %w", err)
		}
	}
	for k, z := range want {
		if err := objs.FwIfZone.Update(k, z, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write interface zone: %w", err)
		}
	}
	return nil
}

// batchUpdate writes keys/values with one BPF_MAP_UPDATE_BATCH where the
// kernel has it, else one update per element.
func batchUpdate[K, V any](m *ebpf.Map, keys []K, vals []V) error {
	_, err := m.BatchUpdate(keys, vals, nil)
	if err == nil {
		return nil
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	for i := range keys {
		if err := m.Update(keys[i], vals[i], ebpf.UpdateAny); err != nil {
			return err
		}
	}
	return nil
}

func (b *Backend) closeGrace() {
	if b.grace != nil {
		b.grace.Close()
		b.graceInner.Close()
		b.grace, b.graceInner = nil, nil
	}
}

func (b *Backend) isClosed() bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.closed
}

// Close detaches every program and closes every map; with Options.PinDir
// it also removes every pin and the directory. It is idempotent and safe on
// nil.
func (b *Backend) Close() error {
	return b.shutdown(false)
}

// Release ends this process's hold on a pinned dataplane
// (dataplane.Releaser): every handle is closed and every pin stays, so the
// kernel goes on enforcing the last applied config with its sessions, and
// a later New with the same Options.PinDir adopts it (an upgrade). Without
// PinDir there is nothing to leave running and Release is Close. The
// backend is closed afterwards.
func (b *Backend) Release() error {
	return b.shutdown(b != nil && b.opts.PinDir != "")
}

var _ dataplane.Releaser = (*Backend)(nil)

func (b *Backend) shutdown(keepPins bool) error {
	if b == nil {
		return nil
	}
	// Before applyMu: the masquerade watcher may be in an Apply.
	b.stopMasqWatch()
	b.applyMu.Lock()
	defer b.applyMu.Unlock()
	if b.mir != nil {
		b.mir.stopWatch()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	var errs []error
	if b.opts.PinDir != "" && !keepPins && (b.meta != nil || b.objs != nil) {
		if err := removePins(b.opts.PinDir); err != nil {
			errs = append(errs, fmt.Errorf("remove pins: %w", err))
		}
	}
	for name, a := range b.attached {
		if err := a.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", name, err))
		}
	}
	b.attached = nil
	if b.objs != nil {
		if err := b.objs.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close maps and programs: %w", err))
		}
		b.objs = nil
	}
	if b.meta != nil {
		b.meta.Close()
		b.meta = nil
	}
	b.closeGrace()
	if b.counter != nil {
		if err := b.counter.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close map counter: %w", err))
		}
	}
	if b.pinLock != nil {
		if !keepPins {
			// Nothing was ever applied: the directory is empty.
			_ = os.Remove(b.opts.PinDir)
		}
		errs = append(errs, b.pinLock.Unlock())
		b.pinLock = nil
	}
	return errors.Join(errs...)
}
