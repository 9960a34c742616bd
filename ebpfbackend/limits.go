package ebpfbackend

import "github.com/fwplane/fwplane/dataplane"

// Limits of the datapath, mirrored from bpf/include/fw_common.h (a test
// checks them against the loaded map sizes).
const (
	maxRulesPerPair = 256  // FW_MAX_RULES_PER_PAIR
	maxRules        = 4096 // FW_MAX_RULES
	maxZones        = 64   // FW_MAX_ZONES: zone ids 1..63
	maxIfaces       = 256  // FW_MAX_IFACES
	numSlots        = 2    // FW_SLOTS
	flowCacheSlots  = 4096 // FW_FLOW_CACHE_SLOTS
)

// Limits returns the most this backend can program. The capability gate
// refuses a config beyond them before anything is loaded, and Apply
// refuses it with the same reasons. The session tables are bounded by
// memory rather than a count: see MemoryCost.
func Limits() dataplane.Limits {
	return dataplane.Limits{
		Zones:                  maxZones - 1,
		Interfaces:             maxIfaces,
		PolicyTermsPerZonePair: maxRulesPerPair,
		PolicyTerms:            maxRules,
		MirrorRules:            256, // FW_MAX_MIRRORS (maxMirrors)
		FlowCache:              dataplane.TableLimit{Fixed: flowCacheSlots},
		Neighbors: dataplane.TableLimit{NotSized: "it forwards with the kernel's neighbour table " +
			"(size that with the sysctls net.ipv4.neigh.default.gc_thresh3 and net.ipv6.neigh.default.gc_thresh3)"},
	}
}
