package userspacebackend

import (
	"fmt"
	"net/netip"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/userspacebackend/internal/flowcache"
	"github.com/fwplane/fwplane/userspacebackend/internal/natpool"
	"github.com/fwplane/fwplane/userspacebackend/internal/neigh"
	"github.com/fwplane/fwplane/userspacebackend/internal/session"
	"github.com/fwplane/fwplane/userspacebackend/internal/xsk"
)

// Ring descriptor sizes: struct xdp_desc (RX, TX) and a u64 address (fill,
// completion).
const (
	descBytes = 16
	addrBytes = 8
)

// MemoryCost returns the memory Apply of cfg on a fresh backend with opts
// (nil: defaults) would allocate, without allocating it: the UMEM and
// rings of every binding (one per managed interface and RX queue, plus a
// TX-only binding per mirror output that is not a managed interface), the
// session table, a flow cache per binding and the neighbour table. queues
// returns the RX queue count of an interface (used when
// userspace.queues is empty, as Apply binds every queue); nil or a result
// below 1 counts one queue.
func MemoryCost(cfg *dataplane.Config, opts *Options, queues func(iface string) int) dataplane.MemoryCost {
	var o Options
	if opts != nil {
		o = *opts
	}
	u := cfg.Userspace
	ring := uint64(u.RingSizeOrDefault())
	frames := uint64(u.FramesOrDefault())
	managed := map[string]bool{}
	outputs := map[string]bool{}
	for _, it := range cfg.Interfaces {
		managed[it.Name] = true
	}
	for _, r := range cfg.PortMirroring {
		outputs[r.Output] = true
	}
	reserve := uint64(DefaultMirrorReserve)
	if o.MirrorReserve > 0 {
		reserve = uint64(o.MirrorReserve)
	}

	var bindings, umemFrames uint64
	for _, it := range cfg.Interfaces {
		n := uint64(len(u.Queues))
		if n == 0 {
			n = 1
			if queues != nil {
				n = uint64(max(queues(it.Name), 1))
			}
		}
		per := frames
		if outputs[it.Name] {
			per += reserve
		}
		bindings += n
		umemFrames += n * per
	}
	ringBytes := bindings * ring * (2*descBytes + 2*addrBytes)
	var spans uint64
	for out := range outputs {
		if managed[out] {
			continue
		}
		spanRes := uint64(spanReserve(uint32(ring)))
		if o.MirrorReserve > 0 {
			spanRes = uint64(o.MirrorReserve)
		}
		spans++
		umemFrames += spanRing + spanRes
		ringBytes += spanRing*(descBytes+addrBytes) + ring*(descBytes+addrBytes)
	}

	var cost dataplane.MemoryCost
	cost.Parts = append(cost.Parts,
		dataplane.MemoryPart{Name: "umem", Bytes: umemFrames * xsk.DefaultFrameSize,
			Detail: fmt.Sprintf("%d frames of %d B over %d bindings (%d TX-only)", umemFrames, xsk.DefaultFrameSize, bindings+spans, spans)},
		dataplane.MemoryPart{Name: "rings", Bytes: ringBytes,
			Detail: fmt.Sprintf("fill, RX, TX and completion rings of %d slots per binding", ring)},
		dataplane.MemoryPart{Name: "sessions", Bytes: session.Bytes(cfg.Tables.SessionsOrDefault(), u.ShardsOrDefault()),
			Detail: fmt.Sprintf("%d sessions in %d shards", cfg.Tables.SessionsOrDefault(), u.ShardsOrDefault())},
		dataplane.MemoryPart{Name: "flow_cache", Bytes: bindings * flowcache.Bytes(cfg.Tables.FlowCacheOrDefault()),
			Detail: fmt.Sprintf("%d entries per binding", cfg.Tables.FlowCacheOrDefault())},
		dataplane.MemoryPart{Name: "neighbors", Bytes: neigh.Bytes(cfg.Tables.NeighborsOrDefault()),
			Detail: fmt.Sprintf("%d entries", cfg.Tables.NeighborsOrDefault())},
	)
	if len(cfg.NAT) > 0 {
		// The session table's NAT extension, and a slot allocator per pool
		// address (masquerade ones, one per egress address, are made as
		// they are used: a handful).
		addrs := map[netip.Addr]bool{}
		for _, r := range cfg.NAT {
			for _, a := range dataplane.PoolAddresses(r.Pool) {
				addrs[a] = true
			}
		}
		cost.Parts = append(cost.Parts, dataplane.MemoryPart{Name: "nat",
			Bytes:  session.NATBytes(cfg.Tables.SessionsOrDefault(), u.ShardsOrDefault()) + uint64(len(addrs))*natpool.Bytes,
			Detail: fmt.Sprintf("both tuples of up to %d sessions, slot allocators of %d pool addresses", cfg.Tables.SessionsOrDefault(), len(addrs))})
	}
	return cost
}
