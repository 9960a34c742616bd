package userspacebackend

import (
	"slices"
	"sync/atomic"

	"github.com/fwplane/fwplane/internal/policy"
	"github.com/fwplane/fwplane/userspacebackend/internal/neigh"
	"github.com/fwplane/fwplane/userspacebackend/internal/session"
	"github.com/fwplane/fwplane/userspacebackend/internal/xsk"
)

// port is one managed interface: its shim and its bindings (one per RX
// queue). The bindings map belongs to the control plane (Backend.applyMu);
// the datapath sees ports through the immutable portView of a snapshot.
type port struct {
	name    string
	ifindex int
	shim    *xsk.Shim
	// linkUp is the link state the workers follow: set by the link
	// watcher and the housekeeping poll, read once per worker loop.
	linkUp atomic.Bool
	// mtu is the interface's MTU (Apply, the link watcher and the poll
	// keep it current): packets routed out of this port above it are
	// fragmented or answered "too big".
	mtu atomic.Uint32
	// addrs are the interface's own addresses, the sources of the ICMP
	// errors the datapath sends out of it (same updates as the shim's
	// local-address map).
	addrs    atomic.Pointer[portAddrs]
	bindings map[int]*binding
}

func (p *port) setLink(up bool) { p.linkUp.Store(up) }

// portPlan is a port as the next generation will have it.
type portPlan struct {
	p        *port
	mac      [6]byte
	up       bool
	zone     uint16 // the backend's id of the interface's zone
	bindings map[int]*binding
}

// portView is a port as one generation sees it. Immutable.
type portView struct {
	*port
	mac  [6]byte
	zone uint16
	// txq are the bindings egress traffic to this port is spread over,
	// by queue.
	txq []*binding
}

// snapshot is one generation of everything the workers read. It is
// immutable: Apply builds a new one and swaps the pointer, and a worker
// loads it once per batch, so a batch never sees half a config.
type snapshot struct {
	gen       uint64
	policy    *policy.Set
	ports     []*portView
	byIfindex []*portView // dense, by ifindex, for ifindexes below denseLimit
	sparse    map[int]*portView
	neigh     *neigh.Table
	sessions  *session.Table
	router    router
	batch     int
	// mirrors maps a mirrored ingress ifindex to its rule; mirrorList
	// has the same rules in config order. spans are mirror outputs that
	// are not managed interfaces (TX-only bindings).
	mirrors    map[int]*mirrorView
	mirrorList []*mirrorView
	spans      []*portView
	// zoneNames are the zone names by the backend's zone id (ids are never
	// reused, so a session's zones keep their names); tcpPickup is
	// sessions.tcp_pickup.
	zoneNames []string
	tcpPickup bool
	// nat is the generation's compiled NAT rules; nil without any.
	nat *natConfig
}

func newSnapshot(gen uint64, pol *policy.Set, plans []portPlan, nt *neigh.Table, st *session.Table, rt router, batch int) *snapshot {
	s := &snapshot{gen: gen, policy: pol, neigh: nt, sessions: st, router: rt, batch: max(batch, 1)}
	maxIdx := 0
	for _, pl := range plans {
		v := &portView{port: pl.p, mac: pl.mac, zone: pl.zone}
		for _, bd := range pl.bindings {
			v.txq = append(v.txq, bd)
		}
		slices.SortFunc(v.txq, func(a, b *binding) int { return a.queue - b.queue })
		s.ports = append(s.ports, v)
		maxIdx = max(maxIdx, pl.p.ifindex)
	}
	s.byIfindex = make([]*portView, min(maxIdx, denseLimit-1)+1)
	for _, v := range s.ports {
		if v.ifindex < denseLimit {
			s.byIfindex[v.ifindex] = v
			continue
		}
		if s.sparse == nil {
			s.sparse = map[int]*portView{}
		}
		s.sparse[v.ifindex] = v
	}
	return s
}

// denseLimit bounds the dense ifindex table (8 B per slot).
const denseLimit = 1 << 14

// zoneName returns the name of zone id, or "".
func (s *snapshot) zoneName(id uint16) string {
	if int(id) < len(s.zoneNames) {
		return s.zoneNames[id]
	}
	return ""
}

// port returns the managed port with that ifindex, or nil.
func (s *snapshot) port(ifindex int) *portView {
	if ifindex > 0 && ifindex < len(s.byIfindex) {
		return s.byIfindex[ifindex]
	}
	if s.sparse != nil {
		return s.sparse[ifindex]
	}
	return nil
}

// bindings lists every binding of the generation, SPAN ones last.
func (s *snapshot) bindings() []*binding {
	var out []*binding
	for _, p := range s.ports {
		out = append(out, p.txq...)
	}
	for _, p := range s.spans {
		out = append(out, p.txq...)
	}
	return out
}

// linkPort returns the managed or SPAN port with that ifindex, or nil:
// the ports whose link state the workers follow.
func (s *snapshot) linkPort(ifindex int) *portView {
	if p := s.port(ifindex); p != nil {
		return p
	}
	for _, p := range s.spans {
		if p.ifindex == ifindex {
			return p
		}
	}
	return nil
}
