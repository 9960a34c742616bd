package policy

import (
	"fmt"
	"net/netip"

	"github.com/fwplane/fwplane/dataplane"
)

// Ruleset is a config's policies in the one normalised form every backend
// consumes: zones numbered, addresses parsed, masked and split by family
// (the family rule of the Config contract, applied here and nowhere else),
// protocols as numbers, rules grouped by zone pair in config order. The
// userspace matcher ([Set]) is compiled from it; the eBPF backend writes
// its [Rule.Terms] into the datapath's rule table; the capability gate
// counts terms against a backend's limits.
//
// A Ruleset is immutable after [Normalize] and safe for concurrent use.
type Ruleset struct {
	// Zones are the zone names in config order; a zone's index is its
	// position.
	Zones []string
	// Rules are grouped by zone pair, in config order inside each pair.
	Rules []Rule

	zoneID map[string]int
	pairs  []ZonePair          // in order of each pair's first policy
	spans  map[ZonePair][2]int // [lo, hi) in Rules
}

// ZonePair is a (from, to) pair of zone indexes.
type ZonePair struct{ From, To int }

// Rule is one policy, normalised.
type Rule struct {
	// Policy is the index in Config.Policies.
	Policy int
	// From and To are zone indexes.
	From, To int
	Allow    bool
	// Proto is the IP protocol number; 0 matches any.
	Proto uint8
	// Src and Dst: the addresses the rule matches.
	Src, Dst Addrs
	// Ports are the destination port ranges; empty matches any port.
	Ports []dataplane.PortRange
}

// Addrs is a policy's source or destination list, split by family.
type Addrs struct {
	// Any is set for an empty list: every address of either family.
	Any bool
	// V4 holds IPv4 prefixes, V6 IPv6 ones (IPv4-mapped IPv6 prefixes
	// included: they are IPv6 and match IPv6 packets only). All masked.
	V4, V6 []netip.Prefix
}

// Family is the address family a prefix matches: FamilyIPv4 for an IPv4
// prefix, FamilyIPv6 for every IPv6 prefix. An IPv4-mapped IPv6 prefix
// (::ffff:10.0.0.0/104) is IPv6, never unmapped: the Config contract says
// the family is the packet's IP version, and an IPv4 packet's address is
// never an IPv6 one.
func Family(p netip.Prefix) uint8 {
	if p.Addr().Is4() {
		return FamilyIPv4
	}
	return FamilyIPv6
}

// Normalize validates cfg and returns its policies in normalised form. An
// invalid config returns its *dataplane.ConfigError unchanged.
func Normalize(cfg *dataplane.Config) (*Ruleset, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rs := &Ruleset{zoneID: make(map[string]int, len(cfg.Zones)), spans: map[ZonePair][2]int{}}
	for i, z := range cfg.Zones {
		rs.Zones = append(rs.Zones, z.Name)
		rs.zoneID[z.Name] = i
	}
	byPair := map[ZonePair][]int{}
	for i, p := range cfg.Policies {
		k := ZonePair{rs.zoneID[p.FromZone], rs.zoneID[p.ToZone]}
		if _, ok := byPair[k]; !ok {
			rs.pairs = append(rs.pairs, k)
		}
		byPair[k] = append(byPair[k], i)
	}
	rs.Rules = make([]Rule, 0, len(cfg.Policies))
	for _, k := range rs.pairs {
		lo := len(rs.Rules)
		for _, i := range byPair[k] {
			r, err := normalizeRule(i, k, cfg.Policies[i])
			if err != nil {
				return nil, err
			}
			rs.Rules = append(rs.Rules, r)
		}
		rs.spans[k] = [2]int{lo, len(rs.Rules)}
	}
	return rs, nil
}

func normalizeRule(i int, k ZonePair, p dataplane.Policy) (Rule, error) {
	r := Rule{Policy: i, From: k.From, To: k.To, Allow: p.Action == dataplane.ActionAllow, Proto: p.Protocol.Number()}
	var err error
	if r.Src, err = parseAddrs(p.Sources); err != nil {
		return Rule{}, fmt.Errorf("normalise policies[%d].sources: %w", i, err)
	}
	if r.Dst, err = parseAddrs(p.Destinations); err != nil {
		return Rule{}, fmt.Errorf("normalise policies[%d].destinations: %w", i, err)
	}
	if len(p.DestinationPorts) > 0 {
		r.Ports = append([]dataplane.PortRange(nil), p.DestinationPorts...)
	}
	return r, nil
}

func parseAddrs(list []string) (Addrs, error) {
	if len(list) == 0 {
		return Addrs{Any: true}, nil
	}
	var a Addrs
	for _, s := range list {
		p, err := dataplane.ParsePrefix(s)
		if err != nil {
			return Addrs{}, err
		}
		if Family(p) == FamilyIPv4 {
			a.V4 = append(a.V4, p)
		} else {
			a.V6 = append(a.V6, p)
		}
	}
	return a, nil
}

// Zone returns the index of a zone name.
func (rs *Ruleset) Zone(name string) (int, bool) {
	z, ok := rs.zoneID[name]
	return z, ok
}

// Pairs returns the zone pairs that have rules, in the order of each
// pair's first policy in the config.
func (rs *Ruleset) Pairs() []ZonePair { return rs.pairs }

// Pair returns the rules of one zone pair in first-match order (nil when
// the pair has none: default deny).
func (rs *Ruleset) Pair(k ZonePair) []Rule {
	sp, ok := rs.spans[k]
	if !ok {
		return nil
	}
	return rs.Rules[sp[0]:sp[1]]
}

// Term is one source prefix x destination prefix x port range of a rule,
// of a single family: the unit a datapath that cannot loop over lists
// compares (the eBPF backend's struct fw_rule).
type Term struct {
	// Family is FamilyIPv4 or FamilyIPv6, or 0 when both sides are any.
	Family uint8
	// Src and Dst are prefixes of Family; the zero Prefix matches any
	// address (of Family, or of either when Family is 0).
	Src, Dst netip.Prefix
	// Ports is a destination port range; {0, 65535} for any.
	Ports dataplane.PortRange
	Proto uint8
	Allow bool
}

// anyPorts is the range a term without ports carries.
var anyPorts = []dataplane.PortRange{{First: 0, Last: 65535}}

// sides returns the prefixes of one side for one family: the zero Prefix
// (any) for an any list, else the list's prefixes of that family.
func (a Addrs) side(fam uint8) []netip.Prefix {
	switch {
	case a.Any:
		return []netip.Prefix{{}}
	case fam == FamilyIPv4:
		return a.V4
	}
	return a.V6
}

// AppendTerms appends the rule's terms to dst, in first-match order:
// consecutive terms share the rule's action, so evaluating them in order
// gives the rule's verdict. Source and destination of different families
// can never match together and make no term.
func (r *Rule) AppendTerms(dst []Term) []Term {
	ports := r.Ports
	if len(ports) == 0 {
		ports = anyPorts
	}
	emit := func(fam uint8, srcs, dsts []netip.Prefix) {
		for _, s := range srcs {
			for _, d := range dsts {
				for _, pr := range ports {
					dst = append(dst, Term{Family: fam, Src: s, Dst: d, Ports: pr, Proto: r.Proto, Allow: r.Allow})
				}
			}
		}
	}
	if r.Src.Any && r.Dst.Any {
		emit(0, []netip.Prefix{{}}, []netip.Prefix{{}})
		return dst
	}
	emit(FamilyIPv4, r.Src.side(FamilyIPv4), r.Dst.side(FamilyIPv4))
	emit(FamilyIPv6, r.Src.side(FamilyIPv6), r.Dst.side(FamilyIPv6))
	return dst
}

// TermCount is len(r.AppendTerms(nil)), without building them.
func (r *Rule) TermCount() int {
	ports := max(len(r.Ports), 1)
	if r.Src.Any && r.Dst.Any {
		return ports
	}
	n := len(r.Src.side(FamilyIPv4))*len(r.Dst.side(FamilyIPv4)) + len(r.Src.side(FamilyIPv6))*len(r.Dst.side(FamilyIPv6))
	return n * ports
}

// TermCounts returns how many terms each zone pair's rules expand to, the
// largest of them, and the total: what a term-based datapath must hold.
func (rs *Ruleset) TermCounts() (perPair map[ZonePair]int, largest ZonePair, total int) {
	perPair = make(map[ZonePair]int, len(rs.pairs))
	most := -1
	for _, k := range rs.pairs {
		rules := rs.Pair(k)
		n := 0
		for i := range rules {
			n += rules[i].TermCount()
		}
		perPair[k] = n
		total += n
		if n > most {
			most, largest = n, k
		}
	}
	return perPair, largest, total
}

// Match reports whether the term matches a tuple: the semantics a
// term-based datapath must implement, in Go, for tests that compare it
// with [Set.Decide].
func (t Term) Match(tu Tuple) bool {
	if t.Family != 0 && t.Family != tu.Family {
		return false
	}
	if t.Proto != 0 && t.Proto != tu.Proto {
		return false
	}
	if tu.DstPort < t.Ports.First || tu.DstPort > t.Ports.Last {
		return false
	}
	return (!t.Src.IsValid() || t.Src.Contains(tu.SrcAddr())) && (!t.Dst.IsValid() || t.Dst.Contains(tu.DstAddr()))
}
