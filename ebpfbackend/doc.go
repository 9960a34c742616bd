// Package ebpfbackend is fwplane's in-kernel dataplane: one program
// (bpf/xdp_fw.c, compiled as an XDP and a TC program from the same C)
// attached to every managed interface does the zone policy, the session
// table and the forwarding, and this package loads it, programs its maps
// from a [dataplane.Config] and reports how full they are. Each interface
// gets XDP or TC as interfaces[].attach says, or as the capability gate
// chooses for it (TC on veths, which carry GSO aggregates and partial
// checksums; see capability/attach.go); the report says which and why.
//
// Figures (rates, costs) are in docs/benchmarks.md, with the commands
// that measured them; this documentation only says what was compared.
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
// Sessions follow the session model of dataplane/session.go (TCP states
// from flags with the SYN check, a timeout per state, assured sessions,
// early drop, early aging, zones), in two plain hash tables, one per
// address family, each with tables.sessions entries (so an IPv6 flood
// cannot take IPv4 sessions' room). Keys are canonical (the lower endpoint
// first), so both directions of a flow find the same entry and one flow is
// one entry: each map's element count is the number of flows of its
// family, which is what the sessions figures report, counted by
// internal/mapcount (kfunc by default: one iterator read, exact under
// churn). Not LRU maps: an LRU map evicts before it is full, whatever it
// likes, and counts nothing, where the model needs "never an assured
// session, every refusal counted".
//
// Expiry runs in the kernel: a bpf_timer sweep (Options.SessionSweepInterval)
// deletes sessions idle beyond their state's timeout, counts the unassured
// ones and switches early aging (on at 80 % of a table, off below 75 %), so
// expiry goes on while no process runs (a pinned dataplane). A session
// idle beyond its timeout is a miss even before the sweep removes it. When
// an insert finds its table full, the program takes the slot of an
// expired or unassured session from a ring of recently created keys
// shared by every CPU (session_early_drop), or drops the new flow
// (session_table_full). Time is the coarse monotonic clock (a few
// milliseconds of resolution). Sessions record their zones: a packet of a
// session arriving from another zone is dropped (dropped_zone_mismatch).
// Apply ends the sessions the new policy denies (sessions_ended_by_policy)
// unless sessions.keep_on_policy_change; [Backend.ClearSessions] ends
// sessions on demand.
//
// Session packet and byte totals are plain, non-atomic increments: a flow
// is normally handled by one CPU, and exactness of these informational
// totals is not worth an atomic per packet.
//
// # Flow cache
//
// In front of the session tables sits a per-CPU, direct-mapped flow cache
// (fw_flow_cache, FW_FLOW_CACHE_SLOTS entries per CPU) keyed by the
// directional 5-tuple. A hash-table lookup hashes its key in a helper call; a
// per-CPU array lookup is inlined by the verifier, so an established flow's
// packet (untagged IPv4 without options or IPv6, TCP or UDP) is forwarded
// from the headers and the cache entry alone: no session lookup, no clock
// helper (the entry's lifetime is in jiffies, which the verifier inlines to
// one load), one counters lookup. Anything else, or a miss, takes the
// general path, which does every check.
//
// An entry is only a shortcut for a live session's fresh FIB answer, never a
// session itself: it is written by the general path when that path forwards
// a packet of a live (or just created) session, and it forwards only while
//   - the config has not flipped since (entries carry the fw_active value,
//     which counts flips, so a flip invalidates every entry at once),
//   - its lifetime lasts: at most the refresh interval, an eighth of the
//     protocol's idle timeout capped at one second, and at most what is
//     left of the FIB answer's second,
//   - the packet is no bigger than the largest one the FIB's MTU check
//     accepted with this answer (bigger ones ask the FIB, which enforces the
//     MTU; the session's own FIB cache follows the same rule).
//
// When an entry runs out, the next packet takes the general path, which
// looks the session up, refreshes its last-seen, adds the packets and bytes
// the entry forwarded meanwhile (so do Sessions, from every CPU's cache,
// and a collision that evicts an entry), and refills the entry. So:
//   - the session counts are untouched (cache entries are not sessions),
//   - a session's last-seen lags its traffic by at most the refresh
//     interval: a flow idle for between 7/8 of its timeout and its timeout
//     may already be treated as expired (evaluated again, or swept),
//   - a session ended (early drop, the sweep, Apply, ClearSessions) keeps
//     forwarding from a cached entry for at most the refresh interval
//     before the general path sees it is gone and evaluates the flow
//     again (Apply and ClearSessions invalidate every cache at once);
//   - known gap (dptest.Divergences): a SYN that reopens a closed
//     session's tuple does not invalidate the old connection's entries,
//     so for up to that interval the new connection's ACK and data skip
//     state tracking.
//
// flow_cache_hits counts the packets the cache forwarded; session_hits
// includes them.
//
// # ICMP errors
//
// An ICMP error (destination unreachable, including fragmentation needed;
// time exceeded; parameter problem; ICMPv6 packet too big) is never a flow
// of its own. It is forwarded, like the flow's packets but without touching
// its session, when the packet it quotes belongs to a live session and the
// error travels back to the quoted packet's sender (path MTU discovery and
// traceroute through the firewall need that); the related_icmp counter
// counts them. Any other ICMP error is dropped (dropped_icmp_unrelated),
// whatever the policy says about ICMP. Errors addressed to the firewall
// itself go to the kernel like all its own traffic.
//
// On veth: frames sent by local sockets on a veth carry a partial L4
// checksum (checksum offload) that XDP cannot see or finish, so a frame
// the program redirects arrives with a bad checksum unless the sender has
// TX checksum offload off; physical NICs finish the sum in hardware. And the
// kernel redirects into a device only while it advertises the ndo-xmit XDP
// feature, which a veth end has once its peer runs NAPI by an XDP program,
// or by GRO turned on while the peer was up (GRO turned on before the link
// came up does not count): the gate reads the flag (capability.ChooseAttach)
// and the program hands packets routed out of an interface without it to
// the kernel (passed_egress_not_xdp); forced XDP there is refused.
//
// # Address translation
//
// Config.NAT (dataplane/nat.go) is IPv4 source NAT (masquerade or address
// pools) and destination NAT (port forwarding), in XDP and TC alike. For a
// new flow the first matching destination rule translates the destination
// before routing and policy; after routing the first matching source rule
// takes a pool slot (address, port), probing at most 64 slots from a
// random start (fw_nat_ports; no slot: dropped, nat_pool_exhausted). The
// session value holds the translated tuple; replies find the session
// through fw_nat_rev, and both directions are rewritten from the session
// with incremental checksum updates (a zero UDP checksum stays zero; in TC
// the helpers keep a checksum left to offload exact). ICMP echo ids are
// translated like ports, and ICMP errors about a translated flow have
// their quote translated back. Slots return when the datapath or the
// in-kernel sweep ends a session, and the sweep takes back slots whose
// session the Go side deleted. Masquerade follows the egress interface's
// primary IPv4 address through a netlink address subscription (an Apply of
// the running config), and sessions translated to an address the host lost
// end. ResourceStats has a nat_pool row per source-NAT pool (used from
// per-address allocation counts) and one per address in detail.
//
// # Port mirroring
//
// A rule (dataplane.MirrorRule) clones frames arriving on its input to its
// output, the whole L2 frame as received: a VLAN tag included, before the
// firewall rewrites anything. The output may be any interface of the
// namespace, managed or not (a SPAN port); one that does not resolve at
// Apply is skipped with a warning on port_mirroring[i].output.
//
// What is mirrored: every frame the program forwards or drops (a denied
// packet is mirrored like SPAN would: the mirror sees what arrived on the
// port). Frames the program hands to the kernel (ARP, neighbour discovery,
// traffic for the firewall itself, packets waiting for a neighbour, TTL
// expiring) are not: XDP cannot both pass a frame and send a copy, and
// cloning them would need a second program in TC. They are counted
// (mirror_dropped_passed_to_kernel).
//
// How: XDP has no clone helper, but a devmap redirect with BPF_F_BROADCAST
// sends one frame to every device of the map, copying it for all but the
// last. For every (egress, output) pair Apply creates a two-entry array
// devmap: the egress first, with no program, so the frame leaves exactly as
// without mirroring; then the output, with a devmap program
// (xdp_fw_mirror, SEC("xdp/devmap")). The map is picked per packet from a
// hash of maps keyed by the pair, after the FIB named the egress. Before
// anything else the main program stores the first 32 bytes of the frame
// as XDP metadata (32 is the kernel's limit, and every byte the forwarding
// rewrite changes - MACs, the VLAN tag it removes, TTL or hop limit, IPv4
// checksum - lies in them); metadata travels with the frame through the
// redirect and the copy, and the devmap program puts the tag's 4 bytes
// back in front and the 32 bytes over the frame. A dropped frame was never
// rewritten: it is redirected to the output alone (fw_mirror_out), with no
// copy. Sampling (rate N) is a per-CPU countdown per rule in the rule's
// per-CPU counters: no atomic on the datapath, about one in N per CPU.
//
// A frame can arrive with metadata already (measured: live-frames test
// runs recycle pages with the previous run's 32 bytes still attached), so
// the program resizes the metadata to exactly 32 bytes instead of adding.
//
// Why not TC bpf_clone_redirect: frames XDP forwards never reach TC, so the
// mirrored ingress would have to forward in TC (skb) mode. Measured on the
// netlab veth lab (BenchmarkMirrorTCClone against BenchmarkMirrorForwarding,
// docs/benchmarks.md), a bare TC forwarder cloning every frame is
// slower than this program's XDP path mirroring every frame. The
// broadcast copy is a page allocation and a copy per frame in the kernel,
// which is where mirroring's cost goes (the program's own share is small).
//
// The mirror stage. Made on the CPU that received the frame, the clone
// doubles the transmit work there (rate-1 mirroring inline: well under
// half the unmirrored rate, docs/benchmarks.md). So a rule that samples 1 in 4 or more densely hands its
// ingress to a stage: every online CPU gets a cpumap queue of 4096 frames
// running xdp_fw_stage (SEC("xdp/cpumap")), and each CPU hands the frames
// of a mirrored ingress to the next online CPU, whose kthread forwards them
// and makes the clones exactly as xdp_fw would (the same policy, sessions,
// flow cache and broadcast). The receiving CPU keeps the sampling decision
// and the hand-over (8 bytes of metadata: its CPU, the clone decision, the
// rule). Flow control is by credit, computed from a counter the stage
// writes (one cache line per receiving CPU) and read once per credit: with
// more than half the queue in flight the receiving CPU hands frames over
// without a clone (mirror_dropped_primary_backlog), with more than three
// quarters it forwards them itself (mirror_stage_forwarded_inline_packets).
// The queue therefore never overflows, and primary frames are never lost
// for the mirror's sake. Frames of one flow take one path, except across
// those overload transitions, where frames forwarded on the receiving CPU
// may overtake up to 3072 frames still queued. Sparser sampling is cloned
// inline, because handing over only the sampled frames would reorder every
// flow. The datapath never
// writes off a frame it handed over: a stage starved of CPU keeps its
// frames counted in flight (an earlier version wrote them off after 10 ms
// without progress, and a starved kthread then overflowed its queue,
// losing primary frames in a loaded test run). Go writes off what was never
// taken when it makes the queues afresh (mirror_stage_lost_packets).
// Queues exist only while a rule uses the stage. Inline clones instead: on
// one online CPU, with Options.MirrorInline, and when the kernel refuses a
// cpumap queue (an Apply warning; the next Apply tries again). An input
// attached in generic (skb) mode cannot be mirrored at all: a generic
// redirect hands the devmap program an skb without the XDP metadata, so no
// clone could be restored (measured: none arrived), and Apply fails with
// dataplane.ErrNotSupported naming the input. The stage program loads with the rest of the collection:
// cpumap programs need kernel 5.9, which bpf_link XDP attachment needs too.
// At saturation (a flood faster than either CPU forwards,
// BenchmarkMirrorForwarding) primary forwarding keeps about its unmirrored
// rate while the stage sheds most clones; inline, every clone is
// delivered and primary forwarding falls by more than half (figures in
// docs/benchmarks.md). Below saturation both deliver every clone
// (TestMirrorStage: a 1000-frame burst, all handed over, none shed). Counters, scope "mirror": mirror_stage_cpus,
// mirror_stage_handed_packets, mirror_stage_forwarded_inline_packets,
// mirror_stage_lost_packets, mirror_stage_in_flight.
//
// Lossy and bounded: nothing waits for the output. A full transmit ring
// refuses the clone in the kernel, after the program returned; the primary
// copy is a separate frame queued to its own device. In the lab, with the
// mirror port's receive in a thread so that it competes like a slow remote
// port, a port taking a small share of the clones cost the primary nothing
// (TestMirrorSinkSaturated). One
// shared fate remains: if the kernel cannot allocate the page for the copy,
// the broadcast fails and the primary frame is lost too (memory pressure
// only).
//
// Accounting, per rule (scope "mirror <input>-><output>"): every frame of
// the input (mirror_input_packets) is sampled out (in no counter) or ends in
// exactly one of mirrored_packets/bytes (clone handed to the output's
// devmap), mirror_dropped_output_down, mirror_dropped_passed_to_kernel,
// mirror_dropped_short (shorter than 32 bytes), mirror_dropped_other
// (forwarding failed after the rewrite) or mirror_dropped_primary_backlog
// (the stage was behind). The output's link state comes from
// a netlink subscription in the dataplane's namespace: up means
// administratively up with a carrier (mirror_output_up); while it is down
// the program counts instead of cloning. Clones the output's driver refuses
// (ring full) are counted by the driver: the backend reports its XDP
// transmit errors as xdp_xmit_errors, scope "mirror_output <output>" (veth's
// tx_queue_<n>_xdp_xmit_errors; absent for drivers that name them
// otherwise), so mirrored_packets = received + xdp_xmit_errors on a
// dedicated SPAN port. Not counted anywhere: clones lost in the moment
// between a link going down and the netlink event (a device that is not up
// is skipped by the broadcast silently, and veth drops frames for a peer
// without NAPI without counting them).
//
// Mirroring is not part of the two-slot policy switch: Apply writes it
// after everything else of the new config and just before the policy flip
// (broadcast maps first, then the rules, then stale maps are removed). New
// rules then run for a moment under the old policy, which is harmless:
// mirroring does not depend on the verdict. Should one of those writes, or
// the flip, fail, the previous rules are written back, with their counters
// (a new rule never takes a running rule's counter index while any other
// is free), and Apply returns the error.
//
// # Policy replacement
//
// Every config-dependent map (interface zones, zone-pair rule index, rules,
// timeouts) has two slots. Apply writes the inactive slot completely, then
// flips a one-element array that the program reads once per packet, so a
// packet sees either the old or the new configuration, never a mix, and a
// denied flow is never allowed in between.
//
// After the flip Apply waits until every program run that may have read the
// old value has finished, so that the next Apply can rewrite that slot: XDP
// runs inside an RCU read-side section, and updating an element of a
// one-element map-in-map (created for this, not used by the program) makes
// the kernel synchronize_rcu() before the syscall returns: one RCU grace
// period, short on an idle machine, longer under load; should the
// map-in-map be unavailable Apply sleeps 50 ms instead. It also means that when Apply
// returns, every packet runs the new configuration.
//
// # Outliving the process
//
// With Options.PinDir (fwd sets it by default; library users who ask for
// nothing get no pinning) every map is pinned under the directory, every
// interface's bpf_link under PinDir/links, and a meta map (fw_meta) records
// the layout version, a fingerprint of the map shapes, the generation and
// the zone ids. A process that dies (kill -9, OOM, a panic) leaves the
// kernel enforcing the last applied config with its sessions; the
// in-kernel bpf_timer sweep keeps expiring idle sessions, so the table
// does not only fill. The directory is held with a flock while a Backend
// runs it (internal/pindir): a second New with it fails with
// dataplane.ErrPinnedInUse naming the holder's pid, and the kernel drops
// the hold when the holder dies.
//
// New with the same PinDir adopts it: the layout is checked first (a
// different layout version or map shapes fail with ErrIncompatiblePin
// naming what differs, and nothing running changes; ReplaceIncompatible
// replaces it instead, losing its sessions), then this build's programs
// are loaded over the pinned maps and every pinned link is moved to them
// with one atomic update each, so no packet meets an unfiltered interface.
// Sessions, counters and the generation continue; port mirroring is
// cleared until the next Apply reprograms it. Close removes the pins (and
// so detaches everything); Release leaves them, enforcing, for an upgrade;
// RemovePinned removes an orphan. docs/failure-model.md has the whole
// table.
//
// # Errors
//
//   - An invalid config: the *dataplane.ConfigError from Validate, unchanged.
//   - A config needing features this backend lacks (static routes, queue
//     selection), more than Limits (policy terms per zone pair and in all,
//     zones, interfaces, mirror rules, mirror pairs), a tables.flow_cache
//     other than the fixed FW_FLOW_CACHE_SLOTS, or any tables.neighbors
//     (next hops come from the kernel's neighbour table): a
//     *dataplane.NotSupportedError (matches dataplane.ErrNotSupported)
//     listing every reason. MemoryCost says what a config's maps take;
//     the capability gate refuses one beyond its memory budget.
//   - A mirror output that does not exist: a warning in the ApplyResult,
//     the rule is skipped.
//   - A mirror input attached in generic (skb) XDP mode (the driver has no
//     native XDP, or Options.ForceGenericXDP): an error matching
//     dataplane.ErrNotSupported that names the input.
//   - An interface that does not exist: a *dataplane.ConfigError whose
//     problems name the field (interfaces[i].name).
//   - After Close: dataplane.ErrClosed.
//   - Kernel failures are wrapped with %w so the errno stays matchable.
//
// Whatever the error, the running generation is unchanged: programs stay
// attached, the active slot is untouched and the previous mirroring runs.
//
// # Concurrency
//
// A *Backend is safe for concurrent use. Apply calls are serialised;
// ResourceStats and Sessions run concurrently with Apply and with the
// datapath (they read maps, the program takes no lock); ClearSessions is
// serialised with Apply. Close waits for a running Apply, then detaches
// everything and removes what it pinned; it is idempotent and safe on a
// nil *Backend. Without Options.PinDir nothing is pinned, so a crashed
// process leaves no program attached (the bpf_links die with it) and the
// kernel then forwards unfiltered: fail open, which is why fwd pins by
// default; with it the dataplane outlives the process (see "Outliving the
// process").
package ebpfbackend
