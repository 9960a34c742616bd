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
	// SessionReapInterval is how often sessions idle past their timeout
	// are deleted, so the session counts are live flows; 0 means
	// DefaultReapInterval, negative disables reaping (idle entries then
	// leave only when reused or evicted).
	SessionReapInterval time.Duration
	// MirrorInline makes port-mirroring clones on the CPU that received
	// the frame, as the kernel's broadcast redirect does by itself, instead
	// of handing a mirrored ingress to a stage on the next CPU (see
	// "Port mirroring" in the package doc). For measurements, and for
	// hosts where every CPU is busy receiving anyway.
	MirrorInline bool
}
