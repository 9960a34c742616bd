// Package netlab builds real-kernel test topologies for fwplane: network
// namespaces joined by veth pairs, with addresses, routes and forwarding
// configured, plus the tools tests use to drive and observe traffic through
// them: socket round trips, a BPF_PROG_RUN live-frames flood generator
// (one flow, or many flows and SYN floods: [FloodFlows], [Lab.ClientFlood];
// the server's answers to them, e.g. SYN-ACKs: [Lab.ReplyFlood] with
// [Lab.AddClientNeighbors]; paced: [Flood].Rate), TCP handshakes at a
// chosen rate ([Handshakes]), bulk TCP ([TCPBulk], [IPerf3]), an XDP
// packet counter and an AF_PACKET capturer; the kernel's own counters
// ([ReadVethDrops], [ReadChecksumErrors], [ReadOffloads],
// [ConntrackFlows]); and the benchmark harness that compares every
// dataplane with what a firewall is compared with, kernel forwarding and
// nftables with conntrack ([Lab.InstallNftables], [BenchBaselines],
// scripts/bench-baselines.sh and scripts/bench-sessions.sh).
//
// Everything runs against the real kernel; nothing is mocked. Creating a
// [Lab] needs CAP_SYS_ADMIN and CAP_NET_ADMIN, the flood and counter need
// CAP_BPF as well (tests use [NewT], which skips or fails via
// internal/testutil).
//
// # Topology
//
//	Client ──veth── Firewall ──veth── Server
//	                   │
//	                 veth (Options.MirrorSink)
//	                   │
//	                 Sink
//
// The firewall namespace forwards IPv4 and IPv6 in the kernel as a baseline;
// an XDP program attached by a firewall backend takes over from it. Every
// namespace and interface name carries a random suffix, so labs in parallel
// test packages never collide; namespace names also carry their owner
// (see Cleanup).
//
// # Forwarding through XDP on veths
//
// Every lab veth has TX checksum offload off, so socket traffic carries
// complete L4 checksums and survives being redirected by XDP (a physical
// NIC would finish the sum itself). The kernel redirects into a veth end
// only while that end advertises the ndo-xmit XDP feature, which it gets
// when its peer runs NAPI by an XDP program, or by GRO turned on while the
// peer is up. GRO is on for every end, but turned on before the link is
// up, which does not set the flag: attach a pass-through [Counter] (nil
// options) to every end that must receive forwarded frames.
//
// [Options.KernelVethDefaults] keeps the ends as the kernel makes them
// (GRO off, TX checksum offload and TSO on), as users' containers have
// them: then sockets send partial checksums and 64 KB GSO segments, and an
// end without NAPI ([RunsNAPI]) refuses frames XDP redirects into its
// peer. Tests of that world read [ReadChecksumErrors] at the receiver.
//
// # Exact counts under noise
//
// A veth pair drops frames for reasons outside any program under test:
// its peer's 256-frame ring is full while the receiving CPU is busy
// elsewhere (a loaded machine). An exact count adds back what
// [ReadVethDrops] says the kernel dropped, and filters by port so the
// stacks' own ND/MLD frames never count.
//
// # Cleanup
//
// [Lab.Close] removes everything the lab created: veth pairs, namespaces
// (with whatever a test attached inside them) and nothing else; it is safe
// to call more than once and on nil. [New] cleans up after itself when it
// fails part-way. [NewT] registers Close with tb.Cleanup.
//
// A process killed before Close (SIGKILL, a test binary whose output pipe
// closed) cannot clean up, so every namespace name carries its owner's pid
// and start time (fwp-<suffix>-<role>-<pid>-<start>), and [New] first
// runs [Sweep]: namespaces whose owner no longer runs are removed, with
// their veths (a lab never puts one in the root namespace) and any
// process left inside them; pin directories made by [PinDir] likewise.
// What a live process owns, and names without an owner (older labs, other
// tools), are never touched, so labs of parallel test binaries are safe.
// Helper processes (iperf3, nft) are started with Pdeathsig.
//
// Counters,
// capturers, echo servers and floods are owned by the caller and must be
// closed (or stopped) before or after the lab; closing the lab first makes
// their interfaces vanish, which they tolerate.
//
// # Concurrency
//
// A Lab's exported fields are read-only after New returns; its methods are
// safe for concurrent use. [NS.Do] may be called from many goroutines at
// once: each call runs on its own OS thread switched into the namespace.
// Goroutines started inside fn do NOT inherit the namespace, but sockets
// and links created inside fn stay bound to it and may be used from any
// goroutine afterwards. [Counter] and [Capturer] methods are safe for
// concurrent use; Close may interrupt a blocked read. A [Flood] value may be
// run concurrently with itself: each Run loads its own program.
//
// # Errors
//
// Errors wrap the kernel's errno with %w ("verb noun: %w"), so callers can
// match e.g. unix.EPERM or ebpf.ErrNotSupported with errors.Is.
package netlab
