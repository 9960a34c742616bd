package capability

import (
	"fmt"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/limits"
)

// DefaultMemoryShare is the share of the host's memory a dataplane may
// take when the request sets no budget: half. A firewall host runs more
// than its dataplane (routing daemons, the control plane, the kernel's own
// tables), and a config that asks for more is far more often a typo (an
// extra digit in tables.sessions) than a plan. Request.MemoryBudget
// overrides it.
const DefaultMemoryShare = 0.5

// MemoryFunc says what cfg would make a backend allocate on host h,
// without allocating it.
type MemoryFunc func(cfg *dataplane.Config, h *Host) (dataplane.MemoryCost, error)

// budget returns the memory budget of a request on a host, and how it was
// set, or 0 when there is none (no budget asked and the host's memory is
// unknown).
func budget(req Request, h *Host) (uint64, string) {
	if req.MemoryBudget > 0 {
		return req.MemoryBudget, "the requested budget"
	}
	if h == nil || h.MemoryBytes == 0 {
		return 0, ""
	}
	return uint64(float64(h.MemoryBytes) * DefaultMemoryShare),
		fmt.Sprintf("%.0f %% of the host's %s", DefaultMemoryShare*100, FormatBytes(h.MemoryBytes))
}

// checkLimits is Evaluate's look at the backend's declared limits.
func checkLimits(cfg *dataplane.Config, b Backend) []string {
	return limits.Check(cfg, nil, b.Limits, string(b.Mode))
}

// checkMemory adds the memory verdict to v: a reason when cfg's cost on
// the backend exceeds the budget, a note with the figure otherwise.
// Nothing is allocated: the backend's Memory function computes the cost
// from the config and its own declarations.
func checkMemory(v *Verdict, cfg *dataplane.Config, h *Host, b Backend, req Request) {
	if b.Memory == nil {
		return
	}
	cost, err := b.Memory(cfg, h)
	if err != nil {
		v.Notes = append(v.Notes, fmt.Sprintf("memory cost unknown: %v", err))
		return
	}
	total := cost.Total()
	limit, how := budget(req, h)
	big := cost.Largest()
	switch {
	case limit == 0:
		v.Notes = append(v.Notes, fmt.Sprintf("memory: %s (host memory unknown, no budget)", FormatBytes(total)))
	case total > limit:
		v.Reasons = append(v.Reasons, fmt.Sprintf("memory: the config needs %s on the %s backend, over the budget of %s (%s); largest part %s: %s (%s)",
			FormatBytes(total), b.Mode, FormatBytes(limit), how, big.Name, FormatBytes(big.Bytes), big.Detail))
	default:
		v.Notes = append(v.Notes, fmt.Sprintf("memory: %s of a %s budget (%s)", FormatBytes(total), FormatBytes(limit), how))
	}
}

// FormatBytes writes a byte count in binary units, e.g. "12.3 GiB".
func FormatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
