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
	ifXDPTx         = 1 // FW_IF_XDP_TX
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

// buildPlan translates a validated config. Capacity problems come back as
// reasons for a *dataplane.NotSupportedError.
func buildPlan(cfg *dataplane.Config) (*plan, []string) {
	var reasons []string
	p := &plan{zoneID: make(map[string]uint32, len(cfg.Zones)), pairs: map[uint32]fwFwPair{}}
	if len(cfg.Zones) > maxZones-1 {
		reasons = append(reasons, fmt.Sprintf("zones: %d zones, the eBPF backend supports at most %d", len(cfg.Zones), maxZones-1))
	}
	if len(cfg.Interfaces) > maxIfaces {
		reasons = append(reasons, fmt.Sprintf("interfaces: %d interfaces, the eBPF backend supports at most %d", len(cfg.Interfaces), maxIfaces))
	}
	for i, z := range cfg.Zones {
		p.zoneID[z.Name] = uint32(i + 1)
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
				zoneName(cfg, k/maxZones), zoneName(cfg, k%maxZones), len(rs), maxRulesPerPair))
		}
		p.pairs[k] = fwFwPair{Start: uint32(len(p.rules)), Count: uint32(len(rs))}
		p.rules = append(p.rules, rs...)
	}
	if len(p.rules) > maxRules {
		reasons = append(reasons, fmt.Sprintf("policies: %d expanded rules, the eBPF backend holds at most %d", len(p.rules), maxRules))
	}

	t := cfg.Timeouts
	p.settings.TimeoutNs = [4]uint64{
		uint64(t.For(6).Nanoseconds()),
		uint64(t.For(17).Nanoseconds()),
		uint64(t.For(1).Nanoseconds()),
		uint64(t.For(0).Nanoseconds()),
	}
	for i, to := range p.settings.TimeoutNs {
		p.settings.RefreshNs[i] = cacheRefresh(to)
	}
	p.settings.TickNs = coarseTick()
	return p, reasons
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

func zoneName(cfg *dataplane.Config, id uint32) string {
	if id == 0 || int(id) > len(cfg.Zones) {
		return "?"
	}
	return cfg.Zones[id-1].Name
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
