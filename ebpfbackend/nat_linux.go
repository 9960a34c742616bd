package ebpfbackend

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netnsutil"
)

// NAT limits, mirrored from bpf/include/fw_common.h.
const (
	maxNATRules     = 64  // FW_MAX_NAT_RULES, per slot and type
	maxNATPools     = 64  // FW_MAX_NAT_POOLS, per slot
	maxPoolAddrs    = 256 // FW_MAX_POOL_ADDRS
	natAddrLocal    = 1   // fw_nat_addrs: the firewall's own address
	natAddrElsewise = 2   // fw_nat_addrs: a pool address the host does not hold
)

// natPlan is what one slot holds of NAT: the rules (one entry per source
// prefix), the pools and their addresses, and the report rows. The static
// part comes from the config (buildNAT); masquerade pools need the
// interfaces' addresses and are added in the dataplane's namespace
// (resolve).
type natPlan struct {
	snat, dnat []fwFwNatRule
	pools      []fwFwNatPool
	poolAddrs  [][]uint32
	// masq maps {egress ifindex, rule ordinal << 1} to a pool index; the
	// slot bit is added when the slot is written.
	masq  map[fwFwIfKey]uint32
	masqs []masqRule
	// addrs is every pool address, with natAddrLocal or natAddrElsewise.
	addrs map[uint32]uint32
	rows  []natRow
	// names is cfg.NAT's scopes, for sessions (fw_nat_rule.rule - 1).
	names []string
}

// masqRule is a masquerading rule waiting for its interfaces' addresses.
type masqRule struct {
	ordinal uint32
	row     int
	field   string
	toZone  string
	ports   dataplane.PortRange
}

// natRow is one source-NAT rule's pool row: its addresses and ports per
// address.
type natRow struct {
	scope string
	ports uint64
	addrs []netip.Addr
}

// addrWord is an IPv4 address as the datapath holds it (network order
// bytes read as a little-endian word).
func addrWord(a netip.Addr) uint32 {
	b := a.As4()
	return binary.LittleEndian.Uint32(b[:])
}

func wordAddr(w uint32) netip.Addr {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], w)
	return netip.AddrFrom4(b)
}

// buildNAT compiles cfg.NAT (validated, IPv4 only: IPv6 is refused as
// FeatureNATv6 before) for zone ids zoneID. Limits are checked by
// limits.Check; what is over them here is a reason too.
func buildNAT(cfg *dataplane.Config, zoneID map[string]uint32) (natPlan, []string) {
	np := natPlan{masq: map[fwFwIfKey]uint32{}, addrs: map[uint32]uint32{}}
	var reasons []string
	var ordinal uint32
	for i, r := range cfg.NAT {
		np.names = append(np.names, dataplane.NATScope(cfg, i))
		base := fwFwNatRule{Proto: r.Protocol.Number(), Rule: uint8(i + 1)}
		srcs := []netip.Prefix{{}} // any source
		if len(r.Sources) > 0 {
			srcs = srcs[:0]
			for _, s := range r.Sources {
				p, err := dataplane.ParsePrefix(s)
				if err != nil || !p.Addr().Is4() {
					continue // validated; IPv6 refused as FeatureNATv6
				}
				srcs = append(srcs, p.Masked())
			}
		}
		switch r.Type {
		case dataplane.NATSource:
			ports := r.PortsOrDefault()
			base.FromZone, base.ToZone = uint8(zoneID[r.FromZone]), uint8(zoneID[r.ToZone])
			row := natRow{scope: dataplane.NATScope(cfg, i), ports: uint64(ports.Last) - uint64(ports.First) + 1}
			if r.Masquerade {
				base.Masq, base.Pool = 1, ordinal
				np.masqs = append(np.masqs, masqRule{ordinal: ordinal, row: len(np.rows), field: fmt.Sprintf("nat[%d].masquerade", i), toZone: r.ToZone, ports: ports})
			} else {
				var words []uint32
				for _, a := range dataplane.PoolAddresses(r.Pool) {
					if a.Is4() {
						words = append(words, addrWord(a))
						row.addrs = append(row.addrs, a)
					}
				}
				base.Pool = uint32(len(np.pools))
				np.pools = append(np.pools, fwFwNatPool{Naddr: uint32(len(words)), PortLo: ports.First, PortHi: ports.Last})
				np.poolAddrs = append(np.poolAddrs, words)
			}
			np.rows = append(np.rows, row)
			ordinal++
			for _, p := range srcs {
				e := base
				e.SrcAddr, e.SrcMask = natPrefix(p)
				np.snat = append(np.snat, e)
			}
		case dataplane.NATDestination:
			dst, _ := netip.ParseAddr(r.Destination)
			to, _ := netip.ParseAddr(r.TranslateTo)
			if !dst.Is4() || !to.Is4() {
				continue // refused as FeatureNATv6
			}
			if r.FromZone != "" {
				base.FromZone = uint8(zoneID[r.FromZone])
			}
			base.DstAddr, base.ToAddr = addrWord(dst), addrWord(to)
			base.PortLo, base.PortHi = 0, 65535
			if r.DestinationPorts != (dataplane.PortRange{}) {
				base.PortLo, base.PortHi = r.DestinationPorts.First, r.DestinationPorts.Last
			}
			base.ToPort = r.TranslatePort
			for _, p := range srcs {
				e := base
				e.SrcAddr, e.SrcMask = natPrefix(p)
				np.dnat = append(np.dnat, e)
			}
		}
	}
	if len(np.snat) > maxNATRules || len(np.dnat) > maxNATRules {
		reasons = append(reasons, fmt.Sprintf("nat: %d source and %d destination entries, the datapath holds at most %d of each", len(np.snat), len(np.dnat), maxNATRules))
	}
	return np, reasons
}

// natPrefix is a source prefix as a rule holds it (the zero prefix: any).
func natPrefix(p netip.Prefix) (addr, mask uint32) {
	if !p.IsValid() {
		return 0, 0
	}
	a, m := prefixWords(p)
	return a[0], m[0]
}

// resolve adds the masquerade pools (one per rule and interface of its
// to_zone that has an IPv4 address: the interface's primary address) and
// marks every pool address as the firewall's own or not. It runs in the
// dataplane's network namespace. An interface without an IPv4 address is
// a warning: flows masqueraded through it are dropped and counted
// (nat_pool_exhausted) until it has one, which the address watcher
// applies.
func (np *natPlan) resolve(cfg *dataplane.Config, ifindex map[string]int) ([]dataplane.Warning, error) {
	if len(np.masqs) == 0 && len(np.pools) == 0 {
		return nil, nil
	}
	local, primary, err := hostAddrs4()
	if err != nil {
		return nil, err
	}
	var warns []dataplane.Warning
	for _, m := range np.masqs {
		for _, it := range cfg.Interfaces {
			if it.Zone != m.toZone {
				continue
			}
			idx := ifindex[it.Name]
			a, ok := primary[idx]
			if !ok {
				warns = append(warns, dataplane.Warning{Field: m.field, Message: fmt.Sprintf(
					"interface %s has no IPv4 address: flows masqueraded through it are dropped (%s) until it has one", it.Name, dataplane.CounterNATPoolExhausted)})
				continue
			}
			if len(np.pools) >= maxNATPools {
				return warns, fmt.Errorf("%s: more than %d source-NAT pools (one per masquerading interface)", m.field, maxNATPools)
			}
			np.masq[fwFwIfKey{Ifindex: uint32(idx), Slot: m.ordinal << 1}] = uint32(len(np.pools))
			np.pools = append(np.pools, fwFwNatPool{Naddr: 1, PortLo: m.ports.First, PortHi: m.ports.Last})
			np.poolAddrs = append(np.poolAddrs, []uint32{addrWord(a)})
			row := &np.rows[m.row]
			if !slices.Contains(row.addrs, a) {
				row.addrs = append(row.addrs, a)
			}
		}
	}
	for _, words := range np.poolAddrs {
		for _, w := range words {
			np.addrs[w] = natAddrElsewise
			if local[wordAddr(w)] {
				np.addrs[w] = natAddrLocal
			}
		}
	}
	return warns, nil
}

// masqAddrs is the masquerade addresses resolve found, per ifindex: what
// the address watcher compares.
func (np *natPlan) masqAddrs() map[uint32]uint32 {
	out := map[uint32]uint32{}
	for k, pi := range np.masq {
		out[k.Ifindex] = np.poolAddrs[pi][0]
	}
	return out
}

// hostAddrs4 reads the namespace's IPv4 addresses: all of them, and each
// interface's primary one (the first address that is not secondary, as
// the kernel orders them: what `ip -4 addr` lists first). Masquerade
// translates to the primary address of the egress interface, as Linux's
// MASQUERADE does when the route names no preferred source.
func hostAddrs4() (all map[netip.Addr]bool, primary map[int]netip.Addr, err error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, nil, fmt.Errorf("list IPv4 addresses: %w", err)
	}
	all, primary = map[netip.Addr]bool{}, map[int]netip.Addr{}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		all[ip] = true
		if a.Flags&unix.IFA_F_SECONDARY != 0 {
			continue
		}
		if _, seen := primary[a.LinkIndex]; !seen {
			primary[a.LinkIndex] = ip
		}
	}
	return all, primary, nil
}

// writeNAT writes one (inactive) slot's NAT: rules, pools, pool addresses,
// masquerade pools and pool addresses, removing the slot's stale entries.
// Per-address slot counters are created for every pool address, so the
// datapath's first allocation finds its entry.
func writeNAT(objs *fwObjects, slot uint32, np *natPlan) error {
	if n := len(np.snat); n > 0 {
		if err := batchUpdate(objs.FwSnatRules, slotKeys(slot*maxNATRules, n), np.snat); err != nil {
			return fmt.Errorf("write source-NAT rules: %w", err)
		}
	}
	if n := len(np.dnat); n > 0 {
		if err := batchUpdate(objs.FwDnatRules, slotKeys(slot*maxNATRules, n), np.dnat); err != nil {
			return fmt.Errorf("write destination-NAT rules: %w", err)
		}
	}
	if n := len(np.pools); n > 0 {
		if err := batchUpdate(objs.FwNatPools, slotKeys(slot*maxNATPools, n), np.pools); err != nil {
			return fmt.Errorf("write NAT pools: %w", err)
		}
	}
	for pi, words := range np.poolAddrs {
		if len(words) == 0 {
			continue
		}
		first := (slot*maxNATPools + uint32(pi)) * maxPoolAddrs
		if err := batchUpdate(objs.FwNatPoolAddrs, slotKeys(first, len(words)), words); err != nil {
			return fmt.Errorf("write NAT pool addresses: %w", err)
		}
	}
	masq := make(map[fwFwIfKey]uint32, len(np.masq))
	for k, v := range np.masq {
		k.Slot |= slot
		masq[k] = v
	}
	if err := syncSlot(objs.FwNatMasq, slot, masq); err != nil {
		return fmt.Errorf("write masquerade pools: %w", err)
	}
	addrs := make(map[fwFwIfKey]uint32, len(np.addrs))
	for a, kind := range np.addrs {
		addrs[fwFwIfKey{Ifindex: a, Slot: slot}] = kind
	}
	if err := syncSlot(objs.FwNatAddrs, slot, addrs); err != nil {
		return fmt.Errorf("write NAT addresses: %w", err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	zero := make([]fwFwNatAddrStats, cpus)
	for a := range np.addrs {
		if err := objs.FwNatAddrCounts.Update(a, zero, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return fmt.Errorf("create NAT address counters: %w", err)
		}
	}
	return nil
}

func slotKeys(first uint32, n int) []uint32 {
	keys := make([]uint32, n)
	for i := range keys {
		keys[i] = first + uint32(i)
	}
	return keys
}

// syncSlot makes the entries of m whose key's slot bit is slot exactly
// want (keys of the other slot are left alone).
func syncSlot(m *ebpf.Map, slot uint32, want map[fwFwIfKey]uint32) error {
	var k fwFwIfKey
	var v uint32
	var stale []fwFwIfKey
	it := m.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; k.Slot&1 == slot && !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	for k, v := range want {
		if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
			return err
		}
	}
	return nil
}

// pruneNATCounters removes the slot counters of addresses the running
// config's pools do not have and that hold no slot (a held slot keeps its address
// counted until its session ends).
func pruneNATCounters(objs *fwObjects, keep map[uint32]uint32) error {
	var a uint32
	var per []fwFwNatAddrStats
	var gone []uint32
	it := objs.FwNatAddrCounts.Iterate()
	for it.Next(&a, &per) {
		if _, ok := keep[a]; ok {
			continue
		}
		if held(per) == 0 {
			gone = append(gone, a)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, a := range gone {
		if err := objs.FwNatAddrCounts.Delete(a); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// held sums an address's per-CPU counters: slots taken less slots given
// back (a slot may be taken on one CPU and given back on another).
func held(per []fwFwNatAddrStats) uint64 {
	var alloc, free uint64
	for _, s := range per {
		alloc += s.Alloc
		free += s.Free
	}
	return alloc - free
}

// natRows reports one nat_pool row per source-NAT rule of the running
// config (capacity addresses x ports, used the slots its addresses hold)
// and a detail row per address. Counted from the per-address counters the
// datapath keeps as it takes and gives back slots (Method counter), so a
// report costs a lookup per address whatever the pool's fill. An address
// that two rules share is one set of slots: each rule's row counts it.
func natRows(objs *fwObjects, np *natPlan) []dataplane.Resource {
	var rows []dataplane.Resource
	for _, r := range np.rows {
		start := time.Now()
		row := dataplane.Resource{Name: dataplane.ResourceNATPool, Kind: dataplane.KindPool, Scope: r.scope,
			Capacity: uint64(len(r.addrs)) * r.ports, Method: dataplane.MethodCounter}
		var details []dataplane.Resource
		var used uint64
		var errs []string
		for _, a := range r.addrs {
			d := dataplane.Resource{Name: dataplane.ResourceNATPool, Kind: dataplane.KindPool, Scope: r.scope + "/" + a.String(),
				Detail: true, Capacity: r.ports, Method: dataplane.MethodCounter}
			var per []fwFwNatAddrStats
			if err := objs.FwNatAddrCounts.Lookup(addrWord(a), &per); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				d.Error = fmt.Sprintf("read slot counters: %v", err)
				errs = append(errs, a.String()+": "+err.Error())
			} else {
				h := held(per)
				d.Used = dataplane.Uint64(h)
				used += h
			}
			details = append(details, d)
		}
		if len(errs) > 0 {
			row.Error = strings.Join(errs, "; ")
		} else {
			row.Used = dataplane.Uint64(used)
		}
		row.Cost = time.Since(start)
		rows = append(rows, row)
		rows = append(rows, details...)
	}
	return rows
}

// sessionNAT fills a listed session's translated tuple from its value, and
// names the rules when the session was made under the running NAT rules.
func (b *Backend) sessionNAT(s *dataplane.Session, e *sessionEntry) {
	n := e.val.Nat
	if n.Saddr == 0 && n.Daddr == 0 {
		return
	}
	src, dst := e.initiator()
	ts, td := src, dst
	if n.Saddr != 0 {
		ts = netip.AddrPortFrom(wordAddr(n.Saddr), ntohs(n.Sport))
	}
	if n.Daddr != 0 {
		td = netip.AddrPortFrom(wordAddr(n.Daddr), ntohs(n.Dport))
	}
	if e.proto == unix.IPPROTO_ICMP {
		// The echo id is the session's "port" on both sides.
		td = netip.AddrPortFrom(td.Addr(), ts.Port())
	}
	s.TranslatedSource, s.TranslatedDestination = ts.String(), td.String()
	if uint32(n.Epoch) != b.nat.epoch&0xffff {
		return // made under rules that changed since: their names are gone
	}
	var names []string
	for _, r := range []uint8{n.DnatRule, n.SnatRule} {
		if r > 0 && int(r) <= len(b.nat.plan.names) {
			names = append(names, b.nat.plan.names[r-1])
		}
	}
	s.NATRule = strings.Join(names, ",")
}

// natRunning is what the backend keeps of the running NAT config.
type natRunning struct {
	plan  natPlan
	epoch uint32
	rules []dataplane.NATRule
}

// nextEpoch is the NAT epoch for cfg: the same while its NAT rules are.
func (r *natRunning) nextEpoch(cfg *dataplane.Config) uint32 {
	if r.rules != nil && slices.EqualFunc(r.rules, cfg.NAT, natRuleEqual) {
		return r.epoch
	}
	return r.epoch + 1
}

func natRuleEqual(a, b dataplane.NATRule) bool {
	return a.Name == b.Name && a.Type == b.Type && a.FromZone == b.FromZone && a.ToZone == b.ToZone &&
		slices.Equal(a.Sources, b.Sources) && a.Protocol == b.Protocol && a.Masquerade == b.Masquerade &&
		slices.Equal(a.Pool, b.Pool) && a.Ports == b.Ports && a.Destination == b.Destination &&
		a.DestinationPorts == b.DestinationPorts && a.TranslateTo == b.TranslateTo && a.TranslatePort == b.TranslatePort
}

// masqWatch is the masquerade address watcher's handles.
type masqWatch struct {
	stop chan struct{}
	done chan struct{}
}

// startMasqWatch subscribes to address changes in the dataplane's
// namespace, once, for a config that masquerades. applyMu is held.
func (b *Backend) startMasqWatch() error {
	if b.masqWatch != nil {
		return nil
	}
	ch := make(chan netlink.AddrUpdate, 64)
	stop := make(chan struct{})
	err := netnsutil.Do(b.opts.NetNS, func() error {
		// The socket is created here, so it stays in this namespace.
		return netlink.AddrSubscribeWithOptions(ch, stop, netlink.AddrSubscribeOptions{})
	})
	if err != nil {
		return fmt.Errorf("follow interface addresses for masquerade: %w", err)
	}
	w := &masqWatch{stop: stop, done: make(chan struct{})}
	b.masqWatch = w
	go func() {
		defer close(w.done)
		b.watchMasquerade(stop, ch)
	}()
	return nil
}

// stopMasqWatch ends the watcher and waits for it. The caller must not
// hold applyMu (the watcher may be applying).
func (b *Backend) stopMasqWatch() {
	b.mu.Lock()
	w := b.masqWatch
	b.masqWatch = nil
	b.mu.Unlock()
	if w != nil {
		close(w.stop)
		<-w.done
	}
}

// watchMasquerade follows the addresses of masquerading interfaces: when
// an address of the namespace changes and a masquerading rule's resolved
// address is no longer its interface's primary one, the running config is
// applied again (a normal Apply: new flows take the new address; sessions
// translated to the old one keep it until they end: as with Linux's
// MASQUERADE, their replies no longer arrive). Updates are counted
// (nat_masquerade_updates, and _errors when the Apply failed).
func (b *Backend) watchMasquerade(stop <-chan struct{}, ch <-chan netlink.AddrUpdate) {
	for {
		select {
		case <-stop:
			return
		case _, ok := <-ch:
			if !ok {
				return
			}
		}
		// Coalesce a burst (an address replaced is a delete and an add).
		timer := time.NewTimer(50 * time.Millisecond)
	drain:
		for {
			select {
			case <-stop:
				timer.Stop()
				return
			case _, ok := <-ch:
				if !ok {
					timer.Stop()
					return
				}
			case <-timer.C:
				break drain
			}
		}
		b.reapplyIfMasqueradeMoved()
	}
}

// reapplyIfMasqueradeMoved applies the running config again when an
// interface a rule masquerades through has another primary IPv4 address
// than the one its pool holds (or gained or lost one).
func (b *Backend) reapplyIfMasqueradeMoved() {
	b.mu.RLock()
	cfg, cur := b.cfg, b.nat.plan.masqAddrs()
	masqs := b.nat.plan.masqs
	idx := map[string]int{}
	for name, a := range b.attached {
		idx[name] = a.ifindex
	}
	b.mu.RUnlock()
	if cfg == nil || len(masqs) == 0 {
		return
	}
	var primary map[int]netip.Addr
	var all map[netip.Addr]bool
	err := netnsutil.Do(b.opts.NetNS, func() (err error) {
		all, primary, err = hostAddrs4()
		return err
	})
	if err != nil {
		b.masqUpdateErrors.Add(1)
		return
	}
	moved := false
	for _, m := range masqs {
		for _, it := range cfg.Interfaces {
			if it.Zone != m.toZone {
				continue
			}
			i := idx[it.Name]
			a, has := primary[i]
			w, had := cur[uint32(i)]
			if has != had || (has && addrWord(a) != w) {
				moved = true
			}
		}
	}
	if !moved {
		return
	}
	b.masqUpdates.Add(1)
	if _, err := b.Apply(context.Background(), cfg); err != nil && !errors.Is(err, dataplane.ErrClosed) {
		b.masqUpdateErrors.Add(1)
		return
	}
	// Sessions masqueraded to an address the host no longer has end, as
	// with Linux's MASQUERADE: their replies cannot arrive, and their
	// slots would otherwise wait out the established timeout.
	gone := map[uint32]bool{}
	for _, w := range cur {
		if !all[wordAddr(w)] {
			gone[w] = true
		}
	}
	if len(gone) > 0 {
		n, err := b.endSessionsTranslatedTo(gone)
		b.masqEnded.Add(uint64(n))
		if err != nil && !errors.Is(err, dataplane.ErrClosed) {
			b.masqUpdateErrors.Add(1)
		}
	}
}

// endSessionsTranslatedTo ends the source-translated sessions whose
// translated source address is in gone (network-order words), and
// invalidates the flow caches when it ended any.
func (b *Backend) endSessionsTranslatedTo(gone map[uint32]bool) (int, error) {
	b.applyMu.Lock()
	defer b.applyMu.Unlock()
	if b.isClosed() {
		return 0, dataplane.ErrClosed
	}
	if b.objs == nil {
		return 0, nil
	}
	n, err := walkSessions(context.Background(), b.objs, func(e *sessionEntry) (bool, bool) {
		return e.val.Nat.SnatRule != 0 && gone[e.val.Nat.Saddr], false
	})
	if n > 0 {
		if ierr := b.invalidateFlowCaches(); err == nil {
			err = ierr
		}
	}
	return n, err
}
