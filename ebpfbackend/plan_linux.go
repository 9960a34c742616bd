package ebpfbackend

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
)

// Limits of the datapath, mirrored from bpf/include/fw_common.h (a test
// checks them against the loaded map sizes).
const (
	maxRulesPerPair = 256
	maxRules        = 4096
	maxZones        = 64 // zone ids 1..63
	maxIfaces       = 256
	numSlots        = 2
	flowCacheSlots  = 4096
	ifXDPTx         = 1    // FW_IF_XDP_TX
	setTCPPickup    = 1    // FW_SET_TCP_PICKUP
	recentPerCPU    = 2048 // FW_RECENT
)

// plan is a config translated into what one slot of the datapath holds. It
// is built before anything is touched, so every "cannot program this"
// answer comes before the first map write.
type plan struct {
	zoneID   map[string]uint32
	pairs    map[uint32]fwFwPair // key: from*maxZones + to
	rules    []fwFwRule
	settings fwFwSettings
	ifaces   []planIface
}

type planIface struct {
	name  string
	field string // interfaces[i].name, for errors
	zone  uint32
}

// buildPlan translates a validated config, with zone ids from zoneIDs
// (nextZoneIDs: ids stay the same across Applies, so sessions, which record
// their zones by id, keep meaning the same zones). Capacity problems come
// back as reasons for a *dataplane.NotSupportedError.
func buildPlan(cfg *dataplane.Config, zoneIDs map[string]uint32) (*plan, []string) {
	var reasons []string
	p := &plan{zoneID: make(map[string]uint32, len(cfg.Zones)), pairs: map[uint32]fwFwPair{}}
	if len(cfg.Interfaces) > maxIfaces {
		reasons = append(reasons, fmt.Sprintf("interfaces: %d interfaces, the eBPF backend supports at most %d", len(cfg.Interfaces), maxIfaces))
	}
	for _, z := range cfg.Zones {
		p.zoneID[z.Name] = zoneIDs[z.Name]
	}
	for i, it := range cfg.Interfaces {
		p.ifaces = append(p.ifaces, planIface{name: it.Name, field: fmt.Sprintf("interfaces[%d].name", i), zone: p.zoneID[it.Zone]})
	}

	// Rules are grouped by zone pair, keeping the config order inside each
	// pair: that order is the first-match order.
	var order []uint32
	byPair := map[uint32][]fwFwRule{}
	for _, pol := range cfg.Policies {
		k := p.zoneID[pol.FromZone]*maxZones + p.zoneID[pol.ToZone]
		if _, ok := byPair[k]; !ok {
			order = append(order, k)
		}
		byPair[k] = append(byPair[k], expandPolicy(pol)...)
	}
	for _, k := range order {
		rs := byPair[k]
		if len(rs) > maxRulesPerPair {
			reasons = append(reasons, fmt.Sprintf("policies: zone pair %s -> %s expands to %d rules (one per source x destination x port range), the eBPF backend evaluates at most %d per zone pair",
				p.zoneName(k/maxZones), p.zoneName(k%maxZones), len(rs), maxRulesPerPair))
		}
		p.pairs[k] = fwFwPair{Start: uint32(len(p.rules)), Count: uint32(len(rs))}
		p.rules = append(p.rules, rs...)
	}
	if len(p.rules) > maxRules {
		reasons = append(reasons, fmt.Sprintf("policies: %d expanded rules, the eBPF backend holds at most %d", len(p.rules), maxRules))
	}

	p.settings = settingsOf(cfg)
	return p, reasons
}

// timeoutSlots lists enum fw_timeout in order: the protocol and state each
// slot's timeout is for.
var timeoutSlots = [fwTimeoutSlots]struct {
	proto uint8
	state dataplane.SessionState
}{
	{6, dataplane.StateOpening}, {6, dataplane.StateEstablished}, {6, dataplane.StateClosing}, {6, dataplane.StateClosed},
	{17, dataplane.StateUnreplied}, {17, dataplane.StateReplied},
	{1, dataplane.StateUnreplied}, {1, dataplane.StateReplied},
	{0, dataplane.StateUnreplied}, {0, dataplane.StateReplied},
}

const fwTimeoutSlots = 10 // FW_TO_MAX

// settingsOf is the per-slot settings of cfg: timeouts per protocol and
// state, early aging, mid-stream pickup, the sweep period and table size.
func settingsOf(cfg *dataplane.Config) fwFwSettings {
	var st fwFwSettings
	for i, ts := range timeoutSlots {
		st.TimeoutNs[i] = uint64(cfg.Timeouts.ForState(ts.proto, ts.state).Nanoseconds())
		st.RefreshNs[i] = cacheRefresh(st.TimeoutNs[i])
	}
	st.TickNs = coarseTick()
	st.AgingDiv = cfg.Timeouts.EarlyAgingFactorOrDefault()
	if cfg.Sessions.TCPPickup {
		st.Flags |= setTCPPickup
	}
	st.Capacity = uint64(cfg.Tables.SessionsOrDefault())
	st.SweepNs = uint64(sweepInterval(st.Capacity).Nanoseconds())
	return st
}

// nextZoneIDs gives every zone of cfg an id in 1..maxZones-1 that stays
// the one it had in prev, so that a session's recorded zones keep naming
// the same zones across Applies; new zones take the lowest free ids. With
// keepRemoved (sessions survive a policy change), zones the config dropped
// keep their ids reserved, so a zone added later cannot inherit the
// sessions of a removed one; otherwise Apply ends those sessions and their
// ids are free again.
func nextZoneIDs(prev map[string]uint32, cfg *dataplane.Config, keepRemoved bool) (map[string]uint32, []string) {
	next := make(map[string]uint32, len(cfg.Zones))
	used := map[uint32]bool{}
	inCfg := map[string]bool{}
	for _, z := range cfg.Zones {
		inCfg[z.Name] = true
	}
	for name, id := range prev {
		if inCfg[name] || keepRemoved {
			next[name] = id
			used[id] = true
		}
	}
	free := uint32(1)
	for _, z := range cfg.Zones {
		if _, ok := next[z.Name]; ok {
			continue
		}
		for free < maxZones && used[free] {
			free++
		}
		if free >= maxZones {
			return nil, []string{fmt.Sprintf("zones: the eBPF backend supports %d zones (ids, including those kept for sessions of removed zones), the config needs more", maxZones-1)}
		}
		next[z.Name] = free
		used[free] = true
	}
	return next, nil
}

// fibCacheNs mirrors FW_FIB_CACHE_NS: how long a FIB answer is reused.
const fibCacheNs = uint64(time.Second)

// cacheRefresh is how long a flow-cache entry may forward before its
// session is touched again: an eighth of the idle timeout, so a session's
// recorded last-seen lags its traffic by at most that (an idle flow expires
// after between 7/8 of its timeout and its timeout), and at most the FIB
// answer's lifetime.
func cacheRefresh(timeoutNs uint64) uint64 {
	return min(timeoutNs/8, fibCacheNs)
}

// coarseTick is one jiffy in nanoseconds: the resolution of
// CLOCK_MONOTONIC_COARSE is the kernel's tick. The flow cache counts its
// lifetime in jiffies (an inlined load in the datapath); 0 (unknown)
// disables the cache rather than guess.
var coarseTick = sync.OnceValue(func() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGetres(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil || ts.Nano() <= 0 {
		return 0
	}
	return uint64(ts.Nano())
})

// zoneName returns the name of the zone with id in p.
func (p *plan) zoneName(id uint32) string {
	for name, zid := range p.zoneID {
		if zid == id {
			return name
		}
	}
	return fmt.Sprintf("zone %d", id)
}

// expandPolicy turns one policy into its source x destination x port-range
// terms. Consecutive terms share the policy's action, so the expansion keeps
// first-match semantics. A source/destination pair of different address
// families can never match and is left out.
func expandPolicy(pol dataplane.Policy) []fwFwRule {
	srcs := prefixesOrAny(pol.Sources)
	dsts := prefixesOrAny(pol.Destinations)
	ports := pol.DestinationPorts
	if len(ports) == 0 {
		ports = []dataplane.PortRange{{First: 0, Last: 65535}}
	}
	action := uint8(0)
	if pol.Action == dataplane.ActionAllow {
		action = 1
	}
	var out []fwFwRule
	for _, s := range srcs {
		for _, d := range dsts {
			sf, df := family(s), family(d)
			if sf != 0 && df != 0 && sf != df {
				continue
			}
			fam := max(sf, df)
			for _, pr := range ports {
				r := fwFwRule{PortLo: pr.First, PortHi: pr.Last, Family: fam, Proto: pol.Protocol.Number(), Action: action}
				r.SrcAddr, r.SrcMask = prefixWords(s)
				r.DstAddr, r.DstMask = prefixWords(d)
				out = append(out, r)
			}
		}
	}
	return out
}

// prefixesOrAny parses validated prefixes; an empty list is one "any"
// (the zero Prefix).
func prefixesOrAny(ss []string) []netip.Prefix {
	if len(ss) == 0 {
		return []netip.Prefix{{}}
	}
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		p, err := dataplane.ParsePrefix(s)
		if err != nil {
			continue // Validate already reported it
		}
		out = append(out, p)
	}
	return out
}

func family(p netip.Prefix) uint8 {
	switch {
	case !p.IsValid():
		return 0
	case p.Addr().Unmap().Is4() && (p.Addr().Is4() || p.Bits() >= 96):
		return 4
	}
	return 6
}

// prefixWords returns address and mask as the datapath compares them: the
// packet's bytes loaded as native (little-endian) u32 words, IPv4 in word 0.
func prefixWords(p netip.Prefix) (addr, mask [4]uint32) {
	if !p.IsValid() {
		return addr, mask
	}
	var a, m [16]byte
	bits := p.Bits()
	if p.Addr().Is4In6() && bits >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), bits-96)
		bits -= 96
	}
	if p.Addr().Is4() {
		b := p.Addr().As4()
		copy(a[:4], b[:])
	} else {
		a = p.Addr().As16()
	}
	for i := 0; i < bits; i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	for i := range 4 {
		addr[i] = binary.LittleEndian.Uint32(a[i*4:]) & binary.LittleEndian.Uint32(m[i*4:])
		mask[i] = binary.LittleEndian.Uint32(m[i*4:])
	}
	return addr, mask
}
