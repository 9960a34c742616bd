// Package userspacebackend is fwplane's second dataplane: forwarding in Go
// over AF_XDP sockets, with the same policy semantics as the eBPF backend
// (see dataplane.Config; TestConformance runs the shared conformance suite,
// internal/dptest, whose known differences are listed in
// dptest.Divergences).
//
// # Datapath
//
// A small XDP shim (internal/xsk, bpf/xsk_shim.c) on every managed
// interface redirects IPv4/IPv6 frames to the AF_XDP socket of the queue
// they arrived on and passes ARP, IPv6 neighbour discovery and frames to
// the firewall's own addresses to the kernel. The local-address map is
// programmed from netlink (every address of the namespace) at Apply and on
// every address change. A queue without a ready socket drops IP frames:
// fail closed while a binding is (re)starting.
//
// Each (interface, queue) has one binding: an AF_XDP socket with its own
// UMEM, and one worker goroutine that owns it. Per batch (userspace.
// batch_size frames) a worker loads the current generation once (an
// atomic.Pointer to an immutable snapshot: policy set, managed ports,
// neighbour table), then for each frame: parse (internal/pkt), look the
// (ingress, tuple) up in its flow cache (internal/flowcache) and touch the
// cached session; on a miss look up the session (internal/session, both
// directions share one entry), ask the route table for the egress and next
// hop, drop when the egress is not managed (routing around the zones would
// bypass the policy), and for a new flow ask policy.Set.Decide and insert
// the session. The next hop's MAC comes from the neighbour table
// (internal/neigh, a netlink-fed mirror of the kernel's); without an entry
// the worker finishes the packet as for forwarding and writes it to a raw
// socket bound to the chosen egress (kernelpass_linux.go,
// passed_no_neighbor): the kernel resolves the next hop, holds the packet
// meanwhile and sends it, as it does for the eBPF backend's XDP_PASS, so
// a flow's first packet is not lost. The kernel's output path only
// routes it out of that egress; it never judges or forwards it around
// the dataplane. When the hand-off queue is full the packet is dropped
// (dropped_no_neighbor); the flow's next packets find the entry.
// Non-first fragments are dropped (no ports to check). A VLAN tag is
// removed on the way out: egress is the routed, untagged interface.
//
// # What the kernel's forwarding path would do
//
// The eBPF backend hands a packet it must not forward as it is (TTL
// expired, above the egress MTU) to the kernel, which answers or
// fragments. A frame in an AF_XDP socket cannot be handed back to the
// kernel's forwarding path, so this backend does the same itself, with
// the same outcome on the wire (icmp_linux.go):
//
//   - TTL or hop limit <= 1 on a packet that would be forwarded (its
//     session or the policy allows it): dropped (dropped_ttl_expired) and
//     answered with ICMP time exceeded (icmp_time_exceeded_sent) from the
//     firewall's address on the ingress link, to the previous hop's MAC.
//   - Above the egress interface's MTU: IPv4 without DF is fragmented
//     (fragmented; fragments count in forwarded); IPv4 with DF and IPv6
//     are dropped (dropped_too_big) and answered "fragmentation needed" /
//     "packet too big" with the MTU (icmp_too_big_sent). The MTU is
//     followed at run time (link notifications, the poll).
//   - Errors are rate-limited like the kernel's own (1000/s, burst 50,
//     overall; one per second, burst 6, per destination, except ICMPv6
//     packet too big): icmp_errors_rate_limited. None is sent about an
//     ICMP error or to a non-unicast source, nor without an address of
//     the packet's family on the ingress link (icmp_errors_no_source).
//   - ICMP errors in transit (unreachable, time exceeded, parameter
//     problem, packet too big) never create or refresh a session: one that
//     quotes a live session and travels to the quoted packet's sender is
//     forwarded (related_icmp), any other is dropped
//     (dropped_icmp_unrelated), whatever the policy says about ICMP.
//
// # Checksums left to offload
//
// A socket on an interface with TX checksum offload (veths as the kernel
// makes them, containers) sends TCP and UDP with a partial checksum (the
// pseudo-header sum only), and an AF_XDP copy keeps it partial: forwarded
// as it is, the receiver drops it as corrupt. Every forwarded TCP/UDP
// packet whose checksum field equals its folded pseudo-header sum has
// its checksum completed before transmit (checksums_completed); a
// complete checksum equal to that value by chance (1 in 65 536) is
// rewritten with the same value. Cost: 5 ns per frame to check, about
// 110 ns to complete a 1500-byte one (docs/benchmarks.md). The eBPF
// backend attaches at TC on such interfaces instead.
//
// # Frame size and MTU
//
// Without AF_XDP multi-buffer (not used) a received frame must fit one
// UMEM frame less the kernel's 256-byte headroom. Apply picks 2048-byte
// frames while every managed interface's MTU is at most 1774, else
// 4096-byte ones, and refuses an interface whose MTU exceeds [MaxMTU]
// (3822) with a *dataplane.NotSupportedError naming it and its MTU. An
// MTU that grows at run time reopens every socket with larger frames
// (up to MaxMTU). A veth refuses a native XDP program without
// multi-buffer support once its peer's MTU exceeds 3506: the shim then
// runs in generic mode, with Apply's warning.
//
// # Sessions
//
// The session model is dataplane/session.go's, kept by internal/session
// (see its doc for the table's side). Per frame, after the flow cache:
// the session lookup applies the packet (zone check, TCP flags, idle
// timer); a packet with a live session's tuple from an interface of
// neither of its zones is dropped (dropped_zone_mismatch) and changes
// nothing. A miss goes on as a new flow: route, fragment and egress
// checks first (so an unroutable packet counts as dropped_no_route in
// both backends), then the SYN check (a TCP packet other than a pure SYN
// is dropped as dropped_tcp_not_syn, or, with sessions.tcp_pickup and no
// RST, creates an established, unassured session), then the policy, then
// the session, recording the ingress and egress interfaces' zones. A full
// table early-drops an unassured session (session_early_drop) or refuses
// the flow (session_table_full). Zones are numbered once per backend and
// never renumbered, so a session keeps its zones' names across Applies.
//
// The flow cache only serves packets that cannot change a session's
// state: TCP SYN, FIN and RST always take the full path, and an entry is
// made only for an established, assured TCP flow, a replied flow, or the
// initiator's direction of an unreplied one.
//
// On Apply every session is judged as its first packet would be under
// the new config (its initiator's tuple, from an interface of its
// FromZone to one of its ToZone); those the new policy denies, or one of
// whose zones is gone from the config, are ended right after the swap
// (sessions_ended_by_policy) unless sessions.keep_on_policy_change. Their
// next packet meets the new policy. [Backend.ClearSessions] ends the
// sessions a filter selects (sessions_cleared).
//
// Flow-cache entries (egress, MACs, session ref) are reused for at most
// Options.CacheRefresh (one second by default, like the eBPF backend's FIB
// cache) and dropped by every Apply: the caches share an epoch that both
// bump.
//
// # Address translation
//
// dataplane/nat.go's semantics (Supported declares FeatureSourceNAT and
// FeatureDestinationNAT; IPv6 rules are refused: FeatureNATv6). Rules
// apply to IPv4 packets; IPv6 flows are forwarded as the policy says,
// untranslated. For the first packet of a flow: the first destination
// rule matching it (ingress zone, protocol, address, port) translates its
// destination before routing; the route and the policy see the
// translated destination; after routing, the first source rule matching
// (zones of the route, original source, protocol) takes a slot: masquerade
// to the egress interface's primary IPv4 address (re-read at every new
// translation; the link watcher and the poll keep it current), or an
// address of the pool (picked by the flow's source, so a client keeps one
// address while it has room) and a port (the flow's own when free, else
// the next free one from a moving cursor; internal/natpool: no scan, tens
// of nanoseconds at 99.9 % fill). One slot allocator per address, shared
// by every rule naming it: a slot is never shared. A flow that finds no
// slot is dropped (nat_pool_exhausted); a protocol other than TCP, UDP
// and ICMP echo selected by a rule is dropped (dropped_nat_unsupported).
//
// The session holds both tuples (internal/session: the translated one in
// a NAT extension, found through a reverse index, so the responder's
// replies find the session on a miss of its own key). Every packet is
// rewritten from the session, in place after the checksum completion and
// before the TTL decrement: addresses, ports or the echo identifier, with
// incremental IP, TCP, UDP and ICMP checksum updates (a UDP checksum of
// zero stays zero). The flow cache serves translated flows too; it only
// says "translated", the rewrite is read from the session each time. An
// ICMP error quoting a translated flow (by either of its tuples) is
// translated back: the quote returns to the form its sender sent, every
// quoted checksum is updated, the error goes to the quote's sender
// (nat_icmp_errors_translated); the firewall's own errors (TTL, MTU)
// quote the packet as received and need none. A packet to a pool address
// that is no session's reply is dropped (nat_reverse_miss); a packet with
// a translated flow's tuple in a form its endpoints never send (a reply
// to the inside address) is dropped without touching the session
// (dropped_nat_untranslated); a new flow whose translated tuple is
// already another session's is dropped (dropped_nat_clash).
//
// The slot returns when the session ends, however it ends (idle timeout,
// closed timeout after RST or FINs, early drop, ClearSessions, the end of
// a session a new policy denies). NAT rule changes apply to new flows;
// translated sessions keep their translation until they end (as
// conntrack does; clear them to apply a new rule at once). When an
// egress interface's primary address goes away, the sessions masqueraded
// to it end (nat_masquerade_sessions_ended), as with Linux's MASQUERADE.
//
// The firewall's own addresses: a masquerade address, and a pool or
// port-forwarding address configured on an interface, receive both
// translated flows' replies and the firewall's own traffic. The shim
// (bpf/xsk_shim.c, "Address translation") hands a frame to such an
// address to the dataplane unless a local socket owns it (TCP: an
// established, time-wait or listening socket; UDP: a bound socket; an
// ICMP error: a local socket sent the quoted packet); echo requests go to
// the kernel unless a destination rule forwards ICMP. So the firewall
// stays reachable and its own connections work on a masqueraded address,
// but a port its own unconnected UDP socket is bound to is the kernel's:
// keep net.ipv4.ip_local_port_range apart from the NAT ports on an
// address used for both, and the firewall's own pings from a masqueraded
// address lose their replies to the dataplane.
//
// Reports: one nat_pool row per source rule (scope: its name or nat[i];
// capacity addresses x ports; used: that space's slots held, by any
// rule), a detail row per address ("name/address"); Sessions lists the
// translated tuple and the rules ("dnat,snat"; "#n" for a rule without a
// name). Memory (MemoryCost "nat"): 24 bytes per session slot and about
// 16-32 bytes of reverse index, allocated by the first Apply with a NAT
// rule, and 8.3 KiB per pool address.
//
// # Cross-binding TX
//
// Sockets do not share a UMEM, so forwarding copies the frame into the
// egress socket's UMEM; xsk.Binding's rings are single-producer. The
// handoff is a per-binding mutex that the receiving worker takes once per
// batch and egress binding: it reaps that socket's completions, allocates
// a frame per packet, copies, queues them on the TX ring and kicks. The
// owner takes the same mutex twice per batch (receive; release and refill).
// A mutex was chosen over per-(source, egress) SPSC queues because it needs
// no second copy or frame return path, keeps one frame ledger per socket
// (so the UMEM breakdown stays exact), and with a lock per batch rather
// than per packet its cost is noise next to the sendto the batch needs
// anyway. TX never waits: a packet that finds no free UMEM frame
// (backpressure_drops) or no TX ring slot (tx_ring_full) is dropped and
// counted, so a slow egress cannot stall RX and two workers forwarding
// into each other cannot deadlock (each holds at most one lock at a time).
// RX frames are released to the fill ring after every batch whatever TX
// did, and completions are reaped on every loop by both the owner and
// every producer.
//
// # Port mirroring
//
// A rule (dataplane.MirrorRule) clones what arrives on a managed Input to
// Output. The ingress worker selects frames per batch (rate 0/1: all; N:
// every Nth frame its binding receives, a plain counter in the worker) and
// clones them before classifying the batch, so a clone is the whole L2
// frame as received: before the TTL decrement and the MAC rewrite, an
// 802.1Q/802.1ad tag included (the forwarded copy leaves untagged). Every
// IP frame the shim steers to the socket is mirrored, whatever the policy
// then decides (a denied frame is mirrored too); frames the shim passes to
// the kernel (ARP, neighbour discovery, the firewall's own traffic) are
// not, as they never reach the dataplane.
//
// Output is either a managed interface (its bindings carry the clones; the
// ingress queue picks the egress queue as for forwarding) or any other
// interface of the namespace, a SPAN port: it gets a TX-only binding on
// queue 0, with no shim. The kernel still needs a fill and a completion
// ring to bind a UMEM (xsk_validate_queues), so the binding has a 64-slot
// fill/RX pair that nothing ever fills. An Output not found at Apply is
// skipped with a dataplane.Warning (port_mirroring[i].output) and the rest
// applies. A SPAN binding follows its link like any other, and is retired
// when no rule names it.
//
// Budget: clones are copied into a separate pool of UMEM frames of the
// output binding (xsk Options.MirrorFrames, added to the UMEM, never in
// the fill ring or the free stack forwarding uses), so they can never take
// a frame RX or forwarding needs, and each clone is counted once, in its
// real state, in the umem_frames breakdown (which still sums to the
// capacity). Options.MirrorReserve sizes the pool: 256 frames by default
// on a managed output (which also bounds the TX ring slots clones can hold
// there to an eighth of the default ring), half the TX ring on a SPAN
// port. A managed port that becomes an output after its sockets were
// opened has them reopened once, with a pool (a warning says so).
//
// Backpressure: a clone never waits. The output binding's lock is taken
// with TryLock: its holders are the output's own worker and the workers
// forwarding into it, and waiting for them would put the mirror port's
// load on the mirrored ingress's primary path; a second, bounded queue
// per (ingress, output) would need a copy or a frame-return path and a
// second ledger. On a SPAN port the ingress worker only queues the clones
// on the TX ring (Enqueue) and nudges the SPAN binding's own worker, which
// makes the sendto outside the lock (xsk Kick is safe concurrently with
// the producer), so the kernel's copy-mode TX work for clones is not done
// on the primary path either, and the lock is held only for ring updates.
// On a managed output the clones ride that port's Transmit and kick.
// Load shedding: a worker that is behind its own traffic (more than half
// its RX ring still waiting after a batch) makes no clones for that batch,
// so at saturation clones are what gives way, not primary frames
// (measured at saturation on the netlab lab, one flow, rate 1: primary at
// 0.61-0.69 of the unmirrored rate without shedding, 0.97 with it, nearly
// every clone then shed; below saturation every clone is made).
// Every selected frame ends up in exactly one counter of its rule (scope
// "mirror <input>-><output>"): mirrored_packets (queued on the TX ring;
// mirrored_bytes with it) or mirror_dropped_{no_frame (pool exhausted),
// tx_full, output_not_bound (no socket), output_down (link down),
// output_busy (the output's lock was held), primary_backlog (shed)};
// mirror_selected counts them all. A link down on the mirror port, or a
// port too slow for the clones, costs clones, counted, never primary
// frames.
//
// # Failures
//
// A panicking worker is recovered, counted (worker_panics, per binding and
// global) and its socket is torn down and rebound: the UMEM goes with the
// socket, so nothing the panic left half-done can leak. A link that goes
// down (netlink link subscription, with a poll as backstop) has its
// bindings torn down (link_down_teardowns) and rebound when it is back
// (rebinds); a failing bind is retried with backoff and reported as a
// binding in state "failed" with the error.
//
// # When the process dies
//
// Without Options.PinDir the shims are bpf_links that die with the
// process: the interfaces are then unfiltered and the kernel forwards
// them. With it (fwd pins by default) every shim's link and maps are
// pinned under PinDir/shims/<ifindex>-<interface>, with a meta map
// (xsk_meta: layout version, shim map fingerprint, generation); the
// directory is held with a flock while the Backend runs (a second New
// fails with dataplane.ErrPinnedInUse naming the pid). When the process
// dies its sockets close with it and its workers stop beating: the shims
// drop every transit frame (shim_drop_no_socket at first, then
// shim_drop_heartbeat_stale once a queue's heartbeat is older than
// Options.HeartbeatLimit, one second by default), while ARP, neighbour
// discovery and frames to the firewall's own addresses still reach the
// kernel. The firewall fails closed and stays reachable. The counters are
// in the pinned maps, so the next process reports them.
//
// Each worker writes its heartbeat (CLOCK_MONOTONIC) into its queue's slot
// of the shim's mmapped heartbeat map once per eighth of the limit; the
// shim compares it with bpf_ktime_get_coarse_ns (kernel 5.11) for transit
// frames of a served queue, at about 3 ns per frame. A worker alive but
// stuck (a bug, a starved thread) so drops at the shim too, counted on its
// interface; fwctl diagnose names it.
//
// New with the same PinDir adopts the shims: the layout is checked first
// (ErrIncompatiblePin, naming the difference; nothing running changes),
// then every shim is loaded from this build over its pinned maps, and only
// when all are checked is each pinned link moved to this build's program
// (one atomic update each: no frame meets an unfiltered interface). Shims
// of interfaces that no longer exist are removed. The first Apply binds
// new sockets into the pinned XSKMAPs; forwarding resumes as soon as a
// queue's socket is ready (measured: 34-97 ms after New in-process,
// 187-288 ms after an exec'd fwd started). The generation continues.
//
// Sessions live in the process and are lost with it. An established TCP
// connection's next segment is then not a SYN: with sessions.tcp_pickup
// off (the default) it is dropped (dropped_tcp_not_syn) and the
// connection stalls until its endpoints give up; with tcp_pickup on, the
// initiator's next segment opens an unassured established session and it
// carries on. UDP and ICMP flows start again as new flows with their
// initiator's next packet. Close removes the pins (detaching the shims);
// Release leaves them, failing closed, for an upgrade; RemovePinned
// removes an orphan. docs/failure-model.md has the whole table.
//
// # Resources
//
// ResourceStats takes no lock the datapath takes. Aggregate rows:
// umem_frames (capacity = frames of all live bindings, used = frames not
// free, with the breakdown free/fill/rx/tx/completion), fill_ring_empty (fill ring slots without a buffer: high = RX starving),
// worker_queue (RX ring depth), pending_tx (TX ring depth), sessions,
// sessions_unassured (half-open and unanswered sessions against the same
// capacity: a flood shows as a level of its own), flow_cache (all
// workers), neighbors. Detail rows: per binding
// (scope "ifname/qN") umem_frames with the breakdown (it always sums to
// the capacity: the ledger is read under a sequence counter), fill, RX,
// TX and completion ring depth vs size, flow_cache; per session shard
// ("shard/NN") and the fullest shard (scope "global"; which shard and the
// table's max skew are the row's figures "shard" and "max_skew"); per
// neighbour shard. Counters: every datapath drop reason, forwarding and
// session counters, the six XDP_STATISTICS per binding (detail) and
// summed, and the shim's verdicts per interface and summed. Counters of
// retired bindings and closed sockets are kept, so global counters never
// go backwards (a report racing with a link flap may count one socket's
// kernel statistics twice). Sessions come from the table's per-family
// counts, with the unassured count and whether early aging is on.
//
// A report of 4 bindings and 64 shards is about 25 KB of rows, and
// allocating and collecting them is half its cost: a poller that keeps no
// report reads it with [Backend.ResourceStatsInto] (or
// dataplane.ReadResourceStats), which reuses the caller's arrays.
//
// # Config changes
//
// Apply is all-or-nothing: the next generation (policy set, shims on new
// interfaces, sockets on new queues, neighbour table if its size changed)
// is built beside the running one and swapped in with one pointer store;
// any failure undoes what was built and the running generation is
// untouched. Kept interfaces keep their shim and sockets; removed ones are
// retired after the swap. Timeouts (every state's, and the early aging
// factor) and the session switches change in place; a larger
// userspace.batch_size grows every worker's scratch space at its next
// batch, and a new tables.flow_cache replaces every worker's cache at its
// next batch. Changing the session
// table size or shard count, or the UMEM or ring size of running bindings,
// is refused with a *dataplane.NotSupportedError (Close and start a new
// backend), like the eBPF backend's session table size.
//
// # Errors
//
//   - An invalid config: the *dataplane.ConfigError from Validate,
//     unchanged.
//   - A missing interface, or a queue an interface does not have: a
//     *dataplane.ConfigError naming interfaces[i].name or
//     userspace.queues[j].
//   - A config needing features this backend lacks (static routes, IPv6
//     NAT) or an
//     unsupported size change: a
//     *dataplane.NotSupportedError listing every reason (Supported lists
//     the features).
//   - After Close: dataplane.ErrClosed.
//   - Kernel failures (attach, bind) are wrapped with %w.
//
// # Concurrency
//
// A *Backend is safe for concurrent use. Apply and Close are serialised;
// ResourceStats and Sessions run concurrently with them and with the
// workers. Close stops every worker, clears the ready flags, closes every
// socket and detaches every shim (unpinning them when pinned); Release does
// the same but leaves pinned shims attached. Both are idempotent and safe
// on nil.
//
// # Multi-queue NICs and zero-copy
//
// The design is already one binding per (interface, queue), each with its
// own worker, so on a multi-queue NIC the NIC's RSS spreads flows over
// queues and workers, and the session table is sharded so workers on
// different cores rarely share a lock or a cache line. On veth (the test
// lab) AF_XDP runs in copy mode: the kernel copies each frame into the
// UMEM on RX and out of it into an skb on TX, and this backend copies once
// more between the ingress and egress UMEMs. With a zero-copy driver the
// two kernel copies disappear (the NIC DMAs into and out of the UMEM), and
// the remaining copy can go too by giving every socket of one NUMA node a
// shared UMEM (XDP_SHARED_UMEM; one fill and completion ring pair per
// (device, queue)): forwarding then moves a descriptor from an RX ring to
// another socket's TX ring, and frame ownership, not bytes, crosses
// workers, which needs the frame ledger to become per-UMEM rather than
// per-socket. The per-egress lock stays the handoff either way; with many
// queues per egress the ingress worker picks the egress queue by its own
// queue number, so N workers spread over N TX rings.
package userspacebackend
