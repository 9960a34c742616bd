// Package policy is the one compiled form of a [dataplane.Config]'s zone
// policies. [Normalize] turns them into a [Ruleset]: zones numbered,
// addresses parsed, masked and split by family, protocols as numbers,
// rules grouped by zone pair in config order. Every consumer starts from
// it, so the semantics below are implemented once:
//
//   - the userspace datapath asks [Set] (compiled from the Ruleset by
//     [Compile]) once per new flow;
//   - the eBPF backend writes each rule's [Term]s (source prefix x
//     destination prefix x port range, one family) into its rule table;
//   - the capability gate and internal/limits count terms against a
//     backend's limits.
//
// [Term.Match] states a term's semantics in Go, and a test checks that
// evaluating the terms gives [Set.Decide]'s verdict.
//
// # Semantics (both backends must give the same verdict)
//
// [Set.Decide] takes the ingress ifindex, the egress ifindex (the
// interface the packet would be forwarded out of) and the packet's [Tuple]:
//
//  1. The ingress interface's zone A and the egress interface's zone B are
//     looked up. If either ifindex is not a managed interface, the verdict
//     is deny with rule -1.
//  2. The policies with FromZone A and ToZone B are tried in config order.
//     Intra-zone traffic (A == B) is not special: it needs an A -> A policy
//     like any other pair.
//  3. The first policy that matches decides: allow or deny. A deny rule ends
//     the evaluation exactly like an allow rule does; later rules are never
//     tried. The returned rule is the policy's index in Config.Policies.
//  4. No matching policy: deny with rule -1 (default deny).
//
// A policy matches when every one of its conditions holds:
//
//   - Sources / Destinations: an empty list matches any address. A
//     non-empty list matches when at least one of its prefixes has the
//     packet's address family and contains the address. So a list of only
//     IPv4 prefixes never matches an IPv6 packet and vice versa.
//   - The address family of a packet is its IP version (Tuple.Family), never
//     the shape of the address: an IPv6 packet whose address is IPv4-mapped
//     (::ffff:a.b.c.d) is an IPv6 packet and is matched only by IPv6
//     prefixes such as ::ffff:10.0.0.0/104; the IPv4 prefix 10.0.0.0/8
//     does not match it. Likewise a prefix written in IPv4-mapped IPv6
//     form is an IPv6 prefix and is not unmapped.
//   - Protocol: empty or "any" matches every IP protocol number; tcp (6),
//     udp (17), icmp (1) and icmpv6 (58) match that protocol number only.
//     "icmp" therefore never matches an IPv6 packet (ICMPv6 is 58).
//   - DestinationPorts: an empty list matches any port. A non-empty list
//     (validation allows it only with protocol tcp or udp) matches when the
//     packet's destination port lies in one of the inclusive ranges. ICMP
//     has no ports: the echo identifier that the parser stores in the
//     tuple's port fields is never compared with a policy. A packet without
//     a transport header (a non-first fragment) has destination port 0,
//     which no range contains (validation forbids port 0), so it never
//     matches a policy with ports.
//
// Sessions (both directions of an allowed flow pass without a policy
// lookup) are the session table's business, not this package's.
//
// # Errors
//
// [Normalize] and [Compile] validate the config first and return its
// *dataplane.ConfigError (matching [dataplane.ErrInvalidConfig]) unchanged;
// a resolver error is wrapped with %w ("resolve interface NAME: ..."); two
// interface names that resolve to the same ifindex, or an ifindex that is
// not positive, is an error wrapping [ErrResolve]. Decide and DecideZones
// never fail: unknown input is a deny.
//
// # Concurrency
//
// A [Ruleset] and a [Set] are immutable once built and safe for concurrent
// use by any number of goroutines without locking. Decide does not
// allocate. To change policies, compile a new Set and swap the pointer (an
// atomic.Pointer).
package policy
