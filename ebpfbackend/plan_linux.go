package ebpfbackend

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/limits"
	"github.com/fwplane/fwplane/internal/policy"
)

// Datapath constants mirrored from bpf/include/fw_common.h (limits.go has
// the limits).
const (
	ifXDPTx      = 1 // FW_IF_XDP_TX
	setTCPPickup = 1 // FW_SET_TCP_PICKUP
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
	nat      natPlan
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
	rs, err := policy.Normalize(cfg)
	if err != nil {
		// Apply validated cfg first; this is a programming error.
		return p, []string{err.Error()}
	}
	reasons = append(reasons, checkLimits(cfg, rs)...)
	for _, z := range cfg.Zones {
		p.zoneID[z.Name] = zoneIDs[z.Name]
	}
	for i, it := range cfg.Interfaces {
		p.ifaces = append(p.ifaces, planIface{name: it.Name, field: fmt.Sprintf("interfaces[%d].name", i), zone: p.zoneID[it.Zone]})
	}
	if len(reasons) > 0 {
		// Do not expand a rule set that does not fit (100 000 policies
		// would be built only to be refused).
		return p, reasons
	}

	// The rule set is grouped by zone pair in config order: that order is
	// the first-match order. Zone ids in the datapath are 1-based.
	var terms []policy.Term
	for _, k := range rs.Pairs() {
		start := len(p.rules)
		for _, r := range rs.Pair(k) {
			terms = r.AppendTerms(terms[:0])
			for _, t := range terms {
				p.rules = append(p.rules, termRule(t))
			}
		}
		// Zone ids are the stable ones (nextZoneIDs), not config order.
		from, to := p.zoneID[cfg.Zones[k.From].Name], p.zoneID[cfg.Zones[k.To].Name]
		key := from*maxZones + to
		p.pairs[key] = fwFwPair{Start: uint32(start), Count: uint32(len(p.rules) - start)}
	}

	p.settings = settingsOf(cfg)
	np, natReasons := buildNAT(cfg, p.zoneID)
	reasons = append(reasons, natReasons...)
	p.nat = np
	p.settings.SnatN, p.settings.DnatN = uint32(len(np.snat)), uint32(len(np.dnat))
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
	st.RecentMask = uint64(recentRing(cfg.Tables.SessionsOrDefault()) - 1)
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

// termRule is one term of the normalised rule set as the datapath reads it
// (struct fw_rule).
func termRule(t policy.Term) fwFwRule {
	r := fwFwRule{PortLo: t.Ports.First, PortHi: t.Ports.Last, Family: t.Family, Proto: t.Proto}
	if t.Allow {
		r.Action = 1
	}
	r.SrcAddr, r.SrcMask = prefixWords(t.Src)
	r.DstAddr, r.DstMask = prefixWords(t.Dst)
	return r
}

// prefixWords returns address and mask as the datapath compares them: the
// packet's bytes loaded as native (little-endian) u32 words, IPv4 in word 0,
// IPv6 (IPv4-mapped included: the family was decided by internal/policy)
// in all four. The zero Prefix (any) is all zeros.
func prefixWords(p netip.Prefix) (addr, mask [4]uint32) {
	if !p.IsValid() {
		return addr, mask
	}
	var a, m [16]byte
	if p.Addr().Is4() {
		b := p.Addr().As4()
		copy(a[:4], b[:])
	} else {
		a = p.Addr().As16()
	}
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	for i := range 4 {
		addr[i] = binary.LittleEndian.Uint32(a[i*4:]) & binary.LittleEndian.Uint32(m[i*4:])
		mask[i] = binary.LittleEndian.Uint32(m[i*4:])
	}
	return addr, mask
}

// checkLimits refuses what the datapath cannot hold (Limits), with the
// gate's words and figures.
func checkLimits(cfg *dataplane.Config, rs *policy.Ruleset) []string {
	return limits.Check(cfg, rs, Limits(), string(dataplane.ModeEBPF))
}

// recentRing is the size of the early-drop candidate rings for a session
// table of capacity: a power of two from 1 Ki to 64 Ki, at least the
// table where it can be (a flood fills the table with candidates; more
// than 64 Ki of them are not needed to find an unassured one).
func recentRing(capacity uint32) uint32 {
	r := uint32(1024)
	for r < capacity && r < 1<<16 {
		r <<= 1
	}
	return r
}
