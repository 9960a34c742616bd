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
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.Zones) > math.MaxInt16 {
		return nil, fmt.Errorf("compile policies: %d zones is more than %d", len(cfg.Zones), math.MaxInt16)
	}
	s := &Set{nzones: len(cfg.Zones)}
	zoneID := make(map[string]int16, len(cfg.Zones))
	for i, z := range cfg.Zones {
		zoneID[z.Name] = int16(i)
		s.zoneNames = append(s.zoneNames, z.Name)
	}
	byIndex := make(map[int]string, len(cfg.Interfaces))
	maxDense := 0
	for _, it := range cfg.Interfaces {
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
		if idx < denseIfindexLimit && idx > maxDense {
			maxDense = idx
		}
	}
	s.zoneDense = make([]int16, maxDense+1)
	for i := range s.zoneDense {
		s.zoneDense[i] = -1
	}
	for _, it := range cfg.Interfaces {
		idx, _ := ifindex(it.Name) // resolved above; a resolver is not expected to change its mind
		if idx < denseIfindexLimit {
			s.zoneDense[idx] = zoneID[it.Zone]
			continue
		}
		if s.zoneMap == nil {
			s.zoneMap = make(map[int]int16)
		}
		s.zoneMap[idx] = zoneID[it.Zone]
	}

	// Group rules by zone pair, keeping config order inside each pair.
	perPair := make([][]int, s.nzones*s.nzones)
	for i, p := range cfg.Policies {
		k := int(zoneID[p.FromZone])*s.nzones + int(zoneID[p.ToZone])
		perPair[k] = append(perPair[k], i)
	}
	s.pairs = make([]span, len(perPair))
	for k, idxs := range perPair {
		lo := uint32(len(s.rules))
		for _, i := range idxs {
			r, err := s.compileRule(i, cfg.Policies[i])
			if err != nil {
				return nil, err
			}
			s.rules = append(s.rules, r)
		}
		s.pairs[k] = span{lo, uint32(len(s.rules))}
	}
	return s, nil
}

func (s *Set) compileRule(i int, p dataplane.Policy) (rule, error) {
	r := rule{
		index:  int32(i),
		allow:  p.Action == dataplane.ActionAllow,
		proto:  p.Protocol.Number(),
		anySrc: len(p.Sources) == 0,
		anyDst: len(p.Destinations) == 0,
	}
	var err error
	if r.src4, r.src6, err = s.addPrefixes(p.Sources); err != nil {
		return rule{}, fmt.Errorf("compile policies[%d].sources: %w", i, err)
	}
	if r.dst4, r.dst6, err = s.addPrefixes(p.Destinations); err != nil {
		return rule{}, fmt.Errorf("compile policies[%d].destinations: %w", i, err)
	}
	lo := uint32(len(s.ports))
	s.ports = append(s.ports, p.DestinationPorts...)
	r.ports = span{lo, uint32(len(s.ports))}
	return r, nil
}

func (s *Set) addPrefixes(list []string) (v4, v6 span, err error) {
	v4.lo, v6.lo = uint32(len(s.v4)), uint32(len(s.v6))
	for _, str := range list {
		p, err := dataplane.ParsePrefix(str)
		if err != nil {
			return span{}, span{}, err
		}
		if p.Addr().Is4() {
			s.v4 = append(s.v4, compile4(p))
		} else {
			s.v6 = append(s.v6, compile6(p))
		}
	}
	v4.hi, v6.hi = uint32(len(s.v4)), uint32(len(s.v6))
	return v4, v6, nil
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
	return s.decidePair(s.zone(in), s.zone(out), t)
}

// decidePair is Decide for zone indexes (-1: not a zone).
func (s *Set) decidePair(zin, zout int, t Tuple) (allow bool, rule int) {
	if zin < 0 || zout < 0 || (t.Family != FamilyIPv4 && t.Family != FamilyIPv6) {
		return false, -1
	}
	sp := s.pairs[zin*s.nzones+zout]
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
