package ebpfbackend

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netnsutil"
)

// Limits of the mirroring maps (bpf/include/fw_common.h and bpf/xdp_fw.c).
const (
	maxMirrors     = 256       // FW_MAX_MIRRORS
	maxMirrorPairs = 256 * 4   // fw_mirror_pairs max_entries
	devmapValSize  = 8         // struct bpf_devmap_val: ifindex, program fd
	bcastEgressKey = uint32(0) // broadcast devmap: egress gets the clone
	bcastOutputKey = uint32(1) // and the output the original, restored
)

// mirrorRule is one resolved rule as the datapath runs it.
type mirrorRule struct {
	input, output string
	in, out       uint32
	rate          uint32
	index         uint32 // into fw_mirror_counts
	native        bool   // the input runs xdp_fw in driver mode (checked by programMirrors)
	tc            bool   // the input runs tc_fw: clones by bpf_clone_redirect, no stage
}

func (r mirrorRule) scope() string { return "mirror " + r.input + "->" + r.output }

// identity is what keeps a rule's counters across Applies: a changed rule
// starts from zero (and from a fresh sampling countdown).
type mirrorIdentity struct {
	in, out, rate uint32
}

// mirrors is the running mirroring state. Its mutex orders Apply's writes
// against the link watcher's, so a rule's up flag is never stale.
type mirrors struct {
	mu     sync.Mutex
	rules  []mirrorRule
	egress []uint32        // the interfaces the broadcast maps pair with outputs
	up     map[uint32]bool // output ifindex -> link usable
	pairs  map[fwFwPairKey]bool
	outs   map[uint32]bool

	stage    []uint32 // CPUs handing mirrored ingress to a stage (stage_linux.go)
	stageErr error    // why mirroring runs without a stage, while it runs

	stop chan struct{} // closes the link subscription
	done chan struct{}
}

// mirrorPlan resolves the rules of cfg: outputs that do not exist are
// skipped with a warning. Must run in the dataplane's namespace.
func mirrorPlan(cfg *dataplane.Config, ifindex map[string]int) ([]mirrorRule, []dataplane.Warning) {
	var rules []mirrorRule
	var warns []dataplane.Warning
	for i, r := range cfg.PortMirroring {
		ifi, err := net.InterfaceByName(r.Output)
		if err != nil {
			warns = append(warns, dataplane.Warning{
				Field:   fmt.Sprintf("port_mirroring[%d].output", i),
				Message: fmt.Sprintf("output interface %q not found in the dataplane's network namespace: rule skipped", r.Output),
			})
			continue
		}
		rate := uint32(r.Rate)
		if rate == 0 {
			rate = 1
		}
		rules = append(rules, mirrorRule{input: r.Input, output: r.Output, in: uint32(ifindex[r.Input]), out: uint32(ifi.Index), rate: rate})
	}
	return rules, warns
}

// mirrorReasons says why cfg's mirroring does not fit the maps.
func mirrorReasons(cfg *dataplane.Config, nIfaces int) []string {
	outs := map[string]bool{}
	for _, r := range cfg.PortMirroring {
		outs[r.Output] = true
	}
	var why []string
	// The rule count is one of Limits (internal/limits reports it).
	if n := nIfaces * len(outs); n > maxMirrorPairs {
		why = append(why, fmt.Sprintf("port_mirroring: %d interfaces x %d distinct outputs = %d broadcast maps, the eBPF datapath holds %d", nIfaces, len(outs), n, maxMirrorPairs))
	}
	return why
}

// xdpNative reports whether ifindex has an XDP program attached in driver
// mode. Runs in the dataplane's namespace.
func xdpNative(ifindex uint32) bool {
	l, err := netlink.LinkByIndex(int(ifindex))
	if err != nil {
		return false
	}
	x := l.Attrs().Xdp
	return x != nil && x.Attached && x.AttachMode == nl.XDP_ATTACHED_DRV
}

// linkUsable is the datapath's "output up": administratively up with a
// carrier. A veth whose peer is down has no carrier and drops what XDP
// sends it; a device that is not up is skipped by the broadcast silently.
func linkUsable(l netlink.Link) bool {
	a := l.Attrs()
	return a.Flags&net.FlagUp != 0 && a.RawFlags&unix.IFF_LOWER_UP != 0
}

// applyMirrors makes rules the running mirroring. Apply calls it after
// everything else of the new config is written and before the policy
// flip, so a failure here leaves the running dataplane as it was: the
// previous rules are written back (their counters untouched: new rules
// never take the counter index of a running one while indexes remain).
// The returned undo does the same if the flip itself fails.
//
// modes names how each managed ifindex is attached (dataplane.Attached*),
// new attachments of this Apply included.
func (b *Backend) applyMirrors(objs *fwObjects, rules []mirrorRule, egress []uint32, modes map[uint32]string) (undo func(), err error) {
	m := b.mir
	m.mu.Lock()
	defer m.mu.Unlock()
	prevRules, prevEgress := m.rules, m.egress
	restore := func() {
		// Best effort: the maps already held these entries a moment ago.
		_ = netnsutil.Do(b.opts.NetNS, func() error { return b.programMirrors(objs, m, prevRules, prevEgress) })
	}
	assignIndexes(m.rules, rules)
	for i := range rules {
		rules[i].tc = modes[rules[i].in] == dataplane.AttachedTC
	}
	err = netnsutil.Do(b.opts.NetNS, func() error {
		zero := make([]fwFwMirrorStats, ebpf.MustPossibleCPU())
		for _, r := range rules {
			if !hasIndex(prevRules, r.index) {
				if err := objs.FwMirrorCounts.Update(r.index, zero, ebpf.UpdateAny); err != nil {
					return fmt.Errorf("reset mirror counters: %w", err)
				}
			}
		}
		return b.programMirrors(objs, m, rules, egress)
	})
	if err == nil && len(rules) > 0 && m.stop == nil {
		if werr := b.watchLinks(m); werr != nil {
			err = fmt.Errorf("watch mirror output links: %w", werr)
		}
	}
	if err != nil {
		restore()
		return nil, fmt.Errorf("program port mirroring: %w", err)
	}
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		restore()
	}, nil
}

// mirrorFault, set by tests, fails programMirrors before the rules are
// written (a kernel refusing a map update).
var mirrorFault atomic.Pointer[func() error]

// assignIndexes gives every rule its counter index: an unchanged rule
// (same input, output and rate) keeps its own, so its counters go on; a new
// one takes a free index, preferring those no running rule holds, so a
// failed Apply never zeroes a running rule's counters.
func assignIndexes(running, rules []mirrorRule) {
	old := map[mirrorIdentity]uint32{}
	held := map[uint32]bool{}
	for _, r := range running {
		old[mirrorIdentity{r.in, r.out, r.rate}] = r.index
		held[r.index] = true
	}
	used := map[uint32]bool{}
	pending := []int{}
	for i := range rules {
		if idx, ok := old[mirrorIdentity{rules[i].in, rules[i].out, rules[i].rate}]; ok {
			rules[i].index = idx
			used[idx] = true
		} else {
			pending = append(pending, i)
		}
	}
	for _, avoidHeld := range []bool{true, false} {
		next := uint32(0)
		for k := 0; k < len(pending); {
			i := pending[k]
			for next < maxMirrors && (used[next] || (avoidHeld && held[next])) {
				next++
			}
			if next >= maxMirrors {
				break
			}
			rules[i].index = next
			used[next] = true
			pending = append(pending[:k], pending[k+1:]...)
		}
	}
}

func hasIndex(rules []mirrorRule, idx uint32) bool {
	for _, r := range rules {
		if r.index == idx {
			return true
		}
	}
	return false
}

// programMirrors writes rules (indexes assigned) into the maps. It runs in
// the dataplane's namespace (devmaps resolve ifindexes there) with m.mu
// held.
func (b *Backend) programMirrors(objs *fwObjects, m *mirrors, rules []mirrorRule, egress []uint32) error {
	// Link state of every output, read now; the watcher keeps it current.
	for _, r := range rules {
		if _, ok := m.up[r.out]; ok {
			continue
		}
		l, err := netlink.LinkByIndex(int(r.out))
		m.up[r.out] = err == nil && linkUsable(l)
	}

	// Mirroring needs the input in driver mode, and the stage exists while
	// a rule uses it: one sampling densely (stageMaxRate). A stage
	// that cannot be made (the kernel refuses a cpumap queue) leaves clones
	// to the receiving CPU, as before the stage existed; Apply says why,
	// and the next Apply tries again.
	wantStage := false
	for i := range rules {
		if rules[i].tc {
			// tc_fw clones the skb as received: no metadata, no stage.
			continue
		}
		if rules[i].native = xdpNative(rules[i].in); !rules[i].native {
			// Measured: the clone never arrives. A generic redirect
			// hands the devmap program an skb without its metadata, so
			// xdp_fw_mirror cannot restore the frame and drops it.
			return fmt.Errorf("mirror input %s runs XDP in generic (skb) mode, where a clone cannot be restored to the frame as received (generic redirects carry no XDP metadata): %w", rules[i].input, dataplane.ErrNotSupported)
		}
		wantStage = wantStage || rules[i].rate <= stageMaxRate
	}
	if wantStage && !b.opts.MirrorInline {
		if m.stage == nil {
			m.stage, m.stageErr = setupStage(objs, b.waitReaders)
		}
	} else {
		teardownStage(objs, m.stage)
		m.stage, m.stageErr = nil, nil
	}

	// Broadcast maps and drop-path outputs first: a rule must never name a
	// pair that does not exist yet (the packet would then go out without
	// its clone, counted as not_other).
	wantPairs := map[fwFwPairKey]bool{}
	wantOuts := map[uint32]bool{}
	for _, r := range rules {
		wantOuts[r.out] = true
		for _, e := range egress {
			wantPairs[fwFwPairKey{Egress: e, Output: r.out}] = true
		}
	}
	for k := range wantPairs {
		if m.pairs[k] {
			continue
		}
		if err := b.addPair(objs, k); err != nil {
			return err
		}
		m.pairs[k] = true
	}
	for o := range wantOuts {
		if m.outs[o] {
			continue
		}
		if err := objs.FwMirrorOut.Update(o, o, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("add mirror output %d to the devmap: %w", o, err)
		}
		m.outs[o] = true
	}

	if f := mirrorFault.Load(); f != nil {
		if err := (*f)(); err != nil {
			return err
		}
	}
	wantRules := map[uint32]bool{}
	for _, r := range rules {
		wantRules[r.in] = true
		if err := objs.FwMirrorRules.Update(r.in, m.cfgOf(r, m.up[r.out]), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write mirror rule: %w", err)
		}
	}
	for _, r := range m.rules {
		if !wantRules[r.in] {
			if err := objs.FwMirrorRules.Delete(r.in); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete mirror rule: %w", err)
			}
		}
	}
	if err := objs.FwMirrorOn.Update(uint32(0), uint32(len(rules)), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("switch mirroring: %w", err)
	}
	m.rules, m.egress = rules, egress

	// Retire what no rule names any more. A packet that read a deleted
	// rule's output a moment ago finds no pair and goes out unmirrored.
	for k := range m.pairs {
		if !wantPairs[k] {
			_ = objs.FwMirrorPairs.Delete(k)
			delete(m.pairs, k)
		}
	}
	for o := range m.outs {
		if !wantOuts[o] {
			_ = objs.FwMirrorOut.Delete(o)
			delete(m.outs, o)
		}
	}
	return nil
}

// addPair creates the broadcast devmap for one (egress, output).
func (b *Backend) addPair(objs *fwObjects, k fwFwPairKey) error {
	inner, err := ebpf.NewMap(&ebpf.MapSpec{Name: "fw_bcast", Type: ebpf.DevMap, KeySize: 4, ValueSize: devmapValSize, MaxEntries: 2})
	if err != nil {
		return fmt.Errorf("create broadcast devmap: %w", err)
	}
	// The outer map holds its own reference.
	defer inner.Close()
	type devmapVal struct {
		Ifindex uint32
		ProgFD  int32 // 0: no program
	}
	if err := inner.Update(bcastEgressKey, devmapVal{Ifindex: k.Egress}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("add egress %d to broadcast devmap: %w", k.Egress, err)
	}
	if err := inner.Update(bcastOutputKey, devmapVal{Ifindex: k.Output, ProgFD: int32(objs.XdpFwMirror.FD())}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("add mirror output %d to broadcast devmap: %w", k.Output, err)
	}
	if err := objs.FwMirrorPairs.Update(k, inner, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("add broadcast devmap: %w", err)
	}
	return nil
}

// watchLinks subscribes to link changes in the dataplane's namespace and
// keeps every rule's up flag equal to its output's state. m.mu is held.
func (b *Backend) watchLinks(m *mirrors) error {
	ch := make(chan netlink.LinkUpdate, 64)
	stop := make(chan struct{})
	err := netnsutil.Do(b.opts.NetNS, func() error {
		// The socket is created here, so it stays in this namespace.
		return netlink.LinkSubscribeWithOptions(ch, stop, netlink.LinkSubscribeOptions{ListExisting: true})
	})
	if err != nil {
		return err
	}
	m.stop, m.done = stop, make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case u, ok := <-ch:
				if !ok {
					return
				}
				up := u.Header.Type != unix.RTM_DELLINK && linkUsable(u.Link)
				b.setLinkUp(m, uint32(u.Attrs().Index), up)
			}
		}
	}(m.done)
	return nil
}

func (b *Backend) setLinkUp(m *mirrors, idx uint32, up bool) {
	b.mu.RLock()
	objs := b.objs
	b.mu.RUnlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if was, ok := m.up[idx]; ok && was == up {
		return
	}
	m.up[idx] = up
	if objs == nil {
		return
	}
	for _, r := range m.rules {
		if r.out != idx {
			continue
		}
		// Best effort: the map is sized for every rule, so only a closed
		// backend fails here.
		_ = objs.FwMirrorRules.Update(r.in, m.cfgOf(r, up), ebpf.UpdateExist)
	}
}

// cfgOf is rule r as the datapath reads it. m.mu is held.
func (m *mirrors) cfgOf(r mirrorRule, up bool) fwFwMirrorCfg {
	v := fwFwMirrorCfg{OutIfindex: r.out, Rate: r.rate, Index: r.index}
	if up {
		v.Up = 1
	}
	if len(m.stage) > 0 && r.rate <= stageMaxRate && !r.tc {
		v.Staged = 1
	}
	return v
}

// stageWarning says why mirroring runs without a stage, if it does.
func (m *mirrors) stageWarning() []dataplane.Warning {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stageErr == nil {
		return nil
	}
	return []dataplane.Warning{{Field: "port_mirroring", Message: fmt.Sprintf("clones are made on the receiving CPU (no mirror stage: %v)", m.stageErr)}}
}

// stopWatch ends the link subscription; the caller does not hold m.mu.
func (m *mirrors) stopWatch() {
	m.mu.Lock()
	stop, done := m.stop, m.done
	m.stop, m.done = nil, nil
	m.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
}

// mirrorCounters sums every rule's per-CPU counters.
func (b *Backend) mirrorCounters(objs *fwObjects) ([]dataplane.Counter, error) {
	m := b.mir
	m.mu.Lock()
	rules := append([]mirrorRule(nil), m.rules...)
	up := map[uint32]bool{}
	for k, v := range m.up {
		up[k] = v
	}
	m.mu.Unlock()
	var out []dataplane.Counter
	for _, r := range rules {
		var per []fwFwMirrorStats
		if err := objs.FwMirrorCounts.Lookup(r.index, &per); err != nil {
			return nil, fmt.Errorf("read mirror counters: %w", err)
		}
		var s fwFwMirrorStats
		for _, c := range per {
			s.Seen += c.Seen
			s.Mirrored += c.Mirrored
			s.MirroredBytes += c.MirroredBytes
			s.NotOutputDown += c.NotOutputDown
			s.NotPassed += c.NotPassed
			s.NotShort += c.NotShort
			s.NotOther += c.NotOther
			s.NotBacklog += c.NotBacklog
		}
		var u uint64
		if up[r.out] {
			u = 1
		}
		sc := r.scope()
		out = append(out,
			dataplane.Counter{Name: "mirror_input_packets", Scope: sc, Value: s.Seen},
			dataplane.Counter{Name: "mirrored_packets", Scope: sc, Value: s.Mirrored},
			dataplane.Counter{Name: "mirrored_bytes", Scope: sc, Value: s.MirroredBytes},
			dataplane.Counter{Name: "mirror_dropped_output_down", Scope: sc, Value: s.NotOutputDown},
			dataplane.Counter{Name: "mirror_dropped_passed_to_kernel", Scope: sc, Value: s.NotPassed},
			dataplane.Counter{Name: "mirror_dropped_short", Scope: sc, Value: s.NotShort},
			dataplane.Counter{Name: "mirror_dropped_other", Scope: sc, Value: s.NotOther},
			dataplane.Counter{Name: "mirror_dropped_primary_backlog", Scope: sc, Value: s.NotBacklog},
			dataplane.Counter{Name: "mirror_output_up", Scope: sc, Value: u},
		)
	}
	if len(rules) > 0 {
		sc, err := b.stageCounters(objs)
		if err != nil {
			return nil, err
		}
		out = append(out, sc...)
	}
	// Clones the output's driver refused after the program returned (TX
	// ring full): per device, as the driver counts them.
	seen := map[string]bool{}
	for _, r := range rules {
		if seen[r.output] {
			continue
		}
		seen[r.output] = true
		var n uint64
		var ok bool
		err := netnsutil.Do(b.opts.NetNS, func() error {
			var err error
			n, ok, err = xdpXmitErrors(r.output)
			return err
		})
		if err == nil && ok {
			out = append(out, dataplane.Counter{Name: "xdp_xmit_errors", Scope: "mirror_output " + r.output, Value: n})
		}
	}
	return out, nil
}
