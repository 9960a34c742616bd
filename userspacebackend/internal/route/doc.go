// Package route answers "where does a packet to this address go?" for the
// userspace datapath: egress interface, gateway (or on-link), preferred
// source and MTU, as decided by the kernel's routing in one network
// namespace, so the datapath forwards exactly as the kernel would
// (policy rules, multiple tables and all).
//
// A [Resolver] asks the kernel with RTM_GETROUTE through a netlink handle
// bound to the namespace (so it works from any goroutine) and caches the
// answer per destination, negative answers included. The cache is
// invalidated by a route-change subscription (RTNLGRP_IPV4_ROUTE and
// RTNLGRP_IPV6_ROUTE): any change empties it logically. A TTL (5 s by
// default) backstops the subscription, because the kernel removes IPv4
// routes silently when a link goes down or an address is deleted, and
// because the subscription is re-established after an overflow. Lookups
// are meant for a flow's first packet; the per-packet next-hop MAC comes
// from the neighbour table (package neigh), keyed by Result.NextHop.
//
// For a multipath route the kernel picks one path from the destination
// alone (no ports), so every flow to one destination takes that path.
//
// # Errors
//
// A destination without a usable route (ENETUNREACH, EHOSTUNREACH, an
// unreachable, prohibit or blackhole route) matches [ErrNoRoute] and the
// errno with errors.Is. Other errors wrap the netlink error with %w.
// Lookup after Close matches [ErrClosed].
//
// # Concurrency
//
// A Resolver is safe for concurrent use: the cache is a map behind a
// sync.RWMutex (readers share it), the netlink handle serialises its own
// requests, and counters are atomics. One goroutine consumes the
// subscription until Close, which waits for it; Close is safe on nil and
// idempotent but must not race with Lookup.
package route
