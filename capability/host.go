package capability

import (
	"errors"
	"fmt"
	"sort"

	"github.com/fwplane/fwplane/dataplane"
)

// ErrNotSupported is dataplane.ErrNotSupported: a probe returning an error
// that matches it means the feature is absent.
var ErrNotSupported = dataplane.ErrNotSupported

// ProbeName names a host capability.
type ProbeName string

const (
	ProbeBPFSyscall    ProbeName = "bpf_syscall"
	ProbeXDPProgram    ProbeName = "xdp_program"
	ProbeXDPLink       ProbeName = "xdp_bpf_link"
	ProbeFIBLookup     ProbeName = "xdp_fib_lookup"
	ProbeDevMap        ProbeName = "devmap"
	ProbeLRUHash       ProbeName = "lru_hash"
	ProbeBPFTimer      ProbeName = "bpf_timer"
	ProbeBatchOps      ProbeName = "map_batch_ops"
	ProbeMapIterKfunc  ProbeName = "map_iter_elem_count_kfunc"
	ProbeXSKMap        ProbeName = "xskmap"
	ProbeAFXDPSocket   ProbeName = "af_xdp_socket"
	ProbeLiveFrameTest ProbeName = "xdp_live_frames"
	ProbeTCX           ProbeName = "tcx_link"
)

// MinKernel is the first upstream kernel expected to pass each probe.
var MinKernel = map[ProbeName]string{
	ProbeBPFSyscall:    "3.18",
	ProbeXDPProgram:    "4.8",
	ProbeXDPLink:       "5.9",
	ProbeFIBLookup:     "4.18",
	ProbeDevMap:        "4.14",
	ProbeLRUHash:       "4.10",
	ProbeBPFTimer:      "5.15",
	ProbeBatchOps:      "5.6",
	ProbeMapIterKfunc:  "6.6",
	ProbeXSKMap:        "4.18",
	ProbeAFXDPSocket:   "4.18",
	ProbeLiveFrameTest: "5.18",
	ProbeTCX:           "6.6",
}

// Status is the outcome of one probe.
type Status string

const (
	Available    Status = "available"
	NotSupported Status = "not_supported"
	Inconclusive Status = "inconclusive"
)

// Result is one probe's outcome.
type Result struct {
	Name      ProbeName `json:"name"`
	Status    Status    `json:"status"`
	MinKernel string    `json:"min_kernel,omitempty"`
	// Detail is the error text for NotSupported and Inconclusive.
	Detail string `json:"detail,omitempty"`
}

// ResultOf classifies a probe error by the cilium/ebpf contract.
func ResultOf(name ProbeName, err error) Result {
	r := Result{Name: name, Status: Available, MinKernel: MinKernel[name]}
	switch {
	case err == nil:
	case errors.Is(err, ErrNotSupported) || isEbpfNotSupported(err):
		r.Status, r.Detail = NotSupported, err.Error()
	default:
		r.Status, r.Detail = Inconclusive, err.Error()
	}
	return r
}

// InterfaceCaps is what the kernel says of one interface's XDP support.
type InterfaceCaps struct {
	Name    string `json:"name"`
	Ifindex int    `json:"ifindex,omitempty"`
	// Exists is false when the interface was not found.
	Exists bool `json:"exists"`
	// Features are the kernel's advertised XDP features (netdev netlink
	// "xdp-features", kernel 6.3+): basic, redirect, ndo-xmit,
	// xsk-zerocopy, hw-offload, rx-sg, ndo-xmit-sg. Nil when unknown.
	Features []string `json:"xdp_features,omitempty"`
	// FeaturesErr says why Features is unknown.
	FeaturesErr string `json:"xdp_features_error,omitempty"`
	// Kind is the netlink link kind ("veth", "bridge", "vlan", ...);
	// "device" for a link without one (a NIC driver's own device).
	Kind string `json:"kind,omitempty"`
	// Driver is the driver name ethtool reports ("veth", "mlx5_core").
	Driver string `json:"driver,omitempty"`
	MTU    int    `json:"mtu,omitempty"`
	// Peer is the other end of a veth, where it could be read (it may live
	// in another network namespace); PeerErr says why it could not.
	Peer    *PeerCaps `json:"peer,omitempty"`
	PeerErr string    `json:"peer_error,omitempty"`
	// RXQueues is the interface's RX queue count (0: unknown); the
	// userspace backend binds one socket per queue.
	RXQueues int `json:"rx_queues,omitempty"`
}

// PeerCaps is what was read of a veth's peer, in its own namespace.
type PeerCaps struct {
	Name    string `json:"name"`
	Ifindex int    `json:"ifindex"`
	MTU     int    `json:"mtu"`
	// TXChecksum: the peer leaves L4 checksums to offload, so frames its
	// sockets send carry partial sums (CHECKSUM_PARTIAL) that only an skb
	// remembers.
	TXChecksum bool `json:"tx_checksum"`
	// GRO on the peer gives it a NAPI instance, which frames XDP redirects
	// into our end need; but redirects are refused unless our end also
	// advertises ndo-xmit, which GRO turned on while the peer was down
	// does not set (see ChooseAttach).
	GRO bool `json:"gro"`
	TSO bool `json:"tso"`
	// XDP: an XDP program is attached to the peer (also gives it NAPI).
	XDP bool `json:"xdp"`
}

// Has reports whether the interface advertises an XDP feature.
func (c InterfaceCaps) Has(feature string) bool {
	for _, f := range c.Features {
		if f == feature {
			return true
		}
	}
	return false
}

// Host is a snapshot of the host's capabilities.
type Host struct {
	Kernel     string                   `json:"kernel,omitempty"`
	Probes     map[ProbeName]Result     `json:"probes"`
	Interfaces map[string]InterfaceCaps `json:"interfaces,omitempty"`
	// MemoryBytes is the host's memory (0: unknown), the base of the
	// default memory budget.
	MemoryBytes uint64 `json:"memory_bytes,omitempty"`
}

// Status returns a probe's status; a probe that was not run is Inconclusive.
func (h *Host) Status(p ProbeName) Result {
	if h != nil {
		if r, ok := h.Probes[p]; ok {
			return r
		}
	}
	return Result{Name: p, Status: Inconclusive, MinKernel: MinKernel[p], Detail: "not probed"}
}

// Sorted returns the probe results in name order.
func (h *Host) Sorted() []Result {
	out := make([]Result, 0, len(h.Probes))
	for _, r := range h.Probes {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (r Result) String() string {
	s := fmt.Sprintf("%s: %s", r.Name, r.Status)
	if r.MinKernel != "" {
		s += " (kernel >= " + r.MinKernel + ")"
	}
	if r.Detail != "" {
		s += ": " + r.Detail
	}
	return s
}
