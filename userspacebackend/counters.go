package userspacebackend

import (
	"sync/atomic"

	"github.com/fwplane/fwplane/dataplane"
)

// Datapath counters, per binding (the worker that owns it) and summed.
const (
	cForwarded = iota
	cSessionHits
	cFlowCacheHits
	cSessionsCreated4
	cSessionsCreated6
	cDropPolicy
	cDropNoRoute
	cDropLocal
	cDropNoNeighbor
	cDropTTL
	cDropParse
	cDropNonIP
	cDropFragment
	cDropEgressUnmanaged
	cDropEgressDown
	cSessionTableFull
	cDropTCPNotSYN
	cDropZoneMismatch
	cTXRingFull
	cBackpressureDrops
	cBackpressureEvents
	cRouteLookups
	cKickErrors
	cWorkerPanics
	cLinkDown
	cRebinds
	cBindErrors
	cRelatedICMP
	cDropICMPUnrelated
	cICMPTimeExceeded
	cICMPTooBig
	cICMPRateLimited
	cICMPNoSource
	cDropTooBig
	cFragmented
	cChecksumsCompleted
	cNATTranslated
	cNATPoolExhausted
	cNATUnsupported
	cNATReverseMiss
	cNATUntranslated
	cNATClash
	cNATICMPTranslated
	cPassNoNeighbor
	numCounters
)

// counterNames are the names ResourceStats reports. Where the eBPF backend
// counts the same event the name is the same.
var counterNames = [numCounters]string{
	cForwarded:           "forwarded",
	cSessionHits:         "session_hits",
	cFlowCacheHits:       "flow_cache_hits",
	cSessionsCreated4:    "sessions_created_ipv4",
	cSessionsCreated6:    "sessions_created_ipv6",
	cDropPolicy:          "dropped_policy",
	cDropNoRoute:         "dropped_no_route",
	cDropLocal:           "dropped_local",
	cDropNoNeighbor:      "dropped_no_neighbor",
	cDropTTL:             "dropped_ttl_expired",
	cDropParse:           "dropped_parse_error",
	cDropNonIP:           "dropped_non_ip",
	cDropFragment:        "dropped_fragment",
	cDropEgressUnmanaged: "dropped_egress_unmanaged",
	cDropEgressDown:      "dropped_egress_down",
	cSessionTableFull:    dataplane.CounterSessionTableFull,
	cDropTCPNotSYN:       dataplane.CounterDropTCPNotSYN,
	cDropZoneMismatch:    dataplane.CounterDropZoneMismatch,
	cTXRingFull:          "tx_ring_full",
	cBackpressureDrops:   "backpressure_drops",
	cBackpressureEvents:  "backpressure_events",
	cRouteLookups:        "route_lookups",
	cKickErrors:          "tx_kick_errors",
	cWorkerPanics:        "worker_panics",
	cLinkDown:            "link_down_teardowns",
	cRebinds:             "rebinds",
	cBindErrors:          "bind_errors",
	cRelatedICMP:         "related_icmp",
	cDropICMPUnrelated:   "dropped_icmp_unrelated",
	cICMPTimeExceeded:    "icmp_time_exceeded_sent",
	cICMPTooBig:          "icmp_too_big_sent",
	cICMPRateLimited:     "icmp_errors_rate_limited",
	cICMPNoSource:        "icmp_errors_no_source",
	cDropTooBig:          "dropped_too_big",
	cFragmented:          "fragmented",
	cChecksumsCompleted:  "checksums_completed",
	cNATTranslated:       dataplane.CounterNATTranslated,
	cNATPoolExhausted:    dataplane.CounterNATPoolExhausted,
	cNATUnsupported:      dataplane.CounterNATUnsupportedProto,
	cNATReverseMiss:      dataplane.CounterNATReverseMiss,
	cNATUntranslated:     "dropped_nat_untranslated",
	cNATClash:            "dropped_nat_clash",
	cNATICMPTranslated:   "nat_icmp_errors_translated",
	cPassNoNeighbor:      "passed_no_neighbor",
}

// counterSet is written by one worker (batched, once per RX batch) and
// read by ResourceStats without a lock.
type counterSet [numCounters]atomic.Uint64

func (c *counterSet) add(local *[numCounters]uint64) {
	for i, v := range local {
		if v != 0 {
			c[i].Add(v)
			local[i] = 0
		}
	}
}

func (c *counterSet) addSet(o *counterSet) {
	for i := range o {
		if v := o[i].Load(); v != 0 {
			c[i].Add(v)
		}
	}
}

// XDP_STATISTICS fields, as reported.
const (
	kRXDropped = iota
	kRXInvalidDescs
	kTXInvalidDescs
	kRXRingFull
	kRXFillRingEmpty
	kTXRingEmpty
	numKernel
)

var kernelNames = [numKernel]string{
	kRXDropped:       "xdp_rx_dropped",
	kRXInvalidDescs:  "xdp_rx_invalid_descs",
	kTXInvalidDescs:  "xdp_tx_invalid_descs",
	kRXRingFull:      "xdp_rx_ring_full",
	kRXFillRingEmpty: "xdp_rx_fill_ring_empty_descs",
	kTXRingEmpty:     "xdp_tx_ring_empty_descs",
}

// kernelCounters accumulates XDP_STATISTICS of sockets that were closed
// (link flaps, rebinds), so a binding's counters survive its sockets.
type kernelCounters [numKernel]atomic.Uint64
