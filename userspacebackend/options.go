package userspacebackend

import "time"

// Defaults of Options.
const (
	// DefaultTXBudget raises copy mode's frames per sendto from the
	// kernel's 32: fewer syscalls per forwarded batch.
	DefaultTXBudget = 256
	// DefaultCacheRefresh bounds how long a flow-cache entry (egress, MACs)
	// is reused before the route and neighbour tables are asked again,
	// like the eBPF backend's one-second FIB cache.
	DefaultCacheRefresh = time.Second
	// DefaultIdlePoll is how long an idle worker sleeps in poll(2) before
	// it looks at its stop flag and link state again. Frames wake it at
	// once.
	DefaultIdlePoll = 10 * time.Millisecond
	// DefaultHeartbeatLimit is how long a queue's worker may go without
	// a heartbeat before the shim drops the queue's transit frames. A
	// dead process's queues drop at once anyway (its sockets are gone);
	// the limit is for a process that is alive but stuck, and it must be
	// longer than a healthy worker's longest pause on a busy host:
	// measured on the 2-vCPU test machine with stress-ng on one CPU and
	// the eBPF backend's flood tests running beside the userspace ones,
	// worker loops paused up to 379 ms, and a 300 ms limit dropped
	// frames of healthy workers in five tests.
	DefaultHeartbeatLimit = time.Second
)

// Options configure a Backend. A nil *Options means the defaults.
type Options struct {
	// NetNS is the path of the network namespace the dataplane works in
	// (e.g. /var/run/netns/fw); "" means the caller's current one.
	// Interfaces are resolved, the shim attached and sockets bound there.
	NetNS string
	// ForceGenericXDP attaches the shim in generic (SKB) mode. Meant for
	// tests and drivers whose native XDP is broken.
	ForceGenericXDP bool
	// TXBudget is XDP_MAX_TX_SKB_BUDGET for every socket; 0 means
	// DefaultTXBudget.
	TXBudget uint32
	// CacheRefresh is the flow-cache refresh period; 0 means
	// DefaultCacheRefresh.
	CacheRefresh time.Duration
	// IdlePoll bounds one idle wait of a worker; 0 means DefaultIdlePoll.
	IdlePoll time.Duration
	// SessionExpireInterval is how often idle sessions are swept; 0 means
	// one second, negative disables the sweep (sessions then expire
	// lazily, when a lookup finds them).
	SessionExpireInterval time.Duration

	// MirrorReserve is the mirror budget of every mirror output binding:
	// UMEM frames added to its socket that only port-mirror clones use, so
	// the frames clones hold at once never exceed it and never come from
	// the frames RX and forwarding use. 0 means DefaultMirrorReserve on a
	// managed interface and half the TX ring on a SPAN port (a mirror
	// output that is not a managed interface).
	MirrorReserve uint32

	// PinDir, when set, pins every interface's shim (its bpf_link and
	// maps) under this bpffs directory (e.g. /sys/fs/bpf/fwplane/NAME), so
	// that the firewall fails closed when the process dies: the shims stay
	// attached, drop transit frames (their sockets are gone, then their
	// heartbeat is stale: shim_drop_heartbeat_stale), and pass ARP, ND and
	// frames to the firewall's own addresses to the kernel. New with the
	// same PinDir adopts them (this build's program over the pinned maps,
	// the generation continued) and the first Apply binds new sockets.
	// Sessions are not pinned: they are lost with the process. The
	// directory is held (flock) while this Backend runs: a second New with
	// it fails with dataplane.ErrPinnedInUse. Close removes it; Release
	// leaves it. Empty (the default for library users) pins nothing: the
	// shims leave with the process and the kernel then forwards
	// unfiltered.
	PinDir string
	// ReplaceIncompatible makes New replace a pinned dataplane whose
	// layout this build cannot adopt (ErrIncompatiblePin) instead of
	// failing: its shims are removed, and the interfaces carry none (the
	// kernel forwards them) until the first Apply.
	ReplaceIncompatible bool
	// HeartbeatLimit is how old a queue's heartbeat may be before its
	// shim drops transit frames; 0 means DefaultHeartbeatLimit, negative
	// turns the check off (a dead process's queues then still drop, as
	// "no socket", but a stuck one's fill their rings). It must be more
	// than twice IdlePoll.
	HeartbeatLimit time.Duration

	// testLayoutVersion overrides the pinned layout version (tests
	// simulating an upgrade).
	testLayoutVersion uint32

	// testTXRing overrides the TX (and completion) ring size, so a test
	// can make egress much slower than ingress.
	testTXRing uint32
}
