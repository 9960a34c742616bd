package policy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"

	"github.com/fwplane/fwplane/dataplane"
)

// ErrResolve means the interface names of a config do not map to distinct,
// positive ifindexes.
var ErrResolve = errors.New("resolve interfaces")

// denseIfindexLimit bounds the ifindex -> zone array; larger ifindexes (rare:
// hosts with many containers) use a map, which also does not allocate on
// lookup.
const denseIfindexLimit = 1 << 16

// Set is a compiled, immutable policy matcher. See the package
// documentation for the semantics.
type Set struct {
	zoneDense []int16       // by ifindex; -1: not managed
	zoneMap   map[int]int16 // ifindexes >= denseIfindexLimit
	zoneNames []string
	nzones    int
	pairs     []span // [from*nzones+to] -> rules
	rules     []rule
	v4        []prefix4
	v6        []prefix6
	ports     []dataplane.PortRange
}

type span struct{ lo, hi uint32 }

func (s span) empty() bool { return s.lo == s.hi }

type rule struct {
	index      int32
	allow      bool
	proto      uint8 // 0: any
	anySrc     bool
	anyDst     bool
	src4, src6 span
	dst4, dst6 span
	ports      span // empty: any port
}

type prefix4 struct{ net, mask uint32 }

type prefix6 struct{ hi, lo, mhi, mlo uint64 }

// Compile validates cfg and compiles its policies. ifindex resolves an
// interface name to its kernel ifindex.
func Compile(cfg *dataplane.Config, ifindex func(name string) (int, error)) (*Set, error) {
	rs, err := Normalize(cfg)
	if err != nil {
		return nil, err
	}
	if len(rs.Zones) > math.MaxInt16 {
		return nil, fmt.Errorf("compile policies: %d zones is more than %d", len(rs.Zones), math.MaxInt16)
	}
	s := &Set{nzones: len(rs.Zones), zoneNames: rs.Zones}
	byIndex := make(map[int]string, len(cfg.Interfaces))
	resolved := make([]int, len(cfg.Interfaces))
	maxDense := 0
	for i, it := range cfg.Interfaces {
		idx, err := ifindex(it.Name)
		if err != nil {
			return nil, fmt.Errorf("resolve interface %s: %w", it.Name, err)
		}
		if idx <= 0 {
			return nil, fmt.Errorf("interface %s has ifindex %d: %w", it.Name, idx, ErrResolve)
		}
		if other, dup := byIndex[idx]; dup {
			return nil, fmt.Errorf("interfaces %s and %s share ifindex %d: %w", other, it.Name, idx, ErrResolve)
		}
		byIndex[idx] = it.Name
		resolved[i] = idx
		if idx < denseIfindexLimit && idx > maxDense {
			maxDense = idx
		}
	}
	s.zoneDense = make([]int16, maxDense+1)
	for i := range s.zoneDense {
		s.zoneDense[i] = -1
	}
	for i, it := range cfg.Interfaces {
		z, _ := rs.Zone(it.Zone) // validated: the zone exists
		if idx := resolved[i]; idx < denseIfindexLimit {
			s.zoneDense[idx] = int16(z)
		} else {
			if s.zoneMap == nil {
				s.zoneMap = make(map[int]int16)
			}
			s.zoneMap[idx] = int16(z)
		}
	}

	// The normalised rules are grouped by zone pair in config order: index
	// each pair's span.
	s.pairs = make([]span, s.nzones*s.nzones)
	s.rules = make([]rule, 0, len(rs.Rules))
	for _, k := range rs.Pairs() {
		lo := uint32(len(s.rules))
		for _, r := range rs.Pair(k) {
			s.rules = append(s.rules, s.compileRule(&r))
		}
		s.pairs[k.From*s.nzones+k.To] = span{lo, uint32(len(s.rules))}
	}
	return s, nil
}

func (s *Set) compileRule(r *Rule) rule {
	c := rule{index: int32(r.Policy), allow: r.Allow, proto: r.Proto, anySrc: r.Src.Any, anyDst: r.Dst.Any}
	c.src4, c.src6 = s.addPrefixes(r.Src)
	c.dst4, c.dst6 = s.addPrefixes(r.Dst)
	lo := uint32(len(s.ports))
	s.ports = append(s.ports, r.Ports...)
	c.ports = span{lo, uint32(len(s.ports))}
	return c
}

func (s *Set) addPrefixes(a Addrs) (v4, v6 span) {
	v4.lo, v6.lo = uint32(len(s.v4)), uint32(len(s.v6))
	for _, p := range a.V4 {
		s.v4 = append(s.v4, compile4(p))
	}
	for _, p := range a.V6 {
		s.v6 = append(s.v6, compile6(p))
	}
	v4.hi, v6.hi = uint32(len(s.v4)), uint32(len(s.v6))
	return v4, v6
}

func compile4(p netip.Prefix) prefix4 {
	a := p.Addr().As4()
	var mask uint32
	if p.Bits() > 0 {
		mask = ^uint32(0) << (32 - p.Bits())
	}
	return prefix4{net: binary.BigEndian.Uint32(a[:]) & mask, mask: mask}
}

func compile6(p netip.Prefix) prefix6 {
	a := p.Addr().As16()
	var mhi, mlo uint64
	switch b := p.Bits(); {
	case b == 0:
	case b <= 64:
		mhi = ^uint64(0) << (64 - b)
	default:
		mhi = ^uint64(0)
		mlo = ^uint64(0) << (128 - b)
	}
	return prefix6{
		hi: binary.BigEndian.Uint64(a[:8]) & mhi, lo: binary.BigEndian.Uint64(a[8:]) & mlo,
		mhi: mhi, mlo: mlo,
	}
}

// zone returns the zone index of a managed ifindex, or -1.
func (s *Set) zone(ifindex int) int {
	if ifindex >= 0 && ifindex < len(s.zoneDense) {
		return int(s.zoneDense[ifindex])
	}
	if z, ok := s.zoneMap[ifindex]; ok {
		return int(z)
	}
	return -1
}

// Zone returns the zone name of a managed interface.
func (s *Set) Zone(ifindex int) (string, bool) {
	z := s.zone(ifindex)
	if z < 0 {
		return "", false
	}
	return s.zoneNames[z], true
}

// Decide returns the verdict for a packet from ingress ifindex in, routed
// out of egress ifindex out, and the index in Config.Policies of the rule
// that decided, or -1 when no rule did (default deny, or an unmanaged
// interface).
func (s *Set) Decide(in, out int, t Tuple) (allow bool, rule int) {
	return s.DecideZones(s.zone(in), s.zone(out), t)
}

// ZoneID returns the index of a zone name (its position in Config.Zones),
// for [Set.DecideZones].
func (s *Set) ZoneID(name string) (int, bool) {
	for i, n := range s.zoneNames {
		if n == name {
			return i, true
		}
	}
	return -1, false
}

// DecideZones is Decide for a packet whose zones are already known (zone
// indexes as [Set.ZoneID] returns them), e.g. to judge a session again
// under a new config by the zones it recorded. A negative or unknown zone
// is a deny with rule -1.
func (s *Set) DecideZones(from, to int, t Tuple) (allow bool, rule int) {
	if from < 0 || to < 0 || from >= s.nzones || to >= s.nzones || (t.Family != FamilyIPv4 && t.Family != FamilyIPv6) {
		return false, -1
	}
	sp := s.pairs[from*s.nzones+to]
	if sp.empty() {
		return false, -1
	}
	var src4, dst4 uint32
	var srcHi, srcLo, dstHi, dstLo uint64
	v4 := t.Family == FamilyIPv4
	if v4 {
		src4 = binary.BigEndian.Uint32(t.Src[:4])
		dst4 = binary.BigEndian.Uint32(t.Dst[:4])
	} else {
		srcHi, srcLo = binary.BigEndian.Uint64(t.Src[:8]), binary.BigEndian.Uint64(t.Src[8:])
		dstHi, dstLo = binary.BigEndian.Uint64(t.Dst[:8]), binary.BigEndian.Uint64(t.Dst[8:])
	}
	rules := s.rules[sp.lo:sp.hi]
	for i := range rules {
		r := &rules[i]
		if r.proto != 0 && r.proto != t.Proto {
			continue
		}
		if !r.ports.empty() && !s.portIn(r.ports, t.DstPort) {
			continue
		}
		if v4 {
			if !r.anySrc && !s.in4(r.src4, src4) || !r.anyDst && !s.in4(r.dst4, dst4) {
				continue
			}
		} else if !r.anySrc && !s.in6(r.src6, srcHi, srcLo) || !r.anyDst && !s.in6(r.dst6, dstHi, dstLo) {
			continue
		}
		return r.allow, int(r.index)
	}
	return false, -1
}

func (s *Set) portIn(sp span, p uint16) bool {
	for _, r := range s.ports[sp.lo:sp.hi] {
		if p >= r.First && p <= r.Last {
			return true
		}
	}
	return false
}

func (s *Set) in4(sp span, a uint32) bool {
	for _, p := range s.v4[sp.lo:sp.hi] {
		if a&p.mask == p.net {
			return true
		}
	}
	return false
}

func (s *Set) in6(sp span, hi, lo uint64) bool {
	for _, p := range s.v6[sp.lo:sp.hi] {
		if hi&p.mhi == p.hi && lo&p.mlo == p.lo {
			return true
		}
	}
	return false
}

// Rules returns the number of compiled rules (the config's policies).
func (s *Set) Rules() int { return len(s.rules) }
