// Package ebpfbackend is fwplane's in-kernel dataplane: one XDP program
// (bpf/xdp_fw.c) attached to every managed interface does the zone policy,
// the session table and the forwarding, and this package loads it, programs
// its maps from a [dataplane.Config] and reports how full they are.
//
// # Datapath
//
// Egress is chosen by bpf_fib_lookup, i.e. by the kernel's routes and
// neighbour table in the dataplane's network namespace: the operator's
// routes and the kernel's ARP/ND stay authoritative and there is no second
// table to keep in sync. Packets the FIB says are not forwarded (addressed
// to the firewall, broadcast, multicast), ARP and IPv6 neighbour discovery
// go to the kernel. An allowed packet whose next hop has no neighbour entry
// yet, whose TTL would expire or that is bigger than the egress MTU is also
// passed to the kernel, which resolves the neighbour or answers with ICMP.
// Non-first fragments are dropped when they would be forwarded (they carry
// no ports to check); an egress interface outside the config is dropped
// (routing around the zones would bypass the policy).
//
// A new flow always asks the FIB. Its session then keeps the FIB's answer
// per direction and reuses it for up to one second (FW_FIB_CACHE_NS in
// bpf/include/fw_common.h) before asking again: established flows follow a
// route or neighbour change within that second, and the lookup leaves the
// per-packet path (it was the largest cost in the benchmark). The
// fib_lookups counter shows how often the FIB is asked.
//
// Sessions live in two LRU hashes, one per address family, each with
// tables.sessions entries (so an IPv6 flood cannot evict IPv4 sessions).
// Keys are canonical (the lower endpoint first), so both directions of a
// flow find the same entry and one flow is one entry: each map's element
// count is the number of flows of its family, which is what the sessions
// figures report, counted by internal/mapcount (kfunc by default: one
// iterator read, exact under churn). An entry idle for longer than its
// protocol's timeout is treated as a miss and the flow is evaluated again;
// if it is now denied the stale entry is deleted. A reaper goroutine
// (Options.SessionReapInterval) deletes idle entries that see no more
// traffic, so the counts are live flows within one interval. Time is the
// coarse monotonic clock (a few milliseconds of resolution). Sessions
// created under an old policy survive a policy change, like in any
// stateful firewall; they end when they idle out (or are evicted when the
// table is full). TCP state (SYN/FIN/RST) is not tracked: a TCP session is
// an idle timer like any other.
//
// Session packet and byte totals are plain, non-atomic increments: a flow
// is normally handled by one CPU, and exactness of these informational
// totals is not worth an atomic per packet.
//
// On veth: frames sent by local sockets on a veth carry a partial L4
// checksum (checksum offload) that XDP cannot see or finish, so a frame
// the program redirects arrives with a bad checksum unless the sender has
// TX checksum offload off; physical NICs finish the sum in hardware. And a
// veth only receives redirected frames when its peer runs NAPI (here:
// when the peer has an XDP program attached).
//
// # Policy replacement
//
// Every config-dependent map (interface zones, zone-pair rule index, rules,
// timeouts) has two slots. Apply writes the inactive slot completely, then
// flips a one-element array that the program reads once per packet, so a
// packet sees either the old or the new configuration, never a mix, and a
// denied flow is never allowed in between.
//
// # Errors
//
//   - An invalid config: the *dataplane.ConfigError from Validate, unchanged.
//   - A config needing features this backend lacks (port mirroring, static
//     routes, queue selection) or more rules/zones/interfaces than the
//     datapath holds: a *dataplane.NotSupportedError (matches
//     dataplane.ErrNotSupported) listing every reason.
//   - An interface that does not exist: a *dataplane.ConfigError whose
//     problems name the field (interfaces[i].name).
//   - After Close: dataplane.ErrClosed.
//   - Kernel failures are wrapped with %w so the errno stays matchable.
//
// Whatever the error, the running generation is unchanged: programs stay
// attached and the active slot is untouched.
//
// # Concurrency
//
// A *Backend is safe for concurrent use. Apply calls are serialised;
// ResourceStats and Sessions run concurrently with Apply and with the
// datapath (they read maps, the program takes no lock). Close waits for a
// running Apply, then detaches everything; it is idempotent and safe on a
// nil *Backend. Nothing is pinned to bpffs, so a crashed process leaves no
// program attached: the bpf_links die with it.
package ebpfbackend
