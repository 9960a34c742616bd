// Package xsk is the kernel-facing layer of the userspace (AF_XDP) backend:
// the XDP shim that steers an interface's frames to AF_XDP sockets, and the
// Binding that owns one such socket, its UMEM and its four rings.
//
// # Shim
//
// [LoadShim] attaches bpf/xsk_shim.c to an interface through a bpf_link
// (cilium/ebpf link.AttachXDP), native mode first, generic as a reported
// fallback ([Shim.Mode]). A bpf_link never replaces another program (attach
// fails with EBUSY instead), and, unless pinned, is released when its last
// file descriptor closes.
// IPv4/IPv6 frames (untagged or with one 802.1Q/802.1ad tag) go to the
// socket of the queue they arrived on; ARP and other non-IP, IPv6 neighbour
// discovery (ICMPv6 133-137) and frames to the firewall's own addresses
// ([Shim.SetLocalAddrs]) go to the kernel. A queue without a ready socket
// drops IP frames (fail closed). [Shim.Counters] reports each verdict.
//
// With [ShimOptions.PinDir] the shim's maps and its link are pinned, so it
// stays attached when the process dies; its sockets close with the process
// and the kernel removes them from the XSKMAP, so transit frames are
// dropped. Each queue's worker calls [Shim.Beat] (a store into the mmapped
// heartbeat map); a served queue whose heartbeat is older than
// [ShimOptions.HeartbeatLimit] drops its transit frames too
// (drop_heartbeat_stale), which covers a process that is alive but stuck.
// [PrepareAdopt] and [Adoption.Commit] take a pinned shim over (the link is
// moved to this build's program in one atomic update), [Shim.Release]
// leaves it pinned, [Shim.Close] and [RemovePinnedShim] remove it.
//
// # Binding
//
// A [Binding] is one AF_XDP socket bound to an (ifindex, queue), with its
// own UMEM shared by RX and TX. Every UMEM frame is in exactly one state —
// free, fill ring, RX ring, caller-owned, TX ring, awaiting completion —
// and [Binding.Stats] reports the counts, which always add up to the total,
// with the ring depths and the kernel's XDP_STATISTICS.
//
// The datapath calls are non-blocking and bounded: [Binding.Receive],
// [Binding.Release], [Binding.Refill], [Binding.AllocTX],
// [Binding.Transmit], [Binding.Kick], [Binding.Complete]. [Binding.Poll]
// waits with a timeout. Received frames stay the caller's until Release or
// Transmit; a worker loop is Receive, process, Release/Transmit, Complete,
// Refill.
//
// [Options.MirrorFrames] adds a separate pool of frames to the UMEM that
// only [Binding.AllocMirror] hands out (port-mirror clones): they never
// enter the fill ring or the free stack [Binding.AllocTX] uses, return to
// the pool after Complete or Release, and are counted in FrameStats like
// any frame (free while in the pool). [Binding.Enqueue] is Transmit
// without the kick.
//
// # Concurrency
//
// A Binding is used by one worker goroutine: the datapath methods must not
// be called concurrently with each other or with Close. [Binding.Stats]
// may be called from any goroutine at any time, including during Close: it
// reads ring indexes atomically and frame states through a sequence counter
// the worker bumps without ever waiting, so the worker takes no lock.
// [Binding.Kick], [Binding.TXPending] and [Binding.TXConsumed] read only
// the shared ring indexes and may run concurrently with the producer (the
// kernel serialises sendto) and with Close (they take the read side of
// the lock Close holds while it unmaps). A [Shim] is safe for concurrent
// use.
//
// # Errors
//
// Errors wrap a sentinel of this package ([ErrClosed], [ErrInvalidOptions],
// [ErrLinkDown], [ErrQueueTaken], [ErrFrameState]) and/or the kernel's
// errno, matched with errors.Is. A link going down surfaces as
// [ErrLinkDown] from Transmit or Kick, never as a panic; the binding stays
// usable and the queued frames leave once the link is back. Close is safe
// on nil and idempotent.
//
// # Why not more of github.com/asavie/xdp
//
// asavie/xdp v0.3.3 was the intended base for sockets, UMEM and rings. It
// is not used at run time, for these reasons (each replacement is commented
// where it lives):
//
//   - Close never unmaps its four ring mappings. Each mapping holds a
//     reference to the socket file, so the socket stays bound to its queue
//     until the process exits and every later bind on that queue fails with
//     EBUSY; a backend that rebinds after a link flap or a config change
//     cannot use it. TestAsavieCloseLeavesQueueBound keeps this measured.
//     Here Close unmaps every ring and the UMEM, then rebinding works
//     (bind's short EBUSY window is retried with bounded backoff).
//   - NewSocket binds with package-global flags (no XDP_USE_NEED_WAKEUP
//     without a data race) and wraps errors with %v, so EBUSY cannot be
//     detected with errors.Is. Here bind uses need_wakeup and the ring
//     flags word from XDP_MMAP_OFFSETS.
//   - Transmit kicks once and panics on ENETDOWN/ENOBUFS; Kick here loops
//     while copy mode's 32-frame budget leaves frames behind and returns
//     ErrLinkDown.
//   - GetDescs scans every frame's flag per call and Receive marks frames
//     free while the caller still holds them; here a free stack and
//     per-frame ownership states.
//   - Stats dereferences nil without an RX ring; here XDP_STATISTICS is
//     read directly (all six fields).
//   - Ring indexes are plain loads/stores with fences commented out,
//     correct only on x86; here sync/atomic.
//   - Program.Attach uses legacy netlink XDP attach (replaces silently,
//     survives a crash); the shim uses a bpf_link.
//
// What asavie/xdp does right — the order of setsockopt calls, the mmap
// offsets, the descriptor layout — is what the kernel ABI dictates, and the
// code here follows the same sequence.
package xsk
