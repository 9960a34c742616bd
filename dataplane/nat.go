package dataplane

import (
	"fmt"
	"net/netip"
)

// NAT. Every backend that declares FeatureSourceNAT or
// FeatureDestinationNAT implements these semantics exactly; the shared
// conformance suite compares verdicts and translated tuples.
//
//   - Rules are ordered. For a new flow, the first destination-NAT rule
//     that matches the first packet (as it arrived) translates its
//     destination; routing and the policy then see the translated
//     destination (a policy for a forwarded port is written for the inside
//     server, as operators expect). After routing, the first source-NAT
//     rule that matches the flow (zones of the route, the original source)
//     translates its source; the policy sees the original source.
//   - A translated flow is one session holding both tuples. Every packet
//     of it, in both directions, is rewritten from the session, never from
//     the frame's bytes; IP and L4 checksums are updated incrementally (a
//     UDP checksum of zero stays zero). ICMP echo identifiers are
//     translated like ports. ICMP errors about a translated flow have the
//     quoted packet translated back, so traceroute and path-MTU discovery
//     work through the NAT.
//   - Source NAT takes an (address, port) slot of its pool for the life of
//     the session: a slot is never shared, so the pool's capacity is
//     addresses x ports whatever the destinations. A flow that finds no
//     free slot (after a bounded search: the whole range when it is small)
//     is dropped and counted (CounterNATPoolExhausted); the slot returns to
//     the pool when the session ends.
//   - Only TCP, UDP and ICMP echo are translated. A packet of another
//     protocol (or another ICMP type) that a source-NAT rule selects is
//     dropped and counted (CounterNATUnsupportedProto): it would otherwise
//     leave with the inside address.
//   - IPv4 only. An IPv6 address anywhere in a NAT rule needs FeatureNATv6,
//     which no backend declares today: the gate refuses such a config with
//     that reason (NAT66/NPTv6 are rarely what an IPv6 network wants).

// NATType says what a rule translates.
type NATType string

const (
	NATSource      NATType = "source"
	NATDestination NATType = "destination"
)

// DefaultNATPorts is the source-NAT port range when a rule gives none.
var DefaultNATPorts = PortRange{First: 1024, Last: 65535}

// MaxNATPoolAddresses bounds the addresses of one source-NAT pool.
const MaxNATPoolAddresses = 256

// NATRule is one ordered address-translation rule.
type NATRule struct {
	Name string  `json:"name,omitempty"`
	Type NATType `json:"type"`
	// FromZone is the zone the flow's first packet arrives from: required
	// for source NAT, optional (any zone) for destination NAT. ToZone is
	// the zone it is routed to: source NAT only, required.
	FromZone string `json:"from_zone,omitempty"`
	ToZone   string `json:"to_zone,omitempty"`
	// Sources restricts the rule to flows from these prefixes (source NAT;
	// empty: any).
	Sources []string `json:"sources,omitempty"`
	// Protocol restricts the rule: tcp, udp, icmp or empty/any.
	Protocol Protocol `json:"protocol,omitempty"`

	// Source NAT: Masquerade translates to the egress interface's primary
	// IPv4 address (followed as it changes); otherwise Pool lists the
	// addresses and prefixes to translate to (at most
	// MaxNATPoolAddresses). Ports is the range of source ports (and ICMP
	// echo identifiers) to allocate; zero means DefaultNATPorts.
	Masquerade bool      `json:"masquerade,omitempty"`
	Pool       []string  `json:"pool,omitempty"`
	Ports      PortRange `json:"ports,omitzero"`

	// Destination NAT (port forwarding): packets to Destination, and for
	// tcp/udp to a port in DestinationPorts (required then), go to
	// TranslateTo, port TranslatePort (0: the port is kept).
	Destination      string    `json:"destination,omitempty"`
	DestinationPorts PortRange `json:"destination_ports,omitzero"`
	TranslateTo      string    `json:"translate_to,omitempty"`
	TranslatePort    uint16    `json:"translate_port,omitempty"`
}

// PortsOrDefault returns the source-NAT port range to use.
func (r NATRule) PortsOrDefault() PortRange {
	if r.Ports == (PortRange{}) {
		return DefaultNATPorts
	}
	return r.Ports
}

// Counter names of NAT (scope "global").
const (
	CounterNATPoolExhausted    = "nat_pool_exhausted"      // new flow dropped: no free pool slot
	CounterNATUnsupportedProto = "dropped_nat_unsupported" // selected for SNAT, not translatable
	CounterNATReverseMiss      = "nat_reverse_miss"        // to a pool address, no session
	CounterNATTranslated       = "nat_sessions_created"    // translated sessions created
)

// ResourceNATPool is the report row of a source-NAT pool (Kind KindPool):
// Scope is the rule's name (or "nat[i]"), Capacity addresses x ports, Used
// the slots held by sessions. Detail rows (Detail set, Scope
// "<rule>/<address>") break it down per address. A masquerading rule's
// addresses are those of its to_zone's interfaces.
const ResourceNATPool = "nat_pool"

// NATScope names a rule in reports: its name, else nat[i].
func NATScope(cfg *Config, i int) string {
	if n := cfg.NAT[i].Name; n != "" {
		return n
	}
	return fmt.Sprintf("nat[%d]", i)
}

// PoolAddresses expands a validated pool (addresses and prefixes) into its
// addresses, in order, without duplicates. Network and broadcast
// addresses of a prefix shorter than /31 are left out.
func PoolAddresses(pool []string) []netip.Addr {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	add := func(a netip.Addr) {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, s := range pool {
		p, err := ParsePrefix(s)
		if err != nil {
			continue
		}
		if p.IsSingleIP() {
			add(p.Addr())
			continue
		}
		first, last := p.Masked().Addr(), lastAddr(p)
		if p.Addr().Is4() && p.Bits() < 31 {
			first, last = first.Next(), last.Prev()
		}
		for a := first; a.IsValid() && a.Compare(last) <= 0 && len(out) <= MaxNATPoolAddresses; a = a.Next() {
			add(a)
		}
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As16()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	for i := bits; i < 128; i++ {
		a[i/8] |= 0x80 >> (i % 8)
	}
	out := netip.AddrFrom16(a)
	if p.Addr().Is4() {
		return out.Unmap()
	}
	return out
}
