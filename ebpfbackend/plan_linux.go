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
	rs, err := policy.Normalize(cfg)
	if err != nil {
		// Apply validated cfg first; this is a programming error.
		return p, []string{err.Error()}
	}
	reasons = append(reasons, checkLimits(cfg, rs)...)
	for i, z := range cfg.Zones {
		p.zoneID[z.Name] = uint32(i + 1)
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
		key := uint32(k.From+1)*maxZones + uint32(k.To+1)
		p.pairs[key] = fwFwPair{Start: uint32(start), Count: uint32(len(p.rules) - start)}
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
