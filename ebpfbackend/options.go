package ebpfbackend

import (
	"time"

	"github.com/fwplane/fwplane/internal/mapcount"
)

// Options configure a Backend. A nil *Options means the defaults.
type Options struct {
	// NetNS is the path of the network namespace the dataplane works in
	// (e.g. /var/run/netns/fw); "" means the caller's current one.
	// Interface names are resolved, and programs attached, there.
	NetNS string
	// CountMethod selects how map fill is counted; the zero value picks the
	// cheapest exact method the kernel offers.
	CountMethod mapcount.Method
	// ForceGenericXDP attaches in generic (SKB) mode instead of trying the
	// driver first. Meant for tests and for drivers whose native XDP is
	// broken.
	ForceGenericXDP bool
	// SessionSweepInterval is the period of the in-kernel sweep that
	// removes expired sessions (and counts unassured ones, and switches
	// early aging); 0 means DefaultSweepInterval, longer for tables above
	// 256 Ki sessions. Negative never arms the sweep: expired sessions then
	// leave only when a packet or an early drop finds them (tests).
	SessionSweepInterval time.Duration
	// PinDir, when set, pins the dataplane under this bpffs directory
	// (e.g. /sys/fs/bpf/fwplane/NAME) so that it outlives the process: a
	// process that dies leaves the kernel enforcing the last applied
	// config with its sessions (the in-kernel sweep keeps expiring them),
	// and New with the same PinDir adopts it (see "Outliving the process"
	// in the package doc). Close removes it; Release leaves it running.
	// Empty (the default for library users) pins nothing: the programs
	// leave with the process.
	PinDir string
	// ReplaceIncompatible makes New replace a pinned dataplane whose
	// layout this build cannot adopt (ErrIncompatiblePin) instead of
	// failing: its links are removed and its sessions are lost; traffic is
	// unfiltered (the interfaces carry no program) until the first Apply.
	ReplaceIncompatible bool
	// MirrorInline makes port-mirroring clones on the CPU that received
	// the frame, as the kernel's broadcast redirect does by itself, instead
	// of handing a mirrored ingress to a stage on the next CPU (see
	// "Port mirroring" in the package doc). For measurements, and for
	// hosts where every CPU is busy receiving anyway.
	MirrorInline bool
}
